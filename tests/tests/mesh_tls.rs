//! Workload identity (issue 14): the mesh CA made by the first leader signs each proxy's
//! certificate for a key its agent made, the agent serves it to its Envoy over ADS, and real
//! Envoy 1.40 sidecars carry traffic over mutual TLS with App Mesh `sds` specs naming SPIFFE
//! ids. A client whose certificate the listener's subject alternative names do not admit is
//! refused; with every server down, a restarted Envoy gets its certificate from its agent.
//! Every process listens on its own `127.0.44.x` address; every wait is bounded.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use shoal_e2e::{
    http_call, http_request, logs_dir, put_json, register_when_up, sidecar_args, wait_for,
    AgentSpec, Backend, Envoy, Process, ServerProcess, ServerSpec,
};

const BLOCK: u8 = 44;
const BACK_ID: &str = "spiffe://shoal/mesh/m/virtualNode/back";
const FRONT_ID: &str = "spiffe://shoal/mesh/m/virtualNode/front";
const STRANGER_ID: &str = "spiffe://shoal/mesh/m/virtualNode/stranger";
const BUNDLE: &str = "spiffe://shoal";
const HOST: &str = "back.m.local:8080";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A client node calling back.m.local with its own certificate (the SPIFFE id `id`).
fn client(name: &str, id: &str) -> Value {
    json!({"virtualNodeName": name, "spec": {
        "serviceDiscovery": {"dns": {"hostname": format!("{name}.m.local")}},
        "backends": [{"virtualService": {"virtualServiceName": "back.m.local"}}],
        "backendDefaults": {"clientPolicy": {"tls": {
            "certificate": {"sds": {"secretName": id}},
            "validation": {"trust": {"sds": {"secretName": BUNDLE}},
                "subjectAlternativeNames": {"match": {"exact": [BACK_ID]}}}}}}}})
}

/// Mesh m: `back` takes mutual TLS only from `front`'s identity; `front` and `stranger` both
/// call it with certificates of their own.
fn create_mesh(api: SocketAddr) {
    put_json(api, "/v20190125/meshes", json!({"meshName": "m"}));
    put_json(
        api,
        "/v20190125/meshes/m/virtualNodes",
        json!({"virtualNodeName": "back", "spec": {
            "serviceDiscovery": {"awsCloudMap": {"namespaceName": "m.local", "serviceName": "back"}},
            "listeners": [{"portMapping": {"port": 8080, "protocol": "http"},
                "tls": {"mode": "STRICT", "certificate": {"sds": {"secretName": BACK_ID}},
                    "validation": {"trust": {"sds": {"secretName": BUNDLE}},
                        "subjectAlternativeNames": {"match": {"exact": [FRONT_ID]}}}}}]}}),
    );
    put_json(
        api,
        "/v20190125/meshes/m/virtualServices",
        json!({"virtualServiceName": "back.m.local", "spec": {"provider": {"virtualNode": {"virtualNodeName": "back"}}}}),
    );
    put_json(
        api,
        "/v20190125/meshes/m/virtualNodes",
        client("front", FRONT_ID),
    );
    put_json(
        api,
        "/v20190125/meshes/m/virtualNodes",
        client("stranger", STRANGER_ID),
    );
}

/// `GET /echo` through `egress`: the status and body.
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

#[test]
fn envoys_talk_mutual_tls_with_certificates_from_the_mesh_ca() {
    // Kept when the test fails (logs of every process), removed at the end when it passes.
    let dir = logs_dir("shoal-mesh-tls-");
    let root = dir.path();
    let mut sspec = ServerSpec::on_loopback(root, BLOCK, 1);
    sspec.bootstrap_expect = 1;
    let mut server = ServerProcess::spawn(&sspec);

    // The first leader makes the mesh CA.
    let ca: Value = wait_for("the mesh CA", secs(30), || {
        let r = http_request(sspec.api, "GET", "/v1/ca/mesh", None, secs(2))
            .map_err(|e| e.to_string())?;
        match (r.code, r.json()) {
            (200, Some(v)) => Ok(v),
            _ => Err(r.body),
        }
    });
    assert_eq!(ca["TrustDomain"], "shoal");
    let bundle = ca["TrustBundle"].as_str().unwrap().to_string();
    assert!(bundle.starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(!ca.to_string().contains("PRIVATE KEY"), "no key is shown");
    create_mesh(sspec.api);

    // A certificate for a node that does not exist is refused; one for a node that does names
    // it and what its callers dial, whatever the CSR asks for.
    let (csr, _key) = shoal_pki::new_csr("admin.server.shoal").unwrap();
    let ask = |node: &str| {
        let body = json!({"Mesh": "m", "VirtualNode": node, "Csr": csr, "ValiditySeconds": 60});
        http_request(
            sspec.api,
            "POST",
            "/v1/ca/mesh/sign",
            Some(&body.to_string()),
            secs(5),
        )
        .unwrap()
    };
    let missing = ask("nobody");
    assert_eq!(missing.code, 404, "{}", missing.body);
    let metrics = http_request(sspec.api, "GET", "/metrics", None, secs(5))
        .unwrap()
        .body;
    assert!(
        metrics.contains("shoal_mesh_ca_workload_certificates_total{outcome=\"refused\"} 1"),
        "{metrics}"
    );
    let signed = ask("back");
    assert_eq!(signed.code, 200, "{}", signed.body);
    let signed: Value = signed.json().unwrap();
    let chain = signed["CertificateChain"].as_str().unwrap();
    let id = shoal_pki::mesh::verify_workload(&bundle, chain, now()).unwrap();
    assert_eq!(id.uri(), BACK_ID);
    assert_eq!(
        shoal_pki::role_of(&shoal_pki::first_cert_der(chain).unwrap()),
        None
    );

    let mut aspec = AgentSpec::on_loopback(root, BLOCK, 1);
    aspec.join = vec![sspec.gossip];
    let mut agent: Process = aspec.spawn();
    let app = Backend::start_at(
        env!("CARGO_BIN_EXE_shoal-backend"),
        "127.0.44.31:8080",
        "back-1",
    );
    // Without iptables, callers reach back through its Envoy's ingress listener, which
    // terminates mutual TLS and forwards to the app at 127.0.44.31:8080.
    let body = json!({"namespace": "m.local", "service": "back", "instanceId": "back-1",
        "address": "127.0.44.201", "port": 15000});
    register_when_up(aspec.api, &body);

    // The agent learns the trust domain before any proxy connects (it keeps it across
    // restarts), so the proxies' first configuration takes its secrets from the agent.
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
    let sidecar = |name: &str, node: &str, ip: &str, app: Option<&str>| {
        let mut args = sidecar_args("m", node, &xds, ip);
        if let Some(a) = app {
            args.extend(["--app-address".into(), a.into()]);
        }
        Envoy::start(root, name, format!("{ip}:9901").parse().unwrap(), &args)
    };
    let mut back = sidecar("envoy-back", "back", "127.0.44.201", Some("127.0.44.31"));
    let front = sidecar("envoy-front", "front", "127.0.44.202", None);
    let stranger = sidecar("envoy-stranger", "stranger", "127.0.44.203", None);
    let front_egress: SocketAddr = "127.0.44.202:15001".parse().unwrap();
    let stranger_egress: SocketAddr = "127.0.44.203:15001".parse().unwrap();

    // front → back over mutual TLS: the answer comes from the app behind back's Envoy.
    wait_for(
        "front to reach back over mutual TLS",
        secs(60),
        || match call(front_egress) {
            Ok((200, body)) => Ok(body),
            other => Err(format!("{other:?}")),
        },
    );
    for _ in 0..20 {
        let (code, body) = call(front_egress).unwrap();
        assert_eq!(code, 200, "{body}");
    }
    let handshakes = stat(&back, &["listener.", "ssl.handshake"]);
    assert!(handshakes > 0, "back's listener made no TLS handshake");
    assert!(
        stat(&front, &["cluster.", "ssl.handshake"]) > 0,
        "front's cluster made no TLS handshake"
    );
    // back's Envoy sees front's SPIFFE id and nothing else: the agent served each its own.
    let dump = back.admin_get("/certs").unwrap();
    assert!(
        dump.contains(BACK_ID),
        "back's Envoy holds its certificate: {dump}"
    );
    assert!(
        !dump.contains(FRONT_ID),
        "back's Envoy holds no other certificate"
    );

    // The agent's API shows a proxy's configuration, certificates included, never a key.
    let shown = http_request(
        aspec.api,
        "GET",
        "/v1/agent/xds/config?proxy=mesh/m/virtualNode/back&listen_address=127.0.44.201&ingress_port=15000&egress_port=15001",
        None,
        secs(5),
    )
    .unwrap();
    assert_eq!(shown.code, 200, "{}", shown.body);
    assert!(shown.body.contains(BACK_ID) && shown.body.contains("BEGIN CERTIFICATE"));
    assert!(!shown.body.contains("PRIVATE KEY"), "a key was shown");

    // stranger holds a valid certificate of its own, but back admits front's identity only.
    wait_for("stranger's certificate", secs(30), || {
        let d = stranger.admin_get("/certs").map_err(|e| e.to_string())?;
        d.contains(STRANGER_ID).then_some(()).ok_or(d)
    });
    let before = stat(&back, &["listener.", "ssl.fail_verify_san"]);
    let (code, _) = call(stranger_egress).unwrap();
    assert_ne!(code, 200, "back must refuse a client it does not list");
    assert!(stat(&back, &["listener.", "ssl.fail_verify_san"]) > before);

    // The agent reports its three certificates and keeps them, keys at 0600.
    let status: Value = http_request(aspec.api, "GET", "/v1/agent/status", None, secs(2))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(status["workload_certificates"]["held"], 3, "{status}");
    let kept = aspec.data_dir.join("identities.json");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&kept).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    // A rotation: a new root signs from now on, the previous one stays trusted for the
    // overlap; a certificate from the new root verifies against the new bundle only.
    let rotated = http_request(
        sspec.api,
        "POST",
        "/v1/ca/mesh/rotate",
        Some(r#"{"OverlapSeconds": 3600}"#),
        secs(10),
    )
    .unwrap();
    assert_eq!(rotated.code, 200, "{}", rotated.body);
    let rotated: Value = rotated.json().unwrap();
    let roots = rotated["Roots"].as_array().unwrap();
    assert_eq!(roots.len(), 2, "{rotated}");
    assert_eq!(roots[0]["Signing"], true);
    assert_eq!(roots[1]["CertificatePem"].as_str(), Some(bundle.as_str()));
    let until = roots[1]["TrustedUntil"].as_u64().unwrap();
    assert!(until > now() + 3000 && until <= now() + 3600);
    let new_bundle = rotated["TrustBundle"].as_str().unwrap();
    let renewed = ask("back");
    assert_eq!(renewed.code, 200, "{}", renewed.body);
    let renewed: Value = renewed.json().unwrap();
    let chain = renewed["CertificateChain"].as_str().unwrap();
    assert_eq!(renewed["TrustBundle"].as_str(), Some(new_bundle));
    assert!(shoal_pki::mesh::verify_workload(new_bundle, chain, now()).is_ok());
    assert!(shoal_pki::mesh::verify_workload(&bundle, chain, now()).is_err());
    // Traffic signed by the old root keeps flowing during the overlap.
    assert_eq!(call(front_egress).unwrap().0, 200);

    // An operator's own PKI, made with openssl as an operator would: a root and an
    // intermediate it signs. `shoal ca import` makes the intermediate the signer; certificates
    // then chain to the operator's root, which every bundle carries from then on.
    let pki = root.join("operator-pki");
    std::fs::create_dir_all(&pki).unwrap();
    let sh = |script: &str| {
        let out = std::process::Command::new("sh")
            .arg("-ec")
            .arg(script)
            .current_dir(&pki)
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "openssl (./scripts/install-tools): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out root.key
        openssl req -x509 -new -key root.key -subj /CN=operator-root -days 30 -out root.pem \
          -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out int.key
        openssl req -new -key int.key -subj /CN=operator-issuing -out int.csr
        printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n' > ext
        openssl x509 -req -in int.csr -CA root.pem -CAkey root.key -CAcreateserial -days 7 \
          -extfile ext -out int.pem");
    let shoal_ca = |args: &[&str]| {
        let out = std::process::Command::new(shoal_e2e::shoal_bin())
            .arg("ca")
            .args(args)
            .args(["--addr", &format!("http://{}", sspec.api)])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let p = |f: &str| pki.join(f).display().to_string();
    // A key that is not the intermediate's is refused, and nothing changes.
    let (ok, _, err) = shoal_ca(&[
        "import",
        "--cert",
        &p("int.pem"),
        "--key",
        &p("root.key"),
        "--root",
        &p("root.pem"),
    ]);
    assert!(!ok && err.contains("issuing CA"), "{err}");
    let (ok, out, err) = shoal_ca(&[
        "import",
        "--cert",
        &p("int.pem"),
        "--key",
        &p("int.key"),
        "--root",
        &p("root.pem"),
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("trust domain  shoal") && out.contains("signing"),
        "{out}"
    );
    let operator_root = std::fs::read_to_string(pki.join("root.pem")).unwrap();
    let signed = ask("back");
    assert_eq!(signed.code, 200, "{}", signed.body);
    let signed: Value = signed.json().unwrap();
    let chain = signed["CertificateChain"].as_str().unwrap();
    assert_eq!(
        shoal_pki::mesh::verify_workload(&operator_root, chain, now())
            .unwrap()
            .uri(),
        BACK_ID
    );
    let (ok, bundle_now, _) = shoal_ca(&["show", "--bundle"]);
    assert!(
        ok && bundle_now.starts_with(operator_root.trim_end()),
        "{bundle_now}"
    );
    let rotated_root = roots[0]["CertificatePem"].as_str().unwrap();
    assert!(
        bundle_now.contains(rotated_root.trim_end()),
        "the root it replaced stays trusted for the overlap: {bundle_now}"
    );
    assert_eq!(call(front_egress).unwrap().0, 200);

    // A proxy of a node that does not exist gets no certificate, and its agent asks less and
    // less often (1 s doubling to a minute), not every second.
    let failures = || -> u64 {
        let st: Value = http_request(aspec.api, "GET", "/v1/agent/status", None, secs(2))
            .unwrap()
            .json()
            .unwrap();
        st["workload_certificates"]["failures"].as_u64().unwrap()
    };
    let _ghost = sidecar("envoy-ghost", "ghost", "127.0.44.204", None);
    let first = wait_for("the ghost's first refusal", secs(30), || {
        let n = failures();
        (n > 0).then_some(n).ok_or("no failure yet".to_string())
    });
    std::thread::sleep(secs(6));
    let later = failures();
    assert!(
        later - first <= 3,
        "{} requests for a missing node in 6 s: no backoff",
        later - first
    );

    // Every server down: a restarted Envoy gets its certificate from its agent's cache.
    server.kill9();
    back.restart(root, "envoy-back");
    wait_for("back again, with no server", secs(60), || {
        match call(front_egress) {
            Ok((200, body)) => Ok(body),
            other => Err(format!("{other:?}")),
        }
    });
    assert!(back.admin_get("/certs").unwrap().contains(BACK_ID));

    drop(app);
    agent.terminate(secs(10));
    let _ = std::fs::remove_dir_all(root);
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
