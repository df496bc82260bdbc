//! Helpers shared by the translation tests (included with `#[path]` by each of them): models
//! built from App Mesh create-request bodies, endpoints, and the real Envoy.
#![allow(dead_code)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use prost::Message;
use serde_json::Value;
use shoal_model::discovery::{Endpoint, Instance};
use shoal_model::request::parse_create;
use shoal_model::{Command, Kind, Model, PutMode, ResourceKey, Stamp};
use shoal_xds::translate::{check_consistency, static_bootstrap, translate};
use shoal_xds::{ProxyId, ProxyOptions, Snapshot};

/// The kind of a create-request body, from the name members it has (as `shoal apply` does).
pub fn kind_of(doc: &Value) -> Kind {
    let has = |k: &str| doc.get(k).is_some();
    if has("gatewayRouteName") {
        Kind::GatewayRoute
    } else if has("routeName") {
        Kind::Route
    } else if has("virtualGatewayName") {
        Kind::VirtualGateway
    } else if has("virtualServiceName") {
        Kind::VirtualService
    } else if has("virtualRouterName") {
        Kind::VirtualRouter
    } else if has("virtualNodeName") {
        Kind::VirtualNode
    } else {
        Kind::Mesh
    }
}

/// Applies one create-request body; the error text when it is refused.
pub fn try_put(model: &mut Model, doc: &Value) -> Result<(), String> {
    let kind = kind_of(doc);
    // The mesh and the parent travel in the request path, not in the body.
    let mut body = doc.clone();
    if let Some(o) = body.as_object_mut() {
        if kind != Kind::Mesh {
            o.remove("meshName");
        }
        if kind == Kind::Route {
            o.remove("virtualRouterName");
        }
        if kind == Kind::GatewayRoute {
            o.remove("virtualGatewayName");
        }
    }
    let r = parse_create(kind, body.to_string().as_bytes()).map_err(|e| e.message)?;
    let mesh = doc["meshName"].as_str().unwrap_or_default();
    let key = match kind {
        Kind::Mesh => ResourceKey::mesh(&r.name),
        Kind::Route => ResourceKey::child(
            mesh,
            kind,
            doc["virtualRouterName"].as_str().unwrap_or_default(),
            &r.name,
        ),
        Kind::GatewayRoute => ResourceKey::child(
            mesh,
            kind,
            doc["virtualGatewayName"].as_str().unwrap_or_default(),
            &r.name,
        ),
        _ => ResourceKey::in_mesh(mesh, kind, &r.name),
    };
    let index = model.revision() + 1;
    let applied = model.apply(
        index,
        &Command::Put {
            key,
            spec: Box::new(r.spec),
            mode: PutMode::Create,
            tags: r.tags,
            client_token: None,
            stamp: Stamp {
                now: 1.0,
                uid: format!("u{index}"),
                account: "000000000000".into(),
                region: "us-east-1".into(),
            },
        },
    );
    applied.outcome.map(|_| ()).map_err(|e| e.message)
}

/// A model from create-request bodies, in order; panics on a refused one.
pub fn model_of(docs: &[Value]) -> Model {
    let mut m = Model::default();
    for d in docs {
        if let Err(e) = try_put(&mut m, d) {
            panic!("{e}: {d}");
        }
    }
    m
}

/// A Cloud Map instance `id` of `<service>.<namespace>` with attributes.
pub fn cloud_map(
    namespace: &str,
    service: &str,
    id: &str,
    ip: &str,
    port: u16,
    attrs: &[(&str, &str)],
    healthy: bool,
) -> Endpoint {
    Endpoint {
        instance: Instance {
            namespace: namespace.into(),
            service: service.into(),
            mesh: String::new(),
            virtual_node: String::new(),
            id: id.into(),
            address: ip.parse::<IpAddr>().unwrap(),
            port,
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        },
        host: "host-1".into(),
        healthy,
    }
}

/// An instance registered for virtual node `node` of `mesh`.
pub fn for_node(mesh: &str, node: &str, id: &str, ip: &str, port: u16, healthy: bool) -> Endpoint {
    Endpoint {
        instance: Instance {
            namespace: String::new(),
            service: String::new(),
            mesh: mesh.into(),
            virtual_node: node.into(),
            id: id.into(),
            address: ip.parse::<IpAddr>().unwrap(),
            port,
            attributes: Default::default(),
        },
        host: "host-1".into(),
        healthy,
    }
}

/// The example mesh `shoal dev` loads (node/examples/colorapp.json).
pub fn colorapp_docs() -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../node/examples/colorapp.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Instances for the colorapp mesh: two red, one blue (unhealthy), one black, the tcp echo.
pub fn colorapp_endpoints() -> Vec<Endpoint> {
    vec![
        cloud_map(
            "colorapp.local",
            "colorteller",
            "red-1",
            "10.0.1.1",
            9080,
            &[("version", "red")],
            true,
        ),
        cloud_map(
            "colorapp.local",
            "colorteller",
            "red-2",
            "10.0.1.2",
            9080,
            &[("version", "red")],
            true,
        ),
        cloud_map(
            "colorapp.local",
            "colorteller",
            "blue-1",
            "10.0.2.1",
            9080,
            &[("version", "blue")],
            false,
        ),
        cloud_map(
            "colorapp.local",
            "colorteller",
            "black-1",
            "10.0.3.1",
            9080,
            &[("version", "black")],
            true,
        ),
        cloud_map(
            "colorapp.local",
            "tcpecho",
            "echo-1",
            "10.0.4.1",
            2701,
            &[],
            true,
        ),
        for_node("colorapp", "colorgateway", "gw-1", "10.0.5.1", 9080, true),
    ]
}

/// Translates and checks consistency.
pub fn snapshot(model: &Model, endpoints: &[Endpoint], proxy: &str) -> Snapshot {
    let id = ProxyId::parse(proxy).unwrap();
    let s = translate(model, endpoints, &id, &ProxyOptions::default())
        .unwrap_or_else(|e| panic!("{proxy}: {e}"));
    check_consistency(&s).unwrap_or_else(|e| panic!("{proxy}: {e}"));
    s
}

/// Every proxy of a model: each virtual node and virtual gateway, as node ids.
pub fn proxies(model: &Model) -> Vec<String> {
    model
        .iter()
        .filter(|r| matches!(r.key.kind, Kind::VirtualNode | Kind::VirtualGateway))
        .map(|r| {
            format!(
                "mesh/{}/{}/{}",
                r.key.mesh,
                r.key.kind.arn_segment(),
                r.key.name
            )
        })
        .collect()
}

/// The Envoy binary the tests run: `SHOAL_ENVOY`, or the one `scripts/install-tools` puts in
/// target/tools. Panics with instructions when it is missing: a test that needs Envoy must
/// never pass without it.
pub fn envoy() -> PathBuf {
    let path = std::env::var_os("SHOAL_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/envoy/envoy")
        });
    assert!(
        path.is_file(),
        "Envoy is missing at {} — run scripts/install-tools (or set SHOAL_ENVOY)",
        path.display()
    );
    path
}

/// Runs `envoy --mode validate` on the snapshot as a static bootstrap; the error output when
/// Envoy refuses it.
pub fn envoy_validate(s: &Snapshot, node_id: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bootstrap.pb");
    let b = static_bootstrap(s, node_id).unwrap();
    std::fs::write(&file, b.encode_to_vec()).unwrap();
    let out = Process::new(envoy())
        .arg("--mode")
        .arg("validate")
        .arg("-c")
        .arg(&file)
        .arg("--disable-hot-restart")
        .arg("-l")
        .arg("error")
        .output()
        .expect("run envoy");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A mesh that uses most of what the translation covers. Certificate paths are under
/// `certs` (the Envoy test points them at real files).
pub fn shop_docs(certs: &str) -> Vec<Value> {
    use serde_json::json;
    let file_tls = |name: &str| {
        json!({"mode": "STRICT",
               "certificate": {"file": {"certificateChain": format!("{certs}/{name}.crt"),
                                        "privateKey": format!("{certs}/{name}.key")}},
               "validation": {"trust": {"file": {"certificateChain": format!("{certs}/ca.crt")}},
                              "subjectAlternativeNames": {"match": {"exact": ["frontend.shop.local"]}}}})
    };
    let client_file = json!({"tls": {"validation": {"trust": {"file": {"certificateChain": format!("{certs}/ca.crt")}},
                                                      "subjectAlternativeNames": {"match": {"exact": ["cart.shop.local"]}}},
                                      "certificate": {"file": {"certificateChain": format!("{certs}/frontend.crt"),
                                                               "privateKey": format!("{certs}/frontend.key")}}}});
    let cm = |svc: &str, version: &str| {
        json!({"awsCloudMap": {"namespaceName": "shop.local", "serviceName": svc,
                               "attributes": [{"key": "version", "value": version}]}})
    };
    vec![
        json!({"meshName": "shop", "spec": {"egressFilter": {"type": "ALLOW_ALL"}}}),
        json!({"meshName": "shop", "virtualNodeName": "frontend", "spec": {
            "listeners": [{"portMapping": {"port": 8080, "protocol": "http"},
                           "timeout": {"http": {"perRequest": {"value": 5, "unit": "s"}, "idle": {"value": 60, "unit": "s"}}},
                           "connectionPool": {"http": {"maxConnections": 10, "maxPendingRequests": 5}},
                           "healthCheck": {"protocol": "http", "path": "/health", "healthyThreshold": 2,
                                           "unhealthyThreshold": 3, "timeoutMillis": 2000, "intervalMillis": 5000,
                                           "port": 8081}}],
            "serviceDiscovery": cm("frontend", "v1"),
            "logging": {"accessLog": {"file": {"path": "/dev/stdout", "format": {"json": [
                {"key": "status", "value": "%RESPONSE_CODE%"}, {"key": "authority", "value": "%REQ(:AUTHORITY)%"}]}}}},
            "backendDefaults": {"clientPolicy": client_file},
            "backends": [
                {"virtualService": {"virtualServiceName": "cart.shop.local"}},
                {"virtualService": {"virtualServiceName": "catalog.shop.local",
                                    "clientPolicy": {"tls": {"enforce": false, "validation": {"trust": {"file": {"certificateChain": format!("{certs}/ca.crt")}}}}}}},
                {"virtualService": {"virtualServiceName": "payments.shop.local",
                                    "clientPolicy": {"tls": {"ports": [50051],
                                        "certificate": {"sds": {"secretName": "spiffe://shop/frontend"}},
                                        "validation": {"trust": {"sds": {"secretName": "spiffe://shop"}},
                                                       "subjectAlternativeNames": {"match": {"exact": ["spiffe://shop/payments"]}}}}}}},
                {"virtualService": {"virtualServiceName": "db.shop.local"}},
                {"virtualService": {"virtualServiceName": "legacy.shop.local"}}]}}),
        json!({"meshName": "shop", "virtualNodeName": "cart-v1", "spec": {
            "listeners": [{"portMapping": {"port": 9000, "protocol": "http"}, "tls": file_tls("cart"),
                           "outlierDetection": {"maxServerErrors": 5, "interval": {"value": 10, "unit": "s"},
                                                "baseEjectionDuration": {"value": 30, "unit": "s"}, "maxEjectionPercent": 50}}],
            "serviceDiscovery": cm("cart", "v1")}}),
        json!({"meshName": "shop", "virtualNodeName": "cart-v2", "spec": {
            "listeners": [{"portMapping": {"port": 9000, "protocol": "http"}}],
            "serviceDiscovery": cm("cart", "v2")}}),
        json!({"meshName": "shop", "virtualNodeName": "catalog", "spec": {
            "listeners": [{"portMapping": {"port": 7000, "protocol": "http2"},
                           "tls": {"mode": "PERMISSIVE", "certificate": {"sds": {"secretName": "spiffe://shop/catalog"}}},
                           "connectionPool": {"http2": {"maxRequests": 100}}},
                          {"portMapping": {"port": 7001, "protocol": "grpc"},
                           "healthCheck": {"protocol": "grpc", "healthyThreshold": 2, "unhealthyThreshold": 2,
                                           "timeoutMillis": 2000, "intervalMillis": 5000}}],
            "serviceDiscovery": {"awsCloudMap": {"namespaceName": "shop.local", "serviceName": "catalog"}}}}),
        json!({"meshName": "shop", "virtualNodeName": "payments", "spec": {
            "listeners": [{"portMapping": {"port": 50051, "protocol": "grpc"},
                           "timeout": {"grpc": {"perRequest": {"value": 1500, "unit": "ms"}}}}],
            "serviceDiscovery": {"awsCloudMap": {"namespaceName": "shop.local", "serviceName": "payments",
                                                 "ipPreference": "IPv4_ONLY"}}}}),
        json!({"meshName": "shop", "virtualNodeName": "db", "spec": {
            "listeners": [{"portMapping": {"port": 5432, "protocol": "tcp"},
                           "timeout": {"tcp": {"idle": {"value": 600, "unit": "s"}}},
                           "connectionPool": {"tcp": {"maxConnections": 50}}}],
            "serviceDiscovery": {"dns": {"hostname": "db.shop.local"}}}}),
        json!({"meshName": "shop", "virtualNodeName": "legacy", "spec": {
            "listeners": [{"portMapping": {"port": 80, "protocol": "http"}}],
            "serviceDiscovery": {"dns": {"hostname": "legacy.example.com", "responseType": "LOADBALANCER"}}}}),
        json!({"meshName": "shop", "virtualRouterName": "cart-router", "spec": {
            "listeners": [{"portMapping": {"port": 9000, "protocol": "http"}}]}}),
        json!({"meshName": "shop", "virtualRouterName": "cart-router", "routeName": "checkout", "spec": {
            "priority": 5,
            "httpRoute": {"match": {"path": {"exact": "/checkout"}, "method": "POST", "scheme": "http",
                                    "headers": [{"name": "x-exact", "match": {"exact": "a"}},
                                                {"name": "x-prefix", "match": {"prefix": "b"}},
                                                {"name": "x-suffix", "match": {"suffix": "c"}},
                                                {"name": "x-regex", "match": {"regex": "^d+$"}},
                                                {"name": "x-range", "match": {"range": {"start": 1, "end": 10}}},
                                                {"name": "x-present"},
                                                {"name": "x-not", "invert": true, "match": {"exact": "no"}}],
                                    "queryParameters": [{"name": "cart", "match": {"exact": "1"}}, {"name": "debug"}]},
                          "action": {"weightedTargets": [{"virtualNode": "cart-v2", "weight": 1}]},
                          "timeout": {"perRequest": {"value": 0, "unit": "s"}, "idle": {"value": 30, "unit": "s"}}}}}),
        json!({"meshName": "shop", "virtualRouterName": "cart-router", "routeName": "items", "spec": {
            "httpRoute": {"match": {"path": {"regex": "/items/[0-9]+"}},
                          "action": {"weightedTargets": [{"virtualNode": "cart-v1", "weight": 1}]},
                          "retryPolicy": {"maxRetries": 3, "perRetryTimeout": {"value": 250, "unit": "ms"},
                                          "httpRetryEvents": ["client-error", "stream-error"]}}}}),
        json!({"meshName": "shop", "virtualRouterName": "cart-router", "routeName": "split", "spec": {
            "priority": 100,
            "httpRoute": {"match": {"prefix": "/"},
                          "action": {"weightedTargets": [{"virtualNode": "cart-v1", "weight": 90},
                                                         {"virtualNode": "cart-v2", "weight": 10, "port": 9000},
                                                         {"virtualNode": "legacy", "weight": 0}]},
                          "retryPolicy": {"maxRetries": 2, "perRetryTimeout": {"value": 1, "unit": "s"},
                                          "httpRetryEvents": ["server-error", "gateway-error"],
                                          "tcpRetryEvents": ["connection-error"]}}}}),
        json!({"meshName": "shop", "virtualRouterName": "payments-router", "spec": {
            "listeners": [{"portMapping": {"port": 50051, "protocol": "grpc"}}]}}),
        json!({"meshName": "shop", "virtualRouterName": "payments-router", "routeName": "charge", "spec": {
            "grpcRoute": {"match": {"serviceName": "shop.Payments", "methodName": "Charge",
                                    "metadata": [{"name": "tenant", "match": {"prefix": "eu-"}}]},
                          "action": {"weightedTargets": [{"virtualNode": "payments", "weight": 1}]},
                          "retryPolicy": {"maxRetries": 1, "perRetryTimeout": {"value": 500, "unit": "ms"},
                                          "grpcRetryEvents": ["unavailable", "resource-exhausted"]},
                          "timeout": {"perRequest": {"value": 2, "unit": "s"}}}}}),
        json!({"meshName": "shop", "virtualRouterName": "payments-router", "routeName": "any", "spec": {
            "grpcRoute": {"match": {"serviceName": "shop.Payments"},
                          "action": {"weightedTargets": [{"virtualNode": "payments", "weight": 1}]}}}}),
        json!({"meshName": "shop", "virtualRouterName": "db-router", "spec": {
            "listeners": [{"portMapping": {"port": 5432, "protocol": "tcp"}}]}}),
        json!({"meshName": "shop", "virtualRouterName": "db-router", "routeName": "db", "spec": {
            "tcpRoute": {"action": {"weightedTargets": [{"virtualNode": "db", "weight": 1}]},
                         "timeout": {"idle": {"value": 120, "unit": "s"}}}}}),
        json!({"meshName": "shop", "virtualServiceName": "cart.shop.local",
               "spec": {"provider": {"virtualRouter": {"virtualRouterName": "cart-router"}}}}),
        json!({"meshName": "shop", "virtualServiceName": "catalog.shop.local",
               "spec": {"provider": {"virtualNode": {"virtualNodeName": "catalog"}}}}),
        json!({"meshName": "shop", "virtualServiceName": "payments.shop.local",
               "spec": {"provider": {"virtualRouter": {"virtualRouterName": "payments-router"}}}}),
        json!({"meshName": "shop", "virtualServiceName": "db.shop.local",
               "spec": {"provider": {"virtualRouter": {"virtualRouterName": "db-router"}}}}),
        json!({"meshName": "shop", "virtualServiceName": "legacy.shop.local",
               "spec": {"provider": {"virtualNode": {"virtualNodeName": "legacy"}}}}),
        json!({"meshName": "shop", "virtualGatewayName": "edge", "spec": {
            "listeners": [{"portMapping": {"port": 8443, "protocol": "http"},
                           "tls": {"mode": "STRICT", "certificate": {"file": {
                               "certificateChain": format!("{certs}/edge.crt"), "privateKey": format!("{certs}/edge.key")}}},
                           "connectionPool": {"http": {"maxConnections": 100}}},
                          {"portMapping": {"port": 8444, "protocol": "grpc"}}],
            "logging": {"accessLog": {"file": {"path": "/dev/stdout", "format": {"text": "%REQ(:AUTHORITY)% %RESPONSE_CODE%"}}}},
            "backendDefaults": {"clientPolicy": {"tls": {"validation": {"trust": {"file": {"certificateChain": format!("{certs}/ca.crt")}}}}}}}}),
        json!({"meshName": "shop", "virtualGatewayName": "edge", "gatewayRouteName": "cart", "spec": {
            "httpRoute": {"match": {"prefix": "/cart"},
                          "action": {"target": {"virtualService": {"virtualServiceName": "cart.shop.local"}}}}}}),
        json!({"meshName": "shop", "virtualGatewayName": "edge", "gatewayRouteName": "catalog-v2", "spec": {
            "priority": 1,
            "httpRoute": {"match": {"prefix": "/catalog/", "hostname": {"exact": "api.shop.example"},
                                    "headers": [{"name": "x-beta", "match": {"exact": "1"}}], "method": "GET",
                                    "queryParameters": [{"name": "v2"}]},
                          "action": {"target": {"virtualService": {"virtualServiceName": "catalog.shop.local"}, "port": 7000},
                                     "rewrite": {"prefix": {"value": "/v2/"}, "hostname": {"defaultTargetHostname": "DISABLED"}}}}}}),
        json!({"meshName": "shop", "virtualGatewayName": "edge", "gatewayRouteName": "health", "spec": {
            "httpRoute": {"match": {"path": {"exact": "/healthz"}, "hostname": {"suffix": ".shop.example"}},
                          "action": {"target": {"virtualService": {"virtualServiceName": "cart.shop.local"}},
                                     "rewrite": {"path": {"exact": "/checkout"}}}}}}),
        json!({"meshName": "shop", "virtualGatewayName": "edge", "gatewayRouteName": "raw", "spec": {
            "httpRoute": {"match": {"prefix": "/raw"},
                          "action": {"target": {"virtualService": {"virtualServiceName": "cart.shop.local"}},
                                     "rewrite": {"prefix": {"defaultPrefix": "DISABLED"}}}}}}),
        json!({"meshName": "shop", "virtualGatewayName": "edge", "gatewayRouteName": "pay", "spec": {
            "grpcRoute": {"match": {"serviceName": "shop.Payments", "metadata": [{"name": "tenant", "invert": true, "match": {"exact": "blocked"}}]},
                          "action": {"target": {"virtualService": {"virtualServiceName": "payments.shop.local"}}}}}}),
    ]
}

/// Instances of the shop mesh.
pub fn shop_endpoints() -> Vec<Endpoint> {
    vec![
        cloud_map(
            "shop.local",
            "frontend",
            "fe-1",
            "10.1.0.1",
            8080,
            &[("version", "v1")],
            true,
        ),
        cloud_map(
            "shop.local",
            "cart",
            "cart-1",
            "10.1.1.1",
            9000,
            &[("version", "v1")],
            true,
        ),
        cloud_map(
            "shop.local",
            "cart",
            "cart-2",
            "10.1.1.2",
            9000,
            &[("version", "v1")],
            false,
        ),
        cloud_map(
            "shop.local",
            "cart",
            "cart-3",
            "10.1.2.1",
            9000,
            &[("version", "v2")],
            false,
        ),
        cloud_map(
            "shop.local",
            "catalog",
            "cat-1",
            "10.1.3.1",
            7000,
            &[],
            true,
        ),
        cloud_map(
            "shop.local",
            "payments",
            "pay-1",
            "10.1.4.1",
            50051,
            &[],
            true,
        ),
        cloud_map(
            "shop.local",
            "payments",
            "pay-6",
            "fd00::1",
            50051,
            &[],
            true,
        ),
        cloud_map("shop.local", "db", "db-1", "10.1.5.1", 5432, &[], true),
    ]
}

/// Writes a CA (`ca.crt`) and leaf certificates with keys (`<name>.crt`, `<name>.key`) into
/// `dir` with the openssl command line tool (Envoy reads certificate files while it
/// validates a configuration).
pub fn write_certs(dir: &Path, names: &[&str]) {
    let run = |args: &[&str]| {
        let out = Process::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the openssl command line tool is needed to make test certificates");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "30",
        "-subj",
        "/CN=shoal test CA",
    ]);
    for n in names {
        let key = format!("{n}.key");
        let csr = format!("{n}.csr");
        let crt = format!("{n}.crt");
        let subj = format!("/CN={n}");
        run(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &subj,
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "30",
        ]);
    }
}
