//! Multi-server tests of [`RaftNode`]: real gRPC between servers on 127.0.0.1, each server
//! in its own temporary directory. Every wait is bounded; the tests run one at a time (see
//! [`SERIAL`]) because their short timings do not tolerate sharing two cores with another
//! cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal_model::api::MeshSpec;
use shoal_model::{Command, Kind, Model, PutMode, ResourceKey, Spec, Stamp};
use shoal_raft::proto::raft_client::RaftClient;
use shoal_raft::proto::RaftMessage;
use shoal_raft::{Config, Error, NodeInfo, RaftNode, Role, WriteError};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};

/// The most any one test may take.
const LIMIT: Duration = Duration::from_secs(120);

/// The most one step (an election, a catch-up) may take.
const STEP: Duration = Duration::from_secs(20);

/// Cluster tests run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHOAL_TEST_LOG")
                .unwrap_or_else(|_| "off".into()),
        )
        .with_test_writer()
        .try_init();
}

fn config(id: u64, dir: &Path, addr: SocketAddr) -> Config {
    let mut cfg = Config::new(
        id,
        dir,
        addr.to_string(),
        format!("127.0.0.1:{}", 17000 + id),
    );
    cfg.heartbeat_ms = 50;
    cfg.election_timeout_min_ms = 300;
    cfg.election_timeout_max_ms = 600;
    cfg
}

fn put_mesh(name: &str) -> Command {
    Command::Put {
        key: ResourceKey::mesh(name),
        spec: Box::new(Spec::Mesh(MeshSpec {
            egress_filter: None,
            service_discovery: None,
        })),
        mode: PutMode::Create,
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

fn mesh_names(m: &Model) -> BTreeSet<String> {
    m.iter()
        .filter(|r| r.key.kind == Kind::Mesh)
        .map(|r| r.key.name.clone())
        .collect()
}

/// Polls `f` every 20 ms until it returns `Some`, for at most `limit`.
async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(20)).await;
    }
}

/// One running server: Raft plus its gRPC endpoint.
struct Server {
    id: u64,
    dir: PathBuf,
    addr: SocketAddr,
    node: RaftNode,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), Error>>,
}

impl Server {
    /// Opens the server `id` in `dir` and serves its Raft RPC on `addr` (a fresh port when
    /// `None`). `tweak` adjusts the configuration.
    async fn start(
        id: u64,
        dir: &Path,
        addr: Option<SocketAddr>,
        tweak: impl Fn(&mut Config),
    ) -> Server {
        let listener = match addr {
            None => TcpListener::bind("127.0.0.1:0").await.expect("bind"),
            // The port of a server that just stopped may take a moment to be free again.
            Some(addr) => {
                eventually("the port to be free", STEP, || async move {
                    TcpListener::bind(addr).await.ok()
                })
                .await
            }
        };
        let addr = listener.local_addr().unwrap();
        let mut cfg = config(id, dir, addr);
        tweak(&mut cfg);
        let node = RaftNode::open(cfg).await.expect("open");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(node.serve_grpc(listener, async move {
            let _ = stopped.await;
        }));
        Server {
            id,
            dir: dir.to_path_buf(),
            addr,
            node,
            stop,
            task,
        }
    }

    /// Stops serving RPC, shuts Raft down and releases the store; returns where the server
    /// lived, to restart it.
    async fn stop(self) -> (u64, PathBuf, SocketAddr) {
        let Server {
            id,
            dir,
            addr,
            node,
            stop,
            mut task,
        } = self;
        let _ = stop.send(());
        match timeout(Duration::from_secs(10), &mut task).await {
            Ok(served) => served.expect("server task").expect("serve"),
            Err(_) => task.abort(),
        }
        node.shutdown().await.expect("shutdown");
        drop(node);
        (id, dir, addr)
    }
}

/// Starts servers 1..=n in `dirs` and initializes a cluster of all of them on server 1.
async fn start_cluster(dirs: &[tempfile::TempDir], tweak: impl Fn(&mut Config)) -> Vec<Server> {
    let mut servers = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        servers.push(Server::start(i as u64 + 1, dir.path(), None, &tweak).await);
    }
    let members: BTreeMap<u64, NodeInfo> =
        servers.iter().map(|s| (s.id, s.node.node_info())).collect();
    servers[0]
        .node
        .initialize(members)
        .await
        .expect("initialize");
    leader_of(&servers).await;
    servers
}

/// Waits until every server in `servers` sees the same leader, one of them, and returns its
/// position in `servers`.
async fn leader_of(servers: &[Server]) -> usize {
    eventually("an agreed leader", STEP, || async {
        let leader = servers[0].node.status().leader_id?;
        let pos = servers.iter().position(|s| s.id == leader)?;
        let agreed = servers
            .iter()
            .all(|s| s.node.status().leader_id == Some(leader));
        let leads = servers[pos].node.status().members.iter().any(|m| {
            m.node_id == leader && m.role == Role::Leader && m.healthy && m.lag == Some(0)
        });
        (agreed && leads).then_some(pos)
    })
    .await
}

/// Writes a new mesh `name` through the leader among `servers`, retrying while leadership
/// moves; returns the log index of the write.
async fn write_mesh(servers: &[Server], name: &str) -> u64 {
    let deadline = Instant::now() + STEP;
    let mut target = leader_of(servers).await;
    loop {
        match servers[target].node.write(put_mesh(name)).await {
            Ok(w) => {
                // A retry of a write that was committed before its answer was lost finds
                // the mesh already there: it was written all the same.
                if let Err(e) = &w.outcome {
                    assert_eq!(e.kind, shoal_model::ErrorKind::Conflict, "{e:?}");
                }
                return w.index;
            }
            Err(WriteError::ForwardToLeader {
                leader_id: Some(id),
                ..
            }) if servers.iter().any(|s| s.id == id) => {
                target = servers.iter().position(|s| s.id == id).unwrap();
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "write of {name} failed: {e}");
                sleep(Duration::from_millis(50)).await;
                target = leader_of(servers).await;
            }
        }
    }
}

/// Waits until `server` has applied `index` and returns its model.
async fn model_at(server: &Server, index: u64) -> Model {
    server
        .node
        .wait_applied(index, STEP)
        .await
        .unwrap_or_else(|e| panic!("node {} applies {index}: {e}", server.id));
    server.node.read(|m| m.clone())
}

fn applied(server: &Server) -> u64 {
    server.node.status().applied_index
}

fn voter_ids(server: &Server) -> BTreeSet<u64> {
    let m = server.node.raft().metrics().borrow().clone();
    m.membership_config.membership().voter_ids().collect()
}

fn member_ids(server: &Server) -> BTreeSet<u64> {
    server
        .node
        .status()
        .members
        .iter()
        .map(|m| m.node_id)
        .collect()
}

fn temp_dirs(n: usize) -> Vec<tempfile::TempDir> {
    (0..n).map(|_| tempfile::tempdir().unwrap()).collect()
}

async fn stop_all(servers: Vec<Server>) {
    for s in servers {
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_replicate_and_forward() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    timeout(LIMIT, async {
        let dirs = temp_dirs(3);
        let servers = start_cluster(&dirs, |_| {}).await;
        let l = leader_of(&servers).await;
        let leader = &servers[l];
        for s in &servers {
            assert!(s.node.is_initialized().await.unwrap());
        }

        let mut last = 0;
        let names: BTreeSet<String> = (0..5).map(|i| format!("mesh-{i}")).collect();
        for name in &names {
            let w = leader.node.write(put_mesh(name)).await.expect("write");
            assert!(w.outcome.is_ok());
            assert!(w.index > last);
            last = w.index;
        }
        let expected = leader.node.read(|m| m.clone());
        assert_eq!(mesh_names(&expected), names);
        for s in &servers {
            let model = model_at(s, last).await;
            assert_eq!(model, expected, "model of node {}", s.id);
            assert_eq!(model.revision(), last);
        }

        // Followers send writers and readers to the leader, and say how to reach it.
        for s in servers.iter().filter(|s| s.id != leader.id) {
            match s.node.write(put_mesh("refused")).await {
                Err(WriteError::ForwardToLeader {
                    leader_id,
                    leader: info,
                }) => {
                    assert_eq!(leader_id, Some(leader.id));
                    assert_eq!(info, Some(leader.node.node_info()));
                }
                other => panic!("expected ForwardToLeader, got {other:?}"),
            }
            match s.node.read_index().await {
                Err(Error::ForwardToLeader {
                    leader_id,
                    leader: info,
                }) => {
                    assert_eq!(leader_id, Some(leader.id));
                    assert_eq!(info, Some(leader.node.node_info()));
                }
                other => panic!("expected ForwardToLeader, got {other:?}"),
            }
        }

        // A linearizable read on a follower: the leader's read index, then wait to apply it.
        let w = leader.node.write(put_mesh("after")).await.expect("write");
        let read_index = leader.node.read_index().await.expect("read index");
        assert!(read_index >= w.index, "{read_index} < {}", w.index);
        for s in &servers {
            s.node
                .wait_applied(read_index, STEP)
                .await
                .expect("wait applied");
            assert!(s.node.read(mesh_names).contains("after"));
        }

        // The leader sees every member healthy and caught up; followers see themselves so.
        eventually("all members healthy on the leader", STEP, || async {
            let st = leader.node.status();
            let ok = st.members.len() == 3
                && st.members.iter().all(|m| {
                    m.healthy
                        && m.lag.is_some_and(|lag| lag <= 1)
                        && (m.role == Role::Leader) == (m.node_id == leader.id)
                        && m.role != Role::Learner
                });
            ok.then_some(())
        })
        .await;
        for s in servers.iter().filter(|s| s.id != leader.id) {
            eventually("a follower healthy", STEP, || async {
                let st = s.node.status();
                let me = st.members.iter().find(|m| m.node_id == s.id)?;
                (me.healthy && me.role == Role::Follower && me.lag.is_none()).then_some(())
            })
            .await;
            let st = s.node.status();
            assert_eq!(st.leader_id, Some(leader.id));
            assert_eq!(st.members.len(), 3);
        }

        // Initializing again, anywhere, changes nothing.
        let again: BTreeMap<u64, NodeInfo> =
            servers.iter().map(|s| (s.id, s.node.node_info())).collect();
        servers[1].node.initialize(again).await.expect("no-op");
        assert_eq!(voter_ids(leader), BTreeSet::from([1, 2, 3]));

        stop_all(servers).await;
    })
    .await
    .expect("test finished in time");
}

/// The leader sends new entries to its followers before it waits for its own sync (the
/// patch in `third_party/openraft`): on a slow disk (every sync 150 ms longer, on every
/// server), a write takes about one sync, not a leader's sync followed by a follower's. The
/// heartbeat and election timeouts are raised so that a follower's slow answer is not taken
/// for a lost one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_replicates_while_it_syncs() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    const SYNC: Duration = Duration::from_millis(150);
    timeout(LIMIT, async {
        let dirs = temp_dirs(3);
        let servers = start_cluster(&dirs, |cfg| {
            cfg.sync_delay = SYNC;
            cfg.heartbeat_ms = 500;
            cfg.election_timeout_min_ms = 2000;
            cfg.election_timeout_max_ms = 3000;
        })
        .await;
        let leader = &servers[leader_of(&servers).await];
        let mut took = Vec::new();
        for i in 0..7 {
            let started = Instant::now();
            let w = leader
                .node
                .write(put_mesh(&format!("slow-{i}")))
                .await
                .expect("write");
            assert!(w.outcome.is_ok());
            took.push(started.elapsed());
        }
        took.sort();
        let median = took[took.len() / 2];
        assert!(
            median >= SYNC,
            "writes faster than one sync ({median:?}): the delay is not in effect; {took:?}"
        );
        assert!(
            median < SYNC * 3 / 2,
            "a write took {median:?} (median), about two syncs in a row: the leader waited for \
             its own sync before replicating; {took:?}"
        );
        stop_all(servers).await;
    })
    .await
    .expect("within the time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_and_restart() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    timeout(LIMIT, async {
        let dirs = temp_dirs(3);
        let mut servers = start_cluster(&dirs, |_| {}).await;
        let mut acked = BTreeSet::new();
        for i in 0..10 {
            let name = format!("before-{i}");
            write_mesh(&servers, &name).await;
            acked.insert(name);
        }

        let l = leader_of(&servers).await;
        let old = servers.remove(l);
        let old_id = old.id;
        let (id, dir, addr) = old.stop().await;

        let l = leader_of(&servers).await;
        assert_ne!(servers[l].id, old_id, "a new leader among the survivors");
        let mut last = 0;
        for i in 0..10 {
            let name = format!("after-{i}");
            last = write_mesh(&servers, &name).await;
            acked.insert(name);
        }
        for s in &servers {
            let names = model_at(s, last).await;
            let names = mesh_names(&names);
            assert!(acked.is_subset(&names), "node {} misses writes", s.id);
        }

        // The old leader comes back from its directory and catches up as a follower.
        let back = Server::start(id, &dir, Some(addr), |_| {}).await;
        servers.push(back);
        let l = leader_of(&servers).await;
        let leader_model = servers[l].node.read(|m| m.clone());
        let target = applied(&servers[l]);
        let back = servers.last().unwrap();
        let model = model_at(back, target).await;
        assert_eq!(mesh_names(&model), mesh_names(&leader_model));
        assert!(acked.is_subset(&mesh_names(&model)));
        assert_eq!(back.node.status().leader_id, Some(servers[l].id));

        // And the cluster of three keeps accepting writes.
        let w = write_mesh(&servers, "final").await;
        for s in &servers {
            assert!(model_at(s, w)
                .await
                .get(&ResourceKey::mesh("final"))
                .is_some());
        }
        stop_all(servers).await;
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_learner_promote_and_remove() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    timeout(LIMIT, async {
        let dirs = temp_dirs(4);
        let mut servers = start_cluster(&dirs[..3], |_| {}).await;
        for i in 0..5 {
            write_mesh(&servers, &format!("m-{i}")).await;
        }

        let fourth = Server::start(4, dirs[3].path(), None, |_| {}).await;
        assert!(!fourth.node.is_initialized().await.unwrap());
        let info = fourth.node.node_info();
        assert_eq!(info.incarnation, fourth.node.incarnation());
        servers.push(fourth);

        let l = leader_of(&servers[..3]).await;
        let leader = &servers[l];
        leader
            .node
            .add_learner(4, info.clone(), STEP)
            .await
            .expect("add learner");
        let st = leader.node.status();
        let m4 = st
            .members
            .iter()
            .find(|m| m.node_id == 4)
            .expect("member 4");
        assert_eq!(m4.role, Role::Learner);
        assert_eq!(m4.raft_addr, info.raft_addr);
        assert_eq!(voter_ids(leader), BTreeSet::from([1, 2, 3]));
        // Caught up: it has everything the leader had applied when it was added.
        let target = applied(leader);
        let model = model_at(&servers[3], target).await;
        assert_eq!(mesh_names(&model).len(), 5);

        leader
            .node
            .change_voters(BTreeSet::from([1, 2, 3, 4]))
            .await
            .expect("promote");
        assert_eq!(voter_ids(leader), BTreeSet::from([1, 2, 3, 4]));
        let l = leader_of(&servers).await;

        // Remove a follower other than the new voter.
        let gone = servers
            .iter()
            .find(|s| s.id != servers[l].id && s.id != 4)
            .unwrap()
            .id;
        servers[l].node.remove_node(gone).await.expect("remove");
        let pos = servers.iter().position(|s| s.id == gone).unwrap();
        servers.remove(pos).stop().await;
        let l = leader_of(&servers).await;
        let leader = &servers[l];
        let expected: BTreeSet<u64> = [1, 2, 3, 4].into_iter().filter(|&i| i != gone).collect();
        assert_eq!(voter_ids(leader), expected);
        assert_eq!(member_ids(leader), expected);
        // Removing a non-member is a no-op.
        leader.node.remove_node(gone).await.expect("no-op");

        // Every remaining server agrees on the membership, and the cluster still commits.
        let w = write_mesh(&servers, "after-change").await;
        for s in &servers {
            model_at(s, w).await;
            eventually("the new membership everywhere", STEP, || async {
                (member_ids(s) == expected).then_some(())
            })
            .await;
            let st = s.node.status();
            for m in &st.members {
                let want = if Some(m.node_id) == st.leader_id {
                    Role::Leader
                } else {
                    Role::Follower
                };
                assert_eq!(m.role, want, "role of {} on {}", m.node_id, s.id);
            }
        }
        eventually("all members healthy on the leader", STEP, || async {
            let st = servers[leader_of(&servers).await].node.status();
            st.members.iter().all(|m| m.healthy).then_some(())
        })
        .await;
        stop_all(servers).await;
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_learner_catches_up_by_snapshot() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    timeout(LIMIT, async {
        let small_log = |cfg: &mut Config| {
            cfg.snapshot_after_logs = 20;
            cfg.logs_kept_after_snapshot = 0;
        };
        let dirs = temp_dirs(4);
        let mut servers = start_cluster(&dirs[..3], small_log).await;
        for i in 0..100 {
            write_mesh(&servers, &format!("s-{i:03}")).await;
        }
        let l = leader_of(&servers).await;
        // The leader's log no longer starts at 1: a new server can only get a snapshot.
        let purged = eventually("the leader to purge its log", STEP, || async {
            let m = servers[l].node.raft().metrics().borrow().clone();
            m.purged.filter(|p| p.index >= 20)
        })
        .await;

        let fresh = Server::start(4, dirs[3].path(), None, small_log).await;
        let info = fresh.node.node_info();
        servers.push(fresh);
        let leader = &servers[l];
        leader
            .node
            .add_learner(4, info, STEP)
            .await
            .expect("add learner");
        let target = applied(leader);
        let expected = leader.node.read(|m| m.clone());
        let learner = &servers[3];
        let model = model_at(learner, target).await;
        assert_eq!(model, expected);
        assert_eq!(model.revision(), expected.revision());
        assert_eq!(mesh_names(&model).len(), 100);
        let m = learner.node.raft().metrics().borrow().clone();
        let snap = m.snapshot.expect("the learner holds a snapshot");
        assert!(snap.index >= purged.index, "{snap} < {purged}");

        // It keeps following with entries after the snapshot, and can leave again.
        let w = write_mesh(&servers, "after-snapshot").await;
        assert!(model_at(learner, w)
            .await
            .get(&ResourceKey::mesh("after-snapshot"))
            .is_some());
        servers[l]
            .node
            .remove_node(4)
            .await
            .expect("remove learner");
        assert_eq!(member_ids(&servers[l]), BTreeSet::from([1, 2, 3]));
        stop_all(servers).await;
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_server_is_refused_until_re_added() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    timeout(LIMIT, async {
        let dirs = temp_dirs(3);
        let mut servers = start_cluster(&dirs, |_| {}).await;
        for i in 0..5 {
            write_mesh(&servers, &format!("w-{i}")).await;
        }
        let l = leader_of(&servers).await;
        let leader_id = servers[l].id;
        let pos = servers.iter().position(|s| s.id != leader_id).unwrap();
        let victim = servers.remove(pos);
        let old_incarnation = victim.node.incarnation().to_string();
        let (id, dir, addr) = victim.stop().await;

        // Wipe its data and bring it back under the same id and address.
        std::fs::remove_dir_all(&dir).unwrap();
        let wiped = Server::start(id, &dir, Some(addr), |_| {}).await;
        assert_ne!(wiped.node.incarnation(), old_incarnation);

        // The cluster goes on with two of three; the leader keeps trying the wiped server,
        // which refuses every RPC meant for its former self.
        let mut last = 0;
        for i in 0..5 {
            last = write_mesh(&servers, &format!("x-{i}")).await;
        }
        sleep(Duration::from_secs(1)).await;
        assert!(!wiped.node.is_initialized().await.unwrap());
        assert_eq!(wiped.node.read(|m| m.revision()), 0);
        assert_eq!(wiped.node.status().leader_id, None);
        assert!(wiped.node.status().members.is_empty());
        let l = leader_of(&servers).await;
        let leader = &servers[l];
        assert_eq!(leader.id, leader_id, "no election was needed");
        let m = leader.node.raft().metrics().borrow().clone();
        assert!(m.running_state.is_ok(), "the leader is running");
        let st = leader.node.status();
        let w = st.members.iter().find(|m| m.node_id == id).unwrap();
        assert!(!w.healthy, "the wiped server is not healthy: {w:?}");

        // Re-adding it while its former self is still the member is refused; remove it, add
        // it back under its new incarnation, make it a voter again.
        let err = leader
            .node
            .add_learner(id, wiped.node.node_info(), STEP)
            .await
            .expect_err("still a member under the old incarnation");
        assert!(matches!(err, Error::Membership(_)), "{err}");
        leader.node.remove_node(id).await.expect("remove");
        assert!(!member_ids(leader).contains(&id));
        leader
            .node
            .add_learner(id, wiped.node.node_info(), STEP)
            .await
            .expect("add learner");
        leader
            .node
            .change_voters(BTreeSet::from([1, 2, 3]))
            .await
            .expect("voters");
        let membership = leader
            .node
            .raft()
            .metrics()
            .borrow()
            .membership_config
            .clone();
        let recorded = membership.membership().get_node(&id).unwrap().clone();
        assert_eq!(recorded.incarnation, wiped.node.incarnation());
        servers.push(wiped);

        let expected = servers[l].node.read(|m| m.clone());
        let target = applied(&servers[l]).max(last);
        let model = model_at(servers.last().unwrap(), target).await;
        assert_eq!(model, expected);
        assert_eq!(mesh_names(&model).len(), 10);
        eventually("all members healthy on the leader", STEP, || async {
            let st = servers[leader_of(&servers).await].node.status();
            (st.members.len() == 3 && st.members.iter().all(|m| m.healthy)).then_some(())
        })
        .await;
        stop_all(servers).await;
    })
    .await
    .expect("test finished in time");
}

/// Requests that are not for this server, or not Raft requests at all, are refused before
/// they reach Raft.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misaddressed_and_malformed_rpcs_are_refused() {
    let _serial = SERIAL.lock().await;
    init_tracing();
    timeout(LIMIT, async {
        let dirs = temp_dirs(1);
        let server = Server::start(1, dirs[0].path(), None, |_| {}).await;
        server.node.bootstrap_single().await.expect("bootstrap");
        let mut client = RaftClient::connect(format!("http://{}", server.addr))
            .await
            .expect("connect");
        let vote = shoal_raft::proto::encode_payload(&serde_json::json!({
            "vote": {"leader_id": {"term": 99, "voted_for": 7}, "committed": false},
            "last_log_id": null
        }))
        .unwrap();
        let cases = [
            (1, "another-incarnation", tonic::Code::FailedPrecondition),
            (
                2,
                server.node.incarnation(),
                tonic::Code::FailedPrecondition,
            ),
            (1, "", tonic::Code::FailedPrecondition),
        ];
        for (target, incarnation, code) in cases {
            let status = client
                .vote(RaftMessage {
                    target_node_id: target,
                    target_incarnation: incarnation.to_string(),
                    payload: vote.to_vec(),
                    chunk: vec![],
                    cluster_id: String::new(),
                })
                .await
                .expect_err("refused");
            assert_eq!(status.code(), code, "{status:?}");
        }
        let status = client
            .append_entries(RaftMessage {
                target_node_id: 1,
                target_incarnation: server.node.incarnation().to_string(),
                payload: b"garbage".to_vec(),
                chunk: vec![],
                cluster_id: String::new(),
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        // Correctly addressed, but from a server of another cluster: refused before Raft.
        assert!(
            server.node.cluster_id().is_some(),
            "a bootstrapped store is named"
        );
        let status = client
            .vote(RaftMessage {
                target_node_id: 1,
                target_incarnation: server.node.incarnation().to_string(),
                payload: vote.to_vec(),
                chunk: vec![],
                cluster_id: "0000-another-cluster".into(),
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
        assert!(status.message().contains("another cluster"), "{status:?}");

        // The same vote, correctly addressed, reaches Raft, and a higher term than ours is
        // answered (a single-server cluster cannot be disturbed by a stranger's vote, but it
        // does reply).
        let resp = client
            .vote(RaftMessage {
                target_node_id: 1,
                target_incarnation: server.node.incarnation().to_string(),
                payload: vote.to_vec(),
                chunk: vec![],
                cluster_id: String::new(),
            })
            .await
            .expect("answered")
            .into_inner();
        let answer: serde_json::Value = shoal_raft::proto::decode_payload(&resp.payload).unwrap();
        assert!(answer.get("Ok").is_some(), "{answer}");

        // Membership entries without an incarnation are refused up front.
        let err = server
            .node
            .add_learner(
                2,
                NodeInfo {
                    raft_addr: "127.0.0.1:1".into(),
                    api_addr: "127.0.0.1:2".into(),
                    incarnation: String::new(),
                },
                Duration::from_secs(1),
            )
            .await
            .expect_err("refused");
        assert!(matches!(err, Error::Membership(_)), "{err}");
        server.stop().await;
    })
    .await
    .expect("test finished in time");
}
