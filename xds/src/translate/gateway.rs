//! A virtual gateway: its listeners and gateway routes.

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{FilterChainMatch, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, HeaderMatcher, QueryParameterMatcher, Route, VirtualHost,
};
use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatchAndSubstitute;
use envoy_types::pb::google::protobuf::Duration;
use shoal_model::api::{self, PortProtocol};

use super::cluster::{port_of, Limits};
use super::node::{self, hcm, router_http_routes, target_clusters, tls_chains};
use super::routes::{self, Order, PathCond, ValueMatch};
use super::util::{self, ClientTls};
use super::{names, Ctx, TranslateError};
use shoal_model::identity::MtlsMode;

fn gateway_protocol(p: api::VirtualGatewayPortProtocol) -> PortProtocol {
    match p {
        api::VirtualGatewayPortProtocol::Http => PortProtocol::Http,
        api::VirtualGatewayPortProtocol::Http2 => PortProtocol::Http2,
        api::VirtualGatewayPortProtocol::Grpc => PortProtocol::Grpc,
    }
}

/// `text` as an RE2 substitution that inserts it verbatim: RE2 reads `\1` as a capture group
/// and `\\` as one backslash, so every backslash is doubled.
fn substitution_literal(text: &str) -> String {
    text.replace('\\', "\\\\")
}

/// How a gateway route changes the path before the request goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PathRewrite {
    /// Unchanged.
    None,
    /// The matched prefix (and one `/` after it, when the prefix lacks one) becomes `to`.
    Prefix { from: String, to: String },
    /// The whole path becomes this.
    Exact(String),
}

impl PathRewrite {
    fn envoy(&self) -> Option<RegexMatchAndSubstitute> {
        match self {
            PathRewrite::None => None,
            PathRewrite::Prefix { from, to } => {
                let slash = if from.ends_with('/') { "" } else { "/?" };
                Some(RegexMatchAndSubstitute {
                    pattern: Some(routes::regex(&format!("^{}{slash}", ::regex::escape(from)))),
                    substitution: substitution_literal(to),
                })
            }
            PathRewrite::Exact(p) => Some(RegexMatchAndSubstitute {
                pattern: Some(routes::regex("^.*$")),
                substitution: substitution_literal(p),
            }),
        }
    }

    /// A router route's path condition, which App Mesh evaluates on the rewritten path, as
    /// conditions on the original path: `None` when never met, else alternatives (any one
    /// suffices; each is one Envoy route), where `None` is always met.
    ///
    /// A composed condition is one regex when its RE2 program fits Envoy's limit; a long
    /// prefix would not, and then the regex's alternatives become plain string matches (at
    /// most four routes, for the optional `/` and the query string).
    fn compose(&self, cond: &PathCond) -> Option<Vec<Option<HeaderMatcher>>> {
        match (self, cond) {
            (_, PathCond::Any) => Some(vec![None]),
            (PathRewrite::None, c) => Some(vec![c.header()]),
            (PathRewrite::Exact(p), c) => c.matches(p).then_some(vec![None]),
            (PathRewrite::Prefix { from, to }, PathCond::Prefix(s) | PathCond::Exact(s)) => {
                let exact = matches!(cond, PathCond::Exact(_));
                if !exact && to.starts_with(s.as_str()) {
                    return Some(vec![None]);
                }
                let rest = s.strip_prefix(to.as_str())?;
                let sep = if from.ends_with('/') {
                    ""
                } else if rest.starts_with('/') {
                    "/"
                } else {
                    "/?"
                };
                let end = if exact { r"(\?.*)?$" } else { "" };
                let re = format!(
                    "^{}{sep}{}{end}",
                    ::regex::escape(from),
                    ::regex::escape(rest)
                );
                if shoal_model::re2::program_size(&re).is_ok_and(|size| size.fits_envoy()) {
                    return Some(vec![Some(routes::header(
                        ":path",
                        false,
                        Some(ValueMatch::Regex(&re)),
                    ))]);
                }
                let starts: Vec<String> = match sep {
                    "/?" => vec![format!("{from}{rest}"), format!("{from}/{rest}")],
                    _ => vec![format!("{from}{sep}{rest}")],
                };
                let mut out = Vec::new();
                for p in &starts {
                    if exact {
                        out.push(Some(routes::header(
                            ":path",
                            false,
                            Some(ValueMatch::Exact(p)),
                        )));
                        let query = format!("{p}?");
                        out.push(Some(routes::header(
                            ":path",
                            false,
                            Some(ValueMatch::Prefix(&query)),
                        )));
                    } else {
                        out.push(Some(routes::header(
                            ":path",
                            false,
                            Some(ValueMatch::Prefix(p)),
                        )));
                    }
                }
                Some(out)
            }
            // A regex cannot be carried through a prefix rewrite; the gateway route's own
            // conditions decide alone.
            (PathRewrite::Prefix { .. }, PathCond::Regex(_)) => Some(vec![None]),
        }
    }
}

/// A gateway route, normalized across its http/http2/grpc shapes.
struct GatewayRoute<'a> {
    name: &'a str,
    protocol: PortProtocol,
    port: Option<u16>,
    path: PathCond,
    headers: Vec<HeaderMatcher>,
    query: Vec<QueryParameterMatcher>,
    rewrite: PathRewrite,
    host_rewrite: bool,
    target: &'a api::GatewayRouteTarget,
    order: Order,
}

fn hostname_match(h: &api::GatewayRouteHostnameMatch) -> Option<HeaderMatcher> {
    // The Host header may carry a port; hostnames match without case.
    let re = if let Some(e) = &h.exact {
        format!("(?i)^{}(:[0-9]+)?$", ::regex::escape(e))
    } else if let Some(s) = &h.suffix {
        format!("(?i)^[^:]*{}(:[0-9]+)?$", ::regex::escape(s))
    } else {
        return None;
    };
    Some(routes::header(
        ":authority",
        false,
        Some(ValueMatch::Regex(&re)),
    ))
}

fn enabled(d: Option<api::DefaultGatewayRouteRewrite>) -> bool {
    !matches!(d, Some(api::DefaultGatewayRouteRewrite::Disabled))
}

fn http_gateway_route<'a>(
    name: &'a str,
    protocol: PortProtocol,
    priority: Option<i32>,
    r: &'a api::HttpGatewayRoute,
) -> GatewayRoute<'a> {
    let m = &r.r#match;
    let path = PathCond::http(&m.prefix, &m.path);
    let mut headers: Vec<HeaderMatcher> = m
        .headers
        .iter()
        .flatten()
        .map(|h| {
            routes::header(
                &h.name,
                h.invert.unwrap_or(false),
                h.r#match.as_ref().map(ValueMatch::from),
            )
        })
        .collect();
    if let Some(me) = m.method {
        headers.push(routes::method(me));
    }
    headers.extend(m.hostname.as_ref().and_then(hostname_match));
    let query = routes::query(m.query_parameters.as_deref().unwrap_or_default());
    let rw = r.action.rewrite.as_ref();
    // App Mesh rewrites the matched prefix to `/` and the host to the target's name unless
    // told otherwise.
    let rewrite = if let Some(e) = rw
        .and_then(|w| w.path.as_ref())
        .and_then(|p| p.exact.clone())
    {
        PathRewrite::Exact(e)
    } else if let Some(prefix) = &m.prefix {
        let p = rw.and_then(|w| w.prefix.as_ref());
        let to = match p {
            Some(p) if p.value.is_some() => p.value.clone(),
            Some(p) if !enabled(p.default_prefix) => None,
            _ => Some("/".to_string()),
        };
        match to {
            Some(to) if to != *prefix => PathRewrite::Prefix {
                from: prefix.clone(),
                to,
            },
            _ => PathRewrite::None,
        }
    } else {
        PathRewrite::None
    };
    let host_rewrite = enabled(
        rw.and_then(|w| w.hostname.as_ref())
            .and_then(|h| h.default_target_hostname),
    );
    let order = Order::new(priority, &path, headers.len() + query.len(), name);
    GatewayRoute {
        name,
        protocol,
        port: m.port.map(port_of),
        path,
        headers,
        query,
        rewrite,
        host_rewrite,
        target: &r.action.target,
        order,
    }
}

fn grpc_gateway_route<'a>(
    name: &'a str,
    priority: Option<i32>,
    r: &'a api::GrpcGatewayRoute,
) -> GatewayRoute<'a> {
    let m = &r.r#match;
    let path = PathCond::grpc(&m.service_name, &None);
    let mut headers: Vec<HeaderMatcher> = m
        .metadata
        .iter()
        .flatten()
        .map(|h| {
            routes::header(
                &h.name,
                h.invert.unwrap_or(false),
                h.r#match.as_ref().map(ValueMatch::from),
            )
        })
        .collect();
    headers.extend(m.hostname.as_ref().and_then(hostname_match));
    let host_rewrite = enabled(
        r.action
            .rewrite
            .as_ref()
            .and_then(|w| w.hostname.as_ref())
            .and_then(|h| h.default_target_hostname),
    );
    let order = Order::new(priority, &path, headers.len(), name);
    GatewayRoute {
        name,
        protocol: PortProtocol::Grpc,
        port: m.port.map(port_of),
        path,
        headers,
        query: Vec::new(),
        rewrite: PathRewrite::None,
        host_rewrite,
        target: &r.action.target,
        order,
    }
}

fn gateway_routes<'a>(ctx: &Ctx<'a>, gateway: &str) -> Vec<GatewayRoute<'a>> {
    let mut out = Vec::new();
    for r in ctx
        .model
        .children(ctx.mesh, shoal_model::Kind::GatewayRoute, gateway)
    {
        let shoal_model::Spec::GatewayRoute(g) = &r.spec else {
            continue;
        };
        let name = r.key.name.as_str();
        if let Some(h) = &g.http_route {
            out.push(http_gateway_route(name, PortProtocol::Http, g.priority, h));
        } else if let Some(h) = &g.http2_route {
            out.push(http_gateway_route(name, PortProtocol::Http2, g.priority, h));
        } else if let Some(gr) = &g.grpc_route {
            out.push(grpc_gateway_route(name, g.priority, gr));
        }
    }
    out.sort_by(|a, b| a.order.cmp(&b.order));
    out
}

#[allow(clippy::too_many_arguments)]
fn envoy_route(
    name: String,
    g: &GatewayRoute<'_>,
    extra: Vec<HeaderMatcher>,
    extra_query: Vec<QueryParameterMatcher>,
    clusters: &[(String, u32)],
    timeout: Option<Duration>,
    idle: Option<Duration>,
    retry: Option<envoy_types::pb::envoy::config::route::v3::RetryPolicy>,
) -> Route {
    let mut headers = g.headers.clone();
    headers.extend(extra);
    let mut query = g.query.clone();
    query.extend(extra_query);
    let mut action = routes::action(
        clusters,
        Some(timeout.unwrap_or_else(routes::default_timeout)),
        idle,
        retry,
    );
    if let route::Action::Route(a) = &mut action {
        a.regex_rewrite = g.rewrite.envoy();
        if g.host_rewrite {
            a.host_rewrite_specifier =
                Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(
                    g.target.virtual_service.virtual_service_name.clone(),
                ));
        }
    }
    routes::route(&name, &g.path, headers, query, action)
}

/// The Envoy routes of gateway route `g` on a listener of `protocol`.
fn expand(
    ctx: &mut Ctx<'_>,
    g: &GatewayRoute<'_>,
    tls: Option<&ClientTls>,
    limits: Limits,
) -> Result<Vec<Route>, TranslateError> {
    let service = g.target.virtual_service.virtual_service_name.as_str();
    let target_port = g.target.port.map(port_of);
    let Some(vs) = ctx.service_spec(service) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    match &vs.provider {
        Some(api::VirtualServiceProvider::VirtualNode(p)) => {
            let clusters = match ctx.egress_cluster(
                &p.virtual_node_name,
                target_port,
                Some(g.protocol),
                tls,
                service,
                limits,
            )? {
                Some((c, _)) => vec![(c, 1)],
                None => Vec::new(),
            };
            out.push(envoy_route(
                g.name.to_string(),
                g,
                Vec::new(),
                Vec::new(),
                &clusters,
                None,
                None,
                Some(routes::default_retry()),
            ));
        }
        Some(api::VirtualServiceProvider::VirtualRouter(p)) => {
            let router = p.virtual_router_name.as_str();
            let listeners: Vec<(u16, PortProtocol)> = node::service_ports(ctx, service);
            let listener = match target_port {
                Some(tp) => listeners.iter().find(|(p, _)| *p == tp),
                None if listeners.len() == 1 => listeners.first(),
                None => listeners
                    .iter()
                    .find(|(_, proto)| *proto == g.protocol)
                    .or_else(|| listeners.first()),
            };
            let Some(&(port, proto)) = listener else {
                return Ok(out);
            };
            for r in router_http_routes(ctx, router, port, proto) {
                let Some(paths) = g.rewrite.compose(&r.path) else {
                    continue;
                };
                let clusters = target_clusters(ctx, r.targets, proto, tls, service, limits)?;
                for path in paths {
                    let mut extra = r.headers.clone();
                    extra.extend(path);
                    out.push(envoy_route(
                        format!("{}/{}", g.name, r.name),
                        g,
                        extra,
                        r.query.clone(),
                        &clusters,
                        r.timeout,
                        r.idle,
                        r.retry.clone(),
                    ));
                }
            }
        }
        None => {}
    }
    Ok(out)
}

/// Translates virtual gateway `name` into `ctx.out`.
pub(crate) fn virtual_gateway(
    ctx: &mut Ctx<'_>,
    name: &str,
    spec: &api::VirtualGatewaySpec,
) -> Result<(), TranslateError> {
    let resource = format!("mesh/{}/virtualGateway/{name}", ctx.mesh);
    if let Some(api::VirtualGatewayAccessLog::File(f)) =
        spec.logging.as_ref().and_then(|l| l.access_log.as_ref())
    {
        ctx.logs = util::access_logs(&f.path, f.format.as_ref());
    }
    let policy = spec
        .backend_defaults
        .as_ref()
        .and_then(|d| d.client_policy.as_ref())
        .filter(|p| p.tls.is_some());
    // A gateway's listeners face clients outside the mesh and keep what their spec says;
    // automatic mTLS covers its calls into the mesh.
    let tls = match policy {
        Some(p) => util::gateway_client_tls(&resource, Some(p), ctx.trust_domain)?,
        None if ctx.mtls != MtlsMode::Off => {
            Some(util::auto_client_tls(&resource, ctx.trust_domain)?)
        }
        None => None,
    };
    let groutes = gateway_routes(ctx, name);
    let mut listeners: Vec<&api::VirtualGatewayListener> = spec.listeners.iter().collect();
    listeners.sort_by_key(|l| l.port_mapping.port);
    for l in listeners {
        let port = port_of(l.port_mapping.port);
        let proto = gateway_protocol(l.port_mapping.protocol);
        let limits = Limits::of_gateway(l.connection_pool.as_ref());
        let server_tls = util::gateway_listener_tls(&resource, l.tls.as_ref(), ctx.trust_domain)?;
        if let Some(t) = &server_tls {
            ctx.out.want_agent_secrets(t.agent_secrets());
        }
        let mut rts = Vec::new();
        for g in &groutes {
            if g.protocol != proto || g.port.is_some_and(|p| p != port) {
                continue;
            }
            rts.extend(expand(ctx, g, tls.as_ref(), limits)?);
        }
        let rds = names::ingress_routes(proto, port);
        ctx.out.add_routes(
            &rds,
            vec![VirtualHost {
                name: format!("gateway_{port}"),
                domains: vec!["*".into()],
                routes: rts,
                ..Default::default()
            }],
        );
        let chains = tls_chains(
            &format!("gateway_{}_{port}", names::protocol(proto)),
            FilterChainMatch::default(),
            hcm("gateway", &rds, &ctx.logs, true),
            server_tls.as_ref(),
            None,
            node::server_alpn(proto),
        );
        let permissive = server_tls.as_ref().is_some_and(|t| !t.strict);
        let lname = names::ingress_listener(&ctx.opts.listen_address, port);
        ctx.out.listeners.insert(
            lname.clone(),
            Listener {
                name: lname,
                address: Some(util::socket(&ctx.opts.listen_address, port)),
                filter_chains: chains,
                listener_filters: if permissive {
                    vec![node::listener_filter_tls_inspector()]
                } else {
                    Vec::new()
                },
                traffic_direction: TrafficDirection::Inbound as i32,
                ..Default::default()
            },
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rewrite target is inserted verbatim: a backslash in it is not a capture group.
    #[test]
    fn rewrite_targets_are_literal_substitutions() {
        let rw = PathRewrite::Prefix {
            from: "/api".into(),
            to: r"/v\1/".into(),
        };
        assert_eq!(rw.envoy().unwrap().substitution, r"/v\\1/");
        let exact = PathRewrite::Exact(r"/a\b".into());
        assert_eq!(exact.envoy().unwrap().substitution, r"/a\\b");
        assert_eq!(substitution_literal("/plain/"), "/plain/");
    }
}
