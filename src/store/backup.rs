//! Live backup: a compacted copy of the store, taken while it serves reads
//! and writes, holding exactly its contents at one moment (the final pause).
//!
//! The copy is made the way a running virtual machine is migrated: in
//! rounds. Round 1 copies every live entry while writers run; meanwhile the
//! store notes every key written or removed (`Tracker`, active only while a
//! backup runs: one atomic load per write otherwise). Each later round
//! recopies the keys noted since the round before, until what is left would
//! take no longer than the pause budget to copy (an estimate from the copy
//! speed measured so far). Then the final round takes the `gate` for
//! writing, which stops every writer (puts, deletes, `touch`, purge,
//! compaction batches, `clear`, syncs), recopies what is left, and lets
//! them go. Readers are never stopped.
//!
//! The copy goes to a temporary file next to the destination; a key copied
//! twice leaves a hole there, and after the pause (with the store free
//! again) the file is compacted in place, so the copy has no free space:
//! the header, then one entry per live key. Entries keep their sequence
//! numbers, so a reopen of the copy derives the same least-recently-used
//! order (the order of sequence numbers) as a reopen of the store would,
//! and the copy keeps the store's salt, so that payload checksums are
//! copied, not recomputed: damage is never laundered into valid data.
//! Finally the file is synced, renamed to the destination's name and the
//! directory synced. A cancelled or failed backup removes its temporary
//! file; the store is never written by a backup.
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
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::Inner;
use crate::error::{Error, Result};
use crate::format::{
    BLOCK_HEADER_LEN, BlockHeader, FILE_HEADER_LEN, FIRST_FORMAT_VERSION, FileHeader, crc,
    entry_block_len, is_expired,
};

/// Keys, hashed with a per-process random seed.
type KeySet = hashbrown::HashSet<Box<[u8]>, foldhash::fast::RandomState>;

/// A progress callback (see [`BackupOptions::on_progress`]).
type ProgressFn = dyn Fn(&BackupProgress) + Send + Sync;

/// Payloads up to this size are copied through the write buffer; longer
/// ones are streamed in chunks of this size.
const CHUNK: usize = 1 << 20;
/// The write buffer is written out when it holds this much.
const BUFFER: usize = 256 << 10;
/// Progress is reported, and the bandwidth limit applied, this often.
const REPORT_EVERY: u64 = 1024;

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
    /// Renamed into place: nothing to remove.
    placed: bool,
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
            placed: false,
        })
    }

    fn io(&self, action: &'static str) -> impl FnOnce(io::Error) -> Error + '_ {
        move |e| Error::io(&self.shown, action, e)
    }

    fn end(&self) -> u64 {
        self.flushed + self.buf.len() as u64
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

    fn flush(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            let written = self.file.write_all_at(&self.buf, self.flushed);
            written.map_err(|e| Error::io(&self.shown, "writing the backup", e))?;
            self.flushed += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }

    /// Forgets everything after `end` (later writes go over it; the final
    /// length cuts the rest).
    fn truncate_to(&mut self, end: u64) {
        if end >= self.flushed {
            self.buf.truncate((end - self.flushed) as usize);
        } else {
            self.buf.clear();
            self.flushed = end;
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
            placed: Placements::default(),
            dead_bytes: 0,
            round: 0,
            entries_copied: 0,
            bytes_copied: 0,
            recopied: 0,
            damaged: 0,
            busy: Duration::ZERO,
            started,
            stretch: Instant::now(),
            round_left: 0,
            ticks: 0,
            now_ms: self.clock.now_millis(),
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
        let mut allowed = self.opts.pause_budget;
        // Rounds in a row that left at least as many changed keys as they
        // copied: the writers outpace the copy, and more rounds would only
        // grow longer.
        let mut losing = 0;
        loop {
            self.report(BackupPhase::Copying, 0);
            let pending = self.inner.backups.pending();
            if self.expected_pause(pending) > allowed {
                if self.round < self.opts.max_rounds && losing < 2 {
                    self.round += 1;
                    self.inner.storage.point("backup: round");
                    let copied = self.recopy_round()?;
                    let left = self.inner.backups.pending();
                    losing = if left >= copied { losing + 1 } else { 0 };
                    continue;
                }
                allowed = self.behind(allowed, pending)?;
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

    /// How long copying `entries` would take at the speed measured so far.
    fn expected_pause(&self, entries: u64) -> Duration {
        if entries == 0 {
            return Duration::ZERO;
        }
        let per_entry = if self.entries_copied == 0 {
            Duration::from_micros(1)
        } else {
            self.busy / (self.entries_copied.min(u64::from(u32::MAX)) as u32).max(1)
        };
        per_entry.saturating_mul(entries.min(u64::from(u32::MAX)) as u32)
    }

    /// Round 1: every live entry, in file order (the index as it is now;
    /// what changes meanwhile is noted and recopied later).
    fn first_round(&mut self) -> Result<()> {
        let inner = self.inner;
        let mut all: Vec<(u64, u32, u32)> =
            Vec::with_capacity(inner.entries.load(Ordering::Relaxed));
        for (s, cell) in inner.shards.iter().enumerate() {
            all.extend(
                cell.map
                    .read()
                    .iter()
                    .map(|(id, slot)| (slot.offset(), s as u32, id)),
            );
        }
        all.sort_unstable();
        self.round_left = all.len() as u64;
        self.stretch = Instant::now();
        self.placed.all.reserve(all.len());
        self.placed.table.reserve(all.len(), |_| 0);
        // In file order (the reads go through the file once), one entry per
        // taking of its shard's read lock, so that a writer of that shard
        // waits for one entry's copy at most. (Taking each shard's lock once
        // for a stretch of entries was measured no faster alone, and it
        // would make the order of the copies, and the named points the
        // interleaving explorer stops at, depend on the store's random key
        // hasher.)
        for (_, s, id) in all {
            inner.storage.point("backup: copy");
            self.round_left -= 1;
            let map = inner.shards[s as usize].map.read();
            // The slot may hold another key by now, or none: whatever it
            // holds now is copied; keys that left it were noted.
            let Some(slot) = map.get(id) else {
                continue;
            };
            if is_expired(slot.expiry(), self.now_ms) {
                continue; // and stays expired: the pause comes later
            }
            let key = slot.key.as_bytes();
            let copied = self.copy_locked(key, slot.offset())?;
            self.record(inner.hasher.hash_one(key), key, copied);
            drop(map);
            self.tick(true)?;
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
        while let Some(key) = keys.next() {
            if paused.elapsed() > allowed {
                inner.backups.put_back(std::iter::once(key).chain(keys));
                self.busy += self.stretch.elapsed();
                drop(gate);
                return Ok(Final::Overran);
            }
            self.copy_key(&key, now_ms)?;
            self.tick(false)?;
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
            Some((offset, expiry)) if !is_expired(expiry, now) => self.copy_locked(key, offset)?,
            _ => None,
        };
        drop(map);
        self.record(hash, key, copied);
        Ok(())
    }

    /// Notes where `key` now is in the copy (`None`: not in it).
    fn record(&mut self, hash: u64, key: &[u8], copied: Option<Placed>) {
        if let Some(old) = self.placed.set(&self.out, hash, key, copied) {
            self.dead_bytes += old;
            self.recopied += u64::from(copied.is_some());
        }
    }

    /// Appends the entry at `offset` (indexed under `key`; the caller holds
    /// its shard's read lock, so the block stays in place) to the copy, with
    /// no padding. `None` if it is damaged.
    fn copy_locked(&mut self, key: &[u8], offset: u64) -> Result<Option<Placed>> {
        let inner = self.inner;
        let h = match inner.header_at(offset) {
            Ok(h) => h,
            Err(Error::Corrupt { .. }) => {
                self.damaged += 1;
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let len = entry_block_len(
            usize::from(h.key_len),
            usize::from(h.meta_len),
            h.value_len as usize,
        );
        let header = BlockHeader {
            block_len: len,
            ..h
        }
        .encode(inner.salt);
        let start = self.out.end();
        let payload_len = h.payload_len();
        let src = offset + h.key_offset();
        let read_err = |e| Error::io(&inner.path, "reading an entry for a backup", e);
        let intact = if payload_len <= CHUNK as u64 {
            let b = &mut self.out.buf;
            b.extend_from_slice(&header);
            let at = b.len();
            b.resize(at + payload_len as usize, 0);
            inner.storage.read_at(src, &mut b[at..]).map_err(read_err)?;
            let payload = &b[at..];
            payload.starts_with(key) && crc(inner.salt, &[payload]) == h.payload_crc
        } else {
            self.stream_payload(&header, src, payload_len, key, h.payload_crc)?
        };
        if !intact {
            self.out.truncate_to(start);
            self.damaged += 1;
            return Ok(None);
        }
        let pad = len - BLOCK_HEADER_LEN - payload_len;
        self.out.buf.resize(self.out.buf.len() + pad as usize, 0);
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
        key: &[u8],
        want: u32,
    ) -> Result<bool> {
        let inner = self.inner;
        self.out.buf.extend_from_slice(header);
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
                key_ok = chunk[..n].starts_with(key);
            }
            hasher.update(&chunk[..n]);
            self.out
                .file
                .write_all_at(&chunk[..n], self.out.flushed)
                .map_err(|e| Error::io(&self.out.shown, "writing the backup", e))?;
            self.out.flushed += n as u64;
            done += n as u64;
        }
        Ok(key_ok && hasher.finalize() == want)
    }

    /// After each entry with no store lock held: [`step`](Self::step), and
    /// every [`REPORT_EVERY`] entries (outside the pause)
    /// [`periodic`](Self::periodic).
    fn tick(&mut self, outside_pause: bool) -> Result<()> {
        self.step()?;
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
        if self.out.buf.len() >= BUFFER {
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
