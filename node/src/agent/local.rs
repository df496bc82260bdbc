//! The instances registered on this host, their health checks, and publishing both to gossip.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use shoal_gossip::keys::MAX_INSTANCES_PER_NODE;
use shoal_gossip::Gossip;
use shoal_model::discovery::Instance;
use shoal_model::health::{check_for, CheckSpec};
use shoal_model::Model;
use tokio::sync::{watch, Notify};

use super::health::{self, CheckHandle, HealthState};
use super::store::{Registrations, StoreError};

/// A running check and what it was started for (a change of either restarts it).
struct Running {
    spec: CheckSpec,
    handle: CheckHandle,
}

struct Inner {
    store: Registrations,
    /// Registered through the API; persisted.
    registered: BTreeMap<String, Instance>,
    /// From the config file; re-read at every start.
    configured: BTreeMap<String, Instance>,
    checks: BTreeMap<String, Running>,
    /// What was last published for each key: the instance and its health.
    published: BTreeMap<String, (Instance, bool)>,
    /// The workload certificates probes of mutual-TLS listeners present.
    certs: Option<health::ClientCertSource>,
}

/// Why a registration was not taken.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The host already holds as many instances as gossip carries per node.
    #[error("this host already has {max} instances, the most one host may register")]
    Full {
        /// The limit.
        max: usize,
    },
    /// The registrations file could not be written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The registry of this host's instances. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct Local {
    inner: Arc<Mutex<Inner>>,
    changed: Arc<Notify>,
}

/// One local instance as the API reports it.
#[derive(Debug, Clone, Serialize)]
pub struct LocalStatus {
    /// Its key (`<namespace>/<service>/<id>` or `@<mesh>/<node>/<id>`).
    pub key: String,
    /// The instance.
    pub instance: Instance,
    /// `api` (persisted) or `config` (the config file).
    pub source: &'static str,
    /// Health as published.
    pub healthy: bool,
    /// Where its health check goes, if it has one.
    pub check_target: Option<SocketAddr>,
    /// Why the last probe failed, if it did.
    pub last_failure: Option<String>,
}

impl Local {
    /// A registry holding `registered` (from the store) and `configured` (config file); its
    /// probes of mutual-TLS listeners present the certificates `certs` finds.
    pub fn new(
        store: Registrations,
        registered: BTreeMap<String, Instance>,
        configured: Vec<Instance>,
        certs: Option<health::ClientCertSource>,
    ) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                store,
                registered,
                configured: configured.into_iter().map(|i| (i.key(), i)).collect(),
                checks: BTreeMap::new(),
                published: BTreeMap::new(),
                certs,
            })),
            changed: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers (or replaces) `inst` and persists the registrations before returning. A host
    /// holds at most [`MAX_INSTANCES_PER_NODE`] instances (what gossip carries per node).
    pub fn register(&self, inst: Instance) -> Result<(), RegisterError> {
        let mut inner = self.lock();
        let key = inst.key();
        let current = all(&inner);
        if !current.contains_key(&key) && current.len() >= MAX_INSTANCES_PER_NODE {
            return Err(RegisterError::Full {
                max: MAX_INSTANCES_PER_NODE,
            });
        }
        let mut next = inner.registered.clone();
        next.insert(inst.key(), inst);
        inner.store.save(next.values())?;
        inner.registered = next;
        drop(inner);
        self.changed.notify_one();
        Ok(())
    }

    /// Removes the instance `key` (registered or configured; a configured one comes back at
    /// the next start). Returns whether it existed.
    pub fn deregister(&self, key: &str) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let mut found = inner.configured.remove(key).is_some();
        if inner.registered.contains_key(key) {
            let mut next = inner.registered.clone();
            next.remove(key);
            inner.store.save(next.values())?;
            inner.registered = next;
            found = true;
        }
        drop(inner);
        if found {
            self.changed.notify_one();
        }
        Ok(found)
    }

    /// Every local instance with its health, by key.
    pub fn list(&self) -> Vec<LocalStatus> {
        let inner = self.lock();
        all(&inner)
            .into_iter()
            .map(|(key, (inst, source))| {
                let check = inner.checks.get(&key);
                LocalStatus {
                    healthy: inner.published.get(&key).is_some_and(|(_, h)| *h),
                    check_target: check.map(|c| c.handle.target()),
                    last_failure: check.and_then(|c| c.handle.last_failure()),
                    key,
                    instance: inst,
                    source,
                }
            })
            .collect()
    }
}

/// Configured and registered instances; a registration replaces a configured instance of the
/// same key.
fn all(inner: &Inner) -> BTreeMap<String, (Instance, &'static str)> {
    let mut out: BTreeMap<String, (Instance, &'static str)> = inner
        .configured
        .iter()
        .map(|(k, i)| (k.clone(), (i.clone(), "config")))
        .collect();
    for (k, i) in &inner.registered {
        out.insert(k.clone(), (i.clone(), "api"));
    }
    out
}

/// Runs until `stop`: starts, restarts and stops health checks as registrations and the model
/// change, and publishes every local instance with its health to gossip (only what changed).
pub async fn run(
    local: Local,
    gossip: Gossip,
    mut model: watch::Receiver<Arc<Model>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let m = model.borrow_and_update().clone();
        let (publish, withdraw) = reconcile(&local, &m);
        for (inst, healthy) in publish {
            if let Err(e) = gossip.publish_instance(&inst, healthy).await {
                tracing::warn!(instance = %inst.key(), error = %e, "cannot publish an instance");
                // Try again at the next pass.
                local.lock().published.remove(&inst.key());
            }
        }
        for key in withdraw {
            if let Err(e) = gossip.withdraw_instance(&key).await {
                tracing::warn!(instance = %key, error = %e, "cannot withdraw an instance");
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            r = model.changed() => if r.is_err() { return },
            _ = local.changed.notified() => {}
            // A safety net: a lost wake-up costs at most this.
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// One pass: brings the checks in line with the model and returns what to publish and to
/// withdraw.
fn reconcile(local: &Local, model: &Model) -> (Vec<(Instance, bool)>, Vec<String>) {
    let mut inner = local.lock();
    let want = all(&inner);
    inner.checks.retain(|k, _| want.contains_key(k));
    for (key, (inst, _)) in &want {
        let desired = check_for(model, inst);
        let keep = match (&desired, inner.checks.get(key)) {
            (Some((t, spec)), Some(r)) => r.handle.target() == *t && r.spec == *spec,
            (None, None) => true,
            _ => false,
        };
        if keep {
            continue;
        }
        inner.checks.remove(key);
        if let Some((target, spec)) = desired {
            tracing::info!(instance = %key, %target, protocol = ?spec.protocol, "starting a health check");
            let handle = health::spawn_check(target, spec.clone(), inner.certs.clone());
            let mut rx = handle.subscribe();
            let wake = local.changed.clone();
            tokio::spawn(async move {
                while rx.changed().await.is_ok() {
                    wake.notify_one();
                }
            });
            inner.checks.insert(key.clone(), Running { spec, handle });
        }
    }
    let mut publish = Vec::new();
    for (key, (inst, _)) in &want {
        let healthy = match inner.checks.get(key).map(|r| r.handle.state()) {
            None => true,
            Some(HealthState::Healthy) => true,
            Some(HealthState::Unhealthy) => false,
            // No result yet (the first probe runs at once): keep what was published, and
            // publish a new instance only once its first probe has answered, so that a
            // restarting agent does not flap its instances to unhealthy.
            Some(HealthState::Unknown) => continue,
        };
        let entry = (inst.clone(), healthy);
        if inner.published.get(key) != Some(&entry) {
            inner.published.insert(key.clone(), entry.clone());
            publish.push(entry);
        }
    }
    let withdraw: Vec<String> = inner
        .published
        .keys()
        .filter(|k| !want.contains_key(*k))
        .cloned()
        .collect();
    for k in &withdraw {
        inner.published.remove(k);
    }
    (publish, withdraw)
}
