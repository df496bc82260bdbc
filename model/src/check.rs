//! The rules beyond the botocore constraints: what App Mesh rejected, or what Envoy would
//! reject once the spec is translated. A spec that passes [`spec`] and [`references`] never
//! makes a proxy fail to load its configuration, as far as one spec decides it: regexes are
//! checked against Envoy's RE2 ([`crate::re2`]) and access log formats against its command
//! operators ([`crate::accesslog`]). What depends on the proxy's host (certificate files) is
//! out of reach here.

use std::collections::BTreeSet;

use crate::api::{self, Duration, DurationUnit};
use crate::error::ApiError;
use crate::resource::{Kind, ResourceKey, Spec};
use crate::store::{describe, Model};
use crate::validate::{FieldError, Validate, Validator};
use crate::{accesslog, re2};

/// Retry events App Mesh accepts in `httpRetryEvents`.
pub const HTTP_RETRY_EVENTS: [&str; 4] = [
    "server-error",
    "gateway-error",
    "client-error",
    "stream-error",
];

/// Checks a resource name: the model's 1–255 characters, and characters that keep ARNs,
/// node ids and Envoy resource names unambiguous (letters, digits, `-`, `_`, `.`).
pub fn name(kind: Kind, name: &str) -> Result<(), ApiError> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if name.is_empty() || name.len() > 255 || !ok_chars {
        return Err(ApiError::bad_request(format!(
            "{} name {:?} is invalid: use 1 to 255 letters, digits, '-', '_' or '.'",
            kind.title(),
            name
        )));
    }
    Ok(())
}

/// Checks a spec on its own (no state): the model's constraints, then the rules below.
/// Returns every problem found, each with its JSON path under `spec`.
pub fn spec(spec: &Spec) -> Vec<FieldError> {
    let mut v = Validator::at("spec");
    match spec {
        Spec::Mesh(s) => s.validate(&mut v),
        Spec::VirtualNode(s) => {
            s.validate(&mut v);
            virtual_node(s, &mut v);
        }
        Spec::VirtualRouter(s) => {
            s.validate(&mut v);
            let listeners = s.listeners.as_deref().unwrap_or_default();
            if listeners.is_empty() {
                v.error("listeners", "a virtual router needs at least one listener");
            }
            unique_ports(&mut v, listeners.iter().map(|l| l.port_mapping.port));
        }
        Spec::Route(s) => {
            s.validate(&mut v);
            route(s, &mut v);
        }
        Spec::VirtualService(s) => {
            s.validate(&mut v);
        }
        Spec::VirtualGateway(s) => {
            s.validate(&mut v);
            virtual_gateway(s, &mut v);
        }
        Spec::GatewayRoute(s) => {
            s.validate(&mut v);
            gateway_route(s, &mut v);
        }
    }
    v.into_errors()
}

/// Joins field errors into one `BadRequestException`, or `Ok` if there are none.
pub fn into_result(errors: Vec<FieldError>) -> Result<(), ApiError> {
    if errors.is_empty() {
        return Ok(());
    }
    let parts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    Err(ApiError::bad_request(parts.join("; ")))
}

fn unique_ports(v: &mut Validator, ports: impl Iterator<Item = i32>) {
    let mut seen = BTreeSet::new();
    for p in ports {
        if !seen.insert(p) {
            v.error(
                "listeners",
                format!("port {p} is used by more than one listener"),
            );
        }
    }
}

fn duration(v: &mut Validator, member: &str, d: &Option<Duration>) {
    if let Some(d) = d {
        if d.value.is_some() != d.unit.is_some() {
            v.error(member, "a duration needs both value and unit");
        }
        if let (Some(value), Some(unit)) = (d.value, d.unit) {
            // Envoy durations are protobuf Durations: at most 315,576,000,000 seconds.
            let secs = match unit {
                DurationUnit::S => value,
                DurationUnit::Ms => value / 1000,
            };
            if secs > 315_576_000_000 {
                v.error(member, "duration is too long");
            }
        }
    }
}

fn http_timeout(v: &mut Validator, member: &str, t: &api::HttpTimeout) {
    v.within(member, |v| {
        duration(v, "idle", &t.idle);
        duration(v, "perRequest", &t.per_request);
    });
}

fn grpc_timeout(v: &mut Validator, member: &str, t: &api::GrpcTimeout) {
    v.within(member, |v| {
        duration(v, "idle", &t.idle);
        duration(v, "perRequest", &t.per_request);
    });
}

/// Checks a regular expression Envoy compiles with RE2: RE2's syntax (the Rust `regex` crate
/// accepts more, such as `(?x)`), Envoy's limit on the size of the compiled program, and the
/// Rust engine too, which the translation uses to evaluate rewrites.
fn regex(v: &mut Validator, member: &str, re: &str) {
    let _ = regex_fits(v, member, re, "");
}

/// [`regex`] for a pattern that reaches Envoy as `sent` (the pattern itself, or a larger one
/// the translation builds around it), described by `how` in messages. Whether it passed.
fn regex_fits(v: &mut Validator, member: &str, sent: &str, how: &str) -> bool {
    match re2::program_size(sent) {
        Err(e) => {
            v.error(member, format!("invalid regular expression: {e}"));
            false
        }
        Ok(size) if !size.fits_envoy() => {
            v.error(
                member,
                format!(
                    "regular expression is too complex for Envoy: RE2 compiles it{how} to a \
                     program of {size} instructions, and Envoy accepts at most {}",
                    re2::ENVOY_MAX_PROGRAM_SIZE
                ),
            );
            false
        }
        Ok(_) => match regex::Regex::new(sent) {
            Err(e) => {
                v.error(
                    member,
                    format!("invalid regular expression: {}", one_line(&e.to_string())),
                );
                false
            }
            Ok(_) => true,
        },
    }
}

/// A route's path regex. Besides the route's own path match, a virtual gateway whose route
/// targets the route's service matches the same regex on the `:path` header, followed by an
/// optional query string; that larger pattern has to fit Envoy's limit too. (Mirrors
/// `PathCond::header` in `xds/src/translate/routes.rs`.)
fn route_path_regex(v: &mut Validator, member: &str, re: &str) {
    if regex_fits(v, member, re, "") {
        let sent = format!(r"^(?:{re})(\?.*)?$");
        regex_fits(
            v,
            member,
            &sent,
            " (as a virtual gateway matches it on the :path header with the query string)",
        );
    }
}

/// The regex a gateway route's hostname match becomes: the Host header, any case, with an
/// optional port. (Mirrors `hostname_match` in `xds/src/translate/gateway.rs`.)
fn hostname_regex(v: &mut Validator, h: &api::GatewayRouteHostnameMatch) {
    let (member, sent) = match (&h.exact, &h.suffix) {
        (Some(e), None) => ("exact", format!("(?i)^{}(:[0-9]+)?$", regex::escape(e))),
        (None, Some(s)) => (
            "suffix",
            format!("(?i)^[^:]*{}(:[0-9]+)?$", regex::escape(s)),
        ),
        _ => return,
    };
    if let Ok(size) = re2::program_size(&sent) {
        if !size.fits_envoy() {
            v.error(
                member,
                format!(
                    "hostname is too long for Envoy: shoal matches it with a regular expression \
                     that RE2 compiles to {size} instructions, and Envoy accepts at most {}; \
                     use a shorter hostname",
                    re2::ENVOY_MAX_PROGRAM_SIZE
                ),
            );
        }
    }
}

/// A header (or gRPC metadata) name to match on: an HTTP token, optionally after a `:` for
/// pseudo-headers. Envoy refuses names with NUL, CR or LF; other characters outside a token
/// can never appear in a request's header names, so a match on them could never hold.
fn header_name(v: &mut Validator, member: &str, name: &str) {
    if !accesslog::is_header_name(name) {
        v.error(
            member,
            format!(
                "{name:?} is not an HTTP header name: use letters, digits and \
                 !#$%&'*+-.^_`|~, after an optional leading ':'"
            ),
        );
    }
}

/// A path a gateway route rewrites to. Envoy refuses NUL, CR and LF in it (it becomes a
/// header value), and no control character belongs in a request path.
fn rewrite_path(v: &mut Validator, member: &str, path: &str) {
    if path.chars().any(|c| c.is_ascii_control()) {
        v.error(member, "must not contain control characters");
    }
}

/// An access log format: Envoy parses its command operators when it builds the listener.
fn access_log_format(v: &mut Validator, format: &Option<api::LoggingFormat>) {
    match format {
        Some(api::LoggingFormat::Text(t)) => {
            if let Err(e) = accesslog::check_format(t) {
                v.error("format.text", e);
            }
        }
        Some(api::LoggingFormat::Json(pairs)) => {
            for (i, p) in pairs.iter().enumerate() {
                if let Err(e) = accesslog::check_format(&p.value) {
                    v.error(&format!("format.json[{i}].value"), e);
                }
            }
        }
        None => {}
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn hostname(v: &mut Validator, member: &str, h: &str) {
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if !ok {
        v.error(member, format!("{h:?} is not a valid DNS name"));
    }
}

fn header_match(v: &mut Validator, m: &api::HeaderMatchMethod) {
    v.within("match", |v| match m {
        api::HeaderMatchMethod::Regex(re) => regex(v, "regex", re),
        api::HeaderMatchMethod::Range(r) if r.start >= r.end => {
            v.error("range", "start must be less than end")
        }
        _ => {}
    });
}

/// A path match; `gateway` when it is a gateway route's own (Envoy gets its regex as is),
/// otherwise a route's (whose regex a virtual gateway may also wrap).
fn path_match(v: &mut Validator, p: &api::HttpPathMatch, gateway: bool) {
    v.within("path", |v| match (&p.exact, &p.regex) {
        (Some(_), Some(_)) | (None, None) => v.error("", "set exactly one of exact and regex"),
        (Some(e), None) if !e.starts_with('/') => v.error("exact", "must start with '/'"),
        (None, Some(re)) if gateway => regex(v, "regex", re),
        (None, Some(re)) => route_path_regex(v, "regex", re),
        _ => {}
    });
}

fn virtual_node(s: &api::VirtualNodeSpec, v: &mut Validator) {
    if let Some(api::AccessLog::File(f)) = s.logging.as_ref().and_then(|l| l.access_log.as_ref()) {
        v.within("logging.accessLog.file", |v| {
            access_log_format(v, &f.format)
        });
    }
    let listeners = s.listeners.as_deref().unwrap_or_default();
    unique_ports(v, listeners.iter().map(|l| l.port_mapping.port));
    v.within("listeners", |v| {
        for (i, l) in listeners.iter().enumerate() {
            v.within(&format!("[{i}]"), |v| listener(v, l));
        }
    });
    if let Some(sd) = &s.service_discovery {
        v.within("serviceDiscovery", |v| match sd {
            api::ServiceDiscovery::Dns(d) => {
                v.within("dns", |v| hostname(v, "hostname", &d.hostname))
            }
            api::ServiceDiscovery::AwsCloudMap(_) => {}
        });
    }
    if let Some(backends) = &s.backends {
        v.within("backends", |v| {
            for (i, b) in backends.iter().enumerate() {
                let api::Backend::VirtualService(vs) = b;
                v.within(&format!("[{i}].virtualService"), |v| {
                    if let Err(e) = name(Kind::VirtualService, &vs.virtual_service_name) {
                        v.error("virtualServiceName", e.message);
                    }
                });
            }
        });
    }
}

fn listener(v: &mut Validator, l: &api::Listener) {
    let proto = l.port_mapping.protocol;
    let proto_name = proto.as_str();
    if let Some(hc) = &l.health_check {
        v.within("healthCheck", |v| {
            let http_like = matches!(
                hc.protocol,
                api::PortProtocol::Http | api::PortProtocol::Http2
            );
            if http_like && hc.path.as_deref().is_none_or(|p| !p.starts_with('/')) {
                v.error(
                    "path",
                    "an HTTP health check needs a path starting with '/'",
                );
            }
        });
    }
    if let Some(t) = &l.timeout {
        let member = match t {
            api::ListenerTimeout::Grpc(t) => {
                grpc_timeout(v, "timeout.grpc", t);
                "grpc"
            }
            api::ListenerTimeout::Http(t) => {
                http_timeout(v, "timeout.http", t);
                "http"
            }
            api::ListenerTimeout::Http2(t) => {
                http_timeout(v, "timeout.http2", t);
                "http2"
            }
            api::ListenerTimeout::Tcp(t) => {
                v.within("timeout.tcp", |v| duration(v, "idle", &t.idle));
                "tcp"
            }
        };
        if member != proto_name {
            v.error(
                "timeout",
                format!("timeout.{member} does not match the listener's protocol {proto_name}"),
            );
        }
    }
    if let Some(cp) = &l.connection_pool {
        let member = match cp {
            api::VirtualNodeConnectionPool::Grpc(_) => "grpc",
            api::VirtualNodeConnectionPool::Http(_) => "http",
            api::VirtualNodeConnectionPool::Http2(_) => "http2",
            api::VirtualNodeConnectionPool::Tcp(_) => "tcp",
        };
        if member != proto_name {
            v.error(
                "connectionPool",
                format!(
                    "connectionPool.{member} does not match the listener's protocol {proto_name}"
                ),
            );
        }
    }
    if let Some(od) = &l.outlier_detection {
        v.within("outlierDetection", |v| {
            duration(
                v,
                "baseEjectionDuration",
                &Some(od.base_ejection_duration.clone()),
            );
            duration(v, "interval", &Some(od.interval.clone()));
        });
    }
}

fn retry_events(v: &mut Validator, http: &Option<Vec<String>>, others: bool) {
    if let Some(events) = http {
        v.within("httpRetryEvents", |v| {
            for (i, e) in events.iter().enumerate() {
                if !HTTP_RETRY_EVENTS.contains(&e.as_str()) {
                    v.error(
                        &format!("[{i}]"),
                        format!(
                            "unknown retry event {e:?}; use one of {}",
                            HTTP_RETRY_EVENTS.join(", ")
                        ),
                    );
                }
            }
        });
    }
    if http.is_none() && !others {
        v.error("", "a retry policy needs at least one kind of retry event");
    }
}

fn weighted_targets(v: &mut Validator, targets: &[api::WeightedTarget]) {
    let total: i64 = targets.iter().map(|t| i64::from(t.weight)).sum();
    if !targets.is_empty() && total == 0 {
        v.error(
            "weightedTargets",
            "the weights of the targets must not all be 0",
        );
    }
    for (i, t) in targets.iter().enumerate() {
        if let Err(e) = name(Kind::VirtualNode, &t.virtual_node) {
            v.error(&format!("weightedTargets[{i}].virtualNode"), e.message);
        }
    }
}

fn http_route(v: &mut Validator, r: &api::HttpRoute) {
    v.within("match", |v| {
        let m = &r.r#match;
        match (&m.prefix, &m.path) {
            (Some(_), Some(_)) => v.error("", "set either prefix or path, not both"),
            // Neither: the route matches every path (App Mesh accepts a port-only match).
            (Some(p), None) if !p.starts_with('/') => v.error("prefix", "must start with '/'"),
            (None, Some(p)) => path_match(v, p, false),
            _ => {}
        }
        if let Some(headers) = &m.headers {
            for (i, h) in headers.iter().enumerate() {
                v.within(&format!("headers[{i}]"), |v| {
                    header_name(v, "name", &h.name);
                    if let Some(hm) = &h.r#match {
                        header_match(v, hm);
                    }
                });
            }
        }
    });
    v.within("action", |v| {
        weighted_targets(v, &r.action.weighted_targets)
    });
    if let Some(rp) = &r.retry_policy {
        v.within("retryPolicy", |v| {
            duration(v, "perRetryTimeout", &Some(rp.per_retry_timeout.clone()));
            retry_events(v, &rp.http_retry_events, rp.tcp_retry_events.is_some());
        });
    }
    if let Some(t) = &r.timeout {
        http_timeout(v, "timeout", t);
    }
}

fn route(s: &api::RouteSpec, v: &mut Validator) {
    let set = [
        s.http_route.is_some(),
        s.http2_route.is_some(),
        s.grpc_route.is_some(),
        s.tcp_route.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if set != 1 {
        v.error(
            "",
            "set exactly one of httpRoute, http2Route, grpcRoute and tcpRoute",
        );
    }
    if let Some(r) = &s.http_route {
        v.within("httpRoute", |v| http_route(v, r));
    }
    if let Some(r) = &s.http2_route {
        v.within("http2Route", |v| http_route(v, r));
    }
    if let Some(r) = &s.grpc_route {
        v.within("grpcRoute", |v| {
            let m = &r.r#match;
            v.within("match", |v| {
                if m.method_name.is_some() && m.service_name.is_none() {
                    v.error("methodName", "a method name needs a service name");
                }
                for (i, md) in m.metadata.iter().flatten().enumerate() {
                    v.within(&format!("metadata[{i}]"), |v| {
                        header_name(v, "name", &md.name)
                    });
                    if let Some(mm) = &md.r#match {
                        v.within(&format!("metadata[{i}].match"), |v| match mm {
                            api::GrpcRouteMetadataMatchMethod::Regex(re) => regex(v, "regex", re),
                            api::GrpcRouteMetadataMatchMethod::Range(r) if r.start >= r.end => {
                                v.error("range", "start must be less than end")
                            }
                            _ => {}
                        });
                    }
                }
            });
            v.within("action", |v| {
                weighted_targets(v, &r.action.weighted_targets)
            });
            if let Some(rp) = &r.retry_policy {
                v.within("retryPolicy", |v| {
                    duration(v, "perRetryTimeout", &Some(rp.per_retry_timeout.clone()));
                    retry_events(
                        v,
                        &rp.http_retry_events,
                        rp.tcp_retry_events.is_some() || rp.grpc_retry_events.is_some(),
                    );
                });
            }
            if let Some(t) = &r.timeout {
                grpc_timeout(v, "timeout", t);
            }
        });
    }
    if let Some(r) = &s.tcp_route {
        v.within("tcpRoute", |v| {
            v.within("action", |v| {
                weighted_targets(v, &r.action.weighted_targets)
            });
            if let Some(t) = &r.timeout {
                v.within("timeout", |v| duration(v, "idle", &t.idle));
            }
        });
    }
}

fn virtual_gateway(s: &api::VirtualGatewaySpec, v: &mut Validator) {
    if let Some(api::VirtualGatewayAccessLog::File(f)) =
        s.logging.as_ref().and_then(|l| l.access_log.as_ref())
    {
        v.within("logging.accessLog.file", |v| {
            access_log_format(v, &f.format)
        });
    }
    if s.listeners.is_empty() {
        v.error("listeners", "a virtual gateway needs at least one listener");
    }
    unique_ports(v, s.listeners.iter().map(|l| l.port_mapping.port));
    v.within("listeners", |v| {
        for (i, l) in s.listeners.iter().enumerate() {
            v.within(&format!("[{i}]"), |v| {
                let proto = l.port_mapping.protocol.as_str();
                if let Some(hc) = &l.health_check {
                    let http_like = !matches!(hc.protocol, api::VirtualGatewayPortProtocol::Grpc);
                    if http_like && hc.path.as_deref().is_none_or(|p| !p.starts_with('/')) {
                        v.error("healthCheck.path", "an HTTP health check needs a path starting with '/'");
                    }
                }
                if let Some(cp) = &l.connection_pool {
                    let member = match cp {
                        api::VirtualGatewayConnectionPool::Grpc(_) => "grpc",
                        api::VirtualGatewayConnectionPool::Http(_) => "http",
                        api::VirtualGatewayConnectionPool::Http2(_) => "http2",
                    };
                    if member != proto {
                        v.error(
                            "connectionPool",
                            format!("connectionPool.{member} does not match the listener's protocol {proto}"),
                        );
                    }
                }
            });
        }
    });
}

fn gateway_http_route(v: &mut Validator, r: &api::HttpGatewayRoute) {
    let m = &r.r#match;
    v.within("match", |v| {
        match (&m.prefix, &m.path) {
            (Some(_), Some(_)) => v.error("", "set either prefix or path, not both"),
            (Some(p), None) if !p.starts_with('/') => v.error("prefix", "must start with '/'"),
            (None, Some(p)) => path_match(v, p, true),
            (None, None) if m.hostname.is_none() && m.headers.is_none() && m.query_parameters.is_none() && m.method.is_none() && m.port.is_none() => {
                v.error("", "set at least one of prefix, path, hostname, headers, method, queryParameters and port")
            }
            _ => {}
        }
        if let Some(h) = &m.hostname {
            v.within("hostname", |v| match (&h.exact, &h.suffix) {
                (Some(_), Some(_)) | (None, None) => v.error("", "set exactly one of exact and suffix"),
                (Some(e), None) => {
                    hostname(v, "exact", e);
                    hostname_regex(v, h);
                }
                (None, Some(s)) => {
                    hostname(v, "suffix", s.trim_start_matches('.'));
                    hostname_regex(v, h);
                }
            });
        }
        for (i, h) in m.headers.iter().flatten().enumerate() {
            v.within(&format!("headers[{i}]"), |v| {
                header_name(v, "name", &h.name);
                if let Some(hm) = &h.r#match {
                    header_match(v, hm);
                }
            });
        }
    });
    if let Some(rw) = &r.action.rewrite {
        v.within("action.rewrite", |v| {
            if let Some(p) = &rw.prefix {
                if let Some(val) = &p.value {
                    if !val.starts_with('/') || !val.ends_with('/') {
                        v.error("prefix.value", "must start and end with '/'");
                    }
                    rewrite_path(v, "prefix.value", val);
                    if p.default_prefix.is_some() {
                        v.error("prefix", "set either defaultPrefix or value, not both");
                    }
                }
                if m.prefix.is_none() {
                    v.error("prefix", "a prefix rewrite needs a prefix match");
                }
            }
            if let Some(p) = &rw.path {
                if let Some(e) = &p.exact {
                    if !e.starts_with('/') {
                        v.error("path.exact", "must start with '/'");
                    }
                    rewrite_path(v, "path.exact", e);
                }
            }
        });
    }
    target_name(v, &r.action.target);
}

fn target_name(v: &mut Validator, t: &api::GatewayRouteTarget) {
    if let Err(e) = name(
        Kind::VirtualService,
        &t.virtual_service.virtual_service_name,
    ) {
        v.error("action.target.virtualService.virtualServiceName", e.message);
    }
}

fn gateway_route(s: &api::GatewayRouteSpec, v: &mut Validator) {
    let set = [
        s.http_route.is_some(),
        s.http2_route.is_some(),
        s.grpc_route.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if set != 1 {
        v.error("", "set exactly one of httpRoute, http2Route and grpcRoute");
    }
    if let Some(r) = &s.http_route {
        v.within("httpRoute", |v| gateway_http_route(v, r));
    }
    if let Some(r) = &s.http2_route {
        v.within("http2Route", |v| gateway_http_route(v, r));
    }
    if let Some(r) = &s.grpc_route {
        v.within("grpcRoute", |v| {
            let m = &r.r#match;
            if let Some(h) = &m.hostname {
                if h.exact.is_some() == h.suffix.is_some() {
                    v.error("match.hostname", "set exactly one of exact and suffix");
                } else {
                    v.within("match.hostname", |v| hostname_regex(v, h));
                }
            }
            for (i, md) in m.metadata.iter().flatten().enumerate() {
                v.within(&format!("match.metadata[{i}]"), |v| {
                    header_name(v, "name", &md.name);
                    if let Some(mm) = &md.r#match {
                        v.within("match", |v| match mm {
                            api::GrpcMetadataMatchMethod::Regex(re) => regex(v, "regex", re),
                            api::GrpcMetadataMatchMethod::Range(r) if r.start >= r.end => {
                                v.error("range", "start must be less than end")
                            }
                            _ => {}
                        });
                    }
                });
            }
            target_name(v, &r.action.target);
        });
    }
}

pub(crate) fn targets_of(spec: &Spec) -> Vec<&api::WeightedTarget> {
    match spec {
        Spec::Route(r) => {
            let mut out = Vec::new();
            for h in [&r.http_route, &r.http2_route].into_iter().flatten() {
                out.extend(h.action.weighted_targets.iter());
            }
            if let Some(g) = &r.grpc_route {
                out.extend(g.action.weighted_targets.iter());
            }
            if let Some(t) = &r.tcp_route {
                out.extend(t.action.weighted_targets.iter());
            }
            out
        }
        _ => Vec::new(),
    }
}

pub(crate) fn gateway_target(spec: &Spec) -> Option<&str> {
    match spec {
        Spec::GatewayRoute(g) => {
            let t = [&g.http_route, &g.http2_route]
                .into_iter()
                .flatten()
                .map(|h| &h.action.target)
                .chain(g.grpc_route.iter().map(|g| &g.action.target))
                .next()?;
            Some(&t.virtual_service.virtual_service_name)
        }
        _ => None,
    }
}

fn route_protocol(r: &api::RouteSpec) -> Option<api::PortProtocol> {
    if r.http_route.is_some() {
        Some(api::PortProtocol::Http)
    } else if r.http2_route.is_some() {
        Some(api::PortProtocol::Http2)
    } else if r.grpc_route.is_some() {
        Some(api::PortProtocol::Grpc)
    } else if r.tcp_route.is_some() {
        Some(api::PortProtocol::Tcp)
    } else {
        None
    }
}

/// Checks the references of a spec at `key` against `model`: a route's targets and a virtual
/// service's provider must exist, a route's type must match a listener of its router, and a
/// gateway route's target service must exist.
pub fn references(model: &Model, key: &ResourceKey, spec: &Spec) -> Result<(), ApiError> {
    let exists = |kind: Kind, name: &str| {
        model
            .get(&ResourceKey::in_mesh(&key.mesh, kind, name))
            .is_some()
    };
    for t in targets_of(spec) {
        if !exists(Kind::VirtualNode, &t.virtual_node) {
            return Err(ApiError::bad_request(format!(
                "Route target virtual node {} does not exist in mesh {}",
                t.virtual_node, key.mesh
            )));
        }
    }
    if let Spec::Route(r) = spec {
        let router = model.get(&ResourceKey::in_mesh(
            &key.mesh,
            Kind::VirtualRouter,
            &key.parent,
        ));
        if let (Some(router), Some(proto)) = (router, route_protocol(r)) {
            if let Spec::VirtualRouter(vr) = &router.spec {
                let protos: Vec<api::PortProtocol> = vr
                    .listeners
                    .iter()
                    .flatten()
                    .map(|l| l.port_mapping.protocol)
                    .collect();
                if !protos.contains(&proto) {
                    return Err(ApiError::bad_request(format!(
                        "A {} route needs a {} listener on virtual router {}",
                        proto.as_str(),
                        proto.as_str(),
                        key.parent
                    )));
                }
            }
        }
    }
    if let Spec::VirtualService(vs) = spec {
        match &vs.provider {
            Some(api::VirtualServiceProvider::VirtualNode(p))
                if !exists(Kind::VirtualNode, &p.virtual_node_name) =>
            {
                return Err(ApiError::not_found(format!(
                    "Virtual node {} not found in mesh {}",
                    p.virtual_node_name, key.mesh
                )))
            }
            Some(api::VirtualServiceProvider::VirtualRouter(p))
                if !exists(Kind::VirtualRouter, &p.virtual_router_name) =>
            {
                return Err(ApiError::not_found(format!(
                    "Virtual router {} not found in mesh {}",
                    p.virtual_router_name, key.mesh
                )))
            }
            _ => {}
        }
    }
    if let Some(vs) = gateway_target(spec) {
        if !exists(Kind::VirtualService, vs) {
            return Err(ApiError::not_found(format!(
                "Virtual service {vs} not found in mesh {}",
                key.mesh
            )));
        }
    }
    Ok(())
}

/// The first resource that refers to `key` (and so blocks its deletion), if any.
pub fn first_user<'a>(model: &'a Model, key: &ResourceKey) -> Option<&'a ResourceKey> {
    let mesh = &key.mesh;
    if key.kind == Kind::Mesh {
        return model.in_mesh(mesh).map(|r| &r.key).next();
    }
    model.in_mesh(mesh).map(|r| (&r.key, &r.spec)).find_map(|(k, spec)| {
        let uses = match key.kind {
            Kind::VirtualNode => {
                targets_of(spec).iter().any(|t| t.virtual_node == key.name)
                    || matches!(spec, Spec::VirtualService(vs) if matches!(&vs.provider,
                        Some(api::VirtualServiceProvider::VirtualNode(p)) if p.virtual_node_name == key.name))
            }
            Kind::VirtualRouter => {
                (k.kind == Kind::Route && k.parent == key.name)
                    || matches!(spec, Spec::VirtualService(vs) if matches!(&vs.provider,
                        Some(api::VirtualServiceProvider::VirtualRouter(p)) if p.virtual_router_name == key.name))
            }
            Kind::VirtualService => gateway_target(spec) == Some(key.name.as_str()),
            Kind::VirtualGateway => k.kind == Kind::GatewayRoute && k.parent == key.name,
            Kind::Mesh | Kind::Route | Kind::GatewayRoute => false,
        };
        uses.then_some(k)
    })
}

/// `describe` re-exported for messages built by callers.
pub fn describe_key(key: &ResourceKey) -> String {
    describe(key)
}

/// Checks a command that arrived from the network already built (a follower's forwarded write)
/// as its proposer should have: every name a valid name of its kind, every spec valid and of
/// its key's kind, tags, tokens and stamps within the model's bounds, no nested batch. The
/// leader runs it again rather than trust the sender, so a command no API request could
/// produce (a mesh named `evil/../\0mesh`, a creation time of -1e300) is never committed.
pub fn command(cmd: &crate::Command) -> Result<(), ApiError> {
    use crate::Command;
    let key = |k: &crate::ResourceKey| -> Result<(), ApiError> {
        name(Kind::Mesh, &k.mesh)?;
        match k.kind.parent() {
            Some(p) => name(p, &k.parent)?,
            None if !k.parent.is_empty() => {
                return Err(ApiError::bad_request(format!(
                    "A {} has no parent, got {:?}",
                    k.kind.title(),
                    k.parent
                )))
            }
            None => {}
        }
        name(k.kind, &k.name)?;
        if k.kind == Kind::Mesh && k.name != k.mesh {
            return Err(ApiError::bad_request(
                "A mesh's key names it twice, the same way",
            ));
        }
        Ok(())
    };
    let tags = |k: &ResourceKey, tags: &[crate::api::TagRef]| -> Result<(), ApiError> {
        for t in tags {
            if t.key.is_empty() || t.key.len() > 128 || t.value.len() > 256 {
                return Err(ApiError::bad_request(
                    "A tag key has 1 to 128 characters, its value at most 256",
                ));
            }
            mtls_tag(k, t)?;
        }
        Ok(())
    };
    match cmd {
        Command::Put {
            key: k,
            spec: s,
            tags: t,
            client_token,
            stamp,
            ..
        } => {
            key(k)?;
            if s.kind() != k.kind {
                return Err(ApiError::bad_request(format!(
                    "A {} spec for a {}",
                    s.kind().title(),
                    k.kind.title()
                )));
            }
            into_result(spec(s))?;
            tags(k, t)?;
            if client_token.as_ref().is_some_and(|c| c.len() > 64) {
                return Err(ApiError::bad_request(
                    "A client token has at most 64 characters",
                ));
            }
            // 2000-01-01 to 2200-01-01: a clock, not a forged number.
            let sane_time =
                stamp.now.is_finite() && (946_684_800.0..7_258_118_400.0).contains(&stamp.now);
            let sane_uid = !stamp.uid.is_empty()
                && stamp.uid.len() <= 64
                && stamp
                    .uid
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-');
            let sane_account =
                stamp.account.len() == 12 && stamp.account.bytes().all(|b| b.is_ascii_digit());
            // As a server's configuration allows it (it cannot appear in an ARN otherwise).
            let sane_region = !stamp.region.is_empty()
                && stamp.region.len() <= 64
                && !stamp.region.contains([':', '/'])
                && !stamp.region.chars().any(char::is_control);
            if !(sane_time && sane_uid && sane_account && sane_region) {
                return Err(ApiError::bad_request(
                    "The command's stamp is not one a server makes",
                ));
            }
            Ok(())
        }
        Command::Delete { key: k } => key(k),
        Command::Tag { key: k, tags: t } => {
            key(k)?;
            tags(k, t)
        }
        Command::Untag { key: k, keys } => {
            key(k)?;
            if keys.iter().any(|t| t.is_empty() || t.len() > 128) {
                return Err(ApiError::bad_request("A tag key has 1 to 128 characters"));
            }
            Ok(())
        }
        Command::Restore { resources } => {
            for r in resources {
                key(&r.key)?;
                name(r.key.kind, &r.key.name)?;
                into_result(spec(&r.spec)).map_err(|mut e| {
                    e.message = format!("{}: {}", describe_key(&r.key), e.message);
                    e
                })?;
            }
            Ok(())
        }
        Command::Batch(cmds) => {
            for c in cmds {
                if matches!(c, Command::Batch(_)) {
                    return Err(ApiError::bad_request("Batches do not nest"));
                }
                command(c)?;
            }
            Ok(())
        }
        Command::BootstrapAccessKeys { keys } => keys.iter().try_for_each(access_key),
        Command::PutAccessKey { key: k } => access_key(k),
        Command::RevokeAccessKey { id } => access_key_id(id),
        Command::ImportClusterCa { ca } => {
            let pem = |s: &str, what: &str| s.starts_with("-----BEGIN ") && s.contains(what);
            if !pem(&ca.cert_pem, "CERTIFICATE")
                || !pem(&ca.key_pem, "PRIVATE KEY")
                || ca.cert_pem.len() > 16 << 10
                || ca.key_pem.len() > 16 << 10
            {
                return Err(ApiError::bad_request(
                    "A cluster CA is a PEM certificate and a PEM private key",
                ));
            }
            Ok(())
        }
        Command::InitMeshCa { ca } => {
            if let Err(e) = crate::identity::check_trust_domain(&ca.trust_domain) {
                return Err(ApiError::bad_request(e.to_string()));
            }
            mesh_authority(&ca.signing)?;
            if !ca.previous.is_empty() {
                return Err(ApiError::bad_request("A new mesh CA has no previous roots"));
            }
            Ok(())
        }
        Command::RotateMeshCa { authority, .. } => mesh_authority(authority),
        Command::PutJoinToken { token } => {
            join_token_id(&token.id)?;
            let hex64 = token.secret_sha256.len() == 64
                && token.secret_sha256.bytes().all(|b| b.is_ascii_hexdigit());
            if !hex64
                || !matches!(token.role.as_str(), "agent" | "server")
                || token.description.len() > 1024
            {
                return Err(ApiError::bad_request(
                    "A join token has a SHA-256 of its secret, the role agent or server, and a description of at most 1024 bytes",
                ));
            }
            Ok(())
        }
        Command::RevokeJoinToken { id } => join_token_id(id),
    }
}

/// The automatic mTLS tag ([`crate::identity::MTLS_TAG`]) is a mesh's, with one of its values:
/// a typo must not leave a mesh in plain text while its operator believes it is `STRICT`.
fn mtls_tag(k: &ResourceKey, t: &crate::api::TagRef) -> Result<(), ApiError> {
    use crate::identity::{MtlsMode, MTLS_TAG};
    if t.key != MTLS_TAG {
        return Ok(());
    }
    if k.kind != Kind::Mesh {
        return Err(ApiError::bad_request(format!(
            "The tag {MTLS_TAG} belongs on a mesh, not on a {}",
            k.kind.title()
        )));
    }
    if MtlsMode::parse(&t.value).is_none() {
        return Err(ApiError::bad_request(format!(
            "The tag {MTLS_TAG} is STRICT, PERMISSIVE or DISABLED, not {:?}",
            t.value
        )));
    }
    Ok(())
}

fn mesh_authority(a: &crate::MeshAuthority) -> Result<(), ApiError> {
    let pem = |s: &str, what: &str| s.starts_with("-----BEGIN ") && s.contains(what);
    if !pem(&a.cert_pem, "CERTIFICATE")
        || !pem(&a.root_pem, "CERTIFICATE")
        || !pem(&a.key_pem, "PRIVATE KEY")
        || a.cert_pem.len() > 64 << 10
        || a.root_pem.len() > 16 << 10
        || a.key_pem.len() > 16 << 10
    {
        return Err(ApiError::bad_request(
            "A mesh CA authority is a PEM certificate chain, its PEM private key and its PEM root",
        ));
    }
    Ok(())
}

fn join_token_id(id: &str) -> Result<(), ApiError> {
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request(
            "A join token id is 16 hexadecimal digits",
        ));
    }
    Ok(())
}

fn access_key_id(id: &str) -> Result<(), ApiError> {
    if id.len() < 16 || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ApiError::bad_request(
            "An access key id has 16 to 128 letters and digits",
        ));
    }
    Ok(())
}

fn access_key(k: &crate::store::AccessKey) -> Result<(), ApiError> {
    access_key_id(&k.id)?;
    if k.secret.len() < 32
        || k.secret.len() > 128
        || k.policy.is_empty()
        || k.policy.len() > 64 << 10
    {
        return Err(ApiError::bad_request(
            "An access key needs a secret of 32 to 128 characters and a policy",
        ));
    }
    Ok(())
}
