//! Route matching, actions, retries and ordering, shared by virtual routers' routes (egress)
//! and virtual gateways' routes.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::route::v3::{
    header_matcher, query_parameter_matcher, route, route_action, route_match, weighted_cluster,
    DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RetryPolicy, Route, RouteAction,
    RouteMatch, WeightedCluster,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher, RegexMatcher, StringMatcher};
use envoy_types::pb::envoy::r#type::v3::Int64Range;
use envoy_types::pb::google::protobuf::Duration;
use shoal_model::api;

use super::util;

/// App Mesh's per-request timeout for HTTP, HTTP/2 and gRPC routes that set none.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: i64 = 15;

/// The default per-request timeout as a duration.
pub(crate) fn default_timeout() -> Duration {
    Duration {
        seconds: DEFAULT_REQUEST_TIMEOUT_SECS,
        nanos: 0,
    }
}

/// A header (or gRPC metadata) match, whatever model shape it came from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ValueMatch<'a> {
    Exact(&'a str),
    Prefix(&'a str),
    Suffix(&'a str),
    Regex(&'a str),
    Range(i64, i64),
}

impl<'a> From<&'a api::HeaderMatchMethod> for ValueMatch<'a> {
    fn from(m: &'a api::HeaderMatchMethod) -> Self {
        match m {
            api::HeaderMatchMethod::Exact(s) => ValueMatch::Exact(s),
            api::HeaderMatchMethod::Prefix(s) => ValueMatch::Prefix(s),
            api::HeaderMatchMethod::Suffix(s) => ValueMatch::Suffix(s),
            api::HeaderMatchMethod::Regex(s) => ValueMatch::Regex(s),
            api::HeaderMatchMethod::Range(r) => ValueMatch::Range(r.start, r.end),
        }
    }
}

impl<'a> From<&'a api::GrpcRouteMetadataMatchMethod> for ValueMatch<'a> {
    fn from(m: &'a api::GrpcRouteMetadataMatchMethod) -> Self {
        match m {
            api::GrpcRouteMetadataMatchMethod::Exact(s) => ValueMatch::Exact(s),
            api::GrpcRouteMetadataMatchMethod::Prefix(s) => ValueMatch::Prefix(s),
            api::GrpcRouteMetadataMatchMethod::Suffix(s) => ValueMatch::Suffix(s),
            api::GrpcRouteMetadataMatchMethod::Regex(s) => ValueMatch::Regex(s),
            api::GrpcRouteMetadataMatchMethod::Range(r) => ValueMatch::Range(r.start, r.end),
        }
    }
}

impl<'a> From<&'a api::GrpcMetadataMatchMethod> for ValueMatch<'a> {
    fn from(m: &'a api::GrpcMetadataMatchMethod) -> Self {
        match m {
            api::GrpcMetadataMatchMethod::Exact(s) => ValueMatch::Exact(s),
            api::GrpcMetadataMatchMethod::Prefix(s) => ValueMatch::Prefix(s),
            api::GrpcMetadataMatchMethod::Suffix(s) => ValueMatch::Suffix(s),
            api::GrpcMetadataMatchMethod::Regex(s) => ValueMatch::Regex(s),
            api::GrpcMetadataMatchMethod::Range(r) => ValueMatch::Range(r.start, r.end),
        }
    }
}

/// A RE2 matcher (Envoy's default engine).
pub(crate) fn regex(re: &str) -> RegexMatcher {
    RegexMatcher {
        regex: re.to_string(),
        engine_type: None,
    }
}

fn string_match(p: string_matcher::MatchPattern) -> header_matcher::HeaderMatchSpecifier {
    header_matcher::HeaderMatchSpecifier::StringMatch(StringMatcher {
        match_pattern: Some(p),
        ..Default::default()
    })
}

/// A header matcher: `m` on header `name` (or its presence when `m` is `None`), inverted when
/// `invert`.
pub(crate) fn header(name: &str, invert: bool, m: Option<ValueMatch<'_>>) -> HeaderMatcher {
    use string_matcher::MatchPattern as P;
    let spec = match m {
        None => header_matcher::HeaderMatchSpecifier::PresentMatch(true),
        Some(ValueMatch::Exact(s)) => string_match(P::Exact(s.into())),
        Some(ValueMatch::Prefix(s)) => string_match(P::Prefix(s.into())),
        Some(ValueMatch::Suffix(s)) => string_match(P::Suffix(s.into())),
        Some(ValueMatch::Regex(s)) => string_match(P::SafeRegex(regex(s))),
        Some(ValueMatch::Range(start, end)) => {
            header_matcher::HeaderMatchSpecifier::RangeMatch(Int64Range { start, end })
        }
    };
    HeaderMatcher {
        name: name.to_string(),
        invert_match: invert,
        header_match_specifier: Some(spec),
        ..Default::default()
    }
}

/// The HTTP method as Envoy's `:method` value.
pub(crate) fn method(m: api::HttpMethod) -> HeaderMatcher {
    let name = match m {
        api::HttpMethod::Get => "GET",
        api::HttpMethod::Head => "HEAD",
        api::HttpMethod::Post => "POST",
        api::HttpMethod::Put => "PUT",
        api::HttpMethod::Delete => "DELETE",
        api::HttpMethod::Connect => "CONNECT",
        api::HttpMethod::Options => "OPTIONS",
        api::HttpMethod::Trace => "TRACE",
        api::HttpMethod::Patch => "PATCH",
    };
    header(":method", false, Some(ValueMatch::Exact(name)))
}

/// Query parameter matchers: exact value, or presence when the model gives no match.
pub(crate) fn query(params: &[api::HttpQueryParameter]) -> Vec<QueryParameterMatcher> {
    params
        .iter()
        .map(|q| QueryParameterMatcher {
            name: q.name.clone(),
            query_parameter_match_specifier: Some(
                match q.r#match.as_ref().and_then(|m| m.exact.as_ref()) {
                    Some(v) => query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(
                        util::exact(v),
                    ),
                    None => {
                        query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(true)
                    }
                },
            ),
        })
        .collect()
}

/// A path condition of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathCond {
    /// Any path (no condition).
    Any,
    /// Starts with.
    Prefix(String),
    /// Equals.
    Exact(String),
    /// Matches in full (RE2).
    Regex(String),
}

impl PathCond {
    /// The condition of an HTTP route or gateway route match: its prefix, exact or regex
    /// path, or any path.
    pub fn http(prefix: &Option<String>, path: &Option<api::HttpPathMatch>) -> PathCond {
        match (prefix, path) {
            (Some(p), _) if p == "/" => PathCond::Any,
            (Some(p), _) => PathCond::Prefix(p.clone()),
            (None, Some(api::HttpPathMatch { exact: Some(e), .. })) => PathCond::Exact(e.clone()),
            (None, Some(api::HttpPathMatch { regex: Some(r), .. })) => PathCond::Regex(r.clone()),
            _ => PathCond::Any,
        }
    }

    /// The condition of a gRPC match: `/<service>/<method>` exactly, every method of the
    /// service (`/<service>/` prefix), or any path.
    pub fn grpc(service: &Option<String>, method: &Option<String>) -> PathCond {
        match (service, method) {
            (Some(s), Some(m)) => PathCond::Exact(format!("/{s}/{m}")),
            (Some(s), None) => PathCond::Prefix(format!("/{s}/")),
            _ => PathCond::Any,
        }
    }

    /// As Envoy's path specifier.
    pub fn specifier(&self) -> route_match::PathSpecifier {
        match self {
            PathCond::Any => route_match::PathSpecifier::Prefix("/".into()),
            PathCond::Prefix(p) => route_match::PathSpecifier::Prefix(p.clone()),
            PathCond::Exact(p) => route_match::PathSpecifier::Path(p.clone()),
            PathCond::Regex(r) => route_match::PathSpecifier::SafeRegex(regex(r)),
        }
    }

    /// As a matcher of the `:path` header (which holds the query string too), for when a route
    /// needs two path conditions at once.
    pub fn header(&self) -> Option<HeaderMatcher> {
        let query = r"(\?.*)?$";
        match self {
            PathCond::Any => None,
            PathCond::Prefix(p) => Some(header(":path", false, Some(ValueMatch::Prefix(p)))),
            PathCond::Exact(p) => Some(header(
                ":path",
                false,
                Some(ValueMatch::Regex(&format!(
                    "^{}{query}",
                    ::regex::escape(p)
                ))),
            )),
            PathCond::Regex(r) => Some(header(
                ":path",
                false,
                Some(ValueMatch::Regex(&format!("^(?:{r}){query}"))),
            )),
        }
    }

    /// Whether `path` meets the condition (for rewrites to a fixed path). A regex the Rust
    /// engine cannot compile counts as matching, as the translation cannot tell.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathCond::Any => true,
            PathCond::Prefix(p) => path.starts_with(p.as_str()),
            PathCond::Exact(p) => path == p,
            PathCond::Regex(r) => ::regex::Regex::new(&format!("^(?:{r})$"))
                .map(|re| re.is_match(path))
                .unwrap_or(true),
        }
    }

    fn rank(&self) -> (u8, Reverse<usize>) {
        match self {
            PathCond::Exact(p) => (0, Reverse(p.len())),
            PathCond::Regex(r) => (1, Reverse(r.len())),
            PathCond::Prefix(p) => (2, Reverse(p.len())),
            PathCond::Any => (3, Reverse(0)),
        }
    }
}

/// The order of a route among its siblings. App Mesh matches routes by priority (0 first;
/// routes without one after every route with one), and among equal priorities the most
/// specific first. shoal makes that total and deterministic: exact paths, then regexes, then
/// prefixes, then match-all; longer paths first; more header, query, method and scheme
/// conditions first; then by name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Order {
    priority: i64,
    path: (u8, Reverse<usize>),
    conditions: Reverse<usize>,
    name: String,
}

impl Order {
    /// The order key of a route with `priority`, path condition `path`, `conditions` other
    /// conditions, named `name`.
    pub fn new(priority: Option<i32>, path: &PathCond, conditions: usize, name: &str) -> Order {
        Order {
            priority: priority.map_or(i64::from(i32::MAX) + 1, i64::from),
            path: path.rank(),
            conditions: Reverse(conditions),
            name: name.to_string(),
        }
    }
}

/// Headers, method and scheme conditions of an HTTP route match, with its query parameters.
pub(crate) fn http_conditions(
    m: &api::HttpRouteMatch,
) -> (Vec<HeaderMatcher>, Vec<QueryParameterMatcher>) {
    let mut headers: Vec<HeaderMatcher> = m
        .headers
        .iter()
        .flatten()
        .map(|h| {
            header(
                &h.name,
                h.invert.unwrap_or(false),
                h.r#match.as_ref().map(ValueMatch::from),
            )
        })
        .collect();
    if let Some(me) = m.method {
        headers.push(method(me));
    }
    if let Some(s) = m.scheme {
        let v = match s {
            api::HttpScheme::Http => "http",
            api::HttpScheme::Https => "https",
        };
        headers.push(header(":scheme", false, Some(ValueMatch::Exact(v))));
    }
    let query = query(m.query_parameters.as_deref().unwrap_or_default());
    (headers, query)
}

/// Metadata conditions of a gRPC route match.
pub(crate) fn grpc_conditions(m: &api::GrpcRouteMatch) -> Vec<HeaderMatcher> {
    m.metadata
        .iter()
        .flatten()
        .map(|h| {
            header(
                &h.name,
                h.invert.unwrap_or(false),
                h.r#match.as_ref().map(ValueMatch::from),
            )
        })
        .collect()
}

/// App Mesh's retry events as Envoy's `retry_on` conditions. Both `server-error` and
/// `gateway-error` include Envoy's `reset`, as App Mesh documents.
fn retry_on(
    http: &Option<Vec<String>>,
    tcp: &Option<Vec<api::TcpRetryPolicyEvent>>,
    grpc: &[api::GrpcRetryPolicyEvent],
) -> String {
    let mut on = BTreeSet::new();
    for e in http.iter().flatten() {
        match e.as_str() {
            "server-error" => {
                on.insert("5xx");
                on.insert("reset");
            }
            "gateway-error" => {
                on.insert("gateway-error");
                on.insert("reset");
            }
            "client-error" => {
                on.insert("retriable-4xx");
            }
            "stream-error" => {
                on.insert("refused-stream");
            }
            _ => {}
        }
    }
    if tcp.as_ref().is_some_and(|t| !t.is_empty()) {
        on.insert("connect-failure");
    }
    for g in grpc {
        on.insert(match g {
            api::GrpcRetryPolicyEvent::Cancelled => "cancelled",
            api::GrpcRetryPolicyEvent::DeadlineExceeded => "deadline-exceeded",
            api::GrpcRetryPolicyEvent::Internal => "internal",
            api::GrpcRetryPolicyEvent::ResourceExhausted => "resource-exhausted",
            api::GrpcRetryPolicyEvent::Unavailable => "unavailable",
        });
    }
    on.into_iter().collect::<Vec<_>>().join(",")
}

fn retry(on: String, max: i64, per_try: &api::Duration) -> RetryPolicy {
    RetryPolicy {
        retry_on: on,
        num_retries: util::u32v(util::clamp_u32(max)),
        per_try_timeout: util::duration(per_try),
        ..Default::default()
    }
}

/// An HTTP or HTTP/2 route's retry policy.
pub(crate) fn http_retry(p: &api::HttpRetryPolicy) -> RetryPolicy {
    retry(
        retry_on(&p.http_retry_events, &p.tcp_retry_events, &[]),
        p.max_retries,
        &p.per_retry_timeout,
    )
}

/// A gRPC route's retry policy.
pub(crate) fn grpc_retry(p: &api::GrpcRetryPolicy) -> RetryPolicy {
    retry(
        retry_on(
            &p.http_retry_events,
            &p.tcp_retry_events,
            p.grpc_retry_events.as_deref().unwrap_or_default(),
        ),
        p.max_retries,
        &p.per_retry_timeout,
    )
}

/// App Mesh's default retry policy for HTTP, HTTP/2 and gRPC routes that set none (and for
/// virtual services provided by a virtual node directly): 2 retries on HTTP 503, on
/// connection failures and refused streams, and on gRPC UNAVAILABLE.
pub(crate) fn default_retry() -> RetryPolicy {
    RetryPolicy {
        retry_on: "connect-failure,refused-stream,retriable-status-codes,unavailable".into(),
        num_retries: util::u32v(2),
        retriable_status_codes: vec![503],
        ..Default::default()
    }
}

/// Where a route sends its traffic: `(cluster, weight)` pairs (a cluster named twice gets the
/// sum of its weights; zero weights are dropped). With no cluster left the route answers
/// 503, as Envoy does for a cluster without healthy hosts.
pub(crate) fn action(
    targets: &[(String, u32)],
    timeout: Option<Duration>,
    idle: Option<Duration>,
    retry: Option<RetryPolicy>,
) -> route::Action {
    let mut weights: BTreeMap<&str, u64> = BTreeMap::new();
    let mut order: Vec<&str> = Vec::new();
    for (c, w) in targets {
        if *w == 0 {
            continue;
        }
        if !weights.contains_key(c.as_str()) {
            order.push(c);
        }
        *weights.entry(c).or_default() += u64::from(*w);
    }
    if order.is_empty() {
        return route::Action::DirectResponse(DirectResponseAction {
            status: 503,
            ..Default::default()
        });
    }
    let specifier = if order.len() == 1 {
        route_action::ClusterSpecifier::Cluster(order[0].to_string())
    } else {
        route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: order
                .iter()
                .map(|c| weighted_cluster::ClusterWeight {
                    name: c.to_string(),
                    weight: util::u32v(weights[c].min(u64::from(u32::MAX)) as u32),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    };
    route::Action::Route(RouteAction {
        cluster_specifier: Some(specifier),
        timeout,
        idle_timeout: idle,
        retry_policy: retry,
        ..Default::default()
    })
}

/// A route named `name` with `path`, header and query conditions, and `action`.
pub(crate) fn route(
    name: &str,
    path: &PathCond,
    headers: Vec<HeaderMatcher>,
    query: Vec<QueryParameterMatcher>,
    action: route::Action,
) -> Route {
    Route {
        name: name.to_string(),
        r#match: Some(RouteMatch {
            path_specifier: Some(path.specifier()),
            headers,
            query_parameters: query,
            ..Default::default()
        }),
        action: Some(action),
        ..Default::default()
    }
}
