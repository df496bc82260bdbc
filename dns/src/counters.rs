//! [`DnsCounters`]: what the server did, for the node to export (Prometheus counters).

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one [`DnsHandler`](crate::DnsHandler) and its clones, since it was made. All
/// only grow; read them with the getters. Relaxed atomics: each value is exact, but values read
/// one after another are not a consistent snapshot.
///
/// Categories: every received message counts once in [`queries_udp`](Self::queries_udp) or
/// [`queries_tcp`](Self::queries_tcp); each is then at most one of answered (from the view),
/// refused, forwarded, or malformed. NXDOMAIN is a subset of answered; forward failures a
/// subset of forwarded (plus those turned away at the concurrency bound); truncated counts
/// responses of any kind sent with TC.
#[derive(Debug, Default)]
pub struct DnsCounters {
    pub(crate) queries_udp: AtomicU64,
    pub(crate) queries_tcp: AtomicU64,
    pub(crate) answered: AtomicU64,
    pub(crate) nxdomain: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) forwarded: AtomicU64,
    pub(crate) forward_failures: AtomicU64,
    pub(crate) malformed: AtomicU64,
    pub(crate) truncated: AtomicU64,
    pub(crate) cache_hits: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl DnsCounters {
    /// UDP datagrams received (queries, and anything else that arrived on the UDP socket).
    pub fn queries_udp(&self) -> u64 {
        self.queries_udp.load(Ordering::Relaxed)
    }

    /// DNS messages received over TCP.
    pub fn queries_tcp(&self) -> u64 {
        self.queries_tcp.load(Ordering::Relaxed)
    }

    /// Queries answered from the view, authoritatively: records, NODATA or NXDOMAIN.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Of [`answered`](Self::answered), those answered NXDOMAIN (the name is in a zone but
    /// unknown; a rising rate often means a misspelt service name).
    pub fn nxdomain(&self) -> u64 {
        self.nxdomain.load(Ordering::Relaxed)
    }

    /// Queries answered REFUSED: names outside every zone while no recursor is configured, and
    /// classes other than IN.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Queries for names outside every zone that were sent on to the recursors.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }

    /// Queries answered SERVFAIL because no recursor answered in time, or because too many
    /// forwarded queries were already in flight.
    pub fn forward_failures(&self) -> u64 {
        self.forward_failures.load(Ordering::Relaxed)
    }

    /// Malformed messages: UDP datagrams that do not decode as a DNS query (dropped), TCP
    /// messages too short for a header (connection closed), and queries whose header decodes
    /// but whose body does not or that have no or several questions (answered FORMERR).
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }

    /// Responses sent with the TC bit because they did not fit the client's UDP payload size
    /// (the client retries over TCP).
    pub fn truncated(&self) -> u64 {
        self.truncated.load(Ordering::Relaxed)
    }

    /// UDP queries answered from the answer cache (counted in their category as well): with a
    /// steady view this should be nearly all of them, and a low ratio under load means the
    /// view is changing very often or clients ask for many distinct names.
    pub fn cache_hits(&self) -> u64 {
        self.cache_hits.load(Ordering::Relaxed)
    }
}
