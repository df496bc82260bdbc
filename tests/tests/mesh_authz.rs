//! Automatic mTLS and authorization from the model (issue 14), with real Envoy 1.40 sidecars
//! and curl as a client that holds a mesh certificate of its own.
//!
//! Mesh m carries the tag `shoal:mtls` = `STRICT` and no TLS in any spec: `front` lists
//! back.m.local as a backend, `tool` does too (a client with no Envoy: curl with its
//! certificate), `stranger` lists nothing. back's Envoy takes mutual TLS only and admits front
//! and tool; certificates live 30 s and are renewed under steady traffic without one failed
//! request; deleting `tool` drops it from the rules at once; switching the tag to `PERMISSIVE`
//! admits the stranger and plain text while Envoy counts what it would have denied. Every
//! process listens on its own `127.0.45.x` address; every wait is bounded.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shoal_e2e::{
    http_call, http_request, logs_dir, put_json, register_when_up, sidecar_args, wait_for,
    AgentSpec, Backend, Envoy, Process, ServerProcess, ServerSpec,
};

const BLOCK: u8 = 45;
const FRONT_ID: &str = "spiffe://shoal/mesh/m/virtualNode/front";
const HOST: &str = "back.m.local:8080";
const BACK_IP: &str = "127.0.45.201";
const TTL: u64 = 30;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn create_mesh(api: SocketAddr) {
    put_json(
        api,
        "/v20190125/meshes",
        json!({"meshName": "m", "tags": [{"key": "shoal:mtls", "value": "STRICT"}]}),
    );
    let listener = json!([{"portMapping": {"port": 8080, "protocol": "http"}}]);
    // back's agent probes it through its Envoy, which takes mutual TLS only: the probe
    // presents back's own certificate.
    let checked = json!([{"portMapping": {"port": 8080, "protocol": "http"},
        "healthCheck": {"protocol": "http", "path": "/echo", "intervalMillis": 5000,
            "timeoutMillis": 2000, "healthyThreshold": 2, "unhealthyThreshold": 2}}]);
    put_json(
        api,
        "/v20190125/meshes/m/virtualNodes",
        json!({"virtualNodeName": "back", "spec": {"listeners": checked,
            "serviceDiscovery": {"awsCloudMap": {"namespaceName": "m.local", "serviceName": "back"}}}}),
    );
    put_json(
        api,
        "/v20190125/meshes/m/virtualServices",
        json!({"virtualServiceName": "back.m.local", "spec": {"provider": {"virtualNode": {"virtualNodeName": "back"}}}}),
    );
    for (name, backends) in [
        (
            "front",
            json!([{"virtualService": {"virtualServiceName": "back.m.local"}}]),
        ),
        (
            "tool",
            json!([{"virtualService": {"virtualServiceName": "back.m.local"}}]),
        ),
        ("stranger", json!([])),
    ] {
        put_json(
            api,
            "/v20190125/meshes/m/virtualNodes",
            json!({"virtualNodeName": name, "spec": {"listeners": listener, "backends": backends,
                "serviceDiscovery": {"dns": {"hostname": format!("{name}.m.local")}}}}),
        );
    }
}

/// `GET /echo` through front's egress: the status and body.
fn call(egress: SocketAddr) -> Result<(u16, String), String> {
    http_call(egress, "GET", "/echo", &[("host", HOST)], None, secs(5))
        .map(|r| (r.code, r.body))
        .map_err(|e| e.to_string())
}

/// The sum of the admin stats whose names contain every one of `parts`.
fn stat(envoy: &Envoy, parts: &[&str]) -> u64 {
    let text = envoy.admin_get("/stats").unwrap_or_default();
    text.lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| {
            l.rsplit_once(": ")
                .and_then(|(_, v)| v.trim().parse::<u64>().ok())
        })
        .sum()
}

/// A mesh certificate for virtual node `node`, for a key made here (as an agent would): the
/// paths of the chain and key files; `None` when the CA refuses.
fn certificate(api: SocketAddr, dir: &Path, node: &str) -> Result<(String, String), String> {
    let (csr, key) = shoal_pki::new_csr("curl").unwrap();
    let body = json!({"Mesh": "m", "VirtualNode": node, "Csr": csr, "ValiditySeconds": 3600});
    let r = http_request(
        api,
        "POST",
        "/v1/ca/mesh/sign",
        Some(&body.to_string()),
        secs(5),
    )
    .map_err(|e| e.to_string())?;
    if r.code != 200 {
        return Err(format!("HTTP {}: {}", r.code, r.body));
    }
    let v: Value = r.json().ok_or("no JSON")?;
    let chain = dir.join(format!("{node}.crt"));
    let keyf = dir.join(format!("{node}.key"));
    std::fs::write(&chain, v["CertificateChain"].as_str().unwrap()).unwrap();
    std::fs::write(&keyf, key).unwrap();
    Ok((chain.display().to_string(), keyf.display().to_string()))
}

/// curl to back's ingress listener: over mutual TLS with `cert` (checking back's certificate
/// against `bundle` and its DNS name), or in plain text. The HTTP status, or curl's error.
fn curl(bundle: &str, cert: Option<&(String, String)>) -> Result<u16, String> {
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "5",
    ]);
    cmd.args(["-H", &format!("host: {HOST}")]);
    match cert {
        Some((chain, key)) => {
            cmd.args(["--cacert", bundle, "--cert", chain, "--key", key]);
            cmd.args(["--resolve", &format!("back.m.local:15000:{BACK_IP}")]);
            cmd.arg("https://back.m.local:15000/echo");
        }
        None => {
            cmd.arg(format!("http://{BACK_IP}:15000/echo"));
        }
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("curl is needed (./scripts/install-tools): {e}"));
    let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match (out.status.success(), code.parse::<u16>()) {
        (true, Ok(c)) => Ok(c),
        _ => Err(format!(
            "curl {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

fn agent_status(api: SocketAddr) -> Value {
    http_request(api, "GET", "/v1/agent/status", None, secs(2))
        .unwrap()
        .json()
        .unwrap()
}

/// The serial numbers of the certificates an Envoy holds.
fn serials(envoy: &Envoy) -> Vec<String> {
    let v: Value = serde_json::from_str(&envoy.admin_get("/certs").unwrap()).unwrap();
    let mut out = Vec::new();
    for c in v["certificates"].as_array().into_iter().flatten() {
        for d in c["cert_chain"].as_array().into_iter().flatten() {
            if let Some(s) = d["serial_number"].as_str() {
                out.push(s.to_string());
            }
        }
    }
    out
}

#[test]
fn strict_admits_the_models_callers_and_permissive_admits_everyone() {
    let dir = logs_dir("shoal-mesh-authz-");
    let root = dir.path();
    let mut sspec = ServerSpec::on_loopback(root, BLOCK, 1);
    sspec.bootstrap_expect = 1;
    let server = ServerProcess::spawn(&sspec);
    let ca: Value = wait_for("the mesh CA", secs(30), || {
        let r = http_request(sspec.api, "GET", "/v1/ca/mesh", None, secs(2))
            .map_err(|e| e.to_string())?;
        match (r.code, r.json()) {
            (200, Some(v)) => Ok(v),
            _ => Err(r.body),
        }
    });
    let bundle = root.join("bundle.pem");
    std::fs::write(&bundle, ca["TrustBundle"].as_str().unwrap()).unwrap();
    let bundle = bundle.display().to_string();
    create_mesh(sspec.api);

    let mut aspec = AgentSpec::on_loopback(root, BLOCK, 1);
    aspec.join = vec![sspec.gossip];
    aspec.extra = vec!["--workload-cert-ttl".into(), TTL.to_string()];
    let mut agent: Process = aspec.spawn();
    let app = Backend::start_at(
        env!("CARGO_BIN_EXE_shoal-backend"),
        "127.0.45.31:8080",
        "back-1",
    );
    let body = json!({"namespace": "m.local", "service": "back", "instanceId": "back-1",
        "address": BACK_IP, "port": 15000});
    register_when_up(aspec.api, &body);
    wait_for("the agent to know the trust domain", secs(30), || {
        let st = agent_status(aspec.api);
        (st["workload_certificates"]["trust_domain"] == "shoal")
            .then_some(())
            .ok_or(st.to_string())
    });
    let xds = aspec.xds.to_string();
    let sidecar = |name: &str, node: &str, ip: &str, app: Option<&str>| {
        let mut args = sidecar_args("m", node, &xds, ip);
        if let Some(a) = app {
            args.extend(["--app-address".into(), a.into()]);
        }
        Envoy::start(root, name, format!("{ip}:9901").parse().unwrap(), &args)
    };
    let back = sidecar("envoy-back", "back", BACK_IP, Some("127.0.45.31"));
    let front = sidecar("envoy-front", "front", "127.0.45.202", None);
    let front_egress: SocketAddr = "127.0.45.202:15001".parse().unwrap();

    // No spec says TLS; the tag alone puts front → back on mutual TLS, and back's app is
    // told who called.
    let body = wait_for("front to reach back", secs(60), || {
        match call(front_egress) {
            Ok((200, body)) => Ok(body),
            other => Err(format!("{other:?}")),
        }
    });
    assert!(
        body.contains(&format!("URI={FRONT_ID}")),
        "the app sees front's SPIFFE id in x-forwarded-client-cert: {body}"
    );
    assert!(stat(&back, &["listener.", "ssl.handshake"]) > 0);
    assert!(stat(&front, &["cluster.", "ssl.handshake"]) > 0);
    assert!(stat(&back, &["ingress_authz.rbac.allowed"]) > 0);
    // back's health check passes over mutual TLS, as back itself (it failed while back's
    // Envoy was not up yet: two passes 5 s apart turn it healthy).
    let local = wait_for("back's health check to pass", secs(30), || {
        let local: Value = http_request(aspec.api, "GET", "/v1/agent/instances", None, secs(2))
            .map_err(|e| e.to_string())?
            .json()
            .ok_or("no JSON")?;
        (local["instances"][0]["healthy"] == true)
            .then_some(local.clone())
            .ok_or(local.to_string())
    });
    assert_eq!(
        local["instances"][0]["check_target"],
        format!("{BACK_IP}:15000"),
        "{local}"
    );

    // Certificates of 30 s, renewed at half-life, under steady traffic: not one request
    // fails, and each Envoy gets new certificates at least twice.
    let issued = |st: &Value| st["workload_certificates"]["issued"].as_u64().unwrap();
    let issued_before = issued(&agent_status(aspec.api));
    let serials_before = serials(&back);
    let (mut ok, mut failed) = (0u64, Vec::new());
    let until = Instant::now() + secs(TTL + 10);
    while Instant::now() < until {
        match call(front_egress) {
            Ok((200, _)) => ok += 1,
            other => failed.push(format!("{other:?}")),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during rotation: {:?}",
        failed.len(),
        ok + failed.len() as u64,
        &failed[..failed.len().min(5)]
    );
    let renewed = issued(&agent_status(aspec.api)) - issued_before;
    assert!(
        renewed >= 4,
        "{renewed} certificates issued in {} s",
        TTL + 10
    );
    let serials_after = serials(&back);
    assert!(
        !serials_after.is_empty() && serials_after.iter().all(|s| !serials_before.contains(s)),
        "back's own certificate was replaced: {serials_before:?} → {serials_after:?}"
    );

    // tool is declared as a caller: admitted. stranger holds a valid certificate but calls
    // nothing: refused by RBAC, and counted. Plain text gets nowhere under STRICT.
    let tool = certificate(sspec.api, root, "tool").unwrap();
    let stranger = certificate(sspec.api, root, "stranger").unwrap();
    assert_eq!(curl(&bundle, Some(&tool)), Ok(200));
    let denied = stat(&back, &["ingress_authz.rbac.denied"]);
    assert!(curl(&bundle, Some(&stranger)).is_err());
    assert!(stat(&back, &["ingress_authz.rbac.denied"]) > denied);
    assert!(curl(&bundle, None).is_err(), "plain text under STRICT");

    // Deleting tool revokes it: the rules drop it as soon as the agent sees the change, and
    // the CA signs nothing more for it.
    let deleted = http_request(
        sspec.api,
        "DELETE",
        "/v20190125/meshes/m/virtualNodes/tool",
        None,
        secs(5),
    )
    .unwrap();
    assert_eq!(deleted.code, 200, "{}", deleted.body);
    let t0 = Instant::now();
    wait_for("tool to be refused", secs(10), || {
        match curl(&bundle, Some(&tool)) {
            Err(_) => Ok(()),
            Ok(c) => Err(format!("HTTP {c}")),
        }
    });
    eprintln!("tool refused {:?} after its deletion", t0.elapsed());
    assert!(certificate(sspec.api, root, "tool")
        .unwrap_err()
        .starts_with("HTTP 404"));

    // PERMISSIVE: the stranger and plain text are admitted, and Envoy counts what STRICT
    // would have refused.
    let mesh: Value = http_request(sspec.api, "GET", "/v20190125/meshes/m", None, secs(5))
        .unwrap()
        .json()
        .unwrap();
    let arn = mesh["metadata"]["arn"].as_str().expect("the mesh's ARN");
    let tagged = http_request(
        sspec.api,
        "PUT",
        &format!("/v20190125/tag?resourceArn={arn}"),
        Some(r#"{"tags": [{"key": "shoal:mtls", "value": "PERMISSIVE"}]}"#),
        secs(5),
    )
    .unwrap();
    assert_eq!(tagged.code, 200, "{}", tagged.body);
    let shadow = stat(&back, &["ingress_authz.rbac.shadow_denied"]);
    wait_for("the stranger to be admitted", secs(10), || {
        match curl(&bundle, Some(&stranger)) {
            Ok(200) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    assert!(stat(&back, &["ingress_authz.rbac.shadow_denied"]) > shadow);
    assert_eq!(curl(&bundle, None), Ok(200), "plain text under PERMISSIVE");
    assert_eq!(call(front_egress).map(|r| r.0), Ok(200));

    drop((front, back, app, server));
    agent.terminate(secs(10));
    let _ = std::fs::remove_dir_all(root);
}
