//! [`RaftNode`]: one running Raft server, with its store, its state machine and the handles
//! the rest of shoal uses (write, read, watch, status).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use openraft::error::{InitializeError, RaftError};
use openraft::metrics::WaitError;
use openraft::{ChangeMembers, Raft, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use shoal_model::{Command, Model, Outcome};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::log_store::LogStore;
use crate::network::{LeaderContact, Network, Peers, RaftGrpc, MAX_MESSAGE};
use crate::proto::raft_server::RaftServer;
use crate::snapshot_store::SnapshotStore;
use crate::state_machine::{SmState, StateMachine};
use crate::store_dir::{Identity, StoreDir};
use crate::wal::Options;
use crate::{Config, Error, NodeInfo, TypeConfig, WatchEvent, WriteError};

/// The tonic service that serves Raft RPC to the other servers; see
/// [`RaftNode::grpc_service`].
pub type GrpcService = RaftServer<RaftGrpc>;

/// How many watch events a slow subscriber may fall behind before it sees `Lagged`.
const WATCH_CAPACITY: usize = 4096;

/// How long [`RaftNode::open`] waits for a store still locked by a closing instance.
const OPEN_LOCK_WAIT: Duration = Duration::from_secs(5);

/// How long [`RaftNode::shutdown`] waits for openraft's tasks to release the store.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// A committed write: what applying it answered, and where it is in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// The model's answer (a failed check is an `Err` here, yet still a committed entry).
    pub outcome: Outcome,
    /// The log index of the entry; equals the new revision when the write changed the model.
    pub index: u64,
}

/// A member's part in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The current leader.
    Leader,
    /// A voter that is not the leader.
    Follower,
    /// A non-voting member that receives the log.
    Learner,
}

impl Role {
    /// The lowercase name used in the status API.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Learner => "learner",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One member of the cluster, as this server sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its Raft id.
    pub node_id: u64,
    /// Its Raft RPC address.
    pub raft_addr: String,
    /// Its HTTP API address.
    pub api_addr: String,
    /// Leader, follower or learner.
    pub role: Role,
    /// Whether Raft sees it working.
    ///
    /// On the leader: for itself, that Raft runs and (with other voters) a quorum acknowledged
    /// it within the last election timeout; for another member, that its log matches the
    /// leader's to within 100 entries and it answered an RPC within the last election timeout.
    /// On a follower or learner: for itself, that Raft runs and a leader reached it within the
    /// last election timeout. A follower does not see the other members' replication, so it
    /// reports them as not healthy: ask the leader for the cluster's health.
    pub healthy: bool,
    /// How many entries its log is behind the leader's last entry; known only on the leader
    /// (0 for the leader itself), `None` elsewhere.
    #[serde(default)]
    pub lag: Option<u64>,
}

/// The most entries a member may lag behind the leader's log and still count as healthy.
const HEALTHY_LAG: u64 = 100;

/// This server's view of Raft, for `GET /v1/status` and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// This server's id.
    pub node_id: u64,
    /// The leader, if one is known.
    pub leader_id: Option<u64>,
    /// The current term.
    pub term: u64,
    /// The last committed log index (0 before any).
    pub commit_index: u64,
    /// The last log index applied to the model (0 before any).
    pub applied_index: u64,
    /// The model's revision: the log index of its last change.
    pub revision: u64,
    /// Every member, voters and learners, in id order.
    pub members: Vec<Member>,
}

/// A running Raft server: the single way the model is written and read. Cheap to clone.
#[derive(Clone)]
pub struct RaftNode {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: Config,
    identity: Identity,
    raft: Raft<TypeConfig>,
    /// What the RPC client knows about the peers (when each last answered).
    peers: Arc<Peers>,
    /// When a leader last reached this server.
    contact: Arc<LeaderContact>,
    /// The store's lock, held while this node runs (one process per data dir).
    _lock: std::fs::File,
    state: Arc<RwLock<SmState>>,
    events: broadcast::Sender<Arc<WatchEvent>>,
    committed_index: Arc<AtomicU64>,
    /// Alive while openraft still holds a log store or state machine.
    storage: Weak<()>,
    /// Queue of the group-commit batcher (see [`RaftNode::write`]).
    writes: mpsc::Sender<PendingWrite>,
}

/// A write waiting for the batcher.
struct PendingWrite {
    cmd: Command,
    reply: oneshot::Sender<Result<Written, WriteError>>,
}

/// Most commands in one log entry.
const MAX_BATCH: usize = 512;
/// Log entries proposed and not yet committed at once. openraft 0.9 appends and flushes one
/// entry at a time, so without batching each write costs a disk flush and a replication
/// round of its own; batching queued writes into one entry amortizes both.
const MAX_IN_FLIGHT: usize = 4;

/// Takes queued writes, proposes them as batches (a single write as itself), and answers
/// each with its own outcome. Ends when every sender is gone.
fn spawn_batcher(raft: Raft<TypeConfig>, mut queue: mpsc::Receiver<PendingWrite>) {
    tokio::spawn(async move {
        let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
        while let Some(first) = queue.recv().await {
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            let raft = raft.clone();
            tokio::spawn(async move {
                commit_batch(&raft, batch).await;
                drop(permit);
            });
        }
    });
}

async fn commit_batch(raft: &Raft<TypeConfig>, mut batch: Vec<PendingWrite>) {
    if batch.len() == 1 {
        let p = batch.pop().expect("one write");
        let _ = p.reply.send(write_one(raft, p.cmd).await);
        return;
    }
    let (cmds, replies): (Vec<Command>, Vec<_>) =
        batch.into_iter().map(|p| (p.cmd, p.reply)).unzip();
    match raft.client_write(Command::Batch(cmds)).await {
        Ok(resp) => {
            let index = resp.log_id.index;
            match resp.data.outcome {
                Some(Ok(shoal_model::Reply::Batch(outcomes)))
                    if outcomes.len() == replies.len() =>
                {
                    for (reply, outcome) in replies.into_iter().zip(outcomes) {
                        let _ = reply.send(Ok(Written { outcome, index }));
                    }
                }
                other => {
                    let msg = format!(
                        "batch entry {index} was applied with an unexpected answer: {other:?}"
                    );
                    for reply in replies {
                        let _ = reply.send(Err(WriteError::Internal(msg.clone())));
                    }
                }
            }
        }
        Err(e) => {
            let e = WriteError::from(e);
            for reply in replies {
                let _ = reply.send(Err(copy_error(&e)));
            }
        }
    }
}

async fn write_one(raft: &Raft<TypeConfig>, cmd: Command) -> Result<Written, WriteError> {
    let resp = raft.client_write(cmd).await?;
    match resp.data.outcome {
        Some(outcome) => Ok(Written {
            outcome,
            index: resp.log_id.index,
        }),
        None => Err(WriteError::Internal(format!(
            "entry {} was applied without an outcome",
            resp.log_id
        ))),
    }
}

/// The same error for every write of a failed batch.
fn copy_error(e: &WriteError) -> WriteError {
    match e {
        WriteError::ForwardToLeader { leader_id, leader } => WriteError::ForwardToLeader {
            leader_id: *leader_id,
            leader: leader.clone(),
        },
        WriteError::Stopped(s) => WriteError::Stopped(s.clone()),
        WriteError::Storage(e) => WriteError::Stopped(format!("storage failed: {e}")),
        WriteError::Internal(s) => WriteError::Internal(s.clone()),
    }
}

impl RaftNode {
    /// Opens (or creates) the store under `cfg.data_dir/raft`, restores the model from the
    /// last snapshot, and starts openraft, which re-applies the committed log after it.
    pub async fn open(cfg: Config) -> Result<RaftNode, Error> {
        std::fs::create_dir_all(&cfg.data_dir).map_err(|source| Error::DataDir {
            path: cfg.data_dir.clone(),
            source,
        })?;
        let path = cfg.data_dir.join("raft");
        let dir = StoreDir::new(path.clone());
        let refused = |e: &dyn std::fmt::Display| Error::Store(e.to_string());
        std::fs::create_dir_all(&path).map_err(|source| Error::DataDir {
            path: path.clone(),
            source,
        })?;
        let lock = lock_store(&path).await?;
        dir.refuse_old_format().map_err(|e| refused(&e))?;
        dir.require_log().map_err(|e| refused(&e))?;

        let alive = Arc::new(());
        let (log_store, log_has_records) = LogStore::open(
            &dir.wal(),
            Options {
                sync_delay: cfg.sync_delay,
                ..Options::default()
            },
            alive.clone(),
        )
        .map_err(|e| refused(&e))?;
        let identity = dir
            .identity_for(cfg.node_id, log_has_records)
            .map_err(|e| refused(&e))?;
        if identity.node_id != cfg.node_id {
            return Err(Error::NodeIdMismatch {
                path,
                stored: identity.node_id,
                configured: cfg.node_id,
            });
        }
        let (events, _) = broadcast::channel(WATCH_CAPACITY);
        let snapshots = SnapshotStore::open(&dir.snapshots()).map_err(|e| refused(&e))?;
        let sm = StateMachine::open(snapshots, events.clone(), alive.clone())
            .map_err(|e| refused(&e))?;
        let state = sm.state();
        // The log before a snapshot is purged only once the snapshot is durable: a purge point
        // beyond the snapshot means the snapshot that covered it is gone.
        {
            let mut ls = log_store.clone();
            let purged = openraft::storage::RaftLogStorage::get_log_state(&mut ls)
                .await?
                .last_purged_log_id;
            let applied = state
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .last_applied;
            if purged.map(|p| p.index) > applied.map(|a| a.index) {
                return Err(Error::Store(format!(
                    "{}: the log is purged up to index {} but the newest snapshot covers only {}: the snapshot that covered it is missing",
                    path.display(),
                    purged.map_or(0, |p| p.index),
                    applied.map_or(0, |a| a.index)
                )));
            }
        }
        let committed_index = log_store.committed_index();
        let storage = Arc::downgrade(&alive);
        drop(alive);

        let raft_cfg = openraft::Config {
            cluster_name: "shoal".to_string(),
            heartbeat_interval: cfg.heartbeat_ms,
            election_timeout_min: cfg.election_timeout_min_ms,
            election_timeout_max: cfg.election_timeout_max_ms,
            install_snapshot_timeout: cfg.install_snapshot_timeout_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_after_logs),
            max_in_snapshot_log_to_keep: cfg.logs_kept_after_snapshot,
            ..Default::default()
        }
        .validate()?;
        let cluster =
            Arc::new(crate::cluster_id::ClusterId::open(&dir.root).map_err(|e| refused(&e))?);
        let peers = Arc::new(Peers::new(cfg.tls.clone(), cluster));
        let network = Network::new(peers.clone());
        let raft = Raft::new(cfg.node_id, Arc::new(raft_cfg), network, log_store, sm).await?;
        tracing::info!(
            node_id = cfg.node_id,
            incarnation = %identity.incarnation,
            path = %path.display(),
            revision = state.read().unwrap_or_else(PoisonError::into_inner).model.revision(),
            "Raft store open"
        );
        let (writes, queue) = mpsc::channel(4 * MAX_BATCH);
        spawn_batcher(raft.clone(), queue);
        Ok(RaftNode {
            inner: Arc::new(Inner {
                writes,
                cfg,
                identity,
                raft,
                peers,
                contact: Arc::new(LeaderContact::default()),
                _lock: lock,
                state,
                events,
                committed_index,
                storage,
            }),
        })
    }

    /// Makes this server a one-member cluster if it has never been part of one; does nothing
    /// on a server that has (so it is safe on every start).
    pub async fn bootstrap_single(&self) -> Result<(), Error> {
        let members = BTreeMap::from([(self.inner.cfg.node_id, self.node_info())]);
        self.initialize(members).await
    }

    /// Presents `tls` to peers from the next connection on (a renewed certificate).
    pub fn set_client_tls(&self, tls: crate::ClientTls) {
        self.inner.peers.set_tls(tls);
    }

    /// The id of the cluster this store belongs to: made by the server that formed the
    /// cluster, taken by every other member from the first RPC it was sent; none before that
    /// (or in a store older than cluster ids).
    pub fn cluster_id(&self) -> Option<String> {
        self.inner.peers.cluster.get()
    }

    /// This server's incarnation: a random id made when its store was created. Peers address
    /// RPCs to an id *and* an incarnation, so that a server whose data was wiped is not
    /// mistaken for its former self (which had votes and log entries it no longer has).
    pub fn incarnation(&self) -> &str {
        &self.inner.identity.incarnation
    }

    /// How the membership should record this server: what to pass to
    /// [`RaftNode::initialize`] or to the leader's [`RaftNode::add_learner`].
    pub fn node_info(&self) -> NodeInfo {
        let cfg = &self.inner.cfg;
        NodeInfo {
            raft_addr: cfg.raft_addr.clone(),
            api_addr: cfg.api_addr.clone(),
            incarnation: self.inner.identity.incarnation.clone(),
        }
    }

    /// Whether this server has been part of a cluster (initialized, or reached by a leader).
    /// A server that has not must be initialized or added to a cluster before it can serve.
    pub async fn is_initialized(&self) -> Result<bool, Error> {
        Ok(self.raft().is_initialized().await?)
    }

    /// Forms a brand-new cluster of `members` (this server among them), if this server has
    /// never been part of one; does nothing otherwise, so every server of a new cluster may
    /// call it with the same members, and again after a restart.
    ///
    /// This server's entry may leave `incarnation` empty (it is filled in); every other entry
    /// must carry the incarnation its server reports in [`RaftNode::node_info`], because that
    /// server refuses RPCs addressed to any other.
    pub async fn initialize(&self, mut members: BTreeMap<u64, NodeInfo>) -> Result<(), Error> {
        if self.raft().is_initialized().await? {
            tracing::debug!("Raft already initialized; not initializing");
            return Ok(());
        }
        let me = self.inner.cfg.node_id;
        if let Some(info) = members.get_mut(&me) {
            if info.incarnation.is_empty() {
                info.incarnation = self.incarnation().to_string();
            } else if info.incarnation != self.incarnation() {
                return Err(Error::Initialize(format!(
                    "node {me} is incarnation {}, not {}",
                    self.incarnation(),
                    info.incarnation
                )));
            }
        }
        for (id, info) in &members {
            check_incarnation(*id, info).map_err(Error::Initialize)?;
        }
        // Named before the first RPC goes out, so every member learns the id from it.
        let cluster_id = self
            .inner
            .peers
            .cluster
            .name_new()
            .map_err(|e| Error::Store(e.to_string()))?;
        tracing::info!(%cluster_id, "this server forms a new cluster");
        let n = members.len();
        match self.raft().initialize(members).await {
            Ok(()) => {
                tracing::info!(node_id = me, members = n, "initialized a new Raft cluster");
                Ok(())
            }
            // Initialized meanwhile: the outcome we wanted.
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(RaftError::APIError(e)) => Err(Error::Initialize(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(e.into()),
        }
    }

    /// On the leader: adds server `id` as a learner (it receives the log but does not vote)
    /// and waits, at most `timeout`, until it has the log up to its own addition. A new server
    /// joins as a learner first so that it never counts towards a quorum before it holds the
    /// log, which would stall commits while it catches up; make it a voter afterwards with
    /// [`RaftNode::change_voters`].
    ///
    /// `node` must carry the incarnation the new server reports in [`RaftNode::node_info`].
    /// Adding a member again with the same `node` only waits for it; with another `node` (a
    /// new address or incarnation) it is refused: remove the member first. On a timeout the
    /// learner stays in the membership and keeps catching up.
    pub async fn add_learner(
        &self,
        id: u64,
        node: NodeInfo,
        timeout: Duration,
    ) -> Result<(), Error> {
        check_incarnation(id, &node).map_err(Error::Membership)?;
        // openraft keeps the recorded NodeInfo of an existing member rather than replace it,
        // which would leave a re-incarnated server unreachable without saying so.
        let recorded = self.raft().metrics().borrow().membership_config.clone();
        if let Some(old) = recorded.membership().get_node(&id) {
            if *old != node {
                return Err(Error::Membership(format!(
                    "node {id} is already a member as {old}; remove it before adding it as {node}"
                )));
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let resp = tokio::time::timeout(timeout, self.raft().add_learner(id, node, false))
            .await
            .map_err(|_| Error::Timeout(timeout, "the learner to be added"))??;
        if id == self.inner.cfg.node_id {
            return Ok(());
        }
        let since = resp.log_id.index;
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let m = self
            .raft()
            .wait(Some(remaining))
            .metrics(
                |m| match &m.replication {
                    // Leadership lost: stop waiting, reported below.
                    None => true,
                    Some(r) => r
                        .get(&id)
                        .cloned()
                        .flatten()
                        .is_some_and(|l| l.index >= since),
                },
                "the new learner to catch up",
            )
            .await
            .map_err(|e| wait_error(e, "the new learner to catch up"))?;
        if m.replication.is_none() {
            return Err(Error::ForwardToLeader {
                leader_id: m.current_leader,
                leader: m
                    .current_leader
                    .and_then(|l| m.membership_config.membership().get_node(&l).cloned()),
            });
        }
        tracing::info!(node_id = id, "learner added and caught up");
        Ok(())
    }

    /// On the leader: makes `voters` the set of voting members, through joint consensus (a
    /// majority of both the old and the new set must agree at every step, so no two leaders
    /// can ever be elected). New voters must be members already (added with
    /// [`RaftNode::add_learner`]); voters left out leave the cluster entirely rather than
    /// stay as learners, because a removed server is usually about to be shut down or wiped.
    pub async fn change_voters(&self, voters: BTreeSet<u64>) -> Result<(), Error> {
        let resp = self.raft().change_membership(voters, false).await?;
        tracing::info!(
            log_index = resp.log_id.index,
            membership = ?resp.membership,
            "voters changed"
        );
        Ok(())
    }

    /// On the leader: removes server `id` from the cluster, whether it is a voter or a
    /// learner; does nothing if it is not a member. Do this before wiping a server's data
    /// (or to let a wiped server rejoin under its new incarnation).
    pub async fn remove_node(&self, id: u64) -> Result<(), Error> {
        let membership = self.raft().metrics().borrow().membership_config.clone();
        let membership = membership.membership();
        let change = if membership.voter_ids().any(|v| v == id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else if membership.get_node(&id).is_some() {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else {
            tracing::debug!(node_id = id, "not a member; nothing to remove");
            return Ok(());
        };
        self.raft().change_membership(change, false).await?;
        tracing::info!(node_id = id, "removed from the cluster");
        Ok(())
    }

    /// On the leader: confirms it is still the leader (a quorum answers a heartbeat) and
    /// returns the log index a linearizable read must see, after waiting until this server
    /// has applied it. A follower serves a linearizable read by asking the leader for this
    /// index and passing it to [`RaftNode::wait_applied`] before reading its own model,
    /// which spares the leader the read itself. On a follower this fails with
    /// [`Error::ForwardToLeader`].
    pub async fn read_index(&self) -> Result<u64, Error> {
        let read_log_id = self.raft().ensure_linearizable().await?;
        Ok(read_log_id.map_or(0, |l| l.index))
    }

    /// Waits, at most `timeout`, until this server has applied the log up to `index` (a
    /// [`RaftNode::read_index`] from the leader, or the index of a write), so that
    /// [`RaftNode::read`] then sees everything up to it.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), Error> {
        if index == 0 {
            return Ok(());
        }
        self.raft()
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "the log to be applied")
            .await
            .map(|_| ())
            .map_err(|e| wait_error(e, "the log to be applied"))
    }

    /// The gRPC service through which the other servers reach this one's Raft. Mount it on
    /// the server's gRPC endpoint (next to other services) at the address recorded as
    /// `raft_addr`: `tonic::transport::Server::builder().add_service(node.grpc_service())`.
    /// It holds only the Raft handle, not the store, so a node can be reopened while an old
    /// service value is still around.
    pub fn grpc_service(&self) -> GrpcService {
        let id = &self.inner.identity;
        RaftServer::new(RaftGrpc::new(
            self.inner.raft.clone(),
            self.inner.cfg.node_id,
            &id.incarnation,
            id.legacy,
            self.inner.contact.clone(),
            self.inner.peers.cluster.clone(),
        ))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
    }

    /// Serves [`RaftNode::grpc_service`] alone on `listener` until `shutdown` completes: for
    /// tests and tools that need no other gRPC service. The returned future does not borrow
    /// this node, so it can be spawned.
    pub fn serve_grpc<F>(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: F,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let service = self.grpc_service();
        async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    shutdown,
                )
                .await
                .map_err(|e| Error::Serve(e.to_string()))
        }
    }

    /// Waits until some leader is known (elections take an election timeout or two).
    pub async fn wait_leader(&self, timeout: Duration) -> Result<(), Error> {
        self.raft()
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a Raft leader")
            .await
            .map(|_| ())
            .map_err(|e| wait_error(e, "a Raft leader"))
    }

    /// Commits `cmd` and returns what applying it answered. On a follower this fails with
    /// [`WriteError::ForwardToLeader`]. Concurrent writes are grouped into one log entry
    /// ([`Command::Batch`]) while earlier entries are in flight, so under load many writes
    /// share one disk flush and one replication round; a lone write goes alone.
    pub async fn write(&self, cmd: Command) -> Result<Written, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .writes
            .send(PendingWrite { cmd, reply })
            .await
            .map_err(|_| WriteError::Stopped("the write queue is closed".into()))?;
        answer
            .await
            .map_err(|_| WriteError::Stopped("the write was dropped".into()))?
    }

    /// Runs `f` on the current model under a read lock. Keep `f` short: it delays applying
    /// new entries (never other readers). Not linearizable by itself; see
    /// [`RaftNode::read_index`].
    pub fn read<R>(&self, f: impl FnOnce(&Model) -> R) -> R {
        let st = self
            .inner
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        f(&st.model)
    }

    /// Every change applied from now on, with its revision, in commit order. A receiver that
    /// falls more than 4096 events behind gets `Lagged` and must resynchronize from
    /// [`RaftNode::read`].
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<WatchEvent>> {
        self.inner.events.subscribe()
    }

    /// Whether openraft's core task is still there. A core that panicked (for instance on a
    /// forged message, which openraft treats as an impossible state) leaves its last metrics
    /// behind, still saying it runs; the closed metrics channel is what tells.
    fn core_running(&self) -> bool {
        self.raft().metrics().has_changed().is_ok()
    }

    /// Resolves, with the reason, once the Raft core has stopped by itself: it panicked or
    /// halted on a fatal storage error. Every write and read fails from then on while the
    /// process would otherwise keep running, so the server exits instead (and systemd
    /// restarts it on a store it re-verifies). Also resolves after [`RaftNode::shutdown`]:
    /// stop watching before shutting down.
    pub async fn core_stopped(&self) -> String {
        // Watch the server metrics, not the full ones: they change only with votes, roles and
        // membership, while the full metrics change with every entry (a waiter on them was
        // woken several times per write). Their sender lives in the core, so the channel
        // closes when the core ends; the full metrics then say whether it stopped on an error.
        let mut server = self.raft().server_metrics();
        while server.changed().await.is_ok() {}
        match &self.raft().metrics().borrow().running_state {
            Err(fatal) => format!("the Raft core stopped: {fatal}"),
            Ok(()) => "the Raft core task ended without stopping cleanly (it panicked)".into(),
        }
    }

    /// This server's view of the cluster.
    pub fn status(&self) -> Status {
        let m = self.raft().metrics().borrow().clone();
        let revision = self.read(|model| model.revision());
        let applied_index = m.last_applied.map_or(0, |l| l.index);
        let commit_index = self
            .inner
            .committed_index
            .load(Ordering::Relaxed)
            .max(applied_index);
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let last_log = m.last_log_index.unwrap_or(0);
        let recent = Duration::from_millis(self.inner.cfg.election_timeout_max_ms);
        let running = m.running_state.is_ok() && self.core_running();
        let leading = m.current_leader == Some(m.id) && m.replication.is_some();
        let now = Instant::now();
        let members = membership
            .nodes()
            .map(|(&id, node)| {
                let role = if Some(id) == m.current_leader {
                    Role::Leader
                } else if voters.contains(&id) {
                    Role::Follower
                } else {
                    Role::Learner
                };
                let (healthy, lag) = if id == m.id && leading {
                    let acked = voters.len() <= 1
                        || m.millis_since_quorum_ack
                            .is_some_and(|ms| Duration::from_millis(ms) <= recent);
                    (running && acked, Some(0))
                } else if id == m.id {
                    let reached = self.inner.contact.age().is_some_and(|age| age <= recent);
                    (running && reached, None)
                } else if let Some(replication) = &m.replication {
                    let matched = replication.get(&id).cloned().flatten();
                    let lag = last_log.saturating_sub(matched.map_or(0, |l| l.index));
                    let answered = self
                        .inner
                        .peers
                        .last_answer(id)
                        .is_some_and(|t| now.saturating_duration_since(t) <= recent);
                    (
                        matched.is_some() && lag <= HEALTHY_LAG && answered,
                        Some(lag),
                    )
                } else {
                    (false, None)
                };
                Member {
                    node_id: id,
                    raft_addr: node.raft_addr.clone(),
                    api_addr: node.api_addr.clone(),
                    role,
                    healthy,
                    lag,
                }
            })
            .collect();
        Status {
            node_id: self.inner.cfg.node_id,
            leader_id: m.current_leader,
            term: m.current_term,
            commit_index,
            applied_index,
            revision,
            members,
        }
    }

    /// The underlying openraft handle, for what this API does not cover (triggering
    /// snapshots, detailed metrics).
    pub fn raft(&self) -> &openraft::Raft<TypeConfig> {
        &self.inner.raft
    }

    /// Stops Raft, waits for its tasks to release the store and flushes it. Once every clone
    /// of this handle is dropped, the data directory can be opened again.
    pub async fn shutdown(&self) -> Result<(), Error> {
        if let Err(e) = self.raft().shutdown().await {
            tracing::warn!(error = %e, "the Raft task ended abnormally");
        }
        let released = tokio::time::timeout(RELEASE_WAIT, async {
            while self.inner.storage.strong_count() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        if released.is_err() {
            tracing::warn!("Raft tasks still hold the store after {RELEASE_WAIT:?}");
        }
        // Nothing to flush: every write was synced before it was acknowledged.
        tracing::info!(node_id = self.inner.cfg.node_id, "Raft stopped");
        Ok(())
    }
}

/// The error of a wait on Raft metrics for `what`.
fn wait_error(e: WaitError, what: &'static str) -> Error {
    match e {
        WaitError::Timeout(t, _) => Error::Timeout(t, what),
        WaitError::ShuttingDown => Error::ShuttingDown,
    }
}

/// Refuses a membership entry without an incarnation: no server of this build would accept
/// RPCs addressed to it, so the entry could only ever be unreachable.
fn check_incarnation(id: u64, node: &NodeInfo) -> Result<(), String> {
    if node.incarnation.is_empty() {
        return Err(format!(
            "node {id} ({node}) has no incarnation: use the NodeInfo that server reports"
        ));
    }
    Ok(())
}

/// Takes the store's lock (`raft/LOCK`, an exclusive `flock`), waiting a little if a previous
/// instance in this process (or one still exiting) holds it: two processes on one store would
/// interleave their logs.
async fn lock_store(path: &Path) -> Result<std::fs::File, Error> {
    let lock_path = path.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| Error::DataDir {
            path: lock_path.clone(),
            source,
        })?;
    let deadline = tokio::time::Instant::now() + OPEN_LOCK_WAIT;
    loop {
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(file),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK && tokio::time::Instant::now() < deadline => {
                tracing::debug!(path = %path.display(), "Raft store locked; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                return Err(Error::Store(format!(
                    "{}: cannot lock the Raft store ({e}); is another shoal server using this data dir?",
                    lock_path.display()
                )))
            }
        }
    }
}
