//! shoal-dns: the DNS answers for service names (Cloud Map `<service>.<namespace>` and virtual
//! service names) over the view (issue 4).
//!
//! [`answer`] is a pure function from a [`DnsView`] and a question to an [`Answer`];
//! [`DnsHandler`] is the hickory-server request handler over a [`SharedView`] and [`serve`] runs
//! it on a UDP socket and a TCP listener. Forwarding to recursors is not done here yet: names
//! outside every zone get REFUSED.

mod answer;
mod server;

pub use answer::{addr_target, answer, Answer, DnsConfig, DnsView, Endpoint};
pub use server::{serve, serve_with, DnsError, DnsHandler, SharedView};

/// The hickory-proto crate that hickory-server re-exports (names, records, messages).
pub use hickory_server::proto;
