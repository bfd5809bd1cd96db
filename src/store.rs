//! `Store`: opens a file, serves reads, writes and deletes, and holds the
//! locks that make it safe to share between threads.
//!
//! This file holds the public `Store`, its state (`Inner`) and opening; the
//! rest is in submodules of one concern each: `read`, `write` (puts,
//! deletes, eviction under the cap, purge, clear), `batch` (atomic batches:
//! members written pending, a commit record, one sync, settling), `blocks` (the one owner of
//! every block outside the index: the free list, old copies held until a
//! sync, reader pins, compaction's copies in flight), `durability` (group
//! commit, the background thread), `compact`, `readers` (the reader-lock
//! table `blocks` uses), `values` (the public value types) and `check`
//! (stats and the invariant check).
//!
//! # Locks, in the order they are taken
//! 1. `gate` (read by every write, `sync` included; write by `clear`): no
//!    write is in flight while `clear` resets the file. Never held by readers
//!    or by user code.
//! 2. `inserting` (room under the entry cap, the keys of batches in flight,
//!    which nothing evicts, and evictions). An insert that finds the cap
//!    filled by other inserts' rooms and batches' keys alone waits on
//!    `room_changed` (letting `inserting` go) until one of them is done.
//! 3. a shard's `map` (read by readers, write by writers of that shard's keys).
//! 4. that shard's `lru` list.
//! 5. the block owner's reader locks, then its `space`: every free-block
//!    header is written by `blocks`, most of them under `space`.
//! 6. `sync_state` (group commit).
//!
//! No lock is held across a write of an entry's bytes, except compaction's
//! copy (under its key's shard read lock, so that a remover of the key finds
//! the copy listed), and none while user code runs.
//!
//! # Why a block is never reused under a reader
//! A `get` copies the value while holding its shard's read lock; a block is
//! freed only after its key was removed from (or repointed in) the index under
//! the write lock, so no `get` can be reading it. A [`ValueRef`] pins its block
//! before the shard lock is released; a pinned block that is freed stays out
//! of the free list until the last reader drops, so it is neither handed out
//! nor merged nor cut off the end of the file. The last reader returns the
//! space while still holding its reader lock, so that `clear` never finds
//! such a block neither pinned nor returned.
//!
//! # Why nothing acknowledged is lost
//! A new copy of a key is written completely before it is published in the
//! index; the old copy is freed only once the new one is durable (at once
//! under `SyncPolicy::Always`, which syncs before publishing; after the next
//! sync otherwise). Freeing an entry overwrites its header first, so a freed
//! entry can never be found again by a scan.
//!
//! Orderings that keep it so through a crash (`tests/crash_every_write.rs`
//! tries every one for one operation at a time, `tests/interleavings` for
//! every interleaving of two):
//! - A copy that stops being its key's indexed copy is handed to `blocks`
//!   (held) before the shard lock goes, so a remover of the key always finds
//!   it; a key leaving the index frees its held copies and compaction's
//!   copies before its newest one, and not at all if that fails; and if an
//!   older copy's free header is not yet synced, a sync comes first: were
//!   the newest copy's free header to survive a power loss without the older
//!   one's, the older value would come back.
//! - `clear` syncs its cut of the file before any write reuses the space,
//!   under every policy: a power loss that dropped the cut but kept such a
//!   write over a key's newest copy would bring an older copy back.
//! - Under `Always`, a put does not return while a freed copy of its key
//!   that may outrank it (a renewal's, with a later sequence number) has a
//!   free header not yet synced.
//! - An insert over the entry cap makes room before it writes (and under
//!   `Always` syncs the eviction first): the open evicts by write order, not
//!   by use, so it must never find one entry too many.
//! - A batch's members are written pending and count only through its
//!   commit record; once synced they are settled (their expiry words
//!   rewritten) before any is published, and their keys are listed as
//!   unsettled until a sync covers that, so no remover frees a member while
//!   the record still vouches for pending ones; the record itself is held
//!   until that sync (see `batch`).
//! - A free header that cannot be written leaves its block held, still
//!   valid, never in the free list; a split writes both halves' headers, so
//!   no header on disk ever claims more than its block.

use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use parking_lot::{Condvar, Mutex, RwLock};

use crate::clock::{Clock, millis_to_system_time, system_time_to_millis};
use crate::error::{Error, Result};
use crate::events::{Hub, Notes, Subscriber};
use crate::filelock::FileLock;
use crate::format::{
    BlockHeader, EXPIRY_WORD_OFFSET, FILE_HEADER_LEN, FIRST_FORMAT_VERSION, FORMAT_VERSION,
    FileHeader, HeaderError, Kind, MAX_EXPIRY_MS, MAX_KEY_LEN, MAX_META_LEN, MAX_VALUE_LEN, crc,
    entry_block_len, expiry_word, is_expired,
};
use crate::index::{KeyHasher, LruList, Shard, shard_of};
use crate::inspect::read_file_header;
use crate::io::{FileStorage, Storage};
use crate::options::{AutoCompact, Options, SyncPolicy};
use crate::recovery::{StorageSource, recover};

mod backup;
mod batch;
mod blocks;
mod check;
mod compact;
mod durability;
mod expiry;
mod read;
mod readers;
mod unsettled;
mod values;
mod write;

pub use backup::{
    BackupCancel, BackupOptions, BackupPhase, BackupProgress, BackupReport, IfBehind,
};
pub use batch::Batch;
use blocks::{BlockIo, Blocks};
pub(crate) use compact::BATCH_ENTRIES;
pub use compact::CompactStats;
pub use values::{Conflict, Entry, Iter, PutOptions, Stats, ValueRef};
use values::{Expiry, ValueBytes};

/// How many per-key write locks a store has (see `Inner::key_locks`).
const KEY_LOCKS: usize = 1024;

/// A persistent key-value map kept in one file.
///
/// Every method takes `&self`; a `Store` is `Send + Sync`, so share it between
/// threads as an `Arc<Store>`.
///
/// ```
/// use std::time::Duration;
///
/// let dir = tempfile::tempdir()?;
/// let store = sfs::Store::open(dir.path().join("data.sfs"))?;
/// store.put(b"greeting", b"hello")?;
/// assert_eq!(store.get(b"greeting")?.as_deref(), Some(&b"hello"[..]));
/// store.put_with_ttl(b"session", b"token", Duration::from_secs(60))?;
/// assert!(store.delete(b"greeting")?);
/// assert_eq!(store.len(), 1);
/// store.close()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Store {
    inner: Arc<Inner>,
    /// The background thread (periodic sync, auto-compaction), if any,
    /// until `shutdown` joins it.
    maintenance: Mutex<Option<JoinHandle<()>>>,
    /// The file's lock (none on a test storage). Declared last, so that it
    /// is released after `inner` closed the file.
    _lock: Option<FileLock>,
}

struct ShardCell {
    map: RwLock<Shard>,
    lru: Mutex<LruList>,
    /// Its place in `Inner::shards` (and `Inner::lru_oldest`).
    index: usize,
}

/// How many syncs back group commit's leader looks to see how many writers
/// run at once.
const SEEN_SYNCS: usize = 8;

#[derive(Default)]
struct SyncState {
    /// Every write with a generation up to this one is durable.
    synced: u64,
    running: bool,
    /// The leader is waiting for the writers it expects (see `sync_to`).
    gathering: bool,
    /// The threads waiting for a sync that has not started (the leader
    /// among them while it gathers), each with the generation of its
    /// write. One whose write the last sync covered may still be listed
    /// (it asked after that sync's leader took the list, and has not woken
    /// yet): it is not waiting for the next sync (see `Asking`).
    asking: Vec<Asking>,
    /// The threads the last sync covered.
    last_group: Vec<std::thread::ThreadId>,
    /// Followers asleep until the running sync ends (woken each by its own
    /// `unpark`, at once, rather than one after another through the mutex).
    sleepers: Vec<std::thread::Thread>,
    /// How many writers were seen at once around each of the last
    /// [`SEEN_SYNCS`] syncs: the group plus those that asked while it ran
    /// (see `gather`).
    seen: [u32; SEEN_SYNCS],
    /// Where the next sync's count goes in `seen`.
    seen_at: usize,
    /// How long the last `fdatasync` took.
    last_sync: Duration,
    /// How many `fdatasync`s failed, and the newest generation one of them
    /// covered (see `sync_to`).
    failures: u64,
    failed_through: u64,
}

/// A thread waiting for a sync, and the generation of its write.
#[derive(Clone, Copy)]
struct Asking {
    thread: std::thread::ThreadId,
    generation: u64,
}

/// Failures of the background thread.
#[derive(Default)]
struct BackgroundErrors {
    errors: u64,
    /// The last one, for `Stats`.
    last: Option<String>,
    /// The last one not yet reported to a caller: (task, reason).
    unreported: Option<(&'static str, String)>,
}

pub(crate) struct Inner {
    path: PathBuf,
    storage: Arc<dyn Storage>,
    salt: u32,
    read_only: bool,
    policy: SyncPolicy,
    max_entries: Option<usize>,
    verify: bool,
    clock: Arc<dyn Clock>,
    hasher: KeyHasher,
    shards: Box<[ShardCell]>,
    /// Per shard, the use stamp of its least recently used entry (`u64::MAX`
    /// when it has none), so that eviction finds the store's oldest entry by
    /// reading these instead of locking every shard's list.
    lru_oldest: Box<[AtomicU64]>,
    entries: AtomicUsize,
    /// Entries plus the inserts holding room under the entry cap (see
    /// `make_room`): what the cap is checked against.
    claimed: AtomicUsize,
    live_bytes: AtomicU64,
    next_seq: AtomicU64,
    next_stamp: AtomicU64,
    /// The free list, held blocks, reader pins and compaction's moves.
    blocks: Blocks,
    gate: RwLock<()>,
    /// Generation counter of writes to the storage.
    writes: AtomicU64,
    sync_state: Mutex<SyncState>,
    /// Signalled when a writer asks for a sync while its leader gathers.
    sync_asked: Condvar,
    /// See `Options::commit_wait`.
    commit_wait: Duration,
    corrupt_blocks: u64,
    corrupt_bytes: u64,
    /// The new keys whose inserts hold room under the entry cap
    /// (see `make_room`).
    inserting: Mutex<write::Inserting>,
    /// Signalled (with `inserting`) when an insert's room is used or given
    /// back: an insert that finds the cap filled by rooms alone waits here.
    room_changed: Condvar,
    /// Per-key write locks, by key hash: every write of a key (put, delete,
    /// touch, conditional write) holds its key's lock from its look at the
    /// key to its publication, so that a conditional write's comparison
    /// still holds when it publishes. Removals that are not asked for by key
    /// (eviction, purge) do not take them: see `Inner::put_cond`.
    key_locks: Box<[Mutex<()>]>,
    /// One compaction at a time.
    compaction: Mutex<()>,
    /// Entries compaction moves per sync.
    compact_batch: usize,
    expired_purged: AtomicU64,
    evictions: AtomicU64,
    /// `fdatasync`s completed since open (`Stats::syncs`).
    syncs: AtomicU64,
    stop: Mutex<bool>,
    stop_cv: Condvar,
    background: Mutex<BackgroundErrors>,
    /// Subscribers' queues (see `events`).
    hub: Hub,
    /// Capacity of the queue `Store::subscribe` makes.
    event_capacity: usize,
    /// Active expiry's delay (None: off; always None when read-only).
    expiry_delay: Option<Duration>,
    /// When (by the store's clock, ms) the background thread means to sweep
    /// next; `i64::MAX` for not planned. A write of an expiry that makes it
    /// due sooner lowers it and wakes the thread.
    next_sweep_ms: std::sync::atomic::AtomicI64,
    /// Delays between expiry and removal of the latest removals.
    expiry_delays: Mutex<expiry::DelayRing>,
    /// Set by `Store::shutdown`: writes are refused.
    closed: std::sync::atomic::AtomicBool,
    /// Keys changed while a backup runs (see `backup`).
    backups: backup::Tracker,
    /// The file header as on disk (its version becomes 2 with the first
    /// batch: see `batch`).
    file_header: Mutex<FileHeader>,
    /// Batches whose members are still pending on disk (see `unsettled`).
    unsettled: Mutex<unsettled::Unsettled>,
    /// Whether `unsettled` lists any member (read on every free header).
    any_unsettled: std::sync::atomic::AtomicBool,
}

pub(crate) fn random_salt() -> u32 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    let x = h.finish();
    (x ^ (x >> 32)) as u32
}

impl Store {
    /// Opens the store at `path` with default [`Options`], creating the file
    /// (and missing parent directories) when it does not exist.
    ///
    /// # Hazard: other processes and the memory map
    /// Values are read through a memory map of the file, and the file lock is
    /// advisory (`flock`): a process that ignores it and truncates the file
    /// (or a tool that rewrites it in place) makes the next read of a mapped
    /// page past the new end a `SIGBUS`, which ends the process; bytes it
    /// overwrites are caught by the checksums. Let only sfs write the file,
    /// and copy it only while no store has it open. See the README,
    /// "Hazards".
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        Options::new().open(path)
    }

    pub(crate) fn open_with(path: &Path, opts: Options) -> Result<Store> {
        let (storage, lock) = open_storage(path, &opts)?;
        let inner = Inner::open(path, storage, &opts)?;
        let inner = Arc::new(inner);
        let sync_every = match opts.sync {
            SyncPolicy::Periodic(every) => Some(every),
            _ => None,
        };
        let auto = opts.auto_compact;
        let sweeps = inner.expiry_delay.is_some();
        let maintenance = if !opts.read_only && (sync_every.is_some() || auto.is_some() || sweeps) {
            let i = Arc::clone(&inner);
            let spawn = std::thread::Builder::new()
                .name("sfs-maintenance".into())
                .spawn(move || i.maintenance_loop(sync_every, auto))
                .map_err(|e| Error::io(path, "starting the maintenance thread", e))?;
            Some(spawn)
        } else {
            None
        };
        Ok(Store {
            inner,
            maintenance: Mutex::new(maintenance),
            _lock: lock,
        })
    }

    /// The path of the store file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Inserts or overwrites `key`.
    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        self.inner
            .put(key.as_ref(), value.as_ref(), &[], Expiry::Never)
    }

    /// Inserts or overwrites `key`, expiring `ttl` from now (by the store's
    /// clock). After that it is invisible, and it is removed (its space
    /// reclaimed, [`Event::Expired`](crate::Event::Expired) reported) by
    /// active expiry within [`Options::active_expiry`] of that time, by
    /// [`purge_expired`](Self::purge_expired), or by the next open.
    pub fn put_with_ttl(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        ttl: Duration,
    ) -> Result<()> {
        self.inner
            .put(key.as_ref(), value.as_ref(), &[], Expiry::After(ttl))
    }

    /// Inserts or overwrites `key`, expiring at `at`. A time already past
    /// removes the key.
    pub fn put_with_expiry(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        at: SystemTime,
    ) -> Result<()> {
        self.inner
            .put(key.as_ref(), value.as_ref(), &[], Expiry::At(at))
    }

    /// Inserts or overwrites `key` with an expiry and metadata.
    pub fn put_with(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        opts: &PutOptions<'_>,
    ) -> Result<()> {
        self.inner
            .put(key.as_ref(), value.as_ref(), opts.metadata, opts.expiry)
    }

    /// The value of `key`, or `None` if it is absent or expired.
    ///
    /// A damaged entry is never returned: with checksum verification on (the
    /// default) it is [`Error::Corrupt`], whose message names the key, says
    /// that the next open skips the entry (the key then reads as absent), and
    /// points to `sfs-dump FILE --check`.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        let key = key.as_ref();
        let read = self.inner.read(key, true, |_, _, v| v.to_vec());
        read.map_err(|e| e.reading_key(key))
    }

    /// Like [`get`](Self::get), but does not count as a use: the entry's
    /// place in the least-recently-used order is unchanged.
    pub fn peek(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        let key = key.as_ref();
        let read = self.inner.read(key, false, |_, _, v| v.to_vec());
        read.map_err(|e| e.reading_key(key))
    }

    /// The value of `key` with its metadata and expiry.
    pub fn get_entry(&self, key: impl AsRef<[u8]>) -> Result<Option<Entry>> {
        let key = key.as_ref();
        let read = self.inner.read(key, true, |h, m, v| Entry {
            value: v.to_vec(),
            metadata: m.to_vec(),
            expires_at: (h.expiry_ms != 0).then(|| millis_to_system_time(h.expiry_ms)),
        });
        read.map_err(|e| e.reading_key(key))
    }

    /// The value of `key` without copying it: a guard that borrows the bytes
    /// from the file's memory map and holds a reader lock on its block until
    /// dropped.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = sfs::Store::open(dir.path().join("r.sfs"))?;
    /// store.put(b"big", vec![7u8; 65536])?;
    /// let v = store.get_ref(b"big")?.unwrap();
    /// store.delete(b"big")?; // the reader's bytes stay valid
    /// assert_eq!(v.len(), 65536);
    /// assert!(v.iter().all(|&b| b == 7));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_ref(&self, key: impl AsRef<[u8]>) -> Result<Option<ValueRef<'_>>> {
        let key = key.as_ref();
        self.inner.get_ref(key).map_err(|e| e.reading_key(key))
    }

    /// Whether `key` is present and not expired.
    pub fn contains(&self, key: impl AsRef<[u8]>) -> bool {
        self.inner.contains(key.as_ref())
    }

    /// Applies a [`Batch`] of puts, deletes and touches: after a crash
    /// (of the process or of the machine) all of it or none of it is there.
    /// Under [`SyncPolicy::Always`] it costs one `fdatasync` whatever its
    /// size, and is durable when `apply` returns; so is a batch that deletes
    /// keys, or one marked [`Batch::durable`], under every policy. Under
    /// `Never` and `Periodic` any other batch is durable like a put: after
    /// the next sync (all or nothing until then too). The first batch of a file also upgrades
    /// it to format version 2 (one more sync, once); under an entry cap and
    /// `SyncPolicy::Always`, the evictions that make room are synced first,
    /// as for a put.
    ///
    /// Atomic for readers key by key: each key switches from its old state
    /// to its new one in a single step, and the keys switch one after
    /// another in the order they first appear in the batch. A reader that
    /// reads several of them while the batch is applied may see some new and
    /// some old; once it sees a key new, every key before it in the batch is
    /// new too. Other writes of the batch's keys (single or conditional
    /// writes, other batches) wait for the whole batch: they happen wholly
    /// before or wholly after it.
    ///
    /// An operation beyond the format's limits (`Error::TooLarge`) fails the
    /// whole batch before anything is written. An empty batch does nothing.
    /// Under an entry cap, room is made for the batch's new keys first, as
    /// for single puts; a batch of more new keys than the cap evicts some of
    /// its own keys once applied.
    ///
    /// An I/O error after the batch's sync (settling a member, freeing a
    /// deleted key's copy) is returned, but the batch is durable and wholly
    /// applied in memory too, so that memory says what an open of the file
    /// finds; its commit record is then kept, and the next open settles it.
    pub fn apply(&self, batch: &Batch) -> Result<()> {
        self.inner.apply(batch)
    }

    /// Removes `key`; returns whether it was present (and not expired).
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        self.inner.delete(key.as_ref())
    }

    /// Writes `new` to `key` (`None` deletes it) only if the key's value is
    /// `expected` now (`None`: absent or expired). On a mismatch it writes
    /// nothing and returns the current value in [`Conflict`].
    ///
    /// Linearizable per key: no other write of the key comes between the
    /// comparison and the write. Durable like [`put`](Self::put) and
    /// [`delete`](Self::delete) under the store's [`SyncPolicy`]; a crash
    /// leaves it wholly done or not at all.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = sfs::Store::open(dir.path().join("leases.sfs"))?;
    /// // Take the lease only if nobody holds it.
    /// assert!(store.compare_and_swap("lease", None, Some(b"node-1".as_slice()))?.is_ok());
    /// // Another node tries: it learns who holds it.
    /// let taken = store.compare_and_swap("lease", None, Some(b"node-2".as_slice()))?;
    /// assert_eq!(taken.unwrap_err().current.as_deref(), Some(b"node-1".as_slice()));
    /// // The holder gives it back.
    /// assert!(store.compare_and_swap("lease", Some(b"node-1".as_slice()), None)?.is_ok());
    /// assert!(!store.contains("lease"));
    /// # Ok::<(), sfs::Error>(())
    /// ```
    pub fn compare_and_swap(
        &self,
        key: impl AsRef<[u8]>,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<std::result::Result<(), Conflict>> {
        self.compare_and_swap_with(key, expected, new, &PutOptions::new())
    }

    /// [`compare_and_swap`](Self::compare_and_swap), writing `new` with the
    /// expiry and metadata of `opts` (unused when `new` is `None`).
    pub fn compare_and_swap_with(
        &self,
        key: impl AsRef<[u8]>,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
        opts: &PutOptions<'_>,
    ) -> Result<std::result::Result<(), Conflict>> {
        let key = key.as_ref();
        let done = match new {
            Some(v) => self.inner.put_cond(
                key,
                v,
                write::Fields::Given(opts.metadata, opts.expiry),
                Some(expected),
            )?,
            None => self.inner.delete_cond(key, Some(expected))?.map(|_| ()),
        };
        Ok(done.map_err(|current| Conflict { current }))
    }

    /// Inserts `key` only if it is absent (or expired); otherwise writes
    /// nothing and returns the current value in [`Conflict`]. The same as
    /// `compare_and_swap(key, None, Some(value))`.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = sfs::Store::open(dir.path().join("jobs.sfs"))?;
    /// assert!(store.put_if_absent("job:7", "worker-a")?.is_ok());
    /// assert!(store.put_if_absent("job:7", "worker-b")?.is_err());
    /// assert_eq!(store.get("job:7")?.as_deref(), Some(b"worker-a".as_slice()));
    /// # Ok::<(), sfs::Error>(())
    /// ```
    pub fn put_if_absent(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<std::result::Result<(), Conflict>> {
        self.compare_and_swap(key, None, Some(value.as_ref()))
    }

    /// [`put_if_absent`](Self::put_if_absent) with a time to live: a lease
    /// that is taken only if free, and lapses unless renewed with
    /// [`touch`](Self::touch).
    pub fn put_if_absent_with_ttl(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        ttl: Duration,
    ) -> Result<std::result::Result<(), Conflict>> {
        let opts = PutOptions::new().ttl(ttl);
        self.compare_and_swap_with(key, None, Some(value.as_ref()), &opts)
    }

    /// Atomically replaces the value of `key` with `f(current)` (`None`:
    /// absent or expired; returning `None` deletes the key) and returns the
    /// new value. No concurrent write is lost: when another write of the key
    /// lands between the read and the write, `f` is called again with the
    /// newer value, so `f` may run more than once and should have no side
    /// effects. It runs with no lock of the store held (it may read the
    /// store). The entry keeps its expiry and metadata; a new key gets none.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store = sfs::Store::open(dir.path().join("counters.sfs"))?;
    /// let bump = |v: Option<&[u8]>| {
    ///     let n = v.map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
    ///     Some((n + 1).to_le_bytes().to_vec())
    /// };
    /// store.update("hits", bump)?;
    /// let now = store.update("hits", bump)?;
    /// assert_eq!(now, Some(2u64.to_le_bytes().to_vec()));
    /// # Ok::<(), sfs::Error>(())
    /// ```
    pub fn update(
        &self,
        key: impl AsRef<[u8]>,
        mut f: impl FnMut(Option<&[u8]>) -> Option<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>> {
        self.try_update(key.as_ref(), |v| Ok(f(v)))
    }

    /// [`update`](Self::update) with an `f` that may fail: its error is
    /// returned, and nothing is written.
    pub(crate) fn try_update(
        &self,
        key: &[u8],
        mut f: impl FnMut(Option<&[u8]>) -> Result<Option<Vec<u8>>>,
    ) -> Result<Option<Vec<u8>>> {
        let mut current = self.peek(key)?;
        loop {
            let new = f(current.as_deref())?;
            let done = match &new {
                Some(v) => {
                    self.inner
                        .put_cond(key, v, write::Fields::Kept, Some(current.as_deref()))?
                }
                None => self
                    .inner
                    .delete_cond(key, Some(current.as_deref()))?
                    .map(|_| ()),
            };
            match done {
                Ok(()) => return Ok(new),
                Err(now) => current = now,
            }
        }
    }

    /// Number of live entries: present and not expired, as
    /// [`contains`](Self::contains), [`get`](Self::get) and
    /// [`keys`](Self::keys) see them. (Expired entries keep their place in
    /// the index and the file until they are removed; [`Stats::entries`]
    /// counts them too.)
    pub fn len(&self) -> usize {
        self.inner.live_len()
    }

    /// Whether the store holds no live entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes expired entries and reclaims their space now; returns how
    /// many. With active expiry on (the default, see
    /// [`Options::active_expiry`]) the background thread does the same
    /// shortly after each expiry; this is for programs that want it done at
    /// once. Each removed entry is reported as [`Event::Expired`](crate::Event::Expired).
    pub fn purge_expired(&self) -> Result<usize> {
        self.inner.purge()
    }

    /// Subscribes to what happens to keys: expiries, evictions, deletes and
    /// clears (see [`Event`](crate::Event) for what is reported, and
    /// [`Subscriber`] for the queue). The queue holds
    /// [`Options::event_capacity`] items; the store never waits for it.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = sfs::Options::new().max_entries(1).open(dir.path().join("s.sfs"))?;
    /// let events = store.subscribe();
    /// store.put(b"a", b"1")?;
    /// store.put(b"b", b"2")?; // over the cap: `a` is evicted
    /// store.delete(b"b")?;
    /// assert_eq!(events.try_recv(), Some(sfs::Event::Evicted { key: b"a".to_vec() }));
    /// assert_eq!(events.try_recv(), Some(sfs::Event::Deleted { key: b"b".to_vec() }));
    /// assert_eq!(events.try_recv(), None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn subscribe(&self) -> Subscriber {
        self.inner.hub.subscribe(self.inner.event_capacity)
    }

    /// [`subscribe`](Self::subscribe) with a queue of `capacity` items
    /// (at least 1).
    ///
    /// ```
    /// use sfs::Event;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = sfs::Store::open(dir.path().join("q.sfs"))?;
    /// let slow = store.subscribe_with_capacity(2);
    /// for k in [b"a", b"b", b"c", b"d"] {
    ///     store.put(k, b"v")?;
    ///     store.delete(k)?; // never waits for the full queue
    /// }
    /// assert_eq!(slow.dropped(), 2);
    /// assert_eq!(slow.try_recv(), Some(Event::Deleted { key: b"a".to_vec() }));
    /// assert_eq!(slow.try_recv(), Some(Event::Deleted { key: b"b".to_vec() }));
    /// assert_eq!(slow.try_recv(), Some(Event::Lagged { missed: 2 }));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn subscribe_with_capacity(&self, capacity: usize) -> Subscriber {
        self.inner.hub.subscribe(capacity)
    }

    /// Runs one pass of active expiry now, at the clock's present time, as
    /// the background thread does (test seam: drives the sweep
    /// deterministically). Returns how many entries it removed.
    #[cfg(any(test, feature = "testing"))]
    #[doc(hidden)]
    pub fn sweep_expired_now(&self) -> Result<usize> {
        self.inner.sweep()
    }

    /// Removes everything: the file goes back to its header. Waits for reads
    /// and writes in progress; blocks borrowed by live [`ValueRef`]s stay in
    /// place until they are dropped.
    pub fn clear(&self) -> Result<()> {
        self.inner.clear()
    }

    /// Makes everything written so far durable.
    pub fn sync(&self) -> Result<()> {
        self.inner.sync_all()
    }

    /// A snapshot of the live (present, unexpired) keys, in no particular order.
    pub fn keys(&self) -> Vec<Vec<u8>> {
        self.inner.keys()
    }

    /// Iterates over a snapshot of the keys, reading each value when reached.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            store: self,
            keys: self.keys().into_iter(),
        }
    }

    /// Numbers about the store now.
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// Renews the expiry of `key` to `ttl` from now, as a lease is renewed on
    /// each heartbeat. Returns false if the key is absent or already expired.
    /// A `ttl` of zero expires the entry now.
    ///
    /// **Cost**: a renewal is a write, and is as durable as the store's
    /// [`SyncPolicy`] makes writes: under the default `SyncPolicy::Always`
    /// each `touch` waits for a full `fdatasync` (169 µs per call measured
    /// on an SSD, against 225 ns under `SyncPolicy::Periodic(1 s)`). A
    /// store renewed on every request or heartbeat is usually better served
    /// by `Periodic`: a renewal lost in a crash only shortens a lease back to
    /// its previous expiry, it never loses data.
    ///
    /// The value is not rewritten: the expiry is one self-checked 8-byte word
    /// in the entry's header, replaced with a single atomic store, so a crash
    /// leaves the old expiry or the new one (FORMAT.md). Only while a reader
    /// holds the entry's block (a [`ValueRef`], or a compaction moving it) is
    /// the entry rewritten whole instead.
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use sfs::{ManualClock, Options};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let clock = Arc::new(ManualClock::new(0));
    /// let leases = Options::new().clock(clock.clone()).open(dir.path().join("leases.sfs"))?;
    /// leases.put_with_ttl(b"node-7", b"10.0.0.7:9000", Duration::from_secs(10))?;
    /// clock.advance(Duration::from_secs(8));
    /// assert!(leases.touch(b"node-7", Duration::from_secs(10))?); // heartbeat
    /// clock.advance(Duration::from_secs(8));
    /// assert!(leases.contains(b"node-7"));                         // 16 s after the put
    /// clock.advance(Duration::from_secs(3));
    /// assert!(!leases.contains(b"node-7"));                        // missed its heartbeat
    /// assert!(!leases.touch(b"node-7", Duration::from_secs(10))?); // too late to renew
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn touch(&self, key: impl AsRef<[u8]>, ttl: Duration) -> Result<bool> {
        self.inner.touch(key.as_ref(), Expiry::After(ttl))
    }

    /// Renews the expiry of `key` to `at`. Returns false if the key is absent
    /// or already expired. A time already past expires the entry now.
    ///
    /// It costs what [`touch`](Self::touch) costs: a full `fdatasync` under
    /// the default `SyncPolicy::Always`.
    pub fn touch_until(&self, key: impl AsRef<[u8]>, at: SystemTime) -> Result<bool> {
        self.inner.touch(key.as_ref(), Expiry::At(at))
    }

    /// Moves live entries from the end of the file into free space nearer
    /// its start, then cuts the free end off the file, so the file shrinks
    /// towards the size of its live data. Each entry goes to the lowest free
    /// block that holds it (not the best fit: an exact-size hole right below
    /// an entry would take it without shortening the file).
    ///
    /// Reads and writes carry on meanwhile: a reader of a moving entry
    /// finishes on the old copy, and no operation waits for more than one
    /// batch of moves. A crash at any point loses and duplicates nothing:
    /// each old copy stays valid until its new copy is durable.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = sfs::Options::new().sync(sfs::SyncPolicy::Never).open(dir.path().join("c.sfs"))?;
    /// for i in 0..100u32 {
    ///     store.put(i.to_le_bytes(), [0u8; 1000])?;
    /// }
    /// for i in 0..99u32 {
    ///     store.delete(i.to_le_bytes())?; // the last entry pins the file's length
    /// }
    /// let c = store.compact()?;
    /// assert_eq!(c.moved_entries, 1);
    /// assert!(c.file_len_after < c.file_len_before / 50);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn compact(&self) -> Result<CompactStats> {
        self.inner.compact()
    }

    /// Writes a compacted copy of the store to `path` while it serves reads
    /// and writes, with [`BackupOptions::default`]: see
    /// [`backup_with`](Self::backup_with).
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = sfs::Store::open(dir.path().join("data.sfs"))?;
    /// store.put(b"user:1", b"alice")?;
    /// store.backup(dir.path().join("backup.sfs"))?;
    /// // Restoring is opening the copy.
    /// let copy = sfs::Store::open(dir.path().join("backup.sfs"))?;
    /// assert_eq!(copy.get(b"user:1")?.as_deref(), Some(&b"alice"[..]));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn backup(&self, path: impl AsRef<Path>) -> Result<BackupReport> {
        self.backup_with(path, &BackupOptions::new())
    }

    /// Writes a copy of the store to `path` while it serves reads and
    /// writes. The copy is a store file holding exactly the store's contents
    /// at one moment, the final pause (writes that returned before it are
    /// in, writes begun after it are not; entries expired by then are left
    /// out), with metadata and expiries, and with no free space inside. It
    /// opens as any store, and with an entry cap derives the
    /// least-recently-used order a reopen of this store would.
    ///
    /// The copy is made in rounds while writers carry on; writers wait only
    /// for the final round, for at most the pause budget (see
    /// [`BackupOptions`]). It is built under a temporary name in the
    /// destination's directory (`.NAME.sfs-backup.tmp`), synced, renamed to
    /// `path` (replacing a file there) and the directory synced: a
    /// cancelled or failed backup, or a crash, leaves no file under `path`
    /// (a temporary file left by a crash is reused by the next backup to the
    /// same destination). The store itself is never written. One backup
    /// runs at a time; a second waits.
    ///
    /// Errors: [`Error::BackupCancelled`], [`Error::BackupBehind`] (the store
    /// changed faster than the copy could follow, under
    /// [`IfBehind::GiveUp`]), [`Error::InvalidOptions`] (`path` is the
    /// store's own file), [`Error::Io`] naming the destination.
    pub fn backup_with(
        &self,
        path: impl AsRef<Path>,
        opts: &BackupOptions,
    ) -> Result<BackupReport> {
        self.inner
            .backup(backup::Destination::Path(path.as_ref()), opts)
    }

    /// Like [`backup_with`](Self::backup_with), to any writer (a socket, a
    /// compressor, an object store upload). The copy is built in a
    /// temporary file next to the store (`.NAME.sfs-backup-stream.tmp`,
    /// removed afterwards), then written to `w` in one pass: a failure
    /// leaves `w` with part of a copy, which the caller discards.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = sfs::Store::open(dir.path().join("data.sfs"))?;
    /// store.put(b"k", b"v")?;
    /// let mut bytes = Vec::new();
    /// let report = store.backup_to(&mut bytes, &sfs::BackupOptions::new())?;
    /// assert_eq!(bytes.len() as u64, report.file_len);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn backup_to(
        &self,
        w: &mut dyn std::io::Write,
        opts: &BackupOptions,
    ) -> Result<BackupReport> {
        self.inner.backup(backup::Destination::Writer(w), opts)
    }

    /// Syncs, stops the background thread, releases the file lock, and
    /// reports any error the final sync met. Dropping a store does the same
    /// but cannot report errors.
    pub fn close(self) -> Result<()> {
        self.shutdown()
    }

    /// Closes the store for writing, for a store shared as an `Arc<Store>`
    /// (where [`close`](Self::close), which takes the store, cannot be
    /// reached): stops the background thread, syncs everything written, and
    /// reports the first error among a failure of the background thread not
    /// yet reported and the final sync's. Afterwards the store serves reads;
    /// writes are [`Error::Closed`]. Calling it again syncs again. The file
    /// lock is released when the last handle is dropped.
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = Arc::new(sfs::Store::open(dir.path().join("s.sfs"))?);
    /// let worker = Arc::clone(&store);
    /// std::thread::spawn(move || worker.put(b"job", b"done")).join().unwrap()?;
    /// store.shutdown()?; // durable, background thread stopped
    /// assert_eq!(store.get(b"job")?.as_deref(), Some(&b"done"[..]));
    /// assert!(matches!(store.put(b"late", b"x"), Err(sfs::Error::Closed { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shutdown(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::Release);
        *self.inner.stop.lock() = true;
        self.inner.stop_cv.notify_all();
        let thread = self.maintenance.lock().take();
        if let Some(h) = thread
            && h.join().is_err()
        {
            // Its tasks catch their panics; this would be the loop's own.
            self.inner
                .record_background("running the maintenance thread", "panicked".into());
        }
        let background = self.inner.take_background_error();
        let synced = self.inner.sync_everything();
        self.inner.hub.close();
        background.and(synced)
    }

    /// Checks that memory and file agree (test seam): the blocks tile the
    /// file, the free list holds exactly the free blocks, no two free blocks
    /// are adjacent, and every index entry points at an entry with its key.
    #[cfg(any(test, feature = "testing"))]
    #[doc(hidden)]
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        self.inner.check_invariants()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // After `close` or `shutdown` nothing is left to do. Dropping cannot
        // report an error (`close` and `shutdown` are the calls that do), so
        // one met here goes to standard error rather than nowhere.
        if self.inner.closed.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = self.shutdown() {
            eprintln!("sfs: dropping the store: {e}");
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .field("entries", &self.len())
            .finish()
    }
}

/// Opens (or creates) the file and takes its lock.
fn open_storage(path: &Path, opts: &Options) -> Result<(Arc<dyn Storage>, Option<FileLock>)> {
    #[cfg(feature = "testing")]
    if let Some(s) = &opts.storage {
        return Ok((Arc::clone(s), None));
    }
    let create = opts.create && !opts.read_only;
    if create && let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io(path, "creating the parent directories", e))?;
    }
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(!opts.read_only).truncate(false);
    // Created here, or there already? A new file's directory entry is synced
    // (below), so that the store and what is written to it cannot vanish
    // together in a power loss.
    let (file, created) = if create {
        match o.clone().create_new(true).open(path) {
            Ok(f) => (Ok(f), true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => (o.open(path), false),
            Err(e) => (Err(e), false),
        }
    } else {
        (o.open(path), false)
    };
    let file = file.map_err(|e| Error::io(path, "opening the file", e))?;
    if created {
        sync_parent_dir(path).map_err(|e| Error::io(path, "syncing the parent directory", e))?;
    }
    let meta = file
        .metadata()
        .map_err(|e| Error::io(path, "reading the file's metadata", e))?;
    if !meta.is_file() {
        let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file");
        return Err(Error::io(path, "opening the file", e));
    }
    let lock = FileLock::acquire(&file, &meta, path, opts.read_only)?;
    // When writes are synced soon after, they go through pwrite (see
    // FileStorage).
    let pwrite = opts.syncs_often();
    let storage = FileStorage::with_pwrite(file, !opts.read_only, pwrite)
        .map_err(|e| Error::io(path, "mapping the file", e))?;
    Ok((Arc::new(storage), Some(lock)))
}

/// `fsync` of the directory that holds `path`: makes a new entry in it durable.
fn sync_parent_dir(path: &Path) -> std::io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(parent)?.sync_all()?;
    #[cfg(feature = "testing")]
    crate::testing::count_dir_sync();
    Ok(())
}

/// Whether the storage holds a file whose creation a crash cut short (see
/// [`crate::format::is_unfinished_file`]).
fn unfinished_file(storage: &dyn Storage) -> bool {
    if storage.len() != FILE_HEADER_LEN {
        return false;
    }
    let mut b = [0u8; FILE_HEADER_LEN as usize];
    storage.read_at(0, &mut b).is_ok() && crate::format::is_unfinished_file(&b)
}

/// The store file as the block owner sees it (see [`BlockIo`]): free headers
/// under the file's salt, each change counted as a write generation.
struct FileIo<'a> {
    inner: &'a Inner,
    /// Whether a free of a pending batch member settles its batch first
    /// (or fails).
    settle: bool,
}

impl BlockIo for FileIo<'_> {
    fn write_free_header(&self, offset: u64, len: u64, before_sync: bool) -> std::io::Result<()> {
        match self.settle {
            true => self.inner.settle_member(offset)?,
            false if self.inner.is_pending_member(offset) => {
                return Err(std::io::Error::other(
                    "a member of a batch not yet settled: freed after its batch is",
                ));
            }
            false => {}
        }
        let header = BlockHeader::free(len).encode(self.inner.salt);
        if before_sync {
            self.inner
                .storage
                .write_at_before_sync(offset, &[&header])?;
        } else {
            self.inner.storage.write_at(offset, &[&header])?;
        }
        self.inner.note_write();
        Ok(())
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.storage.set_len(len)?;
        self.inner.note_write();
        Ok(())
    }

    fn read_key(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.inner
            .storage
            .read_at(offset + crate::format::BLOCK_HEADER_LEN, buf)
    }

    fn generation(&self) -> u64 {
        self.inner.writes.load(Ordering::Acquire)
    }
}

impl Inner {
    /// The file, for the block owner.
    fn bio(&self) -> FileIo<'_> {
        FileIo {
            inner: self,
            settle: true,
        }
    }

    /// The block I/O of the frees a sync makes: a pending member of a batch
    /// is not freed there (its free header fails, and it stays held until a
    /// free after its batch is settled), since settling syncs, and that
    /// sync's frees would settle the next batch, and so on, one nested
    /// sync per batch.
    fn bio_after_sync(&self) -> FileIo<'_> {
        FileIo {
            inner: self,
            settle: false,
        }
    }

    fn open(path: &Path, storage: Arc<dyn Storage>, opts: &Options) -> Result<Inner> {
        let now = opts.clock.now_millis();
        let hasher = opts.key_hasher();
        // An empty file, or one whose creation a crash cut short, holds
        // nothing: a writer (re)writes its header.
        let fresh = storage.is_empty() || unfinished_file(&*storage);
        let header = if fresh {
            let h = FileHeader {
                version: FIRST_FORMAT_VERSION,
                salt: opts.new_salt(),
                created_ms: now.max(0) as u64,
            };
            if !opts.read_only {
                let init = (|| {
                    storage.set_len(FILE_HEADER_LEN)?;
                    storage.write_at(0, &[&h.encode()])?;
                    storage.sync()
                })();
                init.map_err(|e| Error::io(path, "writing the file header", e))?;
            }
            h
        } else {
            let read = read_file_header(&mut StorageSource(&*storage));
            match read.map_err(|e| Error::io(path, "reading the file header", e))? {
                Ok(h) => h,
                Err(HeaderError::NotAStore) => {
                    return Err(Error::NotAStore {
                        path: path.to_path_buf(),
                    });
                }
                Err(HeaderError::UnsupportedVersion(v)) => {
                    return Err(Error::UnsupportedVersion {
                        path: path.to_path_buf(),
                        found: v,
                        supported: FORMAT_VERSION,
                    });
                }
                Err(HeaderError::Corrupt(reason)) => {
                    return Err(Error::Corrupt {
                        path: path.to_path_buf(),
                        offset: 0,
                        reason,
                    });
                }
            }
        };
        let rec = if fresh && opts.read_only {
            // A read-only open of an empty file: an empty store.
            crate::recovery::Recovered::empty(opts.max_entries.is_some())
        } else {
            recover(
                &*storage,
                header,
                &hasher,
                now,
                opts.max_entries,
                !opts.read_only,
            )
            .map_err(|e| Error::io(path, "reading the file", e))?
        };
        let lru = rec.lru.unwrap_or_default();
        let mut lru = lru.into_iter();
        let shards: Box<[ShardCell]> = rec
            .shards
            .into_iter()
            .enumerate()
            .map(|(index, s)| ShardCell {
                map: RwLock::new(s),
                lru: Mutex::new(lru.next().unwrap_or_default()),
                index,
            })
            .collect();
        let lru_oldest: Box<[AtomicU64]> = shards
            .iter()
            .map(|c| AtomicU64::new(c.lru.lock().oldest().map_or(u64::MAX, |(_, st)| st)))
            .collect();
        Ok(Inner {
            lru_oldest,
            path: path.to_path_buf(),
            storage,
            salt: header.salt,
            read_only: opts.read_only,
            policy: opts.sync,
            max_entries: opts.max_entries,
            verify: opts.verify_checksums,
            clock: Arc::clone(&opts.clock),
            hasher,
            shards,
            entries: AtomicUsize::new(rec.entries),
            claimed: AtomicUsize::new(rec.entries),
            live_bytes: AtomicU64::new(rec.live_bytes),
            next_seq: AtomicU64::new(rec.next_seq),
            next_stamp: AtomicU64::new(rec.next_stamp),
            blocks: Blocks::new(
                rec.free,
                opts.fragmentation_factor,
                crate::index::MAX_FILE_LEN,
                // Where the file grows by writing zeros (see `FileStorage`).
                if opts.syncs_often() {
                    blocks::Growth::ZEROED
                } else {
                    blocks::Growth::FALLOCATED
                },
            ),
            gate: RwLock::new(()),
            writes: AtomicU64::new(0),
            sync_state: Mutex::new(SyncState::default()),
            sync_asked: Condvar::new(),
            commit_wait: opts.commit_wait,
            corrupt_blocks: rec.corrupt_blocks,
            corrupt_bytes: rec.corrupt_bytes,
            inserting: Mutex::new(write::Inserting::default()),
            room_changed: Condvar::new(),
            key_locks: (0..KEY_LOCKS).map(|_| Mutex::new(())).collect(),
            compaction: Mutex::new(()),
            compact_batch: opts.compact_batch,
            expired_purged: AtomicU64::new(rec.expired_freed),
            evictions: AtomicU64::new(rec.evicted),
            syncs: AtomicU64::new(0),
            stop: Mutex::new(false),
            stop_cv: Condvar::new(),
            background: Mutex::new(BackgroundErrors::default()),
            hub: Hub::new(),
            event_capacity: opts.event_capacity,
            expiry_delay: opts.active_expiry.filter(|_| !opts.read_only),
            next_sweep_ms: std::sync::atomic::AtomicI64::new(i64::MAX),
            expiry_delays: Mutex::new(expiry::DelayRing::default()),
            closed: std::sync::atomic::AtomicBool::new(false),
            backups: backup::Tracker::new(),
            file_header: Mutex::new(header),
            unsettled: Mutex::new(unsettled::Unsettled::default()),
            any_unsettled: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn io(&self, action: &'static str) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |e| Error::io(&self.path, action, e)
    }

    fn corrupt(&self, offset: u64, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            offset,
            reason: reason.into(),
        }
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            Err(Error::ReadOnly {
                path: self.path.clone(),
            })
        } else if self.closed.load(Ordering::Acquire) {
            Err(Error::Closed {
                path: self.path.clone(),
            })
        } else {
            Ok(())
        }
    }

    fn note_write(&self) -> u64 {
        self.writes.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The write lock of the key with this hash (see `Inner::key_locks`).
    /// Taken after the gate, before any shard lock.
    fn key_lock(&self, hash: u64) -> parking_lot::MutexGuard<'_, ()> {
        // Other bits than the shard's (`shard_of` uses bits 40..46).
        self.key_locks[(hash as usize) & (KEY_LOCKS - 1)].lock()
    }

    fn locate(&self, key: &[u8]) -> (u64, &ShardCell) {
        let hash = self.hasher.hash_one(key);
        (hash, &self.shards[shard_of(hash)])
    }

    fn touch_lru(&self, cell: &ShardCell, id: u32) {
        if self.max_entries.is_some() {
            let mut lru = cell.lru.lock();
            // Stamped under the list's lock, so each list is in stamp order.
            lru.touch(id, self.next_stamp.fetch_add(1, Ordering::Relaxed));
            self.publish_oldest(cell, &lru);
        }
    }

    /// Records the shard's oldest stamp after a change to its list (called
    /// with the list's lock held, so the value is never stale for long).
    fn publish_oldest(&self, cell: &ShardCell, lru: &LruList) {
        let oldest = lru.oldest().map_or(u64::MAX, |(_, st)| st);
        self.lru_oldest[cell.index].store(oldest, Ordering::Release);
    }

    /// Reads and checks the header of the block at `offset`.
    fn header_at(&self, offset: u64) -> Result<BlockHeader> {
        let h = self.block_header_at(offset)?;
        if h.kind != Kind::Entry {
            return Err(self.corrupt(offset, "the index points at a free block"));
        }
        Ok(h)
    }

    /// The header of the block at `offset`, of any kind (see `header_at`).
    fn block_header_at(&self, offset: u64) -> Result<BlockHeader> {
        let mut b = [0u8; crate::format::BLOCK_HEADER_LEN as usize];
        #[expect(unsafe_code, reason = "reads a block header in place")]
        // SAFETY: callers read headers of blocks that their locks keep in
        // place (an indexed entry under its shard lock, a pinned block, a
        // block they allocated, or a listed unsettled batch's, which nothing
        // frees while it is listed); the slice is dropped before they
        // release them.
        let bytes = match unsafe { self.storage.view(offset, b.len() as u64) } {
            Some(v) => v,
            None => {
                self.storage
                    .read_at(offset, &mut b)
                    .map_err(self.io("reading an entry"))?;
                &b[..]
            }
        };
        BlockHeader::decode(bytes, self.salt, offset, self.storage.len())
            .map_err(|e| self.corrupt(offset, e.to_string()))
    }

    /// Checks an entry's header against the key it is filed under, and its
    /// payload checksum when verification is on.
    fn check_entry(&self, offset: u64, h: &BlockHeader, key: &[u8], payload: &[u8]) -> Result<()> {
        if usize::from(h.key_len) != key.len() || &payload[..key.len()] != key {
            return Err(self.corrupt(offset, "the entry holds another key"));
        }
        if self.verify && crc(self.salt, &[payload]) != h.payload_crc {
            return Err(self.corrupt(offset, "entry checksum mismatch"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Store>();
    }

    #[test]
    fn growth_reserve_is_zero_for_small_files_and_bounded() {
        use blocks::{RESERVE_CAP, ZEROED_RESERVE_CAP, growth_reserve};
        assert_eq!(growth_reserve(1000, RESERVE_CAP), 0);
        assert_eq!(growth_reserve(16 << 20, RESERVE_CAP), 1 << 20);
        assert_eq!(growth_reserve(1 << 40, RESERVE_CAP), 8 << 20);
        assert_eq!(growth_reserve(1000, ZEROED_RESERVE_CAP), 0);
        assert_eq!(growth_reserve(8 << 20, ZEROED_RESERVE_CAP), 512 << 10);
        assert_eq!(growth_reserve(1 << 40, ZEROED_RESERVE_CAP), 1 << 20);
    }

    #[test]
    fn shard_count_is_a_power_of_two() {
        assert!(crate::index::SHARDS.is_power_of_two());
    }
}
