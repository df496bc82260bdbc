//! The state machine: the [`Model`] in memory, fed by committed entries.
//!
//! The model itself is not written to disk on every apply: the log is the durable record, and
//! openraft re-applies committed entries after a restart. What is persisted is the latest
//! snapshot (`snapshot_store.rs`: a checksummed file, synced and renamed into place),
//! `{meta, model}` as a JSON record, from which [`StateMachine::open`] restores the model, the
//! last applied log id and the membership; only after a snapshot is durable may openraft purge
//! the log it covers.
//!
//! Every applied [`Change`] is published on a broadcast channel, in commit order, with the
//! log index that made it as its revision.

use std::io::Cursor;
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use shoal_model::Model;
use tokio::sync::broadcast;

use crate::codec::{decode, encode};
use crate::snapshot_store::{SnapshotError, SnapshotStore, Stored};
use crate::{CommandResponse, NodeInfo, TypeConfig, WatchEvent};

/// The state machine's data: what a snapshot captures.
#[derive(Debug, Default)]
pub(crate) struct SmState {
    /// The model at `last_applied`.
    pub(crate) model: Model,
    /// The last log entry applied.
    pub(crate) last_applied: Option<LogId<u64>>,
    /// The last membership applied.
    pub(crate) last_membership: StoredMembership<u64, NodeInfo>,
}

/// The persisted snapshot, as written.
#[derive(Serialize)]
struct SnapshotRef<'a> {
    meta: &'a SnapshotMeta<u64, NodeInfo>,
    model: &'a Model,
}

/// The persisted snapshot, as read.
#[derive(Deserialize)]
struct SnapshotOwned {
    meta: SnapshotMeta<u64, NodeInfo>,
    model: Model,
}

/// The state machine handed to openraft; also its own snapshot builder. Cheap to clone.
#[derive(Clone)]
pub(crate) struct StateMachine {
    state: Arc<RwLock<SmState>>,
    snapshots: SnapshotStore,
    /// Serializes writes of the current snapshot, so an older one never replaces a newer one.
    snapshot_write: Arc<Mutex<()>>,
    events: broadcast::Sender<Arc<WatchEvent>>,
    /// Held only to let [`crate::RaftNode::shutdown`] see when openraft has dropped storage.
    _alive: Arc<()>,
}

impl StateMachine {
    /// Restores the state from the newest snapshot in `snapshots`; a damaged one is an error
    /// (the store cannot be trusted), never skipped.
    pub(crate) fn open(
        snapshots: SnapshotStore,
        events: broadcast::Sender<Arc<WatchEvent>>,
        alive: Arc<()>,
    ) -> Result<StateMachine, SnapshotError> {
        let mut state = SmState::default();
        if let Some(stored) = snapshots.latest()? {
            let snap: SnapshotOwned = decode(&stored.data).map_err(|e| SnapshotError::Corrupt {
                path: snapshots.dir().to_path_buf(),
                reason: format!(
                    "the snapshot at index {} does not decode: {e}",
                    stored.index
                ),
            })?;
            tracing::info!(
                snapshot = %snap.meta.snapshot_id,
                revision = snap.model.revision(),
                "restored the model from the stored snapshot"
            );
            state = SmState {
                model: snap.model,
                last_applied: snap.meta.last_log_id,
                last_membership: snap.meta.last_membership,
            };
        }
        Ok(StateMachine {
            state: Arc::new(RwLock::new(state)),
            snapshots,
            snapshot_write: Arc::new(Mutex::new(())),
            events,
            _alive: alive,
        })
    }

    /// The shared state, for readers.
    pub(crate) fn state(&self) -> Arc<RwLock<SmState>> {
        self.state.clone()
    }

    fn read(&self) -> RwLockReadGuard<'_, SmState> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, SmState> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, event: WatchEvent) {
        // An error only means nobody is subscribed right now.
        let _ = self.events.send(Arc::new(event));
    }

    /// Applies entries under one write lock (never held across an await).
    fn apply_sync(&self, entries: impl Iterator<Item = Entry<TypeConfig>>) -> Vec<CommandResponse> {
        let mut st = self.write();
        let mut out = Vec::new();
        for entry in entries {
            st.last_applied = Some(entry.log_id);
            let outcome = match entry.payload {
                EntryPayload::Blank => None,
                EntryPayload::Normal(cmd) => {
                    let applied = st.model.apply(entry.log_id.index, &cmd);
                    if !applied.changes.is_empty() {
                        self.publish(WatchEvent {
                            revision: entry.log_id.index,
                            changes: applied.changes,
                        });
                    }
                    Some(applied.outcome)
                }
                EntryPayload::Membership(m) => {
                    st.last_membership = StoredMembership::new(Some(entry.log_id), m);
                    None
                }
            };
            out.push(CommandResponse { outcome });
        }
        out
    }

    /// Stores `bytes` (a snapshot with `meta`) as the current snapshot, durably, unless the
    /// stored one already covers at least as much of the log (a snapshot never goes back).
    async fn store_snapshot(
        &self,
        meta: &SnapshotMeta<u64, NodeInfo>,
        bytes: Vec<u8>,
    ) -> Result<(), StorageError<u64>> {
        let sig = Some(meta.signature());
        let (index, term) = meta
            .last_log_id
            .map_or((0, 0), |l| (l.index, l.leader_id.term));
        let stored = Stored {
            index,
            term,
            meta: crate::codec::to_bytes(meta).expect("snapshot metadata serializes"),
            data: bytes,
        };
        let store = self.snapshots.clone();
        let lock = self.snapshot_write.clone();
        let saved = tokio::task::spawn_blocking(move || {
            let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
            store.save(&stored)
        })
        .await
        .map_err(|e| {
            StorageIOError::write_snapshot(sig.clone(), &std::io::Error::other(e.to_string()))
        })?
        .map_err(|e| {
            StorageIOError::write_snapshot(sig.clone(), &std::io::Error::other(e.to_string()))
        })?;
        if !saved {
            tracing::debug!(snapshot = %meta.snapshot_id, "the stored snapshot already covers this one");
        }
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        // Take a consistent copy under a short read lock; serialize outside it.
        let (model, last_log_id, last_membership) = {
            let st = self.read();
            (
                st.model.clone(),
                st.last_applied,
                st.last_membership.clone(),
            )
        };
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let snapshot_id = match last_log_id {
            Some(l) => format!("{}-{}-{nanos}", l.leader_id.term, l.index),
            None => format!("none-{nanos}"),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        let bytes = encode(&SnapshotRef {
            meta: &meta,
            model: &model,
        })
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        self.store_snapshot(&meta, bytes.clone()).await?;
        tracing::info!(
            snapshot = %meta.snapshot_id,
            revision = model.revision(),
            bytes = bytes.len(),
            "built a snapshot"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, NodeInfo>), StorageError<u64>> {
        let st = self.read();
        Ok((st.last_applied, st.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        Ok(self.apply_sync(entries.into_iter()))
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, NodeInfo>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let sig = Some(meta.signature());
        let received: SnapshotOwned = decode(snapshot.get_ref())
            .map_err(|e| StorageIOError::read_snapshot(sig.clone(), &e))?;
        // Store it under the metadata openraft gives, which is authoritative.
        let bytes = encode(&SnapshotRef {
            meta,
            model: &received.model,
        })
        .map_err(|e| StorageIOError::write_snapshot(sig, &e))?;
        self.store_snapshot(meta, bytes).await?;
        let mut st = self.write();
        let revision = received.model.revision();
        let changes = shoal_model::store::diff(&st.model, &received.model);
        *st = SmState {
            model: received.model,
            last_applied: meta.last_log_id,
            last_membership: meta.last_membership.clone(),
        };
        tracing::info!(
            snapshot = %meta.snapshot_id,
            revision,
            changes = changes.len(),
            "installed a snapshot"
        );
        if !changes.is_empty() {
            self.publish(WatchEvent { revision, changes });
        }
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let store = self.snapshots.clone();
        let latest = tokio::task::spawn_blocking(move || store.latest())
            .await
            .map_err(|e| {
                StorageIOError::read_snapshot(None, &std::io::Error::other(e.to_string()))
            })?
            .map_err(|e| {
                StorageIOError::read_snapshot(None, &std::io::Error::other(e.to_string()))
            })?;
        let Some(stored) = latest else {
            return Ok(None);
        };
        let meta: SnapshotMeta<u64, NodeInfo> =
            crate::codec::from_bytes(&stored.meta).map_err(|e| {
                StorageIOError::read_snapshot(None, &std::io::Error::other(e.to_string()))
            })?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;
    use shoal_model::api::MeshSpec;
    use shoal_model::{Change, Command, PutMode, ResourceKey, Spec, Stamp};

    use super::*;

    fn put(name: &str, mode: PutMode) -> Command {
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
                now: 1.0,
                uid: name.into(),
                account: "123456789012".into(),
                region: "us-east-1".into(),
            },
        }
    }

    fn entry(index: u64, cmd: Command) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(cmd),
        }
    }

    /// Opens a state machine on the snapshots in `dir`.
    async fn open(dir: &std::path::Path) -> (StateMachine, broadcast::Receiver<Arc<WatchEvent>>) {
        let (tx, rx) = broadcast::channel(64);
        let store = SnapshotStore::open(dir).unwrap();
        (StateMachine::open(store, tx, Arc::new(())).unwrap(), rx)
    }

    fn names(sm: &StateMachine) -> Vec<String> {
        sm.read().model.iter().map(|r| r.key.name.clone()).collect()
    }

    #[tokio::test]
    async fn install_snapshot_replaces_the_model_and_tells_watchers() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (mut leader, _) = open(da.path()).await;
        let (mut follower, mut rx) = open(db.path()).await;

        let out = leader
            .apply([
                entry(1, put("a", PutMode::Create)),
                entry(2, put("b", PutMode::Create)),
                entry(3, put("b", PutMode::Update)),
                entry(4, put("a", PutMode::Create)),
            ])
            .await
            .unwrap();
        assert_eq!(out.len(), 4);
        assert!(
            out[3].outcome.as_ref().unwrap().is_err(),
            "duplicate create"
        );
        follower
            .apply([
                entry(1, put("a", PutMode::Create)),
                entry(2, put("stale", PutMode::Create)),
            ])
            .await
            .unwrap();
        for _ in 0..2 {
            rx.recv().await.unwrap();
        }

        let snap = leader.build_snapshot().await.unwrap();
        assert_eq!(snap.meta.last_log_id.unwrap().index, 4);
        follower
            .install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        assert_eq!(names(&follower), ["a", "b"]);
        assert_eq!(follower.read().model, leader.read().model);
        let (applied, _) = follower.applied_state().await.unwrap();
        assert_eq!(applied.unwrap().index, 4);

        // "a" is identical on both sides: no event. "b" is new, "stale" is gone.
        let mut got = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            assert_eq!(ev.revision, 3);
            for c in ev.changes.iter() {
                got.push(match c {
                    Change::Put(r) => format!("put {}", r.key.name),
                    Change::Delete(r) => format!("delete {}", r.key.name),
                });
            }
        }
        assert_eq!(got, ["put b", "delete stale"]);

        // The installed snapshot is the current one, and survives a reopen.
        let cur = follower.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(cur.meta, snap.meta);
        drop((follower, cur));
        let (reopened, _) = open(db.path()).await;
        assert_eq!(names(&reopened), ["a", "b"]);
        assert_eq!(reopened.read().last_applied.unwrap().index, 4);
    }

    #[tokio::test]
    async fn an_older_snapshot_never_replaces_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let (mut sm, _) = open(dir.path()).await;
        sm.apply([entry(1, put("a", PutMode::Create))])
            .await
            .unwrap();
        sm.apply([entry(2, put("b", PutMode::Create))])
            .await
            .unwrap();
        let newer = sm.build_snapshot().await.unwrap();
        // A slow build that copied the state before index 2 was applied finishes last.
        let older_meta = SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), 1)),
            last_membership: StoredMembership::default(),
            snapshot_id: "old".into(),
        };
        sm.store_snapshot(&older_meta, b"ignored".to_vec())
            .await
            .unwrap();
        let cur = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(cur.meta, newer.meta);
    }
}
