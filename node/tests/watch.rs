//! The watch stream against a real in-process server: snapshot, ordered changes, resume
//! from a revision (backlog, not snapshot), resync from an unknown revision, and thousands
//! of concurrent watchers.

use std::time::{Duration, Instant};

use serde_json::json;
use shoal::client::{Client, Doc};
use shoal::server::{self, Running, ServerConfig};
use shoal::watch::{WatchUpdate, Watcher};
use tokio::sync::oneshot;

struct TestServer {
    api: String,
    grpc: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn start() -> TestServer {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("SHOAL_LOG"))
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::new(1, dir.path().to_path_buf());
    cfg.api = "127.0.0.1:0".parse().unwrap();
    cfg.raft = "127.0.0.1:0".parse().unwrap();
    cfg.heartbeat_ms = 50;
    cfg.election_timeout_min_ms = 150;
    cfg.election_timeout_max_ms = 300;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (ready_tx, ready_rx) = oneshot::channel::<Running>();
    let task = tokio::spawn(server::run(
        cfg,
        async move {
            let _ = stop_rx.await;
        },
        move |running| {
            let _ = ready_tx.send(running);
            tokio::spawn(async {})
        },
    ));
    let running = tokio::time::timeout(Duration::from_secs(30), ready_rx)
        .await
        .expect("server ready within 30 s")
        .expect("server started");
    TestServer {
        api: format!("http://{}", running.api_addr),
        grpc: format!("http://{}", running.grpc_addr),
        stop: Some(stop_tx),
        task,
        _dir: dir,
    }
}

impl TestServer {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

async fn apply(api: &str, doc: serde_json::Value) {
    Client::new(api)
        .unwrap()
        .apply(&Doc::from_json(&doc, "test").unwrap())
        .await
        .unwrap();
}

fn node(name: &str) -> serde_json::Value {
    json!({"meshName": "m", "virtualNodeName": name, "spec": {"listeners": [{"portMapping": {"port": 80, "protocol": "http"}}]}})
}

/// The next update that is not a progress message, within 10 s.
async fn next_change(w: &mut Watcher) -> WatchUpdate {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let u = tokio::time::timeout(left, w.next())
            .await
            .expect("an update within 10 s")
            .unwrap()
            .expect("stream open");
        if !matches!(u, WatchUpdate::Progress { .. }) {
            return u;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_changes_then_resume() {
    let s = start().await;
    apply(&s.api, json!({"meshName": "m"})).await;
    apply(&s.api, node("a")).await;

    let mut w = Watcher::connect(&s.grpc, 0, None).await.unwrap();
    let WatchUpdate::Snapshot {
        revision: snap_rev,
        resources,
    } = next_change(&mut w).await
    else {
        panic!("a fresh watcher starts with a snapshot")
    };
    let names: Vec<_> = resources.iter().map(|r| r.key.name.as_str()).collect();
    assert_eq!(names, ["m", "a"]);

    apply(&s.api, node("b")).await;
    apply(&s.api, node("c")).await;
    let mut last = snap_rev;
    for expect in ["b", "c"] {
        let WatchUpdate::Changes { revision, changes } = next_change(&mut w).await else {
            panic!("changes")
        };
        assert!(revision > last, "revisions grow: {revision} after {last}");
        last = revision;
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].resource().key.name, expect);
    }
    drop(w);

    // Written while nobody watches; a watcher resuming from `last` gets exactly this.
    apply(&s.api, node("d")).await;
    let mut w = Watcher::connect(&s.grpc, last, None).await.unwrap();
    let WatchUpdate::Changes { revision, changes } = next_change(&mut w).await else {
        panic!("a resume within the history is a backlog, not a snapshot")
    };
    assert!(revision > last);
    assert_eq!(changes[0].resource().key.name, "d");

    // A revision this server never had: resync with a snapshot of everything.
    let mut w = Watcher::connect(&s.grpc, 1_000_000, None).await.unwrap();
    let WatchUpdate::Snapshot {
        resources,
        revision: r2,
    } = next_change(&mut w).await
    else {
        panic!("resync")
    };
    assert_eq!(resources.len(), 5);
    assert_eq!(r2, revision);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_watchers_all_see_a_change() {
    let s = start().await;
    apply(&s.api, json!({"meshName": "m"})).await;
    let n = 2000;
    let t = Instant::now();
    let mut connecting = Vec::with_capacity(n);
    // At most 100 connects in flight: a listen backlog is finite, as on a real server.
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(100));
    for _ in 0..n {
        let grpc = s.grpc.clone();
        let gate = gate.clone();
        connecting.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            let mut w = Watcher::connect(&grpc, 0, None).await.unwrap();
            assert!(matches!(
                next_change(&mut w).await,
                WatchUpdate::Snapshot { .. }
            ));
            w
        }));
    }
    let mut watchers = Vec::with_capacity(n);
    for c in connecting {
        watchers.push(c.await.unwrap());
    }
    println!(
        "{n} watchers connected and got their snapshot in {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    apply(&s.api, node("fanout")).await;
    let mut tasks = Vec::new();
    for mut w in watchers {
        tasks.push(tokio::spawn(async move {
            match next_change(&mut w).await {
                WatchUpdate::Changes { changes, .. } => changes[0].resource().key.name.clone(),
                other => panic!("expected changes, got {other:?}"),
            }
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), "fanout");
    }
    println!("{n} watchers received one change in {:?}", t.elapsed());
    s.stop().await;
}

/// Waits (at most 10 s) until the agent's model holds virtual node `name`.
async fn agent_has(state: &shoal::agent::AgentState, name: &str) {
    let key = shoal_model::ResourceKey::in_mesh("m", shoal_model::Kind::VirtualNode, name);
    let mut rx = state.model.clone();
    tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|m| m.get(&key).is_some()),
    )
    .await
    .unwrap_or_else(|_| panic!("the agent never saw {name}"))
    .unwrap();
}

/// An agent whose model cache cannot be written goes on serving the models the servers commit
/// (holding its proxies back would be worse), and says so in its status until a write succeeds
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_cache_cannot_be_written_serves_on_and_says_so() {
    let s = start().await;
    apply(&s.api, json!({"meshName": "m"})).await;
    apply(&s.api, node("first")).await;
    let dir = tempfile::tempdir().unwrap();
    // Gossip needs a fixed port: take a free one.
    let gossip = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cfg = shoal::agent::AgentConfig::new(dir.path().to_path_buf(), gossip);
    cfg.api = None;
    cfg.dns = None;
    cfg.xds = None;
    cfg.servers = vec![s.grpc.clone()];
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (ready_tx, ready_rx) = oneshot::channel();
    let agent = tokio::spawn(shoal::agent::run(
        cfg,
        async move {
            let _ = stop_rx.await;
        },
        move |state| {
            let _ = ready_tx.send(state);
        },
    ));
    let Ok(state) = ready_rx.await else {
        panic!("the agent did not start: {:?}", agent.await);
    };
    agent_has(&state, "first").await;
    let status = || state.follow.lock().unwrap().clone();
    assert_eq!(status().cache_error, None);

    // A directory where the journal goes: appending (or removing it after a new base) fails.
    let journal = dir.path().join("model.log");
    let _ = std::fs::remove_file(&journal);
    std::fs::create_dir(&journal).unwrap();
    std::fs::write(journal.join("keep"), b"x").unwrap();
    apply(&s.api, node("second")).await;
    agent_has(&state, "second").await;
    let st = status();
    assert!(
        st.cache_error.is_some() && st.cache_write_failures >= 1,
        "a failed cache write is reported: {st:?}"
    );

    // The disk works again: the next write clears the error.
    std::fs::remove_dir_all(&journal).unwrap();
    apply(&s.api, node("third")).await;
    agent_has(&state, "third").await;
    let st = status();
    assert_eq!(st.cache_error, None, "{st:?}");
    let cached = shoal::agent::ModelCache::new(dir.path())
        .load()
        .unwrap()
        .expect("a cached model");
    assert!(cached
        .get(&shoal_model::ResourceKey::in_mesh(
            "m",
            shoal_model::Kind::VirtualNode,
            "third"
        ))
        .is_some());
    let _ = stop_tx.send(());
    agent.await.unwrap().unwrap();
    s.stop().await;
}
