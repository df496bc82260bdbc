//! State of the world: every response carries the whole set of a type (for a wildcard
//! subscription) or every named resource that exists (for a named one), under a `version_info`
//! that is the hash of exactly what is carried.

use std::collections::VecDeque;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

use super::stats::{idx, Names, Protocol, StreamGuard};
use super::wire::SotwResponse;
use super::{may_send, Nonces, Session, TypeView};
use crate::snapshot::{Resource, ResourceType, Snapshot};
use envoy_types::pb::envoy::config::core::v3::Node;

/// What one stream knows about one type.
#[derive(Debug, Default)]
struct TypeState {
    /// Envoy asked for this type on this stream.
    requested: bool,
    /// Every resource of the type, rather than `names`.
    wildcard: bool,
    /// The named subscription, sorted and without duplicates (interned: see `Names`).
    names: Vec<Arc<str>>,
    /// `version_info` of the last response, or the version Envoy said it has when it resumed.
    sent: Option<String>,
    /// Nonce of the last response: requests carrying another one are stale.
    nonce: Option<String>,
    /// The last response awaits its ACK or NACK.
    in_flight: bool,
    /// The last response was NACKed.
    nacked: bool,
    /// Answer even if the version did not change: an initial request, or a changed
    /// subscription (Envoy waits for an answer to both).
    must_answer: bool,
    /// The version of the current snapshot for the current subscription, once computed.
    version: Option<String>,
}

impl TypeState {
    /// Applies the `resource_names` of a request; tells whether the subscription changed.
    fn subscribe(
        &mut self,
        ty: ResourceType,
        names: &[String],
        first: bool,
        interner: &Names,
    ) -> bool {
        let star = names.iter().any(|n| n == "*");
        let mut named: Vec<&str> = names
            .iter()
            .map(String::as_str)
            .filter(|n| *n != "*")
            .collect();
        named.sort_unstable();
        named.dedup();
        // A first request without names is the legacy wildcard of LDS and CDS; later empty
        // requests keep a wildcard subscription (Envoy's LDS/CDS always send none) but mean
        // "nothing" for a named one.
        let wildcard = star || (names.is_empty() && ty.is_wildcard() && (first || self.wildcard));
        let same_names = named.len() == self.names.len()
            && named.iter().zip(&self.names).all(|(a, b)| *a == &**b);
        let changed = wildcard != self.wildcard || !same_names;
        self.wildcard = wildcard;
        if !same_names {
            self.names = named.into_iter().map(|n| interner.intern(n)).collect();
        }
        if changed {
            self.version = None;
        }
        changed
    }

    /// The resources the current subscription selects from `snap`.
    fn selected<'a>(&'a self, snap: &'a Snapshot, ty: ResourceType) -> Vec<&'a Arc<Resource>> {
        let all = snap.resources(ty);
        if self.wildcard {
            all.values().collect()
        } else {
            self.names.iter().filter_map(|n| all.get(&**n)).collect()
        }
    }

    /// The version of what the subscription selects from `snap` (for a wildcard, or a named
    /// subscription that covers every resource, simply [`Snapshot::version`]).
    fn version(&mut self, snap: &Snapshot, ty: ResourceType) -> &str {
        if self.version.is_none() {
            let all = snap.resources(ty);
            let covers_all = self.wildcard
                || all
                    .keys()
                    .all(|k| self.names.binary_search_by(|n| (**n).cmp(k)).is_ok());
            let v = if covers_all {
                snap.version(ty)
            } else {
                let mut sub = Snapshot::default();
                for r in self.selected(snap, ty) {
                    sub.insert(ty, r.clone());
                }
                sub.version(ty)
            };
            self.version = Some(v);
        }
        self.version.as_deref().expect("just computed")
    }

    fn view(&mut self, snap: &Snapshot, ty: ResourceType) -> TypeView {
        self.version(snap, ty);
        let up_to_date = !self.must_answer && self.sent.is_some() && self.sent == self.version;
        TypeView {
            requested: self.requested,
            up_to_date,
            in_flight: self.in_flight,
            nacked: self.nacked,
        }
    }
}

/// One state-of-the-world stream.
pub(crate) struct SotwSession {
    guard: StreamGuard,
    types: [TypeState; 5],
    nonces: Nonces,
}

impl SotwSession {
    fn views(&mut self, snap: &Snapshot) -> [TypeView; 5] {
        let mut views = [TypeView::default(); 5];
        for ty in ResourceType::ALL {
            views[idx(ty)] = self.types[idx(ty)].view(snap, ty);
        }
        views
    }
}

impl Session for SotwSession {
    type Req = DiscoveryRequest;
    type Resp = SotwResponse;

    const PROTOCOL: Protocol = Protocol::StateOfTheWorld;

    fn new(guard: StreamGuard) -> Self {
        SotwSession {
            guard,
            types: Default::default(),
            nonces: Nonces::default(),
        }
    }

    fn node(req: &DiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }

    fn on_request(&mut self, req: DiscoveryRequest) {
        let proxy = &self.guard.proxy;
        let Some(ty) = ResourceType::from_type_url(&req.type_url) else {
            tracing::warn!(%proxy, type_url = %req.type_url, "request for a resource type shoal does not serve; ignored");
            return;
        };
        let st = &mut self.types[idx(ty)];
        if req.response_nonce.is_empty() {
            // An initial request: a new subscription, or Envoy resuming after a reconnect with
            // the version it has (then nothing is sent unless the current one differs).
            let first = !st.requested;
            st.requested = true;
            st.nonce = None;
            st.in_flight = false;
            st.nacked = false;
            st.subscribe(ty, &req.resource_names, first, &self.guard.stats.names);
            if req.version_info.is_empty() {
                st.sent = None;
                st.must_answer = true;
            } else {
                tracing::debug!(%proxy, ?ty, version = %req.version_info, "resuming");
                self.guard.resumed(ty, &req.version_info);
                st.sent = Some(req.version_info);
                st.must_answer = false;
            }
            return;
        }
        if st.nonce.as_deref() != Some(req.response_nonce.as_str()) {
            tracing::debug!(%proxy, ?ty, nonce = %req.response_nonce, "stale nonce; request ignored");
            return;
        }
        // The latest nonce: the ACK or NACK of the response in flight, or (once that is
        // answered) a subscription change Envoy makes on top of what it accepted.
        if st.in_flight {
            st.in_flight = false;
            let sent = st.sent.clone().unwrap_or_default();
            match &req.error_detail {
                Some(err) => {
                    st.nacked = true;
                    tracing::warn!(%proxy, ?ty, version = %sent, code = err.code, error = %err.message,
                        "Envoy rejected the configuration (NACK); it keeps its previous version, and this one is not resent");
                    self.guard.nack(ty, &sent, &err.message);
                }
                None => {
                    st.nacked = false;
                    tracing::debug!(%proxy, ?ty, version = %sent, "ACK");
                    self.guard.ack(ty, &sent);
                }
            }
        }
        let st = &mut self.types[idx(ty)];
        if st.subscribe(ty, &req.resource_names, false, &self.guard.stats.names) {
            st.must_answer = true;
        }
    }

    fn on_snapshot(&mut self) {
        for st in &mut self.types {
            st.version = None;
        }
    }

    fn push(&mut self, snap: &Snapshot, out: &mut VecDeque<SotwResponse>) {
        for ty in ResourceType::ALL {
            let views = self.views(snap);
            let v = views[idx(ty)];
            if !v.requested || v.in_flight || v.up_to_date || !may_send(ty, &views) {
                continue;
            }
            let nonce = self.nonces.next();
            let st = &mut self.types[idx(ty)];
            let version = st.version(snap, ty).to_string();
            let resources: Vec<Arc<Resource>> =
                st.selected(snap, ty).into_iter().cloned().collect();
            tracing::debug!(proxy = %self.guard.proxy, ?ty, %version, resources = resources.len(), %nonce, "push");
            st.sent = Some(version.clone());
            st.nonce = Some(nonce.clone());
            st.in_flight = true;
            st.must_answer = false;
            st.nacked = false;
            self.guard.response(ty);
            out.push_back(SotwResponse {
                version_info: version,
                resources,
                type_url: ty.type_url(),
                nonce,
            });
        }
    }
}
