//! Unit and golden tests of the translation (model → Envoy resources).

#[path = "translate_common.rs"]
mod common;

use std::path::Path;

use common::*;
use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{address, health_check, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment};
use envoy_types::pb::envoy::config::listener::v3::{filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher, route, route_action, route_match, Route, RouteAction, RouteConfiguration,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context, DownstreamTlsContext, UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher;
use prost::Message;
use serde_json::json;
use shoal_xds::translate::{
    check_consistency, render, translate, translate_many, TranslateError, SDS_CLUSTER, UNLIMITED,
};
use shoal_xds::{ProxyId, ProxyOptions, ResourceType, Snapshot};

fn get<T: Message + Default>(s: &Snapshot, ty: ResourceType, name: &str) -> T {
    let r = s
        .resources(ty)
        .get(name)
        .unwrap_or_else(|| panic!("no {ty:?} {name}; have {:?}", s.resources(ty).keys()));
    T::decode(r.any.value.as_slice()).unwrap()
}

fn listener(s: &Snapshot, name: &str) -> Listener {
    get(s, ResourceType::Listener, name)
}
fn routes(s: &Snapshot, name: &str) -> RouteConfiguration {
    get(s, ResourceType::Route, name)
}
fn cluster(s: &Snapshot, name: &str) -> Cluster {
    get(s, ResourceType::Cluster, name)
}
fn load(s: &Snapshot, name: &str) -> ClusterLoadAssignment {
    get(s, ResourceType::Endpoint, name)
}

fn typed<T: Message + Default>(f: &envoy_types::pb::envoy::config::listener::v3::Filter) -> T {
    let Some(filter::ConfigType::TypedConfig(a)) = &f.config_type else {
        panic!("untyped filter")
    };
    T::decode(a.value.as_slice()).unwrap()
}

fn hcm(c: &FilterChain) -> HttpConnectionManager {
    typed(&c.filters[0])
}

fn rds(c: &FilterChain) -> String {
    match hcm(c).route_specifier {
        Some(http_connection_manager::RouteSpecifier::Rds(r)) => r.route_config_name,
        other => panic!("{other:?}"),
    }
}

fn action(r: &Route) -> &RouteAction {
    match &r.action {
        Some(route::Action::Route(a)) => a,
        other => panic!("{other:?}"),
    }
}

fn addresses(c: &ClusterLoadAssignment) -> Vec<String> {
    c.endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .map(|e| match &e.host_identifier {
            Some(lb_endpoint::HostIdentifier::Endpoint(e)) => {
                match e.address.as_ref().unwrap().address.as_ref().unwrap() {
                    address::Address::SocketAddress(sa) => {
                        let socket_address::PortSpecifier::PortValue(p) =
                            sa.port_specifier.as_ref().unwrap()
                        else {
                            panic!()
                        };
                        format!("{}:{p}", sa.address)
                    }
                    other => panic!("{other:?}"),
                }
            }
            other => panic!("{other:?}"),
        })
        .collect()
}

fn shop() -> (shoal_model::Model, Vec<shoal_model::discovery::Endpoint>) {
    (model_of(&shop_docs("/etc/shoal/certs")), shop_endpoints())
}

fn colorapp() -> (shoal_model::Model, Vec<shoal_model::discovery::Endpoint>) {
    (model_of(&colorapp_docs()), colorapp_endpoints())
}

// ---------------------------------------------------------------------------------------
// Golden files
// ---------------------------------------------------------------------------------------

fn golden(name: &str, model: &shoal_model::Model, eps: &[shoal_model::discovery::Endpoint]) {
    let mut text = String::new();
    for p in proxies(model) {
        let s = snapshot(model, eps, &p);
        text.push_str(&format!("######## {p}\n{}", render(&s)));
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.txt"));
    if std::env::var_os("SHOAL_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "{} is missing; run with SHOAL_BLESS=1 to write it",
            path.display()
        )
    });
    if want != text {
        let line = want
            .lines()
            .zip(text.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(want.lines().count().min(text.lines().count()));
        panic!(
            "{} differs from the translation from line {} on (got {:?}); if the change is \
             intended, rerun with SHOAL_BLESS=1 and review the diff",
            path.display(),
            line + 1,
            text.lines().nth(line)
        );
    }
}

#[test]
fn golden_colorapp() {
    let (m, e) = colorapp();
    golden("colorapp", &m, &e);
}

#[test]
fn golden_shop() {
    let (m, e) = shop();
    golden("shop", &m, &e);
}

// ---------------------------------------------------------------------------------------
// Determinism and errors
// ---------------------------------------------------------------------------------------

#[test]
fn same_inputs_give_the_same_bytes_whatever_the_endpoint_order() {
    let (m, mut e) = shop();
    let id = ProxyId::parse("mesh/shop/virtualNode/frontend").unwrap();
    let a = translate(&m, &e, &id, &ProxyOptions::default()).unwrap();
    e.reverse();
    let b = translate(&m, &e, &id, &ProxyOptions::default()).unwrap();
    assert_eq!(a, b);
    for ty in ResourceType::ALL {
        assert_eq!(a.version(ty), b.version(ty));
    }
}

#[test]
fn unknown_proxies_and_meshes_are_errors() {
    let (m, e) = colorapp();
    let opts = ProxyOptions::default();
    let err = translate(
        &m,
        &e,
        &ProxyId::parse("mesh/colorapp/virtualNode/nope").unwrap(),
        &opts,
    )
    .unwrap_err();
    assert!(matches!(err, TranslateError::UnknownProxy(_)), "{err}");
    let err = translate(
        &m,
        &e,
        &ProxyId::parse("mesh/other/virtualGateway/gw").unwrap(),
        &opts,
    )
    .unwrap_err();
    assert_eq!(err, TranslateError::NoMesh("other".into()));
}

#[test]
fn acm_certificates_wait_for_the_mesh_ca() {
    let model = model_of(&[
        json!({"meshName": "m", "spec": {}}),
        json!({"meshName": "m", "virtualNodeName": "a", "spec": {"listeners": [{
            "portMapping": {"port": 80, "protocol": "http"},
            "tls": {"mode": "STRICT", "certificate": {"acm": {"certificateArn": "arn:aws:acm:us-east-1:000000000000:certificate/x"}}}}]}}),
    ]);
    // Without the mesh CA's trust domain the agent cannot serve it: an error, not a listener
    // without its certificate (mesh_secrets.rs translates it with one).
    let err = translate(
        &model,
        &[],
        &ProxyId::parse("mesh/m/virtualNode/a").unwrap(),
        &ProxyOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, TranslateError::NoMeshCa { .. }), "{err}");
}

#[test]
fn check_consistency_finds_dangling_references() {
    let (m, e) = colorapp();
    let s = snapshot(&m, &e, "mesh/colorapp/virtualNode/colorgateway");
    // Drop a cluster that routes use, and an RDS configuration a listener uses.
    let mut broken = Snapshot::default();
    for ty in ResourceType::ALL {
        for (name, r) in s.resources(ty) {
            let drop = (ty == ResourceType::Cluster
                && name == "cds_egress_colorapp_colorteller-red_http_9080")
                || (ty == ResourceType::Route && name == "rds_ingress_http_9080");
            if !drop {
                broken.insert(ty, r.clone());
            }
        }
    }
    let err = check_consistency(&broken).unwrap_err().to_string();
    assert!(
        err.contains(
            "cluster cds_egress_colorapp_colorteller-red_http_9080 is referred to but not sent"
        ),
        "{err}"
    );
    assert!(
        err.contains("route configuration rds_ingress_http_9080 is referred to but not sent"),
        "{err}"
    );
    assert!(
        err.contains(
            "endpoints cds_egress_colorapp_colorteller-red_http_9080 is sent but never used"
        ),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// Ingress
// ---------------------------------------------------------------------------------------

#[test]
fn single_listener_ingress_forwards_everything_to_the_app() {
    let (m, e) = shop();
    let s = snapshot(&m, &e, "mesh/shop/virtualNode/frontend");
    let l = listener(&s, "lds_ingress_0.0.0.0_15000");
    assert_eq!(l.filter_chains.len(), 1);
    assert!(l.filter_chains[0].filter_chain_match.is_none());
    assert!(l.listener_filters.is_empty());
    assert_eq!(rds(&l.filter_chains[0]), "rds_ingress_http_8080");
    let rc = routes(&s, "rds_ingress_http_8080");
    let r = &rc.virtual_hosts[0].routes[0];
    let a = action(r);
    assert_eq!(a.timeout.as_ref().unwrap().seconds, 5);
    assert_eq!(a.idle_timeout.as_ref().unwrap().seconds, 60);
    assert_eq!(
        a.cluster_specifier,
        Some(route_action::ClusterSpecifier::Cluster(
            "cds_ingress_shop_frontend_http_8080".into()
        ))
    );
    let c = cluster(&s, "cds_ingress_shop_frontend_http_8080");
    assert_eq!(
        c.cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32
        ))
    );
    assert_eq!(
        addresses(c.load_assignment.as_ref().unwrap()),
        ["127.0.0.1:8080"]
    );
    let t = &c.circuit_breakers.as_ref().unwrap().thresholds[0];
    assert_eq!(t.max_connections.as_ref().unwrap().value, 10);
    assert_eq!(t.max_pending_requests.as_ref().unwrap().value, 5);
    assert_eq!(t.max_requests.as_ref().unwrap().value, UNLIMITED);
    let hc = &c.health_checks[0];
    assert_eq!(hc.interval.as_ref().unwrap().seconds, 5);
    assert_eq!(hc.unhealthy_threshold.as_ref().unwrap().value, 3);
    let Some(health_check::HealthChecker::HttpHealthCheck(h)) = &hc.health_checker else {
        panic!()
    };
    assert_eq!(h.path, "/health");
    // The health check goes to its own port.
    let lb = &c.load_assignment.as_ref().unwrap().endpoints[0].lb_endpoints[0];
    let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &lb.host_identifier else {
        panic!()
    };
    assert_eq!(ep.health_check_config.as_ref().unwrap().port_value, 8081);
}

#[test]
fn several_listeners_are_chosen_by_destination_port_with_permissive_tls() {
    let (m, e) = shop();
    let s = snapshot(&m, &e, "mesh/shop/virtualNode/catalog");
    let l = listener(&s, "lds_ingress_0.0.0.0_15000");
    let names: Vec<&str> = l.listener_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "envoy.filters.listener.original_dst",
            "envoy.filters.listener.tls_inspector"
        ]
    );
    let chains: Vec<(String, u32, String, bool)> = l
        .filter_chains
        .iter()
        .map(|c| {
            let m = c.filter_chain_match.clone().unwrap();
            (
                c.name.clone(),
                m.destination_port.unwrap().value,
                m.transport_protocol,
                c.transport_socket.is_some(),
            )
        })
        .collect();
    assert_eq!(
        chains,
        [
            ("ingress_http2_7000_tls".into(), 7000, "tls".into(), true),
            (
                "ingress_http2_7000_plaintext".into(),
                7000,
                "raw_buffer".into(),
                false
            ),
            ("ingress_grpc_7001".into(), 7001, String::new(), false),
        ]
    );
    // The certificate comes from the SDS provider.
    let ts = l.filter_chains[0].transport_socket.as_ref().unwrap();
    let Some(envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
        a,
    )) = &ts.config_type
    else {
        panic!()
    };
    let d = DownstreamTlsContext::decode(a.value.as_slice()).unwrap();
    let common = d.common_tls_context.unwrap();
    assert_eq!(
        common.tls_certificate_sds_secret_configs[0].name,
        "spiffe://shop/catalog"
    );
    assert_eq!(common.alpn_protocols, ["h2", "http/1.1"]);
    assert!(d.require_client_certificate.is_none());
    // gRPC health check, HTTP/2 to the app, and the pool as circuit breakers.
    let c = cluster(&s, "cds_ingress_shop_catalog_grpc_7001");
    assert!(matches!(
        c.health_checks[0].health_checker,
        Some(health_check::HealthChecker::GrpcHealthCheck(_))
    ));
    assert!(c
        .typed_extension_protocol_options
        .contains_key("envoy.extensions.upstreams.http.v3.HttpProtocolOptions"));
    let c = cluster(&s, "cds_ingress_shop_catalog_http2_7000");
    assert_eq!(
        c.circuit_breakers.unwrap().thresholds[0]
            .max_requests
            .as_ref()
            .unwrap()
            .value,
        100
    );
}

#[test]
fn strict_tls_with_validation_requires_client_certificates() {
    let (m, e) = shop();
    let s = snapshot(&m, &e, "mesh/shop/virtualNode/cart-v1");
    let l = listener(&s, "lds_ingress_0.0.0.0_15000");
    assert_eq!(l.filter_chains.len(), 1);
    let ts = l.filter_chains[0].transport_socket.as_ref().unwrap();
    let Some(envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
        a,
    )) = &ts.config_type
    else {
        panic!()
    };
    let d = DownstreamTlsContext::decode(a.value.as_slice()).unwrap();
    assert!(d.require_client_certificate.unwrap().value);
    let common = d.common_tls_context.unwrap();
    let Some(common_tls_context::ValidationContextType::ValidationContext(v)) =
        common.validation_context_type
    else {
        panic!()
    };
    assert_eq!(
        v.match_typed_subject_alt_names.len(),
        2,
        "the SAN matches as a DNS name and as a URI"
    );
}

#[test]
fn tcp_listeners_use_tcp_proxy_with_the_idle_timeout() {
    let (m, e) = shop();
    let s = snapshot(&m, &e, "mesh/shop/virtualNode/db");
    let l = listener(&s, "lds_ingress_0.0.0.0_15000");
    let t: TcpProxy = typed(&l.filter_chains[0].filters[0]);
    assert_eq!(t.idle_timeout.unwrap().seconds, 600);
    assert_eq!(
        t.cluster_specifier,
        Some(tcp_proxy::ClusterSpecifier::Cluster(
            "cds_ingress_shop_db_tcp_5432".into()
        ))
    );
    assert!(s
        .resources(ResourceType::Route)
        .keys()
        .all(|k| k.starts_with("rds_egress")));
}

// ---------------------------------------------------------------------------------------
// Egress
// ---------------------------------------------------------------------------------------

#[test]
fn egress_routes_in_priority_then_specificity_order() {
    let (m, e) = shop();
    let s = snapshot(&m, &e, "mesh/shop/virtualNode/frontend");
    let rc = routes(&s, "rds_egress_http_9000");
    let vh = rc
        .virtual_hosts
        .iter()
        .find(|v| v.name == "cart.shop.local_9000")
        .unwrap();
    assert_eq!(vh.domains, ["cart.shop.local", "cart.shop.local:9000"]);
    let names: Vec<&str> = vh.routes.iter().map(|r| r.name.as_str()).collect();
    // checkout (priority 5), split (100), items (no priority: last).
    assert_eq!(names, ["checkout", "split", "items"]);
}

#[test]
fn every_match_kind_is_translated() {
    let (m, e) = shop();
    let s = snapshot(&m, &e, "mesh/shop/virtualNode/frontend");
    let rc = routes(&s, "rds_egress_http_9000");
    let vh = &rc.virtual_hosts[0];
    let checkout = &vh.routes[0];
    let rm = checkout.r#match.as_ref().unwrap();
    assert_eq!(
        rm.path_specifier,
        Some(route_match::PathSpecifier::Path("/checkout".into()))
    );
    let h = |name: &str| rm.headers.iter().find(|h| h.name == name).unwrap().clone();
    let pattern = |name: &str| match h(name).header_match_specifier {
        Some(header_matcher::HeaderMatchSpecifier::StringMatch(s)) => s.match_pattern.unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        pattern("x-exact"),
        string_matcher::MatchPattern::Exact("a".into())
    );
    assert_eq!(
        pattern("x-prefix"),
        string_matcher::MatchPattern::Prefix("b".into())
    );
    assert_eq!(
        pattern("x-suffix"),
        string_matcher::MatchPattern::Suffix("c".into())
    );
    assert!(
        matches!(pattern("x-regex"), string_matcher::MatchPattern::SafeRegex(r) if r.regex == "^d+$")
    );
    assert!(matches!(
        h("x-range").header_match_specifier,
        Some(header_matcher::HeaderMatchSpecifier::RangeMatch(r)) if r.start == 1 && r.end == 10
    ));
    assert_eq!(
        h("x-present").header_match_specifier,
        Some(header_matcher::HeaderMatchSpecifier::PresentMatch(true))
    );
    assert!(h("x-not").invert_match);
    assert_eq!(
        pattern(":method"),
        string_matcher::MatchPattern::Exact("POST".into())
    );
    assert_eq!(
        pattern(":scheme"),
        string_matcher::MatchPattern::Exact("http".into())
    );
    let q: Vec<&str> = rm
        .query_parameters
        .iter()
        .map(|q| q.name.as_str())
        .collect();
    assert_eq!(q, ["cart", "debug"]);
    // A zero per-request timeout disables the timeout; the idle timeout is kept.
    let a = action(checkout);
    assert_eq!(a.timeout.as_ref().map(|d| d.seconds), Some(0));
    assert_eq!(a.idle_timeout.as_ref().unwrap().seconds, 30);
    // Regex path.
    let items = &vh.routes[2];
    assert!(matches!(
        &items.r#match.as_ref().unwrap().path_specifier,
        Some(route_match::PathSpecifier::SafeRegex(r)) if r.regex == "/items/[0-9]+"
    ));
}

#[test]
fn weights_retries_and_default_policies() {
    let (m, e) = shop();
    let s = snapshot(&m, &e, "mesh/shop/virtualNode/frontend");
    let rc = routes(&s, "rds_egress_http_9000");
    let vh = &rc.virtual_hosts[0];
    let split = action(&vh.routes[1]);
    let Some(route_action::ClusterSpecifier::WeightedClusters(w)) = &split.cluster_specifier else {
        panic!("{split:?}")
    };
    let weights: Vec<(&str, u32)> = w
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), c.weight.as_ref().unwrap().value))
        .collect();
    // The zero-weight target gets no cluster; TLS from the backend defaults.
    assert_eq!(
        weights,
        [
            ("cds_egress_shop_cart-v1_http_9000", 90),
            ("cds_egress_shop_cart-v2_http_9000", 10)
        ]
    );
    let retry = split.retry_policy.as_ref().unwrap();
    assert_eq!(retry.retry_on, "5xx,connect-failure,gateway-error,reset");
    assert_eq!(retry.num_retries.as_ref().unwrap().value, 2);
    assert_eq!(retry.per_try_timeout.as_ref().unwrap().seconds, 1);
    assert_eq!(
        split.timeout.as_ref().unwrap().seconds,
        15,
        "App Mesh's default"
    );
    let items = action(&vh.routes[2]).retry_policy.clone().unwrap();
    assert_eq!(items.retry_on, "refused-stream,retriable-4xx");
    assert_eq!(items.per_try_timeout.unwrap().nanos, 250_000_000);
    // Routes without a retry policy get App Mesh's default one.
    let d = action(&vh.routes[0]).retry_policy.clone().unwrap();
    assert_eq!(
        d.retry_on,
        "connect-failure,refused-stream,retriable-status-codes,unavailable"
    );
    assert_eq!(d.retriable_status_codes, [503]);
    assert_eq!(d.num_retries.unwrap().value, 2);
    // gRPC.
    let rc = routes(&s, "rds_egress_http_50051");
    let vh = &rc.virtual_hosts[0];
    let names: Vec<&str> = vh.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["charge", "any"], "exact path before prefix");
    assert_eq!(
        vh.routes[0].r#match.as_ref().unwrap().path_specifier,
        Some(route_match::PathSpecifier::Path(
            "/shop.Payments/Charge".into()
        ))
    );
    assert_eq!(
        vh.routes[1].r#match.as_ref().unwrap().path_specifier,
        Some(route_match::PathSpecifier::Prefix("/shop.Payments/".into()))
    );
    let charge = action(&vh.routes[0]);
    assert_eq!(
        charge.retry_policy.as_ref().unwrap().retry_on,
        "resource-exhausted,unavailable"
    );
    assert_eq!(charge.timeout.as_ref().unwrap().seconds, 2);
}

#[test]
fn endpoints_are_healthy_instances_or_else_all_and_follow_ip_preference() {
    let (m, e) = shop();
    let s = snapshot(&m, &e, "mesh/shop/virtualNode/frontend");
    // cart-v1: one healthy of two.
    assert_eq!(
        addresses(&load(&s, "cds_egress_shop_cart-v1_http_9000")),
        ["10.1.1.1:9000"]
    );
    // cart-v2: none healthy, so all.
    assert_eq!(
        addresses(&load(&s, "cds_egress_shop_cart-v2_http_9000")),
        ["10.1.2.1:9000"]
    );
    // payments: IPv4 only.
    assert_eq!(
        addresses(&load(&s, "cds_egress_shop_payments_grpc_50051")),
        ["10.1.4.1:50051"]
    );
    // A DNS node without instances: Envoy resolves it (LOGICAL_DNS for LOADBALANCER).
    let legacy = cluster(&s, "cds_egress_shop_legacy_http_80");
    assert_eq!(
        legacy.cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::LogicalDns as i32
        ))
    );
    assert_eq!(
        addresses(legacy.load_assignment.as_ref().unwrap()),
        ["legacy.example.com:80"]
    );
    assert!(!s
        .resources(ResourceType::Endpoint)
        .contains_key("cds_egress_shop_legacy_http_80"));
}

#[test]
fn egress_clusters_carry_tls_outlier_detection_and_protocol() {
    let (m, e) = shop();
    let s = snapshot(&m, &e, "mesh/shop/virtualNode/frontend");
    let tls = |c: &Cluster| {
        c.transport_socket.as_ref().map(|t| {
            let Some(
                envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
                    a,
                ),
            ) = &t.config_type
            else {
                panic!()
            };
            UpstreamTlsContext::decode(a.value.as_slice()).unwrap()
        })
    };
    let c = cluster(&s, "cds_egress_shop_cart-v1_http_9000");
    let u = tls(&c).expect("backend defaults TLS");
    assert_eq!(u.sni, "cart.shop.local");
    let common = u.common_tls_context.unwrap();
    assert_eq!(
        common.tls_certificates[0].certificate_chain,
        Some(envoy_types::pb::envoy::config::core::v3::DataSource {
            specifier: Some(
                envoy_types::pb::envoy::config::core::v3::data_source::Specifier::Filename(
                    "/etc/shoal/certs/frontend.crt".into()
                )
            ),
            ..Default::default()
        })
    );
    assert_eq!(common.alpn_protocols, ["http/1.1"]);
    let od = c.outlier_detection.unwrap();
    assert_eq!(od.consecutive_5xx.unwrap().value, 5);
    assert_eq!(od.base_ejection_time.unwrap().seconds, 30);
    assert_eq!(od.max_ejection_percent.unwrap().value, 50);
    // enforce: false turns TLS off for that backend.
    assert!(tls(&cluster(&s, "cds_egress_shop_catalog_http2_7000")).is_none());
    // The backend's own policy: SDS through the SDS cluster, HTTP/2 for gRPC.
    let p = cluster(&s, "cds_egress_shop_payments_grpc_50051");
    let common = tls(&p).unwrap().common_tls_context.unwrap();
    let sds = &common.tls_certificate_sds_secret_configs[0];
    assert_eq!(sds.name, "spiffe://shop/frontend");
    assert!(format!("{:?}", sds.sds_config).contains(SDS_CLUSTER));
    assert_eq!(common.alpn_protocols, ["h2"]);
    let t = &p.circuit_breakers.unwrap().thresholds[0];
    assert_eq!(t.max_connections.as_ref().unwrap().value, UNLIMITED);
    assert_eq!(t.max_retries.as_ref().unwrap().value, UNLIMITED);
}

#[test]
fn tcp_backends_get_a_chain_per_port() {
    let (m, e) = shop();
    let s = snapshot(&m, &e, "mesh/shop/virtualNode/frontend");
    let l = listener(&s, "lds_egress_0.0.0.0_15001");
    let c = l
        .filter_chains
        .iter()
        .find(|c| c.name == "egress_tcp_db.shop.local_5432")
        .unwrap();
    let m = c.filter_chain_match.as_ref().unwrap();
    assert_eq!(m.destination_port.as_ref().unwrap().value, 5432);
    assert!(m.prefix_ranges.is_empty(), "the port is not shared");
    let t: TcpProxy = typed(&c.filters[0]);
    assert_eq!(t.idle_timeout.unwrap().seconds, 120);
}

#[test]
fn allow_all_passes_unknown_destinations_through() {
    let (m, e) = shop();
    let s = snapshot(&m, &e, "mesh/shop/virtualNode/frontend");
    let pass = cluster(&s, "cds_egress_passthrough");
    assert_eq!(
        pass.cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::OriginalDst as i32
        ))
    );
    let l = listener(&s, "lds_egress_0.0.0.0_15001");
    assert!(l.default_filter_chain.is_some());
    let rc = routes(&s, "rds_egress_http_9000");
    assert_eq!(rc.virtual_hosts.last().unwrap().domains, ["*"]);
    // But not on the egress port itself, where it would loop back into Envoy.
    let direct = routes(&s, "rds_egress_http_15001");
    assert!(direct.virtual_hosts.iter().all(|v| v.domains != ["*"]));
}

#[test]
fn drop_all_and_default_deny() {
    let (m, e) = colorapp();
    let s = snapshot(&m, &e, "mesh/colorapp/virtualNode/colorteller-red");
    assert!(!s
        .resources(ResourceType::Cluster)
        .contains_key("cds_egress_passthrough"));
    let l = listener(&s, "lds_egress_0.0.0.0_15001");
    assert!(l.default_filter_chain.is_none());
    // Only its backend (tcpecho) is reachable: no colorteller virtual host anywhere.
    for rc in s.resources(ResourceType::Route).keys() {
        let rc = routes(&s, rc);
        for vh in &rc.virtual_hosts {
            assert!(
                !vh.domains.iter().any(|d| d.starts_with("colorteller")),
                "{vh:?}"
            );
        }
    }
    let clusters: Vec<&String> = s.resources(ResourceType::Cluster).keys().collect();
    assert_eq!(
        clusters,
        [
            "cds_egress_colorapp_tcpecho_tcp_2701",
            "cds_ingress_colorapp_colorteller-red_http_9080"
        ]
    );
}

#[test]
fn the_egress_port_itself_routes_by_host_for_every_backend() {
    let (m, e) = colorapp();
    let s = snapshot(&m, &e, "mesh/colorapp/virtualNode/colorgateway");
    let l = listener(&s, "lds_egress_0.0.0.0_15001");
    let direct = l
        .filter_chains
        .iter()
        .find(|c| c.name == "egress_http_direct")
        .unwrap();
    assert_eq!(
        direct
            .filter_chain_match
            .as_ref()
            .unwrap()
            .destination_port
            .as_ref()
            .unwrap()
            .value,
        15001
    );
    let rc = routes(&s, &rds(direct));
    assert_eq!(
        rc.virtual_hosts[0].domains,
        [
            "colorteller.colorapp.local",
            "colorteller.colorapp.local:9080"
        ]
    );
}

#[test]
fn access_logs_use_the_model_format() {
    let (m, e) = shop();
    let s = snapshot(&m, &e, "mesh/shop/virtualNode/frontend");
    let l = listener(&s, "lds_ingress_0.0.0.0_15000");
    let h = hcm(&l.filter_chains[0]);
    assert_eq!(h.access_log.len(), 1);
    let text = render(&s);
    // JSON keys sorted, whatever the model's order.
    let a = text.find("key: \"authority\"").unwrap();
    let b = text.find("key: \"status\"").unwrap();
    assert!(a < b);
    assert!(text.contains("path: \"/dev/stdout\""));
    let g = snapshot(&m, &e, "mesh/shop/virtualGateway/edge");
    assert!(render(&g).contains("%REQ(:AUTHORITY)% %RESPONSE_CODE%\\n"));
}

// ---------------------------------------------------------------------------------------
// Gateways
// ---------------------------------------------------------------------------------------

#[test]
fn gateway_routes_match_rewrite_and_compose_with_router_routes() {
    let (m, e) = shop();
    let s = snapshot(&m, &e, "mesh/shop/virtualGateway/edge");
    let l = listener(&s, "lds_ingress_0.0.0.0_8443");
    assert!(l.filter_chains[0].transport_socket.is_some());
    let h = hcm(&l.filter_chains[0]);
    assert!(h.use_remote_address.unwrap().value);
    let rc = routes(&s, "rds_ingress_http_8443");
    let names: Vec<&str> = rc.virtual_hosts[0]
        .routes
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    // catalog-v2 (priority 1) first; then health (exact path) before the prefixes, longer
    // prefix first; router routes expand in their own order.
    assert_eq!(
        names,
        [
            "catalog-v2",
            "health/checkout",
            "health/split",
            "cart/checkout",
            "cart/split",
            "cart/items",
            "raw/checkout",
            "raw/split",
            "raw/items"
        ]
    );
    let by = |n: &str| {
        rc.virtual_hosts[0]
            .routes
            .iter()
            .find(|r| r.name == n)
            .unwrap()
            .clone()
    };
    // Default rewrites: prefix to `/`, host to the virtual service.
    let cart = by("cart/split");
    let a = action(&cart);
    let rw = a.regex_rewrite.as_ref().unwrap();
    assert_eq!(rw.pattern.as_ref().unwrap().regex, "^/cart/?");
    assert_eq!(rw.substitution, "/");
    assert_eq!(
        a.host_rewrite_specifier,
        Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(
            "cart.shop.local".into()
        ))
    );
    // The router route's exact path, seen through the rewrite, as a :path condition.
    let checkout = by("cart/checkout");
    let path = checkout
        .r#match
        .as_ref()
        .unwrap()
        .headers
        .iter()
        .find(|h| h.name == ":path")
        .unwrap()
        .clone();
    assert!(
        format!("{path:?}").contains(r#"^/cart/?checkout(\\?.*)?$"#),
        "{path:?}"
    );
    // Explicit prefix value, host rewrite off, hostname match.
    let v2 = by("catalog-v2");
    let a = action(&v2);
    assert_eq!(a.regex_rewrite.as_ref().unwrap().substitution, "/v2/");
    assert!(a.host_rewrite_specifier.is_none());
    assert_eq!(
        a.cluster_specifier,
        Some(route_action::ClusterSpecifier::Cluster(
            "cds_egress_shop_catalog_http2_7000".into()
        ))
    );
    assert!(format!("{v2:?}").contains(":authority"));
    // Exact path rewrite: router routes are checked against the new path (items' regex does
    // not match /checkout, so it is left out above).
    let health = by("health/checkout");
    assert_eq!(
        action(&health).regex_rewrite.as_ref().unwrap().substitution,
        "/checkout"
    );
    // Prefix rewrite disabled: no rewrite at all.
    assert!(action(&by("raw/split")).regex_rewrite.is_none());
    // The gRPC listener gets the gRPC gateway route.
    let rc = routes(&s, "rds_ingress_grpc_8444");
    let names: Vec<&str> = rc.virtual_hosts[0]
        .routes
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(names, ["pay/charge", "pay/any"]);
    // Gateway clusters: backend-default TLS, the listener's connection pool.
    let c = cluster(&s, "cds_egress_shop_cart-v1_http_9000");
    assert!(c.transport_socket.is_some());
    assert_eq!(
        c.circuit_breakers.unwrap().thresholds[0]
            .max_connections
            .as_ref()
            .unwrap()
            .value,
        100
    );
}

#[test]
fn colorapp_gateway_routes_to_the_router_weights() {
    let (m, e) = colorapp();
    let s = snapshot(&m, &e, "mesh/colorapp/virtualGateway/colorapp-gateway");
    let rc = routes(&s, "rds_ingress_http_8080");
    let r = &rc.virtual_hosts[0].routes;
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].name, "color/colorteller-black-header");
    assert_eq!(r[1].name, "color/colorteller-weighted");
    let Some(route_action::ClusterSpecifier::WeightedClusters(w)) =
        &action(&r[1]).cluster_specifier
    else {
        panic!()
    };
    assert_eq!(w.clusters.len(), 3);
}

#[test]
fn grpc_health_checks_of_http1_apps_become_tcp_checks() {
    let model = model_of(&[
        json!({"meshName": "m", "spec": {}}),
        json!({"meshName": "m", "virtualNodeName": "a", "spec": {"listeners": [{
            "portMapping": {"port": 80, "protocol": "http"},
            "healthCheck": {"protocol": "grpc", "healthyThreshold": 2, "unhealthyThreshold": 2,
                            "timeoutMillis": 2000, "intervalMillis": 5000}}]}}),
    ]);
    let s = snapshot(&model, &[], "mesh/m/virtualNode/a");
    let c = cluster(&s, "cds_ingress_m_a_http_80");
    assert!(matches!(
        c.health_checks[0].health_checker,
        Some(health_check::HealthChecker::TcpHealthCheck(_))
    ));
}

#[test]
fn tcp_backends_sharing_a_port_are_told_apart_by_address() {
    let model = model_of(&[
        json!({"meshName": "m", "spec": {}}),
        json!({"meshName": "m", "virtualNodeName": "client", "spec": {"backends": [
            {"virtualService": {"virtualServiceName": "x.m"}},
            {"virtualService": {"virtualServiceName": "y.m"}},
            {"virtualService": {"virtualServiceName": "web.m"}}]}}),
        json!({"meshName": "m", "virtualNodeName": "x", "spec": {"listeners": [{"portMapping": {"port": 5000, "protocol": "tcp"}}]}}),
        json!({"meshName": "m", "virtualNodeName": "y", "spec": {"listeners": [{"portMapping": {"port": 5000, "protocol": "tcp"}}]}}),
        json!({"meshName": "m", "virtualNodeName": "web", "spec": {"listeners": [{"portMapping": {"port": 5000, "protocol": "http"}}]}}),
        json!({"meshName": "m", "virtualServiceName": "x.m", "spec": {"provider": {"virtualNode": {"virtualNodeName": "x"}}}}),
        json!({"meshName": "m", "virtualServiceName": "y.m", "spec": {"provider": {"virtualNode": {"virtualNodeName": "y"}}}}),
        json!({"meshName": "m", "virtualServiceName": "web.m", "spec": {"provider": {"virtualNode": {"virtualNodeName": "web"}}}}),
    ]);
    let eps = vec![
        for_node("m", "x", "x1", "10.0.0.1", 5000, true),
        for_node("m", "y", "y1", "10.0.0.2", 5000, false),
        for_node("m", "y", "y2", "10.0.0.1", 5000, true),
    ];
    let s = snapshot(&model, &eps, "mesh/m/virtualNode/client");
    let l = listener(&s, "lds_egress_0.0.0.0_15001");
    let chains: Vec<(String, Vec<String>)> = l
        .filter_chains
        .iter()
        .map(|c| {
            (
                c.name.clone(),
                c.filter_chain_match
                    .as_ref()
                    .unwrap()
                    .prefix_ranges
                    .iter()
                    .map(|r| r.address_prefix.clone())
                    .collect(),
            )
        })
        .collect();
    // The HTTP chain takes the port; each TCP backend its own addresses (10.0.0.1 is x's,
    // the first by name); a TCP backend with no address left gets no chain.
    assert_eq!(
        chains,
        [
            ("egress_http_5000".to_string(), vec![]),
            ("egress_http_direct".to_string(), vec![]),
            (
                "egress_tcp_x.m_5000".to_string(),
                vec!["10.0.0.1".to_string()]
            ),
            (
                "egress_tcp_y.m_5000".to_string(),
                vec!["10.0.0.2".to_string()]
            ),
        ]
    );
}

// ---------------------------------------------------------------------------------------
// Sharing between proxies
// ---------------------------------------------------------------------------------------

/// Sidecars with the same backends share their egress half (the same encoded resources), a
/// different logging setting or option makes it their own, and every result equals
/// translating the proxy alone.
#[test]
fn sidecars_with_the_same_backends_share_their_egress_resources() {
    let mut docs = colorapp_docs();
    let vs = |n: &str| json!({"virtualService": {"virtualServiceName": n}});
    let (color, echo) = ("colorteller.colorapp.local", "tcpecho.colorapp.local");
    for (name, backends, logging) in [
        ("twin-a", json!([vs(color), vs(echo)]), None),
        // The same backends in another order, one listed twice.
        ("twin-b", json!([vs(echo), vs(color), vs(echo)]), None),
        (
            "twin-logged",
            json!([vs(color), vs(echo)]),
            Some(json!({"accessLog": {"file": {"path": "/dev/stdout"}}})),
        ),
    ] {
        let mut spec = json!({
            "listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}],
            "backends": backends,
        });
        if let Some(l) = logging {
            spec["logging"] = l;
        }
        docs.push(json!({"meshName": "colorapp", "virtualNodeName": name, "spec": spec}));
    }
    let m = model_of(&docs);
    let e = colorapp_endpoints();
    let id = |n: &str| ProxyId::parse(&format!("mesh/colorapp/virtualNode/{n}")).unwrap();
    let moved = ProxyOptions {
        egress_port: 16001,
        ..ProxyOptions::default()
    };
    let batch = vec![
        (id("twin-a"), ProxyOptions::default()),
        (id("twin-b"), ProxyOptions::default()),
        (id("twin-logged"), ProxyOptions::default()),
        (id("twin-b"), moved.clone()),
        (id("colorgateway"), ProxyOptions::default()),
    ];
    let index = shoal_model::discovery::EndpointIndex::new(&e);
    let got: Vec<Snapshot> = translate_many(&m, &e, &index, &batch)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for ((p, o), s) in batch.iter().zip(&got) {
        assert_eq!(s, &translate(&m, &e, p, o).unwrap(), "{p}");
        check_consistency(s).unwrap();
    }
    let egress =
        |s: &Snapshot| s.resources(ResourceType::Listener)["lds_egress_0.0.0.0_15001"].clone();
    let (a, b, logged) = (&got[0], &got[1], &got[2]);
    // One encoded copy for both twins: clusters, endpoints, the egress listener and routes.
    assert!(std::sync::Arc::ptr_eq(&egress(a), &egress(b)));
    for ty in [ResourceType::Endpoint, ResourceType::Route] {
        let name = a
            .resources(ty)
            .keys()
            .find(|n| n.contains("egress") || ty == ResourceType::Endpoint)
            .unwrap();
        assert!(
            std::sync::Arc::ptr_eq(&a.resources(ty)[name], &b.resources(ty)[name]),
            "{name}"
        );
    }
    // Each keeps its own ingress (the cluster of its own application).
    assert!(a
        .resources(ResourceType::Cluster)
        .keys()
        .any(|n| n.contains("twin-a")));
    assert!(!b
        .resources(ResourceType::Cluster)
        .keys()
        .any(|n| n.contains("twin-a")));
    // Logging changes the egress listener, and so do the options.
    assert_ne!(egress(a).version, egress(logged).version);
    assert!(got[3]
        .resources(ResourceType::Listener)
        .contains_key("lds_egress_0.0.0.0_16001"));
}

/// A router route's long prefix, composed with a gateway's prefix rewrite, would make a regex
/// larger than Envoy accepts; it becomes plain prefix matches instead (one route each for
/// the rewrite's optional `/`), which Envoy accepts and which match the same paths.
#[test]
fn long_prefixes_composed_with_a_rewrite_become_string_matches() {
    let long = format!("/{}", "x".repeat(120));
    let mut docs = colorapp_docs();
    docs.push(
        json!({"meshName": "colorapp", "virtualRouterName": "colorteller-vr",
        "routeName": "long", "spec": {"priority": 5, "httpRoute": {
            "match": {"prefix": long},
            "action": {"weightedTargets": [{"virtualNode": "colorteller-red", "weight": 1}]}}}}),
    );
    docs.push(
        json!({"meshName": "colorapp", "virtualRouterName": "colorteller-vr",
        "routeName": "short", "spec": {"priority": 6, "httpRoute": {
            "match": {"path": {"exact": "/s"}},
            "action": {"weightedTargets": [{"virtualNode": "colorteller-red", "weight": 1}]}}}}),
    );
    let m = model_of(&docs);
    let e = colorapp_endpoints();
    let node = "mesh/colorapp/virtualGateway/colorapp-gateway";
    let s = snapshot(&m, &e, node);
    let rc = routes(&s, "rds_ingress_http_8080");
    let r = &rc.virtual_hosts[0].routes;
    let paths = |name: &str| -> Vec<header_matcher::HeaderMatchSpecifier> {
        r.iter()
            .filter(|x| x.name == name)
            .map(|x| {
                let m = x.r#match.as_ref().unwrap();
                let h = m.headers.iter().find(|h| h.name == ":path").unwrap();
                h.header_match_specifier.clone().unwrap()
            })
            .collect()
    };
    let prefix = |p: &str| {
        header_matcher::HeaderMatchSpecifier::StringMatch(
            envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Prefix(p.into())),
                ..Default::default()
            },
        )
    };
    // "/color" + "/"? + the rest of the router prefix after the rewrite's "/".
    let rest = &long[1..];
    assert_eq!(
        paths("color/long"),
        vec![
            prefix(&format!("/color{rest}")),
            prefix(&format!("/color/{rest}"))
        ]
    );
    // A short condition stays one regex.
    let short = paths("color/short");
    assert_eq!(short.len(), 1);
    let header_matcher::HeaderMatchSpecifier::StringMatch(m) = &short[0] else {
        panic!("{short:?}")
    };
    assert!(matches!(
        m.match_pattern,
        Some(string_matcher::MatchPattern::SafeRegex(_))
    ));
    envoy_validate(&s, node).unwrap();
}
