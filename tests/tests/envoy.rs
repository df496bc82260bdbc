//! Real Envoys configured by a real agent over ADS (issue 5): a `shoal server`, a `shoal agent`,
//! `shoal-backend` processes as the colorteller versions, and Envoy 1.40 sidecars (state of the
//! world and incremental) and a gateway. Checks go through traffic and through Envoy's admin API.
//! Every process listens on its own `127.0.43.x` address; every wait is bounded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shoal_e2e::{
    http_call, http_request, logs_dir, put_json, register_when_up, sidecar_args, wait_for,
    AgentSpec, Backend, Envoy, Process, ServerProcess, ServerSpec,
};

const BLOCK: u8 = 43;
const VS: &str = "colorteller.color.local";
const HOST: &str = "colorteller.color.local:8080";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn route_path(name: &str) -> String {
    format!("/v20190125/meshes/color/virtualRouter/colorteller-vr/routes/{name}")
}

fn weighted(red: u32, blue: u32, green: u32) -> Value {
    json!({"priority": 100, "httpRoute": {"match": {"prefix": "/"}, "action": {"weightedTargets": [
        {"virtualNode": "red", "weight": red}, {"virtualNode": "blue", "weight": blue},
        {"virtualNode": "green", "weight": green}]}}})
}

fn color_node(version: &str) -> Value {
    json!({"virtualNodeName": version, "spec": {
        "serviceDiscovery": {"awsCloudMap": {"namespaceName": "color.local", "serviceName": "colorteller",
            "attributes": [{"key": "version", "value": version}]}},
        "listeners": [{"portMapping": {"port": 8080, "protocol": "http"},
            "healthCheck": {"protocol": "http", "path": "/health", "intervalMillis": 5000,
                "timeoutMillis": 2000, "healthyThreshold": 2, "unhealthyThreshold": 2}}]}})
}

/// The mesh: red (two instances), blue and green behind a router with a weighted route and
/// header, path, retry and timeout routes; a client node with the service as its backend; a
/// gateway routing paint.example.com/paint to the service.
fn create_mesh(api: SocketAddr) {
    put_json(api, "/v20190125/meshes", json!({"meshName": "color"}));
    for v in ["red", "blue", "green"] {
        put_json(api, "/v20190125/meshes/color/virtualNodes", color_node(v));
    }
    put_json(
        api,
        "/v20190125/meshes/color/virtualNodes",
        json!({"virtualNodeName": "client", "spec": {
            "serviceDiscovery": {"dns": {"hostname": "client.color.local"}},
            "backends": [{"virtualService": {"virtualServiceName": VS}}]}}),
    );
    put_json(
        api,
        "/v20190125/meshes/color/virtualRouters",
        json!({"virtualRouterName": "colorteller-vr", "spec": {
            "listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}]}}),
    );
    let routes = [
        ("weighted", weighted(50, 30, 20)),
        (
            "by-header",
            json!({"priority": 1, "httpRoute": {"match": {"prefix": "/", "headers": [
                {"name": "x-color", "match": {"exact": "blue"}}]},
                "action": {"weightedTargets": [{"virtualNode": "blue", "weight": 1}]}}}),
        ),
        (
            "green-path",
            json!({"priority": 2, "httpRoute": {"match": {"path": {"exact": "/green"}},
                "action": {"weightedTargets": [{"virtualNode": "green", "weight": 1}]}}}),
        ),
        (
            "flaky",
            json!({"priority": 3, "httpRoute": {"match": {"prefix": "/flaky"},
                "action": {"weightedTargets": [{"virtualNode": "blue", "weight": 1}]},
                "retryPolicy": {"maxRetries": 2, "perRetryTimeout": {"unit": "ms", "value": 2000},
                    "httpRetryEvents": ["server-error"]}}}),
        ),
        (
            "slow",
            json!({"priority": 4, "httpRoute": {"match": {"prefix": "/slow"},
                "action": {"weightedTargets": [{"virtualNode": "blue", "weight": 1}]},
                "timeout": {"perRequest": {"unit": "ms", "value": 500}}}}),
        ),
    ];
    for (name, spec) in routes {
        put_json(
            api,
            "/v20190125/meshes/color/virtualRouter/colorteller-vr/routes",
            json!({"routeName": name, "spec": spec}),
        );
    }
    put_json(
        api,
        "/v20190125/meshes/color/virtualServices",
        json!({"virtualServiceName": VS, "spec": {"provider": {"virtualRouter": {"virtualRouterName": "colorteller-vr"}}}}),
    );
    put_json(
        api,
        "/v20190125/meshes/color/virtualGateways",
        json!({"virtualGatewayName": "gw", "spec": {
            "listeners": [{"portMapping": {"port": 8088, "protocol": "http"}}]}}),
    );
    put_json(
        api,
        "/v20190125/meshes/color/virtualGateway/gw/gatewayRoutes",
        json!({"gatewayRouteName": "paint", "spec": {"httpRoute": {
            "match": {"prefix": "/paint", "hostname": {"exact": "paint.example.com"}},
            "action": {"target": {"virtualService": {"virtualServiceName": VS}}}}}}),
    );
}

/// One request through `listener` with `host` (and more headers); the backend's version or
/// `HTTP <code>`.
fn call(listener: SocketAddr, host: &str, path: &str, extra: &[(&str, &str)]) -> String {
    let mut headers = vec![("host", host)];
    headers.extend_from_slice(extra);
    match http_call(listener, "GET", path, &headers, None, secs(5)) {
        Ok(r) if r.code == 200 => r.body.trim().to_string(),
        Ok(r) => format!("HTTP {}", r.code),
        Err(e) => format!("error {e}"),
    }
}

/// `n` requests; answers counted by color (the part of the version before `-`).
fn split(listener: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let v = call(listener, HOST, "/", &[]);
        let color = v.split('-').next().unwrap_or_default().to_string();
        *out.entry(color).or_default() += 1;
    }
    out
}

#[track_caller]
fn assert_split(got: &BTreeMap<String, usize>, want: &[(&str, f64)]) {
    let total: usize = got.values().sum();
    for (color, pct) in want {
        let share = 100.0 * *got.get(*color).unwrap_or(&0) as f64 / total as f64;
        assert!(
            (share - pct).abs() <= 5.0,
            "{color}: {share:.1}% of {total}, want {pct}% ±5; split {got:?}"
        );
    }
    let known: usize = want.iter().map(|(c, _)| got.get(*c).unwrap_or(&0)).sum();
    assert_eq!(known, total, "answers outside the weighted colors: {got:?}");
}

/// Every weight of every `weighted_clusters` in a config dump, sorted.
fn dumped_weights(dump: &Value) -> Vec<Vec<u64>> {
    fn walk(v: &Value, out: &mut Vec<Vec<u64>>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::Array(cs)) =
                    m.get("weighted_clusters").and_then(|w| w.get("clusters"))
                {
                    let mut w: Vec<u64> = cs.iter().filter_map(|c| c["weight"].as_u64()).collect();
                    w.sort();
                    out.push(w);
                }
                m.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dump, &mut out);
    out.sort();
    out
}

/// Waits until Envoy's applied config holds a weighted route with exactly `weights`.
#[track_caller]
fn wait_weights(envoy: &Envoy, weights: &[u64], why: &str) {
    let mut want = weights.to_vec();
    want.sort();
    wait_for(why, secs(20), || {
        let dump = envoy.config_dump()?;
        let all = dumped_weights(&dump);
        let routes = envoy
            .admin_get("/config_dump?resource=dynamic_route_configs")
            .unwrap_or_default();
        all.contains(&want).then_some(()).ok_or(format!(
            "{all:?}; routes: {}",
            &routes[..routes.len().min(3000)]
        ))
    });
}

fn listeners(envoy: &Envoy) -> usize {
    envoy
        .config_dump()
        .ok()
        .and_then(|d| {
            d["configs"]
                .as_array()?
                .iter()
                .find_map(|c| c["dynamic_listeners"].as_array().map(|l| l.len()))
        })
        .unwrap_or(0)
}

#[test]
fn envoys_follow_the_mesh_and_survive_the_control_plane() {
    // Kept when the test fails (logs of every process), removed at the end when it passes.
    let dir = logs_dir("shoal-envoy-");
    let root = dir.path();
    let mut sspec = ServerSpec::on_loopback(root, BLOCK, 1);
    sspec.bootstrap_expect = 1;
    let mut server = ServerProcess::spawn(&sspec);
    wait_for("the server to lead", secs(30), || {
        shoal_e2e::node_status(sspec.api)
            .filter(|s| s.leader_id == Some(1))
            .map(|_| ())
            .ok_or_else(|| "no leader yet".to_string())
    });
    create_mesh(sspec.api);

    let mut aspec = AgentSpec::on_loopback(root, BLOCK, 1);
    aspec.join = vec![sspec.gossip];
    let mut agent: Process = aspec.spawn();

    let mut backends: BTreeMap<&str, Backend> = BTreeMap::new();
    for (i, v) in ["red-1", "red-2", "blue-1", "green-1"]
        .into_iter()
        .enumerate()
    {
        let b = Backend::start(
            env!("CARGO_BIN_EXE_shoal-backend"),
            &format!("127.0.43.{}", 31 + i),
            v,
        );
        let color = v.split('-').next().unwrap();
        let body = json!({"namespace": "color.local", "service": "colorteller", "instanceId": v,
            "address": b.addr.ip().to_string(), "port": b.addr.port(), "attributes": {"version": color}});
        register_when_up(aspec.api, &body);
        backends.insert(v, b);
    }

    let xds = aspec.xds.to_string();
    let sidecar = |name: &str, ip: &str, delta: bool| {
        let mut args = sidecar_args("color", "client", &xds, ip);
        if delta {
            args.push("--delta".into());
        }
        Envoy::start(root, name, format!("{ip}:9901").parse().unwrap(), &args)
    };
    let mut sotw = sidecar("envoy-sotw", "127.0.43.201", false);
    let delta = sidecar("envoy-delta", "127.0.43.202", true);
    let gateway = Envoy::start(
        root,
        "envoy-gw",
        "127.0.43.203:9901".parse().unwrap(),
        &[
            "--mesh",
            "color",
            "--virtual-gateway",
            "gw",
            "--xds",
            &xds,
            "--listen-address",
            "127.0.43.203",
        ]
        .map(String::from),
    );
    let egress_sotw: SocketAddr = "127.0.43.201:15001".parse().unwrap();
    let egress_delta: SocketAddr = "127.0.43.202:15001".parse().unwrap();
    let gw: SocketAddr = "127.0.43.203:8088".parse().unwrap();

    // Every instance healthy and reachable through both sidecars.
    for egress in [egress_sotw, egress_delta] {
        wait_for("all four instances behind the sidecar", secs(60), || {
            let seen: std::collections::BTreeSet<String> =
                (0..60).map(|_| call(egress, HOST, "/", &[])).collect();
            (seen.len() == 4
                && seen
                    .iter()
                    .all(|v| !v.starts_with("HTTP") && !v.starts_with("error")))
            .then_some(())
            .ok_or(format!("{seen:?}"))
        });
    }

    // 1,000 requests follow the weights, on both protocols.
    for egress in [egress_sotw, egress_delta] {
        assert_split(
            &split(egress, 1000),
            &[("red", 50.0), ("blue", 30.0), ("green", 20.0)],
        );
    }
    // Change the weights through the API: Envoy applies them (admin) and the split follows.
    put_json(
        sspec.api,
        &route_path("weighted"),
        json!({"spec": weighted(20, 20, 60)}),
    );
    wait_weights(&sotw, &[20, 20, 60], "the new weights in the SotW Envoy");
    wait_weights(&delta, &[20, 20, 60], "the new weights in the delta Envoy");
    for egress in [egress_sotw, egress_delta] {
        assert_split(
            &split(egress, 1000),
            &[("red", 20.0), ("blue", 20.0), ("green", 60.0)],
        );
    }

    // Header and path routes.
    for _ in 0..20 {
        assert_eq!(
            call(egress_sotw, HOST, "/", &[("x-color", "blue")]),
            "blue-1"
        );
        assert_eq!(call(egress_delta, HOST, "/green", &[]), "green-1");
    }
    // A service that is not a backend of the node is not routable.
    let other = call(egress_sotw, "other.color.local:8080", "/", &[]);
    assert!(
        other.starts_with("HTTP 404") || other.starts_with("error"),
        "{other}"
    );

    // Retry policy: the first attempt fails with 503, the retry succeeds.
    let blue = &backends["blue-1"];
    blue.control("/control/reset");
    blue.control("/control/fail?status=503&count=1");
    assert_eq!(call(egress_sotw, HOST, "/flaky", &[]), "blue-1");
    assert_eq!(blue.stats()["injected_failures"], 1, "{}", blue.stats());

    // Per-request timeout: a slow backend is cut at 500 ms.
    blue.control("/control/slow?ms=3000");
    let t = Instant::now();
    assert_eq!(call(egress_sotw, HOST, "/slow", &[]), "HTTP 504");
    assert!(t.elapsed() < secs(2), "took {:?}", t.elapsed());
    blue.control("/control/reset");

    // The gateway routes by hostname and prefix.
    wait_for("the gateway's listener", secs(30), || {
        let v = call(gw, "paint.example.com", "/paint/x", &[]);
        (!v.starts_with("HTTP") && !v.starts_with("error"))
            .then_some(())
            .ok_or(v)
    });
    let wrong_host = call(gw, "other.example.com", "/paint/x", &[]);
    assert!(wrong_host.starts_with("HTTP 404"), "{wrong_host}");
    let wrong_path = call(gw, "paint.example.com", "/other", &[]);
    assert!(wrong_path.starts_with("HTTP 404"), "{wrong_path}");

    // A model that passes validation but that Envoy rejects on this host (a trust file that does
    // not exist here): Envoy NACKs it, keeps its last good config and keeps serving; the agent
    // counts the NACK, logs Envoy's message and does not resend it in a loop.
    let nacks = || -> u64 {
        http_request(aspec.api, "GET", "/v1/agent/xds", None, secs(2))
            .ok()
            .and_then(|r| r.json())
            .and_then(|v| v["nacks"].as_u64())
            .unwrap_or(0)
    };
    let before = nacks();
    let client = |tls: bool| {
        let mut spec = json!({"serviceDiscovery": {"dns": {"hostname": "client.color.local"}},
            "backends": [{"virtualService": {"virtualServiceName": VS}}]});
        if tls {
            spec["backendDefaults"] = json!({"clientPolicy": {"tls": {"validation": {"trust": {
                "file": {"certificateChain": "/nonexistent/shoal-ca.pem"}}}}}});
        }
        json!({ "spec": spec })
    };
    put_json(
        sspec.api,
        "/v20190125/meshes/color/virtualNodes/client",
        client(true),
    );
    let nacked = wait_for("Envoy's NACK", secs(20), || {
        let n = nacks();
        (n > before).then_some(n).ok_or(format!("{n} NACKs"))
    });
    let status = http_request(aspec.api, "GET", "/v1/agent/xds", None, secs(2))
        .unwrap()
        .json()
        .unwrap();
    let message = status["last_nack"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("/nonexistent/shoal-ca.pem"), "{status}");
    // The agent names the proxy and the file itself (checked every 10 s on its host).
    wait_for("the agent to report the missing file", secs(25), || {
        let st: Value = http_request(aspec.api, "GET", "/v1/agent/xds", None, secs(2))
            .map_err(|e| e.to_string())?
            .json()
            .ok_or("no JSON")?;
        let files = &st["missing_files"]["mesh/color/virtualNode/client"];
        (files == &json!(["/nonexistent/shoal-ca.pem"]))
            .then_some(())
            .ok_or(st.to_string())
    });
    std::thread::sleep(secs(2));
    assert!(
        nacks() <= nacked + 1,
        "NACKs keep coming: {} then {}",
        nacked,
        nacks()
    );
    let dump = sotw.admin_get("/config_dump").unwrap();
    assert!(
        !dump.contains("/nonexistent/shoal-ca.pem"),
        "Envoy applied the rejected config"
    );
    let still = split(egress_sotw, 100);
    assert!(
        still
            .keys()
            .all(|k| ["red", "blue", "green"].contains(&k.as_str())),
        "{still:?}"
    );
    put_json(
        sspec.api,
        "/v20190125/meshes/color/virtualNodes/client",
        client(false),
    );
    let acks = || -> u64 {
        http_request(aspec.api, "GET", "/v1/agent/xds", None, secs(2))
            .ok()
            .and_then(|r| r.json())
            .and_then(|v| v["acks"].as_u64())
            .unwrap_or(0)
    };
    let acked = acks();
    wait_for("the good config acknowledged again", secs(20), || {
        (acks() > acked)
            .then_some(())
            .ok_or("no new ACK".to_string())
    });

    // A dead instance leaves the endpoints (Envoy's /clusters) and gets no more requests.
    let red2 = backends.get_mut("red-2").unwrap();
    let red2_addr = red2.addr.to_string();
    red2.kill();
    wait_for("red-2 to leave Envoy's endpoints", secs(40), || {
        let c = sotw.admin_get("/clusters")?;
        (!c.contains(&red2_addr))
            .then_some(())
            .ok_or("still listed".to_string())
    });
    let after = split(egress_sotw, 300);
    assert!(
        !after
            .keys()
            .any(|k| k.starts_with("HTTP") || k.starts_with("error")),
        "{after:?}"
    );

    // The agent killed: Envoy keeps serving its last config; the agent back: it re-syncs.
    agent.kill9();
    let kept = split(egress_sotw, 200);
    assert!(
        !kept
            .keys()
            .any(|k| k.starts_with("HTTP") || k.starts_with("error")),
        "{kept:?}"
    );
    agent = aspec.spawn();
    put_json(
        sspec.api,
        &route_path("weighted"),
        json!({"spec": weighted(10, 10, 80)}),
    );
    wait_weights(&sotw, &[10, 10, 80], "re-sync after the agent came back");
    wait_weights(
        &delta,
        &[10, 10, 80],
        "delta re-sync after the agent came back",
    );

    // Every server down, then the agent restarted, then Envoy restarted: Envoy gets its whole
    // config from the agent's cache.
    server.kill9();
    agent.kill9();
    agent = aspec.spawn();
    sotw.restart(root, "envoy-sotw");
    wait_for(
        "the restarted Envoy to get listeners from the agent's cache",
        secs(30),
        || {
            (listeners(&sotw) > 0)
                .then_some(())
                .ok_or("no listeners".to_string())
        },
    );
    wait_weights(
        &sotw,
        &[10, 10, 80],
        "the cached weights in the restarted Envoy",
    );
    wait_for("traffic through the restarted Envoy", secs(30), || {
        let s = split(egress_sotw, 50);
        s.keys()
            .all(|k| ["red", "blue", "green"].contains(&k.as_str()))
            .then_some(())
            .ok_or(format!("{s:?}"))
    });
    drop(gateway);
    drop(delta);
    drop(agent);
    drop(sotw);
    let _ = std::fs::remove_dir_all(root);
}
