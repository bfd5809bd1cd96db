//! `Store`: opens a file, serves reads, writes and deletes, and holds the
//! locks that make it safe to share between threads.
//!
//! # Locks, in the order they are taken
//! 1. `gate` (read by every write, `sync` included; write by `clear`): no
//!    write is in flight while `clear` resets the file. Never held by readers
//!    or by user code.
//! 2. a shard's `map` (read by readers, write by writers of that shard's keys).
//! 3. that shard's `lru` list.
//! 4. `readers` (the reader locks on blocks borrowed by [`ValueRef`]s).
//! 5. `space` (the free list): every free-block header is written under it.
//! 6. `sync_state` (group commit).
//!
//! No lock is held across a write of an entry's bytes, and none while user
//! code runs.
//!
//! # Why a block is never reused under a reader
//! A `get` copies the value while holding its shard's read lock; a block is
//! freed only after its key was removed from (or repointed in) the index under
//! the write lock, so no `get` can be reading it. A [`ValueRef`] pins its block
//! in `readers` before the shard lock is released; a pinned block that is
//! freed stays out of the free list until the last reader drops, so it is
//! neither handed out nor merged nor cut off the end of the file. The last
//! reader returns the space while still holding its reader lock, so that
//! `clear` never finds such a block neither pinned nor returned.
//!
//! # Why nothing acknowledged is lost
//! A new copy of a key is written completely before it is published in the
//! index; the old copy is freed only once the new one is durable (at once
//! under `SyncPolicy::Always`, which syncs before publishing; after the next
//! sync otherwise). Freeing an entry overwrites its header first, so a freed
//! entry can never be found again by a scan.
//!
//! Orderings that keep it so through a crash (`tests/crash_every_write.rs`
//! tries every one):
//! - A key leaving the index frees its older copies before its newest one,
//!   and not at all if that fails; and if an older copy's free header is not
//!   yet synced, a sync comes first (`Space::unsynced_frees`): were the newest
//!   copy's free header to survive a crash without the older one's, the older
//!   value would come back.
//! - An insert over the entry cap evicts before it writes (and under
//!   `Always` syncs the eviction first): the open evicts by write order, not
//!   by use, so it must never find one entry too many.
//! - A free header that cannot be written leaves its block waiting in
//!   `pending`, still valid, never in the free list; a split writes both
//!   halves' headers, so no header on disk ever claims more than its block.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use parking_lot::{Condvar, Mutex, RwLock};

use crate::alloc::FreeList;
use crate::clock::{Clock, millis_to_system_time, system_time_to_millis};
use crate::error::{Error, Result};
use crate::format::{
    BlockHeader, EXPIRY_WORD_OFFSET, FILE_HEADER_LEN, FORMAT_VERSION, FileHeader, HeaderError,
    Kind, MAX_EXPIRY_MS, MAX_KEY_LEN, MAX_META_LEN, MAX_VALUE_LEN, crc, entry_block_len,
    expiry_word, is_expired,
};
use crate::index::{KeyHasher, LruList, Shard, shard_of};
use crate::inspect::read_file_header;
use crate::io::{FileStorage, Storage};
use crate::options::{AutoCompact, Options, SyncPolicy};
use crate::recovery::{StorageSource, recover};

mod compact;
pub use compact::CompactStats;

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
    /// The background thread (periodic sync, auto-compaction), if any.
    maintenance: Option<JoinHandle<()>>,
    shut: bool,
}

/// Numbers that describe a store at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// Entries in the index (expired ones count until purged).
    pub entries: usize,
    /// Length of the file in bytes.
    pub file_len: u64,
    /// Bytes of the file in live entries' blocks.
    pub live_bytes: u64,
    /// Number of free blocks.
    pub free_blocks: usize,
    /// Bytes in free blocks.
    pub free_bytes: u64,
    /// Length of the largest free block.
    pub largest_free_block: u64,
    /// Bytes held by old copies of overwritten keys, freed at the next sync.
    pub pending_free_bytes: u64,
    /// Blocks held by readers ([`ValueRef`]s) after their entry was removed.
    pub reader_locked_blocks: usize,
    /// Damaged blocks found when the store was opened (their space was
    /// reclaimed on a read-write open).
    pub corrupt_blocks: u64,
    /// Bytes in those damaged blocks.
    pub corrupt_bytes: u64,
    /// Expired entries removed since open (by `purge_expired` and by open).
    pub expired_purged: u64,
    /// Entries evicted by the entry cap since open (by writes and by open).
    pub evictions: u64,
    /// Approximate bytes of memory used by the index.
    pub index_bytes: usize,
    /// Bytes [`Store::compact`] could give back at best: all free space,
    /// including old copies waiting for a sync.
    pub compactable_bytes: u64,
}

impl Stats {
    /// Share of free space outside the largest free block: 0 when all free
    /// space is one block (or there is none), near 1 when it is in crumbs.
    pub fn fragmentation(&self) -> f64 {
        if self.free_bytes == 0 {
            0.0
        } else {
            1.0 - self.largest_free_block as f64 / self.free_bytes as f64
        }
    }
}

/// How to write one entry: expiry and metadata.
///
/// ```
/// use std::time::Duration;
/// use sfs::PutOptions;
///
/// let dir = tempfile::tempdir()?;
/// let store = sfs::Store::open(dir.path().join("m.sfs"))?;
/// store.put_with(b"k", b"v", &PutOptions::new().ttl(Duration::from_secs(30)).metadata(b"content-type: text/plain"))?;
/// let e = store.get_entry(b"k")?.unwrap();
/// assert_eq!(e.metadata, b"content-type: text/plain");
/// assert!(e.expires_at.is_some());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct PutOptions<'a> {
    expiry: Expiry,
    metadata: &'a [u8],
}

#[derive(Clone, Copy, Debug, Default)]
enum Expiry {
    #[default]
    Never,
    After(Duration),
    At(SystemTime),
}

impl<'a> PutOptions<'a> {
    /// No expiry, no metadata.
    pub fn new() -> PutOptions<'a> {
        PutOptions::default()
    }

    /// The entry expires `ttl` from now (by the store's clock).
    pub fn ttl(mut self, ttl: Duration) -> PutOptions<'a> {
        self.expiry = Expiry::After(ttl);
        self
    }

    /// The entry expires at `at`.
    pub fn expires_at(mut self, at: SystemTime) -> PutOptions<'a> {
        self.expiry = Expiry::At(at);
        self
    }

    /// Bytes stored beside the value (up to 65,535).
    pub fn metadata(mut self, metadata: &'a [u8]) -> PutOptions<'a> {
        self.metadata = metadata;
        self
    }
}

/// An entry read with its metadata and expiry, from [`Store::get_entry`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Entry {
    /// The value.
    pub value: Vec<u8>,
    /// The metadata (empty when none was written).
    pub metadata: Vec<u8>,
    /// When the entry expires, if it does.
    pub expires_at: Option<SystemTime>,
}

/// A value borrowed from the store without copying, from [`Store::get_ref`].
///
/// It dereferences to the value's bytes. While it lives, its block is
/// reader-locked: a concurrent overwrite, delete, purge or `clear` removes the
/// key, but the bytes stay in place, untouched, until the `ValueRef` is dropped.
pub struct ValueRef<'a> {
    inner: &'a Inner,
    bytes: ValueBytes<'a>,
}

enum ValueBytes<'a> {
    /// Borrowed from the memory map; the block at this offset is pinned.
    Mapped(&'a [u8], u64),
    /// Copied (for storages without a map).
    Owned(Vec<u8>),
}

impl std::ops::Deref for ValueRef<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.bytes {
            ValueBytes::Mapped(b, _) => b,
            ValueBytes::Owned(v) => v,
        }
    }
}

impl AsRef<[u8]> for ValueRef<'_> {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::fmt::Debug for ValueRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ValueRef").field(&&**self).finish()
    }
}

impl Drop for ValueRef<'_> {
    fn drop(&mut self) {
        if let ValueBytes::Mapped(_, offset) = self.bytes {
            let inner = self.inner;
            inner
                .readers
                .unpin(offset, |len| inner.return_unpinned_space(offset, len));
        }
    }
}

/// An iterator over a snapshot of the keys, reading each value when reached;
/// from [`Store::iter`]. Keys removed after the snapshot are skipped. No lock is
/// held between items, so the loop body may use the store.
pub struct Iter<'a> {
    store: &'a Store,
    keys: std::vec::IntoIter<Vec<u8>>,
}

impl Iterator for Iter<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        for key in self.keys.by_ref() {
            match self.store.get(&key) {
                Ok(Some(v)) => return Some(Ok((key, v))),
                Ok(None) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.keys.len()))
    }
}

struct ShardCell {
    map: RwLock<Shard>,
    lru: Mutex<LruList>,
    /// Its place in `Inner::shards` (and `Inner::lru_oldest`).
    index: usize,
}

/// Free space and space waiting to become free.
struct Space {
    free: FreeList,
    /// Old copies of overwritten keys, freed once a sync covers the new copy
    /// (or at once when the key leaves the index). Blocks whose free header
    /// could not be written (an I/O error) wait here too, with generation 0:
    /// still valid on disk, they are retried after every sync and freed
    /// before their key's newest copy.
    pending: Vec<Superseded>,
    pending_bytes: u64,
    /// (key hash, write generation) of old copies freed once their new copy
    /// was synced (at once under `SyncPolicy::Always`, after a sync
    /// otherwise), until a sync covers their free header. Such a key's newest
    /// copy is not freed before that sync, or a power loss could keep the
    /// newest copy's free header and not the old copy's, and the old value
    /// would come back.
    unsynced_frees: Vec<(u64, u64)>,
}

/// The old copy of an overwritten key, kept valid on disk until the new copy
/// is durable so that a power loss cannot lose both.
struct Superseded {
    /// Write generation of the new copy: a sync covering it frees this one.
    generation: u64,
    offset: u64,
    len: u64,
    key_hash: u64,
}

/// A block borrowed by `ValueRef`s.
#[derive(Default)]
struct Pin {
    readers: u32,
    /// Set when the block was freed while borrowed: its length, to free when
    /// the last reader leaves.
    freed: Option<u64>,
}

/// Reader locks on blocks borrowed by `ValueRef`s, by block offset.
struct ReaderLocks {
    shards: Box<[Mutex<HashMap<u64, Pin>>]>,
}

impl ReaderLocks {
    fn new() -> ReaderLocks {
        ReaderLocks {
            shards: (0..16).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, offset: u64) -> &Mutex<HashMap<u64, Pin>> {
        &self.shards[((offset >> 3) as usize) % self.shards.len()]
    }

    fn pin(&self, offset: u64) {
        self.shard(offset).lock().entry(offset).or_default().readers += 1;
    }

    /// Drops one reader. If it was the last reader of a freed block, calls
    /// `free` with the block's length before letting go of the lock, so that
    /// nobody (`clear`, `check_invariants`) can find the block neither pinned
    /// nor returned.
    fn unpin(&self, offset: u64, free: impl FnOnce(u64)) {
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

    fn is_pinned(&self, offset: u64) -> bool {
        self.shard(offset).lock().contains_key(&offset)
    }

    /// If the block is pinned, records that it is to be freed later.
    fn defer_if_pinned(&self, offset: u64, len: u64) -> bool {
        match self.shard(offset).lock().get_mut(&offset) {
            Some(e) => {
                e.freed = Some(len);
                true
            }
            None => false,
        }
    }

    fn count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().values().filter(|e| e.freed.is_some()).count())
            .sum()
    }

    fn is_empty(&self) -> bool {
        self.shards.iter().all(|s| s.lock().is_empty())
    }

    /// Every shard, locked: nothing is pinned or unpinned meanwhile.
    #[cfg(any(test, feature = "testing"))]
    fn lock_all(&self) -> Vec<parking_lot::MutexGuard<'_, HashMap<u64, Pin>>> {
        self.shards.iter().map(|s| s.lock()).collect()
    }
}

#[derive(Default)]
struct SyncState {
    /// Every write with a generation up to this one is durable.
    synced: u64,
    running: bool,
}

pub(crate) struct Inner {
    path: PathBuf,
    storage: Arc<dyn Storage>,
    salt: u32,
    read_only: bool,
    policy: SyncPolicy,
    frag: f64,
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
    live_bytes: AtomicU64,
    next_seq: AtomicU64,
    next_stamp: AtomicU64,
    space: Mutex<Space>,
    gate: RwLock<()>,
    readers: ReaderLocks,
    /// Generation counter of writes to the storage.
    writes: AtomicU64,
    sync_state: Mutex<SyncState>,
    sync_done: Condvar,
    corrupt_blocks: u64,
    corrupt_bytes: u64,
    /// One compaction at a time.
    compaction: Mutex<()>,
    expired_purged: AtomicU64,
    evictions: AtomicU64,
    stop: Mutex<bool>,
    stop_cv: Condvar,
}

/// Free space kept at the end of a growing file, so that appends do not
/// extend it one entry at a time: none below 1 MiB, then 1/16 of the file up
/// to 8 MiB.
fn growth_reserve(file_end: u64) -> u64 {
    if file_end < (1 << 20) {
        0
    } else {
        crate::format::align_up((file_end / 16).min(8 << 20))
    }
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
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        Options::new().open(path)
    }

    pub(crate) fn open_with(path: &Path, opts: Options) -> Result<Store> {
        let storage = open_storage(path, &opts)?;
        let inner = Inner::open(path, storage, &opts)?;
        let inner = Arc::new(inner);
        let sync_every = match opts.sync {
            SyncPolicy::Periodic(every) => Some(every),
            _ => None,
        };
        let auto = opts.auto_compact;
        let maintenance = if !opts.read_only && (sync_every.is_some() || auto.is_some()) {
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
            maintenance,
            shut: false,
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
    /// clock). After that it is invisible, and its space is reclaimed by
    /// [`purge_expired`](Self::purge_expired) or the next open.
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
    /// default) it is [`Error::Corrupt`].
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        self.inner.read(key.as_ref(), true, |_, _, v| v.to_vec())
    }

    /// Like [`get`](Self::get), but does not count as a use: the entry's
    /// place in the least-recently-used order is unchanged.
    pub fn peek(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        self.inner.read(key.as_ref(), false, |_, _, v| v.to_vec())
    }

    /// The value of `key` with its metadata and expiry.
    pub fn get_entry(&self, key: impl AsRef<[u8]>) -> Result<Option<Entry>> {
        self.inner.read(key.as_ref(), true, |h, m, v| Entry {
            value: v.to_vec(),
            metadata: m.to_vec(),
            expires_at: (h.expiry_ms != 0).then(|| millis_to_system_time(h.expiry_ms)),
        })
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
        self.inner.get_ref(key.as_ref())
    }

    /// Whether `key` is present and not expired.
    pub fn contains(&self, key: impl AsRef<[u8]>) -> bool {
        self.inner.contains(key.as_ref())
    }

    /// Removes `key`; returns whether it was present (and not expired).
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        self.inner.delete(key.as_ref())
    }

    /// Number of entries (expired ones count until they are purged).
    pub fn len(&self) -> usize {
        self.inner.entries.load(Ordering::Relaxed)
    }

    /// Whether the store holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes expired entries and reclaims their space; returns how many.
    pub fn purge_expired(&self) -> Result<usize> {
        self.inner.purge()
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
    pub fn touch_until(&self, key: impl AsRef<[u8]>, at: SystemTime) -> Result<bool> {
        self.inner.touch(key.as_ref(), Expiry::At(at))
    }

    /// Moves live entries from the end of the file into free space nearer
    /// its start (best fit), then cuts the free end off the file, so the file
    /// shrinks towards the size of its live data.
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

    /// Syncs, stops the background thread, releases the file lock, and
    /// reports any error the final sync met. Dropping a store does the same
    /// but cannot report errors.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        if self.shut {
            return Ok(());
        }
        self.shut = true;
        *self.inner.stop.lock() = true;
        self.inner.stop_cv.notify_all();
        if let Some(h) = self.maintenance.take() {
            let _ = h.join();
        }
        self.inner.sync_all()
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
        let _ = self.shutdown();
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
fn open_storage(path: &Path, opts: &Options) -> Result<Arc<dyn Storage>> {
    #[cfg(feature = "testing")]
    if let Some(s) = &opts.storage {
        return Ok(Arc::clone(s));
    }
    let create = opts.create && !opts.read_only;
    if create && let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io(path, "creating the parent directories", e))?;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(!opts.read_only)
        .create(create)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::io(path, "opening the file", e))?;
    let meta = file
        .metadata()
        .map_err(|e| Error::io(path, "reading the file's metadata", e))?;
    if !meta.is_file() {
        let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file");
        return Err(Error::io(path, "opening the file", e));
    }
    let locked = if opts.read_only {
        file.try_lock_shared()
    } else {
        file.try_lock()
    };
    match locked {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(Error::Locked {
                path: path.to_path_buf(),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(path, "locking the file", e)),
    }
    let storage = FileStorage::new(file, !opts.read_only)
        .map_err(|e| Error::io(path, "mapping the file", e))?;
    Ok(Arc::new(storage))
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

impl Inner {
    fn open(path: &Path, storage: Arc<dyn Storage>, opts: &Options) -> Result<Inner> {
        let now = opts.clock.now_millis();
        let hasher = KeyHasher::default();
        // An empty file, or one whose creation a crash cut short, holds
        // nothing: a writer (re)writes its header.
        let fresh = storage.is_empty() || unfinished_file(&*storage);
        let header = if fresh {
            let h = FileHeader {
                version: FORMAT_VERSION,
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
            frag: opts.fragmentation_factor,
            max_entries: opts.max_entries,
            verify: opts.verify_checksums,
            clock: Arc::clone(&opts.clock),
            hasher,
            shards,
            entries: AtomicUsize::new(rec.entries),
            live_bytes: AtomicU64::new(rec.live_bytes),
            next_seq: AtomicU64::new(rec.next_seq),
            next_stamp: AtomicU64::new(rec.next_stamp),
            space: Mutex::new(Space {
                free: rec.free,
                pending: Vec::new(),
                pending_bytes: 0,
                unsynced_frees: Vec::new(),
            }),
            gate: RwLock::new(()),
            readers: ReaderLocks::new(),
            writes: AtomicU64::new(0),
            sync_state: Mutex::new(SyncState::default()),
            sync_done: Condvar::new(),
            corrupt_blocks: rec.corrupt_blocks,
            corrupt_bytes: rec.corrupt_bytes,
            compaction: Mutex::new(()),
            expired_purged: AtomicU64::new(rec.expired_freed),
            evictions: AtomicU64::new(rec.evicted),
            stop: Mutex::new(false),
            stop_cv: Condvar::new(),
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
        } else {
            Ok(())
        }
    }

    fn note_write(&self) -> u64 {
        self.writes.fetch_add(1, Ordering::AcqRel) + 1
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
        let mut b = [0u8; crate::format::BLOCK_HEADER_LEN as usize];
        // SAFETY: callers read headers of blocks that their locks keep in
        // place (an indexed entry under its shard lock, a pinned block, or a
        // block they allocated); the slice is dropped before they release them.
        let bytes = match unsafe { self.storage.view(offset, b.len() as u64) } {
            Some(v) => v,
            None => {
                self.storage
                    .read_at(offset, &mut b)
                    .map_err(self.io("reading an entry"))?;
                &b[..]
            }
        };
        let h = BlockHeader::decode(bytes, self.salt, offset, self.storage.len())
            .map_err(|e| self.corrupt(offset, e.to_string()))?;
        if h.kind != Kind::Entry {
            return Err(self.corrupt(offset, "the index points at a free block"));
        }
        Ok(h)
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

    // ---- reads ------------------------------------------------------------

    /// Finds `key` and hands its header, metadata and value to `f` while the
    /// block is read-locked. `use_` says whether the read counts as a use for
    /// the LRU order.
    fn read<T>(
        &self,
        key: &[u8],
        use_: bool,
        f: impl FnOnce(&BlockHeader, &[u8], &[u8]) -> T,
    ) -> Result<Option<T>> {
        let (hash, cell) = self.locate(key);
        let shard = cell.map.read();
        let Some((id, offset, h)) = self.lookup(&shard, hash, key)? else {
            return Ok(None);
        };
        let start = offset + h.key_offset();
        let len = h.payload_len();
        let (k, m) = (usize::from(h.key_len), usize::from(h.meta_len));
        // SAFETY: the shard's read lock is held for as long as `payload` is
        // used, and a block is written over or cut off only after its key has
        // left the index under the write lock (see the module docs).
        let result = match unsafe { self.storage.view(start, len) } {
            Some(payload) => {
                self.check_entry(offset, &h, key, payload)?;
                f(&h, &payload[k..k + m], &payload[k + m..])
            }
            None => {
                let mut payload = vec![0u8; len as usize];
                self.storage
                    .read_at(start, &mut payload)
                    .map_err(self.io("reading an entry"))?;
                self.check_entry(offset, &h, key, &payload)?;
                f(&h, &payload[k..k + m], &payload[k + m..])
            }
        };
        if use_ {
            self.touch_lru(cell, id);
        }
        Ok(Some(result))
    }

    /// Finds `key` for a read: its slot id, block offset and checked header,
    /// or `None` if it is absent or expired. The key is compared in the
    /// block (which the read touches anyway), not in the slot. The caller
    /// holds the shard's read lock.
    fn lookup(
        &self,
        shard: &Shard,
        hash: u64,
        key: &[u8],
    ) -> Result<Option<(u32, u64, BlockHeader)>> {
        let Some((id, offset)) = shard.find_located(hash, |offset| self.holds_key(offset, key))
        else {
            return Ok(None);
        };
        let h = self.header_at(offset)?;
        if h.expiry_ms != 0 && is_expired(h.expiry_ms, self.clock.now_millis()) {
            return Ok(None);
        }
        Ok(Some((id, offset, h)))
    }

    /// Whether the entry block at `offset` holds `key` (header not checked:
    /// a damaged header reads as another key). The caller holds the shard
    /// lock of an entry that points there.
    fn holds_key(&self, offset: u64, key: &[u8]) -> bool {
        let n = crate::format::BLOCK_HEADER_LEN as usize + key.len();
        let holds = |b: &[u8]| {
            usize::from(u16::from_le_bytes([b[6], b[7]])) == key.len() && &b[n - key.len()..] == key
        };
        // SAFETY: the shard lock keeps the block from being freed (and so
        // from being written over or cut off) while the slice is used.
        match unsafe { self.storage.view(offset, n as u64) } {
            Some(b) => holds(b),
            None => {
                let mut b = vec![0u8; n];
                self.storage.read_at(offset, &mut b).is_ok() && holds(&b)
            }
        }
    }

    fn get_ref(&self, key: &[u8]) -> Result<Option<ValueRef<'_>>> {
        let (hash, cell) = self.locate(key);
        let shard = cell.map.read();
        let Some((id, offset, h)) = self.lookup(&shard, hash, key)? else {
            return Ok(None);
        };
        let start = offset + h.key_offset();
        let len = h.payload_len();
        let vstart = usize::from(h.key_len) + usize::from(h.meta_len);
        // SAFETY: as in `read` while the shard lock is held; after that the
        // block is pinned in `readers`, which keeps it out of the free list
        // (so it is neither reused nor cut off the file) until the ValueRef is
        // dropped. Freeing it may rewrite its header, which the value slice
        // does not cover.
        let bytes = match unsafe { self.storage.view(start, len) } {
            Some(payload) => {
                self.check_entry(offset, &h, key, payload)?;
                self.readers.pin(offset);
                ValueBytes::Mapped(&payload[vstart..], offset)
            }
            None => {
                let mut payload = vec![0u8; len as usize];
                self.storage
                    .read_at(start, &mut payload)
                    .map_err(self.io("reading an entry"))?;
                self.check_entry(offset, &h, key, &payload)?;
                payload.drain(..vstart);
                ValueBytes::Owned(payload)
            }
        };
        self.touch_lru(cell, id);
        Ok(Some(ValueRef { inner: self, bytes }))
    }

    fn contains(&self, key: &[u8]) -> bool {
        let (hash, cell) = self.locate(key);
        let shard = cell.map.read();
        match shard.find(hash, key) {
            None => false,
            Some(id) => {
                let e = shard.slot(id).expiry;
                e == 0 || !is_expired(e, self.clock.now_millis())
            }
        }
    }

    fn keys(&self) -> Vec<Vec<u8>> {
        let now = self.clock.now_millis();
        let mut out = Vec::with_capacity(self.entries.load(Ordering::Relaxed));
        for cell in self.shards.iter() {
            let shard = cell.map.read();
            out.extend(
                shard
                    .iter()
                    .filter(|(_, s)| !is_expired(s.expiry, now))
                    .map(|(_, s)| s.key.as_bytes().to_vec()),
            );
        }
        out
    }

    // ---- writes -----------------------------------------------------------

    fn put(&self, key: &[u8], value: &[u8], meta: &[u8], expiry: Expiry) -> Result<()> {
        self.check_writable()?;
        for (what, len, max) in [
            ("key", key.len(), MAX_KEY_LEN),
            ("value", value.len(), MAX_VALUE_LEN),
            ("metadata", meta.len(), MAX_META_LEN),
        ] {
            if len > max {
                return Err(Error::TooLarge {
                    path: self.path.clone(),
                    what,
                    len,
                    max,
                });
            }
        }
        let expiry_ms = self.expiry_ms(expiry);
        if !matches!(expiry, Expiry::Never)
            && (expiry_ms == 0 || is_expired(expiry_ms, self.clock.now_millis()))
        {
            // Already past: the entry would be invisible from the start.
            self.delete(key)?;
            return Ok(());
        }
        let payload_crc = crc(self.salt, &[key, meta, value]);
        let _gate = self.gate.read();
        if let Some(cap) = self.max_entries
            && !self.indexed(key)
        {
            // Room first: were the new entry written before the eviction, a
            // crash in between would leave one entry too many, and an open
            // evicts by write order, not by use.
            self.evict_down_to(cap - 1)?;
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let need = entry_block_len(key.len(), meta.len(), value.len());
        let (offset, len) = self.allocate(need)?;
        let header = BlockHeader {
            kind: Kind::Entry,
            block_len: len,
            key_len: key.len() as u16,
            meta_len: meta.len() as u16,
            value_len: value.len() as u32,
            seq,
            expiry_ms,
            payload_crc,
        };
        if let Err(e) = self
            .storage
            .write_at(offset, &[&header.encode(self.salt), key, meta, value])
        {
            self.release(offset, len, self.hasher.hash_one(key));
            return Err(Error::io(&self.path, "writing an entry", e));
        }
        let generation = self.note_write();
        if self.policy == SyncPolicy::Always
            && let Err(e) = self.sync_to(generation)
        {
            // Not durable: take it back so memory and file agree. Should even
            // that write fail, the copy stays valid on disk with the newest
            // sequence number: it is published, so that memory still matches
            // the file (the error leaves it open whether the put happened).
            if self.mark_free(offset, len).is_ok() {
                self.return_space(offset, len);
            } else {
                self.publish(key, offset, len, seq, expiry_ms, generation)?;
            }
            return Err(e);
        }
        let inserted = self.publish(key, offset, len, seq, expiry_ms, generation)?;
        if inserted && let Some(cap) = self.max_entries {
            // Concurrent inserts may still have gone past the cap.
            self.evict_down_to(cap)?;
        }
        self.maybe_sync_for_space()?;
        Ok(())
    }

    /// An expiry in milliseconds since the epoch (0 = never), clamped to
    /// what the format can store.
    fn expiry_ms(&self, expiry: Expiry) -> u64 {
        let ms = match expiry {
            Expiry::Never => return 0,
            Expiry::After(ttl) => {
                let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
                self.clock.now_millis().saturating_add(ttl).max(0) as u64
            }
            Expiry::At(at) => system_time_to_millis(at).max(0) as u64,
        };
        ms.min(MAX_EXPIRY_MS)
    }

    fn touch(&self, key: &[u8], expiry: Expiry) -> Result<bool> {
        self.check_writable()?;
        let now = self.clock.now_millis();
        let expiry_ms = self.expiry_ms(expiry);
        if expiry_ms == 0 || is_expired(expiry_ms, now) {
            // Renewed into the past: the entry expires now (if it is there).
            return if self.contains(key) {
                self.delete(key)
            } else {
                Ok(false)
            };
        }
        let _gate = self.gate.read();
        let (hash, cell) = self.locate(key);
        let mut shard = cell.map.write();
        let Some(id) = shard.find(hash, key) else {
            return Ok(false);
        };
        let slot = shard.slot(id);
        let offset = slot.offset;
        if is_expired(slot.expiry, now) {
            return Ok(false);
        }
        let h = self.header_at(offset)?;
        if !self.readers.is_pinned(offset) {
            // In place: one atomic word; readers are kept out by the shard lock.
            let word = expiry_word(expiry_ms, self.salt, h.seq);
            self.storage
                .write_word(offset + EXPIRY_WORD_OFFSET, word)
                .map_err(self.io("renewing an expiry"))?;
            let generation = self.note_write();
            shard.update(hash, id, offset, expiry_ms);
            self.touch_lru(cell, id);
            drop(shard);
            if self.policy == SyncPolicy::Always {
                self.sync_to(generation)?;
            }
            return Ok(true);
        }
        // A reader holds the block (possibly a compaction copying it, whose
        // copy has the same sequence number): write a new copy with a new
        // sequence number, under the shard lock so no other write of the key
        // comes between the read and the write.
        let mut payload = vec![0u8; h.payload_len() as usize];
        self.storage
            .read_at(offset + h.key_offset(), &mut payload)
            .map_err(self.io("reading an entry"))?;
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let need = entry_block_len(
            usize::from(h.key_len),
            usize::from(h.meta_len),
            h.value_len as usize,
        );
        let (new_offset, new_len) = self.allocate(need)?;
        let header = BlockHeader {
            block_len: new_len,
            seq,
            expiry_ms,
            ..h
        };
        if let Err(e) = self
            .storage
            .write_at(new_offset, &[&header.encode(self.salt), &payload])
        {
            self.release(new_offset, new_len, hash);
            return Err(Error::io(&self.path, "writing an entry", e));
        }
        let generation = self.note_write();
        if self.policy == SyncPolicy::Always
            && let Err(e) = self.sync_to(generation)
        {
            self.release(new_offset, new_len, hash);
            return Err(e);
        }
        shard.update(hash, id, new_offset, expiry_ms);
        self.touch_lru(cell, id);
        drop(shard);
        self.live_bytes.fetch_add(new_len, Ordering::Relaxed);
        self.live_bytes.fetch_sub(h.block_len, Ordering::Relaxed);
        self.supersede(offset, h.block_len, generation, hash);
        Ok(true)
    }

    /// Puts a written block in the index. Returns whether the key is new.
    fn publish(
        &self,
        key: &[u8],
        offset: u64,
        len: u64,
        seq: u64,
        expiry_ms: u64,
        generation: u64,
    ) -> Result<bool> {
        let (hash, cell) = self.locate(key);
        let mut shard = cell.map.write();
        match shard.find(hash, key) {
            Some(id) => {
                let old_offset = shard.slot(id).offset;
                let old = self.header_at(old_offset);
                if let Ok(h) = &old
                    && h.seq > seq
                {
                    // A concurrent write of this key with a later sequence
                    // number got here first; it wins, here and on disk.
                    drop(shard);
                    self.release(offset, len, hash);
                    return Ok(false);
                }
                shard.update(hash, id, offset, expiry_ms);
                self.touch_lru(cell, id);
                drop(shard);
                match old {
                    Ok(h) => {
                        self.live_bytes.fetch_add(len, Ordering::Relaxed);
                        self.live_bytes.fetch_sub(h.block_len, Ordering::Relaxed);
                        self.supersede(old_offset, h.block_len, generation, hash);
                    }
                    // The old copy is damaged: leave it for the next open to reclaim.
                    Err(_) => {
                        self.live_bytes.fetch_add(len, Ordering::Relaxed);
                    }
                }
                Ok(false)
            }
            None if shard.len() >= crate::index::MAX_SHARD_ENTRIES => {
                drop(shard);
                self.release(offset, len, hash);
                Err(Error::TooLarge {
                    path: self.path.clone(),
                    what: "number of entries (one of the index's 64 shards is full)",
                    len: crate::index::MAX_SHARD_ENTRIES + 1,
                    max: crate::index::MAX_SHARD_ENTRIES,
                })
            }
            None => {
                let id = shard.insert(&self.hasher, hash, key, offset, expiry_ms);
                self.touch_lru(cell, id);
                self.entries.fetch_add(1, Ordering::AcqRel);
                self.live_bytes.fetch_add(len, Ordering::Relaxed);
                Ok(true)
            }
        }
    }

    /// The old copy of an overwritten key: freed now if the new copy is
    /// durable, else after the next sync.
    fn supersede(&self, offset: u64, len: u64, generation: u64, key_hash: u64) {
        if self.policy == SyncPolicy::Always {
            if !self.release(offset, len, key_hash) {
                return; // it waits, still valid, in pending
            }
            let generation = self.writes.load(Ordering::Acquire);
            self.space
                .lock()
                .unsynced_frees
                .push((key_hash, generation));
        } else {
            let mut sp = self.space.lock();
            sp.pending.push(Superseded {
                generation,
                offset,
                len,
                key_hash,
            });
            sp.pending_bytes += len;
        }
    }

    /// Syncs on its own when old copies waiting for a sync hold too much space.
    fn maybe_sync_for_space(&self) -> Result<()> {
        let (pending, end) = {
            let sp = self.space.lock();
            (sp.pending_bytes, sp.free.end())
        };
        if pending > (1 << 20).max(end / 8) {
            self.sync_to(self.writes.load(Ordering::Acquire))?;
        }
        Ok(())
    }

    /// Takes a block of at least `need` bytes from the free list, growing the
    /// file when nothing fits.
    fn allocate(&self, need: u64) -> Result<(u64, u64)> {
        let mut sp = self.space.lock();
        let old_end = sp.free.end();
        let reserve = growth_reserve(old_end);
        let mut a = sp.free.allocate(need, self.frag, reserve);
        if let Some(new_end) = a.grow_to {
            if new_end > crate::index::MAX_FILE_LEN {
                sp.free.undo_growth(&a, old_end);
                return Err(Error::TooLarge {
                    path: self.path.clone(),
                    what: "file",
                    len: new_end as usize,
                    max: crate::index::MAX_FILE_LEN as usize,
                });
            }
            let mut grown = self.storage.set_len(new_end);
            if grown.is_err() && reserve > 0 {
                // The disk may have room for the entry without the reserve.
                sp.free.undo_growth(&a, old_end);
                a = sp.free.allocate(need, self.frag, 0);
                grown = self.storage.set_len(a.grow_to.unwrap_or(old_end));
            }
            if let Err(e) = grown {
                sp.free.undo_growth(&a, old_end);
                return Err(Error::io(&self.path, "extending the file", e));
            }
            self.note_write();
        }
        if let Some((o, l)) = a.remainder {
            // Before anyone can allocate it, the remainder gets its header.
            // Free space without one would make memory and file disagree (and
            // whatever stale bytes lie there would be read as the block's
            // header), so a failure undoes the allocation: the block is free
            // again, as its header says. Space that is still all zeros reads
            // as free without a header, and needs none.
            if !a.remainder_zeroed {
                let written = self
                    .storage
                    .write_at(o, &[&BlockHeader::free(l).encode(self.salt)]);
                if let Err(e) = written {
                    if a.grow_to.is_some() {
                        sp.free.undo_growth(&a, old_end);
                        if self.storage.set_len(old_end).is_ok() {
                            self.note_write();
                        }
                    } else {
                        sp.free.free(a.offset, a.len, u64::MAX);
                    }
                    return Err(Error::io(&self.path, "writing a free block header", e));
                }
                self.note_write();
            }
            if a.grow_to.is_none() && !a.block_zeroed {
                // The split block's own header still gives the length of the
                // whole free block, the remainder included. Were the entry's
                // write to fail and the free header meant to take its place
                // too, that stale header would stay and, once the remainder
                // holds entries, the next open would skip them as free space.
                // So it gets its true length now. (A block carved from
                // all-zero space has no header to go stale.)
                let written = self
                    .storage
                    .write_at(a.offset, &[&BlockHeader::free(a.len).encode(self.salt)]);
                if let Err(e) = written {
                    sp.free.free(a.offset, a.len, u64::MAX);
                    return Err(Error::io(&self.path, "writing a free block header", e));
                }
                self.note_write();
            }
        }
        Ok((a.offset, a.len))
    }

    /// Frees a block nobody indexes any more (an old copy of the key with
    /// this hash, or a copy never published): overwrites its header, then
    /// returns its space. If the header cannot be written the block may still
    /// hold a valid copy, so it waits with the old copies (see `Space`).
    /// Returns whether the free header was written.
    fn release(&self, offset: u64, len: u64, key_hash: u64) -> bool {
        if self.mark_free(offset, len).is_ok() {
            self.return_space(offset, len);
            true
        } else {
            let mut sp = self.space.lock();
            sp.pending.push(Superseded {
                generation: 0,
                offset,
                len,
                key_hash,
            });
            sp.pending_bytes += len;
            false
        }
    }

    fn mark_free(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.storage
            .write_at(offset, &[&BlockHeader::free(len).encode(self.salt)])?;
        self.note_write();
        Ok(())
    }

    /// Puts a block (whose header already says free) back in the free list,
    /// unless a reader holds it; merges; cuts the end of the file.
    fn return_space(&self, offset: u64, len: u64) {
        if !self.readers.defer_if_pinned(offset, len) {
            self.return_unpinned_space(offset, len);
        }
    }

    /// `return_space` for a block known not to be pinned.
    fn return_unpinned_space(&self, offset: u64, len: u64) {
        let mut sp = self.space.lock();
        let end = sp.free.end();
        let f = sp.free.free(offset, len, 2 * growth_reserve(end));
        if let Some(t) = f.truncate_to {
            if self.storage.set_len(t).is_ok() {
                self.note_write();
                return;
            }
            sp.free.undo_truncate(f.offset, f.len);
        }
        if (f.offset, f.len) != (offset, len) && self.mark_free(f.offset, f.len).is_err() {
            // The merged header did not make it: on disk the neighbours are
            // still free blocks of their own. Memory says the same: they stay
            // free as they were, and this block, free on disk, waits with the
            // old copies to be merged again after the next sync.
            sp.free.withdraw(offset, len);
            sp.pending.push(Superseded {
                generation: 0,
                offset,
                len,
                key_hash: 0,
            });
            sp.pending_bytes += len;
        }
    }

    fn delete(&self, key: &[u8]) -> Result<bool> {
        self.check_writable()?;
        let _gate = self.gate.read();
        let (hash, cell) = self.locate(key);
        let mut shard = loop {
            self.settle_old_copies(hash)?;
            let shard = cell.map.write();
            if self.unsettled(hash).is_none() {
                break shard;
            }
        };
        let Some(id) = shard.find(hash, key) else {
            return Ok(false);
        };
        let slot = shard.slot(id);
        let (offset, expiry) = (slot.offset, slot.expiry);
        let visible = expiry == 0 || !is_expired(expiry, self.clock.now_millis());
        let freed = self.unindex(&mut shard, cell, hash, id, offset)?;
        drop(shard);
        if let Some(len) = freed {
            self.return_space(offset, len);
        }
        if self.policy == SyncPolicy::Always {
            self.sync_to(self.writes.load(Ordering::Acquire))?;
        }
        Ok(visible)
    }

    /// The write generation a sync must reach before the newest copy of the
    /// key with this hash may be freed (see `Space::unsynced_frees`).
    fn unsettled(&self, hash: u64) -> Option<u64> {
        let sp = self.space.lock();
        sp.unsynced_frees
            .iter()
            .filter(|f| f.0 == hash)
            .map(|f| f.1)
            .max()
    }

    /// Syncs, if needed, so that the newest copy of the key with this hash
    /// may be freed. Call it with no shard lock held.
    fn settle_old_copies(&self, hash: u64) -> Result<()> {
        match self.unsettled(hash) {
            Some(g) => self.sync_to(g),
            None => Ok(()),
        }
    }

    /// Removes slot `id` from the index after marking its block free on disk
    /// (so the removal is on disk before it is in memory). Returns the block
    /// length to return to the free list (`None` if the block is damaged and
    /// is left for the next open).
    fn unindex(
        &self,
        shard: &mut Shard,
        cell: &ShardCell,
        hash: u64,
        id: u32,
        offset: u64,
    ) -> Result<Option<u64>> {
        // Older copies first: were the newest freed first, a crash in between
        // would bring an older value back.
        let key = shard.slot(id).key.clone();
        self.release_superseded_copies(hash, key.as_bytes())?;
        let len = match self.header_at(offset) {
            Ok(h) => {
                self.mark_free(offset, h.block_len)
                    .map_err(self.io("freeing an entry"))?;
                Some(h.block_len)
            }
            Err(_) => None,
        };
        shard.remove(hash, id);
        if self.max_entries.is_some() {
            let mut lru = cell.lru.lock();
            lru.remove(id);
            self.publish_oldest(cell, &lru);
        }
        self.entries.fetch_sub(1, Ordering::AcqRel);
        if let Some(l) = len {
            self.live_bytes.fetch_sub(l, Ordering::Relaxed);
        }
        Ok(len)
    }

    /// Frees old copies of a key that has just left the index: with the key
    /// gone they protect nothing, and left valid on disk they would bring an
    /// old value back after a crash.
    /// Fails, keeping the copies it could not free, when a free header cannot
    /// be written: the caller must then not free the newest copy.
    fn release_superseded_copies(&self, hash: u64, key: &[u8]) -> Result<()> {
        let mine: Vec<Superseded> = {
            let mut sp = self.space.lock();
            if sp.pending.is_empty() {
                return Ok(());
            }
            let mut mine = Vec::new();
            let mut kb = vec![0u8; key.len()];
            let mut i = 0;
            while i < sp.pending.len() {
                let p = &sp.pending[i];
                let same = p.key_hash == hash
                    && self
                        .storage
                        .read_at(p.offset + crate::format::BLOCK_HEADER_LEN, &mut kb)
                        .is_ok()
                    && kb == key;
                if same {
                    mine.push(sp.pending.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            sp.pending_bytes -= mine.iter().map(|m| m.len).sum::<u64>();
            mine
        };
        let mut left = mine.into_iter();
        while let Some(p) = left.next() {
            if let Err(e) = self.mark_free(p.offset, p.len) {
                // Still valid on disk: keep them waiting, as before.
                let mut sp = self.space.lock();
                for p in std::iter::once(p).chain(left) {
                    sp.pending_bytes += p.len;
                    sp.pending.push(p);
                }
                return Err(Error::io(&self.path, "freeing an old copy of an entry", e));
            }
            self.return_space(p.offset, p.len);
        }
        Ok(())
    }

    /// Whether `key` is in the index (expired or not).
    fn indexed(&self, key: &[u8]) -> bool {
        let (hash, cell) = self.locate(key);
        cell.map.read().find(hash, key).is_some()
    }

    /// Evicts least recently used entries until at most `n` remain. Under
    /// `SyncPolicy::Always` the evictions are durable when it returns.
    fn evict_down_to(&self, n: usize) -> Result<()> {
        let mut evicted = false;
        while self.entries.load(Ordering::Acquire) > n {
            if !self.evict_one()? {
                break;
            }
            evicted = true;
        }
        if evicted && self.policy == SyncPolicy::Always {
            self.sync_to(self.writes.load(Ordering::Acquire))?;
        }
        Ok(())
    }

    /// Evicts the least recently used entry of the whole store. Returns false
    /// when there is none.
    fn evict_one(&self) -> Result<bool> {
        loop {
            let (s, stamp) = self
                .lru_oldest
                .iter()
                .map(|a| a.load(Ordering::Acquire))
                .enumerate()
                .min_by_key(|&(_, st)| st)
                .expect("shards");
            if stamp == u64::MAX {
                return Ok(false);
            }
            let cell = &self.shards[s];
            let mut shard = cell.map.write();
            let Some((id, now_oldest)) = cell.lru.lock().oldest() else {
                continue; // emptied meanwhile: look again
            };
            if now_oldest != stamp {
                continue; // used or removed meanwhile: look again
            }
            let slot = shard.slot(id);
            let offset = slot.offset;
            let hash = self.hasher.hash_one(slot.key.as_bytes());
            if let Some(g) = self.unsettled(hash) {
                drop(shard);
                self.sync_to(g)?;
                continue;
            }
            let freed = self.unindex(&mut shard, cell, hash, id, offset)?;
            drop(shard);
            if let Some(len) = freed {
                self.return_space(offset, len);
            }
            self.evictions.fetch_add(1, Ordering::Relaxed);
            return Ok(true);
        }
    }

    fn purge(&self) -> Result<usize> {
        self.check_writable()?;
        let _gate = self.gate.read();
        let now = self.clock.now_millis();
        let mut purged = 0usize;
        for cell in self.shards.iter() {
            if cell
                .map
                .read()
                .earliest_expiry()
                .is_none_or(|e| !is_expired(e, now))
            {
                continue;
            }
            // Entries whose old copies' free headers need a sync first are
            // left for another pass after that sync.
            let mut wait = Some(0);
            while let Some(g) = wait.take() {
                let mut result = if g > 0 { self.sync_to(g) } else { Ok(()) };
                let mut shard = cell.map.write();
                let mut freed = Vec::new();
                for id in shard.expired(now, usize::MAX) {
                    if result.is_err() {
                        break;
                    }
                    let slot = shard.slot(id);
                    let offset = slot.offset;
                    let hash = self.hasher.hash_one(slot.key.as_bytes());
                    if let Some(g) = self.unsettled(hash) {
                        wait = Some(wait.unwrap_or(0).max(g));
                        continue;
                    }
                    match self.unindex(&mut shard, cell, hash, id, offset) {
                        Ok(len) => {
                            purged += 1;
                            if let Some(l) = len {
                                freed.push((offset, l));
                            }
                        }
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                drop(shard);
                for (o, l) in freed {
                    self.return_space(o, l);
                }
                if let Err(e) = result {
                    self.expired_purged
                        .fetch_add(purged as u64, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        self.expired_purged
            .fetch_add(purged as u64, Ordering::Relaxed);
        if purged > 0 && self.policy == SyncPolicy::Always {
            self.sync_to(self.writes.load(Ordering::Acquire))?;
        }
        Ok(purged)
    }

    fn clear(&self) -> Result<()> {
        self.check_writable()?;
        let _gate = self.gate.write();
        // No writer runs now: settle every old copy before freeing entries.
        let unsettled = self.space.lock().unsynced_frees.iter().map(|f| f.1).max();
        if let Some(g) = unsettled {
            self.sync_to(g)?;
        }
        let mut shards: Vec<_> = self.shards.iter().map(|c| c.map.write()).collect();
        if self.readers.is_empty() {
            // Nothing is borrowed: cut the file back to its header.
            let mut sp = self.space.lock();
            self.storage
                .set_len(FILE_HEADER_LEN)
                .map_err(self.io("truncating the file"))?;
            self.note_write();
            sp.free.reset(FILE_HEADER_LEN);
            sp.pending.clear();
            sp.pending_bytes = 0;
            drop(sp);
            for (shard, cell) in shards.iter_mut().zip(self.shards.iter()) {
                shard.clear();
                let mut lru = cell.lru.lock();
                lru.clear();
                self.publish_oldest(cell, &lru);
            }
            self.entries.store(0, Ordering::Release);
            self.live_bytes.store(0, Ordering::Release);
        } else {
            // Readers hold some blocks: free entry by entry; held blocks are
            // returned when their readers drop.
            let mut freed = Vec::new();
            for (shard, cell) in shards.iter_mut().zip(self.shards.iter()) {
                let live: Vec<(u32, u64)> = shard.iter().map(|(id, s)| (id, s.offset)).collect();
                for (id, offset) in live {
                    let hash = self.hasher.hash_one(shard.slot(id).key.as_bytes());
                    if let Some(l) = self.unindex(shard, cell, hash, id, offset)? {
                        freed.push((offset, l));
                    }
                }
            }
            drop(shards);
            for (o, l) in freed {
                self.return_space(o, l);
            }
            let pending: Vec<_> = {
                let mut sp = self.space.lock();
                sp.pending_bytes = 0;
                sp.pending.drain(..).collect()
            };
            for p in pending {
                self.release(p.offset, p.len, p.key_hash);
            }
        }
        if self.policy == SyncPolicy::Always {
            self.sync_to(self.writes.load(Ordering::Acquire))?;
        }
        Ok(())
    }

    // ---- durability -------------------------------------------------------

    /// Makes every write up to generation `generation` durable, sharing one
    /// `fdatasync` between all the threads waiting at the time (group
    /// commit). Then frees old copies that the sync made safe to reuse.
    fn sync_to(&self, generation: u64) -> Result<()> {
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

    fn release_pending(&self, synced: u64) {
        let ready: Vec<(u64, u64, u64)> = {
            let mut sp = self.space.lock();
            sp.unsynced_frees.retain(|f| f.1 > synced);
            if sp.pending.is_empty() {
                return;
            }
            let mut ready = Vec::new();
            sp.pending.retain(|p| {
                if p.generation <= synced {
                    ready.push((p.offset, p.len, p.key_hash));
                    false
                } else {
                    true
                }
            });
            sp.pending_bytes -= ready.iter().map(|r| r.1).sum::<u64>();
            ready
        };
        // Only those whose free header was written: the others wait again,
        // still valid, and are freed first when their key goes.
        let freed: Vec<u64> = ready
            .into_iter()
            .filter(|&(o, l, h)| self.release(o, l, h))
            .map(|r| r.2)
            .collect();
        let generation = self.writes.load(Ordering::Acquire);
        self.space
            .lock()
            .unsynced_frees
            .extend(freed.into_iter().map(|h| (h, generation)));
    }

    fn sync_all(&self) -> Result<()> {
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
    fn maintenance_loop(&self, sync_every: Option<Duration>, auto: Option<AutoCompact>) {
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
    fn wants_compaction(&self, a: &AutoCompact) -> bool {
        let (free, end) = {
            let sp = self.space.lock();
            (sp.free.free_bytes() + sp.pending_bytes, sp.free.end())
        };
        free >= a.min_free_bytes && free as f64 >= a.min_free_ratio * end as f64
    }

    // ---- introspection ----------------------------------------------------

    fn stats(&self) -> Stats {
        let index_bytes = self
            .shards
            .iter()
            .map(|c| {
                c.map.read().memory()
                    + if self.max_entries.is_some() {
                        c.lru.lock().memory()
                    } else {
                        0
                    }
            })
            .sum();
        // Reader locks before the free list, as the lock order says.
        let reader_locked_blocks = self.readers.count();
        let sp = self.space.lock();
        Stats {
            entries: self.entries.load(Ordering::Relaxed),
            file_len: self.storage.len(),
            live_bytes: self.live_bytes.load(Ordering::Relaxed),
            free_blocks: sp.free.free_blocks(),
            free_bytes: sp.free.free_bytes(),
            largest_free_block: sp.free.largest(),
            pending_free_bytes: sp.pending_bytes,
            compactable_bytes: sp.free.free_bytes() + sp.pending_bytes,
            reader_locked_blocks,
            corrupt_blocks: self.corrupt_blocks,
            corrupt_bytes: self.corrupt_bytes,
            expired_purged: self.expired_purged.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            index_bytes,
        }
    }

    #[cfg(any(test, feature = "testing"))]
    fn check_invariants(&self) -> std::result::Result<(), String> {
        use crate::inspect::{BlockKind, Walker};
        let _gate = self.gate.write();
        let shards: Vec<_> = self.shards.iter().map(|c| c.map.read()).collect();
        let readers = self.readers.lock_all();
        let sp = self.space.lock();
        let len = self.storage.len();
        if sp.free.end() != len {
            return Err(format!(
                "free list says the file ends at {}, it is {len} bytes",
                sp.free.end()
            ));
        }
        let mut bytes = vec![0u8; len as usize];
        self.storage
            .read_at(0, &mut bytes)
            .map_err(|e| e.to_string())?;
        // Blocks that are neither live nor in the free list, by offset.
        let mut held: HashMap<u64, u64> = sp.pending.iter().map(|p| (p.offset, p.len)).collect();
        for r in &readers {
            held.extend(r.iter().filter_map(|(&o, p)| p.freed.map(|l| (o, l))));
        }
        // A held block whose free header could not be written holds anything
        // (zeros, a torn entry, a shorter header): walk it as one block. But
        // a header there claiming more than the block is left for the walk
        // to trip over: the next open would believe it.
        for (&o, &l) in &held {
            let at = o as usize..(o + crate::format::BLOCK_HEADER_LEN) as usize;
            let claims = BlockHeader::decode(&bytes[at.clone()], self.salt, o, len)
                .map_or(0, |h| h.block_len);
            if claims < l {
                bytes[at].copy_from_slice(&BlockHeader::free(l).encode(self.salt));
            }
        }
        let mut w = Walker::new(&bytes[..])
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("{e:?}"))?;
        let mut indexed: HashMap<u64, Vec<u8>> = HashMap::new();
        for s in &shards {
            for (_, slot) in s.iter() {
                indexed.insert(slot.offset, slot.key.as_bytes().to_vec());
            }
        }
        let mut disk_free: Vec<(u64, u64)> = Vec::new();
        let mut prev_free_end: Option<u64> = None;
        let mut live_seen = 0usize;
        let mut live_bytes = 0u64;
        while let Some(b) = w.next_block().map_err(|e| e.to_string())? {
            let in_list = sp.free.contains(b.offset, b.len);
            match &b.kind {
                BlockKind::Entry(_) => {
                    prev_free_end = None;
                    if let Some(k) = indexed.get(&b.offset) {
                        if k.as_slice() != w.key() {
                            return Err(format!("index key at {} differs from the file", b.offset));
                        }
                        live_seen += 1;
                        live_bytes += b.len;
                    } else if held.get(&b.offset) != Some(&b.len) {
                        return Err(format!("entry at {} is neither indexed nor held", b.offset));
                    }
                }
                // A crumb: damage shorter than a header, free in memory only
                // (see the free list's module docs).
                BlockKind::Damaged(_) | BlockKind::Unwritten
                    if in_list && b.len < crate::format::MIN_BLOCK_LEN =>
                {
                    prev_free_end = Some(b.offset + b.len);
                    disk_free.push((b.offset, b.len));
                }
                BlockKind::Free | BlockKind::Unwritten => {
                    if matches!(b.kind, BlockKind::Unwritten)
                        && !(in_list && b.offset >= sp.free.zero_from())
                    {
                        return Err(format!(
                            "unwritten space at {} outside the known-zero tail",
                            b.offset
                        ));
                    }
                    if in_list {
                        if prev_free_end == Some(b.offset) {
                            return Err(format!("free blocks are adjacent at {}", b.offset));
                        }
                        prev_free_end = Some(b.offset + b.len);
                        disk_free.push((b.offset, b.len));
                    } else if held.get(&b.offset) == Some(&b.len) {
                        prev_free_end = None;
                    } else {
                        return Err(format!(
                            "free block {}+{} is not in the free list",
                            b.offset, b.len
                        ));
                    }
                }
                other => return Err(format!("unexpected block at {}: {other:?}", b.offset)),
            }
        }
        if live_bytes != self.live_bytes.load(Ordering::Relaxed) {
            return Err(format!(
                "live bytes counted {} but the indexed blocks hold {live_bytes}",
                self.live_bytes.load(Ordering::Relaxed)
            ));
        }
        if live_seen != indexed.len() {
            return Err(format!(
                "{} index entries, {live_seen} found in the file",
                indexed.len()
            ));
        }
        let list: Vec<(u64, u64)> = sp.free.iter().collect();
        if list != disk_free {
            return Err(format!(
                "free list {list:?} differs from the file's free blocks {disk_free:?}"
            ));
        }
        let n: usize = shards.iter().map(|s| s.len()).sum();
        if n != self.entries.load(Ordering::Relaxed) {
            return Err(format!(
                "entry count {} but {n} in the index",
                self.entries.load(Ordering::Relaxed)
            ));
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
        assert_eq!(growth_reserve(1000), 0);
        assert_eq!(growth_reserve(16 << 20), 1 << 20);
        assert_eq!(growth_reserve(1 << 40), 8 << 20);
    }

    #[test]
    fn shard_count_is_a_power_of_two() {
        assert!(crate::index::SHARDS.is_power_of_two());
    }
}
