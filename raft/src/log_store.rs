//! The Raft log, vote and committed id, kept in memory and made durable in the write-ahead log
//! (`wal.rs`) before openraft is told they are stored.
//!
//! Every change is a WAL record: an entry, a vote, the committed id, a truncation, a purge, and
//! at the start of every segment a `State` record (vote, committed, purge point) so that older
//! segments can be removed once the snapshot covers their entries. Reopening replays them.
//!
//! **Group commit.** One writer thread owns the WAL. Appends, votes and committed ids queue up
//! while it syncs, and the next batch takes all of them: many entries and one `fdatasync`.
//! openraft hears that entries are stored (the `LogFlushed` callback, which lets them count
//! towards a commit) and a vote or a committed id returns only after the sync that holds them.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, PoisonError, RwLock};
use std::time::Duration;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, StorageError, StorageIOError, Vote};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::wal::{Options, Record, Wal, WalError};
use crate::TypeConfig;

/// WAL record kinds.
const ENTRY: u8 = 1;
const VOTE: u8 = 2;
const COMMITTED: u8 = 3;
const TRUNCATE: u8 = 4;
const PURGE: u8 = 5;
const STATE: u8 = 6;

/// What the log store holds besides the entries, as one record.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    vote: Option<Vote<u64>>,
    committed: Option<LogId<u64>>,
    last_purged: Option<LogId<u64>>,
}

/// The log in memory: what readers see.
#[derive(Default)]
struct Mem {
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    state: State,
}

/// One record for the writer, with what it changes in the state a new segment starts with.
struct Rec {
    kind: u8,
    payload: Vec<u8>,
    effect: Effect,
}

enum Effect {
    Entry(u64),
    Vote(Vote<u64>),
    Committed(Option<LogId<u64>>),
    Purge(LogId<u64>),
    None,
}

enum Done {
    Flushed(LogFlushed<TypeConfig>),
    Reply(oneshot::Sender<Result<(), String>>),
    /// Nobody waits: the record rides with this batch's sync (a failure is logged, and the
    /// next write that waits reports it).
    Quiet,
}

struct Job {
    records: Vec<Rec>,
    done: Done,
}

/// The log storage handed to openraft. Cheap to clone; openraft clones it as the log reader of
/// each replication stream.
#[derive(Clone)]
pub(crate) struct LogStore {
    mem: Arc<RwLock<Mem>>,
    writer: mpsc::Sender<Job>,
    /// The last committed index, shared with [`crate::RaftNode::status`] (0 before any).
    committed_index: Arc<AtomicU64>,
    /// Held only to let [`crate::RaftNode::shutdown`] see when openraft has dropped storage.
    _alive: Arc<()>,
}

/// Why the log could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    /// The WAL is unreadable or damaged.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// A record passed its checksum but does not decode: written by another format.
    #[error("{path}: a log record of kind {kind} does not decode ({reason})")]
    Record {
        /// The WAL directory.
        path: std::path::PathBuf,
        /// The record kind.
        kind: u8,
        /// The decoder's message.
        reason: String,
    },
}

fn bytes<T: Serialize>(v: &T) -> Vec<u8> {
    crate::codec::to_bytes(v).expect("Raft types serialize")
}

impl LogStore {
    /// Opens the log in `dir`, replays it, and starts its writer thread. Also says whether the
    /// log held any record (a store whose log has records must have an identity).
    pub(crate) fn open(
        dir: &Path,
        opts: Options,
        alive: Arc<()>,
    ) -> Result<(LogStore, bool), OpenError> {
        let (wal, recovery) = Wal::open(dir, opts)?;
        if let Some((path, offset)) = &recovery.torn {
            tracing::warn!(path = %path.display(), offset, "cut off a torn tail of the Raft log (a batch a crash interrupted before its sync, so never acknowledged)");
        }
        let had_records = !recovery.records.is_empty();
        // Every segment but the first must hold the whole state (a `State` record) before older
        // segments may be removed. A crash between starting a segment and writing its `State`
        // leaves one without: the writer then puts one in its first batch.
        let active = wal.active_segment();
        let first = recovery.records.first().map_or(active, |r| r.segment);
        let active_has_state = recovery
            .records
            .iter()
            .any(|r| r.segment == active && r.kind == STATE);
        let needs_state = active != first && !active_has_state;
        let mut mem = Mem::default();
        // The highest entry index each segment holds, to know when it may be removed.
        let mut segment_max: BTreeMap<u64, u64> = BTreeMap::new();
        for Record {
            kind,
            payload,
            segment,
            ..
        } in recovery.records
        {
            let bad = |reason: String| OpenError::Record {
                path: dir.to_path_buf(),
                kind,
                reason,
            };
            match kind {
                ENTRY => {
                    let e: Entry<TypeConfig> =
                        crate::codec::from_bytes(&payload).map_err(|e| bad(e.to_string()))?;
                    let m = segment_max.entry(segment).or_default();
                    *m = (*m).max(e.log_id.index);
                    mem.entries.insert(e.log_id.index, e);
                }
                VOTE => {
                    mem.state.vote =
                        Some(crate::codec::from_bytes(&payload).map_err(|e| bad(e.to_string()))?)
                }
                COMMITTED => {
                    mem.state.committed =
                        crate::codec::from_bytes(&payload).map_err(|e| bad(e.to_string()))?
                }
                TRUNCATE => {
                    let since: u64 =
                        crate::codec::from_bytes(&payload).map_err(|e| bad(e.to_string()))?;
                    mem.entries.split_off(&since);
                }
                PURGE => {
                    let upto: LogId<u64> =
                        crate::codec::from_bytes(&payload).map_err(|e| bad(e.to_string()))?;
                    mem.entries = mem.entries.split_off(&(upto.index + 1));
                    mem.state.last_purged = Some(upto);
                }
                STATE => {
                    let s: State =
                        crate::codec::from_bytes(&payload).map_err(|e| bad(e.to_string()))?;
                    if let Some(p) = s.last_purged {
                        mem.entries = mem.entries.split_off(&(p.index + 1));
                    }
                    mem.state = s;
                }
                other => return Err(bad(format!("unknown record kind {other}"))),
            }
        }
        // A vote read back after a restart is not known to be granted any more: a leader
        // restarted with its committed vote would lead its old term again at once, without a
        // first entry of its own, and serve ReadIndex reads at the committed id it finds here.
        // Uncommitted, it stands for election instead, and the new term's first entry commits
        // everything before it. That is what lets `save_committed` skip its own sync.
        if let Some(v) = &mut mem.state.vote {
            v.committed = false;
        }
        let committed_index = Arc::new(AtomicU64::new(mem.state.committed.map_or(0, |c| c.index)));
        let (tx, rx) = mpsc::channel();
        let state = mem.state.clone();
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer(wal, state, segment_max, needs_state, rx))
            .map_err(|e| WalError::Io {
                path: dir.to_path_buf(),
                source: e,
            })?;
        Ok((
            LogStore {
                mem: Arc::new(RwLock::new(mem)),
                writer: tx,
                committed_index,
                _alive: alive,
            },
            had_records,
        ))
    }

    /// The shared last-committed index.
    pub(crate) fn committed_index(&self) -> Arc<AtomicU64> {
        self.committed_index.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Mem> {
        self.mem.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Mem> {
        self.mem.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `records` and waits until they are synced.
    async fn persist(&self, records: Vec<Rec>) -> Result<(), io::Error> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(Job {
                records,
                done: Done::Reply(tx),
            })
            .map_err(|_| io::Error::other("the Raft log writer has stopped"))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(io::Error::other(e)),
            Err(_) => Err(io::Error::other("the Raft log writer has stopped")),
        }
    }
}

/// How long a record nobody waits for (a committed id) may sit in memory for a batch to ride
/// with before it gets a sync of its own.
const QUIET_WAIT: Duration = Duration::from_millis(20);

/// The writer thread: takes every job queued, writes their records as one batch, syncs once,
/// then answers them all; starts a new segment (with a `State` record) when one fills up, and
/// removes the segments whose entries are all purged.
///
/// Jobs nobody waits for are held back until a job that is waited for arrives (or
/// [`QUIET_WAIT`] passes) and go in its batch: every commit saves a committed id, and a sync
/// of its own would keep the writer busy when the next entry arrives, a second sync on the
/// path of every write. Held jobs go first, so records keep the order they were sent in.
fn writer(
    wal: Wal,
    state: State,
    segment_max: BTreeMap<u64, u64>,
    needs_state: bool,
    rx: mpsc::Receiver<Job>,
) {
    let mut w = Writer {
        wal,
        state,
        segment_max,
        needs_state,
    };
    let mut held: Vec<Job> = Vec::new();
    loop {
        let first = if held.is_empty() {
            match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            }
        } else {
            match rx.recv_timeout(QUIET_WAIT) {
                Ok(j) => j,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    w.write(std::mem::take(&mut held));
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    w.write(std::mem::take(&mut held));
                    return;
                }
            }
        };
        held.push(first);
        while held.len() < 4096 {
            match rx.try_recv() {
                Ok(j) => held.push(j),
                Err(_) => break,
            }
        }
        if held.len() < 4096 && held.iter().all(|j| matches!(j.done, Done::Quiet)) {
            continue;
        }
        w.write(std::mem::take(&mut held));
    }
}

/// What the writer thread owns.
struct Writer {
    wal: Wal,
    /// The state as of the last record written (what a new segment starts with).
    state: State,
    /// The highest entry index in each segment, by segment number.
    segment_max: BTreeMap<u64, u64>,
    /// The active segment has no `State` record yet.
    needs_state: bool,
}

impl Writer {
    /// Writes `jobs` as one batch (after a `State` record if the segment lacks one), syncs
    /// once, and answers them.
    fn write(&mut self, mut jobs: Vec<Job>) {
        let Writer {
            wal,
            state,
            segment_max,
            needs_state,
        } = self;
        if std::mem::take(needs_state) {
            jobs.insert(
                0,
                Job {
                    records: vec![Rec {
                        kind: STATE,
                        payload: bytes(&*state),
                        effect: Effect::None,
                    }],
                    done: Done::Quiet,
                },
            );
        }
        let active = wal.active_segment();
        let mut purged = false;
        for r in jobs.iter().flat_map(|j| &j.records) {
            match &r.effect {
                Effect::Entry(i) => {
                    let m = segment_max.entry(active).or_default();
                    *m = (*m).max(*i);
                }
                Effect::Vote(v) => state.vote = Some(*v),
                Effect::Committed(c) => state.committed = *c,
                Effect::Purge(p) => {
                    state.last_purged = Some(*p);
                    purged = true;
                }
                Effect::None => {}
            }
        }
        let written = wal.append(
            jobs.iter()
                .flat_map(|j| &j.records)
                .map(|r| (r.kind, r.payload.as_slice())),
        );
        let mut result = written.map(drop).map_err(|e| e.to_string());
        if result.is_ok() && wal.wants_rotation() {
            // Every segment starts with the whole state, so older ones can go once purged.
            let s = bytes(&state);
            result = wal
                .rotate()
                .and_then(|()| wal.append([(STATE, s.as_slice())]).map(drop))
                .map_err(|e| e.to_string());
            purged = true;
        }
        if result.is_ok() && purged {
            if let Some(p) = state.last_purged {
                // The oldest segments whose entries are all purged (never the active one).
                let keep_from = segment_max
                    .iter()
                    .find(|(_, max)| **max > p.index)
                    .map_or(wal.active_segment(), |(seg, _)| *seg)
                    .min(wal.active_segment());
                if let Err(e) = wal.remove_before(keep_from) {
                    tracing::warn!(error = %e, "cannot remove purged log segments");
                }
                *segment_max = segment_max.split_off(&keep_from);
            }
        }
        if let Err(e) = &result {
            tracing::error!(error = %e, "writing the Raft log failed");
        }
        for job in jobs {
            match job.done {
                Done::Flushed(cb) => cb.log_io_completed(result.clone().map_err(io::Error::other)),
                Done::Reply(tx) => {
                    let _ = tx.send(result.clone());
                }
                Done::Quiet => {}
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<u64>> {
        let start = match range.start_bound() {
            Bound::Included(i) => Bound::Included(*i),
            Bound::Excluded(i) => Bound::Excluded(*i),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(*i),
            Bound::Excluded(i) => Bound::Excluded(*i),
            Bound::Unbounded => Bound::Unbounded,
        };
        if let (Bound::Included(s) | Bound::Excluded(s), Bound::Excluded(e)) = (start, end) {
            if s >= e {
                return Ok(Vec::new());
            }
        }
        Ok(self
            .read()
            .entries
            .range((start, end))
            .map(|(_, e)| e.clone())
            .collect())
    }
}

fn write_error(e: io::Error) -> StorageError<u64> {
    StorageIOError::write_logs(&e).into()
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let m = self.read();
        let last_purged_log_id = m.state.last_purged;
        let last_log_id = m
            .entries
            .last_key_value()
            .map(|(_, e)| e.log_id)
            .or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        // A vote must be durable before it is acted upon, or a restarted node could vote
        // twice in one term.
        self.persist(vec![Rec {
            kind: VOTE,
            payload: bytes(vote),
            effect: Effect::Vote(*vote),
        }])
        .await
        .map_err(|e| StorageIOError::write_vote(&e))?;
        self.write().state.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        Ok(self.read().state.vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        // Written in order with the entries but not waited for: a committed id lost by a crash
        // is only a hint lost. A restarted leader no longer leads its old term (see `open`),
        // so its read index comes from a first entry of a new term, never from a stale
        // committed id (the chaos suite found that, every server killed at once, when the
        // vote came back committed). Waiting here cost a second sync on every commit.
        self.writer
            .send(Job {
                records: vec![Rec {
                    kind: COMMITTED,
                    payload: bytes(&committed),
                    effect: Effect::Committed(committed),
                }],
                done: Done::Quiet,
            })
            .map_err(|_| {
                StorageIOError::write(&io::Error::other("the Raft log writer has stopped"))
            })?;
        self.write().state.committed = committed;
        self.committed_index
            .store(committed.map_or(0, |c| c.index), Ordering::Relaxed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        Ok(self.read().state.committed)
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
        let mut records = Vec::new();
        {
            // Readers (replication) may see the entries before they are synced; only the
            // callback, after the sync, lets them count towards a commit.
            let mut m = self.write();
            for entry in entries {
                let index = entry.log_id.index;
                records.push(Rec {
                    kind: ENTRY,
                    payload: bytes(&entry),
                    effect: Effect::Entry(index),
                });
                m.entries.insert(index, entry);
            }
        }
        self.writer
            .send(Job {
                records,
                done: Done::Flushed(callback),
            })
            .map_err(|_| write_error(io::Error::other("the Raft log writer has stopped")))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        tracing::debug!(from = log_id.index, "truncating the Raft log");
        self.write().entries.split_off(&log_id.index);
        self.persist(vec![Rec {
            kind: TRUNCATE,
            payload: bytes(&log_id.index),
            effect: Effect::None,
        }])
        .await
        .map_err(write_error)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        tracing::debug!(upto = log_id.index, "purging the Raft log");
        {
            let mut m = self.write();
            m.entries = m.entries.split_off(&(log_id.index + 1));
            m.state.last_purged = Some(log_id);
        }
        self.persist(vec![Rec {
            kind: PURGE,
            payload: bytes(&log_id),
            effect: Effect::Purge(log_id),
        }])
        .await
        .map_err(write_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn small() -> Options {
        Options {
            segment_bytes: 4096,
            ..Options::default()
        }
    }

    fn open(dir: &Path) -> LogStore {
        LogStore::open(dir, small(), Arc::new(())).unwrap().0
    }

    fn entry(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    async fn append(store: &mut LogStore, range: std::ops::RangeInclusive<u64>) {
        use openraft::storage::RaftLogStorageExt;
        store.blocking_append(range.map(entry)).await.unwrap();
    }

    /// The vote and the committed id survive a reopen; a vote comes back uncommitted, so that
    /// a restarted leader stands for election instead of leading its old term (regression:
    /// the chaos suite, every server killed at once, saw stale linearizable reads from a
    /// leader restored in its old term with an older committed id).
    #[tokio::test]
    async fn the_committed_id_and_the_vote_survive_a_reopen_and_the_vote_is_uncommitted() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let c = LogId::new(CommittedLeaderId::new(1, 1), 42);
        let mut v = Vote::new_committed(3, 2);
        store.save_committed(Some(c)).await.unwrap();
        // A vote waits for its sync, which also holds the committed id queued before it.
        store.save_vote(&v).await.unwrap();
        assert_eq!(store.read_vote().await.unwrap(), Some(v));
        v.committed = false;
        let image = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), image.path().join(e.file_name())).unwrap();
        }
        let mut restored = open(image.path());
        assert_eq!(restored.read_committed().await.unwrap(), Some(c));
        assert_eq!(restored.read_vote().await.unwrap(), Some(v));
        drop(store);
    }

    /// A committed id is not synced on its own while an entry follows it: it is written in
    /// the entry's batch (one sync for both); alone, it is written once [`QUIET_WAIT`] passes.
    #[tokio::test]
    async fn a_committed_id_rides_with_the_next_batch_or_is_written_after_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let c = LogId::new(CommittedLeaderId::new(1, 1), 1);
        store.save_committed(Some(c)).await.unwrap();
        append(&mut store, 1..=1).await;
        let batch_of = |dir: &Path, kind: u8| {
            let (_, recovery) = Wal::open(dir, small()).unwrap();
            recovery
                .records
                .iter()
                .filter(|r| r.kind == kind)
                .map(|r| r.batch)
                .collect::<Vec<_>>()
        };
        let image = tempfile::tempdir().unwrap();
        let copy = |to: &Path| {
            for e in std::fs::read_dir(dir.path()).unwrap() {
                let e = e.unwrap();
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        };
        copy(image.path());
        let committed = batch_of(image.path(), COMMITTED);
        assert_eq!(
            committed.len(),
            1,
            "the committed id is written with the entry"
        );
        assert_eq!(
            committed,
            batch_of(image.path(), ENTRY),
            "in the same batch"
        );

        let later = LogId::new(CommittedLeaderId::new(1, 1), 2);
        store.save_committed(Some(later)).await.unwrap();
        tokio::time::sleep(QUIET_WAIT * 10).await;
        let image = tempfile::tempdir().unwrap();
        copy(image.path());
        assert_eq!(
            open(image.path()).read_committed().await.unwrap(),
            Some(later)
        );
    }

    #[tokio::test]
    async fn segments_are_removed_once_purged_and_the_log_still_replays() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        store.save_vote(&Vote::new(1, 1)).await.unwrap();
        for i in 1..=200 {
            append(&mut store, i..=i).await;
        }
        let segments = |d: &Path| std::fs::read_dir(d).unwrap().count();
        let before = segments(dir.path());
        assert!(before > 3, "{before} segments");
        store
            .purge(LogId::new(CommittedLeaderId::new(1, 1), 190))
            .await
            .unwrap();
        // One more rotation lets the writer drop what the purge covers.
        for i in 201..=260 {
            append(&mut store, i..=i).await;
        }
        let after = segments(dir.path());
        assert!(after < before, "{after} >= {before}");
        drop(store);
        let mut again = open(dir.path());
        let state = again.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(190));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(260));
        let got = again.try_get_log_entries(191..=260).await.unwrap();
        assert_eq!(got.len(), 70);
        assert_eq!(again.read_vote().await.unwrap(), Some(Vote::new(1, 1)));
    }

    #[tokio::test]
    async fn truncation_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        append(&mut store, 1..=10).await;
        store
            .truncate(LogId::new(CommittedLeaderId::new(1, 1), 6))
            .await
            .unwrap();
        append(&mut store, 6..=7).await;
        drop(store);
        let mut again = open(dir.path());
        let s = again.get_log_state().await.unwrap();
        assert_eq!(s.last_log_id.map(|l| l.index), Some(7));
    }

    /// A crash between starting a segment and writing its `State` record leaves a segment
    /// without the state; the next writer puts it there, so removing the older segments never
    /// loses the vote.
    #[tokio::test]
    async fn a_segment_started_without_its_state_gets_it_before_older_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        store.save_vote(&Vote::new(7, 1)).await.unwrap();
        append(&mut store, 1..=3).await;
        drop(store);
        // The crash: a new segment, named and synced, but no record in it yet.
        {
            let (mut wal, _) = Wal::open(dir.path(), small()).unwrap();
            wal.rotate().unwrap();
        }
        let mut store = open(dir.path());
        append(&mut store, 4..=4).await;
        store
            .purge(LogId::new(CommittedLeaderId::new(1, 1), 3))
            .await
            .unwrap();
        // The purge removes the first segment (all its entries are purged), with the vote in it.
        assert!(!dir.path().join("0000000000000001.wal").exists());
        drop(store);
        let mut again = open(dir.path());
        assert_eq!(
            again.read_vote().await.unwrap().map(|v| v.leader_id),
            Some(Vote::new(7, 1).leader_id)
        );
    }
}
