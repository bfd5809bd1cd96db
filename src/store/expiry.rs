//! Expiry: removing expired entries (`purge_expired`, an insert at the entry
//! cap making room, and the background sweep of active expiry), planning
//! when the background thread sweeps next, and the delays it achieves.
//!
//! Every removal goes through `unindex`, the path deletes take: older copies
//! freed first, the free header written before the key leaves the index, and
//! under `SyncPolicy::Always` a sync before the call returns. Entries are
//! removed a batch at a time per shard, so that no shard is write-locked for
//! long and the sweep and `purge_expired` let go of the gate between batches
//! (so that events are handed over with no lock held, and `clear` is never
//! kept waiting for a whole mass expiry).

use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Inner, ShardCell, SyncPolicy};
use crate::clock::millis_to_system_time;
use crate::error::Result;
use crate::events::{Event, Notes};
use crate::format::is_expired;

/// Entries removed per shard write lock: a reader of that shard waits for at
/// most this many removals.
pub(crate) const SWEEP_BATCH: usize = 32;

/// How many of the latest removal delays `Stats` summarises.
const RING: usize = 256;

/// The delays (ms) between expiry and removal of the latest removals.
#[derive(Clone)]
pub(super) struct DelayRing {
    delays: [u32; RING],
    len: usize,
    next: usize,
}

impl Default for DelayRing {
    fn default() -> Self {
        DelayRing {
            delays: [0; RING],
            len: 0,
            next: 0,
        }
    }
}

impl DelayRing {
    fn push(&mut self, ms: u64) {
        self.delays[self.next] = u32::try_from(ms).unwrap_or(u32::MAX);
        self.next = (self.next + 1) % RING;
        self.len = (self.len + 1).min(RING);
    }

    /// The median and the largest of the delays kept.
    pub(super) fn summary(&self) -> Option<(Duration, Duration)> {
        if self.len == 0 {
            return None;
        }
        let mut d = self.delays[..self.len].to_vec();
        d.sort_unstable();
        let ms = |v: u32| Duration::from_millis(u64::from(v));
        Some((ms(d[(d.len() - 1) / 2]), ms(d[d.len() - 1])))
    }
}

/// What one batch did.
struct Batch {
    removed: usize,
    /// More expired entries may be left in the shard.
    more: bool,
}

impl Inner {
    /// `Store::purge_expired`.
    pub(super) fn purge(&self) -> Result<usize> {
        self.check_writable()?;
        self.remove_expired(self.clock.now_millis())
    }

    /// One pass of active expiry (the background thread's, or a test's):
    /// removes what has expired by now. Nothing to do on a closed or
    /// read-only store.
    pub(super) fn sweep(&self) -> Result<usize> {
        if self.read_only || self.closed.load(Ordering::Acquire) {
            return Ok(0);
        }
        self.remove_expired(self.clock.now_millis())
    }

    /// Removes the entries expired at `now`, a batch at a time, taking the
    /// gate for each batch and handing each batch's events over after it.
    fn remove_expired(&self, now: i64) -> Result<usize> {
        let mut notes = Notes::new(&self.hub);
        let mut purged = 0usize;
        for cell in self.shards.iter() {
            loop {
                let gate = self.gate.read();
                let batch = self.purge_batch(cell, now, &mut notes);
                let batch = match batch {
                    Ok(b) => b,
                    Err(e) => {
                        drop(gate);
                        return Err(e);
                    }
                };
                purged += batch.removed;
                drop(gate);
                notes.flush();
                if !batch.more {
                    break;
                }
            }
        }
        if purged > 0 && self.policy == SyncPolicy::Always {
            let _gate = self.gate.read();
            self.sync_to(self.writes.load(Ordering::Acquire))?;
        }
        Ok(purged)
    }

    /// Removes the entries expired at `now`; the caller holds the gate (an
    /// insert at the entry cap). Events go to `notes`.
    pub(super) fn purge_held(&self, now: i64, notes: &mut Notes<'_>) -> Result<usize> {
        let mut purged = 0usize;
        for cell in self.shards.iter() {
            loop {
                let batch = self.purge_batch(cell, now, notes)?;
                purged += batch.removed;
                if !batch.more {
                    break;
                }
            }
        }
        if purged > 0 && self.policy == SyncPolicy::Always {
            self.sync_to(self.writes.load(Ordering::Acquire))?;
        }
        Ok(purged)
    }

    /// Removes up to [`SWEEP_BATCH`] entries of one shard expired at `now`.
    /// The caller holds the gate.
    fn purge_batch(&self, cell: &ShardCell, now: i64, notes: &mut Notes<'_>) -> Result<Batch> {
        if cell
            .map
            .read()
            .earliest_expiry()
            .is_none_or(|e| !is_expired(e, now))
        {
            return Ok(Batch {
                removed: 0,
                more: false,
            });
        }
        let mut shard = cell.map.write();
        let ids = shard.expired(now, SWEEP_BATCH);
        let full = ids.len() == SWEEP_BATCH;
        let mut freed = Vec::new();
        let mut delays = Vec::new();
        // Entries whose old copies' free headers need a sync first are left
        // for after that sync.
        let mut wait: Option<u64> = None;
        let mut result = Ok(());
        let removed_at = self.clock.now_millis();
        for id in ids {
            let slot = shard.slot(id);
            let (offset, expiry) = (slot.offset(), slot.expiry());
            let hash = self.hasher.hash_one(slot.key.as_bytes());
            if let Some(g) = self.unsettled(hash) {
                wait = Some(wait.unwrap_or(0).max(g));
                continue;
            }
            let key = notes.on().then(|| slot.key.as_bytes().to_vec());
            match self.unindex(&mut shard, cell, hash, id, offset) {
                Ok(len) => {
                    if let Some(l) = len {
                        freed.push((offset, l));
                    }
                    delays.push(removed_at.saturating_sub(expiry as i64).max(0) as u64);
                    if let Some(key) = key {
                        notes.add(|| Event::Expired {
                            key,
                            expired_at: millis_to_system_time(expiry),
                        });
                    }
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        drop(shard);
        for &(o, l) in &freed {
            self.return_space(o, l);
        }
        self.expired_purged
            .fetch_add(delays.len() as u64, Ordering::Relaxed);
        if !delays.is_empty() {
            let mut ring = self.expiry_delays.lock();
            for d in &delays {
                ring.push(*d);
            }
        }
        result?;
        if let Some(g) = wait {
            self.sync_to(g)?;
        }
        Ok(Batch {
            removed: delays.len(),
            more: full || wait.is_some(),
        })
    }

    /// Called after a write gave an entry the expiry `expiry_ms` (not 0):
    /// wakes the background thread if that entry's removal is due before
    /// the sweep it has planned. One atomic load when it is not.
    pub(super) fn note_expiry(&self, expiry_ms: u64) {
        let Some(delay) = self.expiry_delay else {
            return;
        };
        let due = (expiry_ms.min(i64::MAX as u64) as i64).saturating_add(delay_ms(delay));
        if due < self.next_sweep_ms.load(Ordering::SeqCst) {
            self.next_sweep_ms.fetch_min(due, Ordering::SeqCst);
            // Under `stop`, which the thread holds from planning to waiting:
            // the wake-up cannot fall between the two.
            let _stop = self.stop.lock();
            self.stop_cv.notify_all();
        }
    }

    /// Plans the next sweep: the earliest expiry in the store plus the
    /// delay. Returns when the background thread should look again (`None`:
    /// no entry has an expiry; a write of one wakes it). Called by the
    /// thread with `stop` held.
    pub(super) fn plan_sweep(&self) -> Option<Instant> {
        let delay = self.expiry_delay?;
        // Writers that add an expiry from here on lower the plan themselves.
        self.next_sweep_ms.store(i64::MAX, Ordering::SeqCst);
        let earliest = self
            .shards
            .iter()
            .filter_map(|c| c.map.read().earliest_expiry())
            .min();
        if let Some(e) = earliest {
            let due = (e.min(i64::MAX as u64) as i64).saturating_add(delay_ms(delay));
            self.next_sweep_ms.fetch_min(due, Ordering::SeqCst);
        }
        let due = self.next_sweep_ms.load(Ordering::SeqCst);
        if due == i64::MAX {
            return None;
        }
        // The clock may be a manual one, or jump: look again within one delay.
        let wait = due
            .saturating_sub(self.clock.now_millis())
            .clamp(0, delay_ms(delay).max(10));
        Instant::now().checked_add(Duration::from_millis(wait as u64))
    }

    /// Whether the planned sweep is due by the store's clock.
    pub(super) fn sweep_due(&self) -> bool {
        self.expiry_delay.is_some()
            && self.clock.now_millis() >= self.next_sweep_ms.load(Ordering::SeqCst)
    }
}

fn delay_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_ring_keeps_the_latest_and_summarises_them() {
        let mut r = DelayRing::default();
        assert!(r.summary().is_none());
        for ms in [5, 1, 9] {
            r.push(ms);
        }
        assert_eq!(
            r.summary(),
            Some((Duration::from_millis(5), Duration::from_millis(9)))
        );
        for _ in 0..RING {
            r.push(2);
        }
        assert_eq!(
            r.summary(),
            Some((Duration::from_millis(2), Duration::from_millis(2)))
        );
    }
}
