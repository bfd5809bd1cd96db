//! Shared test support: temporary stores, a reference model, helpers.
#![allow(dead_code)]

use std::collections::HashMap;
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

/// What the store should hold: key → (value, expiry ms or 0), with LRU order.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub map: HashMap<Vec<u8>, (Vec<u8>, u64)>,
    /// Last use stamp per key (higher is more recent).
    pub used: HashMap<Vec<u8>, u64>,
    /// Stamp of the last write per key: the LRU order after a reopen.
    pub written: HashMap<Vec<u8>, u64>,
    pub tick: u64,
    pub cap: Option<usize>,
}

impl Model {
    pub fn new(cap: Option<usize>) -> Model {
        Model {
            cap,
            ..Model::default()
        }
    }

    fn touch(&mut self, k: &[u8]) {
        self.tick += 1;
        self.used.insert(k.to_vec(), self.tick);
    }

    pub fn visible(&self, k: &[u8], now: i64) -> Option<&Vec<u8>> {
        self.map
            .get(k)
            .filter(|(_, e)| *e == 0 || (*e as i64) > now)
            .map(|(v, _)| v)
    }

    pub fn put(&mut self, k: &[u8], v: &[u8], expiry: u64, now: i64) {
        if expiry != 0 && expiry as i64 <= now {
            self.delete(k);
            return;
        }
        let new = !self.map.contains_key(k);
        self.map.insert(k.to_vec(), (v.to_vec(), expiry));
        self.touch(k);
        self.written.insert(k.to_vec(), self.tick);
        if new && let Some(cap) = self.cap {
            while self.map.len() > cap {
                let oldest = self
                    .used
                    .iter()
                    .min_by_key(|&(_, &t)| t)
                    .map(|(k, _)| k.clone())
                    .unwrap();
                self.delete(&oldest);
            }
        }
    }

    pub fn get(&mut self, k: &[u8], now: i64) -> Option<Vec<u8>> {
        let v = self.visible(k, now).cloned();
        if v.is_some() {
            self.touch(k);
        }
        v
    }

    pub fn delete(&mut self, k: &[u8]) -> bool {
        self.used.remove(k);
        self.written.remove(k);
        self.map.remove(k).is_some()
    }

    pub fn purge(&mut self, now: i64) -> usize {
        let dead: Vec<Vec<u8>> = self
            .map
            .iter()
            .filter(|(_, (_, e))| *e != 0 && (*e as i64) <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &dead {
            self.delete(k);
        }
        dead.len()
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.used.clear();
        self.written.clear();
    }

    /// A reopen: expired entries are dropped, and the LRU order becomes the
    /// order of writes (the file does not record reads).
    pub fn reopen(&mut self, now: i64) {
        self.purge(now);
        self.used = self.written.clone();
    }

    pub fn live_keys(&self, now: i64) -> Vec<Vec<u8>> {
        let mut v: Vec<_> = self
            .map
            .keys()
            .filter(|k| self.visible(k, now).is_some())
            .cloned()
            .collect();
        v.sort();
        v
    }
}

/// The sorted live keys of a store.
pub fn sorted_keys(store: &Store) -> Vec<Vec<u8>> {
    let mut k = store.keys();
    k.sort();
    k
}
