//! The view: the model joined with the endpoints gossip reports (`model::discovery`), rebuilt
//! whenever either side changes, and published to both readers at once: the DNS view (names →
//! endpoints, read by the DNS handler under a read lock) and the xDS [`Inputs`] (read by the
//! proxies' snapshot cache). DNS and xDS therefore always serve the same view.

use std::sync::{Arc, RwLock};

use shoal_dns::{DnsView, SharedView};
use shoal_gossip::Gossip;
use shoal_model::discovery::Endpoint;
use shoal_model::Model;
use tokio::sync::watch;

use shoal_xds::Inputs;

/// The agent's current view. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct View {
    dns: SharedView,
    endpoints: Arc<RwLock<Arc<Vec<Endpoint>>>>,
    revision: Arc<RwLock<u64>>,
    inputs: Arc<watch::Sender<Inputs>>,
}

impl Default for View {
    fn default() -> Self {
        Self::new()
    }
}

impl View {
    /// An empty view.
    pub fn new() -> Self {
        Self {
            dns: SharedView::new(DnsView::new(Vec::new())),
            endpoints: Arc::default(),
            revision: Arc::default(),
            inputs: Arc::new(watch::channel(Inputs::default()).0),
        }
    }

    /// Replaces the proxies' workload certificates (kept by the identity manager),
    /// republishing the xDS inputs with the same model and endpoints.
    pub fn set_identities(&self, ids: Arc<shoal_xds::Identities>) {
        self.inputs.send_modify(|i| i.identities = ids);
    }

    /// The model and endpoints of every rebuild, for the xDS proxies.
    pub fn subscribe_inputs(&self) -> watch::Receiver<Inputs> {
        self.inputs.subscribe()
    }

    /// The DNS view, for the DNS handler.
    pub fn shared(&self) -> SharedView {
        self.dns.clone()
    }

    /// Every endpoint gossip reports (all hosts), as of the last rebuild.
    pub fn endpoints(&self) -> Arc<Vec<Endpoint>> {
        self.endpoints
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The model revision of the last rebuild.
    pub fn revision(&self) -> u64 {
        *self.revision.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Rebuilds from `model` and `endpoints`.
    pub fn rebuild(&self, model: Arc<Model>, endpoints: Vec<Endpoint>) {
        let dns = super::dns::build_dns(&model, &endpoints);
        self.dns.replace(dns);
        let endpoints = Arc::new(endpoints);
        *self.endpoints.write().unwrap_or_else(|e| e.into_inner()) = endpoints.clone();
        *self.revision.write().unwrap_or_else(|e| e.into_inner()) = model.revision();
        // The identities stay as they are: replaced under the channel's lock, so a
        // certificate published meanwhile is not lost.
        let fresh = Inputs::new(model, endpoints);
        self.inputs
            .send_modify(|i| *i = fresh.with_identities(i.identities.clone()));
    }
}

/// Runs until `stop`: rebuilds `view` when the model or the endpoints change.
pub async fn run(
    view: View,
    gossip: Gossip,
    mut model: watch::Receiver<Arc<Model>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut endpoints = gossip.subscribe_endpoints();
    loop {
        endpoints.borrow_and_update();
        let m = model.borrow_and_update().clone();
        view.rebuild(m, gossip.endpoints());
        tokio::select! {
            _ = stop.changed() => return,
            r = model.changed() => if r.is_err() { return },
            r = endpoints.changed() => if r.is_err() { return },
        }
    }
}
