//! Shared test support: temporary stores, a reference model, helpers.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use sfs::{ManualClock, Options, Store, SyncPolicy};

/// A temporary directory holding one store file.
pub struct TempStore {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl TempStore {
    pub fn new() -> TempStore {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.sfs");
        TempStore { dir, path }
    }

    /// Options for fast tests: no fdatasync, a manual clock.
    pub fn options(&self, clock: &Arc<ManualClock>) -> Options {
        Options::new().sync(SyncPolicy::Never).clock(clock.clone())
    }

    pub fn open(&self, clock: &Arc<ManualClock>) -> Store {
        self.options(clock).open(&self.path).expect("open")
    }
}

pub fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(1_000_000))
}

/// The reference model lives in the library so the fuzz targets share it.
pub use sfs::fuzzing::Model;

/// The sorted live keys of a store.
pub fn sorted_keys(store: &Store) -> Vec<Vec<u8>> {
    let mut k = store.keys();
    k.sort();
    k
}
