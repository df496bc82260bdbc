//! [`DnsConfig`]: answer settings and forwarding to recursors.

use std::net::SocketAddr;
use std::time::Duration;

/// Settings of the DNS server. Build it with struct update syntax so that new settings keep
/// their defaults: `DnsConfig { recursors, ..DnsConfig::default() }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// TTL of every record, and the SOA minimum (negative caching TTL). Default 5 s, short
    /// because endpoints come and go with health checks.
    pub ttl: u32,
    /// Recursive resolvers that names outside every zone are forwarded to, tried in order
    /// (`--recursor ADDR`, the same port for UDP and TCP). Empty: such names get REFUSED, so that
    /// clients move on to their next resolver.
    pub recursors: Vec<SocketAddr>,
    /// Total time a forwarded query may take over all recursors; when it runs out the client
    /// gets SERVFAIL. Each recursor gets an equal share of what is left when its turn comes, so
    /// a dead first recursor does not starve the next one. Default 2 s, below the usual 5 s
    /// client timeout so that the client sees SERVFAIL rather than silence.
    pub forward_timeout: Duration,
    /// Forwarded queries in flight at once; beyond this a forwarded query gets SERVFAIL at once
    /// (so a dead recursor under load cannot make the server hold unbounded state). Default 1024.
    pub max_forwards: usize,
    /// Encoded UDP responses kept for reuse (the fast path); 0 disables the cache. Default
    /// 16384, a few MiB at most.
    pub cache_entries: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            ttl: 5,
            recursors: Vec::new(),
            forward_timeout: Duration::from_secs(2),
            max_forwards: 1024,
            cache_entries: 16384,
        }
    }
}
