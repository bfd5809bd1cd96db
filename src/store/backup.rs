//! Live backup: a compacted copy of the store, taken while it serves reads
//! and writes, holding exactly its contents at one moment (the final pause).
//!
//! The copy is made the way a running virtual machine is migrated: in
//! rounds. Round 1 copies every live entry while writers run; meanwhile the
//! store notes every key written or removed (`Tracker`, active only while a
//! backup runs: one atomic load per write otherwise). Each later round
//! recopies the keys noted since the round before, until what is left would
//! take no longer than the pause budget to copy (an estimate from the speed
//! at which the later rounds copied keys: when many keys (256 or more)
//! changed during round 1, one later round runs before the final one to
//! time it, since round 1's stream in file order is faster per entry and
//! would promise a pause that then overruns). Then the final round takes
//! the `gate` for writing, which stops every writer (puts, deletes,
//! `touch`, purge, compaction batches, `clear`, syncs), recopies what is
//! left, and lets them go. Readers are never stopped.
//!
//! The copy goes to a temporary file next to the destination; a key copied
//! twice leaves a hole there, and after the pause (with the store free
//! again) the file is compacted in place, so the copy has no free space:
//! the header, then one entry per live key. Entries keep their sequence
//! numbers, so a reopen of the copy derives the same least-recently-used
//! order (the order of sequence numbers) as a reopen of the store would,
//! and the copy keeps the store's salt, so that payload checksums are
//! copied, not recomputed: damage is never laundered into valid data.
//! In round 1 of a store of 2048 entries or more, a helper thread lists half
//! the index and sorts the list (see `Copier::first_round`), and the full
//! write buffers go to a second thread, which writes them out and starts
//! their write-back while the copy goes on (see `Writer`). Finally the file
//! is synced, renamed to the destination's name and the directory synced.
//! A cancelled or failed backup removes its temporary file; the store is
//! never written by a backup.
//!
//! This module never holds a store lock while user code (the progress
//! callback) runs, and writes nothing to the store's file.

use std::fs::{File, OpenOptions};
use std::hash::BuildHasher;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::Inner;
use crate::error::{Error, Result};
use crate::format::{
    BLOCK_HEADER_LEN, BlockHeader, Crc, FILE_HEADER_LEN, FIRST_FORMAT_VERSION, FileHeader, Kind,
    entry_block_len, is_expired,
};
use crate::index::{SHARDS, shard_of};

/// Keys, hashed with a per-process random seed.
type KeySet = hashbrown::HashSet<Box<[u8]>, foldhash::fast::RandomState>;

/// A progress callback (see [`BackupOptions::on_progress`]).
type ProgressFn = dyn Fn(&BackupProgress) + Send + Sync;

/// Payloads up to this size are copied through the write buffer; longer
/// ones are streamed in chunks of this size.
const CHUNK: usize = 1 << 20;
/// The write buffer is written out when it holds this much.
const BUFFER: usize = 256 << 10;
/// Round 1 copies at most this many entries per taking of the shard locks
/// (a writer waits for one such stretch at most)...
const STRETCH: u64 = REPORT_EVERY;
/// ...in about this many stretches: a store of fewer entries is copied one
/// entry per taking of the locks (and the interleaving explorer, with its
/// small stores, stops round 1 before each entry).
const STRETCHES: u64 = 1024;
/// A stretch ends early once it has copied this many bytes.
const STRETCH_BYTES: u64 = 256 << 10;
/// The copy's write-back to disk is started every time this much more of
/// it is written.
const WRITE_BACK: u64 = 4 << 20;
/// Progress is reported, and the bandwidth limit applied, this often.
const REPORT_EVERY: u64 = 1024;
/// Changed keys from which, after round 1, one later round runs to time the
/// copying of keys before any final round is planned. Fewer are copied in
/// well under a millisecond at any speed measured (about 0.4 µs a key on
/// the machine of BENCHMARKS.md), so for them round 1's speed is good
/// enough, and a small store's backup keeps its two rounds (and the
/// interleaving explorer its schedules).
const MEASURE_FROM: u64 = 256;
/// Round 1's writer thread is handed buffers of this much...
const JOB: usize = 1 << 20;
/// ...at most this many at a time (round 1 then waits for one back).
const IN_FLIGHT: usize = 3;
/// For a store of this many entries or more, round 1's list is made on two
/// threads (half the shards each), and a helper thread sorts its windows
/// while the copy goes on (see [`Copier::first_round`]).
const HELPED_FROM: usize = 2 * STRETCHES as usize;
/// While listing the index, the slot this many bytes ahead is asked for.
const LIST_AHEAD: usize = 2048;

/// What to do when the store changes faster than the backup can copy: after
/// [`BackupOptions::max_rounds`] rounds, what is left to copy would still
/// take longer than the pause budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IfBehind {
    /// Fail with [`Error::BackupBehind`]; the store is unchanged and no file
    /// is left under the destination's name. The default.
    GiveUp,
    /// Pause the writers for up to this long instead (never longer: a final
    /// round that runs past it is abandoned, and the backup fails with
    /// [`Error::BackupBehind`]).
    PauseUpTo(Duration),
}

/// Cancels a backup in progress from any thread: the backup stops at its
/// next entry with [`Error::BackupCancelled`], leaving the store unchanged
/// and no file under the destination's name.
///
/// ```
/// use sfs::{BackupCancel, BackupOptions, Error};
///
/// let dir = tempfile::tempdir()?;
/// let store = sfs::Store::open(dir.path().join("data.sfs"))?;
/// store.put(b"k", b"v")?;
/// let cancel = BackupCancel::new();
/// cancel.cancel(); // e.g. from a signal handler or another thread
/// let opts = BackupOptions::new().cancel_token(cancel.clone());
/// let copy = dir.path().join("copy.sfs");
/// assert!(matches!(store.backup_with(&copy, &opts), Err(Error::BackupCancelled { .. })));
/// assert!(!copy.exists());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct BackupCancel(Arc<AtomicBool>);

impl BackupCancel {
    /// A token not yet cancelled.
    pub fn new() -> BackupCancel {
        BackupCancel::default()
    }

    /// Cancels every backup given this token (or a clone of it).
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// How to take a backup (see [`Store::backup_with`](crate::Store::backup_with)).
///
/// ```
/// use std::time::Duration;
/// use sfs::{BackupOptions, IfBehind};
///
/// let dir = tempfile::tempdir()?;
/// let store = sfs::Store::open(dir.path().join("data.sfs"))?;
/// store.put(b"user:1", b"alice")?;
/// let opts = BackupOptions::new()
///     .pause_budget(Duration::from_millis(30))          // the default
///     .if_behind(IfBehind::PauseUpTo(Duration::from_millis(200)))
///     .bandwidth(64 << 20)                              // bytes per second
///     .on_progress(|p| eprintln!("round {}: {} entries copied", p.round, p.entries_copied));
/// let report = store.backup_with(dir.path().join("backup.sfs"), &opts)?;
/// assert_eq!(report.entries, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct BackupOptions {
    pub(crate) pause_budget: Duration,
    pub(crate) if_behind: IfBehind,
    pub(crate) max_rounds: u32,
    pub(crate) bandwidth: Option<u64>,
    pub(crate) progress: Option<Arc<ProgressFn>>,
    pub(crate) cancel: Option<BackupCancel>,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions::new()
    }
}

impl std::fmt::Debug for BackupOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupOptions")
            .field("pause_budget", &self.pause_budget)
            .field("if_behind", &self.if_behind)
            .field("max_rounds", &self.max_rounds)
            .field("bandwidth", &self.bandwidth)
            .field("progress", &self.progress.is_some())
            .field("cancel", &self.cancel)
            .finish()
    }
}

impl BackupOptions {
    /// The defaults: a pause budget of 30 ms, [`IfBehind::GiveUp`], at most
    /// 10 rounds, no bandwidth limit, no progress callback, no cancel token.
    pub fn new() -> BackupOptions {
        BackupOptions {
            pause_budget: Duration::from_millis(30),
            if_behind: IfBehind::GiveUp,
            max_rounds: 10,
            bandwidth: None,
            progress: None,
            cancel: None,
        }
    }

    /// The longest the writers may wait in the final round. The final round
    /// starts once what is left is expected to take no longer; should it run
    /// past the budget anyway, it is abandoned at once (the writers go on)
    /// and the backup goes back to copying in rounds. Readers never wait.
    ///
    /// The budget counts from when every write in flight has finished (the
    /// round cannot start before): a write that arrives meanwhile waits for
    /// those too, which adds the length of the longest write in flight (an
    /// `fdatasync` under [`SyncPolicy::Always`](crate::SyncPolicy::Always);
    /// on a machine with fewer cores than busy threads, the time until the
    /// writer in flight is scheduled again).
    pub fn pause_budget(mut self, budget: Duration) -> BackupOptions {
        self.pause_budget = budget;
        self
    }

    /// What to do when, after [`max_rounds`](Self::max_rounds) rounds, what
    /// is left still does not fit the pause budget.
    pub fn if_behind(mut self, what: IfBehind) -> BackupOptions {
        self.if_behind = what;
        self
    }

    /// How many rounds (the first full copy, the recopies, and final rounds
    /// abandoned for running past the budget) before
    /// [`if_behind`](Self::if_behind) decides. At least 1; default 10. It
    /// decides sooner when two rounds in a row each leave at least as many
    /// changed keys as they copied: the writers outpace the copy.
    pub fn max_rounds(mut self, rounds: u32) -> BackupOptions {
        self.max_rounds = rounds.max(1);
        self
    }

    /// At most this many bytes per second are copied while the writers run
    /// (the final round, which they wait for, is not slowed down).
    pub fn bandwidth(mut self, bytes_per_second: u64) -> BackupOptions {
        self.bandwidth = Some(bytes_per_second.max(1));
        self
    }

    /// Called with the progress every 1024 entries, at the end of each
    /// round, after the pause and at the end; never while the writers wait,
    /// and never under a lock of the store (it may use the store).
    pub fn on_progress(
        mut self,
        f: impl Fn(&BackupProgress) + Send + Sync + 'static,
    ) -> BackupOptions {
        self.progress = Some(Arc::new(f));
        self
    }

    /// A token that cancels the backup (see [`BackupCancel`]).
    pub fn cancel_token(mut self, token: BackupCancel) -> BackupOptions {
        self.cancel = Some(token);
        self
    }
}

/// What a backup is doing (see [`BackupProgress`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackupPhase {
    /// Copying entries while writers run (round 1 and the recopies).
    Copying,
    /// After the pause: compacting and syncing the copy, then renaming it.
    Finishing,
    /// The copy is in place.
    Done,
}

/// How far a backup has got, as given to the progress callback.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackupProgress {
    /// What it is doing.
    pub phase: BackupPhase,
    /// The current round (1 is the full copy).
    pub round: u32,
    /// Entries copied so far, recopies included.
    pub entries_copied: u64,
    /// Bytes of entry blocks copied so far, recopies included.
    pub bytes_copied: u64,
    /// Entries left to copy: the rest of this round, and the keys changed
    /// since it began.
    pub entries_remaining: u64,
    /// An estimate of the bytes left (entries left times the average size).
    pub bytes_remaining: u64,
    /// How long the final round would pause the writers were it to start
    /// now (an estimate from the copy speed so far).
    pub expected_pause: Duration,
}

/// What a backup did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackupReport {
    /// Entries in the copy.
    pub entries: u64,
    /// The copy's length in bytes: the file header and the entries, no free
    /// space.
    pub file_len: u64,
    /// Rounds run, the final one included.
    pub rounds: u32,
    /// Entries copied more than once (their keys changed during the backup).
    pub recopied_entries: u64,
    /// Damaged entries met and left out (the store never serves them either;
    /// `sfs-dump STORE --check` lists them).
    pub damaged_entries: u64,
    /// How long new writes were held back by the final round: from when it
    /// asked the writers to stop (the writes in flight then finish first)
    /// to when it let them go.
    pub pause: Duration,
    /// The whole backup, from start to the copy in place.
    pub duration: Duration,
}

/// Keys written or removed while a backup runs.
#[derive(Default)]
struct Changes {
    keys: KeySet,
    /// `clear` ran: every key copied so far is gone.
    cleared: bool,
}

/// The store's side of backups: which keys changed since the running
/// backup's last round. Costs one atomic load per write when no backup runs.
pub(super) struct Tracker {
    active: AtomicBool,
    changes: Mutex<Changes>,
    /// One backup at a time (they would share `changes`).
    running: Mutex<()>,
}

impl Tracker {
    pub(super) fn new() -> Tracker {
        Tracker {
            active: AtomicBool::new(false),
            changes: Mutex::new(Changes::default()),
            running: Mutex::new(()),
        }
    }

    /// Notes that `key` changed (written, renewed or removed). Called under
    /// the key's shard write lock: a backup that copied the key before the
    /// change finds it noted; one that copies it after sees the change.
    pub(super) fn note(&self, key: &[u8]) {
        if self.active.load(Ordering::Acquire) {
            self.changes.lock().keys.insert(key.into());
        }
    }

    /// Notes that `clear` emptied the store (under every shard's write lock).
    pub(super) fn note_cleared(&self) {
        if self.active.load(Ordering::Acquire) {
            let mut c = self.changes.lock();
            c.cleared = true;
            c.keys.clear();
        }
    }

    fn start(&self) {
        *self.changes.lock() = Changes::default();
        self.active.store(true, Ordering::Release);
    }

    fn stop(&self) {
        self.active.store(false, Ordering::Release);
        *self.changes.lock() = Changes::default();
    }

    fn take(&self) -> Changes {
        std::mem::take(&mut *self.changes.lock())
    }

    /// Puts back keys a final round abandoned before it copied them.
    fn put_back(&self, keys: impl Iterator<Item = Box<[u8]>>) {
        self.changes.lock().keys.extend(keys);
    }

    fn pending(&self) -> u64 {
        self.changes.lock().keys.len() as u64
    }
}

/// Stops tracking when the backup ends, however it ends.
struct Tracking<'a>(&'a Tracker);

impl Drop for Tracking<'_> {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Where a backup goes.
pub(super) enum Destination<'a> {
    /// A file: written under a temporary name, renamed into place.
    Path(&'a Path),
    /// Any writer: the copy is made in a temporary file next to the store,
    /// then streamed to it.
    Writer(&'a mut dyn Write),
}

/// The temporary file the copy is built in, locked (`flock`) while in use so
/// that a second backup to the same place is refused and one left behind by
/// a crash is recognised (unlocked) and reused. Removed on drop unless
/// renamed into place.
struct Scratch {
    file: File,
    path: PathBuf,
    /// The name errors give: the destination (or the scratch file itself).
    shown: PathBuf,
    buf: Vec<u8>,
    /// Bytes of the file before `buf`.
    flushed: u64,
    /// Bytes of the file whose write-back was started (see
    /// [`start_write_back`](Self::start_write_back)).
    written_back: u64,
    /// Renamed into place: nothing to remove.
    placed: bool,
    /// Round 1's writer thread, while it runs (see [`Writer`]).
    writer: Option<Writer>,
}

impl Scratch {
    fn create(path: PathBuf, shown: PathBuf) -> Result<Scratch> {
        let err = |action, e| Error::io(&path, action, e);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| err("creating the backup's temporary file", e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let e = io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "another backup is using this temporary file (a backup to the same \
                     destination is running)",
                );
                return Err(err("locking the backup's temporary file", e));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(err("locking the backup's temporary file", e));
            }
        }
        // Locked by us: new, or left behind by a backup that crashed.
        file.set_len(0)
            .map_err(|e| err("emptying the backup's temporary file", e))?;
        Ok(Scratch {
            file,
            path,
            shown,
            buf: Vec::with_capacity(BUFFER + CHUNK),
            flushed: 0,
            written_back: 0,
            placed: false,
            writer: None,
        })
    }

    fn io(&self, action: &'static str) -> impl FnOnce(io::Error) -> Error + '_ {
        move |e| Error::io(&self.shown, action, e)
    }

    fn end(&self) -> u64 {
        self.flushed + self.buf.len() as u64
    }

    /// How much the buffer holds before it is written out.
    fn full(&self) -> usize {
        if self.writer.is_some() { JOB } else { BUFFER }
    }

    /// Whether the entry copied at `offset` holds `key`. An entry is wholly
    /// in the buffer or wholly written out.
    fn holds_key(&self, offset: u64, key: &[u8]) -> bool {
        let n = BLOCK_HEADER_LEN as usize + key.len();
        let holds = |b: &[u8]| {
            usize::from(u16::from_le_bytes([b[6], b[7]])) == key.len() && &b[n - key.len()..] == key
        };
        if offset >= self.flushed {
            let at = (offset - self.flushed) as usize;
            self.buf.get(at..at + n).is_some_and(holds)
        } else {
            let mut b = vec![0u8; n];
            self.file.read_exact_at(&mut b, offset).is_ok() && holds(&b)
        }
    }

    /// Writes the buffer out: hands it to the writer thread if one runs,
    /// else writes it itself.
    fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let len = self.buf.len() as u64;
        if let Some(w) = &mut self.writer {
            let next = w
                .spare()
                .map_err(|e| Error::io(&self.shown, "writing the backup", e))?;
            let buf = std::mem::replace(&mut self.buf, next);
            w.send(buf, self.flushed)
                .map_err(|e| Error::io(&self.shown, "writing the backup", e))?;
        } else {
            let written = self.file.write_all_at(&self.buf, self.flushed);
            written.map_err(|e| Error::io(&self.shown, "writing the backup", e))?;
            self.buf.clear();
        }
        self.flushed += len;
        Ok(())
    }

    /// Starts a writer thread (see [`Writer`]): from now on full buffers
    /// are written out beside the copy.
    fn start_writer(&mut self) -> Result<()> {
        debug_assert!(self.writer.is_none());
        let file = self
            .file
            .try_clone()
            .map_err(self.io("starting the backup's writer thread"))?;
        let w = Writer::start(file, self.written_back)
            .map_err(self.io("starting the backup's writer thread"))?;
        self.writer = Some(w);
        Ok(())
    }

    /// Writes the buffer out and stops the writer thread, once it has
    /// written everything. Nothing to do if none runs.
    fn stop_writer(&mut self) -> Result<()> {
        if self.writer.is_none() {
            return Ok(());
        }
        self.flush()?;
        let Some(w) = self.writer.take() else {
            return Ok(());
        };
        self.written_back = w
            .finish()
            .map_err(|e| Error::io(&self.shown, "writing the backup", e))?;
        Ok(())
    }

    /// Starts the write-back of what was written out since it was last
    /// started, once that is [`WRITE_BACK`] bytes. Called with no store lock
    /// held and outside the pause: the call may wait for the disk's queue.
    /// (The writer thread, while it runs, does this itself.)
    fn write_back_if_due(&mut self) {
        if self.writer.is_none()
            && self.flushed >= self.written_back + WRITE_BACK
            && start_write_back(&self.file, self.written_back, self.flushed)
        {
            self.written_back = self.flushed;
        }
    }

    /// Forgets everything after `end` (later writes go over it; the final
    /// length cuts the rest).
    fn truncate_to(&mut self, end: u64) {
        debug_assert!(self.writer.is_none() || end >= self.flushed);
        if end >= self.flushed {
            self.buf.truncate((end - self.flushed) as usize);
        } else {
            self.buf.clear();
            self.flushed = end;
            self.written_back = self.written_back.min(end);
        }
    }

    /// Moves every live block (sorted by offset, `(offset, len)`) down to
    /// close the holes between them, from `start` on; returns the end.
    fn close_holes(&mut self, live: &[(u64, u64)], start: u64) -> Result<u64> {
        self.flush()?;
        let mut chunk = vec![0u8; CHUNK];
        let mut to = start;
        let mut i = 0;
        while i < live.len() {
            // A run of adjacent blocks moves as one.
            let (from, mut len) = live[i];
            i += 1;
            while i < live.len() && live[i].0 == from + len {
                len += live[i].1;
                i += 1;
            }
            if from != to {
                let mut done = 0u64;
                while done < len {
                    let n = (len - done).min(CHUNK as u64) as usize;
                    self.file
                        .read_exact_at(&mut chunk[..n], from + done)
                        .map_err(self.io("compacting the backup"))?;
                    self.file
                        .write_all_at(&chunk[..n], to + done)
                        .map_err(self.io("compacting the backup"))?;
                    done += n as u64;
                }
            }
            to += len;
        }
        Ok(to)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.placed {
            return;
        }
        // A failed or cancelled backup (or a stream's scratch file, done
        // with): nothing may stay behind. Should even the removal fail, the
        // file stays under its temporary name, unlocked, and the next
        // backup to the same place reuses it.
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => eprintln!(
                "sfs: removing the backup's temporary file {}: {e}",
                self.path.display()
            ),
        }
    }
}

/// Starts writing `from..to` of `file` out to the disk, without waiting for
/// it: the disk works while the copy goes on, and the final sync has only
/// the rest to wait for. Only a head start: should it fail (`false`), the
/// final sync writes everything.
fn start_write_back(file: &File, from: u64, to: u64) -> bool {
    let fd = std::os::fd::AsRawFd::as_raw_fd(file);
    #[expect(
        unsafe_code,
        reason = "`sync_file_range` starts the copy's write-back early, and std has no wrapper for it"
    )]
    // SAFETY: sync_file_range only reads its integer arguments; `fd` is
    // open for the life of `file`.
    let r = unsafe {
        libc::sync_file_range(
            fd,
            from as libc::off64_t,
            (to - from) as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
    r == 0
}

/// A full write buffer for the writer thread, and its place in the copy.
struct Job {
    buf: Vec<u8>,
    at: u64,
}

/// A job done: its buffer back, emptied, and how the write went.
struct Done {
    buf: Vec<u8>,
    written: io::Result<()>,
}

/// Round 1's writer thread: round 1 copies and checks entries into the
/// write buffer as before, and hands each full buffer to this thread, which
/// writes it out and starts its write-back, while round 1 goes on with the
/// next (the kernel's copy into the page cache and the write-back were
/// about 40 % of a backup's time: perf, 2026-12-01).
struct Writer {
    jobs: Option<mpsc::Sender<Job>>,
    done: mpsc::Receiver<Done>,
    /// Returns where the write-back got to.
    thread: Option<JoinHandle<u64>>,
    /// Emptied buffers back from the thread.
    spare: Vec<Vec<u8>>,
    in_flight: usize,
}

impl Writer {
    fn start(file: File, written_back: u64) -> io::Result<Writer> {
        let (jobs, to_do) = mpsc::channel::<Job>();
        let (done_tx, done) = mpsc::channel::<Done>();
        let thread = std::thread::Builder::new()
            .name("sfs-backup-writer".into())
            .spawn(move || write_jobs(&file, &to_do, &done_tx, written_back))?;
        Ok(Writer {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
            spare: Vec::new(),
            in_flight: 0,
        })
    }

    fn gone() -> io::Error {
        io::Error::other("the backup's writer thread stopped")
    }

    /// Takes back one job done (waiting for it if `wait`); fails if its
    /// write did.
    fn take_done(&mut self, wait: bool) -> io::Result<bool> {
        let d = if wait {
            self.done.recv().map_err(|_| Writer::gone())?
        } else {
            match self.done.try_recv() {
                Ok(d) => d,
                Err(mpsc::TryRecvError::Empty) => return Ok(false),
                Err(mpsc::TryRecvError::Disconnected) => return Err(Writer::gone()),
            }
        };
        self.in_flight -= 1;
        d.written?;
        self.spare.push(d.buf);
        Ok(true)
    }

    /// An empty buffer to go on with (waiting for one back if
    /// [`IN_FLIGHT`] are out).
    fn spare(&mut self) -> io::Result<Vec<u8>> {
        while self.take_done(false)? {}
        while self.in_flight >= IN_FLIGHT {
            self.take_done(true)?;
        }
        Ok(self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(JOB + CHUNK)))
    }

    /// Hands `buf`, the copy's bytes at `at`, to the thread.
    fn send(&mut self, buf: Vec<u8>, at: u64) -> io::Result<()> {
        let jobs = self.jobs.as_ref().ok_or_else(Writer::gone)?;
        jobs.send(Job { buf, at }).map_err(|_| Writer::gone())?;
        self.in_flight += 1;
        Ok(())
    }

    /// Waits for every job and the thread; returns where its write-back
    /// got to.
    fn finish(mut self) -> io::Result<u64> {
        self.jobs = None;
        while self.in_flight > 0 {
            self.take_done(true)?;
        }
        let thread = self.thread.take().ok_or_else(Writer::gone)?;
        thread.join().map_err(|_| Writer::gone())
    }
}

impl Drop for Writer {
    /// A backup that failed or was cancelled: the thread ends after the
    /// job it is doing (its writes go to a file about to be removed).
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            eprintln!("sfs: the backup's writer thread panicked");
        }
    }
}

/// The writer thread (see [`Writer`]): writes each job's buffer at its
/// place, starts the write-back every [`WRITE_BACK`] bytes, and hands the
/// buffer back; stops at the first failed write. Returns where the
/// write-back got to.
fn write_jobs(
    file: &File,
    jobs: &mpsc::Receiver<Job>,
    done: &mpsc::Sender<Done>,
    mut written_back: u64,
) -> u64 {
    for mut job in jobs {
        let end = job.at + job.buf.len() as u64;
        let written = file.write_all_at(&job.buf, job.at);
        let failed = written.is_err();
        if !failed && end >= written_back + WRITE_BACK && start_write_back(file, written_back, end)
        {
            written_back = end;
        }
        job.buf.clear();
        let back = Done {
            buf: job.buf,
            written,
        };
        if done.send(back).is_err() || failed {
            break;
        }
    }
    written_back
}

/// Where the copy of a key is in the scratch file.
#[derive(Clone, Copy)]
struct Placed {
    offset: u64,
    len: u64,
    expiry_ms: u64,
}

/// One key's copy: where it is, and its key's hash (the store's hasher).
#[derive(Clone, Copy)]
struct Placement {
    at: Placed,
    hash: u64,
    live: bool,
}

/// Where each key's copy is in the scratch file. The keys are not kept in
/// memory a second time: the table maps a key's hash to its placement, and a
/// match is confirmed by comparing the key in the scratch file (which only
/// a key copied twice, or a hash collision, ever needs).
#[derive(Default)]
struct Placements {
    all: Vec<Placement>,
    table: hashbrown::HashTable<u32>,
    live: u64,
}

impl Placements {
    /// Sets where `key` (of hash `hash`) is in the copy (`None`: not in it);
    /// returns the length of the copy it replaces, if any.
    fn set(&mut self, out: &Scratch, hash: u64, key: &[u8], at: Option<Placed>) -> Option<u64> {
        let all = &self.all;
        let found = self.table.find_entry(hash, |&i| {
            let p = &all[i as usize];
            p.hash == hash && out.holds_key(p.at.offset, key)
        });
        match (found, at) {
            (Ok(e), Some(at)) => {
                let p = &mut self.all[*e.get() as usize];
                let old = p.at.len;
                p.at = at;
                Some(old)
            }
            (Ok(e), None) => {
                let (i, _) = e.remove();
                let p = &mut self.all[i as usize];
                p.live = false;
                self.live -= 1;
                Some(p.at.len)
            }
            (Err(_), Some(at)) => {
                let i = self.all.len() as u32;
                self.all.push(Placement {
                    at,
                    hash,
                    live: true,
                });
                let all = &self.all;
                self.table.insert_unique(hash, i, |&j| all[j as usize].hash);
                self.live += 1;
                None
            }
            (Err(_), None) => None,
        }
    }

    fn clear(&mut self) {
        *self = Placements::default();
    }

    /// The live copies.
    fn live(&self) -> impl Iterator<Item = &Placed> {
        self.all.iter().filter(|p| p.live).map(|p| &p.at)
    }
}

/// The copies round 1 made: every block of the copy from the file header to
/// `end`, one per key, each of its exact length. Kept apart from the
/// [`Placements`] table, which only a key copied again needs: with no
/// writers, the table is never built (a copied entry costs no hash table
/// entry); once one is needed, these blocks are read back from the copy
/// into it.
struct FirstRound {
    end: u64,
    entries: u64,
    /// The copies with an expiry, in copy order: those that expire before
    /// the pause are dropped from the copy after it.
    expiring: Vec<Placed>,
}

/// An entry round 1 is to copy, as listed from the index: its key's hash
/// (the store's hasher) and where it was, packed (see [`Listed::new`]).
#[derive(Clone, Copy)]
struct Listed {
    hash: u64,
    /// Offset / 8 (40 bits), then the slot id (24 bits): sorted by this,
    /// the list is in file order.
    at: u64,
}

impl Listed {
    fn new(hash: u64, id: u32, offset: u64) -> Listed {
        debug_assert!(id < 1 << 24 && offset < crate::index::MAX_FILE_LEN);
        Listed {
            hash,
            at: ((offset >> 3) << 24) | u64::from(id),
        }
    }

    fn offset(self) -> u64 {
        (self.at >> 24) << 3
    }

    fn id(self) -> u32 {
        (self.at & ((1 << 24) - 1)) as u32
    }
}

/// Sorts `list` by offset (no two are at the same offset): a radix sort
/// over the bits in which its offsets differ, in a few passes over the list
/// (`to` is scratch space), where `sort_unstable` took a sixth of round 1
/// for a million entries. Round 1 sorts one window of the file at a time
/// (see [`Windows`]): a list that fits in the cache, sorted in one or two
/// passes.
fn sort_by_offset(list: &mut Vec<Listed>, to: &mut Vec<Listed>) {
    /// Bits of the key sorted by in one pass, at most.
    const DIGIT: u32 = 11;
    let (min, max) = list.iter().fold((u64::MAX, 0), |(lo, hi), l| {
        (lo.min(l.at >> 24), hi.max(l.at >> 24))
    });
    let bits = u64::BITS - (min ^ max).leading_zeros();
    if list.len() < 1 << DIGIT || bits == 0 {
        list.sort_unstable_by_key(|l| l.at);
        return;
    }
    let passes = bits.div_ceil(DIGIT);
    let digit = bits.div_ceil(passes);
    let buckets = 1usize << digit;
    let mask = (buckets - 1) as u64;
    let digit_of = |l: &Listed, pass: u32| ((l.at >> (24 + pass * digit)) & mask) as usize;
    let mut counts = vec![0usize; passes as usize * buckets];
    for l in list.iter() {
        for pass in 0..passes {
            counts[pass as usize * buckets + digit_of(l, pass)] += 1;
        }
    }
    to.clear();
    to.resize(list.len(), Listed { hash: 0, at: 0 });
    for pass in 0..passes {
        let counts = &mut counts[pass as usize * buckets..][..buckets];
        let mut next = 0;
        for c in counts.iter_mut() {
            (*c, next) = (next, next + *c);
        }
        for l in list.iter() {
            let c = &mut counts[digit_of(l, pass)];
            to[*c] = *l;
            *c += 1;
        }
        std::mem::swap(list, to);
    }
}

/// Round 1's list of entries, split by offset into windows of the file
/// (as listed, in no order within a window): each is sorted just before
/// its entries are copied, while it fits in the cache, instead of the whole
/// list at once.
struct Windows {
    /// Offsets in window `i` are `i << shift` up to the next window's.
    shift: u32,
    lists: Vec<Vec<Listed>>,
}

impl Windows {
    /// Windows of about 1 MiB of a file of `file_len` bytes (at most 4096 of
    /// them) for `entries` entries.
    fn new(file_len: u64, entries: usize) -> Windows {
        let mut shift = 20;
        while file_len >> shift > 4096 {
            shift += 1;
        }
        let n = (file_len >> shift) as usize + 1;
        let each = entries / n + entries / n / 4 + 16;
        Windows {
            shift,
            lists: (0..n).map(|_| Vec::with_capacity(each)).collect(),
        }
    }

    /// Lists the live entries of `shards`, each under its read lock, and
    /// their versions into `versions`.
    fn list(
        &mut self,
        inner: &Inner,
        shards: std::ops::Range<usize>,
        now_ms: i64,
        versions: &mut [u64; SHARDS],
    ) {
        for s in shards {
            let map = inner.shards[s].map.read();
            versions[s] = map.version();
            for (id, slot) in map.iter() {
                // The slots are read in order, but the hardware's prefetch
                // stops at each page's end: most of the time went to waiting
                // for the next slot (perf, 2026-12-01).
                prefetch(
                    std::ptr::from_ref(slot)
                        .cast::<u8>()
                        .wrapping_add(LIST_AHEAD),
                );
                if !is_expired(slot.expiry(), now_ms) {
                    let hash = inner.hasher.hash_one(slot.key.as_bytes());
                    self.push(Listed::new(hash, id, slot.offset()));
                }
            }
        }
    }

    fn push(&mut self, l: Listed) {
        // The file may have grown since: the last window takes the rest.
        let w = ((l.offset() >> self.shift) as usize).min(self.lists.len() - 1);
        self.lists[w].push(l);
    }

    fn len(&self) -> usize {
        self.lists.iter().map(Vec::len).sum()
    }
}

/// What the block a copy is made from must hold.
#[derive(Clone, Copy)]
enum Holds<'k> {
    /// This key (read from the index under the shard lock).
    Key(&'k [u8]),
    /// A key with this hash: the key the index listed at this offset, in a
    /// shard unchanged since (see [`Copier::first_round`]).
    Hash(u64),
}

/// Asks the CPU to bring the bytes some blocks after `at` into the cache
/// (round 1 reads the file in order, a few blocks at a time: each block's
/// first touch was a cache miss). Only a hint: it never faults, whatever
/// the address. 2 KiB ahead (a dozen 168-byte blocks) took less of the
/// copying thread's time than 512 bytes ahead (harness, 2026-12-01:
/// 0.048-0.052 s of CPU per backup against 0.055-0.057; 3-4 KiB ahead the
/// same as 2 KiB; one hint per call instead of three, worse).
fn prefetch_ahead(at: *const u8) {
    for ahead in [2048, 2112, 2176] {
        prefetch(at.wrapping_add(ahead));
    }
}

/// Asks the CPU to bring the cache line at `at` into the cache. Only a
/// hint: it never faults, whatever the address.
#[cfg(target_arch = "x86_64")]
fn prefetch(at: *const u8) {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    #[expect(
        unsafe_code,
        reason = "a prefetch hint (SSE, which every x86-64 CPU has)"
    )]
    // SAFETY: SSE is part of the x86-64 baseline, so the CPU has it; a
    // prefetch reads nothing the program sees and never faults, whatever
    // the address.
    unsafe {
        _mm_prefetch::<_MM_HINT_T0>(at.cast())
    };
}

/// (No hint on other architectures.)
#[cfg(not(target_arch = "x86_64"))]
fn prefetch(_at: *const u8) {}

/// What [`Copier::check_in_place`] found.
enum InPlace {
    /// An intact block of exact length, to be copied byte for byte.
    Exact(BlockHeader),
    /// Expired by its header: not copied.
    Skip,
    /// Damaged: not copied.
    Damaged,
    /// To be copied by [`Copier::copy_locked`] (its header rewritten, its
    /// padding zeroed, or streamed; or the storage has no map).
    Other,
}

/// What the final round did.
enum Final {
    /// Done: the clock at the pause.
    Done { now_ms: i64, pause: Duration },
    /// Ran past the allowed pause: abandoned, writers released.
    Overran,
}

/// A backup under way.
struct Copier<'a> {
    inner: &'a Inner,
    opts: &'a BackupOptions,
    destination: Option<PathBuf>,
    out: Scratch,
    /// Round 1's copies, until a key is copied again (or forgotten): then
    /// they go into `placed`.
    first: Option<FirstRound>,
    placed: Placements,
    /// Bytes in the scratch file no longer in `placed` (holes).
    dead_bytes: u64,
    round: u32,
    entries_copied: u64,
    bytes_copied: u64,
    recopied: u64,
    damaged: u64,
    /// Time spent copying (not sleeping for the bandwidth limit, not in the
    /// progress callback): the copy speed that predicts the pause.
    busy: Duration,
    /// The part of `busy` spent copying changed keys one by one (the later
    /// rounds, final ones included), and how many: a key found through
    /// the index costs more than an entry of round 1's file-order stream
    /// (350-390 ns against 250-290 with 4 busy writers, 50-80 without, on
    /// the machine of BENCHMARKS.md), and the final round copies keys, so
    /// once a round has copied some, their speed predicts the pause.
    key_busy: Duration,
    keys_copied: u64,
    started: Instant,
    /// When the current stretch of copying began (for `busy`).
    stretch: Instant,
    /// Entries left in the current round (for progress).
    round_left: u64,
    /// Entries looked at (copied or not), for the periodic work of `tick`.
    ticks: u64,
    /// The clock, read at most every [`REPORT_EVERY`] entries outside the
    /// pause: an entry expired by then is expired at the pause too.
    now_ms: i64,
    /// Checksums with the store's salt.
    crc: Crc,
}

impl Inner {
    /// `Store::backup_with` and `Store::backup_to`: see the module docs.
    pub(super) fn backup(
        &self,
        dest: Destination<'_>,
        opts: &BackupOptions,
    ) -> Result<BackupReport> {
        let _one_at_a_time = self.backups.running.lock();
        let started = Instant::now();
        let (scratch, destination) = match &dest {
            Destination::Path(p) => {
                let scratch = self.scratch_for(p)?;
                (scratch, Some(p.to_path_buf()))
            }
            Destination::Writer(_) => {
                let name = self
                    .path
                    .file_name()
                    .map_or_else(|| "store".into(), |n| n.to_string_lossy().into_owned());
                let path = sibling(&self.path, &format!(".{name}.sfs-backup-stream.tmp"));
                (Scratch::create(path.clone(), path)?, None)
            }
        };
        let tracking = Tracking(&self.backups);
        self.backups.start();
        let mut c = Copier {
            inner: self,
            opts,
            destination,
            out: scratch,
            first: None,
            placed: Placements::default(),
            dead_bytes: 0,
            round: 0,
            entries_copied: 0,
            bytes_copied: 0,
            recopied: 0,
            damaged: 0,
            busy: Duration::ZERO,
            key_busy: Duration::ZERO,
            keys_copied: 0,
            started,
            stretch: Instant::now(),
            round_left: 0,
            ticks: 0,
            now_ms: self.clock.now_millis(),
            crc: Crc::new(self.salt),
        };
        let (now_ms, pause) = c.copy_in_rounds()?;
        drop(tracking);
        let file_len = c.finish(now_ms)?;
        match dest {
            Destination::Path(p) => c.place(p)?,
            Destination::Writer(w) => c.stream(w, file_len)?,
        }
        let report = BackupReport {
            entries: c.placed.live,
            file_len,
            rounds: c.round,
            recopied_entries: c.recopied,
            damaged_entries: c.damaged,
            pause,
            duration: started.elapsed(),
        };
        c.report(BackupPhase::Done, 0);
        Ok(report)
    }

    /// The temporary file for a backup to `dest`: `.NAME.sfs-backup.tmp` in
    /// the same directory (so that the rename is atomic). Refuses the
    /// store's own file as a destination.
    fn scratch_for(&self, dest: &Path) -> Result<Scratch> {
        let invalid = |reason: String| Err(Error::InvalidOptions { reason });
        let Some(name) = dest.file_name() else {
            return invalid(format!(
                "backup destination {} names no file",
                dest.display()
            ));
        };
        if let (Ok(a), Ok(b)) = (dest.canonicalize(), self.path.canonicalize())
            && a == b
        {
            return invalid(format!(
                "backup destination {} is the store's own file",
                dest.display()
            ));
        }
        let name = name.to_string_lossy();
        let path = sibling(dest, &format!(".{name}.sfs-backup.tmp"));
        Scratch::create(path, dest.to_path_buf())
    }
}

/// `name` in the directory of `path`.
fn sibling(path: &Path, name: &str) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.join(name),
        _ => PathBuf::from(name),
    }
}

/// `len` bytes of the copy at `pos` (within one block, which is wholly in
/// the buffer or wholly written out), read through `cache` (the file's bytes
/// from `cache_at`).
fn read_copy<'a>(
    out: &'a Scratch,
    cache: &'a mut Vec<u8>,
    cache_at: &mut u64,
    pos: u64,
    len: u64,
) -> Result<&'a [u8]> {
    let short = || {
        let e = io::Error::new(io::ErrorKind::UnexpectedEof, "a block runs past the copy");
        Error::io(&out.shown, "reading the backup back", e)
    };
    if pos >= out.flushed {
        let at = (pos - out.flushed) as usize;
        return out.buf.get(at..at + len as usize).ok_or_else(short);
    }
    let end = pos
        .checked_add(len)
        .filter(|&e| e <= out.flushed)
        .ok_or_else(short)?;
    if pos < *cache_at || end > *cache_at + cache.len() as u64 {
        let n = (out.flushed - pos).min(len.max(CHUNK as u64)) as usize;
        cache.resize(n, 0);
        out.file
            .read_exact_at(cache, pos)
            .map_err(out.io("reading the backup back"))?;
        *cache_at = pos;
    }
    let at = (pos - *cache_at) as usize;
    Ok(&cache[at..at + len as usize])
}

impl Copier<'_> {
    /// Rounds until the final one succeeds; returns the clock at the pause
    /// and how long it lasted.
    fn copy_in_rounds(&mut self) -> Result<(i64, Duration)> {
        let header = FileHeader {
            // A copy holds settled entries only, never a batch's commit
            // record or pending members: the first version, which every
            // release opens.
            version: FIRST_FORMAT_VERSION,
            salt: self.inner.salt,
            created_ms: self.inner.clock.now_millis().max(0) as u64,
        };
        self.out.buf.extend_from_slice(&header.encode());
        self.round = 1;
        self.inner.storage.point("backup: round");
        self.first_round()?;
        // The round's last stretch (periodic work counts the others): a
        // store of fewer than `REPORT_EVERY` entries would otherwise show
        // no time spent, and predict pauses of nothing.
        self.busy += self.stretch.elapsed();
        let mut allowed = self.opts.pause_budget;
        // Rounds in a row that left at least as many changed keys as they
        // copied: the writers outpace the copy, and more rounds would only
        // grow longer.
        let mut losing = 0;
        loop {
            self.report(BackupPhase::Copying, 0);
            let pending = self.inner.backups.pending();
            // Until a later round has copied keys one by one, round 1's
            // speed (a stream in file order, faster per entry) would
            // promise a final round that then runs the whole budget and
            // over, stopping the writers twice: one such round first, when
            // the keys left are enough for that to matter.
            let may_round = self.round < self.opts.max_rounds && losing < 2;
            let unmeasured = may_round && pending >= MEASURE_FROM && self.keys_copied == 0;
            if unmeasured || self.expected_pause(pending) > allowed {
                if may_round {
                    self.round += 1;
                    self.inner.storage.point("backup: round");
                    let busy_before = self.busy;
                    let copied = self.recopy_round()?;
                    self.busy += self.stretch.elapsed();
                    self.key_busy += self.busy - busy_before;
                    self.keys_copied += copied;
                    let left = self.inner.backups.pending();
                    losing = if left >= copied { losing + 1 } else { 0 };
                    continue;
                }
                allowed = self.behind(allowed, pending)?;
            }
            if self.inner.backups.pending() > 0 {
                // Round 1's copies go into the placements table now, not
                // under the gate (should the first change arrive after this
                // look, the final round does it, and likely runs over).
                self.place_first_round()?;
            }
            self.round += 1;
            match self.final_round(allowed)? {
                Final::Done { now_ms, pause } => return Ok((now_ms, pause)),
                Final::Overran if self.round < self.opts.max_rounds => {}
                Final::Overran => {
                    let pending = self.inner.backups.pending();
                    allowed = self.behind(allowed, pending)?;
                }
            }
        }
    }

    /// Out of rounds with `pending` keys left: the pause the caller allows
    /// beyond the budget, or [`Error::BackupBehind`].
    fn behind(&self, allowed: Duration, pending: u64) -> Result<Duration> {
        let expected = self.expected_pause(pending);
        match self.opts.if_behind {
            IfBehind::PauseUpTo(limit) if allowed < limit && expected <= limit => Ok(limit),
            _ => Err(Error::BackupBehind {
                path: self.inner.path.clone(),
                destination: self.destination.clone(),
                rounds: self.round,
                pending_entries: pending,
                expected_pause: expected,
                allowed_pause: allowed,
            }),
        }
    }

    /// How long copying `entries` would take at the speed measured so far:
    /// that of keys copied one by one once a later round has copied some
    /// (what the final round does), else that of round 1. Never nothing
    /// for something.
    fn expected_pause(&self, entries: u64) -> Duration {
        if entries == 0 {
            return Duration::ZERO;
        }
        let per_entry = if self.keys_copied > 0 {
            self.key_busy / (self.keys_copied.min(u64::from(u32::MAX)) as u32)
        } else if self.entries_copied == 0 {
            Duration::from_micros(1)
        } else {
            self.busy / (self.entries_copied.min(u64::from(u32::MAX)) as u32).max(1)
        };
        per_entry
            .max(Duration::from_nanos(1))
            .saturating_mul(entries.min(u64::from(u32::MAX)) as u32)
    }

    /// Round 1: every live entry, in file order (the index as it is now;
    /// what changes meanwhile is noted and recopied later).
    ///
    /// The index is listed shard by shard, each under its read lock, with
    /// the shard's version, into windows of the file by offset. Then,
    /// window by window in file order (the reads go through the file once),
    /// each window sorted by offset, the entries are copied in stretches of
    /// up to [`STRETCH`] entries, each stretch under every shard's read lock
    /// taken once (in shard order, as `clear` takes its write locks), so
    /// that a writer waits for one stretch's copy at most; the named point
    /// the interleaving explorer stops at comes before each stretch. If an
    /// entry's shard still has the version listed, no slot of it changed:
    /// the entry is where the list says, and its slot need not be read
    /// again (in file order the slots are random accesses into the index, a
    /// cache miss each: that read was the largest cost of a backup). The key
    /// in the block must then have the listed key's hash. Otherwise whatever
    /// the slot holds now is copied; keys that left it were noted. The order
    /// of the copies and of the named points does not depend on the store's
    /// random key hasher.
    ///
    /// For a store of [`HELPED_FROM`] entries or more, a helper thread lists
    /// half the shards while this one lists the other half, then sorts the
    /// windows (both halves' lists of each merged) and hands them over in
    /// file order, at most a few ahead of the copy: this thread only lists
    /// and copies (the listing and the sort were about a third of its time:
    /// timed, 2026-12-01). The lists, the versions and so the copies are
    /// the same as if one thread had made them.
    fn first_round(&mut self) -> Result<()> {
        let inner = self.inner;
        let now_ms = self.now_ms;
        let file_len = inner.storage.len();
        let entries = inner.entries.load(Ordering::Relaxed);
        let mut versions = [0u64; SHARDS];
        let mut first = FirstRound {
            end: 0,
            entries: 0,
            expiring: Vec::new(),
        };
        if entries < HELPED_FROM {
            let mut windows = Windows::new(file_len, entries);
            windows.list(inner, 0..SHARDS, now_ms, &mut versions);
            self.round_left = windows.len() as u64;
            let mut scratch = Vec::new();
            let sorted = windows.lists.into_iter().map(|mut list| {
                sort_by_offset(&mut list, &mut scratch);
                list
            });
            self.copy_windows(sorted, &versions, &mut first)?;
        } else {
            // A helper thread lists half the shards meanwhile, then sorts
            // the windows, in file order, a few ahead of the copy.
            std::thread::scope(|scope| -> Result<()> {
                let half = SHARDS / 2;
                let helper = std::thread::Builder::new()
                    .name("sfs-backup-lister".into())
                    .spawn_scoped(scope, move || {
                        let mut windows = Windows::new(file_len, entries / 2);
                        let mut versions = [0u64; SHARDS];
                        windows.list(inner, half..SHARDS, now_ms, &mut versions);
                        (windows, versions)
                    })
                    .map_err(|e| Error::io(&inner.path, "starting a backup's lister thread", e))?;
                let mut mine = Windows::new(file_len, entries / 2);
                mine.list(inner, 0..half, now_ms, &mut versions);
                let (theirs, their_versions) = helper
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                versions[half..].copy_from_slice(&their_versions[half..]);
                self.round_left = (mine.len() + theirs.len()) as u64;
                // At most this many sorted windows wait for the copy.
                let (sorted, to_copy) = mpsc::sync_channel::<Vec<Listed>>(2);
                let sorter = std::thread::Builder::new()
                    .name("sfs-backup-lister".into())
                    .spawn_scoped(scope, move || {
                        let mut scratch = Vec::new();
                        for (mut list, more) in mine.lists.into_iter().zip(theirs.lists) {
                            list.extend_from_slice(&more);
                            sort_by_offset(&mut list, &mut scratch);
                            if sorted.send(list).is_err() {
                                return; // the copy stopped (it failed)
                            }
                        }
                    })
                    .map_err(|e| Error::io(&inner.path, "starting a backup's lister thread", e))?;
                let copied = self.copy_windows(to_copy.into_iter(), &versions, &mut first);
                // (A panic of the sorter ends its windows early: it is passed on.)
                sorter
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                copied
            })?;
        }
        self.out.stop_writer()?;
        first.end = self.out.end();
        self.first = Some(first);
        Ok(())
    }

    /// Copies round 1's windows (`windows`, each sorted by offset, in file
    /// order) in stretches (see [`first_round`](Self::first_round)).
    fn copy_windows(
        &mut self,
        windows: impl Iterator<Item = Vec<Listed>>,
        versions: &[u64; SHARDS],
        first: &mut FirstRound,
    ) -> Result<()> {
        let inner = self.inner;
        self.stretch = Instant::now();
        let per_stretch = (self.round_left / STRETCHES).clamp(1, STRETCH);
        if per_stretch > 1 {
            // Stretches of many entries (not the interleaving explorer's
            // small stores, copied entry by entry): buffers are written out
            // on a second thread.
            self.out.start_writer()?;
        }
        for list in windows {
            let mut at = 0;
            while at < list.len() {
                inner.storage.point("backup: copy");
                // Up to the next multiple of REPORT_EVERY entries at most, so
                // that the periodic work falls between stretches, as it fell
                // between entries.
                let room = (REPORT_EVERY - self.ticks % REPORT_EVERY).min(per_stretch) as usize;
                let end = list.len().min(at + room);
                let done = self.copy_stretch(&list[at..end], versions, first)?;
                at += done;
                self.round_left -= done as u64;
                self.ticks_outside_pause(done as u64)?;
            }
        }
        Ok(())
    }

    /// Copies round 1's entries `list` (in file order) under every shard's
    /// read lock, taken once for them all (in shard order, as `clear` takes
    /// its write locks); returns how many it looked at (all of them, or
    /// fewer once [`STRETCH_BYTES`] are copied). No store lock is held when
    /// it returns.
    ///
    /// An entry of a shard whose version is the one listed is where the
    /// list says (see [`first_round`](Self::first_round)). When its block's
    /// length is already exact, its header as this crate writes it and its
    /// padding zero, the block would be copied byte for byte anyway: it is
    /// checked in place in the map (header, key hash, payload checksum) and
    /// joins a run of such blocks adjacent in the file, which goes into the
    /// write buffer in one piece, straight from the map (see
    /// [`append_run`](Self::append_run)). Any other entry is copied as
    /// before, one by one. The buffer is written out after the locks are
    /// released: no system call is made under them (but for a payload
    /// longer than a chunk, streamed as before).
    fn copy_stretch(
        &mut self,
        list: &[Listed],
        versions: &[u64; SHARDS],
        first: &mut FirstRound,
    ) -> Result<usize> {
        let inner = self.inner;
        let maps: Vec<_> = inner.shards.iter().map(|c| c.map.read()).collect();
        let mut unchanged = [false; SHARDS];
        for (u, (m, v)) in unchanged.iter_mut().zip(maps.iter().zip(versions)) {
            *u = m.version() == *v;
        }
        let file_len = inner.storage.len();
        // The run of checked blocks not yet in the buffer: its start in the
        // store's file, and its length.
        let (mut run_from, mut run_len) = (0u64, 0u64);
        let mut copied = 0u64;
        let mut looked = 0;
        for l in list {
            looked += 1;
            let s = shard_of(l.hash);
            let offset = l.offset();
            let p = if unchanged[s] {
                match self.check_in_place(l.hash, offset, file_len) {
                    InPlace::Exact(h) => {
                        if run_len > 0 && run_from + run_len != offset {
                            self.append_run(run_from, run_len)?;
                            run_len = 0;
                        }
                        if run_len == 0 {
                            run_from = offset;
                        }
                        let at = self.out.end() + run_len;
                        run_len += h.block_len;
                        self.entries_copied += 1;
                        self.bytes_copied += h.block_len;
                        Some(Placed {
                            offset: at,
                            len: h.block_len,
                            expiry_ms: h.expiry_ms,
                        })
                    }
                    InPlace::Skip => None,
                    InPlace::Damaged => {
                        self.damaged += 1;
                        None
                    }
                    InPlace::Other => {
                        self.append_run(run_from, run_len)?;
                        run_len = 0;
                        self.copy_locked(Holds::Hash(l.hash), offset)?
                    }
                }
            } else {
                // The slot may hold another key by now, or none: whatever it
                // holds now is copied; keys that left it were noted.
                self.append_run(run_from, run_len)?;
                run_len = 0;
                match maps[s].get(l.id()) {
                    // Expired stays expired: the pause comes later.
                    Some(slot) if !is_expired(slot.expiry(), self.now_ms) => {
                        self.copy_locked(Holds::Key(slot.key.as_bytes()), slot.offset())?
                    }
                    _ => None,
                }
            };
            if let Some(p) = p {
                first.entries += 1;
                copied += p.len;
                if p.expiry_ms != 0 {
                    first.expiring.push(p);
                }
            }
            if copied >= STRETCH_BYTES {
                break;
            }
        }
        self.append_run(run_from, run_len)?;
        drop(maps);
        Ok(looked)
    }

    /// Checks the block at `offset` in place in the map: the entry round 1
    /// listed there, of a key with hash `hash`, in a shard unchanged since
    /// (its read lock held by the caller, so the block stays as it is).
    fn check_in_place(&self, hash: u64, offset: u64, file_len: u64) -> InPlace {
        let inner = self.inner;
        #[expect(unsafe_code, reason = "round 1 checks blocks in place in the map")]
        // SAFETY: the caller holds the read lock of the entry's shard, whose
        // version is the one listed: the slot still points at `offset`, so
        // the block is neither freed, written nor truncated away while the
        // slice lives (it is dropped before the lock).
        let Some(head) = (unsafe { inner.storage.view(offset, BLOCK_HEADER_LEN) }) else {
            return InPlace::Other;
        };
        prefetch_ahead(head.as_ptr());
        let Ok(h) = BlockHeader::decode_with(head, &self.crc, offset, file_len) else {
            return InPlace::Damaged;
        };
        if h.kind != Kind::Entry {
            return InPlace::Damaged;
        }
        if is_expired(h.expiry_ms, self.now_ms) {
            // The index has the same expiry (a renewal changes both).
            return InPlace::Skip;
        }
        let len = entry_block_len(
            usize::from(h.key_len),
            usize::from(h.meta_len),
            h.value_len as usize,
        );
        let payload_len = h.payload_len();
        // Bytes 5 (flags) and 22..24 (reserved), which decoding ignores. A
        // batch's pending member goes the other way, which writes it settled.
        if h.block_len != len
            || h.pending
            || payload_len > CHUNK as u64
            || head[5] != 0
            || head[22..24] != [0, 0]
        {
            return InPlace::Other;
        }
        #[expect(unsafe_code, reason = "round 1 checks blocks in place in the map")]
        // SAFETY: as above; the block lies within its own length.
        let Some(block) = (unsafe { inner.storage.view(offset, len) }) else {
            return InPlace::Other;
        };
        let used = (BLOCK_HEADER_LEN + payload_len) as usize;
        if block[used..].iter().any(|&b| b != 0) {
            return InPlace::Other; // the copy's padding is zero
        }
        let payload = &block[BLOCK_HEADER_LEN as usize..used];
        let key = &payload[..usize::from(h.key_len)];
        if inner.hasher.hash_one(key) != hash || self.crc.of(payload) != h.payload_crc {
            return InPlace::Damaged;
        }
        InPlace::Exact(h)
    }

    /// Appends `len` bytes of the store's file at `from` (a run of blocks
    /// checked in place, whose shards' read locks the caller holds) to the
    /// copy's write buffer, in one piece straight from the map (written out
    /// after the locks are released).
    fn append_run(&mut self, from: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let inner = self.inner;
        #[expect(
            unsafe_code,
            reason = "a run of checked blocks is copied from the map in one piece"
        )]
        // SAFETY: every block of the run was checked in place under its
        // shard's read lock, still held: none is freed, written or truncated
        // away while the slice lives.
        match unsafe { inner.storage.view(from, len) } {
            Some(run) => self.out.buf.extend_from_slice(run),
            None => {
                let buf = &mut self.out.buf;
                let at = buf.len();
                buf.resize(at + len as usize, 0);
                inner
                    .storage
                    .read_at(from, &mut buf[at..])
                    .map_err(|e| Error::io(&inner.path, "reading an entry for a backup", e))?;
            }
        }
        Ok(())
    }

    /// A later round: the keys changed since the last round began. Returns
    /// how many.
    fn recopy_round(&mut self) -> Result<u64> {
        let changes = self.inner.backups.take();
        let keys = changes.keys.len() as u64;
        self.stretch = Instant::now();
        self.now_ms = self.inner.clock.now_millis();
        self.apply_clear(changes.cleared);
        self.round_left = changes.keys.len() as u64;
        for key in changes.keys {
            self.inner.storage.point("backup: copy");
            self.round_left -= 1;
            self.copy_key(&key, self.now_ms)?;
            self.tick(true)?;
        }
        Ok(keys)
    }

    /// After a `clear`: nothing copied so far is in the store any more.
    fn apply_clear(&mut self, cleared: bool) {
        if cleared {
            self.first = None;
            self.placed.clear();
            self.dead_bytes = 0;
            self.out.truncate_to(FILE_HEADER_LEN);
        }
    }

    /// The final round, under the gate: no write runs. Abandoned (the
    /// writers released, the keys not yet copied put back) when it runs
    /// past `allowed`.
    fn final_round(&mut self, allowed: Duration) -> Result<Final> {
        let inner = self.inner;
        inner.storage.point("backup: final round");
        // New writes wait from here; the writes in flight finish first.
        let asked = Instant::now();
        let gate = inner.gate.write();
        let paused = Instant::now();
        inner.storage.point("backup: pause");
        let now_ms = inner.clock.now_millis();
        let changes = inner.backups.take();
        self.stretch = Instant::now();
        self.apply_clear(changes.cleared);
        let mut keys = changes.keys.into_iter();
        let mut copied = 0;
        while let Some(key) = keys.next() {
            if paused.elapsed() > allowed {
                inner.backups.put_back(std::iter::once(key).chain(keys));
                let spent = self.stretch.elapsed();
                self.busy += spent;
                self.key_busy += spent;
                self.keys_copied += copied;
                drop(gate);
                return Ok(Final::Overran);
            }
            self.copy_key(&key, now_ms)?;
            self.tick(false)?;
            copied += 1;
        }
        self.check_cancel()?;
        // Still under the gate: nothing changes after `now_ms` is taken.
        inner.backups.stop();
        drop(gate);
        let pause = asked.elapsed();
        self.busy += self.stretch.elapsed();
        Ok(Final::Done { now_ms, pause })
    }

    /// Copies `key` as the index has it now (or forgets it if it is gone or
    /// expired at `now`).
    fn copy_key(&mut self, key: &[u8], now: i64) -> Result<()> {
        let inner = self.inner;
        let (hash, cell) = inner.locate(key);
        let map = cell.map.read();
        let found = map.find(hash, key).map(|id| {
            let slot = map.slot(id);
            (slot.offset(), slot.expiry())
        });
        let copied = match found {
            Some((offset, expiry)) if !is_expired(expiry, now) => {
                self.copy_locked(Holds::Key(key), offset)?
            }
            _ => None,
        };
        drop(map);
        self.record(hash, key, copied)
    }

    /// Notes where `key` now is in the copy (`None`: not in it).
    fn record(&mut self, hash: u64, key: &[u8], copied: Option<Placed>) -> Result<()> {
        self.place_first_round()?;
        self.set_placement(hash, key, copied);
        Ok(())
    }

    fn set_placement(&mut self, hash: u64, key: &[u8], copied: Option<Placed>) {
        if let Some(old) = self.placed.set(&self.out, hash, key, copied) {
            self.dead_bytes += old;
            self.recopied += u64::from(copied.is_some());
        }
    }

    /// Puts round 1's copies into the placements table (once, before the
    /// first key copied again or forgotten), reading their keys back from
    /// the copy. A key round 1 copied twice (it left its slot for another
    /// meanwhile; it was noted and is copied again anyway) keeps its later
    /// copy, as if recorded as it went.
    fn place_first_round(&mut self) -> Result<()> {
        let Some(first) = self.first.take() else {
            return Ok(());
        };
        // Not time spent copying: kept out of the copy speed that predicts
        // the pause.
        let started = Instant::now();
        let entries = usize::try_from(first.entries).unwrap_or(usize::MAX);
        self.placed.all.reserve(entries);
        self.placed.table.reserve(entries, |_| 0);
        let (mut cache, mut cache_at) = (Vec::new(), 0u64);
        let mut key = Vec::new();
        let mut pos = FILE_HEADER_LEN;
        while pos < first.end {
            let b = read_copy(&self.out, &mut cache, &mut cache_at, pos, BLOCK_HEADER_LEN)?;
            let h = BlockHeader::decode(b, self.inner.salt, pos, u64::MAX).map_err(|e| {
                let e = io::Error::new(io::ErrorKind::InvalidData, e.to_string());
                Error::io(&self.out.shown, "reading the backup back", e)
            })?;
            let n = BLOCK_HEADER_LEN + u64::from(h.key_len);
            let b = read_copy(&self.out, &mut cache, &mut cache_at, pos, n)?;
            key.clear();
            key.extend_from_slice(&b[BLOCK_HEADER_LEN as usize..]);
            let at = Placed {
                offset: pos,
                len: h.block_len,
                expiry_ms: h.expiry_ms,
            };
            self.set_placement(self.inner.hasher.hash_one(&key[..]), &key, Some(at));
            pos += h.block_len;
        }
        debug_assert_eq!(pos, first.end);
        self.stretch += started.elapsed();
        Ok(())
    }

    /// Appends the entry at `offset` (indexed under the key `holds` names;
    /// the caller holds its shard's read lock, so the block stays in place)
    /// to the copy, with no padding. `None` if it is damaged (or, for
    /// [`Holds::Hash`], expired by its header at the clock's last reading).
    ///
    /// A block whose length is already exact and whose header is as this
    /// crate writes it (reserved bytes zero) is copied as it is, in one
    /// piece: its header would be encoded again to the same bytes.
    fn copy_locked(&mut self, holds: Holds<'_>, offset: u64) -> Result<Option<Placed>> {
        let inner = self.inner;
        let h = match inner.header_at(offset) {
            Ok(h) => h,
            Err(Error::Corrupt { .. }) => {
                self.damaged += 1;
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        if matches!(holds, Holds::Hash(_)) && is_expired(h.expiry_ms, self.now_ms) {
            // Round 1, where the slot is not read again: the index has the
            // same expiry (a renewal changes both).
            return Ok(None);
        }
        let len = entry_block_len(
            usize::from(h.key_len),
            usize::from(h.meta_len),
            h.value_len as usize,
        );
        let start = self.out.end();
        let payload_len = h.payload_len();
        let read_err = |e| Error::io(&inner.path, "reading an entry for a backup", e);
        let head = BLOCK_HEADER_LEN as usize;
        let intact = if payload_len <= CHUNK as u64 {
            let exact = h.block_len == len;
            let used = head + payload_len as usize;
            let b = &mut self.out.buf;
            let at = b.len();
            // The whole block when exact (one read, its padding included),
            // else the header and payload.
            b.resize(at + if exact { len as usize } else { used }, 0);
            inner
                .storage
                .read_at(offset, &mut b[at..])
                .map_err(read_err)?;
            let block = &mut b[at..];
            // Bytes 5 (flags) and 22..24 (reserved), which decoding ignores.
            // A batch's pending member is written settled: the copy holds
            // the store at one moment, where the batch is whole.
            if !exact || h.pending || block[5] != 0 || block[22] != 0 || block[23] != 0 {
                let header = BlockHeader {
                    block_len: len,
                    pending: false,
                    ..h
                };
                block[..head].copy_from_slice(&header.encode(inner.salt));
            }
            // The padding is zero, as the store writes it.
            block[used..].fill(0);
            let payload = &block[head..used];
            let key = &payload[..usize::from(h.key_len)];
            let key_ok = match holds {
                Holds::Key(k) => payload.starts_with(k),
                Holds::Hash(hash) => inner.hasher.hash_one(key) == hash,
            };
            key_ok && self.crc.of(payload) == h.payload_crc
        } else {
            let header = BlockHeader {
                block_len: len,
                pending: false,
                ..h
            }
            .encode(inner.salt);
            self.stream_payload(&header, offset + h.key_offset(), payload_len, holds, &h)?
        };
        if !intact {
            self.out.truncate_to(start);
            self.damaged += 1;
            return Ok(None);
        }
        let end = start + len;
        if self.out.end() < end {
            self.out
                .buf
                .resize(self.out.buf.len() + (end - self.out.end()) as usize, 0);
        }
        debug_assert_eq!(self.out.end(), end);
        self.entries_copied += 1;
        self.bytes_copied += len;
        Ok(Some(Placed {
            offset: start,
            len,
            expiry_ms: h.expiry_ms,
        }))
    }

    /// Copies a payload longer than a chunk straight to the file; returns
    /// whether its key and checksum are right.
    fn stream_payload(
        &mut self,
        header: &[u8],
        src: u64,
        len: u64,
        holds: Holds<'_>,
        h: &BlockHeader,
    ) -> Result<bool> {
        let inner = self.inner;
        self.out.buf.extend_from_slice(header);
        // Written straight to the file from here: round 1's writer thread,
        // if it runs, writes everything before first and stops.
        self.out.stop_writer()?;
        self.out.flush()?;
        let mut chunk = vec![0u8; CHUNK];
        let mut hasher = crc32fast::Hasher::new_with_initial(inner.salt);
        let mut done = 0u64;
        let mut key_ok = true;
        while done < len {
            let n = (len - done).min(CHUNK as u64) as usize;
            inner
                .storage
                .read_at(src + done, &mut chunk[..n])
                .map_err(|e| Error::io(&inner.path, "reading an entry for a backup", e))?;
            if done == 0 {
                // A key (at most 64 KiB) is within the first chunk.
                key_ok = match holds {
                    Holds::Key(k) => chunk[..n].starts_with(k),
                    Holds::Hash(hash) => chunk
                        .get(..usize::from(h.key_len))
                        .is_some_and(|k| inner.hasher.hash_one(k) == hash),
                };
            }
            hasher.update(&chunk[..n]);
            self.out
                .file
                .write_all_at(&chunk[..n], self.out.flushed)
                .map_err(|e| Error::io(&self.out.shown, "writing the backup", e))?;
            self.out.flushed += n as u64;
            done += n as u64;
        }
        Ok(key_ok && hasher.finalize() == h.payload_crc)
    }

    /// After `n` entries copied with no store lock held now (round 1's
    /// stretches): [`step`](Self::step), and [`periodic`](Self::periodic)
    /// when a multiple of [`REPORT_EVERY`] entries was passed.
    fn ticks_outside_pause(&mut self, n: u64) -> Result<()> {
        self.step()?;
        self.out.write_back_if_due();
        let before = self.ticks;
        self.ticks += n;
        if before / REPORT_EVERY != self.ticks / REPORT_EVERY {
            self.periodic()?;
        }
        Ok(())
    }

    /// After each entry with no store lock held: [`step`](Self::step), and
    /// every [`REPORT_EVERY`] entries (outside the pause)
    /// [`periodic`](Self::periodic).
    fn tick(&mut self, outside_pause: bool) -> Result<()> {
        self.step()?;
        if outside_pause {
            self.out.write_back_if_due();
        }
        self.ticks += 1;
        if outside_pause && self.ticks.is_multiple_of(REPORT_EVERY) {
            self.periodic()?;
        }
        Ok(())
    }

    /// After each entry (a store lock may be held): cancel, and write out a
    /// full buffer.
    fn step(&mut self) -> Result<()> {
        self.check_cancel()?;
        if self.out.buf.len() >= self.out.full() {
            self.out.flush()?;
        }
        Ok(())
    }

    /// Every [`REPORT_EVERY`] entries outside the pause, with no store lock
    /// held: the clock, progress, the bandwidth limit.
    fn periodic(&mut self) -> Result<()> {
        self.now_ms = self.inner.clock.now_millis();
        self.busy += self.stretch.elapsed();
        self.report(BackupPhase::Copying, self.round_left);
        self.throttle()?;
        self.stretch = Instant::now();
        Ok(())
    }

    /// [`Error::BackupCancelled`] once the token is cancelled.
    fn check_cancel(&self) -> Result<()> {
        if self
            .opts
            .cancel
            .as_ref()
            .is_some_and(BackupCancel::is_cancelled)
        {
            return Err(Error::BackupCancelled {
                path: self.inner.path.clone(),
                destination: self.destination.clone(),
            });
        }
        Ok(())
    }

    /// Sleeps while the copy is ahead of the bandwidth limit (checking the
    /// cancel token every 50 ms).
    fn throttle(&self) -> Result<()> {
        let Some(bw) = self.opts.bandwidth else {
            return Ok(());
        };
        let due = Duration::from_secs_f64(self.bytes_copied as f64 / bw as f64);
        while self.started.elapsed() < due {
            self.check_cancel()?;
            let left = due.saturating_sub(self.started.elapsed());
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
        Ok(())
    }

    fn report(&self, phase: BackupPhase, left_in_round: u64) {
        let Some(f) = &self.opts.progress else {
            return;
        };
        let pending = match phase {
            BackupPhase::Copying => left_in_round + self.inner.backups.pending(),
            _ => 0,
        };
        let avg = self
            .bytes_copied
            .checked_div(self.entries_copied)
            .unwrap_or(0);
        f(&BackupProgress {
            phase,
            round: self.round,
            entries_copied: self.entries_copied,
            bytes_copied: self.bytes_copied,
            entries_remaining: pending,
            bytes_remaining: pending.saturating_mul(avg),
            expected_pause: self.expected_pause(pending),
            // (the progress of rounds, not of the pause: never called in it)
        });
    }

    /// After the pause: drops what had expired by then, closes the holes,
    /// cuts and syncs the copy. Returns its length.
    fn finish(&mut self, now_ms: i64) -> Result<u64> {
        self.report(BackupPhase::Finishing, 0);
        if let Some(first) = self.first.take() {
            return self.finish_first_round(first, now_ms);
        }
        for p in self.placed.all.iter_mut().filter(|p| p.live) {
            if is_expired(p.at.expiry_ms, now_ms) {
                p.live = false;
                self.placed.live -= 1;
                self.dead_bytes += p.at.len;
            }
        }
        let end = if self.dead_bytes == 0 {
            self.out.flush()?;
            self.out.end()
        } else {
            let mut live: Vec<(u64, u64)> = self.placed.live().map(|p| (p.offset, p.len)).collect();
            live.sort_unstable();
            self.out.close_holes(&live, FILE_HEADER_LEN)?
        };
        debug_assert_eq!(
            end,
            FILE_HEADER_LEN + self.placed.live().map(|p| p.len).sum::<u64>()
        );
        self.cut_and_sync(end)
    }

    /// Cuts the copy to `end` and syncs it; returns `end`.
    fn cut_and_sync(&mut self, end: u64) -> Result<u64> {
        self.out
            .file
            .set_len(end)
            .map_err(self.out.io("cutting the backup to length"))?;
        self.out
            .file
            .sync_all()
            .map_err(self.out.io("syncing the backup"))?;
        Ok(end)
    }

    /// [`finish`](Self::finish) when round 1's copies are all there is (no
    /// key was copied again): those expired by the pause are cut out.
    fn finish_first_round(&mut self, first: FirstRound, now_ms: i64) -> Result<u64> {
        debug_assert!(self.placed.all.is_empty() && first.end == self.out.end());
        let mut live = Vec::new();
        let mut from = FILE_HEADER_LEN;
        let mut expired = 0;
        for p in first
            .expiring
            .iter()
            .filter(|p| is_expired(p.expiry_ms, now_ms))
        {
            if p.offset > from {
                live.push((from, p.offset - from));
            }
            from = p.offset + p.len;
            expired += 1;
        }
        self.placed.live = first.entries - expired;
        let end = if expired == 0 {
            self.out.flush()?;
            self.out.end()
        } else {
            if first.end > from {
                live.push((from, first.end - from));
            }
            self.out.close_holes(&live, FILE_HEADER_LEN)?
        };
        self.cut_and_sync(end)
    }

    /// Renames the synced copy into place and syncs the directory.
    fn place(&mut self, dest: &Path) -> Result<()> {
        self.check_cancel()?;
        std::fs::rename(&self.out.path, dest)
            .map_err(self.out.io("renaming the backup into place"))?;
        self.out.placed = true;
        super::sync_parent_dir(dest)
            .map_err(|e| Error::io(dest, "syncing the backup's directory", e))
    }

    /// Streams the finished copy to `w`; the scratch file is then removed.
    fn stream(&mut self, w: &mut dyn Write, len: u64) -> Result<()> {
        self.check_cancel()?;
        let mut chunk = vec![0u8; CHUNK];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK as u64) as usize;
            self.out
                .file
                .read_exact_at(&mut chunk[..n], done)
                .map_err(self.out.io("reading the finished backup"))?;
            w.write_all(&chunk[..n])
                .map_err(self.out.io("writing the backup to its writer"))?;
            done += n as u64;
        }
        w.flush()
            .map_err(self.out.io("writing the backup to its writer"))?;
        std::fs::remove_file(&self.out.path)
            .map_err(self.out.io("removing the backup's temporary file"))?;
        self.out.placed = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Listed, sort_by_offset};

    #[test]
    fn the_radix_sort_puts_entries_in_file_order() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for (n, max_offset) in [(0, 8), (10, 1 << 20), (5000, 1 << 16), (100_000, 1 << 30)] {
            let mut offsets: Vec<u64> = (0..n).map(|_| next() % (max_offset / 8) * 8).collect();
            offsets.sort_unstable();
            offsets.dedup();
            // Shuffled, each with an id and hash of its own.
            let mut list: Vec<Listed> = offsets
                .iter()
                .enumerate()
                .map(|(i, &o)| Listed::new(next(), (i % (1 << 24)) as u32, o))
                .collect();
            for i in (1..list.len()).rev() {
                list.swap(i, (next() % (i as u64 + 1)) as usize);
            }
            let mut want = list.clone();
            want.sort_unstable_by_key(|l| l.at);
            sort_by_offset(&mut list, &mut Vec::new());
            assert!(
                list.iter()
                    .zip(&want)
                    .all(|(a, b)| a.at == b.at && a.hash == b.hash)
            );
            assert_eq!(list.len(), want.len());
            assert!(list.windows(2).all(|w| w[0].offset() < w[1].offset()));
        }
    }
}
