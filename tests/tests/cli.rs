//! The `shoal` CLI against a real `shoal dev`: apply a directory (in dependency order, then
//! again as updates), get as table and JSON, status, delete from files, one-line errors with
//! non-zero exit codes; and the Prometheus metrics the server exposes.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};
use shoal_e2e::{http_get, shoal_bin, DevConfig, DevServer};

fn shoal(addr: &str, args: &[&str]) -> Output {
    Command::new(shoal_bin())
        .args(args)
        .env("SHOAL_ADDR", addr)
        .output()
        .expect("run the shoal CLI")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "command failed: {}\n{}",
        stderr(&o),
        stdout(&o)
    );
    stdout(&o)
}

fn write(dir: &Path, name: &str, v: Value) {
    std::fs::write(dir.join(name), serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

#[test]
fn apply_get_status_delete_and_errors() {
    let root = tempfile::tempdir().unwrap();
    let server = DevServer::start(&DevConfig::in_dir(root.path()));
    let addr = server.endpoint();
    let docs = root.path().join("mesh");
    std::fs::create_dir_all(&docs).unwrap();
    // File names sort opposite to the dependency order: apply must reorder them.
    write(
        &docs,
        "a-route.json",
        json!({"meshName": "shop", "virtualRouterName": "web-vr", "routeName": "web",
        "spec": {"httpRoute": {"match": {"prefix": "/"}, "action": {"weightedTargets": [{"virtualNode": "web-v1", "weight": 1}]}}}}),
    );
    write(
        &docs,
        "b-router.json",
        json!({"meshName": "shop", "virtualRouterName": "web-vr",
        "spec": {"listeners": [{"portMapping": {"port": 80, "protocol": "http"}}]}}),
    );
    write(
        &docs,
        "c-node.json",
        json!({"meshName": "shop", "virtualNodeName": "web-v1",
        "spec": {"listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}], "serviceDiscovery": {"dns": {"hostname": "web.shop.local"}}}}),
    );
    write(&docs, "d-mesh.json", json!({"meshName": "shop"}));

    let out = ok(shoal(&addr, &["apply", "-f", docs.to_str().unwrap()]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "mesh shop created",
            "virtualNode shop/web-v1 created",
            "virtualRouter shop/web-vr created",
            "route shop/web-vr/web created"
        ]
    );
    // Applying again updates (version 2) instead of failing.
    let out = ok(shoal(&addr, &["apply", "-f", docs.to_str().unwrap()]));
    assert!(out.lines().all(|l| l.ends_with(" updated")), "{out}");

    let table = ok(shoal(
        &addr,
        &[
            "get",
            "routes",
            "--mesh",
            "shop",
            "--virtual-router",
            "web-vr",
        ],
    ));
    assert_eq!(
        table,
        "NAME  MESH  ROUTER  VERSION  STATUS  SPEC\nweb   shop  web-vr  2        ACTIVE  http -> web-v1=1\n"
    );
    let json: Value = serde_json::from_str(&ok(shoal(
        &addr,
        &["get", "vn", "web-v1", "--mesh", "shop", "-o", "json"],
    )))
    .unwrap();
    assert_eq!(
        json["spec"]["serviceDiscovery"]["dns"]["hostname"],
        "web.shop.local"
    );
    assert_eq!(json["metadata"]["version"], 2);
    let stale: Value = serde_json::from_str(&ok(shoal(
        &addr,
        &["get", "meshes", "-o", "json", "--stale"],
    )))
    .unwrap();
    assert_eq!(stale.as_array().map(Vec::len), Some(1));

    let status: Value = serde_json::from_str(&ok(shoal(&addr, &["status", "-o", "json"]))).unwrap();
    assert_eq!(status["leader_id"], status["node_id"]);
    assert!(status["revision"].as_u64().unwrap() >= 8, "{status}");

    // Errors: one line, the exception's name, non-zero exit.
    let e = shoal(&addr, &["get", "vn", "nope", "--mesh", "shop"]);
    assert!(!e.status.success());
    assert_eq!(
        stderr(&e).trim(),
        "shoal: NotFoundException: Virtual node nope in mesh shop not found"
    );
    let e = shoal(&addr, &["delete", "mesh", "shop"]);
    assert!(!e.status.success());
    assert!(
        stderr(&e).starts_with("shoal: ResourceInUseException: Mesh shop is in use"),
        "{}",
        stderr(&e)
    );
    assert_eq!(stderr(&e).lines().count(), 1);
    let e = shoal(&addr, &["get", "bogus"]);
    assert!(
        !e.status.success() && stderr(&e).contains("unknown kind \"bogus\""),
        "{}",
        stderr(&e)
    );
    let e = shoal("http://127.0.0.1:1", &["status"]);
    assert!(
        !e.status.success() && stderr(&e).contains("cannot reach"),
        "{}",
        stderr(&e)
    );

    // Metrics: request counts by operation and code, apply latency, resources by kind.
    let (code, metrics) = http_get(server.config().api, "/metrics").unwrap();
    assert_eq!(code, 200);
    for needle in [
        "shoal_resources{kind=\"virtualNode\"} 1",
        "shoal_resources{kind=\"route\"} 1",
        "shoal_api_requests_total{operation=\"CreateVirtualNode\",code=\"200\"} 1",
        "shoal_api_requests_total{operation=\"DescribeVirtualNode\",code=\"404\"} 1",
        "shoal_raft_apply_duration_seconds_count",
        "shoal_raft_is_leader 1",
    ] {
        assert!(
            metrics.contains(needle),
            "metrics lack {needle:?}:\n{metrics}"
        );
    }

    // Delete what the files describe, in reverse dependency order; then the mesh is gone.
    let out = ok(shoal(&addr, &["delete", "-f", docs.to_str().unwrap()]));
    assert_eq!(out.lines().last(), Some("mesh shop deleted"));
    let e = shoal(&addr, &["get", "meshes", "shop"]);
    assert!(!e.status.success());
}
