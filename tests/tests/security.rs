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
fn lone_server(root: &std::path::Path, last: u8) -> (Process, SocketAddr, SocketAddr) {
    let ip = std::net::IpAddr::from([127, 0, BLOCK, last]);
    let api = SocketAddr::new(ip, 7070);
    let raft = SocketAddr::new(ip, 7071);
    let data = root.join("data");
    let args = [
        "server".to_string(),
        "--node-id".into(),
        "1".into(),
        "--data-dir".into(),
        data.display().to_string(),
        "--api".into(),
        api.to_string(),
        "--raft".into(),
        raft.to_string(),
    ];
    let p = Process::spawn("server 1", &shoal_bin(), &args, &root.join("server.log"));
    (p, api, raft)
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
            payload: serde_json::to_vec(&forged).expect("JSON"),
            chunk: Vec::new(),
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
