//! The running member: a chitchat instance plus cached, typed views of the live members and of
//! the endpoints they publish.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chitchat::transport::UdpTransport;
use chitchat::{
    spawn_chitchat, Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig,
    ListenerHandle, NodeState, ProtocolVersion,
};
use shoal_model::discovery::{Endpoint, Instance};
use tokio::sync::{watch, Notify};
use tokio::task::AbortHandle;

use crate::config::GossipConfig;
use crate::endpoints::{newest_live, EndpointCache};
use crate::keys;
use crate::member::{diff, newest_per_name, parse_member, Member, MemberEvent, NodeMeta};

/// Shortest time between two rebuilds of the endpoint view: changes that arrive closer together
/// (a delta of many instance keys, a burst of local publications) are handled by one rebuild.
const REFRESH_PAUSE: Duration = Duration::from_millis(20);

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
    /// [`Gossip::publish_instance`] was given an instance that [`Instance::normalize`] refuses
    /// or would change, or [`Gossip::withdraw_instance`] a key that cannot be an instance key.
    #[error("invalid instance: {0}")]
    InvalidInstance(String),
    /// Publishing one more instance would exceed [`keys::MAX_INSTANCES_PER_NODE`].
    #[error("this node already publishes {max} instances, the most one node may")]
    TooManyInstances {
        /// [`keys::MAX_INSTANCES_PER_NODE`].
        max: usize,
    },
    /// Publishing this value would make this node's instance keys and values larger than
    /// [`keys::MAX_INSTANCE_BYTES_PER_NODE`].
    #[error("publishing {key:?} would take this node's instance records to {bytes} bytes, more than the {max} allowed")]
    InstanceBytesExceeded {
        /// The key that was to be written.
        key: String,
        /// The total the node's instance keys and values would have taken, in bytes.
        bytes: usize,
        /// [`keys::MAX_INSTANCE_BYTES_PER_NODE`].
        max: usize,
    },
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
    /// Keeps chitchat's instance-key listener registered (dropping it unsubscribes).
    _listener: ListenerHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// Datagrams a sealed member dropped since it started, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DroppedDatagrams {
    /// No installed key authenticated it: no key, another key, a removed key, or tampering.
    pub unauthenticated: u64,
    /// Authenticated but not a gossip message.
    pub malformed: u64,
    /// Too large to send once sealed.
    pub oversized: u64,
}

/// What the membership watcher task and the API methods share.
struct Shared {
    name: String,
    self_id: ChitchatId,
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    /// chitchat's live nodes (including self), as of its last gossip round.
    live: watch::Receiver<BTreeMap<ChitchatId, NodeState>>,
    members: watch::Sender<Vec<Member>>,
    /// Decoded instance values per node; only used with the chitchat lock held.
    endpoint_cache: Mutex<EndpointCache>,
    /// The endpoint view.
    endpoints: watch::Sender<Arc<Vec<Endpoint>>>,
    /// Refused claims on a name, each logged once.
    name_conflicts: Mutex<std::collections::BTreeSet<crate::names::NameConflict>>,
    /// Bumped after every change of `endpoints`.
    endpoint_epoch: watch::Sender<u64>,
    /// Instance values skipped because they could not be decoded (once per key version).
    invalid_values: AtomicU64,
    /// Wakes the view task: an instance key was written here or arrived from a peer.
    wake: Arc<Notify>,
    /// Datagrams the sealed transport dropped.
    drops: Arc<crate::seal::DropCounters>,
    /// The keys gossip is sealed with, if any.
    keyring: Option<crate::Keyring>,
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
        let drops = Arc::new(crate::seal::DropCounters::default());
        let spawned = match &cfg.keyring {
            Some(keyring) => {
                let transport = crate::seal::SealedTransport {
                    keyring: keyring.clone(),
                    drops: drops.clone(),
                };
                spawn_chitchat(chitchat_config, initial, &transport).await
            }
            None => spawn_chitchat(chitchat_config, initial, &UdpTransport).await,
        };
        let handle = spawned.map_err(|err| Error::Start {
            listen: cfg.listen,
            reason: format!("{err:#}"),
        })?;
        let chitchat = handle.chitchat();
        let wake = Arc::new(Notify::new());
        let (live, listener) = {
            let chitchat = chitchat.lock().await;
            let wake = wake.clone();
            // Called with the chitchat lock held, for every instance key set here or applied
            // from a peer's delta (not for deletions: those change the node's max version,
            // which the live-nodes watcher reports at the end of the gossip round).
            let listener =
                chitchat.subscribe_event(keys::INSTANCE_PREFIX, move |_| wake.notify_one());
            (chitchat.live_nodes_watcher(), listener)
        };
        let (members, _) = watch::channel(Vec::new());
        let (endpoints, _) = watch::channel(Arc::new(Vec::new()));
        let (endpoint_epoch, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            name: cfg.name.clone(),
            self_id,
            chitchat,
            live,
            members,
            endpoint_cache: Mutex::new(EndpointCache::default()),
            endpoints,
            endpoint_epoch,
            invalid_values: AtomicU64::new(0),
            drops,
            keyring: cfg.keyring.clone(),
            name_conflicts: Mutex::default(),
            wake,
        });
        // The view holds at least this node from the start.
        shared.refresh(&*shared.chitchat.lock().await);

        // One task keeps both views current: the live-nodes watcher fires at the end of a
        // gossip round in which a node joined, died or changed any key (deletions included);
        // the listener wakes it as soon as an instance key is written.
        let task_shared = shared.clone();
        let mut live_changes = shared.live.clone();
        let watcher = tokio::spawn(async move {
            loop {
                let membership = tokio::select! {
                    changed = live_changes.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        true
                    }
                    () = task_shared.wake.notified() => false,
                };
                {
                    let chitchat = task_shared.chitchat.lock().await;
                    if membership {
                        task_shared.refresh(&chitchat);
                    }
                    task_shared.refresh_endpoints(&chitchat);
                }
                tokio::time::sleep(REFRESH_PAUSE).await;
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
                _listener: listener,
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
    /// Setting the current value again sends nothing. Instance keys count against the
    /// per-node instance limits, but their values are not checked: use
    /// [`Gossip::publish_instance`].
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
        self.write_app_key(key, value).await
    }

    /// Writes an application key after the checks of [`Gossip::set_key`], keeping instance keys
    /// within the per-node budget.
    async fn write_app_key(&self, key: &str, value: &str) -> Result<(), Error> {
        let shared = &self.inner.shared;
        let mut chitchat = shared.chitchat.lock().await;
        let state = chitchat.self_node_state();
        if key.starts_with(keys::INSTANCE_PREFIX) {
            let published = state
                .iter_prefix(keys::INSTANCE_PREFIX)
                .map(|(k, v)| (k, v.value.as_str()));
            keys::check_instance_budget(published, key, value)?;
        }
        let before = state.max_version();
        state.set(key, value);
        let changed = state.max_version() != before;
        drop(chitchat);
        if changed {
            shared.wake.notify_one();
        }
        Ok(())
    }

    /// Removes `key` from this node's gossip state (a tombstone, gossiped like a write, so
    /// readers see it disappear). Same key rules as [`Gossip::set_key`]; deleting an absent key
    /// does nothing.
    pub async fn delete_key(&self, key: &str) -> Result<(), Error> {
        if !keys::is_app_key(key) {
            return Err(Error::InvalidKey(key.to_string()));
        }
        self.remove_app_key(key).await;
        Ok(())
    }

    /// Tombstones `key` if it holds a value; returns whether it did.
    async fn remove_app_key(&self, key: &str) -> bool {
        let shared = &self.inner.shared;
        let mut chitchat = shared.chitchat.lock().await;
        let state = chitchat.self_node_state();
        if state.get(key).is_none() {
            return false;
        }
        state.delete(key);
        drop(chitchat);
        // chitchat's listeners are not told about deletions.
        shared.wake.notify_one();
        true
    }

    /// Publishes `instance`, registered on this host, with the result of its health checks,
    /// under `inst:<instance.key()>` (the format is in [`keys`]). Every member's
    /// [`Gossip::endpoints`] lists it within a few gossip rounds, this node's at once (after
    /// the next view rebuild, a few milliseconds).
    ///
    /// Publishing an unchanged instance with unchanged health sends nothing, so the caller may
    /// re-publish after every health check. `instance` must be normalized (returned by
    /// [`Instance::normalize`]), so that its key is the one readers compute; a node publishes at
    /// most [`keys::MAX_INSTANCES_PER_NODE`] instances taking at most
    /// [`keys::MAX_INSTANCE_BYTES_PER_NODE`] bytes.
    pub async fn publish_instance(&self, instance: &Instance, healthy: bool) -> Result<(), Error> {
        match instance.clone().normalize() {
            Ok(normalized) if normalized == *instance => {}
            Ok(_) => {
                return Err(Error::InvalidInstance(format!(
                    "instance {} is not normalized (see Instance::normalize)",
                    instance.key()
                )))
            }
            Err(err) => return Err(Error::InvalidInstance(err.0)),
        }
        let key = keys::instance_key(&instance.key());
        if !keys::is_app_key(&key) {
            return Err(Error::InvalidKey(key));
        }
        self.write_app_key(&key, &keys::encode_instance(instance, healthy))
            .await
    }

    /// Withdraws the instance whose [`Instance::key`] is `key` (a chitchat tombstone: every
    /// member drops it from its view within a few gossip rounds; the tombstone itself is kept
    /// for [`GossipConfig::marked_for_deletion_grace`]). Returns whether it was published.
    pub async fn withdraw_instance(&self, key: &str) -> Result<bool, Error> {
        let full = keys::instance_key(key);
        if key.is_empty() || !keys::is_app_key(&full) {
            return Err(Error::InvalidInstance(format!(
                "{key:?} is not an instance key"
            )));
        }
        Ok(self.remove_app_key(&full).await)
    }

    /// The endpoint view: every instance published by a live member (this node included),
    /// with its health, sorted (by instance, then host). Only the newest generation of each
    /// member name counts, so a restarted host's instances replace its previous process's as
    /// soon as the new process is live, and a dead host's instances leave the view when the
    /// failure detector declares it dead. Withdrawn instances and values that cannot be decoded
    /// are left out. Reads a cached view; never waits.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.inner.shared.endpoints.borrow().as_ref().clone()
    }

    /// A counter that grows each time [`Gossip::endpoints`] changes (an instance published,
    /// changed or withdrawn anywhere, a member dead, restarted or back). Changes are coalesced:
    /// the view is rebuilt at most once per 20 ms, and a rebuild that changes nothing bumps
    /// nothing. Wait with `changed()`, then read [`Gossip::endpoints`].
    pub fn subscribe_endpoints(&self) -> watch::Receiver<u64> {
        self.inner.shared.endpoint_epoch.subscribe()
    }

    /// How many instance values this node has skipped because they could not be decoded or
    /// did not match their key (each key version counted once, on the live nodes' state only).
    pub fn invalid_instance_values(&self) -> u64 {
        self.inner.shared.invalid_values.load(Ordering::Relaxed)
    }

    /// The keyring gossip is sealed with (none: plaintext gossip). Changes to it apply to the
    /// next datagram.
    pub fn keyring(&self) -> Option<&crate::Keyring> {
        self.inner.shared.keyring.as_ref()
    }

    /// Datagrams dropped before chitchat saw them: `(unauthenticated, malformed, oversized)`
    /// (always zero without a keyring; chitchat drops malformed plaintext itself).
    pub fn dropped_datagrams(&self) -> DroppedDatagrams {
        let d = &self.inner.shared.drops;
        DroppedDatagrams {
            unauthenticated: d.unauthenticated.load(Ordering::Relaxed),
            malformed: d.malformed.load(Ordering::Relaxed),
            oversized: d.oversized.load(Ordering::Relaxed),
        }
    }

    /// Every refused claim on a gossip name this node has seen (two live hosts with one
    /// name), each also logged once as an error.
    pub fn name_conflicts(&self) -> Vec<crate::names::NameConflict> {
        self.inner.shared.conflicts()
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
    /// Logs each refused claim on a name once, as an error: on the holder's side "another
    /// host claims our name", on the claimant's side "our name is held elsewhere"; others see
    /// "two hosts claim a name".
    fn report_conflicts(&self, conflicts: Vec<crate::names::NameConflict>) {
        if conflicts.is_empty() {
            return;
        }
        let mut seen = self
            .name_conflicts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for c in conflicts {
            if !seen.insert(c.clone()) {
                continue;
            }
            let me = (
                self.self_id.gossip_advertise_addr,
                self.self_id.generation_id,
            );
            if c.refused == me {
                tracing::error!(
                    name = %c.name, holder = %c.holder.0,
                    "this node's gossip name is held by another live node: every other node refuses this one (its instances and metadata are ignored); give each host a unique --name"
                );
            } else if c.holder == me {
                tracing::error!(
                    name = %c.name, claimant = %c.refused.0,
                    "another node claims this node's gossip name: refused; give each host a unique --name"
                );
            } else {
                tracing::error!(
                    name = %c.name, holder = %c.holder.0, refused = %c.refused.0,
                    "two live nodes claim one gossip name: the first keeps it, the other is refused"
                );
            }
        }
    }

    /// Every refused claim on a name seen so far.
    fn conflicts(&self) -> Vec<crate::names::NameConflict> {
        self.name_conflicts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// Rebuilds the endpoint view from the newest live generation of every node, and publishes
    /// it (bumping the epoch) if it changed. Called with the chitchat lock held.
    fn refresh_endpoints(&self, chitchat: &Chitchat) {
        let (chosen, conflicts) = newest_live(&self.self_id, chitchat.live_nodes());
        self.report_conflicts(conflicts);
        let nodes = chosen
            .into_iter()
            .filter_map(|id| Some((id, chitchat.node_state(id)?)));
        let (next, garbage) = self
            .endpoint_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .view(nodes, |id| chitchat.node_state(id).is_some());
        if garbage > 0 {
            self.invalid_values.fetch_add(garbage, Ordering::Relaxed);
        }
        let changed = self.endpoints.send_if_modified(|current| {
            if **current == next {
                return false;
            }
            *current = Arc::new(next);
            true
        });
        if changed {
            self.endpoint_epoch.send_modify(|epoch| *epoch += 1);
        }
    }

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
        let (next, conflicts) = newest_per_name(own.into_iter().chain(others));
        self.report_conflicts(conflicts);
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;

    use super::*;
    use crate::member::Role;

    fn instance(id: &str) -> Instance {
        Instance {
            namespace: "apps.local".into(),
            service: "web".into(),
            mesh: String::new(),
            virtual_node: String::new(),
            id: id.into(),
            address: "10.0.0.1".parse().unwrap(),
            port: 80,
            attributes: BTreeMap::new(),
        }
    }

    async fn max_version(gossip: &Gossip) -> u64 {
        let mut chitchat = gossip.inner.shared.chitchat.lock().await;
        chitchat.self_node_state().max_version()
    }

    #[tokio::test]
    async fn republishing_an_unchanged_instance_does_not_bump_the_version() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr: SocketAddr = socket.local_addr().unwrap();
        drop(socket);
        let gossip = Gossip::start(
            GossipConfig::new("n", addr),
            NodeMeta::new(Role::Agent, "0"),
        )
        .await
        .unwrap();
        let web = instance("web-1");
        gossip.publish_instance(&web, true).await.unwrap();
        let published = max_version(&gossip).await;
        for _ in 0..3 {
            gossip.publish_instance(&web, true).await.unwrap();
        }
        assert_eq!(max_version(&gossip).await, published);
        gossip.publish_instance(&web, false).await.unwrap();
        assert_eq!(max_version(&gossip).await, published + 1);
        // Withdrawing twice writes one tombstone.
        assert!(gossip.withdraw_instance(&web.key()).await.unwrap());
        assert!(!gossip.withdraw_instance(&web.key()).await.unwrap());
        assert_eq!(max_version(&gossip).await, published + 2);
        gossip.shutdown().await.unwrap();
    }
}
