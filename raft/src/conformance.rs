//! openraft's storage conformance suite, run against the sled log store and state machine,
//! each test on a fresh database in its own temporary directory.

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use tempfile::TempDir;
use tokio::sync::broadcast;

use crate::log_store::LogStore;
use crate::state_machine::StateMachine;
use crate::TypeConfig;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for SledBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = TempDir::new().expect("temp dir");
        let db = sled::Config::new()
            .path(dir.path().join("raft"))
            .open()
            .expect("open sled");
        let alive = Arc::new(());
        let (events, _) = broadcast::channel(16);
        let log = LogStore::open(&db, alive.clone())?;
        let sm = StateMachine::open(&db, events, alive)?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() -> Result<(), StorageError<u64>> {
    // The suite builds its own tokio runtime per test, so this is a plain test.
    Suite::test_all(SledBuilder)
}
