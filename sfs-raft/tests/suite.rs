//! openraft's own storage test suite, on a log store and a state machine in
//! a fresh temporary directory per test.

// openraft's `StorageError` is large; its traits fix it.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use sfs_raft::{LogStore, NodeId, StateMachine, TypeConfig};
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = LogStore::open(dir.path().join("log.sfs"))?;
        let sm = StateMachine::open(dir.path().join("sm"), Arc::new(sfs::SystemClock))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_suite() -> Result<(), StorageError<NodeId>> {
    Suite::test_all(Builder)
}
