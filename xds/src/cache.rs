//! The per-proxy snapshot cache: the layer between the pure translation ([`crate::translate`])
//! and the ADS server ([`crate::server`]), as go-control-plane keeps translation, cache and
//! server as three layers of one library.
//!
//! [`Proxies`] holds one snapshot per connected proxy (Envoy), recomputed from the current
//! [`Inputs`] (the model and the endpoints) whenever they change ([`Proxies::run`]); the ADS
//! server then sends only the types whose version changed, so a proxy whose resources did not
//! change is sent nothing. Resources equal in content are shared between proxies (interned by
//! type, name and version), so a thousand sidecars of one mesh hold one copy of each cluster
//! they all use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use shoal_model::discovery::{Endpoint, EndpointIndex};
use shoal_model::Model;
use tokio::sync::watch;

use crate::snapshot::ResourceSet;
use crate::translate::{Shared, Translator};
use crate::{ProxyId, ProxyOptions, Resource, ResourceType, Snapshot};

/// What snapshots are computed from: one view of the mesh.
#[derive(Clone, Default)]
pub struct Inputs {
    /// The model.
    pub model: Arc<Model>,
    /// Every endpoint gossip reports.
    pub endpoints: Arc<Vec<Endpoint>>,
    /// `endpoints` indexed for translation (built once per view, used for every proxy).
    pub index: Arc<EndpointIndex>,
    /// The proxies' workload certificates and the mesh CA's trust bundle.
    pub identities: Arc<crate::Identities>,
}

impl Inputs {
    /// The inputs of `model` and `endpoints`, with the endpoint index built once here.
    pub fn new(model: Arc<Model>, endpoints: Arc<Vec<Endpoint>>) -> Self {
        let index = Arc::new(EndpointIndex::new(&endpoints));
        Inputs {
            model,
            endpoints,
            index,
            identities: Arc::default(),
        }
    }

    /// The same view with `identities`.
    pub fn with_identities(mut self, identities: Arc<crate::Identities>) -> Self {
        self.identities = identities;
        self
    }
}

type Key = (ProxyId, ProxyOptions);

/// Shares equal resources, and equal whole sets of one type, between the proxies' snapshots.
#[derive(Default)]
struct Interner {
    live: HashMap<(ResourceType, String, String), Weak<Resource>>,
    sets: HashMap<(ResourceType, String), Weak<ResourceSet>>,
}

impl Interner {
    /// `snap` with every resource replaced by an equal one already held by another proxy, and
    /// every set by an equal set another proxy holds.
    fn intern(&mut self, snap: Snapshot) -> Snapshot {
        let mut out = Snapshot::default();
        out.want_agent_secrets(snap.agent_secrets().iter().cloned());
        for ty in ResourceType::ALL {
            let key = (ty, snap.set(ty).version().to_string());
            if let Some(set) = self.sets.get(&key).and_then(Weak::upgrade) {
                out.share(ty, set);
                continue;
            }
            for r in snap.resources(ty).values() {
                let key = (ty, r.name.clone(), r.version.clone());
                let shared = match self.live.get(&key).and_then(Weak::upgrade) {
                    Some(existing) => existing,
                    None => {
                        self.live.insert(key, Arc::downgrade(r));
                        r.clone()
                    }
                };
                out.insert(ty, shared);
            }
            self.sets.insert(key, Arc::downgrade(out.set(ty)));
        }
        if self.live.len() > 1024
            && self.live.values().filter(|w| w.strong_count() == 0).count() > self.live.len() / 2
        {
            self.live.retain(|_, w| w.strong_count() > 0);
        }
        if self.sets.len() > 1024
            && self.sets.values().filter(|w| w.strong_count() == 0).count() > self.sets.len() / 2
        {
            self.sets.retain(|_, w| w.strong_count() > 0);
        }
        out
    }
}

struct Inner {
    proxies: HashMap<Key, Arc<watch::Sender<Arc<Snapshot>>>>,
    interner: Interner,
    /// What translations of the newest inputs built that other proxies can share, with those
    /// inputs (held, so that the pairing cannot outlive them).
    shared: Option<(Inputs, Arc<Shared>)>,
}

impl Inner {
    /// The shared parts for `inputs`: the ones kept if they are for these very inputs, else
    /// new ones (which replace them).
    fn shared_for(&mut self, inputs: &Inputs) -> Arc<Shared> {
        if let Some((held, shared)) = &self.shared {
            if Arc::ptr_eq(&held.model, &inputs.model)
                && Arc::ptr_eq(&held.endpoints, &inputs.endpoints)
                && Arc::ptr_eq(&held.index, &inputs.index)
                // The memo depends on the trust domain only: a certificate issued or renewed
                // keeps every shared cluster and egress half.
                && held.identities.trust_domain == inputs.identities.trust_domain
            {
                return shared.clone();
            }
        }
        let shared = Arc::new(Shared::default());
        self.shared = Some((inputs.clone(), shared.clone()));
        shared
    }
}

/// The connected proxies. Cheap to clone; clones share them.
#[derive(Clone)]
pub struct Proxies {
    inner: Arc<Mutex<Inner>>,
    inputs: watch::Receiver<Inputs>,
}

fn same(a: &Snapshot, b: &Snapshot) -> bool {
    ResourceType::ALL
        .iter()
        .all(|t| a.version(*t) == b.version(*t))
}

impl Proxies {
    /// Proxies whose snapshots follow `inputs`.
    pub fn new(inputs: watch::Receiver<Inputs>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                proxies: HashMap::new(),
                interner: Interner::default(),
                shared: None,
            })),
            inputs,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Proxies with at least one open stream.
    pub fn count(&self) -> usize {
        self.lock()
            .proxies
            .values()
            .filter(|tx| tx.receiver_count() > 0)
            .count()
    }

    /// The proxies with at least one open stream, each once.
    pub fn connected(&self) -> Vec<ProxyId> {
        let mut out: Vec<ProxyId> = self
            .lock()
            .proxies
            .iter()
            .filter(|(_, tx)| tx.receiver_count() > 0)
            .map(|((p, _), _)| p.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Every open stream's proxy with its current snapshot (a proxy with several option sets
    /// once per set).
    pub fn connected_snapshots(&self) -> Vec<(ProxyId, Arc<Snapshot>)> {
        let mut out: Vec<(ProxyId, Arc<Snapshot>)> = self
            .lock()
            .proxies
            .iter()
            .filter(|(_, tx)| tx.receiver_count() > 0)
            .map(|((p, _), tx)| (p.clone(), tx.borrow().clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The current snapshot of `proxy` (computing it if it is not connected), for the API.
    pub fn snapshot(&self, proxy: &ProxyId, opts: &ProxyOptions) -> Option<Arc<Snapshot>> {
        let inputs = self.inputs.borrow().clone();
        let mut inner = self.lock();
        if let Some(tx) = inner.proxies.get(&(proxy.clone(), opts.clone())) {
            return Some(tx.borrow().clone());
        }
        let shared = inner.shared_for(&inputs);
        compute(&inputs, &shared, proxy, opts, &mut inner.interner).map(Arc::new)
    }

    /// The snapshots of `proxy`, registering it if it is new.
    pub fn subscribe(
        &self,
        proxy: &ProxyId,
        opts: &ProxyOptions,
    ) -> watch::Receiver<Arc<Snapshot>> {
        let inputs = self.inputs.borrow().clone();
        let mut inner = self.lock();
        let key = (proxy.clone(), opts.clone());
        if let Some(tx) = inner.proxies.get(&key) {
            return tx.subscribe();
        }
        let shared = inner.shared_for(&inputs);
        let snap = compute(&inputs, &shared, proxy, opts, &mut inner.interner).unwrap_or_default();
        let (tx, rx) = watch::channel(Arc::new(snap));
        tracing::info!(proxy = %proxy, "proxy connected");
        inner.proxies.insert(key, Arc::new(tx));
        rx
    }

    /// Recomputes every connected proxy's snapshot from the current inputs and forgets the
    /// proxies nobody streams to any more. A proxy's channel is touched only when one of its
    /// types changed. Translation runs on every core (each proxy is independent); blocking, so
    /// call it off the async workers.
    pub fn refresh(&self) {
        let inputs = self.inputs.borrow().clone();
        // Translate without the lock, so that proxies connecting meanwhile are not held up.
        let work: Vec<(Key, Arc<watch::Sender<Arc<Snapshot>>>)> = {
            let mut inner = self.lock();
            inner.proxies.retain(|(proxy, _), tx| {
                let keep = tx.receiver_count() > 0;
                if !keep {
                    tracing::info!(proxy = %proxy, "proxy gone");
                }
                keep
            });
            inner
                .proxies
                .iter()
                .map(|(k, tx)| (k.clone(), tx.clone()))
                .collect()
        };
        if work.is_empty() {
            // Nothing streams: a proxy that connects later is computed then (`subscribe`).
            return;
        }
        let shared = self.lock().shared_for(&inputs);
        // Read once: `available_parallelism` opens three cgroup files at every call, and this
        // runs at every change of the model or the endpoints.
        static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let threads = *THREADS.get_or_init(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .clamp(1, 8)
        });
        // One translator for every proxy: sidecars with the same backends share their egress
        // half, built once.
        let translator =
            Translator::with_shared(&inputs.model, &inputs.endpoints, &inputs.index, &shared)
                .with_trust_domain(inputs.identities.trust_domain.as_deref());
        let translator = &translator;
        let identities = &inputs.identities;
        let translate_all =
            |chunk: &[(Key, Arc<watch::Sender<Arc<Snapshot>>>)]| -> Vec<Option<Snapshot>> {
                chunk
                    .iter()
                    .map(|((proxy, opts), _)| {
                        translate_one(translator, proxy, opts)
                            .map(|s| with_secrets(s, identities, proxy))
                    })
                    .collect()
            };
        let results: Vec<Option<Snapshot>> = if threads == 1 || work.len() < 16 {
            translate_all(&work)
        } else {
            let size = work.len().div_ceil(threads);
            std::thread::scope(|scope| {
                let handles: Vec<_> = work
                    .chunks(size)
                    .map(|chunk| scope.spawn(move || translate_all(chunk)))
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().unwrap_or_default())
                    .collect()
            })
        };
        let mut inner = self.lock();
        for ((_, tx), next) in work.iter().zip(results) {
            let Some(next) = next else {
                continue;
            };
            let next = inner.interner.intern(next);
            tx.send_if_modified(|cur| {
                if same(cur, &next) {
                    false
                } else {
                    *cur = Arc::new(next);
                    true
                }
            });
        }
    }
}

/// `snap` with the secrets it takes from the agent that `proxy` may have (its own, never
/// another's: see [`crate::identity`]).
fn with_secrets(mut snap: Snapshot, ids: &crate::Identities, proxy: &ProxyId) -> Snapshot {
    if snap.agent_secrets().is_empty() {
        return snap;
    }
    let secrets = ids.secrets_for(proxy, snap.agent_secrets());
    if secrets.len() < snap.agent_secrets().len() {
        tracing::debug!(proxy = %proxy, wanted = snap.agent_secrets().len(), served = secrets.len(), "secrets the proxy's configuration names are not served to it (not its own, or not issued yet)");
    }
    for r in secrets {
        snap.insert(ResourceType::Secret, r);
    }
    snap
}

/// The snapshot of `proxy`, not interned; `None` when the model cannot be translated.
fn translate_one(t: &Translator<'_>, proxy: &ProxyId, opts: &ProxyOptions) -> Option<Snapshot> {
    match t.translate(proxy, opts) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(proxy = %proxy, error = %e, "cannot translate the model for a proxy; it keeps its last configuration");
            None
        }
    }
}

/// The snapshot of `proxy`; `None` (keep what it has) when the model cannot be translated.
fn compute(
    inputs: &Inputs,
    shared: &Shared,
    proxy: &ProxyId,
    opts: &ProxyOptions,
    interner: &mut Interner,
) -> Option<Snapshot> {
    let t = Translator::with_shared(&inputs.model, &inputs.endpoints, &inputs.index, shared)
        .with_trust_domain(inputs.identities.trust_domain.as_deref());
    translate_one(&t, proxy, opts)
        .map(|s| with_secrets(s, &inputs.identities, proxy))
        .map(|s| interner.intern(s))
}

impl crate::server::SnapshotSource for Proxies {
    fn subscribe(
        &self,
        proxy: &ProxyId,
        opts: &ProxyOptions,
        _node: &envoy_types::pb::envoy::config::core::v3::Node,
    ) -> Result<watch::Receiver<Arc<Snapshot>>, tonic::Status> {
        Ok(Proxies::subscribe(self, proxy, opts))
    }
}

impl Proxies {
    /// Runs until `stop`: refreshes the proxies whenever the inputs change (translation runs
    /// on blocking threads, off the async workers).
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut inputs = self.inputs.clone();
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                r = inputs.changed() => if r.is_err() { return },
            }
            let p = self.clone();
            if tokio::task::spawn_blocking(move || p.refresh())
                .await
                .is_err()
            {
                tracing::error!("refreshing the proxies panicked");
            }
        }
    }
}
