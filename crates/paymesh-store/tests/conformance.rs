//! openraft's own storage conformance suite, run against paymesh's log store
//! (segment files) and state machine (core state with checkpoint files).

// Test helpers may unwrap: a panic here is a failed test.
#![allow(clippy::unwrap_used, clippy::result_large_err)]

use openraft::testing::{StoreBuilder, Suite};
use paymesh_core::id::RegionId;
use paymesh_store::raft_types::StorageError;
use paymesh_store::{LogStore, StateMachineStore, TypeConfig};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = LogStore::open(&dir.path().join("log"))?;
        let state_machine = StateMachineStore::open(&dir.path().join("sm"), RegionId::new("test-region").unwrap())?;
        Ok((dir, log, state_machine))
    }
}

/// The suite builds its own runtime per case, so this is a plain test.
#[test]
fn openraft_storage_conformance_suite_passes() {
    if let Err(failure) = Suite::test_all(Builder) {
        panic!("the storage suite failed: {failure}");
    }
}
