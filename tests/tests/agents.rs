//! Agents end to end (issue 4): a real `shoal server`, three real `shoal agent` processes and
//! real backends (`shoal-backend`), queried with the real `dig`.
//!
//! Instances registered on two agents are found through every agent's DNS; a failing health
//! check takes an instance out; a killed agent's instances leave every other agent's answers and
//! come back when it restarts (its registrations are persisted); with the server gone the agents
//! go on answering and tracking health, and an agent restarted meanwhile answers from its cache.
//! Every process listens on its own `127.0.42.x` address; every wait is bounded.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use shoal_e2e::{
    dig, http_request, put_json, run_shoal, tail, wait_for, AgentSpec, Backend, DigAnswer, Process,
    ServerProcess, ServerSpec,
};

const BLOCK: u8 = 42;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ips(a: &DigAnswer) -> Vec<String> {
    a.answers.clone()
}

/// Waits until `dig name A` at every agent of `dns` answers exactly `want` (sorted).
#[track_caller]
fn wait_answers(dns: &[SocketAddr], name: &str, want: &[&str], timeout: Duration, why: &str) {
    for d in dns {
        wait_for(&format!("{why}: {name} at {d} = {want:?}"), timeout, || {
            let a = dig(*d, name, "A", &[]);
            if a.status == "NOERROR" && ips(&a) == want {
                Ok(())
            } else {
                Err(format!("{} {:?}", a.status, a.answers))
            }
        });
    }
}

fn register(api_url: &str, service: &str, id: &str, addr: SocketAddr) {
    let out = run_shoal(
        &[
            "register",
            "--addr",
            api_url,
            "--namespace",
            "apps.local",
            "--service",
            service,
            "--instance-id",
            id,
            "--address",
            &addr.ip().to_string(),
            "--port",
            &addr.port().to_string(),
            "--attr",
            "stage=prod",
        ],
        secs(10),
    );
    assert!(
        out.status.success(),
        "shoal register: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn agents_discover_track_health_and_survive_the_servers() {
    let dir = tempfile::Builder::new()
        .prefix("shoal-agents-")
        .tempdir()
        .unwrap();
    let root = dir.path();

    // The server runs the agent role too (registration, health checks, DNS).
    let mut sspec = ServerSpec::on_loopback(root, BLOCK, 1);
    sspec.bootstrap_expect = 1;
    let server_dns = SocketAddr::new(sspec.api.ip(), shoal_e2e::DNS_PORT);
    sspec.extra = vec!["--dns".into(), server_dns.to_string()];
    let mut server = ServerProcess::spawn(&sspec);
    wait_for("the server to lead", secs(30), || {
        shoal_e2e::node_status(sspec.api)
            .filter(|s| s.leader_id == Some(1))
            .map(|_| ())
            .ok_or_else(|| "no leader yet".to_string())
    });

    // The model: web's instances come from Cloud Map apps.local/web with stage=prod, checked
    // over HTTP on /health; the virtual service web.demo.local is provided by web.
    put_json(sspec.api, "/v20190125/meshes", json!({"meshName": "demo"}));
    put_json(
        sspec.api,
        "/v20190125/meshes/demo/virtualNodes",
        json!({"virtualNodeName": "web", "spec": {
            "serviceDiscovery": {"awsCloudMap": {"namespaceName": "apps.local", "serviceName": "web",
                "attributes": [{"key": "stage", "value": "prod"}]}},
            "listeners": [{"portMapping": {"port": 8080, "protocol": "http"},
                "healthCheck": {"protocol": "http", "path": "/health", "intervalMillis": 5000,
                    "timeoutMillis": 2000, "healthyThreshold": 2, "unhealthyThreshold": 2}}]}}),
    );
    put_json(
        sspec.api,
        "/v20190125/meshes/demo/virtualServices",
        json!({"virtualServiceName": "web.demo.local", "spec": {
            "provider": {"virtualNode": {"virtualNodeName": "web"}}}}),
    );

    let b1 = Backend::start(env!("CARGO_BIN_EXE_shoal-backend"), "127.0.42.31", "v1");
    let b2 = Backend::start(env!("CARGO_BIN_EXE_shoal-backend"), "127.0.42.32", "v2");
    let specs: Vec<AgentSpec> = (1..=3)
        .map(|n| {
            let mut a = AgentSpec::on_loopback(root, BLOCK, n);
            a.join = vec![sspec.gossip];
            a
        })
        .collect();
    let mut agents: Vec<Option<Process>> = specs.iter().map(|s| Some(s.spawn())).collect();
    let dns: Vec<SocketAddr> = specs.iter().map(|s| s.dns).collect();
    for s in &specs {
        wait_for(&format!("{} to follow the model", s.name), secs(30), || {
            let r = http_request(s.api, "GET", "/v1/status", None, secs(2))
                .map_err(|e| e.to_string())?;
            let v = r.json().ok_or("not JSON")?;
            (v["server"].is_string() && v["revision"].as_u64() >= Some(3))
                .then_some(())
                .ok_or_else(|| v.to_string())
        });
    }

    register(&specs[0].url(), "web", "i1", b1.addr);
    register(&specs[1].url(), "web", "i2", b2.addr);
    let ops: SocketAddr = "127.0.42.40:9000".parse().unwrap();
    register(&format!("http://{}", sspec.api), "ops", "o1", ops);
    let both = ["127.0.42.31", "127.0.42.32"];
    wait_answers(&dns, "web.apps.local", &both, secs(30), "registration");
    wait_answers(
        &[server_dns],
        "web.apps.local",
        &both,
        secs(30),
        "the server's DNS",
    );
    wait_answers(&dns, "web.demo.local", &both, secs(5), "virtual service");
    wait_answers(
        &dns,
        "ops.apps.local",
        &["127.0.42.40"],
        secs(30),
        "an instance on the server",
    );

    // SRV carries the ports; unknown names in a zone are NXDOMAIN with the SOA; names
    // outside the mesh are REFUSED without recursors.
    let srv = dig(dns[2], "web.apps.local", "SRV", &[]);
    let ports: Vec<String> = srv
        .answers
        .iter()
        .map(|a| a.split_whitespace().nth(2).unwrap_or_default().to_string())
        .collect();
    let mut want_ports = vec![b1.addr.port().to_string(), b2.addr.port().to_string()];
    want_ports.sort();
    let mut got_ports = ports.clone();
    got_ports.sort();
    assert_eq!(got_ports, want_ports, "{}", srv.raw);
    let nx = dig(dns[1], "nope.apps.local", "A", &[]);
    assert_eq!(nx.status, "NXDOMAIN", "{}", nx.raw);
    assert_eq!(nx.authority, ["SOA"], "{}", nx.raw);
    let refused = dig(dns[0], "example.com", "A", &[]);
    assert_eq!(refused.status, "REFUSED", "{}", refused.raw);

    // A large answer: TC over plain 512-byte UDP, whole over TCP (dig's own fallback).
    for i in 0..40 {
        put_json(
            specs[0].api,
            "/v1/agent/instances",
            json!({"namespace": "apps.local", "service": "big", "instanceId": format!("b{i}"),
                "address": format!("10.9.0.{}", i + 1), "port": 80}),
        );
    }
    let truncated = wait_for("40 instances of big.apps.local", secs(20), || {
        let a = dig(dns[2], "big.apps.local", "A", &["+noedns", "+ignore"]);
        a.flags
            .contains(&"tc".to_string())
            .then_some(a.clone())
            .ok_or(a.raw)
    });
    assert!(truncated.answers.len() < 40, "{}", truncated.raw);
    wait_for("the TCP retry to carry all 40", secs(20), || {
        let a = dig(dns[2], "big.apps.local", "A", &["+noedns"]);
        (a.answers.len() == 40).then_some(()).ok_or(a.raw)
    });

    // A failing health check takes i1 out everywhere, then it comes back.
    b1.control("/control/health?ok=false");
    wait_answers(
        &dns,
        "web.apps.local",
        &["127.0.42.32"],
        secs(40),
        "b1 unhealthy",
    );
    b1.control("/control/health?ok=true");
    wait_answers(&dns, "web.apps.local", &both, secs(40), "b1 healthy again");

    // kill -9 of agent 2: its instance leaves the other agents' answers; a restart brings it
    // back from the persisted registration.
    agents[1].take().unwrap().kill9();
    let others = [dns[0], dns[2]];
    wait_answers(
        &others,
        "web.apps.local",
        &["127.0.42.31"],
        secs(30),
        "agent 2 dead",
    );
    agents[1] = Some(specs[1].spawn());
    wait_answers(&dns, "web.apps.local", &both, secs(40), "agent 2 back");

    // Every server gone: agents go on answering and tracking health.
    server.kill9();
    std::thread::sleep(secs(1));
    wait_answers(&dns, "web.demo.local", &both, secs(5), "servers down");
    wait_for("the server's instance to leave with it", secs(30), || {
        let a = dig(dns[0], "ops.apps.local", "A", &[]);
        // The name stays in its zone (the namespace is still known): NODATA or NXDOMAIN.
        a.answers.is_empty().then_some(()).ok_or(a.raw)
    });
    b2.control("/control/health?ok=false");
    wait_answers(
        &dns,
        "web.apps.local",
        &["127.0.42.31"],
        secs(40),
        "b2 unhealthy, no server",
    );

    // An agent restarted while the servers are down answers from its cache.
    agents[2].take().unwrap().kill9();
    agents[2] = Some(specs[2].spawn());
    wait_answers(
        &[dns[2]],
        "web.demo.local",
        &["127.0.42.31"],
        secs(30),
        "agent 3 from cache",
    );
    let st = http_request(specs[2].api, "GET", "/v1/status", None, secs(2)).unwrap();
    let st = st.json().unwrap();
    assert_eq!(st["from_cache"], true, "{st}");
    assert!(st["server"].is_null(), "{st}");
    b2.control("/control/health?ok=true");
    wait_answers(
        &dns,
        "web.apps.local",
        &both,
        secs(40),
        "b2 healthy, no server",
    );

    // Deregistration goes through the same path.
    let out = run_shoal(
        &[
            "deregister",
            "--addr",
            &specs[0].url(),
            "--namespace",
            "apps.local",
            "--service",
            "web",
            "--instance-id",
            "i1",
        ],
        secs(10),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_answers(
        &dns,
        "web.apps.local",
        &["127.0.42.32"],
        secs(30),
        "i1 deregistered",
    );

    // A registration the agent cannot accept gets the API's error shape.
    let bad = http_request(
        specs[0].api,
        "PUT",
        "/v1/agent/instances",
        Some(
            &json!({"namespace": "apps.local", "service": "web", "instanceId": "x/y",
            "address": "10.0.0.1", "port": 80})
            .to_string(),
        ),
        secs(2),
    )
    .unwrap();
    assert_eq!(bad.code, 400, "{}", bad.body);
    assert_eq!(bad.error_type.as_deref(), Some("BadRequestException"));

    for (s, a) in specs.iter().zip(&agents) {
        let log = a.as_ref().map(|p| p.log()).unwrap_or_default();
        assert!(
            !log.contains("panicked"),
            "{} panicked:\n{}",
            s.name,
            tail(&log, 40)
        );
    }
    drop(agents);
    drop(server);
}
