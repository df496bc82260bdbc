//! `acm` specs and automatic mTLS: certificates and trust from the mesh CA where App Mesh took
//! them from ACM, a mesh tag that puts every proxy on mutual TLS, and the authorization the
//! model declares (who lists whom as a backend) on every inbound listener under `STRICT`.

#[path = "translate_common.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::*;
use serde_json::{json, Value};
use shoal_xds::translate::render;
use shoal_xds::{
    check_consistency, Identities, Inputs, Proxies, ProxyId, ProxyOptions, ResourceType, Snapshot,
    TranslateError, WorkloadCert,
};
use tokio::sync::watch;

const ARN: &str = "arn:aws:acm:us-east-1:000000000000:certificate/x";
const PCA: &str = "arn:aws:acm-pca:us-east-1:000000000000:certificate-authority/y";

fn proxy(kind: &str, name: &str) -> ProxyId {
    ProxyId::parse(&format!("mesh/m/{kind}/{name}")).unwrap()
}

fn identities(nodes: &[&str]) -> Identities {
    Identities {
        trust_domain: Some("shoal".into()),
        bundle_pem: "-----BEGIN CERTIFICATE-----\nROOT\n-----END CERTIFICATE-----\n".into(),
        certs: nodes
            .iter()
            .map(|n| {
                let (kind, name) = n.split_once('/').unwrap();
                (
                    proxy(kind, name),
                    WorkloadCert {
                        spiffe_id: format!("spiffe://shoal/mesh/m/{n}"),
                        chain_pem: format!("CHAIN-OF-{name}"),
                        key_pem: format!("KEY-OF-{name}"),
                        expiration: 1,
                    },
                )
            })
            .collect::<BTreeMap<_, _>>(),
    }
}

/// The snapshots of `proxies` (`kind/name`) over `docs`, with every proxy's certificate held.
fn snapshots(docs: &[Value], proxies: &[&str]) -> Vec<Arc<Snapshot>> {
    let inputs = Inputs::new(Arc::new(model_of(docs)), Arc::new(Vec::new()))
        .with_identities(Arc::new(identities(proxies)));
    let (_tx, rx) = watch::channel(inputs);
    let cache = Proxies::new(rx);
    proxies
        .iter()
        .map(|p| {
            let (kind, name) = p.split_once('/').unwrap();
            cache
                .snapshot(&proxy(kind, name), &ProxyOptions::default())
                .unwrap_or_else(|| panic!("{p} is not translated"))
        })
        .collect()
}

fn secret_names(s: &Snapshot) -> Vec<&str> {
    s.resources(ResourceType::Secret)
        .keys()
        .map(String::as_str)
        .collect()
}

fn secret_bytes(s: &Snapshot) -> String {
    s.resources(ResourceType::Secret)
        .values()
        .map(|r| String::from_utf8_lossy(&r.any.value).into_owned())
        .collect()
}

#[test]
fn acm_certificates_and_authorities_are_the_mesh_cas() {
    // The App Mesh TLS walkthrough's shape: a listener with an ACM certificate, a client that
    // trusts an ACM Private CA.
    let docs = [
        json!({"meshName": "m", "spec": {}}),
        json!({"meshName": "m", "virtualNodeName": "back", "spec": {
            "listeners": [{"portMapping": {"port": 8080, "protocol": "http"},
                "tls": {"mode": "STRICT", "certificate": {"acm": {"certificateArn": ARN}}}}],
            "serviceDiscovery": {"dns": {"hostname": "back.m.local"}}}}),
        json!({"meshName": "m", "virtualServiceName": "back.m.local", "spec": {"provider": {"virtualNode": {"virtualNodeName": "back"}}}}),
        json!({"meshName": "m", "virtualNodeName": "front", "spec": {
            "backends": [{"virtualService": {"virtualServiceName": "back.m.local"}}],
            "backendDefaults": {"clientPolicy": {"tls": {"validation": {"trust": {"acm": {"certificateAuthorityArns": [PCA]}}}}}},
            "serviceDiscovery": {"dns": {"hostname": "front.m.local"}}}}),
    ];
    let s = snapshots(&docs, &["virtualNode/back", "virtualNode/front"]);
    let (back, front) = (&s[0], &s[1]);
    // The listener's certificate is the proxy's own, served by its agent as "default".
    assert_eq!(secret_names(back), ["default"]);
    assert!(secret_bytes(back).contains("KEY-OF-back"));
    check_consistency(back).unwrap();
    // The client trusts the mesh CA's bundle for the ACM Private CA it names.
    assert_eq!(secret_names(front), ["spiffe://shoal"]);
    assert!(!secret_bytes(front).contains("KEY-OF"));
    check_consistency(front).unwrap();
}

/// Mesh m tagged `shoal:mtls` = `mode`: `front` calls back.m.local (served by `back` and, through
/// a router, by `back-v2`), `gw` routes to back.m.local, `stranger` calls nothing, and `legacy`
/// says DISABLED on its listener in so many words.
fn auto_docs(mode: &str) -> Vec<Value> {
    let listener = json!([{"portMapping": {"port": 8080, "protocol": "http"}}]);
    vec![
        json!({"meshName": "m", "spec": {}, "tags": [{"key": "shoal:mtls", "value": mode}]}),
        json!({"meshName": "m", "virtualNodeName": "back", "spec": {"listeners": listener,
            "serviceDiscovery": {"dns": {"hostname": "back.m.local"}}}}),
        json!({"meshName": "m", "virtualNodeName": "back-v2", "spec": {"listeners": listener,
            "serviceDiscovery": {"dns": {"hostname": "back-v2.m.local"}}}}),
        json!({"meshName": "m", "virtualRouterName": "r", "spec": {"listeners": listener}}),
        json!({"meshName": "m", "virtualRouterName": "r", "routeName": "all", "spec": {"httpRoute": {
            "match": {"prefix": "/"}, "action": {"weightedTargets": [
                {"virtualNode": "back", "weight": 100}, {"virtualNode": "back-v2", "weight": 0}]}}}}),
        json!({"meshName": "m", "virtualServiceName": "back.m.local", "spec": {"provider": {"virtualRouter": {"virtualRouterName": "r"}}}}),
        json!({"meshName": "m", "virtualNodeName": "front", "spec": {"listeners": listener,
            "backends": [{"virtualService": {"virtualServiceName": "back.m.local"}}],
            "serviceDiscovery": {"dns": {"hostname": "front.m.local"}}}}),
        json!({"meshName": "m", "virtualNodeName": "stranger", "spec": {"listeners": listener,
            "serviceDiscovery": {"dns": {"hostname": "stranger.m.local"}}}}),
        json!({"meshName": "m", "virtualNodeName": "legacy", "spec": {"listeners": [{
            "portMapping": {"port": 8080, "protocol": "http"},
            "tls": {"mode": "DISABLED", "certificate": {"file": {"certificateChain": "/c", "privateKey": "/k"}}}}],
            "serviceDiscovery": {"dns": {"hostname": "legacy.m.local"}}}}),
        json!({"meshName": "m", "virtualGatewayName": "gw", "spec": {"listeners": [{"portMapping": {"port": 9080, "protocol": "http"}}]}}),
        json!({"meshName": "m", "virtualGatewayName": "gw", "gatewayRouteName": "to-back", "spec": {"httpRoute": {
            "match": {"prefix": "/"}, "action": {"target": {"virtualService": {"virtualServiceName": "back.m.local"}}}}}}),
    ]
}

const ALL: [&str; 6] = [
    "virtualNode/back",
    "virtualNode/back-v2",
    "virtualNode/front",
    "virtualNode/stranger",
    "virtualNode/legacy",
    "virtualGateway/gw",
];

fn listener_text(s: &Snapshot) -> String {
    let text = render(s);
    // Sections start with "=== <Type> <name>".
    text.split("=== ")
        .filter(|sec| sec.starts_with("Listener "))
        .collect()
}

#[test]
fn strict_puts_every_sidecar_on_mutual_tls_and_admits_the_declared_callers_only() {
    let s = snapshots(&auto_docs("STRICT"), &ALL);
    for (name, snap) in ALL.iter().zip(&s) {
        check_consistency(snap).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let back = render(&s[0]);
    // TLS only, with the agent's certificate and bundle, and the RBAC filter first, enforced,
    // naming front and the gateway (back is behind back.m.local's router), nobody else.
    assert!(!back.contains("plaintext"), "{back}");
    assert!(back.contains("envoy.filters.network.rbac"), "{back}");
    assert!(back.contains(" rules: Some("), "{back}");
    assert!(!back.contains("shadow_rules"), "{back}");
    assert!(
        back.contains("spiffe://shoal/mesh/m/virtualNode/front"),
        "{back}"
    );
    assert!(
        back.contains("spiffe://shoal/mesh/m/virtualGateway/gw"),
        "{back}"
    );
    assert!(!back.contains("spiffe://shoal/mesh/m/virtualNode/stranger"));
    // A weight-0 canary admits the same callers: shifting traffic needs no new rule.
    let v2 = listener_text(&s[1]);
    assert!(
        v2.contains("spiffe://shoal/mesh/m/virtualNode/front"),
        "{v2}"
    );
    // Nobody declares stranger as a backend: its rule admits only itself (its agent's health
    // probe comes with its identity).
    let stranger = listener_text(&s[3]);
    assert!(
        stranger.contains("envoy.filters.network.rbac"),
        "{stranger}"
    );
    assert_eq!(
        stranger.matches("spiffe://shoal/mesh/m/virtual").count(),
        1,
        "{stranger}"
    );
    assert!(stranger.contains("spiffe://shoal/mesh/m/virtualNode/stranger"));
    assert_eq!(secret_names(&s[3]), ["default", "spiffe://shoal"]);
    // front calls back with its own certificate and checks back's identity (back-v2 at weight
    // 0 gets no cluster).
    let front = render(&s[2]);
    assert!(
        front.contains("spiffe://shoal/mesh/m/virtualNode/back\""),
        "{front}"
    );
    assert!(!front.contains("virtualNode/back-v2\""), "{front}");
    assert!(secret_bytes(&s[2]).contains("KEY-OF-front"));
    // A listener that says DISABLED keeps plain text, and gets no rule.
    let legacy = listener_text(&s[4]);
    assert!(!legacy.contains("envoy.transport_sockets.tls"), "{legacy}");
    assert!(!legacy.contains("rbac"), "{legacy}");
    // The gateway's own listener faces the outside world and stays as its spec says; its
    // calls into the mesh are mutual TLS.
    let gw = render(&s[5]);
    assert!(
        gw.contains("spiffe://shoal/mesh/m/virtualNode/back\""),
        "{gw}"
    );
    assert!(!listener_text(&s[5]).contains("envoy.transport_sockets.tls"));
    assert!(secret_bytes(&s[5]).contains("KEY-OF-gw"));
}

#[test]
fn permissive_takes_plain_text_too_and_only_counts_what_it_would_deny() {
    let s = snapshots(&auto_docs("PERMISSIVE"), &ALL);
    let back = listener_text(&s[0]);
    assert!(back.contains("plaintext"), "{back}");
    assert!(back.contains("shadow_rules: Some("), "{back}");
    assert!(!back.contains(" rules: Some("), "{back}");
    assert!(
        back.contains("spiffe://shoal/mesh/m/virtualNode/front"),
        "{back}"
    );
    // DISABLED in the tag is the same as no tag: the sidecar is as its spec says.
    let off = snapshots(&auto_docs("DISABLED"), &ALL);
    let plain = render(&off[0]);
    assert!(!plain.contains("envoy.transport_sockets.tls"), "{plain}");
    assert!(secret_names(&off[0]).is_empty());
}

#[test]
fn automatic_mtls_waits_for_the_mesh_ca() {
    let m = model_of(&auto_docs("STRICT"));
    let err = shoal_xds::translate(
        &m,
        &[],
        &proxy("virtualNode", "back"),
        &ProxyOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, TranslateError::NoMeshCa { .. }), "{err}");
}
