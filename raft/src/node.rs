//! [`RaftNode`]: one running Raft server, with its store, its state machine and the handles
//! the rest of shoal uses (write, read, watch, status).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;

use openraft::error::{InitializeError, RaftError};
use openraft::metrics::WaitError;
use openraft::{Raft, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use shoal_model::{Command, Model, Outcome};
use tokio::sync::broadcast;

use crate::log_store::LogStore;
use crate::network::Network;
use crate::state_machine::{SmState, StateMachine};
use crate::{Config, Error, NodeInfo, TypeConfig, WatchEvent, WriteError};

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
    /// Whether Raft sees it working: this server itself while Raft runs; another member only
    /// on the leader, when it has replicated the log to within 100 entries of the leader's.
    /// A follower cannot tell, and reports other members as not healthy.
    pub healthy: bool,
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
    raft: Raft<TypeConfig>,
    db: sled::Db,
    state: Arc<RwLock<SmState>>,
    events: broadcast::Sender<Arc<WatchEvent>>,
    committed_index: Arc<AtomicU64>,
    /// Alive while openraft still holds a log store or state machine.
    storage: Weak<()>,
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
        let db = open_db(&path).await?;

        let alive = Arc::new(());
        let log_store = LogStore::open(&db, alive.clone())?;
        let stored = log_store.bind_node_id(cfg.node_id).await?;
        if stored != cfg.node_id {
            return Err(Error::NodeIdMismatch {
                path,
                stored,
                configured: cfg.node_id,
            });
        }
        let (events, _) = broadcast::channel(WATCH_CAPACITY);
        let sm = StateMachine::open(&db, events.clone(), alive.clone())?;
        let state = sm.state();
        let committed_index = log_store.committed_index();
        let storage = Arc::downgrade(&alive);
        drop(alive);

        let raft_cfg = openraft::Config {
            cluster_name: "shoal".to_string(),
            heartbeat_interval: cfg.heartbeat_ms,
            election_timeout_min: cfg.election_timeout_min_ms,
            election_timeout_max: cfg.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_after_logs),
            ..Default::default()
        }
        .validate()?;
        let raft = Raft::new(cfg.node_id, Arc::new(raft_cfg), Network, log_store, sm).await?;
        tracing::info!(
            node_id = cfg.node_id,
            path = %path.display(),
            revision = state.read().unwrap_or_else(PoisonError::into_inner).model.revision(),
            "Raft store open"
        );
        Ok(RaftNode {
            inner: Arc::new(Inner {
                cfg,
                raft,
                db,
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
        if self.raft().is_initialized().await? {
            tracing::debug!("Raft already initialized; not bootstrapping");
            return Ok(());
        }
        let cfg = &self.inner.cfg;
        let members = BTreeMap::from([(
            cfg.node_id,
            NodeInfo {
                raft_addr: cfg.raft_addr.clone(),
                api_addr: cfg.api_addr.clone(),
            },
        )]);
        match self.raft().initialize(members).await {
            Ok(()) => {
                tracing::info!(
                    node_id = cfg.node_id,
                    "bootstrapped a single-server cluster"
                );
                Ok(())
            }
            // Initialized meanwhile: the outcome we wanted.
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(RaftError::APIError(e)) => Err(Error::Initialize(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(e.into()),
        }
    }

    /// Waits until some leader is known (elections take an election timeout or two).
    pub async fn wait_leader(&self, timeout: Duration) -> Result<(), Error> {
        self.raft()
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a Raft leader")
            .await
            .map(|_| ())
            .map_err(|e| match e {
                WaitError::Timeout(t, _) => Error::Timeout(t, "a Raft leader"),
                WaitError::ShuttingDown => Error::ShuttingDown,
            })
    }

    /// Commits `cmd` and returns what applying it answered. On a follower this fails with
    /// [`WriteError::ForwardToLeader`].
    pub async fn write(&self, cmd: Command) -> Result<Written, WriteError> {
        let resp = self.raft().client_write(cmd).await?;
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

    /// Makes the next [`RaftNode::read`] linearizable: confirms this server is still the
    /// leader (a quorum answers a heartbeat) and waits until the model has applied everything
    /// committed before now. Fails with [`Error::ForwardToLeader`] on a follower.
    pub async fn read_barrier(&self) -> Result<(), Error> {
        self.raft().ensure_linearizable().await?;
        Ok(())
    }

    /// Runs `f` on the current model under a read lock. Keep `f` short: it delays applying
    /// new entries (never other readers). Not linearizable by itself; see
    /// [`RaftNode::read_barrier`].
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
                let healthy = if id == m.id {
                    m.running_state.is_ok()
                } else {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&id).cloned().flatten())
                        .is_some_and(|matched| {
                            last_log.saturating_sub(matched.index) <= HEALTHY_LAG
                        })
                };
                Member {
                    node_id: id,
                    raft_addr: node.raft_addr.clone(),
                    api_addr: node.api_addr.clone(),
                    role,
                    healthy,
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

    /// The underlying openraft handle, for cluster management (adding servers, membership
    /// changes, snapshots) that this API does not cover yet.
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
        self.inner
            .db
            .flush_async()
            .await
            .map_err(|e| Error::Storage(openraft::StorageIOError::write(&e).into()))?;
        tracing::info!(node_id = self.inner.cfg.node_id, "Raft stopped");
        Ok(())
    }
}

/// Opens the sled database at `path`, waiting a little if a previous instance in this
/// process (or one still exiting) holds its lock.
async fn open_db(path: &Path) -> Result<sled::Db, Error> {
    let deadline = tokio::time::Instant::now() + OPEN_LOCK_WAIT;
    loop {
        let p: PathBuf = path.to_path_buf();
        let opened = tokio::task::spawn_blocking(move || {
            sled::Config::new()
                .path(p)
                .cache_capacity(64 << 20)
                .flush_every_ms(Some(500))
                .open()
        })
        .await
        .map_err(|e| Error::Open {
            path: path.to_path_buf(),
            source: sled::Error::Io(std::io::Error::other(e.to_string())),
        })?;
        match opened {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && tokio::time::Instant::now() < deadline =>
            {
                tracing::debug!(path = %path.display(), "Raft store locked; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(source) => {
                return Err(Error::Open {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
}
