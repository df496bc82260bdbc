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

/// Models Envoy 1.40 refuses never get past shoal's validation (the invariant "a spec Envoy
/// would reject never enters the log"). Each case was once a gap; what remains are host-
/// dependent rejections (a certificate file that does not exist), which the end-to-end NACK
/// test covers.
#[test]
fn validation_refuses_what_envoy_refuses() {
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
    // The baseline is accepted by shoal and by Envoy.
    let model = model_of(&docs(json!({"prefix": "/"}), json!({})));
    let s = snapshot(&model, &[], "mesh/m/virtualNode/a");
    envoy_validate(&s, "mesh/m/virtualNode/a").expect("the baseline passes Envoy");
    // Each of these once passed shoal's validation and was refused by Envoy 1.40 (RE2 has no
    // `x` flag and a program-size limit of 100; access log operators are parsed when the
    // listener is built; header names are tokens). Validation refuses them now, before commit.
    let cases = [
        (
            json!({"path": {"regex": "(?x) /a b"}}),
            json!({}),
            "invalid perl operator: (?x",
        ),
        (
            json!({"path": {"regex": "/[a-z]{200}"}}),
            json!({}),
            "RE2 compiles it to a program of 205 instructions",
        ),
        (
            json!({"prefix": "/", "headers": [{"name": "h", "match": {"regex": "(abc|def){50}"}}]}),
            json!({}),
            "RE2 compiles it to a program of 404 instructions",
        ),
        (
            json!({"prefix": "/"}),
            json!({"accessLog": {"file": {"path": "/dev/stdout", "format": {"text": "%BOGUS%"}}}}),
            "unknown command operator %BOGUS%",
        ),
        (
            json!({"prefix": "/"}),
            json!({"accessLog": {"file": {"path": "/dev/stdout", "format": {"json": [{"key": "a", "value": "%REQ(%"}]}}}}),
            "is not a command operator",
        ),
        (
            json!({"prefix": "/", "headers": [{"name": "a\nb", "match": {"exact": "x"}}]}),
            json!({}),
            "is not an HTTP header name",
        ),
    ];
    for (m, log, want) in cases {
        let mut model = shoal_model::Model::default();
        let errors: Vec<String> = docs(m, log)
            .iter()
            .filter_map(|d| try_put(&mut model, d).err())
            .collect();
        assert!(
            errors.iter().any(|e| e.contains(want)),
            "expected a validation error containing {want:?}, got {errors:?}"
        );
    }
}
