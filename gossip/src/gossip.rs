//! The running member: a chitchat instance plus a cached, typed view of the live members.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use chitchat::transport::UdpTransport;
use chitchat::{
    spawn_chitchat, Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig,
    NodeState, ProtocolVersion,
};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::config::GossipConfig;
use crate::keys;
use crate::member::{diff, newest_per_name, parse_member, Member, MemberEvent, NodeMeta};

/// Why a gossip operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration or the initial metadata cannot be used.
    #[error("invalid gossip config: {0}")]
    Config(String),
    /// The UDP socket could not be opened (address in use, no permission, …).
    #[error("gossip failed to start on {listen}: {reason}")]
    Start {
        /// The address that was to be bound.
        listen: std::net::SocketAddr,
        /// chitchat's error, as text.
        reason: String,
    },
    /// A key passed to [`Gossip::set_key`] or [`Gossip::delete_key`] lacks a reserved prefix
    /// (see [`keys::APP_PREFIXES`]) or is too long.
    #[error("key {0:?} is not an application key (see shoal_gossip::keys::APP_PREFIXES)")]
    InvalidKey(String),
    /// A value passed to [`Gossip::set_key`] exceeds [`keys::MAX_VALUE_LEN`].
    #[error("value of {key:?} is {len} bytes, more than the {max} a gossip key may hold")]
    ValueTooLarge {
        /// The key.
        key: String,
        /// The value's length in bytes.
        len: usize,
        /// [`keys::MAX_VALUE_LEN`].
        max: usize,
    },
    /// The gossip loop ended with an error (its socket broke) or panicked.
    #[error("gossip shutdown: {0}")]
    Shutdown(String),
}

/// A running gossip member. Cheap to clone: clones share one chitchat instance. Dropping the
/// last clone stops gossip (without waiting); [`Gossip::shutdown`] stops it and waits.
#[derive(Clone)]
pub struct Gossip {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    handle: Mutex<Option<ChitchatHandle>>,
    watcher: AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// What the membership watcher task and the API methods share.
struct Shared {
    name: String,
    self_id: ChitchatId,
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    /// chitchat's live nodes (including self), as of its last gossip round.
    live: watch::Receiver<BTreeMap<ChitchatId, NodeState>>,
    members: watch::Sender<Vec<Member>>,
}

/// Last generation handed out in this process, so that two starts within one millisecond (or
/// after a clock step back) still get growing generations.
static LAST_GENERATION: AtomicU64 = AtomicU64::new(0);

fn next_generation() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let previous = LAST_GENERATION
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
            Some(now.max(last + 1))
        })
        .unwrap_or(0);
    now.max(previous + 1)
}

impl Gossip {
    /// Binds the UDP socket, publishes `meta`, and starts gossiping with `cfg.seeds`. The
    /// generation is the start time in unix milliseconds, so a restarted node supersedes its
    /// previous incarnation everywhere.
    pub async fn start(cfg: GossipConfig, meta: NodeMeta) -> Result<Gossip, Error> {
        cfg.validate().map_err(Error::Config)?;
        keys::check_meta(&meta)
            .map_err(|key| Error::Config(format!("metadata value of {key:?} is too long")))?;
        let generation = next_generation();
        let self_id = ChitchatId::new(cfg.name.as_str(), generation, cfg.advertise);
        let chitchat_config = ChitchatConfig {
            chitchat_id: self_id.clone(),
            cluster_id: cfg.cluster_id.clone(),
            gossip_interval: cfg.gossip_interval,
            listen_addr: cfg.listen,
            seed_nodes: cfg.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: cfg.phi_threshold,
                initial_interval: cfg.gossip_interval,
                dead_node_grace_period: cfg.dead_node_grace,
                ..FailureDetectorConfig::default()
            },
            marked_for_deletion_grace_period: cfg.marked_for_deletion_grace,
            catchup_callback: None,
            extra_liveness_predicate: None,
            // V1 (compressed digests) only once every deployed shoal can decode it.
            protocol_version: ProtocolVersion::V0,
        };
        let initial: Vec<(String, String)> = keys::encode_meta(&meta)
            .into_iter()
            .filter_map(|(key, value)| Some((key.to_string(), value?)))
            .collect();
        let handle = spawn_chitchat(chitchat_config, initial, &UdpTransport)
            .await
            .map_err(|err| Error::Start {
                listen: cfg.listen,
                reason: format!("{err:#}"),
            })?;
        let chitchat = handle.chitchat();
        let live = chitchat.lock().await.live_nodes_watcher();
        let (members, _) = watch::channel(Vec::new());
        let shared = Arc::new(Shared {
            name: cfg.name.clone(),
            self_id,
            chitchat,
            live,
            members,
        });
        // The view holds at least this node from the start.
        shared.refresh(&*shared.chitchat.lock().await);

        let task_shared = shared.clone();
        let mut live_changes = shared.live.clone();
        let watcher = tokio::spawn(async move {
            while live_changes.changed().await.is_ok() {
                let chitchat = task_shared.chitchat.lock().await;
                task_shared.refresh(&chitchat);
            }
        })
        .abort_handle();

        tracing::info!(
            name = %cfg.name,
            generation,
            listen = %cfg.listen,
            advertise = %cfg.advertise,
            seeds = ?cfg.seeds,
            cluster_id = %cfg.cluster_id,
            "gossip started"
        );
        Ok(Gossip {
            inner: Arc::new(Inner {
                shared,
                handle: Mutex::new(Some(handle)),
                watcher,
            }),
        })
    }

    /// This node's name, as other members list it.
    pub fn local_name(&self) -> &str {
        &self.inner.shared.name
    }

    /// Replaces what this node says about itself (e.g. `raft_initialized` flips to true once
    /// the Raft cluster is formed). Only changed fields are gossiped; [`Gossip::members`] shows
    /// the new metadata for this node as soon as this returns, other nodes within a few gossip
    /// rounds. Metadata with an oversized value (see [`keys::MAX_META_VALUE_LEN`]) is not
    /// applied and logged as an error: it would not fit the wire.
    pub async fn set_meta(&self, meta: NodeMeta) {
        if let Err(key) = keys::check_meta(&meta) {
            tracing::error!(key, "metadata value too long; metadata not updated");
            return;
        }
        let shared = &self.inner.shared;
        let mut chitchat = shared.chitchat.lock().await;
        let state = chitchat.self_node_state();
        for (key, value) in keys::encode_meta(&meta) {
            match value {
                Some(value) => state.set(key, value),
                None if state.get(key).is_some() => state.delete(key),
                None => {}
            }
        }
        shared.refresh(&chitchat);
    }

    /// The live members, this node included: one entry per name (its newest generation),
    /// sorted by name. A member leaves the list when the failure detector declares it dead.
    /// Reads a cached view; never waits.
    pub fn members(&self) -> Vec<Member> {
        self.inner.shared.members.borrow().clone()
    }

    /// A receiver of the [`Gossip::members`] view that is marked changed whenever a member
    /// joins, leaves, restarts or changes its metadata (not on heartbeats or application keys).
    /// Feed consecutive values to [`crate::diff`] to get events.
    pub fn subscribe(&self) -> watch::Receiver<Vec<Member>> {
        self.inner.shared.members.subscribe()
    }

    /// Publishes `value` under `key` in this node's gossip state, for every node to read.
    /// `key` must start with a prefix of [`keys::APP_PREFIXES`] (node metadata is written only
    /// through [`Gossip::set_meta`]) and `value` be at most [`keys::MAX_VALUE_LEN`] bytes.
    /// Setting the current value again sends nothing.
    pub async fn set_key(&self, key: &str, value: &str) -> Result<(), Error> {
        if !keys::is_app_key(key) {
            return Err(Error::InvalidKey(key.to_string()));
        }
        if value.len() > keys::MAX_VALUE_LEN {
            return Err(Error::ValueTooLarge {
                key: key.to_string(),
                len: value.len(),
                max: keys::MAX_VALUE_LEN,
            });
        }
        let mut chitchat = self.inner.shared.chitchat.lock().await;
        chitchat.self_node_state().set(key, value);
        Ok(())
    }

    /// Removes `key` from this node's gossip state (a tombstone, gossiped like a write, so
    /// readers see it disappear). Same key rules as [`Gossip::set_key`]; deleting an absent key
    /// does nothing.
    pub async fn delete_key(&self, key: &str) -> Result<(), Error> {
        if !keys::is_app_key(key) {
            return Err(Error::InvalidKey(key.to_string()));
        }
        let mut chitchat = self.inner.shared.chitchat.lock().await;
        let state = chitchat.self_node_state();
        if state.get(key).is_some() {
            state.delete(key);
        }
        Ok(())
    }

    /// Stops gossiping (for every clone) and waits for the UDP socket to close. Peers notice
    /// through their failure detectors: the node leaves their member lists after a few
    /// seconds (about `phi_threshold × 2.3 ×` the observed heartbeat interval). The last
    /// member view stays readable.
    pub async fn shutdown(self) -> Result<(), Error> {
        self.inner.watcher.abort();
        let handle = self
            .inner
            .handle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(handle) = handle else {
            return Ok(());
        };
        let result = handle
            .shutdown()
            .await
            .map_err(|err| Error::Shutdown(format!("{err:#}")));
        tracing::info!(name = %self.inner.shared.name, "gossip stopped");
        result
    }
}

impl Shared {
    /// Recomputes the member view from chitchat's live nodes and this node's current state,
    /// and publishes it if it changed. Called with the chitchat lock held, which orders all
    /// refreshes: a view computed from older state can never overwrite a newer one.
    fn refresh(&self, chitchat: &Chitchat) {
        let live = self.live.borrow();
        let own = chitchat
            .node_state(&self.self_id)
            .and_then(|state| parse_member(&self.self_id, state))
            .map(|member| Member {
                is_self: true,
                ..member
            });
        // Another generation of our own name is our previous process (or a misconfigured twin):
        // this process is the one that counts.
        let others = live
            .iter()
            .filter(|(id, _)| *id.node_id != *self.name)
            .filter_map(|(id, state)| parse_member(id, state));
        let next = newest_per_name(own.into_iter().chain(others));
        drop(live);

        let mut events = Vec::new();
        self.members.send_if_modified(|current| {
            if *current == next {
                return false;
            }
            events = diff(current, &next);
            *current = next;
            true
        });
        for event in events {
            match event {
                MemberEvent::Joined(m) => tracing::info!(
                    name = %m.name, generation = m.generation, role = %m.meta.role,
                    addr = %m.gossip_addr, "member joined"
                ),
                MemberEvent::Updated(m) => tracing::debug!(
                    name = %m.name, generation = m.generation, meta = ?m.meta, "member updated"
                ),
                MemberEvent::Left(m) => tracing::info!(
                    name = %m.name, generation = m.generation, "member left"
                ),
            }
        }
    }
}
