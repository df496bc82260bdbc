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
