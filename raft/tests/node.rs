//! End-to-end tests of a single-server [`RaftNode`]: writes, watch events, restarts with and
//! without snapshots.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use shoal_model::api::MeshSpec;
use shoal_model::{Change, Command, ErrorKind, Kind, Model, PutMode, ResourceKey, Spec, Stamp};
use shoal_raft::{Config, RaftNode, Role, WatchEvent};
use tokio::sync::broadcast;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(60);

fn config(dir: &Path, snapshot_after_logs: u64) -> Config {
    let mut cfg = Config::new(1, dir, "127.0.0.1:7071", "127.0.0.1:7070");
    // Fast elections: a single server has nobody to wait for.
    cfg.heartbeat_ms = 50;
    cfg.election_timeout_min_ms = 150;
    cfg.election_timeout_max_ms = 300;
    cfg.snapshot_after_logs = snapshot_after_logs;
    cfg
}

fn put_mesh(name: &str, mode: PutMode) -> Command {
    Command::Put {
        key: ResourceKey::mesh(name),
        spec: Box::new(Spec::Mesh(MeshSpec {
            egress_filter: None,
            service_discovery: None,
        })),
        mode,
        tags: vec![],
        client_token: None,
        stamp: Stamp {
            now: 1_700_000_000.0,
            uid: format!("uid-{name}"),
            account: "123456789012".into(),
            region: "us-east-1".into(),
        },
    }
}

async fn start(cfg: Config) -> RaftNode {
    let node = RaftNode::open(cfg).await.expect("open");
    node.bootstrap_single().await.expect("bootstrap");
    node.wait_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    node.read_index().await.expect("read index");
    node
}

async fn next_event(rx: &mut broadcast::Receiver<Arc<WatchEvent>>) -> Arc<WatchEvent> {
    timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("event in time")
        .expect("event")
}

fn mesh_names(m: &Model) -> Vec<String> {
    m.iter()
        .filter(|r| r.key.kind == Kind::Mesh)
        .map(|r| r.key.name.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_watch_restart() {
    timeout(LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let node = start(config(dir.path(), 5000)).await;
        let mut rx = node.subscribe();

        let mut indexes = Vec::new();
        for name in ["alpha", "beta", "gamma"] {
            let w = node
                .write(put_mesh(name, PutMode::Create))
                .await
                .expect("write");
            let r = w.outcome.expect("created").into_resource().unwrap();
            assert_eq!(r.key, ResourceKey::mesh(name));
            assert_eq!(r.meta.version, 1);
            indexes.push(w.index);
        }
        assert!(indexes.windows(2).all(|w| w[0] < w[1]), "{indexes:?}");

        // A failed check is committed but changes nothing and publishes nothing.
        let dup = node
            .write(put_mesh("alpha", PutMode::Create))
            .await
            .expect("write");
        assert_eq!(dup.outcome.unwrap_err().kind, ErrorKind::Conflict);

        let w = node
            .write(put_mesh("beta", PutMode::Update))
            .await
            .expect("write");
        assert_eq!(
            w.outcome
                .expect("updated")
                .into_resource()
                .unwrap()
                .meta
                .version,
            2
        );
        indexes.push(w.index);

        let mut revisions = Vec::new();
        for (i, name) in ["alpha", "beta", "gamma", "beta"].into_iter().enumerate() {
            let ev = next_event(&mut rx).await;
            let [Change::Put(r)] = ev.changes.as_slice() else {
                panic!("expected a put, got {ev:?}")
            };
            assert_eq!(r.key.name, name);
            assert_eq!(ev.revision, indexes[i]);
            revisions.push(ev.revision);
        }
        assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{revisions:?}");
        assert!(rx.try_recv().is_err(), "no event for the failed write");

        let before = node.read(|m| m.clone());
        assert_eq!(before.revision(), *indexes.last().unwrap());
        assert_eq!(mesh_names(&before), ["alpha", "beta", "gamma"]);

        let st = node.status();
        assert_eq!(st.node_id, 1);
        assert_eq!(st.leader_id, Some(1));
        assert_eq!(st.revision, before.revision());
        assert!(st.applied_index >= dup.index && st.commit_index >= st.applied_index);
        assert_eq!(st.members.len(), 1);
        assert_eq!(st.members[0].role, Role::Leader);
        assert_eq!(st.members[0].raft_addr, "127.0.0.1:7071");
        assert_eq!(st.members[0].api_addr, "127.0.0.1:7070");
        assert!(st.members[0].healthy);
        let term = st.term;

        node.shutdown().await.expect("shutdown");
        drop(node);

        // Reopen: bootstrapping again must change nothing.
        let node = RaftNode::open(config(dir.path(), 5000))
            .await
            .expect("reopen");
        node.bootstrap_single().await.expect("bootstrap is a no-op");
        node.wait_leader(Duration::from_secs(10))
            .await
            .expect("leader");
        node.read_index().await.expect("read index");
        let after = node.read(|m| m.clone());
        assert_eq!(after, before);
        assert_eq!(after.revision(), before.revision());
        let st = node.status();
        // A lone voter may resume its committed vote without a new election.
        assert!(st.term >= term);
        assert_eq!(st.leader_id, Some(1));
        assert_eq!(st.members.len(), 1, "no second initialization");

        // And it keeps working.
        let w = node
            .write(put_mesh("delta", PutMode::Create))
            .await
            .expect("write");
        assert!(w.outcome.is_ok());
        assert!(w.index > before.revision());
        node.shutdown().await.expect("shutdown");
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_purge_restart() {
    timeout(LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let node = start(config(dir.path(), 5)).await;

        for i in 0..8 {
            let w = node
                .write(put_mesh(&format!("m{i:02}"), PutMode::Create))
                .await
                .expect("write");
            assert!(w.outcome.is_ok());
        }
        // LogsSinceLast(5) has built a snapshot by now, or will shortly; force one covering
        // every write as well. openraft drops a trigger that arrives while the automatic
        // snapshot is still being built, so trigger again until one covers index 8.
        let mut built = None;
        for _ in 0..10 {
            node.raft().trigger().snapshot().await.expect("trigger");
            if let Ok(m) = node
                .raft()
                .wait(Some(Duration::from_secs(1)))
                .metrics(|m| m.snapshot.is_some_and(|s| s.index >= 8), "snapshot")
                .await
            {
                built = Some(m);
                break;
            }
        }
        let m = built.expect("a snapshot covering every write within 10 triggers");
        let snap = m.snapshot.unwrap();
        // Drop the log the snapshot covers, so the restart must start from the snapshot.
        node.raft()
            .trigger()
            .purge_log(snap.index)
            .await
            .expect("purge");
        node.raft()
            .wait(Some(Duration::from_secs(10)))
            .purged(Some(snap), "purged")
            .await
            .expect("log purged");

        for i in 8..11 {
            let w = node
                .write(put_mesh(&format!("m{i:02}"), PutMode::Create))
                .await
                .expect("write");
            assert!(w.outcome.is_ok());
        }
        let before = node.read(|m| m.clone());
        assert_eq!(mesh_names(&before).len(), 11);
        node.shutdown().await.expect("shutdown");
        drop(node);

        let node = RaftNode::open(config(dir.path(), 5)).await.expect("reopen");
        // Restored from the snapshot plus the committed log after it, before any election.
        assert!(node.read(|m| m.revision()) >= snap.index);
        node.bootstrap_single().await.expect("bootstrap is a no-op");
        node.wait_leader(Duration::from_secs(10))
            .await
            .expect("leader");
        node.read_index().await.expect("read index");
        let after = node.read(|m| m.clone());
        assert_eq!(after, before);
        assert_eq!(mesh_names(&after).len(), 11);

        let w = node
            .write(put_mesh("m11", PutMode::Create))
            .await
            .expect("write");
        assert!(w.outcome.is_ok());
        node.shutdown().await.expect("shutdown");
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_node_id_is_refused() {
    timeout(LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let node = start(config(dir.path(), 5000)).await;
        node.shutdown().await.expect("shutdown");
        drop(node);
        let mut cfg = config(dir.path(), 5000);
        cfg.node_id = 2;
        let err = RaftNode::open(cfg).await.err().expect("refused");
        assert!(
            matches!(
                err,
                shoal_raft::Error::NodeIdMismatch {
                    stored: 1,
                    configured: 2,
                    ..
                }
            ),
            "{err}"
        );
    })
    .await
    .expect("test finished in time");
}

/// Set in the child process of [`acknowledged_writes_survive_kill_9`].
const CRASH_DIR_ENV: &str = "SHOAL_RAFT_CRASH_CHILD_DIR";

/// The child of [`acknowledged_writes_survive_kill_9`]: writes meshes and prints `ACK name`
/// once each write is acknowledged, until killed. Does nothing in a normal test run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Ok(dir) = std::env::var(CRASH_DIR_ENV) else {
        return;
    };
    let node = start(config(Path::new(&dir), 7)).await;
    // Bounded, in case the parent never kills us.
    for i in 0..5000 {
        let name = format!("crash-{i:04}");
        let w = node
            .write(put_mesh(&name, PutMode::Create))
            .await
            .expect("write");
        assert!(w.outcome.is_ok());
        println!("ACK {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    timeout(LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CRASH_DIR_ENV, dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the child");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut acked = Vec::new();
        while acked.len() < 40 {
            let line = lines.next_line().await.unwrap().expect("child ended early");
            if let Some(name) = line.strip_prefix("ACK ") {
                acked.push(name.to_string());
            }
        }
        // SIGKILL: no destructor runs.
        child.start_kill().expect("kill");
        child.wait().await.expect("reap");
        // Whatever the child printed before dying was acknowledged too.
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(name) = line.strip_prefix("ACK ") {
                acked.push(name.to_string());
            }
        }

        let node = start(config(dir.path(), 7)).await;
        let names = node.read(mesh_names);
        for name in &acked {
            assert!(
                names.contains(name),
                "acknowledged mesh {name} lost; have {names:?}"
            );
        }
        node.shutdown().await.expect("shutdown");
    })
    .await
    .expect("test finished in time");
}

#[test]
fn errors_are_send_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<shoal_raft::Error>();
    check::<shoal_raft::WriteError>();
    check::<RaftNode>();
}

/// A leader restarted does not lead its old term again: it stands for election, and the new
/// term's first entry commits everything before it. This is what makes an unsynced committed
/// id safe (regression: with its vote restored committed, a restarted leader led its old term
/// at once and served ReadIndex reads at a committed id older than its acknowledged writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_is_elected_in_a_new_term_and_reads_every_write() {
    timeout(LIMIT, async {
        let dir = tempfile::tempdir().unwrap();
        let node = start(config(dir.path(), 5000)).await;
        for name in ["one", "two", "three"] {
            node.write(put_mesh(name, PutMode::Create))
                .await
                .expect("write")
                .outcome
                .expect("applied");
        }
        let before = node.status().term;
        node.shutdown().await.unwrap();
        drop(node);

        let node = RaftNode::open(config(dir.path(), 5000))
            .await
            .expect("reopen");
        node.wait_leader(Duration::from_secs(10))
            .await
            .expect("leader");
        node.read_index().await.expect("read index");
        let after = node.status().term;
        assert!(
            after > before,
            "the restarted leader leads a new term ({after} after {before})"
        );
        let names = node.read(mesh_names);
        assert_eq!(names, ["one", "three", "two"]);
        node.shutdown().await.unwrap();
    })
    .await
    .expect("within the limit");
}
