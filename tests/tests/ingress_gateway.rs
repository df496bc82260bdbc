//! The App Mesh ingress-gateway walkthrough (howto-ingress-gateway), applied unchanged with
//! the AWS CLI up to its teardown, serves traffic: its virtual gateway and its four
//! colorteller nodes use ACM certificates (`acm { certificateArn }` listeners, a gateway that
//! trusts an ACM Private CA), which shoal serves from its mesh CA. A TLS client that trusts the
//! mesh CA's bundle calls the gateway; the gateway calls the tellers over TLS; the tellers'
//! health checks reach them over TLS. Real Envoy 1.40 for all five proxies; every process on
//! its own `127.0.46.x` address; every wait bounded.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use shoal_e2e::{
    http_request, jq_render, logs_dir, register_when_up, sidecar_args, wait_for, workspace_root,
    AgentSpec, Aws, Backend, Envoy, Process, ServerProcess, ServerSpec,
};

const BLOCK: u8 = 46;
const GATEWAY: &str = "127.0.46.210";
const TELLERS: [&str; 4] = ["white", "blue", "black", "red"];

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Applies every create and update of the walkthrough (its calls before the teardown) with
/// the AWS CLI, bodies rendered by jq from the walkthrough's own files.
fn apply_walkthrough(api: SocketAddr, dir: &Path) -> String {
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(workspace_root().join("tests/fixtures/walkthroughs.json"))
            .unwrap(),
    )
    .unwrap();
    let w = manifest["walkthroughs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "howto-ingress-gateway")
        .expect("the walkthrough in the manifest");
    let mesh = w["mesh"].as_str().unwrap().to_string();
    let files = workspace_root().join("tests/fixtures/appmesh-examples/howto-ingress-gateway");
    let aws = Aws::new(&format!("http://{api}"));
    for (i, call) in w["calls"].as_array().unwrap().iter().enumerate() {
        let op = call["op"].as_str().unwrap();
        if op.starts_with("delete-") {
            break;
        }
        let mut args = vec![op.to_string(), "--mesh-name".into(), mesh.clone()];
        for (k, v) in call.as_object().unwrap() {
            if ["op", "file", "input", "vars", "_comment"].contains(&k.as_str()) {
                continue;
            }
            args.push(format!("--{k}"));
            args.push(v.as_str().unwrap().to_string());
        }
        if let Some(file) = call["file"].as_str() {
            let mut vars: Vec<(String, String)> = Vec::new();
            for src in [&w["vars"], &call["vars"]] {
                for (k, v) in src.as_object().into_iter().flatten() {
                    vars.push((k.clone(), v.as_str().unwrap().to_string()));
                }
            }
            let body = jq_render(&files.join(file), &vars);
            let path = dir.join(format!("{i:02}-{file}"));
            std::fs::write(&path, body.to_string()).unwrap();
            args.push("--cli-input-json".into());
            args.push(format!("file://{}", path.display()));
        }
        let out = aws.appmesh(&args);
        assert!(
            out.success(),
            "aws appmesh {}: {}",
            args.join(" "),
            out.stderr
        );
    }
    mesh
}

/// `GET path` to the gateway over TLS, the gateway's certificate checked against `bundle`
/// (its chain; a gateway's certificate names no DNS name of its own): the body, or why not.
fn call_gateway(bundle: &str, path: &str) -> Result<String, String> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n");
    let mut child = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-verify_return_error",
            "-CAfile",
            bundle,
        ])
        .args(["-connect", &format!("{GATEWAY}:9080")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("openssl is needed (./scripts/install-tools): {e}"));
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(request.as_bytes());
        // Keep stdin open until the answer is in: s_client quits at its end.
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = wait_output(child, secs(5))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.trim().to_string()),
        _ => Err(format!(
            "{text} {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// The child's output, killing it after `limit`.
fn wait_output(
    mut child: std::process::Child,
    limit: Duration,
) -> Result<std::process::Output, String> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            return child.wait_with_output().map_err(|e| e.to_string());
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            return Err("openssl did not finish".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_ingress_gateway_walkthrough_serves_traffic_with_acm_tls() {
    let dir = logs_dir("shoal-ingress-gateway-");
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
    let mesh = apply_walkthrough(sspec.api, root);

    let mut aspec = AgentSpec::on_loopback(root, BLOCK, 1);
    aspec.join = vec![sspec.gossip];
    let mut agent: Process = aspec.spawn();
    wait_for("the agent to know the trust domain", secs(30), || {
        let st: Value = http_request(aspec.api, "GET", "/v1/agent/status", None, secs(2))
            .map_err(|e| e.to_string())?
            .json()
            .ok_or("no JSON")?;
        (st["workload_certificates"]["trust_domain"] == "shoal")
            .then_some(())
            .ok_or(st.to_string())
    });
    let xds = aspec.xds.to_string();
    let mut apps = Vec::new();
    let mut envoys = Vec::new();
    for (i, color) in TELLERS.iter().enumerate() {
        let app_ip = format!("127.0.46.{}", 31 + i);
        let envoy_ip = format!("127.0.46.{}", 201 + i);
        apps.push(Backend::start_at(
            env!("CARGO_BIN_EXE_shoal-backend"),
            &format!("{app_ip}:9080"),
            color,
        ));
        // The walkthrough's nodes are found by DNS name, colorteller-<color>.default.svc…
        register_when_up(
            aspec.api,
            &json!({"namespace": "default.svc.cluster.local", "service": format!("colorteller-{color}"),
                "instanceId": format!("{color}-1"), "address": envoy_ip, "port": 15000}),
        );
        let mut args = sidecar_args(&mesh, &format!("colorteller-{color}-vn"), &xds, &envoy_ip);
        args.extend(["--app-address".into(), app_ip]);
        envoys.push(Envoy::start(
            root,
            &format!("envoy-{color}"),
            format!("{envoy_ip}:9901").parse().unwrap(),
            &args,
        ));
    }
    let gateway = Envoy::start(
        root,
        "envoy-gateway",
        format!("{GATEWAY}:9901").parse().unwrap(),
        &[
            "--mesh",
            &mesh,
            "--virtual-gateway",
            "colorgateway-vg",
            "--xds",
            &xds,
            "--listen-address",
            GATEWAY,
        ]
        .map(String::from),
    );

    // /color1 goes to white and blue, /color2 to black and red, each answer over TLS twice:
    // client → gateway (the gateway's ACM certificate, from the mesh CA) and gateway →
    // teller (the teller's ACM certificate, checked against the ACM Private CA's mapping).
    for (path, want) in [
        ("/color1/tell", ["white", "blue"]),
        ("/color2/tell", ["black", "red"]),
    ] {
        let seen = wait_for(&format!("{path} to reach both tellers"), secs(90), || {
            let seen: BTreeSet<String> = (0..12)
                .map(|_| call_gateway(&bundle, path).unwrap_or_else(|e| format!("error: {e}")))
                .collect();
            // Every answer of a round from one of the two, and both answering.
            (seen.len() == 2 && want.iter().all(|w| seen.contains(*w)))
                .then_some(seen.clone())
                .ok_or(format!("{seen:?}"))
        });
        assert!(
            seen.iter().all(|s| want.contains(&s.as_str())),
            "{path}: {seen:?}"
        );
    }
    let stat = |envoy: &Envoy, parts: &[&str]| -> u64 {
        envoy
            .admin_get("/stats")
            .unwrap_or_default()
            .lines()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .filter_map(|l| {
                l.rsplit_once(": ")
                    .and_then(|(_, v)| v.trim().parse::<u64>().ok())
            })
            .sum()
    };
    assert!(stat(&gateway, &["listener.", "ssl.handshake"]) > 0);
    assert!(stat(&gateway, &["cluster.", "ssl.handshake"]) > 0);
    for e in &envoys {
        assert!(stat(e, &["listener.", "ssl.handshake"]) > 0);
    }
    // The tellers' health checks (HTTP /ping in the walkthrough) reach them over TLS: all
    // four turn healthy (they failed while the Envoys were starting).
    wait_for("the four tellers healthy", secs(40), || {
        let local: Value = http_request(aspec.api, "GET", "/v1/agent/instances", None, secs(2))
            .map_err(|e| e.to_string())?
            .json()
            .ok_or("no JSON")?;
        let instances = local["instances"].as_array().cloned().unwrap_or_default();
        (instances.len() == 4
            && instances
                .iter()
                .all(|i| i["healthy"] == true && !i["check_target"].is_null()))
        .then_some(())
        .ok_or(local.to_string())
    });

    drop((gateway, envoys, apps, server));
    agent.terminate(secs(10));
    let _ = std::fs::remove_dir_all(root);
}
