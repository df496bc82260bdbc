//! shoal-dns: the agent's DNS server for service names (Cloud Map `<service>.<namespace>` and
//! virtual service names) over the view (issue 4).
//!
//! - [`answer`] is a pure function from a [`DnsView`] and a question to an [`Answer`]:
//!   A/AAAA/SRV of healthy endpoints, NODATA/NXDOMAIN with the zone's SOA, REFUSED outside
//!   every zone.
//! - [`SharedView`] holds the current view; the agent replaces or edits it, and every change
//!   moves a version number that the server reads with one atomic load.
//! - [`DnsHandler`] turns query bytes into response bytes; [`serve_with`] runs it on a UDP
//!   socket and a TCP listener, and [`DnsCounters`] says what it did (for Prometheus).
//! - Names outside every zone are forwarded to [`DnsConfig::recursors`] (UDP, then TCP when
//!   the answer is truncated, next recursor on failure, SERVFAIL when all fail within
//!   [`DnsConfig::forward_timeout`]), each in a task of its own; with no recursors they get
//!   REFUSED so that clients move on to their next resolver.
//! - UDP answers from the view are cached as encoded bytes until the view changes; a hit is a
//!   copy and two patches (id, question letter case), byte for byte what the slow path sends.

mod answer;
mod cache;
mod config;
mod counters;
mod forward;
mod server;
mod shared;
mod wire;

pub use answer::{addr_target, answer, Answer, DnsView, Endpoint};
pub use config::DnsConfig;
pub use counters::DnsCounters;
pub use server::{serve, serve_with, DnsError, DnsHandler};
pub use shared::SharedView;

/// The hickory-proto crate that hickory-server re-exports (names, records, messages).
pub use hickory_server::proto;
