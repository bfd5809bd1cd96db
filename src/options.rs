//! `Options`: the builder that opens a store, `SyncPolicy`, and their checks.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::store::Store;

/// When writes reach the disk.
///
/// Whatever the policy, [`Store::sync`] and [`Store::close`] make everything
/// written so far durable, and dropping a store syncs it too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// Writes stay in the OS page cache until [`Store::sync`], close or drop.
    /// They survive a crash of the process, not of the machine. The store
    /// still syncs on its own when it needs to recycle space freed by
    /// overwrites (see the README's "Guarantees").
    Never,
    /// Every write is on disk (`fdatasync`) before it returns. Concurrent
    /// writers share one `fdatasync` (group commit). The default.
    ///
    /// Every write includes [`Store::touch`]: under this policy renewing an
    /// expiry costs a full `fdatasync` (169 µs measured on an SSD, against
    /// 225 ns under `Periodic(1 s)`). For a store renewed on every request
    /// or heartbeat (sessions, leases), `Periodic` is usually the better
    /// choice: a renewal lost in a crash shortens a lease, it loses no data.
    #[default]
    Always,
    /// A background thread syncs every given interval, if anything was written.
    Periodic(Duration),
}

/// The default delay of active expiry (see [`Options::active_expiry`]).
pub const DEFAULT_EXPIRY_DELAY: Duration = Duration::from_secs(1);

/// The default capacity of a subscriber's queue (see [`Options::event_capacity`]).
pub const DEFAULT_EVENT_CAPACITY: usize = 4096;

/// The default longest wait of a group commit's leader (see
/// [`Options::commit_wait`]).
pub const DEFAULT_COMMIT_WAIT: Duration = Duration::from_millis(1);

/// When the store compacts itself in the background (see
/// [`Store::compact`]): a thread checks every `check_every` whether free space
/// is at least `min_free_bytes` and at least `min_free_ratio` of the file.
///
/// The default (on by default): half the file and 64 MiB, checked every 10
/// seconds, so small stores and stores with little churn are never moved.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AutoCompact {
    /// Share of the file that must be free, in (0, 1].
    pub min_free_ratio: f64,
    /// Free bytes needed, whatever the share.
    pub min_free_bytes: u64,
    /// How often the thresholds are checked.
    pub check_every: Duration,
}

impl Default for AutoCompact {
    fn default() -> Self {
        AutoCompact {
            min_free_ratio: 0.5,
            min_free_bytes: 64 << 20,
            check_every: Duration::from_secs(10),
        }
    }
}

/// How to open a store.
///
/// ```
/// use sfs::{Options, SyncPolicy};
///
/// let dir = tempfile::tempdir()?;
/// let store = Options::new()
///     .max_entries(10_000)
///     .sync(SyncPolicy::Never)
///     .open(dir.path().join("cache.sfs"))?;
/// store.put(b"k", b"v")?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Options {
    pub(crate) max_entries: Option<usize>,
    pub(crate) fragmentation_factor: f64,
    pub(crate) sync: SyncPolicy,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) create: bool,
    pub(crate) read_only: bool,
    pub(crate) verify_checksums: bool,
    pub(crate) auto_compact: Option<AutoCompact>,
    pub(crate) compact_batch: usize,
    pub(crate) active_expiry: Option<Duration>,
    pub(crate) event_capacity: usize,
    pub(crate) commit_wait: Duration,
    pub(crate) frequent_syncs: Option<bool>,
    #[cfg(feature = "testing")]
    pub(crate) storage: Option<Arc<dyn crate::io::Storage>>,
    #[cfg(feature = "testing")]
    pub(crate) salt: Option<u32>,
    #[cfg(feature = "testing")]
    pub(crate) hasher_seed: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Options::new()
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("max_entries", &self.max_entries)
            .field("fragmentation_factor", &self.fragmentation_factor)
            .field("sync", &self.sync)
            .field("create", &self.create)
            .field("read_only", &self.read_only)
            .field("verify_checksums", &self.verify_checksums)
            .field("auto_compact", &self.auto_compact)
            .field("active_expiry", &self.active_expiry)
            .field("event_capacity", &self.event_capacity)
            .field("commit_wait", &self.commit_wait)
            .field("frequent_syncs", &self.frequent_syncs)
            .finish_non_exhaustive()
    }
}

impl Options {
    /// The defaults: unbounded, fragmentation factor 0.75,
    /// [`SyncPolicy::Always`], the system clock, create when missing,
    /// read-write, checksums verified on every read, automatic compaction
    /// with [`AutoCompact::default`], active expiry within 1 second, event
    /// queues of 4,096 items.
    pub fn new() -> Options {
        Options {
            max_entries: None,
            fragmentation_factor: 0.75,
            sync: SyncPolicy::default(),
            clock: Arc::new(SystemClock),
            create: true,
            read_only: false,
            verify_checksums: true,
            auto_compact: Some(AutoCompact::default()),
            compact_batch: crate::store::BATCH_ENTRIES,
            active_expiry: Some(DEFAULT_EXPIRY_DELAY),
            event_capacity: DEFAULT_EVENT_CAPACITY,
            commit_wait: DEFAULT_COMMIT_WAIT,
            frequent_syncs: None,
            #[cfg(feature = "testing")]
            storage: None,
            #[cfg(feature = "testing")]
            salt: None,
            #[cfg(feature = "testing")]
            hasher_seed: None,
        }
    }

    /// Caps the number of live entries: inserting a new key beyond `n`
    /// evicts the least recently used entry (`get` and `put` count as use).
    /// `n` must be at least 1.
    pub fn max_entries(mut self, n: usize) -> Options {
        self.max_entries = Some(n);
        self
    }

    /// A free block is split for a request only when the request uses at most
    /// this share of it (and the rest is at least one minimal block);
    /// otherwise the request gets the whole block. In (0, 1]; default 0.75.
    pub fn fragmentation_factor(mut self, f: f64) -> Options {
        self.fragmentation_factor = f;
        self
    }

    /// When writes reach the disk; default [`SyncPolicy::Always`].
    pub fn sync(mut self, policy: SyncPolicy) -> Options {
        self.sync = policy;
        self
    }

    /// The time source for expiry; default the system clock.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Options {
        self.clock = clock;
        self
    }

    /// Whether a missing file (and missing parent directories) is created;
    /// default true. With false, a missing file is an error.
    pub fn create(mut self, create: bool) -> Options {
        self.create = create;
        self
    }

    /// Opens without writing: the file is never modified, its lock is shared
    /// with other read-only handles, and every write returns
    /// [`Error::ReadOnly`]. A missing file is an error. Default false.
    pub fn read_only(mut self, read_only: bool) -> Options {
        self.read_only = read_only;
        self
    }

    /// Whether every read checks the entry's checksums, so that damage that
    /// happened after the store was opened is reported as [`Error::Corrupt`]
    /// instead of returned as data. Default true; turning it off saves the
    /// checksum (about a nanosecond per 10 bytes read).
    pub fn verify_checksums(mut self, verify: bool) -> Options {
        self.verify_checksums = verify;
        self
    }

    /// Background compaction thresholds, or `None` to compact only when
    /// [`Store::compact`] is called. Default: `Some(AutoCompact::default())`.
    pub fn auto_compact(mut self, auto: Option<AutoCompact>) -> Options {
        self.auto_compact = auto;
        self
    }

    /// Active expiry: how soon after its expiry an entry leaves the index and
    /// its block returns to free space, with no call from the program; `None`
    /// leaves expired entries (invisible already) until
    /// [`Store::purge_expired`], an insert at the entry cap, or the next open.
    /// Default 1 second.
    ///
    /// The background thread sleeps until the earliest expiry in the store
    /// plus this delay (it is woken when a write brings that moment closer),
    /// then removes every entry expired by then, a few dozen at a time per
    /// index shard, as `purge_expired` does. It costs nothing while no entry
    /// has an expiry, and work proportional to the entries that expire
    /// otherwise; it looks at the clock at least once per delay, so that a
    /// [`ManualClock`](crate::ManualClock) moved by hand, or a wall clock
    /// that jumps, is followed within one more delay. The delay is a goal,
    /// not a hard limit: a removal waits for the disk like any write, and a
    /// mass expiry adds the time its removal takes (about 3 µs per entry:
    /// see BENCHMARKS.md). Must be non-zero.
    ///
    /// Tests on a [`ManualClock`](crate::ManualClock) that count what
    /// [`Store::purge_expired`] removes, or look for expired entries in the
    /// file, should turn it off: the thread may remove them first.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = sfs::Options::new()
    ///     .active_expiry(Some(Duration::from_millis(100)))
    ///     .open(dir.path().join("leases.sfs"))?;
    /// store.put_with_ttl(b"lease", b"node-7", Duration::from_millis(50))?;
    /// let started = std::time::Instant::now();
    /// while store.stats().entries > 0 && started.elapsed() < Duration::from_secs(10) {
    ///     std::thread::sleep(Duration::from_millis(10));
    /// }
    /// assert_eq!(store.stats().entries, 0); // removed by the background thread
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn active_expiry(mut self, delay: Option<Duration>) -> Options {
        self.active_expiry = delay;
        self
    }

    /// How many items the queue of a subscriber made by
    /// [`Store::subscribe`] holds before events are dropped (see
    /// [`Subscriber`](crate::Subscriber)). At least 1; default 4,096.
    pub fn event_capacity(mut self, capacity: usize) -> Options {
        self.event_capacity = capacity;
        self
    }

    /// Group commit: the longest the thread that leads an `fdatasync` waits
    /// for the other durable writers of the last group to write and join it
    /// (default 1 ms; `Duration::ZERO` never waits).
    ///
    /// Durable writers (`SyncPolicy::Always`, batches, `sync()`) whose
    /// writes are in the page cache share one `fdatasync`: the first to ask
    /// leads it, the others wait for it. Without a wait, writers fall into
    /// groups that alternate (those that wrote during a sync share the next
    /// one, while the first group writes again). So a leader waits while
    /// writers of the last two groups have not yet asked, and never longer
    /// than this, nor than half the last `fdatasync` took: a lone writer
    /// never waits (nor does one that moves between threads, as a task on
    /// an async runtime's pool does: when none of the last 8 syncs saw two
    /// writers at work at once, nobody is expected), and a writer that
    /// stopped costs one wait.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = sfs::Options::new()
    ///     .commit_wait(Duration::from_micros(200))
    ///     .open(dir.path().join("gc.sfs"))?;
    /// std::thread::scope(|s| {
    ///     for t in 0..4 {
    ///         let store = &store;
    ///         s.spawn(move || store.put(format!("writer-{t}"), "durable"));
    ///     }
    /// });
    /// assert_eq!(store.len(), 4);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn commit_wait(mut self, max: Duration) -> Options {
        self.commit_wait = max;
        self
    }

    /// Says that writes are synced soon after they are made, as they are
    /// under [`SyncPolicy::Always`] (where this is the default): by a
    /// program that calls [`Store::sync`](crate::Store::sync) after nearly
    /// every write, or writes durable [`Batch`](crate::Batch)es under
    /// another policy (a write-ahead log, say). Default: on under
    /// `Always`, off otherwise.
    ///
    /// Such a store writes entries with `pwrite` rather than through its
    /// memory map (a sync write-protects the mapped pages it cleans, so the
    /// next write through the map would fault first), and grows its file
    /// by writing zeros rather than with `fallocate`, with a reserve of at
    /// least 16 KiB: `fallocate` reserves *unwritten* extents, and every
    /// `fdatasync` after a write into one must also convert it and write
    /// the inode, a second write the disk makes in series with the data
    /// (FORMAT.md, rule 7; BENCHMARKS.md, "Syncs that also write the
    /// inode"). Leave it off for bulk loads that sync once at the end: they
    /// would write every block twice.
    ///
    /// ```
    /// use sfs::{Batch, SyncPolicy};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let log = sfs::Options::new()
    ///     .sync(SyncPolicy::Never)
    ///     .frequent_syncs(true)
    ///     .open(dir.path().join("log.sfs"))?;
    /// let mut append = Batch::new();
    /// append.put("entry-1", "first").put("entry-2", "second").durable();
    /// log.apply(&append)?; // on disk now: one fdatasync
    /// assert_eq!(log.get("entry-2")?.as_deref(), Some(&b"second"[..]));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn frequent_syncs(mut self, on: bool) -> Options {
        self.frequent_syncs = Some(on);
        self
    }

    /// Whether writes are expected to be synced soon after they are made
    /// (see [`frequent_syncs`](Self::frequent_syncs)).
    pub(crate) fn syncs_often(&self) -> bool {
        self.frequent_syncs
            .unwrap_or(self.sync == SyncPolicy::Always)
    }

    /// Opens (or creates) the store at `path` with these options.
    ///
    /// An empty path is [`Error::InvalidOptions`].
    ///
    /// # Hazard: other processes and the memory map
    /// Values are read through a memory map of the file, and the file lock is
    /// advisory (`flock`): a process that ignores it and truncates the file
    /// (or a tool that rewrites it in place) makes the next read of a mapped
    /// page past the new end a `SIGBUS`, which ends the process; bytes it
    /// overwrites are caught by the checksums. Let only sfs write the file,
    /// and copy it only while no store has it open. See the README,
    /// "Hazards".
    pub fn open(&self, path: impl AsRef<Path>) -> Result<Store> {
        self.validate()?;
        let path = path.as_ref();
        check_path(path)?;
        Store::open_with(path, self.clone())
    }

    /// Opens a typed store (see [`crate::TypedStore`]) with these options.
    pub fn open_typed<K, V>(&self, path: impl AsRef<Path>) -> Result<crate::TypedStore<K, V>>
    where
        K: serde::Serialize + serde::de::DeserializeOwned,
        V: serde::Serialize + serde::de::DeserializeOwned,
    {
        Ok(crate::TypedStore::from_store(self.open(path)?))
    }

    /// Opens a store over a caller-supplied storage instead of a file (test
    /// seam: fault injection and crash simulation).
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn open_on(
        &self,
        path: impl AsRef<Path>,
        storage: Arc<dyn crate::io::Storage>,
    ) -> Result<Store> {
        let mut o = self.clone();
        o.storage = Some(storage);
        o.validate()?;
        Store::open_with(path.as_ref(), o)
    }

    /// Creates new files with this salt instead of a random one, so that
    /// test files are the same from run to run (test seam).
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn salt(mut self, salt: u32) -> Options {
        self.salt = Some(salt);
        self
    }

    /// Moves at most `n` entries per compaction batch (one sync each), so
    /// that tests reach the moments between batches (test seam).
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn compact_batch(mut self, n: usize) -> Options {
        self.compact_batch = n.max(1);
        self
    }

    /// Hashes keys with this seed instead of a random one, so that which
    /// keys share an index shard or a key lock is the same from run to run
    /// (test seam: the interleaving explorer's schedules then are too).
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn hasher_seed(mut self, seed: u64) -> Options {
        self.hasher_seed = Some(seed);
        self
    }

    /// The hasher of the index's keys: randomly seeded (so that nobody can
    /// choose keys that all land in one shard), unless a test fixed it.
    pub(crate) fn key_hasher(&self) -> crate::index::KeyHasher {
        #[cfg(feature = "testing")]
        if let Some(seed) = self.hasher_seed {
            return crate::index::KeyHasher::with_seed(seed, foldhash::SharedSeed::global_fixed());
        }
        crate::index::KeyHasher::random()
    }

    /// The salt for a new file.
    pub(crate) fn new_salt(&self) -> u32 {
        #[cfg(feature = "testing")]
        if let Some(s) = self.salt {
            return s;
        }
        crate::store::random_salt()
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let f = self.fragmentation_factor;
        if !(f > 0.0 && f <= 1.0) {
            return Err(Error::InvalidOptions {
                reason: format!("fragmentation factor must be in (0, 1], got {f}"),
            });
        }
        if self.max_entries == Some(0) {
            return Err(Error::InvalidOptions {
                reason: "max_entries must be at least 1".into(),
            });
        }
        if let Some(a) = self.auto_compact
            && (!(a.min_free_ratio > 0.0 && a.min_free_ratio <= 1.0) || a.check_every.is_zero())
        {
            return Err(Error::InvalidOptions {
                reason: format!(
                    "auto-compaction needs a free ratio in (0, 1] and a non-zero interval, got {} and {:?}",
                    a.min_free_ratio, a.check_every
                ),
            });
        }
        if self.active_expiry.is_some_and(|d| d.is_zero()) {
            return Err(Error::InvalidOptions {
                reason: "active expiry needs a non-zero delay (or None to turn it off)".into(),
            });
        }
        if self.event_capacity == 0 {
            return Err(Error::InvalidOptions {
                reason: "the event queue capacity must be at least 1".into(),
            });
        }
        if let SyncPolicy::Periodic(d) = self.sync
            && d.is_zero()
        {
            return Err(Error::InvalidOptions {
                reason: "SyncPolicy::Periodic needs a non-zero interval".into(),
            });
        }
        Ok(())
    }
}

/// Refuses an empty path before anything touches the file system.
fn check_path(path: &Path) -> Result<()> {
    if path.as_os_str().is_empty() {
        return Err(Error::InvalidOptions {
            reason: "the path of the store file is empty; give the file to open or create, \
                     e.g. \"data.sfs\""
                .into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_path_is_refused_with_a_message_that_says_so() {
        let e = Options::new().open("").unwrap_err();
        assert!(matches!(e, Error::InvalidOptions { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.starts_with("invalid options: the path of the store file is empty"),
            "{text}"
        );
        assert!(!text.contains("I/O error"), "{text}");
    }

    #[test]
    fn bad_fragmentation_factors_are_refused() {
        for f in [0.0, -0.5, 1.01, f64::NAN, f64::INFINITY] {
            let e = Options::new()
                .fragmentation_factor(f)
                .validate()
                .unwrap_err();
            assert!(matches!(e, Error::InvalidOptions { .. }), "{f}");
        }
        for f in [0.01, 0.5, 1.0] {
            Options::new().fragmentation_factor(f).validate().unwrap();
        }
    }

    #[test]
    fn zero_caps_and_intervals_are_refused() {
        assert!(Options::new().max_entries(0).validate().is_err());
        assert!(
            Options::new()
                .sync(SyncPolicy::Periodic(Duration::ZERO))
                .validate()
                .is_err()
        );
        Options::new().max_entries(1).validate().unwrap();
    }
}
