//! Reader locks: blocks borrowed by `ValueRef`s (and by compaction while it
//! copies them). A locked block that is freed stays out of the free list
//! until its last reader leaves, so it is neither reused nor cut off the file.

use super::*;

/// Offsets of borrowed blocks, hashed with foldhash (SipHash, std's default,
/// costs more than the rest of a pin).
pub(super) type PinMap = hashbrown::HashMap<u64, Pin, foldhash::fast::FixedState>;

/// A block borrowed by `ValueRef`s.
#[derive(Default)]
pub(super) struct Pin {
    pub(super) readers: u32,
    /// Set when the block was freed while borrowed: its length, to free when
    /// the last reader leaves.
    pub(super) freed: Option<u64>,
}

/// Reader locks on blocks borrowed by `ValueRef`s, by block offset.
pub(super) struct ReaderLocks {
    pub(super) shards: Box<[Mutex<PinMap>]>,
}

impl ReaderLocks {
    pub(super) fn new() -> ReaderLocks {
        ReaderLocks {
            shards: (0..16).map(|_| Mutex::new(PinMap::default())).collect(),
        }
    }

    pub(super) fn shard(&self, offset: u64) -> &Mutex<PinMap> {
        &self.shards[((offset >> 3) as usize) % self.shards.len()]
    }

    pub(super) fn pin(&self, offset: u64) {
        self.shard(offset).lock().entry(offset).or_default().readers += 1;
    }

    /// Drops one reader. If it was the last reader of a freed block, calls
    /// `free` with the block's length before letting go of the lock, so that
    /// nobody (`clear`, `check_invariants`) can find the block neither pinned
    /// nor returned.
    pub(super) fn unpin(&self, offset: u64, free: impl FnOnce(u64)) {
        let mut m = self.shard(offset).lock();
        let Some(e) = m.get_mut(&offset) else {
            return;
        };
        e.readers -= 1;
        if e.readers > 0 {
            return;
        }
        if let Some(len) = m.remove(&offset).and_then(|p| p.freed) {
            free(len);
        }
    }

    pub(super) fn is_pinned(&self, offset: u64) -> bool {
        self.shard(offset).lock().contains_key(&offset)
    }

    /// If the block is pinned, records that it is to be freed later.
    pub(super) fn defer_if_pinned(&self, offset: u64, len: u64) -> bool {
        match self.shard(offset).lock().get_mut(&offset) {
            Some(e) => {
                e.freed = Some(len);
                true
            }
            None => false,
        }
    }

    pub(super) fn count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().values().filter(|e| e.freed.is_some()).count())
            .sum()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.shards.iter().all(|s| s.lock().is_empty())
    }

    /// Every shard, locked: nothing is pinned or unpinned meanwhile.
    #[cfg(any(test, feature = "testing"))]
    pub(super) fn lock_all(&self) -> Vec<parking_lot::MutexGuard<'_, PinMap>> {
        self.shards.iter().map(|s| s.lock()).collect()
    }
}
