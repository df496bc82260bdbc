//! Attacks on a running `shoal server`, replayed against the real process (issue 13): each one
//! is refused or contained, and the data survives.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use shoal_e2e::{http_request, node_status, shoal_bin, tail, wait_for, Process};
use shoal_raft::proto::raft_client::RaftClient;
use shoal_raft::proto::RaftMessage;

/// The loopback block these tests listen in (`127.0.50.*`).
const BLOCK: u8 = 50;

/// A lone server (no gossip: it bootstraps a one-member cluster of its own).
/// The command line of server 1 of a one-member cluster at `ip` (API :7070, Raft :7071) with
/// its data in `root/data`, plus `extra` flags.
fn server_args(root: &std::path::Path, ip: std::net::IpAddr, extra: &[String]) -> Vec<String> {
    let mut args = vec![
        "server".to_string(),
        "--node-id".into(),
        "1".into(),
        "--data-dir".into(),
        root.join("data").display().to_string(),
        "--api".into(),
        SocketAddr::new(ip, 7070).to_string(),
        "--raft".into(),
        SocketAddr::new(ip, 7071).to_string(),
    ];
    args.extend(extra.iter().cloned());
    args
}

fn lone_server(root: &std::path::Path, last: u8) -> (Process, SocketAddr, SocketAddr) {
    let ip = std::net::IpAddr::from([127, 0, BLOCK, last]);
    let args = server_args(root, ip, &[]);
    let p = Process::spawn("server 1", &shoal_bin(), &args, &root.join("server.log"));
    (p, SocketAddr::new(ip, 7070), SocketAddr::new(ip, 7071))
}

fn wait_leader(api: SocketAddr) -> shoal_e2e::NodeStatus {
    wait_for("the lone server leads", Duration::from_secs(30), || {
        node_status(api)
            .filter(|s| s.leader_id == Some(1) && s.members.iter().all(|m| m.healthy))
            .ok_or_else(|| format!("{:?}", node_status(api)))
    })
}

fn incarnation(root: &std::path::Path) -> String {
    let path = root.join("data/raft/identity.json");
    let v: Value = serde_json::from_slice(&std::fs::read(&path).expect("identity file"))
        .expect("identity JSON");
    v["incarnation"].as_str().expect("incarnation").to_string()
}

fn rpc(raft: SocketAddr, method: &str, msg: RaftMessage) -> Result<RaftMessage, tonic::Status> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut c = RaftClient::connect(format!("http://{raft}"))
            .await
            .expect("connect to the Raft port");
        let sent = match method {
            "vote" => c.vote(msg).await,
            _ => c.append_entries(msg).await,
        };
        sent.map(tonic::Response::into_inner)
    })
}

/// Before: an AppendEntries naming another leader of the current term panicked openraft's core
/// ("two incomparable leaders can not be both committed"); the process kept running, every
/// write failed, and `/v1/status` still said leader and healthy. Now the server exits with 70
/// (so systemd restarts it) and comes back with its data. A Vote addressed to a wrong
/// incarnation no longer answers with the real one.
#[test]
fn a_dead_raft_core_exits_70_and_the_restarted_server_has_its_data() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let (mut server, api, raft) = lone_server(root, 11);
    let st = wait_leader(api);
    let created = http_request(
        api,
        "PUT",
        "/v20190125/meshes",
        Some(r#"{"meshName":"kept"}"#),
        Duration::from_secs(5),
    )
    .expect("create a mesh");
    assert_eq!(created.code, 200, "create mesh: {}", created.body);
    let real = incarnation(root);

    // The refusal of a wrong incarnation does not leak the right one.
    let refused = rpc(
        raft,
        "vote",
        RaftMessage {
            target_node_id: 1,
            target_incarnation: "guessed".into(),
            payload: b"{}".to_vec(),
            chunk: Vec::new(),
            cluster_id: String::new(),
        },
    )
    .expect_err("a vote for another incarnation is refused");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        !refused.message().contains(&real),
        "the refusal names the real incarnation: {}",
        refused.message()
    );

    // Another leader (node 2) of the current term, committed: an impossible state for the
    // core.
    let forged = json!({
        "vote": {"leader_id": {"term": st.term, "voted_for": 2}, "committed": true},
        "prev_log_id": null,
        "entries": [],
        "leader_commit": null,
    });
    let _ = rpc(
        raft,
        "append_entries",
        RaftMessage {
            target_node_id: 1,
            target_incarnation: real,
            payload: shoal_raft::proto::encode_payload(&forged).expect("MessagePack"),
            chunk: Vec::new(),
            cluster_id: String::new(),
        },
    );
    let status = wait_for(
        "the server exits after its Raft core stopped",
        Duration::from_secs(15),
        || server.exited().ok_or_else(|| tail(&server.log(), 5)),
    );
    assert_eq!(
        status.code(),
        Some(70),
        "exit status {status}; log tail:\n{}",
        tail(&server.log(), 20)
    );
    assert!(
        server.log().contains("the Raft core stopped"),
        "the log says why; tail:\n{}",
        tail(&server.log(), 20)
    );

    // Restarted (as systemd would), it leads again and still has the mesh.
    let (_server, api, _) = lone_server(root, 11);
    wait_leader(api);
    let got = http_request(
        api,
        "GET",
        "/v20190125/meshes/kept",
        None,
        Duration::from_secs(5),
    )
    .expect("describe the mesh");
    assert_eq!(
        got.code, 200,
        "describe mesh after the restart: {}",
        got.body
    );
}

/// Before: a connection that sent half a request line and its headers was held for 14 minutes
/// and kept `SIGTERM` from stopping the server. Now it is closed after the header-read timeout
/// (10 s), and a server asked to stop while one is open stops within its grace period.
#[test]
fn partial_headers_are_cut_off_and_do_not_hold_shutdown() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut server, api, _) = lone_server(dir.path(), 12);
    wait_leader(api);
    let partial = |api: SocketAddr| {
        let mut s = std::net::TcpStream::connect(api).expect("connect");
        s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .expect("send half a request");
        s
    };
    let mut slow = partial(api);
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    let t = std::time::Instant::now();
    let mut buf = [0u8; 512];
    // The server closes it (EOF, or a 408 then EOF) without the request ever completing.
    let mut got = Vec::new();
    loop {
        match slow.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "the half-sent request was still open after {:?}: {e}",
                t.elapsed()
            ),
        }
    }
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(15),
        "closed after {waited:?}, expected the 10 s header-read timeout; got {:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        !String::from_utf8_lossy(&got).contains("200 OK"),
        "the half-sent request was answered"
    );

    // SIGTERM with a half-sent request open: the server exits cleanly and promptly.
    let _held = partial(api);
    std::thread::sleep(Duration::from_millis(200));
    let t = std::time::Instant::now();
    let st = server.terminate(Duration::from_secs(15));
    assert!(
        st.success(),
        "exit status {st}; log:\n{}",
        tail(&server.log(), 20)
    );
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "stopping took {:?}",
        t.elapsed()
    );
}

/// Before: at the descriptor limit, idle API connections starved DNS over TCP ("Too many open
/// files"). Now the API takes at most half the descriptors beyond a reserve, closing new
/// connections past that, and the rest of the node keeps working through a flood of 1,000
/// idle connections: DNS over TCP answers, and once the flood is cut off by the header
/// timeout the API serves again.
#[test]
fn a_thousand_idle_connections_leave_dns_and_the_api_working() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let ip = std::net::IpAddr::from([127, 0, BLOCK, 13]);
    let api = SocketAddr::new(ip, 7070);
    let dns = SocketAddr::new(ip, 8600);
    // A descriptor limit of 1,100 (soft and hard, so the server cannot raise it): 294 API
    // connections at most.
    let prlimit = std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        prlimit,
        "prlimit (util-linux) is needed to run a server under a descriptor limit"
    );
    let mut args = vec![
        "--nofile=1100:1100".to_string(),
        shoal_bin().display().to_string(),
    ];
    args.extend(server_args(
        root,
        ip,
        &[
            "--gossip".into(),
            SocketAddr::new(ip, 7946).to_string(),
            "--bootstrap-expect".into(),
            "1".into(),
            "--dns".into(),
            dns.to_string(),
        ],
    ));
    let server = Process::spawn(
        "server 1",
        std::path::Path::new("/usr/bin/prlimit"),
        &args,
        &root.join("server.log"),
    );
    wait_leader(api);
    let answered = |what: &str| {
        let a = shoal_e2e::dig(dns, "nothing.apps.local", "A", &["+tcp"]);
        assert!(
            !a.status.is_empty(),
            "DNS over TCP did not answer {what}: {}",
            a.raw
        );
    };
    answered("before the flood");
    let mut flood = Vec::new();
    for _ in 0..1000 {
        match std::net::TcpStream::connect(api) {
            Ok(s) => flood.push(s),
            Err(e) => panic!("the client could not open a connection: {e}"),
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    answered("during the flood");
    answered("during the flood, again");
    assert!(
        server.log().contains("connection limit reached"),
        "the refusals are logged; log tail:\n{}",
        tail(&server.log(), 10)
    );
    // The idle ones are cut off after the header-read timeout; the API serves again while
    // the client still holds its ends.
    let back = wait_for("the API serves again", Duration::from_secs(20), || {
        node_status(api).ok_or_else(|| "no status".to_string())
    });
    assert_eq!(back.leader_id, Some(1));
    answered("after the flood");
    drop(flood);
}

/// Before: a restore body was buffered up to 512 MiB before anything looked at it. Now it is
/// read as it comes and refused once it passes 64 MiB, in the API's error shape, with the
/// model untouched.
#[test]
fn an_oversized_restore_is_refused_and_changes_nothing() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("temp dir");
    let (_server, api, _) = lone_server(dir.path(), 14);
    wait_leader(api);
    let created = http_request(
        api,
        "PUT",
        "/v20190125/meshes",
        Some(r#"{"meshName":"kept"}"#),
        Duration::from_secs(5),
    )
    .expect("create a mesh");
    assert_eq!(created.code, 200, "create mesh: {}", created.body);
    // 65 MiB of a JSON string, chunked (no length announced), so the cap has to count.
    let mut s = std::net::TcpStream::connect(api).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s.write_all(
        b"POST /v1/snapshot/restore HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Transfer-Encoding: chunked\r\n\r\n",
    )
    .expect("headers");
    let chunk = vec![b'a'; 1 << 20];
    let mut sent = 0usize;
    for i in 0..65 {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        if i == 0 {
            frame.extend_from_slice(b"\"");
            frame.extend_from_slice(&chunk[1..]);
        } else {
            frame.extend_from_slice(&chunk);
        }
        frame.extend_from_slice(b"\r\n");
        if s.write_all(&frame).is_err() {
            break; // the server answered and closed early: that is the point
        }
        sent += chunk.len();
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("LimitExceededException"),
        "after {sent} bytes: {answer}"
    );
    let got = http_request(
        api,
        "GET",
        "/v20190125/meshes/kept",
        None,
        Duration::from_secs(5),
    )
    .expect("describe the mesh");
    assert_eq!(got.code, 200, "the mesh is still there: {}", got.body);
}

/// Runs `shoal tls …` and requires success.
fn shoal_tls(args: &[&str]) {
    let out = shoal_e2e::run_shoal(args, Duration::from_secs(20));
    assert!(
        out.status.success(),
        "shoal {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A connection to a server's cluster gRPC port over TLS trusting the CA in `pki`, presenting
/// the certificate `cert` from there (none: no client certificate).
async fn cluster_channel(
    raft: SocketAddr,
    pki: &std::path::Path,
    cert: Option<&str>,
) -> Result<tonic::transport::Channel, String> {
    let ca = std::fs::read_to_string(pki.join("shoal-ca.pem")).expect("CA");
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
        .domain_name("server.shoal");
    if let Some(name) = cert {
        let c = std::fs::read_to_string(pki.join(format!("{name}.pem"))).expect("cert");
        let k = std::fs::read_to_string(pki.join(format!("{name}-key.pem"))).expect("key");
        tls = tls.identity(tonic::transport::Identity::from_pem(c, k));
    }
    tonic::transport::Endpoint::from_shared(format!("https://{raft}"))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))
}

/// A client of the Raft port with an optional certificate: the forged AppendEntries of the
/// attack (a higher term, a made-up leader, one entry) sent as `cert`.
fn forge_append(
    raft: SocketAddr,
    pki: &std::path::Path,
    cert: Option<&str>,
    incarnation: &str,
) -> Result<RaftMessage, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let ch = cluster_channel(raft, pki, cert).await?;
        let forged = json!({
            "vote": {"leader_id": {"term": 1000, "voted_for": 9}, "committed": true},
            "prev_log_id": null,
            "entries": [],
            "leader_commit": null,
        });
        RaftClient::new(ch)
            .append_entries(RaftMessage {
                target_node_id: 1,
                target_incarnation: incarnation.to_string(),
                payload: shoal_raft::proto::encode_payload(&forged).expect("MessagePack"),
                chunk: Vec::new(),
                cluster_id: String::new(),
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    })
}

/// The follower-to-leader Forward service as an attacker would call it: a commit that deletes
/// `mesh`, sent with `cert` (none: no client certificate).
fn forge_forward(
    raft: SocketAddr,
    pki: &std::path::Path,
    cert: Option<&str>,
    mesh: &str,
) -> Result<(), String> {
    use shoal::server::rpc::forward::forward_client::ForwardClient;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let ch = cluster_channel(raft, pki, cert).await?;
        let delete =
            json!({"Delete": {"key": {"kind": "Mesh", "mesh": mesh, "parent": "", "name": mesh}}});
        ForwardClient::new(ch)
            .commit(shoal::server::rpc::CommitRequest {
                command: serde_json::to_vec(&delete).expect("JSON"),
            })
            .await
            .map(|_| ())
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    })
}

/// Three servers with certificates from `shoal tls` form a cluster over mutual TLS and
/// replicate writes. A client without a certificate is refused in the TLS handshake, before any
/// Raft code runs; an agent's certificate gets through the handshake but not to Raft
/// (PermissionDenied), nor to the leader's Forward service; none changes the term or the data.
/// A server started with an agent's certificate is refused at start.
#[test]
fn raft_over_mutual_tls_refuses_clients_without_a_server_certificate() {
    let pki = tempfile::tempdir().expect("temp dir");
    let p = pki.path().display().to_string();
    shoal_tls(&["tls", "ca", "create", "--dir", &p]);
    for name in ["s1", "s2", "s3"] {
        shoal_tls(&[
            "tls", "cert", "create", "--role", "server", "--name", name, "--ca-dir", &p, "--dir",
            &p,
        ]);
    }
    shoal_tls(&[
        "tls", "cert", "create", "--role", "agent", "--name", "a1", "--ca-dir", &p, "--dir", &p,
    ]);
    let key_mode = std::fs::metadata(pki.path().join("s1-key.pem"))
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .expect("key file");
    assert_eq!(
        key_mode, 0o600,
        "private keys are readable by their owner only"
    );

    let mut c = shoal_e2e::Cluster::new(51);
    for id in 1..=3u64 {
        let seed = if id == 1 { 2 } else { 1 };
        let join = vec![c.gossip_addr(seed)];
        c.define(id, join);
        c.spec_mut(id).extra = vec![
            "--tls-ca".into(),
            format!("{p}/shoal-ca.pem"),
            "--tls-cert".into(),
            format!("{p}/s{id}.pem"),
            "--tls-key".into(),
            format!("{p}/s{id}-key.pem"),
            "--api-auth".into(),
        ];
        c.start(id);
    }
    let all = [1, 2, 3];
    let leader = c.wait_leader(&all, &all, Duration::from_secs(60));
    // With --api-auth too: bootstrap a key (through any server: the CLI finds the leader),
    // then write through a follower and read on the other one. The follower forwards the
    // write, and the read's ReadIndex, to the leader over the cluster port's mutual TLS.
    let creds = c.root().join("credentials");
    let boot = shoal_e2e::run_shoal(
        &[
            "acl",
            "bootstrap",
            "--addr",
            &format!("http://{}", c.api(if leader == 1 { 2 } else { 1 })),
            "--credentials-file",
            &creds.display().to_string(),
        ],
        Duration::from_secs(20),
    );
    assert!(
        boot.status.success(),
        "{}",
        String::from_utf8_lossy(&boot.stderr)
    );
    let followers: Vec<u64> = all.iter().copied().filter(|id| *id != leader).collect();
    let (ok, _, err) = aws_profile(
        c.api(followers[0]),
        &creds,
        &[
            "--profile",
            "shoal",
            "appmesh",
            "create-mesh",
            "--mesh-name",
            "tls-mesh",
        ],
    );
    assert!(
        ok,
        "a signed write through follower {}: {err}",
        followers[0]
    );
    // The AWS CLI, signed with the bootstrapped key, reads the test's mesh through `api`.
    let describe = |api: SocketAddr| {
        aws_profile(
            api,
            &creds,
            &[
                "--profile",
                "shoal",
                "appmesh",
                "describe-mesh",
                "--mesh-name",
                "tls-mesh",
            ],
        )
    };
    let (ok, out, err) = describe(c.api(followers[1]));
    assert!(
        ok && out.contains("tls-mesh"),
        "a linearizable read on follower {}: {err}",
        followers[1]
    );
    let unsigned = shoal_e2e::appmesh::create_mesh(c.api(followers[0]), "unsigned").expect("HTTP");
    assert_eq!(unsigned.code, 403, "{}", unsigned.body);
    let revision = c.wait_converged(&all, Duration::from_secs(20));
    let term = node_status(c.api(1)).expect("status").term;
    let incarnation = incarnation(&c.root().join("n1"));

    let no_cert = forge_append(c.spec(1).raft, pki.path(), None, &incarnation)
        .expect_err("a client without a certificate is refused");
    assert!(
        !no_cert.contains("PermissionDenied"),
        "refused in the handshake, not by the service: {no_cert}"
    );
    eprintln!("without a certificate: {no_cert}");
    let agent = forge_append(c.spec(1).raft, pki.path(), Some("a1"), &incarnation)
        .expect_err("an agent certificate is refused by the Raft service");
    assert!(agent.starts_with("PermissionDenied"), "{agent}");
    // The leader's Forward service (what followers send writes through) takes server
    // certificates only: the API's forwarded-commit attack has no door left.
    let raft_of_leader = c.spec(leader).raft;
    let no_cert = forge_forward(raft_of_leader, pki.path(), None, "tls-mesh")
        .expect_err("a forwarded commit without a certificate is refused");
    assert!(
        !no_cert.contains("PermissionDenied"),
        "refused in the handshake: {no_cert}"
    );
    let agent = forge_forward(raft_of_leader, pki.path(), Some("a1"), "tls-mesh")
        .expect_err("a forwarded commit with an agent certificate is refused");
    assert!(agent.starts_with("PermissionDenied"), "{agent}");
    let (ok, out, _) = describe(c.api(leader));
    assert!(
        ok && out.contains("tls-mesh"),
        "the mesh survived the forged commits"
    );

    let after = node_status(c.api(1)).expect("status");
    assert_eq!(after.term, term, "the forged term was not taken");
    assert_eq!(c.wait_converged(&all, Duration::from_secs(10)), revision);
    let leader_now = c.wait_leader(&all, &all, Duration::from_secs(10));
    assert_eq!(leader_now, leader, "the leader is unchanged");
    for id in all {
        let log = std::fs::read_to_string(&c.spec(id).log).unwrap_or_default();
        assert!(
            !log.contains("without TLS"),
            "server {id} warned about plain gRPC"
        );
    }

    // An agent with its certificate follows the model over TLS; an agent without TLS gets
    // nothing from the same servers.
    let follows = |spec: &shoal_e2e::AgentSpec| {
        http_request(spec.api, "GET", "/v1/status", None, Duration::from_secs(2))
            .ok()
            .and_then(|r| r.json())
    };
    let mut good = shoal_e2e::AgentSpec::on_loopback(c.root(), 51, 1);
    good.join = vec![c.gossip_addr(1)];
    good.extra = vec![
        "--tls-ca".into(),
        format!("{p}/shoal-ca.pem"),
        "--tls-cert".into(),
        format!("{p}/a1.pem"),
        "--tls-key".into(),
        format!("{p}/a1-key.pem"),
    ];
    let _good = good.spawn();
    let mut plain = shoal_e2e::AgentSpec::on_loopback(c.root(), 51, 2);
    plain.join = vec![c.gossip_addr(1)];
    let _plain = plain.spawn();
    wait_for(
        "the TLS agent follows the model",
        Duration::from_secs(30),
        || {
            let v = follows(&good).ok_or("no status")?;
            (v["server"].is_string() && v["revision"].as_u64() >= Some(revision))
                .then_some(())
                .ok_or_else(|| v.to_string())
        },
    );
    // The plain agent has had as long, and gossip told it where the servers are.
    let v = wait_for("the plain agent's status", Duration::from_secs(10), || {
        follows(&plain).ok_or_else(|| "no status".to_string())
    });
    assert!(
        v["revision"].as_u64().unwrap_or(0) < revision && !v["server"].is_string(),
        "an agent without a certificate followed the model: {v}"
    );

    // A rogue server without a certificate joins gossip (which is not authenticated yet): the
    // leader adds it as a learner, cannot replicate to it over mutual TLS, and never promotes
    // it to a voter (it used to be promoted once the learner's catch-up wait ran out).
    c.define(4, vec![c.gossip_addr(1)]);
    c.start(4);
    let leader_api = c.api(leader);
    wait_for(
        "the rogue server is added as a learner",
        Duration::from_secs(30),
        || {
            let st = node_status(leader_api).ok_or("no status")?;
            st.members
                .iter()
                .any(|m| m.node_id == 4)
                .then_some(())
                .ok_or_else(|| format!("{:?}", st.members))
        },
    );
    // Past the leader's catch-up wait (10 s) and a few membership steps.
    std::thread::sleep(Duration::from_secs(14));
    let st = node_status(leader_api).expect("status");
    assert_eq!(
        st.voters(),
        all.iter().copied().collect(),
        "voters: {:?}",
        st.members
    );
    assert_eq!(st.leader_id, Some(leader));

    // A server given an agent's certificate does not start.
    let wrong = shoal_e2e::run_shoal(
        &[
            "server",
            "--node-id",
            "9",
            "--data-dir",
            &format!("{p}/wrong"),
            "--tls-ca",
            &format!("{p}/shoal-ca.pem"),
            "--tls-cert",
            &format!("{p}/a1.pem"),
            "--tls-key",
            &format!("{p}/a1-key.pem"),
        ],
        Duration::from_secs(20),
    );
    assert!(!wrong.status.success());
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(err.contains("an agent certificate"), "{err}");
}

/// Runs the real AWS CLI against `endpoint` with profile `shoal` of `credentials` (nothing
/// else: no environment keys, no user configuration).
fn aws_profile(
    endpoint: SocketAddr,
    credentials: &std::path::Path,
    args: &[&str],
) -> (bool, String, String) {
    aws_profile_at(&format!("http://{endpoint}"), credentials, args)
}

/// [`aws_profile`] against any endpoint URL (`https://…` with `--ca-bundle` among `args`).
fn aws_profile_at(
    endpoint_url: &str,
    credentials: &std::path::Path,
    args: &[&str],
) -> (bool, String, String) {
    let home = credentials.parent().expect("a directory");
    let out = std::process::Command::new(shoal_e2e::aws_bin())
        .args(["--endpoint-url", endpoint_url, "--output", "json"])
        .args(args)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env("AWS_SHARED_CREDENTIALS_FILE", credentials)
        .env("AWS_CONFIG_FILE", home.join("no-config"))
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_PAGER", "")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("HOME", home)
        .output()
        .expect("run the AWS CLI");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// With `--api-auth`, the API takes AWS SigV4 with keys shoal issued. The real AWS CLI with a
/// profile from `shoal acl bootstrap` runs an App Mesh scenario; a wrong secret gets
/// `InvalidSignatureException`, no signature `MissingAuthenticationTokenException`, an unknown
/// key `UnrecognizedClientException`, a read-only key `AccessDeniedException` on a write.
/// The unauthenticated attacks of the issue (restore of an empty model, a raw internal commit,
/// a delete, remove-server) are refused and the data stays; bootstrap works once.
#[test]
fn the_aws_cli_signs_and_unsigned_attacks_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let ip = std::net::IpAddr::from([127, 0, BLOCK, 15]);
    let api = SocketAddr::new(ip, 7070);
    let args = server_args(root, ip, &["--api-auth".into()]);
    let _server = Process::spawn("server 1", &shoal_bin(), &args, &root.join("server.log"));
    wait_leader(api);
    let creds = root.join("credentials");
    let addr = format!("http://{api}");
    let boot = shoal_e2e::run_shoal(
        &[
            "acl",
            "bootstrap",
            "--addr",
            &addr,
            "--credentials-file",
            &creds.display().to_string(),
        ],
        Duration::from_secs(20),
    );
    assert!(
        boot.status.success(),
        "{}",
        String::from_utf8_lossy(&boot.stderr)
    );
    let again = shoal_e2e::run_shoal(
        &["acl", "bootstrap", "--addr", &addr],
        Duration::from_secs(20),
    );
    assert!(!again.status.success(), "a second bootstrap is refused");

    // The App Mesh scenario, signed by the AWS CLI.
    let ok = |args: &[&str]| {
        let (ok, out, err) = aws_profile(api, &creds, &[&["--profile", "shoal"], args].concat());
        assert!(ok, "aws {args:?}: {err}");
        out
    };
    ok(&["appmesh", "create-mesh", "--mesh-name", "colorapp"]);
    ok(&[
        "appmesh",
        "create-virtual-node",
        "--mesh-name",
        "colorapp",
        "--virtual-node-name",
        "red",
        "--spec",
        r#"{"listeners":[{"portMapping":{"port":8080,"protocol":"http"}}],"serviceDiscovery":{"dns":{"hostname":"red.colorapp.local"}}}"#,
    ]);
    ok(&[
        "appmesh",
        "create-virtual-router",
        "--mesh-name",
        "colorapp",
        "--virtual-router-name",
        "vr",
        "--spec",
        r#"{"listeners":[{"portMapping":{"port":8080,"protocol":"http"}}]}"#,
    ]);
    ok(&[
        "appmesh",
        "create-route",
        "--mesh-name",
        "colorapp",
        "--virtual-router-name",
        "vr",
        "--route-name",
        "r",
        "--spec",
        r#"{"httpRoute":{"match":{"prefix":"/"},"action":{"weightedTargets":[{"virtualNode":"red","weight":1}]}}}"#,
    ]);
    let listed = ok(&["appmesh", "list-virtual-nodes", "--mesh-name", "colorapp"]);
    assert!(listed.contains("\"red\""), "{listed}");
    ok(&[
        "appmesh",
        "update-virtual-node",
        "--mesh-name",
        "colorapp",
        "--virtual-node-name",
        "red",
        "--spec",
        r#"{"listeners":[{"portMapping":{"port":9080,"protocol":"http"}}],"serviceDiscovery":{"dns":{"hostname":"red.colorapp.local"}}}"#,
    ]);
    let arn = "arn:aws:appmesh:us-east-1:000000000000:mesh/colorapp";
    ok(&[
        "appmesh",
        "tag-resource",
        "--resource-arn",
        arn,
        "--tags",
        "key=team,value=blue",
    ]);
    let tags = ok(&["appmesh", "list-tags-for-resource", "--resource-arn", arn]);
    assert!(tags.contains("blue"), "{tags}");
    ok(&[
        "appmesh",
        "delete-route",
        "--mesh-name",
        "colorapp",
        "--virtual-router-name",
        "vr",
        "--route-name",
        "r",
    ]);
    ok(&["appmesh", "describe-mesh", "--mesh-name", "colorapp"]);

    // Refusals, in AWS's words.
    let refused = |creds_file: &std::path::Path, extra: &[&str], args: &[&str], code: &str| {
        let (ok, _, err) = aws_profile(api, creds_file, &[extra, args].concat());
        assert!(
            !ok && err.contains(code),
            "aws {args:?}: expected {code}, got: {err}"
        );
    };
    let text = std::fs::read_to_string(&creds).expect("credentials");
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("aws_access_key_id = "))
        .expect("key id")
        .to_string();
    let secret = text
        .lines()
        .find_map(|l| l.strip_prefix("aws_secret_access_key = "))
        .expect("secret")
        .to_string();
    let wrong = root.join("wrong");
    std::fs::write(
        &wrong,
        format!("[shoal]\naws_access_key_id = {id}\naws_secret_access_key = x{secret}\n"),
    )
    .unwrap();
    refused(
        &wrong,
        &["--profile", "shoal"],
        &["appmesh", "list-meshes"],
        "InvalidSignatureException",
    );
    let unknown = root.join("unknown");
    std::fs::write(
        &unknown,
        format!(
            "[shoal]\naws_access_key_id = SHOALNOSUCHKEY00000\naws_secret_access_key = {secret}\n"
        ),
    )
    .unwrap();
    refused(
        &unknown,
        &["--profile", "shoal"],
        &["appmesh", "list-meshes"],
        "UnrecognizedClientException",
    );
    refused(
        &creds,
        &["--no-sign-request"],
        &["appmesh", "list-meshes"],
        "MissingAuthenticationTokenException",
    );

    // A read-only key reads and may not write.
    let ro = root.join("read-only");
    let made = std::process::Command::new(shoal_bin())
        .args([
            "acl",
            "create",
            "--policy",
            "read-only",
            "--addr",
            &addr,
            "--credentials-file",
        ])
        .arg(&ro)
        .env("AWS_ACCESS_KEY_ID", &id)
        .env("AWS_SECRET_ACCESS_KEY", &secret)
        .output()
        .expect("shoal acl create");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let (read, _, err) = aws_profile(
        api,
        &ro,
        &[
            "--profile",
            "shoal",
            "appmesh",
            "describe-mesh",
            "--mesh-name",
            "colorapp",
        ],
    );
    assert!(read, "a read-only key reads: {err}");
    refused(
        &ro,
        &["--profile", "shoal"],
        &[
            "appmesh",
            "delete-virtual-node",
            "--mesh-name",
            "colorapp",
            "--virtual-node-name",
            "red",
        ],
        "AccessDeniedException",
    );

    // The issue's unauthenticated attacks, replayed.
    let attacks: [(&str, &str, Option<&str>); 5] = [
        (
            "POST",
            "/v1/snapshot/restore",
            Some(r#"{"format":1,"revision":0,"resources":[],"tokens":[]}"#),
        ),
        (
            "POST",
            "/internal/v1/commit",
            Some(
                r#"{"Delete":{"key":{"kind":"Mesh","mesh":"colorapp","parent":"","name":"colorapp"}}}"#,
            ),
        ),
        (
            "DELETE",
            "/v20190125/meshes/colorapp/virtualNodes/red",
            None,
        ),
        ("POST", "/v1/operator/remove-server?node_id=1", None),
        (
            "POST",
            "/v1/acl/keys",
            Some(r#"{"Policy":{"Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}}"#),
        ),
    ];
    for (method, path, body) in attacks {
        let r = http_request(api, method, path, body, Duration::from_secs(5)).expect("HTTP");
        assert_eq!(r.code, 403, "{method} {path}: {}", r.body);
        assert!(
            r.body.contains("MissingAuthenticationTokenException"),
            "{method} {path}: {}",
            r.body
        );
    }
    // The shoal CLI signs with the same keys (from the environment, as the AWS CLI reads them).
    let internal = std::process::Command::new(shoal_bin())
        .args([
            "get",
            "virtual-nodes",
            "--mesh",
            "colorapp",
            "--addr",
            &addr,
        ])
        .env("AWS_ACCESS_KEY_ID", &id)
        .env("AWS_SECRET_ACCESS_KEY", &secret)
        .output()
        .expect("shoal get");
    assert!(
        internal.status.success(),
        "the shoal CLI signs: {}",
        String::from_utf8_lossy(&internal.stderr)
    );
    assert!(String::from_utf8_lossy(&internal.stdout).contains("red"));
    let (still, out, err) = aws_profile(
        api,
        &creds,
        &[
            "--profile",
            "shoal",
            "appmesh",
            "describe-virtual-node",
            "--mesh-name",
            "colorapp",
            "--virtual-node-name",
            "red",
        ],
    );
    assert!(
        still && out.contains("9080"),
        "the data is intact: {out}{err}"
    );
}

/// `--api-tls`: the API speaks HTTPS with the server's certificate from the cluster CA. The AWS
/// CLI with `--ca-bundle` and a signed profile works; without the CA it refuses the
/// certificate; plain HTTP to the port gets no answer; the shoal CLI trusts the CA through
/// `AWS_CA_BUNDLE` as the AWS CLI does.
#[test]
fn the_api_over_https_with_the_cluster_ca() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let p = root.display().to_string();
    let ip = std::net::IpAddr::from([127, 0, BLOCK, 16]);
    shoal_tls(&["tls", "ca", "create", "--dir", &p]);
    shoal_tls(&[
        "tls",
        "cert",
        "create",
        "--role",
        "server",
        "--name",
        "s1",
        "--ip",
        &ip.to_string(),
        "--ca-dir",
        &p,
        "--dir",
        &p,
    ]);
    let api = SocketAddr::new(ip, 7070);
    let args = server_args(
        root,
        ip,
        &[
            "--api-auth".into(),
            "--api-tls".into(),
            "--tls-ca".into(),
            format!("{p}/shoal-ca.pem"),
            "--tls-cert".into(),
            format!("{p}/s1.pem"),
            "--tls-key".into(),
            format!("{p}/s1-key.pem"),
        ],
    );
    let server = Process::spawn("server 1", &shoal_bin(), &args, &root.join("server.log"));
    let url = format!("https://{api}");
    let ca = format!("{p}/shoal-ca.pem");
    let creds = root.join("credentials");
    // Bootstrap as soon as the server leads (the CLI asks /v1/status over HTTPS first).
    wait_for(
        "a key bootstrapped over HTTPS",
        Duration::from_secs(30),
        || {
            let out = std::process::Command::new(shoal_bin())
                .args(["acl", "bootstrap", "--addr", &url, "--credentials-file"])
                .arg(&creds)
                .env("AWS_CA_BUNDLE", &ca)
                .output()
                .map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    tail(&server.log(), 5)
                ))
            }
        },
    );
    let (ok, out, err) = aws_profile_at(
        &url,
        &creds,
        &[
            "--profile",
            "shoal",
            "--ca-bundle",
            &ca,
            "appmesh",
            "create-mesh",
            "--mesh-name",
            "secure",
        ],
    );
    assert!(
        ok && out.contains("secure"),
        "create-mesh over HTTPS: {err}"
    );
    let (ok, _, err) = aws_profile_at(
        &url,
        &creds,
        &["--profile", "shoal", "appmesh", "list-meshes"],
    );
    assert!(
        !ok && err.contains("CERTIFICATE_VERIFY_FAILED"),
        "without the CA the AWS CLI must refuse the certificate: {err}"
    );
    let plain = http_request(api, "GET", "/v1/status", None, Duration::from_secs(5));
    assert!(
        plain.as_ref().map_or(true, |r| r.code != 200),
        "plain HTTP was answered: {:?}",
        plain.map(|r| r.body)
    );
    let text = std::fs::read_to_string(&creds).expect("credentials");
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .expect("credentials field")
            .to_string()
    };
    let got = std::process::Command::new(shoal_bin())
        .args(["get", "meshes", "--addr", &url])
        .env("AWS_CA_BUNDLE", &ca)
        .env("AWS_ACCESS_KEY_ID", field("aws_access_key_id = "))
        .env("AWS_SECRET_ACCESS_KEY", field("aws_secret_access_key = "))
        .output()
        .expect("shoal get");
    assert!(
        got.status.success() && String::from_utf8_lossy(&got.stdout).contains("secure"),
        "shoal get over HTTPS: {}",
        String::from_utf8_lossy(&got.stderr)
    );
}

/// Before: an agent started with an existing host's name (a rogue, or a misconfigured twin)
/// replaced that host's instances in every view. Now the first live holder keeps the name: the
/// newcomer's instances are refused everywhere, and both sides log the conflict.
#[test]
fn a_second_host_with_a_taken_name_is_refused_not_swapped_in() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let mut sspec = shoal_e2e::ServerSpec::on_loopback(root, BLOCK, 7);
    sspec.bootstrap_expect = 1;
    let dns = SocketAddr::new(sspec.api.ip(), shoal_e2e::DNS_PORT);
    sspec.extra = vec!["--dns".into(), dns.to_string()];
    let _server = shoal_e2e::ServerProcess::spawn(&sspec);
    wait_for("the server leads", Duration::from_secs(30), || {
        node_status(sspec.api)
            .filter(|s| s.leader_id == Some(7))
            .map(|_| ())
            .ok_or_else(|| "no leader yet".to_string())
    });
    let register = |api: SocketAddr, id: &str, ip: &str| {
        let out = shoal_e2e::run_shoal(
            &[
                "register",
                "--addr",
                &format!("http://{api}"),
                "--namespace",
                "apps.local",
                "--service",
                "web",
                "--instance-id",
                id,
                "--address",
                ip,
                "--port",
                "80",
            ],
            Duration::from_secs(10),
        );
        assert!(
            out.status.success(),
            "register {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let answers = || shoal_e2e::dig(dns, "web.apps.local", "A", &[]).answers;

    let mut first = shoal_e2e::AgentSpec::on_loopback(root, BLOCK, 1);
    first.name = "dup".into();
    first.join = vec![sspec.gossip];
    let first_proc = first.spawn();
    wait_for("the first agent's API", Duration::from_secs(30), || {
        http_request(first.api, "GET", "/v1/status", None, Duration::from_secs(2))
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    register(first.api, "i1", "10.0.0.1");
    wait_for(
        "the server's DNS answers the first host's instance",
        Duration::from_secs(30),
        || {
            let a = answers();
            (a == ["10.0.0.1"])
                .then_some(())
                .ok_or_else(|| format!("{a:?}"))
        },
    );

    let mut second = shoal_e2e::AgentSpec::on_loopback(root, BLOCK, 2);
    second.name = "dup".into();
    second.join = vec![sspec.gossip];
    let second_proc = second.spawn();
    wait_for("the second agent's API", Duration::from_secs(30), || {
        http_request(
            second.api,
            "GET",
            "/v1/status",
            None,
            Duration::from_secs(2),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    });
    register(second.api, "i2", "10.0.0.2");
    wait_for(
        "both sides report the conflict",
        Duration::from_secs(30),
        || {
            let refused = second_proc.log().contains("held by another live node");
            let holder = first_proc.log().contains("claims this node's gossip name");
            (refused && holder).then_some(()).ok_or_else(|| {
                format!("refused side logged: {refused}, holder side logged: {holder}")
            })
        },
    );
    // The view keeps the holder's instance, and never takes the newcomer's.
    for _ in 0..10 {
        assert_eq!(answers(), ["10.0.0.1"]);
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `shoal dev --secure`: one command turns the machinery on locally, and the AWS CLI command
/// of the issue works as written: `AWS_SHARED_CREDENTIALS_FILE=<data-dir>/credentials aws
/// --profile shoal appmesh list-meshes --endpoint-url https://… --ca-bundle <data-dir>/ca.pem`.
/// An unsigned request is refused; the embedded agent follows the model over mutual TLS (its
/// DNS knows the example mesh's names). A restart on the same data dir keeps the key.
#[test]
fn shoal_dev_secure_works_with_the_aws_cli_as_written() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("dev");
    let ip = std::net::IpAddr::from([127, 0, BLOCK, 19]);
    let at = |port: u16| SocketAddr::new(ip, port).to_string();
    let args = vec![
        "dev".to_string(),
        "--secure".into(),
        "--data-dir".into(),
        data.display().to_string(),
        "--api".into(),
        at(7070),
        "--raft".into(),
        at(7071),
        "--gossip".into(),
        at(7946),
        "--dns".into(),
        at(8600),
        "--xds".into(),
        at(18000),
    ];
    let run = |label: &str| {
        let p = Process::spawn(
            label,
            &shoal_bin(),
            &args,
            &dir.path().join(format!("{label}.log")),
        );
        wait_for(
            "shoal dev --secure is ready",
            Duration::from_secs(60),
            || {
                p.log()
                    .contains("shoal dev --secure is ready")
                    .then_some(())
                    .ok_or_else(|| tail(&p.log(), 5))
            },
        );
        p
    };
    let first = run("dev");
    let creds = data.join("credentials");
    let ca = data.join("ca.pem").display().to_string();
    let url = format!("https://{}", at(7070));
    let mode = std::fs::metadata(&creds)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .expect("the credentials file");
    assert_eq!(mode, 0o600);
    // The issue's command, as written.
    let list_meshes = || {
        aws_profile_at(
            &url,
            &creds,
            &[
                "--profile",
                "shoal",
                "appmesh",
                "list-meshes",
                "--ca-bundle",
                &ca,
            ],
        )
    };
    let (ok, out, err) = list_meshes();
    assert!(ok && out.contains("colorapp"), "list-meshes: {out}{err}");
    let (ok, _, err) = aws_profile_at(
        &url,
        &creds,
        &[
            "--no-sign-request",
            "appmesh",
            "list-meshes",
            "--ca-bundle",
            &ca,
        ],
    );
    assert!(
        !ok && err.contains("MissingAuthenticationTokenException"),
        "{err}"
    );
    let dns = SocketAddr::new(ip, 8600);
    wait_for(
        "the dev agent's DNS knows the example mesh",
        Duration::from_secs(20),
        || {
            let a = shoal_e2e::dig(dns, "colorteller.colorapp.local", "A", &[]);
            (a.status == "NOERROR").then_some(()).ok_or(a.raw)
        },
    );
    assert!(
        first.log().contains("server=https://"),
        "the agent follows over TLS"
    );

    // Restarted on the same data dir: the same CA and key still work.
    let mut first = first;
    first.terminate(Duration::from_secs(20));
    let _second = run("dev-again");
    let (ok, out, err) = list_meshes();
    assert!(
        ok && out.contains("colorapp"),
        "after a restart: {out}{err}"
    );
}

/// Listeners an Envoy has from ADS (0 if its admin does not answer yet).
fn envoy_listeners(envoy: &shoal_e2e::Envoy) -> usize {
    envoy
        .config_dump()
        .ok()
        .and_then(|d| {
            d["configs"].as_array().and_then(|cs| {
                cs.iter()
                    .find_map(|c| c["dynamic_listeners"].as_array().map(|l| l.len()))
            })
        })
        .unwrap_or(0)
}

/// Before: any local client that named another proxy's node id got that proxy's whole
/// configuration. With `--xds-auth` an ADS stream must carry the proxy's token: a real Envoy
/// bootstrapped by `shoal envoy bootstrap --proxy-token-key` gets its listeners; one
/// bootstrapped without the key, or with a token made for another proxy, gets nothing, and the
/// agent logs the refusal.
#[test]
fn an_envoy_gets_its_configuration_only_with_its_proxy_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let mut sspec = shoal_e2e::ServerSpec::on_loopback(root, BLOCK, 8);
    sspec.bootstrap_expect = 1;
    let _server = shoal_e2e::ServerProcess::spawn(&sspec);
    wait_for("the server leads", Duration::from_secs(30), || {
        node_status(sspec.api)
            .filter(|s| s.leader_id == Some(8))
            .map(|_| ())
            .ok_or_else(|| "no leader yet".to_string())
    });
    let put = |path: &str, body: &str| {
        let r = http_request(sspec.api, "PUT", path, Some(body), Duration::from_secs(10))
            .expect("HTTP");
        assert_eq!(r.code, 200, "{path}: {}", r.body);
    };
    put("/v20190125/meshes", r#"{"meshName":"m"}"#);
    let node = |name: &str| {
        format!(
            r#"{{"virtualNodeName":"{name}","spec":{{"listeners":[{{"portMapping":{{"port":8080,"protocol":"http"}}}}]}}}}"#
        )
    };
    put("/v20190125/meshes/m/virtualNodes", &node("front"));
    put("/v20190125/meshes/m/virtualNodes", &node("back"));

    let mut aspec = shoal_e2e::AgentSpec::on_loopback(root, BLOCK, 3);
    aspec.join = vec![sspec.gossip];
    aspec.extra = vec!["--xds-auth".into()];
    let agent = aspec.spawn();
    wait_for(
        "the agent follows the model",
        Duration::from_secs(30),
        || {
            let v = http_request(aspec.api, "GET", "/v1/status", None, Duration::from_secs(2))
                .ok()
                .and_then(|r| r.json())
                .ok_or("no status")?;
            (v["revision"].as_u64() >= Some(3))
                .then_some(())
                .ok_or_else(|| v.to_string())
        },
    );
    let key = aspec.data_dir.join("proxy-token.key");
    let key_mode = std::fs::metadata(&key)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .expect("the proxy-token key");
    assert_eq!(key_mode, 0o600);
    let xds = aspec.xds.to_string();
    let args = |ip: &str, with_key: bool| {
        let mut a: Vec<String> = [
            "--mesh",
            "m",
            "--virtual-node",
            "front",
            "--xds",
            &xds,
            "--listen-address",
            ip,
        ]
        .map(String::from)
        .to_vec();
        if with_key {
            a.push("--proxy-token-key".into());
            a.push(key.display().to_string());
        }
        a
    };
    let good = shoal_e2e::Envoy::start(
        root,
        "good",
        "127.0.50.201:9901".parse().unwrap(),
        &args("127.0.50.201", true),
    );
    let keyless = shoal_e2e::Envoy::start(
        root,
        "keyless",
        "127.0.50.202:9901".parse().unwrap(),
        &args("127.0.50.202", false),
    );
    // A token made for `back`, presented as `front`: the bootstrap for `back` with the node id
    // edited to `front` (what a local client holding one proxy's bootstrap could try).
    let back = shoal_e2e::run_shoal(
        &[
            "envoy",
            "bootstrap",
            "--mesh",
            "m",
            "--virtual-node",
            "back",
            "--xds",
            &xds,
            "--admin-address",
            "127.0.50.203",
            "--admin-port",
            "9901",
            "--listen-address",
            "127.0.50.203",
            "--proxy-token-key",
            &key.display().to_string(),
        ],
        Duration::from_secs(10),
    );
    assert!(back.status.success());
    let forged = String::from_utf8_lossy(&back.stdout)
        .replace("mesh/m/virtualNode/back", "mesh/m/virtualNode/front");
    std::fs::write(root.join("forged-bootstrap.json"), forged).unwrap();
    let forged = shoal_e2e::Envoy::start_with_bootstrap(
        root,
        "forged",
        "127.0.50.203:9901".parse().unwrap(),
        &root.join("forged-bootstrap.json"),
    );

    wait_for(
        "the Envoy with its token gets its listeners",
        Duration::from_secs(30),
        || {
            let n = envoy_listeners(&good);
            (n > 0)
                .then_some(())
                .ok_or_else(|| format!("{n} listeners"))
        },
    );
    wait_for(
        "the agent refuses the other two",
        Duration::from_secs(30),
        || {
            let refused = agent
                .log()
                .matches("no valid proxy token for mesh/m/virtualNode/front")
                .count();
            (refused >= 2)
                .then_some(())
                .ok_or_else(|| format!("{refused} refusals logged"))
        },
    );
    assert_eq!(
        envoy_listeners(&keyless),
        0,
        "an Envoy without a token got listeners"
    );
    assert_eq!(
        envoy_listeners(&forged),
        0,
        "another proxy's token got listeners"
    );
}

/// The names in a member's `/v1/members`, sorted.
fn member_names(api: SocketAddr) -> Result<Vec<String>, String> {
    let reply = http_request(api, "GET", "/v1/members", None, Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&reply.body).map_err(|e| e.to_string())?;
    let mut names: Vec<String> = v["members"]
        .as_array()
        .ok_or("not a list")?
        .iter()
        .filter_map(|m| m["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    Ok(names)
}

/// `shoal gossip …` with `args`; panics with its stderr when it fails.
fn shoal_gossip(args: &[&str]) -> String {
    let mut all = vec!["gossip"];
    all.extend_from_slice(args);
    let out = shoal_e2e::run_shoal(&all, Duration::from_secs(20));
    assert!(
        out.status.success(),
        "shoal {all:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sealed gossip across real processes: a rogue agent without the key joins nothing, its
/// instance never reaches DNS, and its datagrams are counted; the keyring then rotates with
/// `shoal gossip keyring` across the running server and agent without either ever losing the
/// other from its view; afterwards a member on the old key is shut out and a restarted agent
/// keeps the rotated keyring from its data dir.
#[test]
fn gossip_is_sealed_rogues_are_shut_out_and_the_key_rotates_live() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let old_key = root.join("old.key");
    let new_key = root.join("new.key");
    std::fs::write(&old_key, shoal_gossip(&["keygen"])).unwrap();
    std::fs::write(&new_key, shoal_gossip(&["keygen"])).unwrap();
    let key_flag =
        |f: &std::path::Path| vec!["--gossip-key-file".to_string(), f.display().to_string()];

    let mut sspec = shoal_e2e::ServerSpec::on_loopback(root, BLOCK, 10);
    sspec.bootstrap_expect = 1;
    let dns = SocketAddr::new(sspec.api.ip(), shoal_e2e::DNS_PORT);
    sspec.extra = vec!["--dns".into(), dns.to_string()];
    sspec.extra.extend(key_flag(&old_key));
    let _server = shoal_e2e::ServerProcess::spawn(&sspec);
    wait_for("the server leads", Duration::from_secs(30), || {
        node_status(sspec.api)
            .filter(|s| s.leader_id == Some(10))
            .map(|_| ())
            .ok_or_else(|| "no leader yet".to_string())
    });
    let mut honest = shoal_e2e::AgentSpec::on_loopback(root, BLOCK, 4);
    honest.join = vec![sspec.gossip];
    honest.extra = key_flag(&old_key);
    let mut honest_proc = honest.spawn();
    let mut rogue = shoal_e2e::AgentSpec::on_loopback(root, BLOCK, 5);
    rogue.join = vec![sspec.gossip];
    let _rogue_proc = rogue.spawn();
    let register = |api: SocketAddr, id: &str, ip: &str| {
        let addr = format!("http://{api}");
        let args = [
            "register",
            "--addr",
            &addr,
            "--namespace",
            "apps.local",
            "--service",
            "web",
            "--instance-id",
            id,
            "--address",
            ip,
            "--port",
            "80",
        ];
        wait_for("a registration", Duration::from_secs(30), || {
            let out = shoal_e2e::run_shoal(&args, Duration::from_secs(10));
            out.status
                .success()
                .then_some(())
                .ok_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned())
        });
    };
    register(honest.api, "honest", "10.0.0.4");
    register(rogue.api, "rogue", "10.6.6.6");
    let both = vec!["agent-4".to_string(), "server-10".to_string()];
    wait_for(
        "server and honest agent see each other",
        Duration::from_secs(30),
        || {
            let (s, a) = (member_names(sspec.api)?, member_names(honest.api)?);
            (s == both && a == both)
                .then_some(())
                .ok_or_else(|| format!("server sees {s:?}, agent sees {a:?}"))
        },
    );
    wait_for(
        "DNS answers the honest instance",
        Duration::from_secs(30),
        || {
            let a = shoal_e2e::dig(dns, "web.apps.local", "A", &[]).answers;
            (a == ["10.0.0.4"])
                .then_some(())
                .ok_or_else(|| format!("{a:?}"))
        },
    );
    // Twenty gossip rounds later the rogue is still nowhere, and alone in its own view.
    for _ in 0..10 {
        assert_eq!(member_names(sspec.api).unwrap(), both);
        assert_eq!(member_names(honest.api).unwrap(), both);
        assert_eq!(member_names(rogue.api).unwrap(), ["agent-5"]);
        assert_eq!(
            shoal_e2e::dig(dns, "web.apps.local", "A", &[]).answers,
            ["10.0.0.4"]
        );
        std::thread::sleep(Duration::from_millis(400));
    }
    let metrics = http_request(
        sspec.api,
        "GET",
        "/v1/agent/metrics",
        None,
        Duration::from_secs(5),
    )
    .unwrap()
    .body;
    let dropped: u64 = metrics
        .lines()
        .find(|l| {
            l.starts_with("shoal_agent_gossip_datagrams_dropped_total{reason=\"unauthenticated\"}")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no drop counter in:\n{metrics}"));
    assert!(
        dropped >= 5,
        "the server counted {dropped} of the rogue's datagrams"
    );
    let server_log = std::fs::read_to_string(&sspec.log).unwrap_or_default();
    assert!(
        server_log.contains("gossip datagram dropped"),
        "the drop was not logged"
    );

    // Rotation with the CLI, member by member, while a watcher checks both views every 50 ms.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (stop, both, apis) = (stop.clone(), both.clone(), [sspec.api, honest.api]);
        std::thread::spawn(move || {
            let (mut checks, mut short) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for api in apis {
                    match member_names(api) {
                        Ok(n) if n == both => {}
                        other => short.push(format!("{api}: {other:?}")),
                    }
                }
                checks += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            (checks, short)
        })
    };
    let addrs = format!("http://{},{}", sspec.api, honest.url());
    let new = new_key.display().to_string();
    let old = old_key.display().to_string();
    for (op, key) in [("install", &new), ("use", &new), ("remove", &old)] {
        let out = shoal_gossip(&["keyring", op, "--key-file", key, "--addr", &addrs]);
        assert_eq!(out.lines().count(), 2, "{out}");
        std::thread::sleep(Duration::from_secs(2)); // ten gossip rounds on the new state
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (checks, short) = watcher.join().unwrap();
    assert!(checks >= 50, "the watcher ran {checks} times");
    assert!(
        short.is_empty(),
        "views lacked a member during the rotation: {short:?}"
    );
    let listing = shoal_gossip(&["keyring", "list", "--addr", &addrs]);
    let new_fp = shoal_gossip::GossipKey::from_base64(&std::fs::read_to_string(&new_key).unwrap())
        .unwrap()
        .fingerprint();
    for line in listing.lines() {
        assert!(
            line.contains(&format!("\"keys\":[\"{new_fp}\"]")),
            "after the rotation: {line}"
        );
    }
    // Removing the primary is refused, with the reason.
    let out = shoal_e2e::run_shoal(
        &[
            "gossip",
            "keyring",
            "remove",
            "--key-file",
            &new,
            "--addr",
            &addrs,
        ],
        Duration::from_secs(20),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("primary"));

    // A newcomer on the old key is shut out.
    let mut stale = shoal_e2e::AgentSpec::on_loopback(root, BLOCK, 6);
    stale.join = vec![sspec.gossip];
    stale.extra = key_flag(&old_key);
    let _stale_proc = stale.spawn();
    for _ in 0..8 {
        assert_eq!(member_names(sspec.api).unwrap(), both);
        std::thread::sleep(Duration::from_millis(500));
    }
    // The honest agent, restarted with its old flag, keeps the rotated keyring and rejoins.
    honest_proc.terminate(Duration::from_secs(20));
    let honest_proc = honest.spawn();
    wait_for(
        "the restarted agent rejoins on the new key",
        Duration::from_secs(30),
        || {
            let (s, a) = (member_names(sspec.api)?, member_names(honest.api)?);
            (s == both && a == both)
                .then_some(())
                .ok_or_else(|| format!("server sees {s:?}, agent sees {a:?}"))
        },
    );
    assert!(honest_proc.log().contains("not in this member's keyring"));
}

/// Two one-server clusters pointed at each other's gossip (one key, shared seeds: an operator's
/// slip): neither leader's log reaches the other server (an accidental learner add during the
/// start-up race is refused by the stranger and undone); both report the stranger; each keeps
/// its own data. A third server given `--join` without
/// `--bootstrap-expect` never forms a cluster of its own: it ends in exactly one of the two.
#[test]
fn a_server_of_another_cluster_is_never_taken_in() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let mut a = shoal_e2e::ServerSpec::on_loopback(root, BLOCK, 11);
    a.bootstrap_expect = 1;
    let _a = shoal_e2e::ServerProcess::spawn(&a);
    let leads = |spec: &shoal_e2e::ServerSpec| {
        let (api, id) = (spec.api, spec.node_id);
        wait_for("the server leads", Duration::from_secs(30), move || {
            node_status(api)
                .filter(|s| s.leader_id == Some(id))
                .map(|_| ())
                .ok_or_else(|| format!("{:?}", node_status(api)))
        });
    };
    leads(&a);
    let mesh = |api: SocketAddr, name: &str| {
        let r = http_request(
            api,
            "PUT",
            "/v20190125/meshes",
            Some(&json!({ "meshName": name }).to_string()),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(r.code, 200, "{}", r.body);
    };
    mesh(a.api, "only-in-a");
    let mut b = shoal_e2e::ServerSpec::on_loopback(root, BLOCK, 12);
    b.bootstrap_expect = 1; // explicitly a cluster of its own
    b.join = vec![a.gossip];
    let _b = shoal_e2e::ServerProcess::spawn(&b);
    leads(&b);
    mesh(b.api, "only-in-b");
    let log = |spec: &shoal_e2e::ServerSpec| std::fs::read_to_string(&spec.log).unwrap_or_default();
    wait_for(
        "both leaders report the stranger",
        Duration::from_secs(30),
        || {
            let (la, lb) = (log(&a), log(&b));
            let says = |l: &str| l.contains("a server of another cluster is in this gossip pool");
            (says(&la) && says(&lb))
                .then_some(())
                .ok_or_else(|| format!("a reports: {}, b reports: {}", says(&la), says(&lb)))
        },
    );
    let member_ids = |api: SocketAddr| -> Vec<u64> {
        node_status(api)
            .map(|s| s.members.iter().map(|m| m.node_id).collect())
            .unwrap_or_default()
    };
    // The mesh names a server lists (empty while it cannot answer: a newcomer starting).
    let meshes = |api: SocketAddr| -> Vec<String> {
        http_request(
            api,
            "GET",
            "/v20190125/meshes",
            None,
            Duration::from_secs(5),
        )
        .ok()
        .and_then(|r| serde_json::from_str::<Value>(&r.body).ok())
        .and_then(|v| {
            v["meshes"].as_array().map(|ms| {
                ms.iter()
                    .filter_map(|m| m["meshName"].as_str().map(str::to_string))
                    .collect()
            })
        })
        .unwrap_or_default()
    };
    // A leader that saw the other server while it was still new (before it bootstrapped) may
    // have added it as a learner; the learner refused every RPC (another cluster's id), so
    // nothing of it was overwritten, and the leader drops it once it announces its cluster.
    wait_for(
        "each cluster is its own server alone",
        Duration::from_secs(20),
        || {
            let (ia, ib) = (member_ids(a.api), member_ids(b.api));
            (ia == [11] && ib == [12])
                .then_some(())
                .ok_or_else(|| format!("a: {ia:?}, b: {ib:?}"))
        },
    );
    for _ in 0..6 {
        assert_eq!(member_ids(a.api), [11]);
        assert_eq!(member_ids(b.api), [12]);
        assert_eq!(meshes(a.api), ["only-in-a"]);
        assert_eq!(meshes(b.api), ["only-in-b"]);
        std::thread::sleep(Duration::from_millis(500));
    }
    // A newcomer with --join and no --bootstrap-expect never forms a cluster of its own. In a
    // pool two clusters share, whichever leader reaches it first takes it in (it takes that
    // cluster's id from the first RPC); it then holds exactly that cluster's data, and the
    // other cluster, whose RPCs it refuses, drops it once it announces its cluster.
    let mut c = shoal_e2e::ServerSpec::on_loopback(root, BLOCK, 13);
    c.join = vec![a.gossip];
    let mut args = c.args();
    let at = args.iter().position(|x| x == "--bootstrap-expect").unwrap();
    args.drain(at..at + 2);
    let _c = Process::spawn("server 13", &shoal_bin(), &args, &c.log);
    let joined = wait_for(
        "the newcomer settles in exactly one cluster, with its data",
        Duration::from_secs(60),
        || {
            let (ia, ib, mc) = (member_ids(a.api), member_ids(b.api), meshes(c.api));
            match (ia.as_slice(), ib.as_slice(), mc.as_slice()) {
                ([11, 13], [12], [m]) if m == "only-in-a" => Ok("a"),
                ([11], [12, 13], [m]) if m == "only-in-b" => Ok("b"),
                _ => Err(format!("a: {ia:?}, b: {ib:?}, newcomer holds {mc:?}")),
            }
        },
    );
    println!("the newcomer joined cluster {joined}");
    assert_eq!(meshes(a.api), ["only-in-a"]);
    assert_eq!(meshes(b.api), ["only-in-b"]);
    assert_ne!(
        std::fs::read_to_string(a.data_dir.join("raft").join("cluster.json")).unwrap(),
        std::fs::read_to_string(b.data_dir.join("raft").join("cluster.json")).unwrap(),
        "the two clusters have different ids"
    );
}

/// Server `id` (one member) with a CA made by `shoal tls ca create` in `root/pki`, its own
/// certificate from it, and `--tls-ca-key` so that it imports the CA; started with `extra`
/// flags, and waited for until the CA is in the replicated state. Returns its spec and its
/// process (the files are in `root/pki`).
fn server_importing_ca(
    root: &std::path::Path,
    id: u64,
    extra: &[&str],
) -> (shoal_e2e::ServerSpec, shoal_e2e::ServerProcess) {
    let pki = root.join("pki");
    let p = pki.display().to_string();
    shoal_tls(&["tls", "ca", "create", "--dir", &p]);
    let mut sspec = shoal_e2e::ServerSpec::on_loopback(root, BLOCK, id);
    sspec.bootstrap_expect = 1;
    let ip = sspec.api.ip().to_string();
    let name = format!("server-{id}");
    shoal_tls(&[
        "tls", "cert", "create", "--role", "server", "--name", &name, "--ip", &ip, "--ca-dir", &p,
        "--dir", &p,
    ]);
    let f = |file: &str| pki.join(file).display().to_string();
    sspec.extra = vec![
        "--tls-ca".into(),
        f("shoal-ca.pem"),
        "--tls-cert".into(),
        f(&format!("{name}.pem")),
        "--tls-key".into(),
        f(&format!("{name}-key.pem")),
        "--tls-ca-key".into(),
        f("shoal-ca-key.pem"),
    ];
    sspec.extra.extend(extra.iter().map(|x| x.to_string()));
    let server = shoal_e2e::ServerProcess::spawn(&sspec);
    wait_for(
        "the CA is in the replicated state",
        Duration::from_secs(30),
        || {
            let r = http_request(sspec.api, "GET", "/v1/tls/ca", None, Duration::from_secs(2))
                .map_err(|e| e.to_string())?;
            (r.code == 200 && r.body.contains("BEGIN CERTIFICATE"))
                .then_some(())
                .ok_or_else(|| format!("{} {}", r.code, r.body))
        },
    );
    (sspec, server)
}

/// Joining with a token: a server started once with the CA key puts the CA into the replicated
/// state; an operator makes a join token; an agent given only the CA certificate and the token
/// gets its certificate (its key made on its host, 0600) and follows the model over mutual
/// TLS; a restart needs no token. A garbage, a revoked and an expired token are refused with
/// their reasons, and a server cannot join with an agent's token (it gets an agent certificate,
/// which a server refuses to run with).
#[test]
fn members_join_with_a_token_and_their_keys_stay_home() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let (sspec, _server) = server_importing_ca(root, 14, &[]);
    let pki = root.join("pki");
    let f = |name: &str| pki.join(name).display().to_string();
    let url = format!("http://{}", sspec.api);
    let token = |role: &str, ttl: &str| -> String {
        let out = shoal_e2e::run_shoal(
            &[
                "tls",
                "token",
                "create",
                "--role",
                role,
                "--ttl-seconds",
                ttl,
                "--addr",
                &url,
            ],
            Duration::from_secs(20),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let good = token("agent", "3600");
    let token_file = |name: &str, text: &str| {
        let path = root.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let joiner = |n: u8, token_path: String| {
        let mut a = shoal_e2e::AgentSpec::on_loopback(root, BLOCK, n);
        a.join = vec![sspec.gossip];
        a.extra = vec![
            "--tls-ca".into(),
            f("shoal-ca.pem"),
            "--join-token-file".into(),
            token_path,
            "--join-api".into(),
            url.clone(),
        ];
        a
    };

    // The good token: a certificate, the model over mutual TLS.
    let agent = joiner(7, token_file("good.token", &good));
    let mut agent_proc = agent.spawn();
    following_over_tls(agent.api);
    let key = agent.data_dir.join("tls").join("agent-key.pem");
    let cert = agent.data_dir.join("tls").join("agent.pem");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let key_pem = std::fs::read_to_string(&key).unwrap();
    let server_log = std::fs::read_to_string(&sspec.log).unwrap_or_default();
    assert!(
        server_log.contains("a member joins with a token"),
        "the join was not logged"
    );
    assert!(
        !server_log.contains(key_pem.lines().nth(1).unwrap()),
        "the key reached the server"
    );
    // A restart with the token file gone keeps the certificate.
    agent_proc.terminate(Duration::from_secs(20));
    std::fs::remove_file(root.join("good.token")).unwrap();
    let before = std::fs::read(&cert).unwrap();
    let _agent_proc = agent.spawn();
    following_over_tls(agent.api);
    assert_eq!(std::fs::read(&cert).unwrap(), before);

    // Refusals, each with its reason and a non-zero exit, nothing written.
    let revoked = token("agent", "3600");
    let id = revoked.split('.').next().unwrap().to_string();
    let out = shoal_e2e::run_shoal(
        &["tls", "token", "revoke", &id, "--addr", &url],
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expired = token("agent", "1");
    std::thread::sleep(Duration::from_secs(2));
    let cases = [
        (
            8,
            token_file("garbage.token", "not-a-token"),
            "reads <16 hex digits>",
        ),
        (
            9,
            token_file("revoked.token", &revoked),
            "unknown or revoked",
        ),
        (10, token_file("expired.token", &expired), "expired"),
    ];
    for (n, path, reason) in cases {
        let spec = joiner(n, path);
        let mut proc = spec.spawn();
        let status = wait_for("the refused agent exits", Duration::from_secs(30), || {
            proc.exited().ok_or_else(|| tail(&proc.log(), 5))
        });
        assert!(!status.success());
        assert!(
            proc.log().contains(reason),
            "agent {n}: {}",
            tail(&proc.log(), 10)
        );
        assert!(!spec.data_dir.join("tls").join("agent.pem").exists());
    }

    // A server with an agent's token gets an agent certificate and refuses to run with it.
    let mut s2 = shoal_e2e::ServerSpec::on_loopback(root, BLOCK, 15);
    s2.join = vec![sspec.gossip];
    s2.extra = vec![
        "--tls-ca".into(),
        f("shoal-ca.pem"),
        "--join-token-file".into(),
        token_file("agent-for-server.token", &token("agent", "3600")),
        "--join-api".into(),
        url.clone(),
    ];
    let mut args = s2.args();
    let at = args.iter().position(|x| x == "--bootstrap-expect").unwrap();
    args.drain(at..at + 2);
    let mut s2_proc = Process::spawn("server 15", &shoal_bin(), &args, &s2.log);
    let status = wait_for(
        "the server with an agent token exits",
        Duration::from_secs(30),
        || s2_proc.exited().ok_or_else(|| tail(&s2_proc.log(), 5)),
    );
    assert!(!status.success());
    assert!(
        s2_proc.log().to_lowercase().contains("server"),
        "{}",
        tail(&s2_proc.log(), 10)
    );
}

/// Waits (30 s at most) until the agent whose API is `api` follows a server over mutual TLS.
fn following_over_tls(api: SocketAddr) {
    wait_for(
        "the agent follows the server over mutual TLS",
        Duration::from_secs(30),
        || {
            let r = http_request(api, "GET", "/v1/agent/status", None, Duration::from_secs(2))
                .map_err(|e| e.to_string())?;
            let v: Value = serde_json::from_str(&r.body).map_err(|e| e.to_string())?;
            v["server"]
                .as_str()
                .filter(|s| s.starts_with("https://"))
                .map(|_| ())
                .ok_or_else(|| r.body.clone())
        },
    );
}

/// Waits (40 s at most) until the certificate file `cert` no longer holds `first`.
fn wait_renewed(what: &str, cert: &std::path::Path, first: &str, member: &Process) {
    wait_for(what, Duration::from_secs(40), || {
        let now = std::fs::read_to_string(cert).map_err(|e| e.to_string())?;
        (now != first)
            .then_some(())
            .ok_or_else(|| tail(&member.log(), 5))
    });
}

/// Automatic renewal: with certificates that live 20 seconds, a joined agent renews its own
/// (same key, new certificate, saved) after two thirds of its life and puts it in force without
/// a restart: after the first certificate has expired, the server restarts, and the agent's new
/// connection over mutual TLS succeeds with the renewed one.
#[test]
fn a_joined_member_renews_its_certificate_before_it_expires() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let (sspec, server) = server_importing_ca(root, 16, &["--tls-cert-ttl-seconds", "20"]);
    let pki = root.join("pki");
    let f = |name: &str| pki.join(name).display().to_string();
    let url = format!("http://{}", sspec.api);
    let token = wait_for("a join token", Duration::from_secs(30), || {
        let out = shoal_e2e::run_shoal(
            &["tls", "token", "create", "--role", "agent", "--addr", &url],
            Duration::from_secs(20),
        );
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
            .ok_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned())
    });
    let token_path = root.join("agent.token");
    std::fs::write(&token_path, token).unwrap();
    let mut agent = shoal_e2e::AgentSpec::on_loopback(root, BLOCK, 11);
    agent.join = vec![sspec.gossip];
    agent.extra = vec![
        "--tls-ca".into(),
        f("shoal-ca.pem"),
        "--join-token-file".into(),
        token_path.display().to_string(),
        "--join-api".into(),
        url.clone(),
    ];
    let agent_proc = agent.spawn();
    let status = |api: SocketAddr| -> Result<Value, String> {
        let r = http_request(api, "GET", "/v1/agent/status", None, Duration::from_secs(2))
            .map_err(|e| e.to_string())?;
        serde_json::from_str(&r.body).map_err(|e| e.to_string())
    };
    wait_for(
        "the agent follows over mutual TLS",
        Duration::from_secs(30),
        || {
            let v = status(agent.api)?;
            v["server"]
                .as_str()
                .filter(|s| s.starts_with("https://"))
                .map(|_| ())
                .ok_or_else(|| v.to_string())
        },
    );
    let cert = agent.data_dir.join("tls").join("agent.pem");
    let key = agent.data_dir.join("tls").join("agent-key.pem");
    let first = std::fs::read_to_string(&cert).unwrap();
    let key_before = std::fs::read(&key).unwrap();
    let joined = std::time::Instant::now();
    wait_renewed(
        "the agent renews its certificate",
        &cert,
        &first,
        &agent_proc,
    );
    let renewed_after = joined.elapsed();
    assert!(
        renewed_after >= Duration::from_secs(8),
        "renewed after {renewed_after:?}, long before two thirds of a 25 s lifetime"
    );
    assert_eq!(std::fs::read(&key).unwrap(), key_before, "the key is kept");
    assert!(agent_proc
        .log()
        .contains("certificate renewed and in force"));
    // Past the first certificate's end, make the agent connect anew: only the renewed one can.
    let remaining = Duration::from_secs(22).saturating_sub(joined.elapsed());
    std::thread::sleep(remaining);
    let opened_before = status(agent.api).unwrap()["streams_opened"]
        .as_u64()
        .unwrap();
    drop(server);
    let _server = shoal_e2e::ServerProcess::spawn(&sspec);
    wait_for(
        "the agent follows the restarted server with the renewed certificate",
        Duration::from_secs(40),
        || {
            let v = status(agent.api)?;
            let opened = v["streams_opened"].as_u64().unwrap_or(0);
            (opened > opened_before && v["server"].as_str().is_some())
                .then_some(())
                .ok_or_else(|| v.to_string())
        },
    );
}

/// The README's secure recipe: the first server founds the cluster's trust (`--tls-bootstrap`:
/// the CA is made when it bootstraps, put into the replicated state, and its key's file
/// deleted once that commits); the operator bootstraps an API key and makes join tokens with
/// the shoal CLI, which signs with the AWS profile that bootstrap wrote; two more servers and
/// an agent join with tokens and never see a CA key. The three servers vote, a write through
/// one (the AWS CLI) is read through another (the shoal CLI), the agent follows over mutual
/// TLS, the first server renews its own certificate through its own API, and after the first
/// certificate has expired it restarts on the renewed one, with the same CA, and leads again.
#[test]
fn a_cluster_founded_with_tls_bootstrap_grows_by_tokens() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let gossip_key = root.join("gossip.key");
    let keygen = shoal_e2e::run_shoal(&["gossip", "keygen"], Duration::from_secs(20));
    assert!(keygen.status.success());
    std::fs::write(&gossip_key, &keygen.stdout).unwrap();
    let gk = gossip_key.display().to_string();
    let mut s1 = shoal_e2e::ServerSpec::on_loopback(root, BLOCK, 17);
    s1.bootstrap_expect = 1;
    s1.extra = [
        "--tls-bootstrap",
        "--api-auth",
        "--api-tls",
        "--gossip-key-file",
        &gk,
        "--tls-cert-ttl-seconds",
        "30",
    ]
    .map(String::from)
    .to_vec();
    let mut p1 = shoal_e2e::ServerProcess::spawn(&s1);
    let tls_dir = s1.data_dir.join("tls");
    let ca = tls_dir.join("ca.pem");
    let url1 = format!("https://{}", s1.api);
    let creds = root.join("credentials");
    // The shoal CLI as an operator runs it: trusting the CA, signing with the profile.
    let shoal = |args: &[&str], profile: bool| {
        let mut c = std::process::Command::new(shoal_bin());
        c.args(args)
            .env("AWS_CA_BUNDLE", &ca)
            .env("AWS_SHARED_CREDENTIALS_FILE", &creds)
            .env("HOME", root)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_PROFILE");
        if profile {
            c.env("AWS_PROFILE", "shoal");
        }
        let out = c.output().expect("run shoal");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    let creds_arg = creds.display().to_string();
    wait_for(
        "an API key bootstrapped over HTTPS",
        Duration::from_secs(30),
        || {
            if !ca.exists() {
                return Err(format!("no {}: {}", ca.display(), tail(&p1.log(), 5)));
            }
            let (ok, _, err) = shoal(
                &[
                    "acl",
                    "bootstrap",
                    "--addr",
                    &url1,
                    "--credentials-file",
                    &creds_arg,
                ],
                false,
            );
            ok.then_some(()).ok_or(err)
        },
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&tls_dir.join("server-key.pem")), 0o600);
    wait_for(
        "the CA key's file is deleted once the CA is replicated",
        Duration::from_secs(30),
        || {
            (!tls_dir.join("ca-key.pem").exists())
                .then_some(())
                .ok_or_else(|| tail(&p1.log(), 5))
        },
    );
    let ca_pem = std::fs::read_to_string(&ca).unwrap();
    let token = |role: &str| {
        let (ok, out, err) = shoal(
            &["tls", "token", "create", "--role", role, "--addr", &url1],
            true,
        );
        assert!(ok, "token create --role {role}: {err}");
        let path = root.join(format!("{role}.token"));
        std::fs::write(&path, out.trim()).unwrap();
        path.display().to_string()
    };
    let server_token = token("server");
    let agent_token = token("agent");
    let ca_arg = ca.display().to_string();
    // What every joining member is given: the CA certificate, a token, a server, the gossip key.
    let join_flags = |token: &str| -> Vec<String> {
        [
            "--tls-ca",
            &ca_arg,
            "--join-token-file",
            token,
            "--join-api",
            &url1,
            "--gossip-key-file",
            &gk,
        ]
        .map(String::from)
        .to_vec()
    };
    let mut joined = Vec::new();
    for id in [18, 19] {
        let mut s = shoal_e2e::ServerSpec::on_loopback(root, BLOCK, id);
        s.join = vec![s1.gossip];
        s.extra = join_flags(&server_token);
        s.extra.extend(["--api-auth".into(), "--api-tls".into()]);
        let mut args = s.args();
        let at = args.iter().position(|x| x == "--bootstrap-expect").unwrap();
        args.drain(at..at + 2); // joining servers never found a cluster
        std::fs::create_dir_all(&s.data_dir).unwrap();
        let p = Process::spawn(&format!("server {id}"), &shoal_bin(), &args, &s.log);
        joined.push((s, p));
    }
    let three_voters = |url: &str| {
        let (ok, out, err) = shoal(&["status", "--addr", url, "-o", "json"], true);
        if !ok {
            return Err(err);
        }
        let v: Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
        let st = shoal_e2e::NodeStatus::parse(&v).ok_or_else(|| out.clone())?;
        let voters = st
            .members
            .iter()
            .filter(|m| m.healthy && (m.role == "leader" || m.role == "follower"))
            .count();
        (voters == 3).then_some(()).ok_or(out)
    };
    wait_for(
        "two servers joined by token vote beside the first",
        Duration::from_secs(60),
        || three_voters(&url1),
    );
    for (s, _) in &joined {
        let dir = s.data_dir.join("tls");
        assert!(dir.join("server.pem").exists());
        assert!(
            !dir.join("ca-key.pem").exists(),
            "a joined server holds no CA key"
        );
    }
    // A write through server 18 (the AWS CLI, the profile), read through server 19.
    let url = |s: &shoal_e2e::ServerSpec| format!("https://{}", s.api);
    let (ok, _, err) = aws_profile_at(
        &url(&joined[0].0),
        &creds,
        &[
            "--profile",
            "shoal",
            "--ca-bundle",
            &ca_arg,
            "appmesh",
            "create-mesh",
            "--mesh-name",
            "founded",
        ],
    );
    assert!(ok, "create-mesh through a joined server: {err}");
    let (ok, out, err) = shoal(&["get", "meshes", "--addr", &url(&joined[1].0)], true);
    assert!(
        ok && out.contains("founded"),
        "shoal get through the other: {out} {err}"
    );
    let (ok, _, err) = shoal(&["get", "meshes", "--addr", &url(&joined[1].0)], false);
    assert!(
        !ok && err.contains("MissingAuthenticationToken"),
        "without the profile the CLI signs nothing and is refused: {err}"
    );
    // An agent joins with its token and follows over mutual TLS.
    let mut agent = shoal_e2e::AgentSpec::on_loopback(root, BLOCK, 12);
    agent.join = vec![s1.gossip];
    agent.extra = join_flags(&agent_token);
    let _agent_proc = agent.spawn();
    following_over_tls(agent.api);
    // The founding server renews its own certificate (30 s lifetime) through its own API.
    let cert = tls_dir.join("server.pem");
    let first = std::fs::read_to_string(&cert).unwrap();
    let key_before = std::fs::read(tls_dir.join("server-key.pem")).unwrap();
    let first_end = shoal_pki::validity_of(&first).map_or(0, |(end, _)| end);
    wait_renewed(
        "the founding server renews its certificate",
        &cert,
        &first,
        &p1,
    );
    assert_eq!(
        std::fs::read(tls_dir.join("server-key.pem")).unwrap(),
        key_before
    );
    assert!(p1.log().contains("certificate renewed and in force"));
    // Past the first certificate's end, restart it: its peers' new handshakes need the
    // renewed one, and the CA stays the one it made.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    std::thread::sleep(Duration::from_secs(first_end.saturating_sub(now) + 1));
    p1.terminate(Duration::from_secs(20));
    let p1 = shoal_e2e::ServerProcess::spawn(&s1);
    // (Only the leader sees every member's health: ask each server.)
    let urls = [url1.clone(), url(&joined[0].0), url(&joined[1].0)];
    wait_for(
        "the restarted founder is a healthy voter again",
        Duration::from_secs(60),
        || {
            let answers: Vec<String> = urls.iter().filter_map(|u| three_voters(u).err()).collect();
            (answers.len() < urls.len())
                .then_some(())
                .ok_or_else(|| answers.join("\n"))
        },
    );
    assert_eq!(std::fs::read_to_string(&ca).unwrap(), ca_pem, "same CA");
    assert!(!tls_dir.join("ca-key.pem").exists());
    let (ok, _, err) = shoal(
        &["tls", "token", "create", "--role", "agent", "--addr", &url1],
        true,
    );
    assert!(ok, "the restarted founder serves and signs: {err}");
    drop(p1);
}
