//! A virtual node's sidecar: its ingress listener (traffic to the local application) and its
//! egress listener (the application's traffic to its backends).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use envoy_types::pb::envoy::config::accesslog::v3::AccessLog;
use envoy_types::pb::envoy::config::cluster::v3::{cluster as pb_cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{CidrRange, TrafficDirection, TransportSocket};
use envoy_types::pb::envoy::config::listener::v3::{
    filter, listener_filter, Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
};
use envoy_types::pb::envoy::config::route::v3::{Route, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::google::protobuf::Duration;
use shoal_model::api::{self, PortProtocol};
use shoal_model::discovery::virtual_service_nodes;

use super::cluster::{self, http_like, port_of, Limits};
use super::routes::{self, Order, PathCond};
use super::util::{self, ClientTls, ServerTls};
use super::{authz, names, Ctx, TranslateError};
use shoal_model::identity::{MtlsMode, WorkloadKind};

/// An HTTP connection manager filter routing by RDS route configuration `rds`.
pub(crate) fn hcm(stat_prefix: &str, rds: &str, logs: &[AccessLog], edge: bool) -> Filter {
    hcm_of(stat_prefix, rds, logs, edge, false)
}

/// [`hcm`]; with `client_identity`, the application is told who called: the client
/// certificate's URI (its SPIFFE id) in `x-forwarded-client-cert`, set by Envoy and never
/// taken from the request (SANITIZE_SET), as Istio and Consul's proxies do.
pub(crate) fn hcm_of(
    stat_prefix: &str,
    rds: &str,
    logs: &[AccessLog],
    edge: bool,
    client_identity: bool,
) -> Filter {
    let router = HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(util::any(
            &Router::default(),
        ))),
        ..Default::default()
    };
    let m = HttpConnectionManager {
        codec_type: http_connection_manager::CodecType::Auto as i32,
        stat_prefix: stat_prefix.to_string(),
        http_filters: vec![router],
        access_log: logs.to_vec(),
        use_remote_address: edge
            .then_some(envoy_types::pb::google::protobuf::BoolValue { value: true }),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(util::ads()),
            route_config_name: rds.to_string(),
        })),
        forward_client_cert_details: if client_identity {
            http_connection_manager::ForwardClientCertDetails::SanitizeSet as i32
        } else {
            0
        },
        set_current_client_cert_details: client_identity.then(|| {
            http_connection_manager::SetCurrentClientCertDetails {
                uri: true,
                ..Default::default()
            }
        }),
        ..Default::default()
    };
    Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(filter::ConfigType::TypedConfig(util::any(&m))),
    }
}

/// A TCP proxy filter to `clusters` (weighted when more than one).
pub(crate) fn tcp(
    stat_prefix: &str,
    clusters: &[(String, u32)],
    idle: Option<Duration>,
    logs: &[AccessLog],
) -> Filter {
    let specifier = if clusters.len() == 1 {
        tcp_proxy::ClusterSpecifier::Cluster(clusters[0].0.clone())
    } else {
        tcp_proxy::ClusterSpecifier::WeightedClusters(tcp_proxy::WeightedCluster {
            clusters: clusters
                .iter()
                .map(
                    |(name, weight)| tcp_proxy::weighted_cluster::ClusterWeight {
                        name: name.clone(),
                        weight: *weight,
                        ..Default::default()
                    },
                )
                .collect(),
        })
    };
    let p = TcpProxy {
        stat_prefix: stat_prefix.to_string(),
        idle_timeout: idle,
        access_log: logs.to_vec(),
        cluster_specifier: Some(specifier),
        ..Default::default()
    };
    Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(filter::ConfigType::TypedConfig(util::any(&p))),
    }
}

pub(crate) fn listener_filter_original_dst() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.original_dst".into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(util::any(
            &OriginalDst {},
        ))),
        ..Default::default()
    }
}

pub(crate) fn listener_filter_tls_inspector() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(util::any(
            &TlsInspector::default(),
        ))),
        ..Default::default()
    }
}

/// The filter chains serving one listener with `filter` and server TLS `tls`: one chain
/// (TLS or not) for STRICT and DISABLED; a TLS chain and a plain-text chain, told apart by the
/// TLS inspector, for PERMISSIVE. `base` is the match every chain adds to.
pub(crate) fn tls_chains(
    name: &str,
    base: FilterChainMatch,
    filter: Filter,
    tls: Option<&ServerTls>,
    authz: Option<Filter>,
    alpn: &[&str],
) -> Vec<FilterChain> {
    let chain = |name: String, m: FilterChainMatch, ts: Option<TransportSocket>| FilterChain {
        name,
        filter_chain_match: (m != FilterChainMatch::default()).then_some(m),
        // Authorization (on TLS chains only: plain text carries no identity) runs first.
        filters: ts
            .is_some()
            .then(|| authz.clone())
            .flatten()
            .into_iter()
            .chain([filter.clone()])
            .collect(),
        transport_socket: ts,
        ..Default::default()
    };
    match tls {
        None => vec![chain(name.to_string(), base, None)],
        Some(t) if t.strict => vec![chain(
            name.to_string(),
            base,
            Some(util::downstream_tls(t, alpn)),
        )],
        Some(t) => vec![
            chain(
                format!("{name}_tls"),
                FilterChainMatch {
                    transport_protocol: "tls".into(),
                    ..base.clone()
                },
                Some(util::downstream_tls(t, alpn)),
            ),
            chain(
                format!("{name}_plaintext"),
                FilterChainMatch {
                    transport_protocol: "raw_buffer".into(),
                    ..base
                },
                None,
            ),
        ],
    }
}

/// ALPN a listener offers: HTTP/2 and HTTP/1.1 for the HTTP connection manager's automatic
/// codec, nothing for TCP.
pub(crate) fn server_alpn(p: PortProtocol) -> &'static [&'static str] {
    if http_like(p) {
        &["h2", "http/1.1"]
    } else {
        &[]
    }
}

fn node_resource(mesh: &str, name: &str) -> String {
    format!("mesh/{mesh}/virtualNode/{name}")
}

/// The access loggers of virtual node `spec`'s sidecar (none when its logging is off).
pub(crate) fn access_logs(spec: &api::VirtualNodeSpec) -> Vec<AccessLog> {
    if let Some(api::AccessLog::File(f)) = spec.logging.as_ref().and_then(|l| l.access_log.as_ref())
    {
        return util::access_logs(&f.path, f.format.as_ref());
    }
    Vec::new()
}

/// Translates the ingress half of virtual node `name`'s sidecar (its listeners and the local
/// application's clusters) into `ctx.out`.
pub(crate) fn virtual_node_ingress(
    ctx: &mut Ctx<'_>,
    name: &str,
    spec: &api::VirtualNodeSpec,
) -> Result<(), TranslateError> {
    ctx.logs = access_logs(spec);
    ingress(ctx, name, spec)
}

/// Translates the egress half of virtual node `name`'s sidecar (its backends) into
/// `ctx.out`. It depends on the node's backends, backend defaults and logging only, never on
/// its name or listeners (the name appears in error messages alone), so sidecars with the same
/// backends share it: see [`super::Translator`].
pub(crate) fn virtual_node_egress(
    ctx: &mut Ctx<'_>,
    name: &str,
    spec: &api::VirtualNodeSpec,
) -> Result<(), TranslateError> {
    ctx.logs = access_logs(spec);
    egress(ctx, name, spec)
}

fn listener_timeouts(l: &api::Listener) -> (Option<Duration>, Option<Duration>) {
    match &l.timeout {
        Some(api::ListenerTimeout::Http(t)) | Some(api::ListenerTimeout::Http2(t)) => (
            util::opt_duration(&t.per_request),
            util::opt_duration(&t.idle),
        ),
        Some(api::ListenerTimeout::Grpc(t)) => (
            util::opt_duration(&t.per_request),
            util::opt_duration(&t.idle),
        ),
        Some(api::ListenerTimeout::Tcp(t)) => (None, util::opt_duration(&t.idle)),
        None => (None, None),
    }
}

fn ingress(
    ctx: &mut Ctx<'_>,
    name: &str,
    spec: &api::VirtualNodeSpec,
) -> Result<(), TranslateError> {
    let mut listeners: Vec<&api::Listener> = spec.listeners.iter().flatten().collect();
    if listeners.is_empty() {
        return Ok(());
    }
    listeners.sort_by_key(|l| l.port_mapping.port);
    let several = listeners.len() > 1;
    let resource = node_resource(ctx.mesh, name);
    let mut chains = Vec::new();
    let mut permissive = false;
    for l in listeners {
        let port = port_of(l.port_mapping.port);
        let proto = l.port_mapping.protocol;
        let tls = match util::listener_tls(&resource, l.tls.as_ref(), ctx.trust_domain)? {
            // Automatic mTLS covers listeners whose spec says nothing of TLS.
            None if l.tls.is_none() && ctx.mtls != MtlsMode::Off => Some(util::auto_server_tls(
                &resource,
                ctx.mtls == MtlsMode::Strict,
                ctx.trust_domain,
            )?),
            t => t,
        };
        if let Some(t) = &tls {
            ctx.out.want_agent_secrets(t.agent_secrets());
        }
        let authz = match (&tls, ctx.trust_domain) {
            (Some(t), Some(td)) if ctx.mtls != MtlsMode::Off && t.admits_by_model() => {
                // The node itself too: its agent's health probe comes with its identity.
                let mut callers = ctx.callers(name);
                callers.insert((WorkloadKind::VirtualNode, name.to_string()));
                Some(authz::filter(
                    td,
                    ctx.mesh,
                    &callers,
                    ctx.mtls == MtlsMode::Strict,
                ))
            }
            _ => None,
        };
        permissive |= tls.as_ref().is_some_and(|t| !t.strict);
        let cluster = cluster::ingress_cluster(ctx, name, l);
        let (per_request, idle) = listener_timeouts(l);
        let filter = if http_like(proto) {
            let rds = names::ingress_routes(proto, port);
            let route = routes::route(
                &format!("ingress_{port}"),
                &PathCond::Any,
                Vec::new(),
                Vec::new(),
                routes::action(
                    &[(cluster, 1)],
                    Some(per_request.unwrap_or_else(routes::default_timeout)),
                    idle,
                    None,
                ),
            );
            ctx.out.add_routes(
                &rds,
                vec![VirtualHost {
                    name: format!("ingress_{port}"),
                    domains: vec!["*".into()],
                    routes: vec![route],
                    ..Default::default()
                }],
            );
            let mutual = tls.as_ref().is_some_and(|t| t.validation.is_some());
            hcm_of("ingress", &rds, &ctx.logs, false, mutual)
        } else {
            tcp("ingress", &[(cluster, 1)], idle, &ctx.logs)
        };
        let base = FilterChainMatch {
            destination_port: several.then(|| util::u32v(u32::from(port))).flatten(),
            ..Default::default()
        };
        chains.extend(tls_chains(
            &format!("ingress_{}_{port}", names::protocol(proto)),
            base,
            filter,
            tls.as_ref(),
            authz,
            server_alpn(proto),
        ));
    }
    let mut listener_filters = Vec::new();
    if several {
        listener_filters.push(listener_filter_original_dst());
    }
    if permissive {
        listener_filters.push(listener_filter_tls_inspector());
    }
    let lname = names::ingress_listener(&ctx.opts.listen_address, ctx.opts.ingress_port);
    ctx.out.listeners.insert(
        lname.clone(),
        Listener {
            name: lname,
            address: Some(util::socket(
                &ctx.opts.listen_address,
                ctx.opts.ingress_port,
            )),
            filter_chains: chains,
            listener_filters,
            traffic_direction: TrafficDirection::Inbound as i32,
            ..Default::default()
        },
    );
    Ok(())
}

/// One HTTP-like backend on one port: a virtual host.
struct HttpHost {
    service: String,
    port: u16,
    routes: Vec<Route>,
}

/// One TCP backend on one port.
struct TcpDest {
    service: String,
    port: u16,
    clusters: Vec<(String, u32)>,
    idle: Option<Duration>,
    addresses: BTreeSet<IpAddr>,
}

/// Which client TLS a backend uses: its own client policy's, else the backend defaults', else
/// (neither says anything of TLS) automatic mTLS when the mesh has it.
fn backend_tls(
    ctx: &Ctx<'_>,
    resource: &str,
    spec: &api::VirtualNodeSpec,
    backend: &api::VirtualServiceBackend,
) -> Result<Option<ClientTls>, TranslateError> {
    let own = backend.client_policy.as_ref().filter(|p| p.tls.is_some());
    let defaults = spec
        .backend_defaults
        .as_ref()
        .and_then(|d| d.client_policy.as_ref())
        .filter(|p| p.tls.is_some());
    match own.or(defaults) {
        Some(policy) => util::client_tls(resource, Some(policy), ctx.trust_domain),
        None if ctx.mtls != MtlsMode::Off => {
            util::auto_client_tls(resource, ctx.trust_domain).map(Some)
        }
        None => Ok(None),
    }
}

/// Which routes of a router serve its listener `(port, protocol)`: those of the listener's
/// protocol whose port match is absent or equal.
pub(crate) fn route_protocol(r: &api::RouteSpec) -> Option<PortProtocol> {
    if r.http_route.is_some() {
        Some(PortProtocol::Http)
    } else if r.http2_route.is_some() {
        Some(PortProtocol::Http2)
    } else if r.grpc_route.is_some() {
        Some(PortProtocol::Grpc)
    } else if r.tcp_route.is_some() {
        Some(PortProtocol::Tcp)
    } else {
        None
    }
}

fn route_port(r: &api::RouteSpec) -> Option<i32> {
    if let Some(h) = r.http_route.as_ref().or(r.http2_route.as_ref()) {
        h.r#match.port
    } else if let Some(g) = &r.grpc_route {
        g.r#match.port
    } else if let Some(t) = &r.tcp_route {
        t.r#match.as_ref().and_then(|m| m.port)
    } else {
        None
    }
}

/// A router route's parts, ready to become Envoy routes.
pub(crate) struct RouterRoute<'a> {
    pub name: &'a str,
    pub path: PathCond,
    pub headers: Vec<envoy_types::pb::envoy::config::route::v3::HeaderMatcher>,
    pub query: Vec<envoy_types::pb::envoy::config::route::v3::QueryParameterMatcher>,
    pub targets: &'a [api::WeightedTarget],
    pub timeout: Option<Duration>,
    pub idle: Option<Duration>,
    pub retry: Option<envoy_types::pb::envoy::config::route::v3::RetryPolicy>,
    pub order: Order,
}

/// The HTTP-like routes of router `router` that serve its listener on `port` with
/// `protocol`, in order.
pub(crate) fn router_http_routes<'a>(
    ctx: &Ctx<'a>,
    router: &str,
    port: u16,
    protocol: PortProtocol,
) -> Vec<RouterRoute<'a>> {
    let mut out = Vec::new();
    for (name, r) in ctx.router_routes(router) {
        if route_protocol(r) != Some(protocol) {
            continue;
        }
        if route_port(r).is_some_and(|p| port_of(p) != port) {
            continue;
        }
        if let Some(h) = r.http_route.as_ref().or(r.http2_route.as_ref()) {
            let path = PathCond::http(&h.r#match.prefix, &h.r#match.path);
            let (headers, query) = routes::http_conditions(&h.r#match);
            let timeout = h.timeout.as_ref();
            let order = Order::new(r.priority, &path, headers.len() + query.len(), name);
            out.push(RouterRoute {
                name,
                path,
                headers,
                query,
                targets: &h.action.weighted_targets,
                timeout: timeout.and_then(|t| util::opt_duration(&t.per_request)),
                idle: timeout.and_then(|t| util::opt_duration(&t.idle)),
                retry: Some(
                    h.retry_policy
                        .as_ref()
                        .map_or_else(routes::default_retry, routes::http_retry),
                ),
                order,
            });
        } else if let Some(g) = &r.grpc_route {
            let path = PathCond::grpc(&g.r#match.service_name, &g.r#match.method_name);
            let headers = routes::grpc_conditions(&g.r#match);
            let order = Order::new(r.priority, &path, headers.len(), name);
            let timeout = g.timeout.as_ref();
            out.push(RouterRoute {
                name,
                path,
                headers,
                query: Vec::new(),
                targets: &g.action.weighted_targets,
                timeout: timeout.and_then(|t| util::opt_duration(&t.per_request)),
                idle: timeout.and_then(|t| util::opt_duration(&t.idle)),
                retry: Some(
                    g.retry_policy
                        .as_ref()
                        .map_or_else(routes::default_retry, routes::grpc_retry),
                ),
                order,
            });
        }
    }
    out.sort_by(|a, b| a.order.cmp(&b.order));
    out
}

/// The clusters of a route's weighted targets, with their weights.
pub(crate) fn target_clusters(
    ctx: &mut Ctx<'_>,
    targets: &[api::WeightedTarget],
    protocol: PortProtocol,
    tls: Option<&ClientTls>,
    via: &str,
    limits: Limits,
) -> Result<Vec<(String, u32)>, TranslateError> {
    let mut out = Vec::new();
    for t in targets {
        if t.weight <= 0 {
            continue;
        }
        if let Some((c, _)) = ctx.egress_cluster(
            &t.virtual_node,
            t.port.map(port_of),
            Some(protocol),
            tls,
            via,
            limits,
        )? {
            out.push((c, util::clamp_u32(t.weight.into())));
        }
    }
    Ok(out)
}

/// The listeners `(port, protocol)` a virtual service answers on: its provider node's or
/// router's.
pub(crate) fn service_ports(ctx: &Ctx<'_>, service: &str) -> Vec<(u16, PortProtocol)> {
    let mut ports: Vec<(u16, PortProtocol)> =
        match ctx.service_spec(service).and_then(|s| s.provider.as_ref()) {
            Some(api::VirtualServiceProvider::VirtualNode(p)) => ctx
                .node_spec(&p.virtual_node_name)
                .map(|n| {
                    n.listeners
                        .iter()
                        .flatten()
                        .map(|l| (port_of(l.port_mapping.port), l.port_mapping.protocol))
                        .collect()
                })
                .unwrap_or_default(),
            Some(api::VirtualServiceProvider::VirtualRouter(p)) => ctx
                .router_spec(&p.virtual_router_name)
                .map(|r| {
                    r.listeners
                        .iter()
                        .flatten()
                        .map(|l| (port_of(l.port_mapping.port), l.port_mapping.protocol))
                        .collect()
                })
                .unwrap_or_default(),
            None => Vec::new(),
        };
    ports.sort();
    ports.dedup_by_key(|p| p.0);
    ports
}

/// The backends of virtual node `spec` that its egress serves: by virtual service name, the
/// first of each name.
pub(crate) fn egress_backends(spec: &api::VirtualNodeSpec) -> Vec<&api::VirtualServiceBackend> {
    let mut backends: Vec<&api::VirtualServiceBackend> = spec
        .backends
        .iter()
        .flatten()
        .map(|b| match b {
            api::Backend::VirtualService(vs) => vs,
        })
        .collect();
    backends.sort_by(|a, b| a.virtual_service_name.cmp(&b.virtual_service_name));
    backends.dedup_by(|a, b| a.virtual_service_name == b.virtual_service_name);
    backends
}

fn egress(
    ctx: &mut Ctx<'_>,
    name: &str,
    spec: &api::VirtualNodeSpec,
) -> Result<(), TranslateError> {
    let resource = node_resource(ctx.mesh, name);
    let backends = egress_backends(spec);

    let mut hosts: Vec<HttpHost> = Vec::new();
    let mut tcps: Vec<TcpDest> = Vec::new();
    for b in backends {
        let service = b.virtual_service_name.as_str();
        let Some(vs) = ctx.service_spec(service) else {
            continue;
        };
        let tls = backend_tls(ctx, &resource, spec, b)?;
        for (port, proto) in service_ports(ctx, service) {
            match &vs.provider {
                Some(api::VirtualServiceProvider::VirtualNode(p)) => {
                    let Some((c, _)) = ctx.egress_cluster(
                        &p.virtual_node_name,
                        Some(port),
                        Some(proto),
                        tls.as_ref(),
                        service,
                        Limits::default(),
                    )?
                    else {
                        continue;
                    };
                    if http_like(proto) {
                        hosts.push(HttpHost {
                            service: service.to_string(),
                            port,
                            routes: vec![routes::route(
                                service,
                                &PathCond::Any,
                                Vec::new(),
                                Vec::new(),
                                routes::action(
                                    &[(c, 1)],
                                    Some(routes::default_timeout()),
                                    None,
                                    Some(routes::default_retry()),
                                ),
                            )],
                        });
                    } else {
                        tcps.push(TcpDest {
                            service: service.to_string(),
                            port,
                            clusters: vec![(c, 1)],
                            idle: None,
                            addresses: cluster::node_addresses(ctx, &p.virtual_node_name),
                        });
                    }
                }
                Some(api::VirtualServiceProvider::VirtualRouter(p)) => {
                    let router = p.virtual_router_name.as_str();
                    if http_like(proto) {
                        let mut out = Vec::new();
                        for r in router_http_routes(ctx, router, port, proto) {
                            let clusters = target_clusters(
                                ctx,
                                r.targets,
                                proto,
                                tls.as_ref(),
                                service,
                                Limits::default(),
                            )?;
                            out.push(routes::route(
                                r.name,
                                &r.path,
                                r.headers,
                                r.query,
                                routes::action(
                                    &clusters,
                                    Some(r.timeout.unwrap_or_else(routes::default_timeout)),
                                    r.idle,
                                    r.retry,
                                ),
                            ));
                        }
                        hosts.push(HttpHost {
                            service: service.to_string(),
                            port,
                            routes: out,
                        });
                    } else if let Some(dest) = tcp_dest(ctx, service, router, port, tls.as_ref())? {
                        tcps.push(dest);
                    }
                }
                None => {}
            }
        }
    }
    egress_listener(ctx, hosts, tcps)
}

/// The TCP destination of a router's listener on `port`: its first TCP route in order.
fn tcp_dest(
    ctx: &mut Ctx<'_>,
    service: &str,
    router: &str,
    port: u16,
    tls: Option<&ClientTls>,
) -> Result<Option<TcpDest>, TranslateError> {
    let mut candidates: Vec<(Order, &api::TcpRoute)> = ctx
        .router_routes(router)
        .into_iter()
        .filter_map(|(name, r)| {
            let t = r.tcp_route.as_ref()?;
            if route_port(r).is_some_and(|p| port_of(p) != port) {
                return None;
            }
            Some((Order::new(r.priority, &PathCond::Any, 0, name), t))
        })
        .collect();
    candidates.sort_by(|a, b| a.0.cmp(&b.0));
    let Some((_, t)) = candidates.first() else {
        return Ok(None);
    };
    let clusters = target_clusters(
        ctx,
        &t.action.weighted_targets,
        PortProtocol::Tcp,
        tls,
        service,
        Limits::default(),
    )?;
    if clusters.is_empty() {
        return Ok(None);
    }
    let mut addresses = BTreeSet::new();
    for node in virtual_service_nodes(ctx.model, ctx.mesh, service) {
        addresses.extend(cluster::node_addresses(ctx, &node));
    }
    Ok(Some(TcpDest {
        service: service.to_string(),
        port,
        clusters,
        idle: t.timeout.as_ref().and_then(|t| util::opt_duration(&t.idle)),
        addresses,
    }))
}

fn vhost(h: &HttpHost, domains: Vec<String>) -> VirtualHost {
    VirtualHost {
        name: format!("{}_{}", h.service, h.port),
        domains,
        routes: h.routes.clone(),
        ..Default::default()
    }
}

/// Adds `d` (lowercased: Envoy matches domains without case and refuses duplicates) unless
/// another virtual host of the same configuration has it.
fn push_domain(seen: &mut BTreeSet<String>, out: &mut Vec<String>, d: String) {
    let d = d.to_ascii_lowercase();
    if seen.insert(d.clone()) {
        out.push(d);
    }
}

fn egress_listener(
    ctx: &mut Ctx<'_>,
    hosts: Vec<HttpHost>,
    tcps: Vec<TcpDest>,
) -> Result<(), TranslateError> {
    let allow_all = ctx.allow_all();
    let egress_port = ctx.opts.egress_port;
    if allow_all {
        ctx.out.clusters.insert(
            names::PASSTHROUGH_CLUSTER.into(),
            Cluster {
                name: names::PASSTHROUGH_CLUSTER.into(),
                cluster_discovery_type: Some(pb_cluster::ClusterDiscoveryType::Type(
                    pb_cluster::DiscoveryType::OriginalDst as i32,
                )),
                lb_policy: pb_cluster::LbPolicy::ClusterProvided as i32,
                ..Default::default()
            },
        );
    }
    let passthrough_vhost = || VirtualHost {
        name: "passthrough".into(),
        domains: vec!["*".into()],
        routes: vec![routes::route(
            "passthrough",
            &PathCond::Any,
            Vec::new(),
            Vec::new(),
            routes::action(
                &[(names::PASSTHROUGH_CLUSTER.to_string(), 1)],
                Some(Duration::default()),
                None,
                None,
            ),
        )],
        ..Default::default()
    };

    // Route configurations per destination port.
    let mut by_port: BTreeMap<u16, Vec<&HttpHost>> = BTreeMap::new();
    for h in &hosts {
        by_port.entry(h.port).or_default().push(h);
    }
    let mut chains = Vec::new();
    for (port, hs) in &by_port {
        if *port == egress_port {
            continue;
        }
        let rds = names::egress_routes(*port);
        let mut seen = BTreeSet::new();
        let mut vhosts = Vec::new();
        for h in hs {
            let mut domains = Vec::new();
            push_domain(&mut seen, &mut domains, h.service.clone());
            push_domain(&mut seen, &mut domains, format!("{}:{}", h.service, h.port));
            if !domains.is_empty() {
                vhosts.push(vhost(h, domains));
            }
        }
        if allow_all {
            vhosts.push(passthrough_vhost());
        }
        ctx.out.add_routes(&rds, vhosts);
        chains.push(FilterChain {
            name: format!("egress_http_{port}"),
            filter_chain_match: Some(FilterChainMatch {
                destination_port: util::u32v(u32::from(*port)),
                ..Default::default()
            }),
            filters: vec![hcm("egress", &rds, &ctx.logs, false)],
            ..Default::default()
        });
    }
    // Traffic addressed to the egress port itself: Envoy used as an HTTP proxy. Every
    // backend, by `name:port`; the bare name goes to the service's listener on the egress
    // port if it has one, else to its lowest port.
    {
        let rds = names::egress_routes(egress_port);
        let mut seen = BTreeSet::new();
        let mut bare: BTreeMap<&str, u16> = BTreeMap::new();
        for h in &hosts {
            let e = bare.entry(h.service.as_str()).or_insert(h.port);
            if h.port == egress_port || (*e != egress_port && h.port < *e) {
                *e = h.port;
            }
        }
        let mut vhosts = Vec::new();
        for h in &hosts {
            let mut domains = Vec::new();
            if bare.get(h.service.as_str()) == Some(&h.port) {
                push_domain(&mut seen, &mut domains, h.service.clone());
            }
            push_domain(&mut seen, &mut domains, format!("{}:{}", h.service, h.port));
            if !domains.is_empty() {
                vhosts.push(vhost(h, domains));
            }
        }
        ctx.out.add_routes(&rds, vhosts);
        chains.push(FilterChain {
            name: "egress_http_direct".into(),
            filter_chain_match: Some(FilterChainMatch {
                destination_port: util::u32v(u32::from(egress_port)),
                ..Default::default()
            }),
            filters: vec![hcm("egress", &rds, &ctx.logs, false)],
            ..Default::default()
        });
    }
    // TCP: a chain per destination port; when the port is shared (with another TCP backend
    // or an HTTP one), each backend's chain also matches the addresses of its instances (an
    // address claimed by two backends goes to the first by name).
    let mut tcp_by_port: BTreeMap<u16, Vec<&TcpDest>> = BTreeMap::new();
    for t in &tcps {
        if t.port != egress_port {
            tcp_by_port.entry(t.port).or_default().push(t);
        }
    }
    for (port, ts) in tcp_by_port {
        let shared = ts.len() > 1 || by_port.contains_key(&port);
        let mut claimed: BTreeSet<IpAddr> = BTreeSet::new();
        for t in ts {
            let prefix_ranges: Vec<CidrRange> = if shared {
                let mine: Vec<IpAddr> = t
                    .addresses
                    .iter()
                    .filter(|a| claimed.insert(**a))
                    .copied()
                    .collect();
                if mine.is_empty() {
                    continue;
                }
                mine.iter()
                    .map(|a| CidrRange {
                        address_prefix: a.to_string(),
                        prefix_len: util::u32v(if a.is_ipv4() { 32 } else { 128 }),
                    })
                    .collect()
            } else {
                Vec::new()
            };
            chains.push(FilterChain {
                name: format!("egress_tcp_{}_{port}", t.service),
                filter_chain_match: Some(FilterChainMatch {
                    destination_port: util::u32v(u32::from(port)),
                    prefix_ranges,
                    ..Default::default()
                }),
                filters: vec![tcp("egress", &t.clusters, t.idle, &ctx.logs)],
                ..Default::default()
            });
        }
    }
    let default_filter_chain = allow_all.then(|| FilterChain {
        name: "egress_passthrough".into(),
        filters: vec![tcp(
            "egress_passthrough",
            &[(names::PASSTHROUGH_CLUSTER.to_string(), 1)],
            None,
            &ctx.logs,
        )],
        ..Default::default()
    });
    let lname = names::egress_listener(&ctx.opts.listen_address, egress_port);
    ctx.out.listeners.insert(
        lname.clone(),
        Listener {
            name: lname,
            address: Some(util::socket(&ctx.opts.listen_address, egress_port)),
            filter_chains: chains,
            default_filter_chain,
            listener_filters: vec![listener_filter_original_dst()],
            traffic_direction: TrafficDirection::Outbound as i32,
            ..Default::default()
        },
    );
    Ok(())
}
