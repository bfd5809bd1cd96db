//! Durability: group commit (`sync_to`), freeing old copies once a sync
//! covers their replacements, and the background thread (periodic sync,
//! automatic compaction).

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;

impl Inner {
    /// Makes every write up to generation `generation` durable, sharing one
    /// `fdatasync` between all the threads waiting at the time (group
    /// commit). Then frees old copies that the sync made safe to reuse.
    pub(super) fn sync_to(&self, generation: u64) -> Result<()> {
        let mut st = self.sync_state.lock();
        loop {
            if st.synced >= generation {
                break;
            }
            if st.running {
                self.sync_done.wait(&mut st);
                continue;
            }
            st.running = true;
            let target = self.writes.load(Ordering::Acquire);
            drop(st);
            let r = self.storage.sync();
            st = self.sync_state.lock();
            st.running = false;
            if r.is_ok() {
                st.synced = st.synced.max(target);
            }
            self.sync_done.notify_all();
            r.map_err(self.io("syncing the file"))?;
        }
        let synced = st.synced;
        drop(st);
        self.release_pending(synced);
        Ok(())
    }

    /// Frees the old copies that a sync up to `synced` made safe to reuse
    /// (each one stays listed until its free header is written: see
    /// `free_retired`). Those whose header cannot be written wait again,
    /// still valid, and are freed first when their key goes.
    pub(super) fn release_pending(&self, synced: u64) {
        let ready: Vec<u64> = {
            let mut sp = self.space.lock();
            sp.unsynced_frees.retain(|f| f.1 > synced);
            sp.pending
                .iter()
                .filter(|p| p.generation <= synced && !p.freeing)
                .map(|p| p.offset)
                .collect()
        };
        for offset in ready {
            self.free_retired(offset, false);
        }
    }

    pub(super) fn sync_all(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        // It frees old copies: a write like any other.
        let _gate = self.gate.read();
        self.sync_to(self.writes.load(Ordering::Acquire))?;
        // Old copies freed by that sync wrote free headers: make them durable too.
        self.sync_to(self.writes.load(Ordering::Acquire))
    }

    /// The background thread: syncs every `sync_every` (SyncPolicy::Periodic)
    /// and checks the auto-compaction thresholds, until the store closes.
    pub(super) fn maintenance_loop(&self, sync_every: Option<Duration>, auto: Option<AutoCompact>) {
        use std::time::Instant;
        let start = Instant::now();
        let mut next_sync = sync_every.map(|d| start + d);
        let mut next_check = auto.map(|a| start + a.check_every);
        let mut stop = self.stop.lock();
        loop {
            let wake = match (next_sync, next_check) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => return,
            };
            while !*stop && Instant::now() < wake {
                self.stop_cv.wait_until(&mut stop, wake);
            }
            if *stop {
                return;
            }
            drop(stop);
            let now = Instant::now();
            if let (Some(t), Some(d)) = (next_sync, sync_every)
                && now >= t
            {
                // As `sync()` does: the old copies freed after the first sync
                // are made durable by the second.
                let _ = self.sync_all();
                next_sync = Some(now + d);
            }
            if let (Some(t), Some(a)) = (next_check, auto)
                && now >= t
            {
                if self.wants_compaction(&a) {
                    let _ = self.compact();
                }
                next_check = Some(Instant::now() + a.check_every);
            }
            stop = self.stop.lock();
        }
    }

    /// Whether free space passes both auto-compaction thresholds.
    pub(super) fn wants_compaction(&self, a: &AutoCompact) -> bool {
        let (free, end) = {
            let sp = self.space.lock();
            (sp.free.free_bytes() + sp.pending_bytes, sp.free.end())
        };
        free >= a.min_free_bytes && free as f64 >= a.min_free_ratio * end as f64
    }
}
