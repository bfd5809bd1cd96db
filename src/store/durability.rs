//! Durability: group commit (`sync_to`), freeing old copies once a sync
//! covers their replacements, and the background thread (periodic sync,
//! automatic compaction, active expiry's sweeps).

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;

impl Inner {
    /// Makes every write up to generation `generation` durable, sharing one
    /// `fdatasync` between all the threads waiting at the time (group
    /// commit). Then frees old copies that the sync made safe to reuse.
    ///
    /// A failed `fdatasync` is an error for every caller whose write it
    /// covered, the ones waiting for it included: Linux reports a failed
    /// writeback once, and the pages it lost are gone, so a later sync that
    /// succeeds must not tell them otherwise. A caller that arrives after the
    /// failure syncs anew.
    pub(super) fn sync_to(&self, generation: u64) -> Result<()> {
        let mut st = self.sync_state.lock();
        let failures_seen = st.failures;
        let me = std::thread::current().id();
        loop {
            if st.failures != failures_seen && st.failed_through >= generation {
                st.asking.retain(|a| a.thread != me);
                let e = std::io::Error::other(
                    "an fdatasync that covered this write failed (in another thread); \
                     the write may not be durable",
                );
                return Err(Error::io(&self.path, "syncing the file", e));
            }
            if st.synced >= generation {
                // Covered by a sync that started after it wrote (and after
                // it asked again, perhaps): no longer asking.
                st.asking.retain(|a| a.thread != me);
                break;
            }
            if !st.asking.iter().any(|a| a.thread == me) {
                st.asking.push(super::Asking {
                    thread: me,
                    generation,
                });
                if st.gathering {
                    self.sync_asked.notify_all();
                }
            }
            if st.running {
                // Asleep until the leader unparks it (or spuriously: the
                // loop looks again). Registered under the lock that the
                // leader takes the list under, so no wake-up is lost; an
                // unpark before the park leaves a token that ends it. Each
                // follower has its own wake-up, so all run at once: with
                // a condition variable, `notify_all` wakes one and moves
                // the rest to the mutex, and they woke one after another.
                st.sleepers.push(std::thread::current());
                parking_lot::MutexGuard::unlocked(&mut st, std::thread::park);
                continue;
            }
            st.running = true;
            self.gather(&mut st);
            // Everyone asking now has written: the sync covers them. The
            // group is those whose writes the last sync had not covered.
            let synced_before = st.synced;
            let asking = std::mem::take(&mut st.asking);
            st.last_group = asking
                .into_iter()
                .filter(|a| a.generation > synced_before)
                .map(|a| a.thread)
                .collect();
            drop(st);
            // Writes from here to the `target` below are covered though
            // their writers have not asked (they are not in the group).
            self.storage.point("sync: taken");
            // Batches an earlier sync made durable are settled now, and this
            // sync covers their settling (see `unsettled`).
            let settling = self.settle_ready(synced_before);
            let target = self.writes.load(Ordering::Acquire);
            let started = std::time::Instant::now();
            // A panic inside the storage (a bug, or a test's) must not leave
            // `running` set, or every later sync would wait forever: it is a
            // failed sync.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.storage.sync()))
                .unwrap_or_else(|panic| {
                    Err(std::io::Error::other(format!(
                        "fdatasync panicked: {}",
                        panic_message(&*panic)
                    )))
                });
            st = self.sync_state.lock();
            st.running = false;
            st.last_sync = started.elapsed();
            // The writers this sync covered and those that asked while it
            // ran were at work at the same time.
            let seen = st.last_group.len() + st.asking.len();
            let at = st.seen_at;
            st.seen[at] = u32::try_from(seen).unwrap_or(u32::MAX);
            st.seen_at = (at + 1) % super::SEEN_SYNCS;
            match &r {
                Ok(()) => {
                    st.synced = st.synced.max(target);
                    self.syncs.fetch_add(1, Ordering::Relaxed);
                    // Writers that asked while it ran but whose writes it
                    // covered (written after the group was taken, before
                    // `target`) were covered too: the next leader expects
                    // them, though they stop asking as soon as they wake.
                    let late: Vec<_> = st
                        .asking
                        .iter()
                        .filter(|a| a.generation <= st.synced)
                        .map(|a| a.thread)
                        .filter(|t| !st.last_group.contains(t))
                        .collect();
                    st.last_group.extend(late);
                }
                Err(_) => {
                    // Every write done by now may have had its pages in the
                    // failed writeback, not only those up to `target`: a
                    // write whose generation was counted while this sync ran
                    // was in the page cache before it.
                    st.failures += 1;
                    let done = self.writes.load(Ordering::Acquire);
                    st.failed_through = st.failed_through.max(done);
                }
            }
            // The followers, woken outside the lock they will all take.
            let sleepers = std::mem::take(&mut st.sleepers);
            parking_lot::MutexGuard::unlocked(&mut st, || {
                for t in sleepers {
                    t.unpark();
                }
            });
            if r.is_ok() && !settling.is_empty() {
                drop(st);
                self.finish_settled(&settling);
                st = self.sync_state.lock();
            }
            r.map_err(self.io("syncing the file"))?;
        }
        let synced = st.synced;
        drop(st);
        self.blocks.after_sync(synced, &self.bio_after_sync());
        Ok(())
    }

    /// Group commit's leader, before its sync: waits while writers of the
    /// last group, or asking already, have not all asked (each writes
    /// before it asks), at most `commit_wait` and half the last sync's
    /// time. Without it, writers fall into two groups that alternate: those
    /// that wrote during a sync share the next, while the first group writes
    /// again; the leader of the next sync expects both.
    ///
    /// A lone writer is never waited for: when no sync of the last
    /// `SEEN_SYNCS` had two writers at work at once
    /// (its group and those that asked while it ran), nobody is expected.
    /// Otherwise one writer that moves between threads (a task on an async
    /// runtime's pool) would be expected on the thread it left, and its
    /// syncs would wait their window for nobody: half of `sfs-raft`'s log
    /// appends did. With several writers at work, the leader expects the
    /// threads of the last group; bounding that by the most writers seen at
    /// once instead cost 4 steady writers much of their sharing (3.7-3.9
    /// puts per sync fell to 2.9-3.3 in three alternating runs of
    /// `benches/compare`'s group commit): a group cut short by the window
    /// lowered the bound for the next ones.
    fn gather(&self, st: &mut parking_lot::MutexGuard<'_, super::SyncState>) {
        let window = self.commit_wait.min(st.last_sync / 2);
        if window.is_zero() {
            return;
        }
        let by_thread = st.last_group.len()
            + st.asking
                .iter()
                .filter(|a| !st.last_group.contains(&a.thread))
                .count();
        let at_once = st.seen.iter().copied().max().unwrap_or(0) as usize;
        let expected = if at_once <= 1 { at_once } else { by_thread };
        if waiting(st) >= expected {
            return;
        }
        let Some(deadline) = std::time::Instant::now().checked_add(window) else {
            return;
        };
        self.storage.point("sync: gathering");
        st.gathering = true;
        while waiting(st) < expected {
            if self.sync_asked.wait_until(st, deadline).timed_out() {
                break;
            }
        }
        st.gathering = false;
    }

    /// `Store::sync`: everything written so far durable, after reporting a
    /// failure of the background thread that nobody has heard of yet.
    pub(super) fn sync_all(&self) -> Result<()> {
        self.take_background_error()?;
        self.sync_everything()
    }

    /// Syncs everything written so far (and the free headers of the old
    /// copies that sync frees).
    pub(super) fn sync_everything(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        // It frees old copies: a write like any other.
        let _gate = self.gate.read();
        // Batches whose members are pending: settled, and synced with the
        // rest (see `unsettled`).
        self.settle_all()?;
        self.sync_to(self.writes.load(Ordering::Acquire))?;
        // Old copies freed by that sync wrote free headers: make them durable too.
        self.sync_to(self.writes.load(Ordering::Acquire))
    }

    /// The background thread: syncs every `sync_every` (SyncPolicy::Periodic),
    /// checks the auto-compaction thresholds, and sweeps expired entries
    /// when the earliest expiry plus the delay of active expiry comes (see
    /// `plan_sweep`), until the store closes. A task that fails or panics is
    /// recorded (see `record_background`) and the thread carries on; an
    /// interval too long to add to the clock never comes round.
    pub(super) fn maintenance_loop(&self, sync_every: Option<Duration>, auto: Option<AutoCompact>) {
        use std::time::Instant;
        let after = |d: Duration| Instant::now().checked_add(d);
        let mut next_sync = sync_every.and_then(after);
        let mut next_check = auto.and_then(|a| after(a.check_every));
        // After a failed sweep, the next waits one delay (no busy retries).
        let mut sweep_after: Option<Instant> = None;
        let mut stop = self.stop.lock();
        loop {
            // Planned with `stop` held: a write that makes a sweep due
            // sooner notifies under `stop`, so it cannot be missed.
            let next_sweep = self
                .plan_sweep()
                .map(|t| sweep_after.map_or(t, |a| t.max(a)));
            let wake = [next_sync, next_check, next_sweep]
                .into_iter()
                .flatten()
                .min();
            if !*stop {
                // One wait: a wake-up re-plans (a write brought the sweep
                // closer); each task below runs only when it is due.
                match wake {
                    Some(w) => {
                        if Instant::now() < w {
                            self.stop_cv.wait_until(&mut stop, w);
                        }
                    }
                    None => self.stop_cv.wait(&mut stop),
                }
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
                self.run_background("syncing the file", || self.sync_everything());
                next_sync = after(d);
            }
            if let (Some(t), Some(a)) = (next_check, auto)
                && now >= t
            {
                self.run_background("compacting the file", || {
                    if self.wants_compaction(&a) {
                        self.compact_now().map(drop)
                    } else {
                        Ok(())
                    }
                });
                next_check = after(a.check_every);
            }
            if self.sweep_due() && sweep_after.is_none_or(|a| now >= a) {
                let swept =
                    self.run_background("removing expired entries", || self.sweep().map(drop));
                sweep_after = match (swept, self.expiry_delay) {
                    (false, Some(d)) => after(d),
                    _ => None,
                };
            }
            stop = self.stop.lock();
        }
    }

    /// Runs one background task, recording its error or panic.
    /// Returns whether it succeeded.
    fn run_background(&self, task: &'static str, f: impl FnOnce() -> Result<()>) -> bool {
        let reason = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(Ok(())) => return true,
            Ok(Err(e)) => e.to_string(),
            Err(panic) => format!("panicked: {}", panic_message(&*panic)),
        };
        self.record_background(task, reason);
        false
    }

    /// Records a failure of the background thread: counted and kept for
    /// `Stats`, and reported once by the next `sync`, `compact`, `shutdown`
    /// or `close`.
    pub(super) fn record_background(&self, task: &'static str, reason: String) {
        let mut b = self.background.lock();
        b.errors += 1;
        b.last = Some(format!("{task}: {reason}"));
        b.unreported = Some((task, reason));
    }

    /// The background failure nobody has been told of yet, as an error.
    pub(super) fn take_background_error(&self) -> Result<()> {
        match self.background.lock().unreported.take() {
            Some((task, reason)) => Err(Error::Background {
                path: self.path.clone(),
                task,
                reason,
            }),
            None => Ok(()),
        }
    }

    /// Whether free space passes both auto-compaction thresholds.
    pub(super) fn wants_compaction(&self, a: &AutoCompact) -> bool {
        let (free, end) = self
            .blocks
            .with_free(|f, held| (f.free_bytes() + held, f.end()));
        free >= a.min_free_bytes && free as f64 >= a.min_free_ratio * end as f64
    }
}

/// The message a panic carried.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// How many of the threads asking wait for the next sync: not those whose
/// write the last one covered (they asked after its leader took the list,
/// and have not woken yet). Counted among the writers a leader gathers,
/// one would stand for a writer still on its way, which then misses the
/// sync and waits for two.
fn waiting(st: &super::SyncState) -> usize {
    st.asking
        .iter()
        .filter(|a| a.generation > st.synced)
        .count()
}
