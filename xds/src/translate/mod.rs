//! Model → Envoy resources: the pure translation of issue 5.
//!
//! [`translate`] turns the model, the endpoints the agent sees and one proxy's identity into
//! the [`Snapshot`] that proxy is sent. It is a pure function (no I/O, no clock): the same
//! inputs give the same resources, byte for byte, so the ADS server can compare versions to
//! decide what to push. [`check_consistency`] checks what Envoy needs of a snapshot as a whole
//! (every reference resolves), [`render`] prints one for humans and golden tests, and
//! [`static_bootstrap`] inlines one into a bootstrap `envoy --mode validate` accepts.
//!
//! # A virtual node's sidecar
//!
//! * **Ingress** (`lds_ingress_<addr>_<ingress_port>`): one Envoy listener. With one model
//!   listener, every connection goes to the local application at
//!   `<app_address>:<listener port>` (no iptables needed); with several, one filter chain per
//!   model listener, chosen by the original destination port (the `original_dst` listener
//!   filter restores it after an iptables redirect). Per model listener: HTTP/HTTP2/gRPC
//!   through an HTTP connection manager (RDS `rds_ingress_<proto>_<port>`, the listener's
//!   per-request timeout — 15 s by default — and idle timeout), TCP through `tcp_proxy` (idle
//!   timeout); TLS STRICT (TLS only), PERMISSIVE (TLS and plain text, told apart by the TLS
//!   inspector) or off, with mutual TLS when the listener has a validation context. The local
//!   cluster `cds_ingress_<mesh>_<node>_<proto>_<port>` carries the listener's connection
//!   pool as circuit breakers and its health check as an active health check (a gRPC health
//!   check of an application reached over HTTP/1.1 or TCP becomes a TCP connect check: Envoy
//!   checks gRPC health only over HTTP/2).
//! * **Egress** (`lds_egress_<addr>_<egress_port>`): the node's backends only (default deny).
//!   HTTP-like backends are virtual hosts named by the virtual service name, with and without
//!   `:<port>`, in `rds_egress_http_<port>` for traffic whose original destination port is
//!   `<port>`; traffic sent to the egress port itself (Envoy used as an HTTP proxy, no
//!   iptables) is routed by `rds_egress_http_<egress_port>`, which holds every backend.
//!   TCP backends get a `tcp_proxy` filter chain per destination port (told apart by the
//!   addresses of their instances when a port is shared). A virtual node provider is one
//!   route to its cluster; a virtual router provider is its routes, in [`routes::Order`]
//!   order, with their matches, weighted targets, retry policies (App Mesh's default policy
//!   when a route has none) and timeouts. ALLOW_ALL meshes add the original-destination
//!   cluster `cds_egress_passthrough`, a catch-all virtual host and a TCP default filter
//!   chain; DROP_ALL meshes (the default) do not, so unknown hosts get 404 and unknown
//!   destinations a closed connection.
//! * **Clusters** to virtual nodes: `cds_egress_<mesh>_<node>_<proto>_<port>`, EDS (or DNS
//!   for a DNS-discovered node no registered instance backs), round robin, circuit breakers
//!   effectively off, the target listener's outlier detection, HTTP/2 to http2 and gRPC
//!   targets, client TLS from the backend's client policy or the backend defaults (SNI: the
//!   target's discovery hostname). Endpoints: the instances `shoal_model::discovery` selects
//!   (as DNS does), healthy ones or all when none is healthy.
//! * **Access logs**: the node's file access log on every HTTP connection manager and TCP
//!   proxy, with the model's text or JSON format.
//!
//! # A virtual gateway
//!
//! One listener per gateway listener (`lds_ingress_<addr>_<port>`, RDS
//! `rds_ingress_<proto>_<port>`, TLS as above). Each gateway route becomes Envoy routes in
//! priority order: its match (prefix, exact or regex path, hostname exact or suffix, headers,
//! query parameters, method) and its rewrites (target hostname, on by default; matched prefix
//! to `/` or to a value, on by default; exact path). A route to a virtual service provided by
//! a virtual node goes to the node's cluster; one provided by a virtual router expands into
//! one Envoy route per router route, whose conditions are added to the gateway route's (path
//! conditions are composed with the prefix rewrite; a router route's *regex* path cannot be
//! composed with a prefix rewrite and is then not checked) and whose targets, retries and
//! timeouts it takes. Clusters carry the gateway's backend-default client TLS and the
//! gateway listener's connection pool.
//!
//! # Not translated
//!
//! Secrets named by `sds` members outside the mesh CA's trust domain are fetched from the
//! local SDS provider through the bootstrap cluster [`SDS_CLUSTER`]; a virtual gateway
//! listener's health check; TCP traffic sent to the egress port directly (it has no name).

mod authz;
mod bootstrap;
mod cluster;
mod consistency;
mod gateway;
pub mod names;
mod node;
mod render;
mod routes;
mod util;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::config::accesslog::v3::AccessLog;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use shoal_model::api;
use shoal_model::discovery::Endpoint;
use shoal_model::identity::{MtlsMode, WorkloadKind};
use shoal_model::{Kind, Model, ResourceKey, Spec};

use crate::proxy::{ProxyId, ProxyKind, ProxyOptions};
use crate::snapshot::{Resource, ResourceType, Snapshot};

pub use bootstrap::{static_bootstrap, SDS_SOCKET};
pub use cluster::UNLIMITED;
pub use consistency::{check_consistency, tls_files, ConsistencyError};
pub use render::render;
pub use routes::DEFAULT_REQUEST_TIMEOUT_SECS;

/// The bootstrap cluster through which Envoy reaches the local SDS provider (a SPIRE agent's
/// Unix socket, as App Mesh's Envoy did) for secrets the model names in `sds` members. The
/// bootstrap that starts a proxy must define it when the proxy's configuration uses SDS.
pub const SDS_CLUSTER: &str = "static_cluster_sds";

/// Why a proxy's configuration could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// The proxy's mesh is not in the model.
    #[error("mesh {0} does not exist")]
    NoMesh(String),
    /// The proxy's virtual node or virtual gateway is not in the model.
    #[error("{0} does not exist")]
    UnknownProxy(String),
    /// The model asks for a certificate or trust from the mesh CA (`acm`, or automatic mTLS)
    /// and the agent has not received the mesh CA's trust domain yet: the proxy keeps what it
    /// has until it does.
    #[error(
        "{resource} uses {what}, served from the mesh CA, which this agent has not heard from yet"
    )]
    NoMeshCa {
        /// The resource (ARN path form).
        resource: String,
        /// What it uses.
        what: String,
    },
    /// Two different resources would get the same name (a bug: names are meant to be
    /// unambiguous).
    #[error("two different resources would be named {0}")]
    NameCollision(String),
}

/// What a translation builds, by type and name, before it is encoded.
#[derive(Debug, Default)]
pub(crate) struct Out {
    /// Resources already encoded (shared with other proxies through [`Shared`]).
    pub encoded: Vec<(ResourceType, Arc<Resource>)>,
    pub clusters: BTreeMap<String, Cluster>,
    pub listeners: BTreeMap<String, Listener>,
    pub routes: BTreeMap<String, RouteConfiguration>,
    /// Secrets the configuration takes from the agent over ADS (see [`Translator::with_trust_domain`]).
    pub agent_secrets: std::collections::BTreeSet<String>,
}

impl Out {
    /// Notes secrets the configuration takes from the agent over ADS.
    pub fn want_agent_secrets<'s>(&mut self, names: impl Iterator<Item = &'s str>) {
        self.agent_secrets.extend(names.map(str::to_string));
    }

    /// Adds route configuration `name` with `virtual_hosts`. Clusters are not validated by
    /// Envoy when it loads them: shoal's push order already guarantees they exist, and a
    /// validated route configuration would be refused whole for one missing cluster.
    pub fn add_routes(
        &mut self,
        name: &str,
        virtual_hosts: Vec<envoy_types::pb::envoy::config::route::v3::VirtualHost>,
    ) {
        self.routes.insert(
            name.to_string(),
            RouteConfiguration {
                name: name.to_string(),
                virtual_hosts,
                validate_clusters: util::boolv(false),
                ..Default::default()
            },
        );
    }
}

/// The translation's state: its inputs and what it has built so far.
pub(crate) struct Ctx<'a> {
    pub model: &'a Model,
    pub mesh: &'a str,
    pub mesh_spec: &'a api::MeshSpec,
    pub endpoints: &'a [Endpoint],
    /// `endpoints` grouped by what selects them.
    pub index: &'a shoal_model::discovery::EndpointIndex,
    pub opts: &'a ProxyOptions,
    pub out: Out,
    pub egress: cluster::EgressClusters,
    /// The proxy's access loggers (empty when its logging is off).
    pub logs: Vec<AccessLog>,
    /// What other proxies of the same view built and this one can reuse.
    pub shared: &'a Shared,
    /// The mesh CA's trust domain, when the agent serves its secrets.
    pub trust_domain: Option<&'a str>,
    /// The mesh's automatic mTLS (its `shoal:mtls` tag).
    pub mtls: MtlsMode,
}

impl<'a> Ctx<'a> {
    /// The endpoints virtual node `name` selects (see `shoal_model::discovery`), in the order
    /// of `endpoints`; empty when the node does not exist.
    pub fn node_endpoints(&self, name: &str) -> Vec<&'a Endpoint> {
        let key = ResourceKey::in_mesh(self.mesh, Kind::VirtualNode, name);
        match self.node_spec(name) {
            Some(spec) => self.index.for_node(self.endpoints, &key, spec),
            None => Vec::new(),
        }
    }

    /// The spec of virtual node `name` in the proxy's mesh.
    pub fn node_spec(&self, name: &str) -> Option<&'a api::VirtualNodeSpec> {
        match self
            .model
            .get(&ResourceKey::in_mesh(self.mesh, Kind::VirtualNode, name))
            .map(|r| &r.spec)
        {
            Some(Spec::VirtualNode(s)) => Some(s),
            _ => None,
        }
    }

    /// The spec of virtual service `name` in the proxy's mesh.
    pub fn service_spec(&self, name: &str) -> Option<&'a api::VirtualServiceSpec> {
        match self
            .model
            .get(&ResourceKey::in_mesh(self.mesh, Kind::VirtualService, name))
            .map(|r| &r.spec)
        {
            Some(Spec::VirtualService(s)) => Some(s),
            _ => None,
        }
    }

    /// The spec of virtual router `name` in the proxy's mesh.
    pub fn router_spec(&self, name: &str) -> Option<&'a api::VirtualRouterSpec> {
        match self
            .model
            .get(&ResourceKey::in_mesh(self.mesh, Kind::VirtualRouter, name))
            .map(|r| &r.spec)
        {
            Some(Spec::VirtualRouter(s)) => Some(s),
            _ => None,
        }
    }

    /// The routes of virtual router `router`, with their names.
    pub fn router_routes(&self, router: &str) -> Vec<(&'a str, &'a api::RouteSpec)> {
        self.model
            .children(self.mesh, Kind::Route, router)
            .filter_map(|r| match &r.spec {
                Spec::Route(s) => Some((r.key.name.as_str(), s)),
                _ => None,
            })
            .collect()
    }

    /// Who may call virtual node `node` (the model's authorization, computed once per mesh and
    /// view).
    pub fn callers(&self, node: &str) -> BTreeSet<(WorkloadKind, String)> {
        let all = {
            let mut memo = lock(&self.shared.callers);
            memo.entry(self.mesh.to_string())
                .or_insert_with(|| Arc::new(shoal_model::identity::callers(self.model, self.mesh)))
                .clone()
        };
        all.get(node).cloned().unwrap_or_default()
    }

    /// Whether the mesh lets unknown destinations through (egress filter ALLOW_ALL; App
    /// Mesh's default is DROP_ALL).
    pub fn allow_all(&self) -> bool {
        matches!(
            self.mesh_spec.egress_filter.as_ref().map(|f| f.r#type),
            Some(api::EgressFilterType::AllowAll)
        )
    }
}

/// The configuration of proxy `proxy`: what its Envoy is sent over ADS, computed from the
/// model and the `endpoints` the agent sees (with their health). Pure and deterministic.
///
/// Fails when the proxy's mesh or resource is not in the model (the proxy then keeps what it
/// has) or when the model uses ACM, which shoal cannot serve.
pub fn translate(
    model: &Model,
    endpoints: &[Endpoint],
    proxy: &ProxyId,
    opts: &ProxyOptions,
) -> Result<Snapshot, TranslateError> {
    let index = shoal_model::discovery::EndpointIndex::new(endpoints);
    translate_indexed(model, endpoints, &index, proxy, opts)
}

/// [`translate_indexed`] for many proxies at once, as the agent does after a change: resources
/// equal across proxies are built and encoded once (see [`Translator`]). Results are in the
/// order of `proxies`.
pub fn translate_many(
    model: &Model,
    endpoints: &[Endpoint],
    index: &shoal_model::discovery::EndpointIndex,
    proxies: &[(ProxyId, ProxyOptions)],
) -> Vec<Result<Snapshot, TranslateError>> {
    let t = Translator::new(model, endpoints, index);
    proxies.iter().map(|(p, o)| t.translate(p, o)).collect()
}

/// [`translate`] with the endpoints already indexed ([`shoal_model::discovery::EndpointIndex`]
/// of `endpoints`): the agent builds the index once per view and translates every proxy with it.
pub fn translate_indexed(
    model: &Model,
    endpoints: &[Endpoint],
    index: &shoal_model::discovery::EndpointIndex,
    proxy: &ProxyId,
    opts: &ProxyOptions,
) -> Result<Snapshot, TranslateError> {
    Translator::new(model, endpoints, index).translate(proxy, opts)
}

/// The encoded egress half of one sidecar, shared by every sidecar with the same backends.
type Egress = Arc<(
    Vec<(ResourceType, Arc<Resource>)>,
    std::collections::BTreeSet<String>,
)>;

/// Translates many proxies of one view (model and endpoints), sharing what they have in
/// common.
///
/// A sidecar's egress half (its backends' clusters, endpoints, egress listener and routes) is
/// a function of the mesh, the node's backends, backend defaults and logging and the proxy's
/// options only, and in a mesh most sidecars share it with others (every replica of a
/// service, and often whole tiers). The translator builds and encodes it once per distinct
/// set and hands the same `Arc<Resource>`s to every proxy that has it; with a thousand
/// sidecars of a hundred backends each, that turns a thousand translations of a hundred
/// clusters into one. It is `Sync`: the agent translates its proxies on several threads with
/// one translator. It is only valid for the view it was made with, which the borrows enforce.
pub struct Translator<'a> {
    model: &'a Model,
    endpoints: &'a [Endpoint],
    index: &'a shoal_model::discovery::EndpointIndex,
    memo: Memo<'a>,
    trust_domain: Option<&'a str>,
}

/// What a [`Translator`] remembers: its own, or one kept by the caller between translators of
/// the same view.
enum Memo<'a> {
    Own(Shared),
    Borrowed(&'a Shared),
}

/// The parts a [`Translator`] built that other proxies of the same view can share. Kept by a
/// caller that translates proxies one at a time (as the agent does when Envoys connect) and
/// handed to each translator with [`Translator::with_shared`]; it must only ever be used with
/// one view (model and endpoints), so keep it next to that view and drop it with it.
#[derive(Default)]
pub struct Shared {
    egress: Mutex<HashMap<(String, ProxyOptions), Egress>>,
    clusters: Mutex<HashMap<cluster::SharedKey, cluster::SharedCluster>>,
    /// Each mesh's authorization ([`shoal_model::identity::callers`]).
    callers: Mutex<HashMap<String, Arc<Callers>>>,
}

/// Who may call each virtual node of a mesh.
type Callers = BTreeMap<String, BTreeSet<(WorkloadKind, String)>>;

impl Shared {
    /// The encoded egress cluster (and endpoints) remembered under `key`.
    pub(crate) fn cluster(&self, key: &cluster::SharedKey) -> Option<cluster::SharedCluster> {
        lock(&self.clusters).get(key).cloned()
    }

    /// Remembers an encoded egress cluster.
    pub(crate) fn remember_cluster(&self, key: cluster::SharedKey, c: cluster::SharedCluster) {
        lock(&self.clusters).insert(key, c);
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("egress", &lock(&self.egress).len())
            .finish()
    }
}

impl<'a> Translator<'a> {
    /// A translator for the view `model` + `endpoints` (`index` is their index).
    pub fn new(
        model: &'a Model,
        endpoints: &'a [Endpoint],
        index: &'a shoal_model::discovery::EndpointIndex,
    ) -> Self {
        Translator {
            model,
            endpoints,
            index,
            memo: Memo::Own(Shared::default()),
            trust_domain: None,
        }
    }

    /// A translator for the view `model` + `endpoints` that remembers what it builds in
    /// `shared`, which must belong to this same view (see [`Shared`]).
    pub fn with_shared(
        model: &'a Model,
        endpoints: &'a [Endpoint],
        index: &'a shoal_model::discovery::EndpointIndex,
        shared: &'a Shared,
    ) -> Self {
        Translator {
            model,
            endpoints,
            index,
            memo: Memo::Borrowed(shared),
            trust_domain: None,
        }
    }

    /// The same, with `sds` secrets named in the mesh CA's `trust_domain` (the proxy's own
    /// SPIFFE id, the bundle `spiffe://<trust-domain>`) taken from the agent over ADS instead
    /// of from the local SDS provider; the snapshot lists them
    /// ([`Snapshot::agent_secrets`]) for the agent to add. A [`Shared`] memo must only be
    /// used with one trust domain.
    pub fn with_trust_domain(mut self, trust_domain: Option<&'a str>) -> Self {
        self.trust_domain = trust_domain;
        self
    }

    fn shared(&self) -> &Shared {
        match &self.memo {
            Memo::Own(s) => s,
            Memo::Borrowed(s) => s,
        }
    }

    /// A fresh translation context for one proxy (or one proxy's egress half).
    fn ctx<'b>(
        &'b self,
        mesh: &'b str,
        mesh_spec: &'b api::MeshSpec,
        opts: &'b ProxyOptions,
    ) -> Ctx<'b> {
        Ctx {
            model: self.model,
            mesh,
            mesh_spec,
            endpoints: self.endpoints,
            index: self.index,
            opts,
            out: Out::default(),
            egress: Default::default(),
            logs: Vec::new(),
            shared: self.shared(),
            trust_domain: self.trust_domain,
            mtls: MtlsMode::of_mesh(self.model, mesh),
        }
    }

    /// The configuration of proxy `proxy`, as [`translate`] computes it.
    pub fn translate(
        &self,
        proxy: &ProxyId,
        opts: &ProxyOptions,
    ) -> Result<Snapshot, TranslateError> {
        let model = self.model;
        let mesh_spec = match model.get(&ResourceKey::mesh(&proxy.mesh)).map(|r| &r.spec) {
            Some(Spec::Mesh(s)) => s,
            _ => return Err(TranslateError::NoMesh(proxy.mesh.clone())),
        };
        let unknown = || TranslateError::UnknownProxy(proxy.to_string());
        match proxy.kind {
            ProxyKind::VirtualNode => {
                let key = ResourceKey::in_mesh(&proxy.mesh, Kind::VirtualNode, &proxy.name);
                let Some(Spec::VirtualNode(spec)) = model.get(&key).map(|r| &r.spec) else {
                    return Err(unknown());
                };
                let mut ctx = self.ctx(&proxy.mesh, mesh_spec, opts);
                node::virtual_node_ingress(&mut ctx, &proxy.name, spec)?;
                let mut snap = encode(ctx.out);
                let egress = self.egress(proxy, mesh_spec, spec, opts)?;
                for (ty, r) in egress.0.iter() {
                    snap.insert(*ty, r.clone());
                }
                snap.want_agent_secrets(egress.1.iter().cloned());
                Ok(snap)
            }
            ProxyKind::VirtualGateway => {
                let key = ResourceKey::in_mesh(&proxy.mesh, Kind::VirtualGateway, &proxy.name);
                let Some(Spec::VirtualGateway(spec)) = model.get(&key).map(|r| &r.spec) else {
                    return Err(unknown());
                };
                let mut ctx = self.ctx(&proxy.mesh, mesh_spec, opts);
                gateway::virtual_gateway(&mut ctx, &proxy.name, spec)?;
                Ok(encode(ctx.out))
            }
        }
    }

    /// The egress half of virtual node `proxy`, from the memo or built (and remembered).
    /// Failures are not remembered: their messages name the node.
    fn egress(
        &self,
        proxy: &ProxyId,
        mesh_spec: &api::MeshSpec,
        spec: &api::VirtualNodeSpec,
        opts: &ProxyOptions,
    ) -> Result<Egress, TranslateError> {
        // The backends as the egress half uses them: by name, the first of each name (users list
        // them in any order).
        let backends = node::egress_backends(spec);
        let inputs = serde_json::to_string(&(
            &proxy.mesh,
            &backends,
            &spec.backend_defaults,
            &spec.logging,
        ))
        .unwrap_or_default();
        let key = (inputs, opts.clone());
        if let Some(e) = lock(&self.shared().egress).get(&key) {
            return Ok(e.clone());
        }
        let mut ctx = self.ctx(&proxy.mesh, mesh_spec, opts);
        node::virtual_node_egress(&mut ctx, &proxy.name, spec)?;
        let snap = encode(ctx.out);
        let built: Egress = Arc::new((
            ResourceType::ALL
                .iter()
                .flat_map(|ty| snap.resources(*ty).values().map(|r| (*ty, r.clone())))
                .collect(),
            snap.agent_secrets().clone(),
        ));
        lock(&self.shared().egress).insert(key, built.clone());
        Ok(built)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Encodes what a translation built.
fn encode(out: Out) -> Snapshot {
    let mut snap = Snapshot::default();
    for (ty, r) in out.encoded {
        snap.insert(ty, r);
    }
    for (name, c) in &out.clusters {
        snap.add(ResourceType::Cluster, name, c);
    }
    for (name, l) in &out.listeners {
        snap.add(ResourceType::Listener, name, l);
    }
    for (name, r) in &out.routes {
        snap.add(ResourceType::Route, name, r);
    }
    snap.want_agent_secrets(out.agent_secrets);
    snap
}
