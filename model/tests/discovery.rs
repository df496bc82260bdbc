//! Which instances stand behind a virtual node, a virtual service and a DNS name.

use std::collections::BTreeMap;

use serde_json::json;
use shoal_model::discovery::{
    dns_names, dns_zones, virtual_node_endpoints, virtual_service_nodes, workload_dns_names,
    Endpoint, Instance,
};
use shoal_model::request::parse_create;
use shoal_model::{Command, Kind, Model, PutMode, ResourceKey, Stamp};

fn put(model: &mut Model, kind: Kind, parent: &str, body: serde_json::Value) {
    let r = parse_create(kind, body.to_string().as_bytes()).unwrap();
    let key = match kind {
        Kind::Mesh => ResourceKey::mesh(&r.name),
        Kind::Route | Kind::GatewayRoute => ResourceKey::child("m", kind, parent, &r.name),
        _ => ResourceKey::in_mesh("m", kind, &r.name),
    };
    let index = model.revision() + 1;
    let applied = model.apply(
        index,
        &Command::Put {
            key,
            spec: Box::new(r.spec),
            mode: PutMode::Create,
            tags: vec![],
            client_token: None,
            stamp: Stamp {
                now: 1.0,
                uid: format!("u{index}"),
                account: "000000000000".into(),
                region: "us-east-1".into(),
            },
        },
    );
    applied.outcome.unwrap();
}

fn listener() -> serde_json::Value {
    json!([{"portMapping": {"port": 8080, "protocol": "http"}}])
}

/// Mesh m: node `red` (Cloud Map apps.local/color, version=red), `blue` (same service,
/// version=blue), `dnsnode` (dns hostname legacy.example.org), router r with a route sending
/// 1:0 to red:blue... weights given; services `color.m.local` → router, `legacy.m.local` →
/// dnsnode.
fn world() -> Model {
    let mut m = Model::default();
    put(&mut m, Kind::Mesh, "", json!({"meshName": "m", "spec": {}}));
    for (name, version) in [("red", "red"), ("blue", "blue")] {
        put(
            &mut m,
            Kind::VirtualNode,
            "",
            json!({"virtualNodeName": name, "spec": {"listeners": listener(), "serviceDiscovery": {"awsCloudMap": {
                "namespaceName": "apps.local", "serviceName": "color",
                "attributes": [{"key": "version", "value": version}]}}}}),
        );
    }
    put(
        &mut m,
        Kind::VirtualNode,
        "",
        json!({"virtualNodeName": "dnsnode", "spec": {"listeners": listener(),
            "serviceDiscovery": {"dns": {"hostname": "Legacy.Example.org"}}}}),
    );
    put(
        &mut m,
        Kind::VirtualRouter,
        "",
        json!({"virtualRouterName": "r", "spec": {"listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}]}}),
    );
    put(
        &mut m,
        Kind::Route,
        "r",
        json!({"routeName": "rt", "spec": {"httpRoute": {"match": {"prefix": "/"}, "action": {"weightedTargets": [
            {"virtualNode": "red", "weight": 1}, {"virtualNode": "blue", "weight": 0}]}}}}),
    );
    put(
        &mut m,
        Kind::VirtualService,
        "",
        json!({"virtualServiceName": "color.m.local", "spec": {"provider": {"virtualRouter": {"virtualRouterName": "r"}}}}),
    );
    put(
        &mut m,
        Kind::VirtualService,
        "",
        json!({"virtualServiceName": "legacy.m.local", "spec": {"provider": {"virtualNode": {"virtualNodeName": "dnsnode"}}}}),
    );
    m
}

fn inst(ns: &str, svc: &str, id: &str, ip: &str, attrs: &[(&str, &str)]) -> Instance {
    Instance {
        attributes: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Instance::cloud_map(ns, svc, id, ip.parse().unwrap(), 8080)
    }
    .normalize()
    .unwrap()
}

fn ep(i: Instance, healthy: bool) -> Endpoint {
    Endpoint {
        instance: i,
        host: "h1".into(),
        healthy,
    }
}

fn ids(eps: &[&Endpoint]) -> Vec<String> {
    eps.iter().map(|e| e.instance.id.clone()).collect()
}

#[test]
fn cloud_map_attributes_pick_the_virtual_node() {
    let m = world();
    let eps = vec![
        ep(
            inst(
                "apps.local",
                "color",
                "r1",
                "10.0.0.1",
                &[("version", "red")],
            ),
            true,
        ),
        ep(
            inst(
                "apps.local",
                "color",
                "b1",
                "10.0.0.2",
                &[("version", "blue")],
            ),
            true,
        ),
        ep(inst("apps.local", "color", "x1", "10.0.0.3", &[]), true),
        ep(
            inst(
                "other.local",
                "color",
                "o1",
                "10.0.0.4",
                &[("version", "red")],
            ),
            true,
        ),
    ];
    assert_eq!(ids(&virtual_node_endpoints(&m, "m", "red", &eps)), ["r1"]);
    assert_eq!(ids(&virtual_node_endpoints(&m, "m", "blue", &eps)), ["b1"]);
    assert!(virtual_node_endpoints(&m, "m", "nope", &eps).is_empty());
    // The reserved attributes filter too.
    let mut m2 = world();
    put(
        &mut m2,
        Kind::VirtualNode,
        "",
        json!({"virtualNodeName": "pinned", "spec": {"serviceDiscovery": {"awsCloudMap": {
            "namespaceName": "apps.local", "serviceName": "color",
            "attributes": [{"key": "AWS_INSTANCE_IPV4", "value": "10.0.0.3"}]}}}}),
    );
    assert_eq!(
        ids(&virtual_node_endpoints(&m2, "m", "pinned", &eps)),
        ["x1"]
    );
}

#[test]
fn instances_registered_for_a_node_by_name_belong_to_it() {
    let m = world();
    let i = Instance {
        mesh: "m".into(),
        virtual_node: "blue".into(),
        namespace: String::new(),
        service: String::new(),
        ..inst("x.local", "x", "direct", "10.1.0.1", &[])
    }
    .normalize()
    .unwrap();
    assert_eq!(i.key(), "@m/blue/direct");
    let eps = vec![ep(i, true)];
    assert_eq!(
        ids(&virtual_node_endpoints(&m, "m", "blue", &eps)),
        ["direct"]
    );
    assert!(virtual_node_endpoints(&m, "m", "red", &eps).is_empty());
}

#[test]
fn a_router_provider_is_backed_by_targets_with_weight() {
    let m = world();
    assert_eq!(virtual_service_nodes(&m, "m", "color.m.local"), ["red"]);
    assert_eq!(
        virtual_service_nodes(&m, "m", "legacy.m.local"),
        ["dnsnode"]
    );
    assert!(virtual_service_nodes(&m, "m", "nope.m.local").is_empty());
}

#[test]
fn dns_names_cover_cloud_map_services_hostnames_and_virtual_services() {
    let m = world();
    let eps = vec![
        ep(
            inst(
                "apps.local",
                "color",
                "r1",
                "10.0.0.1",
                &[("version", "red")],
            ),
            false,
        ),
        ep(
            inst(
                "apps.local",
                "color",
                "b1",
                "10.0.0.2",
                &[("version", "blue")],
            ),
            true,
        ),
        ep(inst("example.org", "legacy", "l1", "10.0.0.9", &[]), true),
    ];
    let names = dns_names(&m, &eps);
    let got: BTreeMap<&str, Vec<String>> =
        names.iter().map(|(k, v)| (k.as_str(), ids(v))).collect();
    let want: BTreeMap<&str, Vec<String>> = [
        ("color.apps.local", vec!["r1".to_string(), "b1".to_string()]),
        ("legacy.example.org", vec!["l1".to_string()]),
        ("color.m.local", vec!["r1".to_string()]),
        ("legacy.m.local", vec!["l1".to_string()]),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want);
    // Health travels with the endpoint; the DNS layer picks healthy ones.
    assert!(!names["color.m.local"][0].healthy);
    let zones: Vec<String> = dns_zones(&m, &eps, &names).into_iter().collect();
    assert_eq!(
        zones,
        [
            "apps.local",
            "color.m.local",
            "example.org",
            "legacy.m.local"
        ]
    );
}

#[test]
fn registrations_are_checked() {
    let base = inst("apps.local", "color", "i", "10.0.0.1", &[]);
    let bad = |f: &dyn Fn(&mut Instance)| {
        let mut i = base.clone();
        f(&mut i);
        i.normalize().unwrap_err().0
    };
    assert!(bad(&|i| i.port = 0).contains("port"));
    assert!(bad(&|i| {
        i.namespace.clear();
        i.service.clear();
    })
    .contains("needs a namespace"));
    assert!(bad(&|i| i.id = "a/b".into()).contains("instance id"));
    assert!(bad(&|i| i.id = "x".repeat(65)).contains("instance id"));
    assert!(bad(&|i| i.service = "a..b".into()).contains("empty label"));
    assert!(bad(&|i| {
        i.attributes.insert("AWS_INSTANCE_PORT".into(), "99".into());
    })
    .contains("reserved"));
    assert!(bad(&|i| {
        for n in 0..31 {
            i.attributes.insert(format!("k{n}"), "v".into());
        }
    })
    .contains("at most 30"));
    assert!(bad(&|i| {
        for n in 0..5 {
            i.attributes.insert(format!("k{n}"), "v".repeat(1000));
        }
    })
    .contains("record takes"));
    // Agreeing reserved attributes are accepted and dropped; names are lowercased.
    let mut ok = base.clone();
    ok.service = "Color".into();
    ok.attributes
        .insert("AWS_INSTANCE_IPV4".into(), "10.0.0.1".into());
    let ok = ok.normalize().unwrap();
    assert!(ok.attributes.is_empty());
    assert_eq!(ok.service_name().unwrap(), "color.apps.local");
    // Round trip through the wire form.
    assert_eq!(Instance::decode(&ok.encode()).unwrap(), ok);
    assert!(Instance::decode("{\"ns\":1}").is_err());
    assert!(Instance::decode(&"x".repeat(5000)).is_err());
}

proptest::proptest! {
    /// Whatever arrives as a gossiped or persisted instance record, decoding never panics, and
    /// what it accepts is a valid registration that encodes back to itself.
    #[test]
    fn decoding_any_record_is_safe(raw in ".{0,300}") {
        if let Ok(i) = Instance::decode(&raw) {
            proptest::prop_assert_eq!(Instance::decode(&i.encode()).unwrap(), i);
        }
    }

    #[test]
    fn decoding_near_valid_records_is_safe(
        ns in "[a-z.]{0,12}", id in "[ -~]{0,70}", port in proptest::num::u32::ANY,
        key in "[ -~]{0,20}", value in "[ -~]{0,20}",
    ) {
        let raw = serde_json::json!({"ns": ns, "svc": "web", "id": id, "ip": "10.0.0.1",
            "port": port, "attrs": {key: value}}).to_string();
        if let Ok(i) = Instance::decode(&raw) {
            proptest::prop_assert!(i.port > 0 && !i.id.contains('/'));
        }
    }
}

#[test]
fn a_workload_certificate_names_what_callers_dial() {
    let m = world();
    // red: its Cloud Map service and the virtual service its router serves (weight 1; blue's
    // route target counts too, whatever its weight: a shift must not break TLS).
    assert_eq!(
        workload_dns_names(&m, "m", "red"),
        ["color.apps.local", "color.m.local"]
    );
    assert_eq!(
        workload_dns_names(&m, "m", "blue"),
        ["color.apps.local", "color.m.local"]
    );
    assert_eq!(
        workload_dns_names(&m, "m", "dnsnode"),
        ["legacy.example.org", "legacy.m.local"]
    );
    assert!(workload_dns_names(&m, "m", "absent").is_empty());
    assert!(workload_dns_names(&m, "other", "red").is_empty());
}

#[test]
fn callers_are_whoever_lists_a_service_the_node_serves() {
    use shoal_model::identity::{callers, WorkloadKind};
    let mut m = world();
    // front calls color (router: red, and blue at weight 0) and legacy; lonely calls a
    // service nobody provides... none; the gateway routes to color.
    put(
        &mut m,
        Kind::VirtualNode,
        "",
        json!({"virtualNodeName": "front", "spec": {"backends": [
            {"virtualService": {"virtualServiceName": "color.m.local"}},
            {"virtualService": {"virtualServiceName": "legacy.m.local"}}]}}),
    );
    put(
        &mut m,
        Kind::VirtualNode,
        "",
        json!({"virtualNodeName": "lonely", "spec": {}}),
    );
    put(
        &mut m,
        Kind::VirtualGateway,
        "",
        json!({"virtualGatewayName": "gw", "spec": {"listeners": [{"portMapping": {"port": 9080, "protocol": "http"}}]}}),
    );
    put(
        &mut m,
        Kind::GatewayRoute,
        "gw",
        json!({"gatewayRouteName": "g", "spec": {"httpRoute": {"match": {"prefix": "/"},
            "action": {"target": {"virtualService": {"virtualServiceName": "color.m.local"}}}}}}),
    );
    let got = callers(&m, "m");
    let node = |n: &str| (WorkloadKind::VirtualNode, n.to_string());
    let gw = (WorkloadKind::VirtualGateway, "gw".to_string());
    let want: BTreeMap<String, std::collections::BTreeSet<(WorkloadKind, String)>> = [
        ("blue".to_string(), [node("front"), gw.clone()].into()),
        ("dnsnode".to_string(), [node("front")].into()),
        ("red".to_string(), [node("front"), gw].into()),
    ]
    .into();
    assert_eq!(got, want);
    assert!(callers(&m, "other").is_empty());
}

#[test]
fn the_mtls_tag_is_a_meshs_and_one_of_three_values() {
    use shoal_model::api::TagRef;
    use shoal_model::identity::{MtlsMode, MTLS_TAG};
    let tag = |key: ResourceKey, value: &str| Command::Tag {
        key,
        tags: vec![TagRef {
            key: MTLS_TAG.into(),
            value: value.into(),
        }],
    };
    for v in ["STRICT", "PERMISSIVE", "DISABLED"] {
        shoal_model::check::command(&tag(ResourceKey::mesh("m"), v)).unwrap();
    }
    let e = shoal_model::check::command(&tag(ResourceKey::mesh("m"), "strict")).unwrap_err();
    assert!(
        e.message.contains("STRICT, PERMISSIVE or DISABLED"),
        "{}",
        e.message
    );
    let node = ResourceKey::in_mesh("m", Kind::VirtualNode, "red");
    let e = shoal_model::check::command(&tag(node, "STRICT")).unwrap_err();
    assert!(e.message.contains("belongs on a mesh"), "{}", e.message);
    // Other tags are the user's.
    shoal_model::check::command(&Command::Tag {
        key: ResourceKey::mesh("m"),
        tags: vec![TagRef {
            key: "team".into(),
            value: "strict".into(),
        }],
    })
    .unwrap();

    let mut m = world();
    assert_eq!(MtlsMode::of_mesh(&m, "m"), MtlsMode::Off);
    m.apply(100, &tag(ResourceKey::mesh("m"), "STRICT"))
        .outcome
        .unwrap();
    assert_eq!(MtlsMode::of_mesh(&m, "m"), MtlsMode::Strict);
    m.apply(101, &tag(ResourceKey::mesh("m"), "PERMISSIVE"))
        .outcome
        .unwrap();
    assert_eq!(MtlsMode::of_mesh(&m, "m"), MtlsMode::Permissive);
}
