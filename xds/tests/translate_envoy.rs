//! The real Envoy 1.40 accepts what shoal generates (`envoy --mode validate`).

#[path = "translate_common.rs"]
mod common;

use common::*;

#[test]
fn envoy_accepts_colorapp() {
    let model = model_of(&colorapp_docs());
    let eps = colorapp_endpoints();
    for p in proxies(&model) {
        let s = snapshot(&model, &eps, &p);
        if let Err(e) = envoy_validate(&s, &p) {
            panic!("{p}:\n{}\n{e}", shoal_xds::translate::render(&s));
        }
    }
}

#[test]
fn envoy_accepts_shop() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path(), &["cart", "frontend", "edge"]);
    let model = model_of(&shop_docs(dir.path().to_str().unwrap()));
    let eps = shop_endpoints();
    for p in proxies(&model) {
        let s = snapshot(&model, &eps, &p);
        if let Err(e) = envoy_validate(&s, &p) {
            panic!("{p}:\n{e}");
        }
    }
}

/// Models that shoal's validation accepts but Envoy 1.40 refuses (a proxy sent one NACKs it
/// and keeps its last good configuration). Each is a gap in `shoal_model::check` that this
/// test documents; when validation learns to refuse one, move it out of this list.
#[test]
fn validation_gaps_envoy_refuses() {
    use serde_json::json;
    let docs = |route_match: serde_json::Value, logging: serde_json::Value| {
        vec![
            json!({"meshName": "m", "spec": {}}),
            json!({"meshName": "m", "virtualNodeName": "a", "spec": {
                "listeners": [{"portMapping": {"port": 80, "protocol": "http"}}],
                "logging": logging, "backends": [{"virtualService": {"virtualServiceName": "s.m"}}]}}),
            json!({"meshName": "m", "virtualRouterName": "r", "spec": {
                "listeners": [{"portMapping": {"port": 80, "protocol": "http"}}]}}),
            json!({"meshName": "m", "virtualRouterName": "r", "routeName": "x", "spec": {
                "httpRoute": {"match": route_match,
                              "action": {"weightedTargets": [{"virtualNode": "a", "weight": 1}]}}}}),
            json!({"meshName": "m", "virtualServiceName": "s.m",
                   "spec": {"provider": {"virtualRouter": {"virtualRouterName": "r"}}}}),
        ]
    };
    let cases = [
        ("accepted baseline", json!({"prefix": "/"}), json!({}), true),
        // RE2 has no `x` flag; the regex crate has.
        (
            "regex (?x)",
            json!({"path": {"regex": "(?x) /a b"}}),
            json!({}),
            false,
        ),
        // Envoy refuses RE2 programs larger than 100 by default.
        (
            "regex program size",
            json!({"path": {"regex": "/[a-z]{200}"}}),
            json!({}),
            false,
        ),
        (
            "header regex program size",
            json!({"prefix": "/", "headers": [{"name": "h", "match": {"regex": "(abc|def){50}"}}]}),
            json!({}),
            false,
        ),
        // Access log formats are Envoy command strings, parsed when the listener is built.
        (
            "unknown access log operator",
            json!({"prefix": "/"}),
            json!({"accessLog": {"file": {"path": "/dev/stdout", "format": {"text": "%BOGUS%"}}}}),
            false,
        ),
        (
            "broken json access log operator",
            json!({"prefix": "/"}),
            json!({"accessLog": {"file": {"path": "/dev/stdout", "format": {"json": [{"key": "a", "value": "%REQ(%"}]}}}}),
            false,
        ),
        // Header names may not hold control characters.
        (
            "header name with a newline",
            json!({"prefix": "/", "headers": [{"name": "a\nb", "match": {"exact": "x"}}]}),
            json!({}),
            false,
        ),
    ];
    for (name, m, log, accepted) in cases {
        let model = model_of(&docs(m, log));
        let s = snapshot(&model, &[], "mesh/m/virtualNode/a");
        let r = envoy_validate(&s, "mesh/m/virtualNode/a");
        assert_eq!(r.is_ok(), accepted, "{name}: {r:?}");
    }
}
