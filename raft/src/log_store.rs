//! The Raft log, vote and commit index, in sled.
//!
//! Trees: `raft_log` maps a big-endian log index to a JSON [`Entry`]; `raft_meta` holds the
//! `vote`, the `committed` log id, the `last_purged` log id, and the identity of the server the
//! store belongs to: its `node_id` and its `incarnation`. A vote and appended entries are flushed to disk before openraft is told they are
//! stored: that is what makes an acknowledged write survive `kill -9`.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, StorageError, StorageIOError, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{decode, encode, index_key, key_index};
use crate::TypeConfig;

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";
const NODE_ID: &[u8] = b"node_id";
const INCARNATION: &[u8] = b"incarnation";
const INCARNATION_LEGACY: &[u8] = b"incarnation_legacy";

/// Who a store belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    /// The node id the store was created for.
    pub(crate) node_id: u64,
    /// A random id made when the store was created: a server whose store is wiped comes back
    /// with the same node id but a new incarnation, which its peers can tell apart.
    pub(crate) incarnation: String,
    /// The store was created before incarnations existed, so the membership may record this
    /// server without one: RPCs that name no incarnation are then accepted.
    pub(crate) legacy: bool,
}

/// The log storage handed to openraft. Cheap to clone (sled handles are reference counted);
/// openraft clones it as the log reader of each replication stream.
#[derive(Clone)]
pub(crate) struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    /// The last committed index, shared with [`crate::RaftNode::status`] (0 before any).
    committed_index: Arc<AtomicU64>,
    /// Held only to let [`crate::RaftNode::shutdown`] see when openraft has dropped storage.
    _alive: Arc<()>,
}

impl LogStore {
    /// Opens the log trees of `db`.
    pub(crate) fn open(db: &sled::Db, alive: Arc<()>) -> Result<LogStore, StorageError<u64>> {
        let log = db
            .open_tree("raft_log")
            .map_err(|e| StorageIOError::read_logs(&e))?;
        let meta = db
            .open_tree("raft_meta")
            .map_err(|e| StorageIOError::read(&e))?;
        let store = LogStore {
            db: db.clone(),
            log,
            meta,
            committed_index: Arc::new(AtomicU64::new(0)),
            _alive: alive,
        };
        let committed: Option<LogId<u64>> = store.get_meta(COMMITTED)?;
        store
            .committed_index
            .store(committed.map_or(0, |c| c.index), Ordering::Relaxed);
        Ok(store)
    }

    /// The shared last-committed index.
    pub(crate) fn committed_index(&self) -> Arc<AtomicU64> {
        self.committed_index.clone()
    }

    /// The identity of this store, recording `id` and a fresh incarnation if it is new.
    pub(crate) async fn bind_identity(&self, id: u64) -> Result<Identity, StorageError<u64>> {
        let stored_id = self.get_meta::<u64>(NODE_ID)?;
        let incarnation = self.get_meta::<String>(INCARNATION)?;
        if let (Some(node_id), Some(incarnation)) = (stored_id, &incarnation) {
            let legacy = self.get_meta::<bool>(INCARNATION_LEGACY)?.unwrap_or(false);
            return Ok(Identity {
                node_id,
                incarnation: incarnation.clone(),
                legacy,
            });
        }
        let node_id = stored_id.unwrap_or(id);
        // A store that already has a node id but no incarnation was made by an older build.
        let legacy = stored_id.is_some();
        let incarnation = incarnation.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        // Incarnation first: sled persists writes in order, so a crash in between leaves a
        // store without a node id, which is still treated as new.
        self.put_meta(INCARNATION, &incarnation)?;
        if legacy {
            self.put_meta(INCARNATION_LEGACY, &true)?;
        }
        self.put_meta(NODE_ID, &node_id)?;
        self.flush().await.map_err(|e| StorageIOError::write(&e))?;
        Ok(Identity {
            node_id,
            incarnation,
            legacy,
        })
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError<u64>> {
        let Some(bytes) = self.meta.get(key).map_err(|e| StorageIOError::read(&e))? else {
            return Ok(None);
        };
        let value = decode(&bytes).map_err(|e| StorageIOError::read(&e))?;
        Ok(Some(value))
    }

    fn put_meta<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), StorageError<u64>> {
        let bytes = encode(value).map_err(|e| StorageIOError::write(&e))?;
        self.meta
            .insert(key, bytes)
            .map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }

    /// Makes everything written so far durable (sled flushes the whole database at once).
    async fn flush(&self) -> Result<(), sled::Error> {
        self.db.flush_async().await.map(|_| ())
    }

    fn decode_entry(index: u64, bytes: &[u8]) -> Result<Entry<TypeConfig>, StorageError<u64>> {
        decode(bytes).map_err(|e| StorageIOError::read_log_at_index(index, &e).into())
    }

    /// Removes the log entries whose index is in `range`, as one atomic batch.
    fn remove_range(&self, range: impl RangeBounds<[u8; 8]>) -> Result<(), StorageError<u64>> {
        let mut batch = sled::Batch::default();
        for key in self.log.range(range).keys() {
            batch.remove(key.map_err(|e| StorageIOError::write_logs(&e))?);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<u64>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => match i.checked_add(1) {
                Some(s) => s,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        let mut entries = Vec::new();
        for item in self.log.range(index_key(start)..) {
            let (key, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            let index = key_index(&key).map_err(|e| StorageIOError::read_logs(&e))?;
            if !range.contains(&index) {
                break;
            }
            entries.push(Self::decode_entry(index, &value)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let last_purged_log_id: Option<LogId<u64>> = self.get_meta(LAST_PURGED)?;
        let last = self.log.last().map_err(|e| StorageIOError::read_logs(&e))?;
        let last_log_id = match last {
            Some((key, value)) => {
                let index = key_index(&key).map_err(|e| StorageIOError::read_logs(&e))?;
                Some(Self::decode_entry(index, &value)?.log_id)
            }
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let bytes = encode(vote).map_err(|e| StorageIOError::write_vote(&e))?;
        self.meta
            .insert(VOTE, bytes)
            .map_err(|e| StorageIOError::write_vote(&e))?;
        // A vote must be durable before it is acted upon, or a restarted node could vote
        // twice in one term.
        self.flush()
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        let Some(bytes) = self
            .meta
            .get(VOTE)
            .map_err(|e| StorageIOError::read_vote(&e))?
        else {
            return Ok(None);
        };
        let vote = decode(&bytes).map_err(|e| StorageIOError::read_vote(&e))?;
        Ok(Some(vote))
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        // Flushed before openraft applies (and so before any write is acknowledged): a
        // leader restarted with its vote keeps leading the same term without a new first
        // entry, and its read index is max(first entry of its term, committed). With a
        // committed id older than the acknowledged writes, its linearizable reads would be
        // served from a state machine behind them (found by the chaos suite, every server
        // killed at once).
        match committed {
            Some(c) => {
                self.put_meta(COMMITTED, &c)?;
                self.committed_index.store(c.index, Ordering::Relaxed);
            }
            None => {
                self.meta
                    .remove(COMMITTED)
                    .map_err(|e| StorageIOError::write(&e))?;
                self.committed_index.store(0, Ordering::Relaxed);
            }
        }
        self.flush().await.map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        self.get_meta(COMMITTED)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes =
                encode(&entry).map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))?;
            batch.insert(&index_key(entry.log_id.index)[..], bytes);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        // Only a flushed entry may count towards a commit.
        match self.flush().await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "flushing the Raft log failed");
                callback.log_io_completed(Err(io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(&e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        tracing::debug!(from = log_id.index, "truncating the Raft log");
        self.remove_range(index_key(log_id.index)..)?;
        self.flush()
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        tracing::debug!(upto = log_id.index, "purging the Raft log");
        // Record the purge point first: a crash in between leaves entries that are merely
        // ignored, never a log that seems to start earlier than it does.
        self.put_meta(LAST_PURGED, &log_id)?;
        self.remove_range(..=index_key(log_id.index))?;
        self.flush()
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens the store, waiting (bounded) for a previous handle's background threads to
    /// release sled's file lock, as `RaftNode::open` does.
    async fn open(dir: &std::path::Path) -> LogStore {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match sled::Config::new().path(dir).open() {
                Ok(db) => return LogStore::open(&db, Arc::new(())).unwrap(),
                Err(e) if std::time::Instant::now() < deadline => {
                    assert!(e.to_string().contains("could not acquire lock"), "{e}");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("the store stayed locked for 5 s: {e}"),
            }
        }
    }

    /// Copies every file of `from` into `to`: what a crash leaves on disk of a store that is
    /// still open (sled's unflushed writes are in its memory buffers, not in the files).
    fn crash_image(from: &std::path::Path, to: &std::path::Path) {
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let target = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                std::fs::create_dir_all(&target).unwrap();
                crash_image(&e.path(), &target);
            } else {
                std::fs::copy(e.path(), &target).unwrap();
            }
        }
    }

    /// Regression (chaos suite, every server killed at once): the committed id was not
    /// flushed, so a leader restarted with its vote (openraft restores it as leader in the same
    /// term, and its read index is max(first entry of its term, committed)) served
    /// linearizable reads from a state machine behind writes it had acknowledged. Once
    /// `save_committed` returns, the committed id must survive a crash.
    #[tokio::test]
    async fn committed_id_survives_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path()).await;
        let c = LogId::new(openraft::CommittedLeaderId::new(1, 1), 42);
        store.save_committed(Some(c)).await.unwrap();
        let image = tempfile::tempdir().unwrap();
        crash_image(dir.path(), image.path());
        let mut restored = open(image.path()).await;
        assert_eq!(restored.read_committed().await.unwrap(), Some(c));
        drop(store);
    }

    #[tokio::test]
    async fn identity_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = open(dir.path()).await.bind_identity(3).await.unwrap();
        assert_eq!(first.node_id, 3);
        assert!(!first.legacy);
        assert_eq!(first.incarnation.len(), 36, "a uuid: {}", first.incarnation);
        // Reopened (even under another configured id): the same identity.
        let again = open(dir.path()).await.bind_identity(4).await.unwrap();
        assert_eq!(again, first);

        // A wiped store is a new incarnation.
        let other = tempfile::tempdir().unwrap();
        let wiped = open(other.path()).await.bind_identity(3).await.unwrap();
        assert_ne!(wiped.incarnation, first.incarnation);
    }

    #[tokio::test]
    async fn a_store_from_before_incarnations_is_legacy() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path()).await;
            store.put_meta(NODE_ID, &5u64).unwrap();
            store.flush().await.unwrap();
        }
        let id = open(dir.path()).await.bind_identity(5).await.unwrap();
        assert!(id.legacy);
        assert_eq!(id.node_id, 5);
        let again = open(dir.path()).await.bind_identity(5).await.unwrap();
        assert_eq!(again, id);
    }
}
