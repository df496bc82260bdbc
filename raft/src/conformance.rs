//! openraft's storage conformance suite, run against the WAL log store and the snapshot-file
//! state machine, each test on a fresh store in its own temporary directory.

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use tempfile::TempDir;
use tokio::sync::broadcast;

use crate::log_store::LogStore;
use crate::snapshot_store::SnapshotStore;
use crate::state_machine::StateMachine;
use crate::wal::Options;
use crate::TypeConfig;

struct WalBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for WalBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = TempDir::new().expect("temp dir");
        let alive = Arc::new(());
        let (events, _) = broadcast::channel(16);
        let (log, _) = LogStore::open(&dir.path().join("wal"), Options::default(), alive.clone())
            .expect("open the log");
        let snapshots = SnapshotStore::open(&dir.path().join("snapshots")).expect("snapshots");
        let sm = StateMachine::open(snapshots, events, alive).expect("open the state machine");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() -> Result<(), StorageError<u64>> {
    // The suite builds its own tokio runtime per test, so this is a plain test.
    Suite::test_all(WalBuilder)
}
