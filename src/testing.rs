//! Test seams, behind the `testing` feature: not part of the stable API.
//!
//! The store does all its file I/O through [`Storage`]; tests open a store on
//! their own storage with `Options::open_on` to inject faults or simulate
//! crashes, and call `Store::check_invariants` after every step.
//!
//! [`FaultStorage`] wraps another storage, records every `write_at`, `set_len`
//! and `sync` in the order they happened, and fails chosen calls (the N-th
//! write, the N-th growth, every sync from some point...) or refuses to grow
//! the file beyond a byte budget, like a full disk. A [`Recording`] of its
//! events rebuilds the file as a crash would have left it after any number of
//! events: a process crash (every completed write is in the page cache), a
//! write torn to a prefix, or a power loss (the writes since the last
//! completed sync dropped, or some of them kept in any order).
//!
//! This module never changes how the store behaves; it only stands in for
//! the file.

use std::io;
use std::sync::Arc;

use parking_lot::Mutex;

pub use crate::io::{FileStorage, MemStorage, Storage};

thread_local! {
    static DIR_SYNCS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many times an open on this thread synced the directory of a store
/// file it created (so that tests can see a new store's directory entry
/// made durable, and no sync on a reopen).
pub fn dir_syncs() -> u64 {
    DIR_SYNCS.with(|c| c.get())
}

pub(crate) fn count_dir_sync() {
    DIR_SYNCS.with(|c| c.set(c.get() + 1));
}

/// One call that changed the file, as [`FaultStorage`] recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `write_at(offset, parts)`: the concatenated bytes; or `write_word`,
    /// an aligned 8-byte store that a crash cannot tear (`atomic`).
    Write {
        /// Where the write starts.
        offset: u64,
        /// What was written.
        bytes: Vec<u8>,
        /// A single aligned 8-byte store: never torn.
        atomic: bool,
    },
    /// `set_len(len)`.
    SetLen(u64),
    /// A completed `sync`: everything before it is durable.
    Sync,
}

/// A kind of storage call, for choosing which one fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    /// `write_at`.
    Write,
    /// `set_len` (growing or shrinking).
    SetLen,
    /// `set_len` that grows the file only.
    Grow,
    /// `sync`.
    Sync,
}

/// The error an injected fault returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultError {
    /// `ENOSPC`: no space left on device.
    NoSpace,
    /// `EIO`: input/output error.
    Io,
}

impl FaultError {
    fn to_io(self) -> io::Error {
        io::Error::from_raw_os_error(match self {
            FaultError::NoSpace => libc::ENOSPC,
            FaultError::Io => libc::EIO,
        })
    }
}

#[derive(Clone, Copy, Debug)]
struct Fault {
    call: Call,
    /// 1-based number of the call of that kind that fails first.
    nth: u64,
    /// Every later call of that kind fails too.
    sticky: bool,
    error: FaultError,
}

#[derive(Default)]
struct State {
    events: Vec<Event>,
    /// Calls made so far, per kind (failed ones included).
    writes: u64,
    set_lens: u64,
    grows: u64,
    syncs: u64,
    faults: Vec<Fault>,
    /// Injected failures so far.
    failures: u64,
    /// The file may not grow beyond this many bytes.
    budget: Option<u64>,
}

impl State {
    /// Counts a call of kind `call` (already counted) and says whether a
    /// fault makes it fail.
    fn fault(&mut self, call: Call, n: u64) -> Option<FaultError> {
        let hit = self
            .faults
            .iter()
            .find(|f| f.call == call && (n == f.nth || (f.sticky && n > f.nth)))
            .map(|f| f.error);
        if hit.is_some() {
            self.failures += 1;
        }
        hit
    }
}

/// A storage that records every change and fails the calls it is told to.
///
/// Every call is forwarded to the wrapped storage under one mutex, so the
/// recorded order is the order in which the calls reached the file.
pub struct FaultStorage {
    inner: Arc<dyn Storage>,
    base: Vec<u8>,
    state: Mutex<State>,
}

impl Default for FaultStorage {
    fn default() -> FaultStorage {
        FaultStorage::new()
    }
}

impl FaultStorage {
    /// An empty in-memory file.
    pub fn new() -> FaultStorage {
        FaultStorage::wrap(Arc::new(MemStorage::new()))
    }

    /// Wraps `inner`; the recording starts from its present contents.
    pub fn wrap(inner: Arc<dyn Storage>) -> FaultStorage {
        let mut base = vec![0u8; inner.len() as usize];
        inner
            .read_at(0, &mut base)
            .expect("reading the wrapped storage");
        FaultStorage {
            inner,
            base,
            state: Mutex::new(State::default()),
        }
    }

    /// The `nth` call (1-based, counted from the creation of this storage) of
    /// kind `call` fails with `error`; the calls before and after succeed.
    pub fn fail(&self, call: Call, nth: u64, error: FaultError) {
        self.add(call, nth, false, error);
    }

    /// The `nth` call of kind `call` and every later one fail with `error`.
    pub fn fail_from(&self, call: Call, nth: u64, error: FaultError) {
        self.add(call, nth, true, error);
    }

    fn add(&self, call: Call, nth: u64, sticky: bool, error: FaultError) {
        self.state.lock().faults.push(Fault {
            call,
            nth,
            sticky,
            error,
        });
    }

    /// The next call of kind `call` fails with `error` (once).
    pub fn fail_next(&self, call: Call, error: FaultError) {
        let mut st = self.state.lock();
        let nth = match call {
            Call::Write => st.writes,
            Call::SetLen => st.set_lens,
            Call::Grow => st.grows,
            Call::Sync => st.syncs,
        } + 1;
        st.faults.push(Fault {
            call,
            nth,
            sticky: false,
            error,
        });
    }

    /// Removes every fault and the space budget.
    pub fn heal(&self) {
        let mut st = self.state.lock();
        st.faults.clear();
        st.budget = None;
    }

    /// Refuses (`ENOSPC`) to grow the file beyond `bytes`; `None` lifts the
    /// limit. Shrinking always succeeds, as on a full disk.
    pub fn set_space_budget(&self, bytes: Option<u64>) {
        self.state.lock().budget = bytes;
    }

    /// How many calls failed because of an injected fault or the budget.
    pub fn failures(&self) -> u64 {
        self.state.lock().failures
    }

    /// How many changes (writes, length changes, syncs) were recorded.
    pub fn event_count(&self) -> usize {
        self.state.lock().events.len()
    }

    /// Calls of each kind made so far, failed ones included:
    /// (writes, set_lens, syncs).
    pub fn calls(&self) -> (u64, u64, u64) {
        let st = self.state.lock();
        (st.writes, st.set_lens, st.syncs)
    }

    /// The file's present contents.
    pub fn bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; self.inner.len() as usize];
        self.inner.read_at(0, &mut b).expect("reading the storage");
        b
    }

    /// The recording so far: the starting contents and every change.
    pub fn recording(&self) -> Recording {
        Recording {
            base: self.base.clone(),
            events: self.state.lock().events.clone(),
        }
    }
}

impl Storage for FaultStorage {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, parts: &[&[u8]]) -> io::Result<()> {
        let mut st = self.state.lock();
        st.writes += 1;
        let n = st.writes;
        if let Some(e) = st.fault(Call::Write, n) {
            return Err(e.to_io());
        }
        self.inner.write_at(offset, parts)?;
        st.events.push(Event::Write {
            offset,
            bytes: parts.concat(),
            atomic: false,
        });
        Ok(())
    }

    fn write_word(&self, offset: u64, word: u64) -> io::Result<()> {
        let mut st = self.state.lock();
        st.writes += 1;
        let n = st.writes;
        if let Some(e) = st.fault(Call::Write, n) {
            return Err(e.to_io());
        }
        self.inner.write_word(offset, word)?;
        st.events.push(Event::Write {
            offset,
            bytes: word.to_le_bytes().to_vec(),
            atomic: true,
        });
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.state.lock();
        st.set_lens += 1;
        let n = st.set_lens;
        let grows = len > self.inner.len();
        let mut fault = st.fault(Call::SetLen, n);
        if grows {
            st.grows += 1;
            let g = st.grows;
            fault = fault.or_else(|| st.fault(Call::Grow, g));
            if fault.is_none() && st.budget.is_some_and(|b| len > b) {
                st.failures += 1;
                fault = Some(FaultError::NoSpace);
            }
        }
        if let Some(e) = fault {
            return Err(e.to_io());
        }
        self.inner.set_len(len)?;
        st.events.push(Event::SetLen(len));
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let mut st = self.state.lock();
        st.syncs += 1;
        let n = st.syncs;
        if let Some(e) = st.fault(Call::Sync, n) {
            return Err(e.to_io());
        }
        self.inner.sync()?;
        st.events.push(Event::Sync);
        Ok(())
    }

    #[expect(
        unsafe_code,
        reason = "the fault-injecting storage forwards the unsafe zero-copy view of the storage it wraps"
    )]
    unsafe fn view(&self, offset: u64, len: u64) -> Option<&[u8]> {
        // SAFETY: the caller's promise (no write to the range, no truncation
        // below its end while the slice lives) is passed on unchanged.
        unsafe { self.inner.view(offset, len) }
    }

    fn point(&self, name: &'static str) {
        self.inner.point(name);
    }
}

/// The starting contents of a file and every change made to it, in order:
/// enough to rebuild the file as any crash would have left it.
#[derive(Clone, Debug)]
pub struct Recording {
    /// The file before the first event.
    pub base: Vec<u8>,
    /// The changes, in the order they reached the file.
    pub events: Vec<Event>,
}

fn apply(file: &mut Vec<u8>, event: &Event) {
    match event {
        Event::Write { offset, bytes, .. } => write_clipped(file, *offset, bytes),
        Event::SetLen(len) => file.resize(*len as usize, 0),
        Event::Sync => {}
    }
}

/// Writes `bytes` at `offset`, dropping whatever falls past the end of the
/// file (a write whose growth was lost lands nowhere).
fn write_clipped(file: &mut [u8], offset: u64, bytes: &[u8]) {
    let start = (offset as usize).min(file.len());
    let end = (offset as usize + bytes.len()).min(file.len());
    file[start..end].copy_from_slice(&bytes[..end - start]);
}

impl Recording {
    /// The file after the first `k` events: a process crash (kill -9) right
    /// after event `k`; the page cache keeps every completed write.
    pub fn after(&self, k: usize) -> Vec<u8> {
        let mut f = self.base.clone();
        for e in &self.events[..k] {
            apply(&mut f, e);
        }
        f
    }

    /// The file after the first `k` events and the first `keep` bytes of event
    /// `k` (which must be a write): a crash in the middle of that write.
    pub fn torn(&self, k: usize, keep: usize) -> Vec<u8> {
        let mut f = self.after(k);
        match &self.events[k] {
            Event::Write { offset, bytes, .. } => {
                write_clipped(&mut f, *offset, &bytes[..keep.min(bytes.len())])
            }
            other => panic!("event {k} is not a write: {other:?}"),
        }
        f
    }

    /// Prefix lengths worth tearing event `k` at: nothing, inside and at the
    /// end of the block header, half, all but the last byte. Empty when the
    /// event is not a write.
    pub fn tear_points(&self, k: usize) -> Vec<usize> {
        let Event::Write {
            bytes,
            atomic: false,
            ..
        } = &self.events[k]
        else {
            return Vec::new();
        };
        let n = bytes.len();
        let mut v: Vec<usize> = [0, 4, 24, 44, 48, 49, n / 2, n.saturating_sub(1)]
            .into_iter()
            .filter(|&p| p < n)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The number of events before the last completed sync among the first
    /// `k`: what a power loss right after event `k` cannot take away.
    pub fn durable_prefix(&self, k: usize) -> usize {
        self.events[..k]
            .iter()
            .rposition(|e| *e == Event::Sync)
            .map_or(0, |i| i + 1)
    }

    /// The file after a power loss right after event `k`: everything up to the
    /// last completed sync, then a subset of the later events chosen by `seed`
    /// and applied in a shuffled order. Length changes that are kept keep
    /// their order and form a prefix (file systems journal them in order);
    /// writes may be dropped, reordered, and land past a length change they
    /// followed (then they are cut off). Some seeds tear one kept write too.
    /// Seed 0 drops everything unsynced; seed 1 keeps everything in order.
    pub fn power_loss(&self, k: usize, seed: u64) -> Vec<u8> {
        let d = self.durable_prefix(k);
        if seed == 1 {
            return self.after(k);
        }
        let mut f = self.after(d);
        if seed == 0 {
            return f;
        }
        let mut rng = TestRng::new(seed ^ (k as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let tail = &self.events[d..k];
        let lens: Vec<&Event> = tail
            .iter()
            .filter(|e| matches!(e, Event::SetLen(_)))
            .collect();
        let kept_lens = rng.below(lens.len() as u64 + 1) as usize;
        let mut writes: Vec<&Event> = tail
            .iter()
            .filter(|e| matches!(e, Event::Write { .. }) && rng.below(2) == 0)
            .collect();
        rng.shuffle(&mut writes);
        let torn = (rng.below(3) == 0 && !writes.is_empty())
            .then(|| rng.below(writes.len() as u64) as usize);
        // Interleave the kept length changes, in order, at random places.
        let mut order: Vec<(&Event, bool)> = writes
            .iter()
            .enumerate()
            .map(|(i, e)| {
                (
                    *e,
                    torn == Some(i) && !matches!(e, Event::Write { atomic: true, .. }),
                )
            })
            .collect();
        for e in &lens[..kept_lens] {
            let at = rng.below(order.len() as u64 + 1) as usize;
            // Keep length changes in order: never before an earlier one.
            let min = order
                .iter()
                .rposition(|(x, _)| matches!(x, Event::SetLen(_)))
                .map_or(0, |i| i + 1);
            order.insert(at.max(min), (e, false));
        }
        for (e, tear) in order {
            match e {
                Event::Write { offset, bytes, .. } if tear => {
                    let keep = rng.below(bytes.len() as u64) as usize;
                    write_clipped(&mut f, *offset, &bytes[..keep]);
                }
                e => apply(&mut f, e),
            }
        }
        f
    }
}

/// A small deterministic random number generator (SplitMix64) for tests that
/// must replay the same choices from a seed.
#[derive(Clone, Debug)]
pub struct TestRng(u64);

impl TestRng {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> TestRng {
        TestRng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// Shuffles `v` in place.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_writes_are_never_torn() {
        let s = FaultStorage::new();
        s.set_len(16).unwrap();
        s.sync().unwrap();
        s.write_word(8, 0x1122_3344_5566_7788).unwrap();
        s.write_at(0, &[b"abcdefgh"]).unwrap();
        let r = s.recording();
        assert!(
            r.tear_points(2).is_empty(),
            "an aligned 8-byte store is atomic"
        );
        assert!(!r.tear_points(3).is_empty());
        for seed in 0..50 {
            let f = r.power_loss(4, seed);
            let w = u64::from_le_bytes(f[8..16].try_into().unwrap());
            assert!(w == 0 || w == 0x1122_3344_5566_7788, "seed {seed}: {w:#x}");
        }
    }

    #[test]
    fn records_every_change_in_order() {
        let s = FaultStorage::new();
        s.set_len(16).unwrap();
        s.write_at(4, &[b"ab", b"cd"]).unwrap();
        s.sync().unwrap();
        s.set_len(8).unwrap();
        let r = s.recording();
        assert_eq!(
            r.events,
            vec![
                Event::SetLen(16),
                Event::Write {
                    offset: 4,
                    bytes: b"abcd".to_vec(),
                    atomic: false
                },
                Event::Sync,
                Event::SetLen(8),
            ]
        );
        assert_eq!(r.after(4), s.bytes());
        assert_eq!(r.after(2)[4..8], *b"abcd");
        assert_eq!(r.torn(1, 3)[4..8], *b"abc\0");
        assert_eq!(r.durable_prefix(4), 3);
        assert_eq!(r.durable_prefix(2), 0);
    }

    #[test]
    fn fails_the_chosen_calls_only() {
        let s = FaultStorage::new();
        s.fail(Call::Write, 2, FaultError::Io);
        s.fail_from(Call::Sync, 2, FaultError::Io);
        s.set_len(8).unwrap();
        s.write_at(0, &[b"a"]).unwrap();
        let e = s.write_at(0, &[b"b"]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        s.write_at(1, &[b"c"]).unwrap();
        s.sync().unwrap();
        assert!(s.sync().is_err() && s.sync().is_err());
        assert_eq!(s.failures(), 3);
        assert_eq!(&s.bytes()[..2], b"ac", "a failed write changes nothing");
        assert_eq!(s.event_count(), 4, "failed calls are not recorded");
        s.heal();
        s.sync().unwrap();
    }

    #[test]
    fn a_budget_refuses_growth_with_enospc() {
        let s = FaultStorage::new();
        s.set_space_budget(Some(100));
        s.set_len(100).unwrap();
        let e = s.set_len(101).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(s.len(), 100);
        s.set_len(50).unwrap();
        s.set_space_budget(None);
        s.set_len(1000).unwrap();
    }

    #[test]
    fn power_loss_keeps_what_was_synced_and_varies_the_rest() {
        let s = FaultStorage::new();
        s.set_len(32).unwrap();
        s.write_at(0, &[&[1; 8]]).unwrap();
        s.sync().unwrap();
        for i in 1..4u8 {
            s.write_at(u64::from(i) * 8, &[&[i + 1; 8]]).unwrap();
        }
        s.set_len(16).unwrap();
        let r = s.recording();
        let k = r.events.len();
        assert_eq!(
            r.power_loss(k, 0),
            r.after(3),
            "seed 0 keeps the synced state"
        );
        assert_eq!(r.power_loss(k, 1), r.after(k), "seed 1 keeps everything");
        let mut seen = std::collections::HashSet::new();
        for seed in 2..200 {
            let f = r.power_loss(k, seed);
            assert_eq!(f[..8], [1; 8], "synced bytes survive");
            assert!(f.len() == 16 || f.len() == 32);
            seen.insert(f);
        }
        assert!(seen.len() > 10, "many different outcomes: {}", seen.len());
    }
}
