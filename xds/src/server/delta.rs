//! Incremental xDS: responses carry only the resources that are new or changed for the client,
//! and the names of those it must drop.
//!
//! Per type the stream tracks what the client holds (from `initial_resource_versions` when it
//! resumes, then from what it was sent), as the very `Arc<Resource>` it was sent, so the record
//! costs a pointer per resource and comparing with the snapshot is a version comparison.

use std::borrow::Borrow;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;

use super::stats::{idx, Names, Protocol, StreamGuard};
use super::wire::DeltaResponse;
use super::{may_send, Nonces, Session, TypeView};
use crate::snapshot::{Resource, ResourceType, Snapshot};
use envoy_types::pb::envoy::config::core::v3::Node;

/// A resource the client holds, keyed by its name.
#[derive(Debug, Clone)]
struct Held(Arc<Resource>);

impl Borrow<str> for Held {
    fn borrow(&self) -> &str {
        &self.0.name
    }
}
impl Hash for Held {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.name.as_str().hash(state)
    }
}
impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.0.name == other.0.name
    }
}
impl Eq for Held {}

/// What one stream knows about one type.
#[derive(Debug, Default)]
struct TypeState {
    /// Envoy asked for this type on this stream.
    requested: bool,
    /// Subscribed to every resource of the type (besides `names`).
    wildcard: bool,
    /// Explicitly subscribed names (interned: see `Names`).
    names: BTreeSet<Arc<str>>,
    /// What the client holds.
    held: HashSet<Held>,
    /// What the client said it holds when it resumed, until a snapshot resolves it into `held`
    /// (same version) or into updates and removals.
    initial: Option<HashMap<String, String>>,
    /// Names to send as removed in the next response.
    removals: BTreeSet<String>,
    /// Subscribed names already reported as not existing (so the report is not repeated).
    told_absent: BTreeSet<String>,
    /// Nonce of the last response: ACKs carrying another one are stale.
    nonce: Option<String>,
    /// The last response awaits its ACK or NACK.
    in_flight: bool,
    /// `system_version_info` of the last response (what a NACK rejected).
    sent_version: String,
    /// The last response was NACKed.
    nacked: bool,
    /// Answer even with nothing to send: Envoy's first request of a type without resources to
    /// resume waits for an answer to finish initializing.
    must_answer: bool,
    /// Known: nothing differs between the snapshot and `held` (reset on any change).
    clean: bool,
}

impl TypeState {
    /// Turns the versions a resuming client reported into `held` entries, updates and removals.
    fn resolve_initial(&mut self, snap: &Snapshot, ty: ResourceType) {
        let Some(initial) = self.initial.take() else {
            return;
        };
        let all = snap.resources(ty);
        for (name, version) in initial {
            let wanted = self.wildcard || self.names.contains(name.as_str());
            match all.get(&name) {
                Some(r) if wanted && r.version == version => {
                    self.held.insert(Held(r.clone()));
                }
                Some(_) if wanted => {} // not held: sent as an update
                _ => {
                    self.removals.insert(name);
                }
            }
        }
        self.clean = false;
    }

    fn wanted<'a>(
        &'a self,
        snap: &'a Snapshot,
        ty: ResourceType,
    ) -> Box<dyn Iterator<Item = &'a Arc<Resource>> + 'a> {
        let all = snap.resources(ty);
        if self.wildcard {
            Box::new(all.values())
        } else {
            Box::new(self.names.iter().filter_map(|n| all.get(&**n)))
        }
    }

    fn is_update(&self, r: &Arc<Resource>) -> bool {
        match self.held.get(r.name.as_str()) {
            Some(h) => !Arc::ptr_eq(&h.0, r) && h.0.version != r.version,
            None => true,
        }
    }

    /// Names the client holds that are gone, and subscribed names that do not exist and were
    /// not reported yet.
    fn gone<'a>(
        &'a self,
        snap: &'a Snapshot,
        ty: ResourceType,
    ) -> impl Iterator<Item = &'a str> + 'a {
        let all = snap.resources(ty);
        let held_gone = self
            .held
            .iter()
            .map(|h| h.0.name.as_str())
            .filter(move |n| !all.contains_key(*n));
        let absent = self.names.iter().map(|n| &**n).filter(move |n| {
            !all.contains_key(*n) && !self.held.contains(*n) && !self.told_absent.contains(*n)
        });
        self.removals
            .iter()
            .map(String::as_str)
            .chain(held_gone)
            .chain(absent)
    }

    fn has_changes(&mut self, snap: &Snapshot, ty: ResourceType) -> bool {
        if self.clean {
            return false;
        }
        let changes = self.wanted(snap, ty).any(|r| self.is_update(r))
            || self.gone(snap, ty).next().is_some();
        self.clean = !changes;
        changes
    }

    fn view(&mut self, snap: &Snapshot, ty: ResourceType) -> TypeView {
        let up_to_date = !self.must_answer && !self.has_changes(snap, ty);
        TypeView {
            requested: self.requested,
            up_to_date,
            in_flight: self.in_flight,
            nacked: self.nacked,
        }
    }

    fn subscribe(&mut self, ty: ResourceType, names: Vec<String>, first: bool, interner: &Names) {
        if first && names.is_empty() && ty.is_wildcard() {
            self.wildcard = true;
        }
        for n in names {
            if n == "*" {
                self.wildcard = true;
            } else if !self.names.contains(n.as_str()) {
                self.names.insert(interner.intern(&n));
            }
        }
    }

    fn unsubscribe(&mut self, names: Vec<String>) {
        for n in names {
            if n == "*" {
                self.wildcard = false;
                // The client drops what it held only through the wildcard.
                let names = &self.names;
                self.held.retain(|h| names.contains(h.0.name.as_str()));
                continue;
            }
            self.names.remove(n.as_str());
            self.told_absent.remove(&n);
            self.removals.remove(&n);
            if !self.wildcard {
                self.held.remove(n.as_str());
            }
        }
    }
}

/// One incremental stream.
pub(crate) struct DeltaSession {
    guard: StreamGuard,
    types: [TypeState; 5],
    nonces: Nonces,
}

impl Session for DeltaSession {
    type Req = DeltaDiscoveryRequest;
    type Resp = DeltaResponse;

    const PROTOCOL: Protocol = Protocol::Delta;

    fn new(guard: StreamGuard) -> Self {
        DeltaSession {
            guard,
            types: Default::default(),
            nonces: Nonces::default(),
        }
    }

    fn node(req: &DeltaDiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }

    fn on_request(&mut self, req: DeltaDiscoveryRequest) {
        let proxy = &self.guard.proxy;
        let Some(ty) = ResourceType::from_type_url(&req.type_url) else {
            tracing::warn!(%proxy, type_url = %req.type_url, "request for a resource type shoal does not serve; ignored");
            return;
        };
        let st = &mut self.types[idx(ty)];
        st.clean = false;
        let first = !st.requested;
        if first {
            st.requested = true;
            st.must_answer = req.initial_resource_versions.is_empty();
            if !st.must_answer {
                tracing::debug!(%proxy, ?ty, resources = req.initial_resource_versions.len(), "resuming");
                st.initial = Some(req.initial_resource_versions);
            }
        }
        st.subscribe(
            ty,
            req.resource_names_subscribe,
            first,
            &self.guard.stats.names,
        );
        st.unsubscribe(req.resource_names_unsubscribe);
        if req.response_nonce.is_empty() {
            return;
        }
        if st.nonce.as_deref() != Some(req.response_nonce.as_str()) || !st.in_flight {
            tracing::debug!(%proxy, ?ty, nonce = %req.response_nonce, "stale or repeated nonce; only the subscription change is kept");
            return;
        }
        st.in_flight = false;
        match &req.error_detail {
            Some(err) => {
                st.nacked = true;
                tracing::warn!(%proxy, ?ty, version = %st.sent_version, code = err.code, error = %err.message,
                    "Envoy rejected the configuration (NACK); it keeps its previous resources, and these are not resent");
                self.guard.nack(ty, &st.sent_version, &err.message);
            }
            None => {
                st.nacked = false;
                tracing::debug!(%proxy, ?ty, version = %st.sent_version, "ACK");
                self.guard.ack(ty, &st.sent_version);
            }
        }
    }

    fn on_snapshot(&mut self) {
        for st in &mut self.types {
            st.clean = false;
        }
    }

    fn push(&mut self, snap: &Snapshot, out: &mut VecDeque<DeltaResponse>) {
        for ty in ResourceType::ALL {
            self.types[idx(ty)].resolve_initial(snap, ty);
        }
        for ty in ResourceType::ALL {
            let mut views = [TypeView::default(); 5];
            for t in ResourceType::ALL {
                views[idx(t)] = self.types[idx(t)].view(snap, t);
            }
            let v = views[idx(ty)];
            if !v.requested || v.in_flight || v.up_to_date || !may_send(ty, &views) {
                continue;
            }
            let nonce = self.nonces.next();
            let st = &mut self.types[idx(ty)];
            let updates: Vec<Arc<Resource>> = st
                .wanted(snap, ty)
                .filter(|r| st.is_update(r))
                .cloned()
                .collect();
            let removed: BTreeSet<String> = st.gone(snap, ty).map(str::to_string).collect();
            for r in &updates {
                st.told_absent.remove(&r.name);
                st.held.replace(Held(r.clone()));
            }
            for n in &removed {
                st.held.remove(n.as_str());
                if st.names.contains(n.as_str()) {
                    st.told_absent.insert(n.clone());
                }
            }
            st.removals.clear();
            let version = snap.version(ty);
            tracing::debug!(proxy = %self.guard.proxy, ?ty, %version, updates = updates.len(), removed = removed.len(), %nonce, "push");
            st.sent_version.clone_from(&version);
            st.nonce = Some(nonce.clone());
            st.in_flight = true;
            st.must_answer = false;
            st.nacked = false;
            st.clean = true;
            self.guard.response(ty);
            out.push_back(DeltaResponse {
                system_version_info: version,
                resources: updates,
                type_url: ty.type_url(),
                removed_resources: removed.into_iter().collect(),
                nonce,
            });
        }
    }
}
