//! Workload certificates served by the agent: `sds` secrets named in the mesh CA's trust
//! domain come over the proxy's own ADS stream, each proxy gets its own certificate and the
//! bundle and never another proxy's, and the snapshot is consistent once they are in.

#[path = "translate_common.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::*;
use serde_json::json;
use shoal_xds::translate::SDS_CLUSTER;
use shoal_xds::{
    check_consistency, Identities, Inputs, Proxies, ProxyId, ProxyOptions, ResourceType,
    WorkloadCert,
};
use tokio::sync::watch;

/// Mesh m: `front` calls `back` with mutual TLS, both with certificates named by their SPIFFE
/// ids and the bundle `spiffe://shoal`; `thief` names `back`'s identity as its own certificate.
fn model() -> shoal_model::Model {
    let listener = |cert: &str| {
        json!([{"portMapping": {"port": 8080, "protocol": "http"}, "tls": {"mode": "STRICT",
            "certificate": {"sds": {"secretName": cert}},
            "validation": {"trust": {"sds": {"secretName": "spiffe://shoal"}}}}}])
    };
    let client = |cert: &str| {
        json!({"clientPolicy": {"tls": {"certificate": {"sds": {"secretName": cert}},
            "validation": {"trust": {"sds": {"secretName": "spiffe://shoal"}},
                "subjectAlternativeNames": {"match": {"exact": ["spiffe://shoal/mesh/m/virtualNode/back"]}}}}}})
    };
    model_of(&[
        json!({"meshName": "m", "spec": {}}),
        json!({"meshName": "m", "virtualNodeName": "back", "spec": {"listeners": listener("spiffe://shoal/mesh/m/virtualNode/back"),
            "serviceDiscovery": {"dns": {"hostname": "back.m.local"}}}}),
        json!({"meshName": "m", "virtualServiceName": "back.m.local", "spec": {"provider": {"virtualNode": {"virtualNodeName": "back"}}}}),
        json!({"meshName": "m", "virtualNodeName": "front", "spec": {"listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}],
            "backends": [{"virtualService": {"virtualServiceName": "back.m.local"}}],
            "backendDefaults": client("spiffe://shoal/mesh/m/virtualNode/front"),
            "serviceDiscovery": {"dns": {"hostname": "front.m.local"}}}}),
        json!({"meshName": "m", "virtualNodeName": "thief", "spec": {"listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}],
            "backends": [{"virtualService": {"virtualServiceName": "back.m.local"}}],
            "backendDefaults": client("spiffe://shoal/mesh/m/virtualNode/back"),
            "serviceDiscovery": {"dns": {"hostname": "thief.m.local"}}}}),
    ])
}

fn proxy(name: &str) -> ProxyId {
    ProxyId::parse(&format!("mesh/m/virtualNode/{name}")).unwrap()
}

fn identities(names: &[&str]) -> Identities {
    Identities {
        trust_domain: Some("shoal".into()),
        bundle_pem: "-----BEGIN CERTIFICATE-----\nROOT\n-----END CERTIFICATE-----\n".into(),
        certs: names
            .iter()
            .map(|n| {
                (
                    proxy(n),
                    WorkloadCert {
                        spiffe_id: format!("spiffe://shoal/mesh/m/virtualNode/{n}"),
                        chain_pem: format!("CHAIN-OF-{n}"),
                        key_pem: format!("KEY-OF-{n}"),
                        expiration: 1,
                    },
                )
            })
            .collect::<BTreeMap<_, _>>(),
    }
}

fn secret_bytes(s: &shoal_xds::Snapshot) -> String {
    s.resources(ResourceType::Secret)
        .values()
        .map(|r| String::from_utf8_lossy(&r.any.value).into_owned())
        .collect()
}

#[test]
fn without_a_trust_domain_sds_secrets_go_to_the_local_provider() {
    let m = model();
    let s = snapshot(&m, &[], "mesh/m/virtualNode/back");
    assert!(s.agent_secrets().is_empty());
    assert!(s.resources(ResourceType::Secret).is_empty());
    assert!(!s.resources(ResourceType::Listener).is_empty());
    let bytes: String = s
        .resources(ResourceType::Listener)
        .values()
        .map(|r| String::from_utf8_lossy(&r.any.value).into_owned())
        .collect();
    assert!(bytes.contains(SDS_CLUSTER));
}

#[tokio::test]
async fn each_proxy_gets_its_own_certificate_and_the_bundle_over_ads() {
    let m = Arc::new(model());
    let inputs = Inputs::new(m, Arc::new(Vec::new()))
        .with_identities(Arc::new(identities(&["back", "front", "thief"])));
    let (_tx, rx) = watch::channel(inputs);
    let proxies = Proxies::new(rx);
    let opts = ProxyOptions::default();

    let back = proxies.snapshot(&proxy("back"), &opts).unwrap();
    assert_eq!(
        back.agent_secrets().iter().collect::<Vec<_>>(),
        ["spiffe://shoal", "spiffe://shoal/mesh/m/virtualNode/back"]
    );
    let names: Vec<&String> = back.resources(ResourceType::Secret).keys().collect();
    assert_eq!(
        names,
        ["spiffe://shoal", "spiffe://shoal/mesh/m/virtualNode/back"]
    );
    check_consistency(&back).unwrap();
    assert!(secret_bytes(&back).contains("KEY-OF-back"));
    // The listener takes both from ADS, not from the SDS cluster.
    let l: String = back
        .resources(ResourceType::Listener)
        .values()
        .map(|r| String::from_utf8_lossy(&r.any.value).into_owned())
        .collect();
    assert!(!l.contains(SDS_CLUSTER));

    let front = proxies.snapshot(&proxy("front"), &opts).unwrap();
    check_consistency(&front).unwrap();
    let f = secret_bytes(&front);
    assert!(f.contains("KEY-OF-front") && !f.contains("KEY-OF-back"));

    // A spec that names another proxy's identity gets nothing for it: its cluster waits.
    let thief = proxies.snapshot(&proxy("thief"), &opts).unwrap();
    assert!(thief
        .agent_secrets()
        .contains("spiffe://shoal/mesh/m/virtualNode/back"));
    let t = secret_bytes(&thief);
    assert!(!t.contains("KEY-OF-back") && !t.contains("KEY-OF-thief"));
    assert_eq!(
        thief
            .resources(ResourceType::Secret)
            .keys()
            .collect::<Vec<_>>(),
        ["spiffe://shoal"]
    );
}

#[tokio::test]
async fn a_proxy_without_its_certificate_yet_gets_the_bundle_only() {
    let inputs = Inputs::new(Arc::new(model()), Arc::new(Vec::new()))
        .with_identities(Arc::new(identities(&["front"])));
    let (_tx, rx) = watch::channel(inputs);
    let proxies = Proxies::new(rx);
    let back = proxies
        .snapshot(&proxy("back"), &ProxyOptions::default())
        .unwrap();
    assert_eq!(
        back.resources(ResourceType::Secret)
            .keys()
            .collect::<Vec<_>>(),
        ["spiffe://shoal"]
    );
    assert!(
        check_consistency(&back).is_err(),
        "its own secret is still missing"
    );
}

#[tokio::test]
async fn the_rendered_form_never_shows_a_key() {
    let inputs = Inputs::new(Arc::new(model()), Arc::new(Vec::new()))
        .with_identities(Arc::new(identities(&["back"])));
    let (_tx, rx) = watch::channel(inputs);
    let back = Proxies::new(rx)
        .snapshot(&proxy("back"), &ProxyOptions::default())
        .unwrap();
    let text = shoal_xds::translate::render(&back);
    assert!(text.contains("CHAIN-OF-back"), "{text}");
    assert!(!text.contains("KEY-OF-back"), "{text}");
    assert!(text.contains("[redacted]"));
}
