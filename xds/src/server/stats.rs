//! Counters of the ADS server, and what each connected proxy last accepted or rejected.
//!
//! Counters are plain atomics so that the hot path (a response, an ACK) never waits on a lock;
//! the per-proxy status sits behind a mutex that is only taken when an ACK or NACK arrives and
//! when someone asks (`/v1/…`, tests), never while a response is being encoded.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::proxy::ProxyId;
use crate::snapshot::ResourceType;

/// Position of a type in [`ResourceType::ALL`] (the push order), used to index per-type arrays.
pub(crate) fn idx(ty: ResourceType) -> usize {
    ResourceType::ALL
        .iter()
        .position(|t| *t == ty)
        .expect("every type is in ALL")
}

/// One counter per resource type, as read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TypeCounts([u64; 5]);

impl TypeCounts {
    /// The count for `ty`.
    pub fn get(&self, ty: ResourceType) -> u64 {
        self.0[idx(ty)]
    }

    /// The sum over every type.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

#[derive(Debug, Default)]
pub(crate) struct AtomicTypeCounts([AtomicU64; 5]);

impl AtomicTypeCounts {
    pub(crate) fn inc(&self, ty: ResourceType) {
        self.0[idx(ty)].fetch_add(1, Ordering::Relaxed);
    }

    fn read(&self) -> TypeCounts {
        TypeCounts(std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed)))
    }
}

/// Which variant of the protocol a stream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `StreamAggregatedResources`: every response carries the whole set of a type.
    StateOfTheWorld,
    /// `DeltaAggregatedResources`: responses carry changed and removed resources only.
    Delta,
}

/// A rejection by Envoy: what it was sent and what it said.
#[derive(Debug, Clone, PartialEq)]
pub struct NackRecord {
    /// The proxy that rejected the configuration.
    pub proxy: ProxyId,
    /// The resource type of the rejected response.
    pub ty: ResourceType,
    /// The version that was rejected (state of the world: the response's `version_info`; delta:
    /// its `system_version_info`).
    pub version: String,
    /// Envoy's `error_detail.message`, which names the resource and the reason.
    pub message: String,
    /// When the NACK arrived.
    pub at: SystemTime,
}

/// What one connected stream has been sent and has accepted, for operators and tests.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyStatus {
    /// Who is connected.
    pub proxy: ProxyId,
    /// Which protocol variant it speaks.
    pub protocol: Protocol,
    /// When the stream was opened.
    pub since: SystemTime,
    /// Per type, the last version the proxy ACKed.
    pub acked: BTreeMap<ResourceType, String>,
    /// Per type, the last version the proxy NACKed, while that NACK is the latest word on the type.
    pub nacked: BTreeMap<ResourceType, String>,
}

/// The server's counters at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct AdsStats {
    /// Streams open now.
    pub streams_open: u64,
    /// Streams accepted since start (a refused node id is not counted).
    pub streams_total: u64,
    /// Streams refused (bad node id or metadata, or refused by the snapshot source).
    pub streams_refused: u64,
    /// Responses sent, by type.
    pub responses: TypeCounts,
    /// ACKs received, by type.
    pub acks: TypeCounts,
    /// NACKs received, by type.
    pub nacks: TypeCounts,
    /// The latest NACK, with Envoy's message.
    pub last_nack: Option<NackRecord>,
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) streams_open: AtomicU64,
    pub(crate) streams_total: AtomicU64,
    pub(crate) streams_refused: AtomicU64,
    pub(crate) responses: AtomicTypeCounts,
    pub(crate) acks: AtomicTypeCounts,
    pub(crate) nacks: AtomicTypeCounts,
    pub(crate) last_nack: Mutex<Option<NackRecord>>,
    next_stream: AtomicU64,
    pub(crate) proxies: Mutex<HashMap<u64, Arc<Mutex<ProxyStatus>>>>,
    /// Resource names the streams subscribe to, shared (see [`Names`]).
    pub(crate) names: Names,
}

/// Interned resource names. Every sidecar of a mesh subscribes to the same cluster and route
/// names, so each stream keeps pointers into one shared set instead of its own copies (for a
/// 100-service mesh that is about 6 KiB per stream). Names nobody holds any more are dropped
/// when the set has doubled since it was last pruned.
#[derive(Debug, Default)]
pub(crate) struct Names {
    set: Mutex<(HashSet<Arc<str>>, usize)>,
}

impl Names {
    /// The shared copy of `name`.
    pub(crate) fn intern(&self, name: &str) -> Arc<str> {
        let mut guard = lock(&self.set);
        let (set, prune_at) = &mut *guard;
        if let Some(n) = set.get(name) {
            return n.clone();
        }
        if set.len() >= *prune_at {
            set.retain(|n| Arc::strong_count(n) > 1);
            *prune_at = (set.len() * 2).max(1024);
        }
        let n: Arc<str> = Arc::from(name);
        set.insert(n.clone());
        n
    }
}

impl Stats {
    pub(crate) fn read(&self) -> AdsStats {
        AdsStats {
            streams_open: self.streams_open.load(Ordering::Relaxed),
            streams_total: self.streams_total.load(Ordering::Relaxed),
            streams_refused: self.streams_refused.load(Ordering::Relaxed),
            responses: self.responses.read(),
            acks: self.acks.read(),
            nacks: self.nacks.read(),
            last_nack: lock(&self.last_nack).clone(),
        }
    }

    /// Registers a new stream; the returned guard unregisters it when the stream ends.
    pub(crate) fn open(self: &Arc<Self>, proxy: ProxyId, protocol: Protocol) -> StreamGuard {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        self.streams_open.fetch_add(1, Ordering::Relaxed);
        self.streams_total.fetch_add(1, Ordering::Relaxed);
        let status = Arc::new(Mutex::new(ProxyStatus {
            proxy: proxy.clone(),
            protocol,
            since: SystemTime::now(),
            acked: BTreeMap::new(),
            nacked: BTreeMap::new(),
        }));
        lock(&self.proxies).insert(id, status.clone());
        StreamGuard {
            id,
            stats: self.clone(),
            status,
            proxy,
        }
    }
}

/// Locks a mutex, also after a panic elsewhere poisoned it (the data are counters and status
/// records, always left consistent).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A stream's handle on the counters; dropping it closes the stream's records.
#[derive(Debug)]
pub(crate) struct StreamGuard {
    id: u64,
    pub(crate) stats: Arc<Stats>,
    status: Arc<Mutex<ProxyStatus>>,
    pub(crate) proxy: ProxyId,
}

impl StreamGuard {
    pub(crate) fn response(&self, ty: ResourceType) {
        self.stats.responses.inc(ty);
    }

    pub(crate) fn ack(&self, ty: ResourceType, version: &str) {
        self.stats.acks.inc(ty);
        let mut st = lock(&self.status);
        st.nacked.remove(&ty);
        match st.acked.get_mut(&ty) {
            Some(v) if v == version => {}
            Some(v) => version.clone_into(v),
            None => {
                st.acked.insert(ty, version.to_string());
            }
        }
    }

    /// Envoy resumed a type at `version` (state of the world): that is what it has accepted,
    /// though no ACK was exchanged on this stream.
    pub(crate) fn resumed(&self, ty: ResourceType, version: &str) {
        lock(&self.status).acked.insert(ty, version.to_string());
    }

    pub(crate) fn nack(&self, ty: ResourceType, version: &str, message: &str) {
        self.stats.nacks.inc(ty);
        lock(&self.status).nacked.insert(ty, version.to_string());
        *lock(&self.stats.last_nack) = Some(NackRecord {
            proxy: self.proxy.clone(),
            ty,
            version: version.to_string(),
            message: message.to_string(),
            at: SystemTime::now(),
        });
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.stats.streams_open.fetch_sub(1, Ordering::Relaxed);
        lock(&self.stats.proxies).remove(&self.id);
    }
}
