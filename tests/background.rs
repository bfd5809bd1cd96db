//! The background thread and closing a shared store: a failed or panicking
//! periodic sync or compaction is reported (once, by the next `sync`,
//! `compact`, `shutdown` or `close`, and in `Stats`) and the thread carries
//! on; intervals too long to add to the clock do not kill it; `shutdown`
//! closes an `Arc<Store>` for writing and reports what `close` would.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sfs::testing::{Call, FaultError, FaultStorage, FileStorage, MemStorage, Storage};
use sfs::{AutoCompact, Error, Options, Store, SyncPolicy};

/// Waits (bounded) until the store's stats say the background thread failed.
fn wait_for_background_error(s: &Store) -> sfs::Stats {
    let start = Instant::now();
    loop {
        let st = s.stats();
        if st.background_errors > 0 || start.elapsed() > Duration::from_secs(10) {
            return st;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_failed_periodic_sync_is_reported_once_and_the_thread_goes_on() {
    let fs = Arc::new(FaultStorage::new());
    let s = Options::new()
        .sync(SyncPolicy::Periodic(Duration::from_millis(1)))
        .auto_compact(None)
        .open_on("bg.sfs", fs.clone() as Arc<dyn Storage>)
        .unwrap();
    s.put(b"k", b"v").unwrap();
    fs.fail_next(Call::Sync, FaultError::Io);
    let st = wait_for_background_error(&s);
    assert_eq!(st.background_errors, 1, "{st:?}");
    let last = st.last_background_error.unwrap();
    assert!(last.starts_with("syncing the file"), "{last}");
    // Reported by the next sync, once; the sync after that is clean.
    let e = s.sync().unwrap_err();
    assert!(matches!(e, Error::Background { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("bg.sfs") && msg.contains("syncing the file"),
        "{msg}"
    );
    s.sync().unwrap();
    // The thread is still alive: it syncs new writes on its own.
    s.put(b"k2", b"v2").unwrap();
    let synced_before = fs.calls().2;
    let start = Instant::now();
    while fs.calls().2 == synced_before && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        fs.calls().2 > synced_before,
        "no periodic sync after the failure"
    );
    s.close().unwrap();
}

/// A storage whose `sync` panics while `armed` is set.
struct PanickyStorage {
    inner: MemStorage,
    armed: AtomicBool,
}

impl Storage for PanickyStorage {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, parts: &[&[u8]]) -> std::io::Result<()> {
        self.inner.write_at(offset, parts)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync(&self) -> std::io::Result<()> {
        if self.armed.swap(false, Ordering::AcqRel) {
            panic!("injected panic in sync");
        }
        self.inner.sync()
    }
}

#[test]
fn a_panic_in_the_background_is_reported_by_close() {
    let storage = Arc::new(PanickyStorage {
        inner: MemStorage::new(),
        armed: AtomicBool::new(false),
    });
    let s = Options::new()
        .sync(SyncPolicy::Periodic(Duration::from_millis(1)))
        .auto_compact(None)
        .open_on("panic.sfs", storage.clone() as Arc<dyn Storage>)
        .unwrap();
    s.put(b"k", b"v").unwrap();
    storage.armed.store(true, Ordering::Release);
    let st = wait_for_background_error(&s);
    assert_eq!(st.background_errors, 1);
    assert!(
        st.last_background_error
            .as_deref()
            .unwrap()
            .contains("injected panic in sync"),
        "{st:?}"
    );
    let e = s.close().unwrap_err();
    assert!(
        matches!(&e, Error::Background { reason, .. } if reason.contains("panicked") && reason.contains("injected panic in sync")),
        "{e}"
    );
}

#[test]
fn intervals_too_long_for_the_clock_do_not_kill_the_maintenance_thread() {
    let t = common::TempStore::new();
    let s = Options::new()
        .sync(SyncPolicy::Periodic(Duration::MAX))
        .auto_compact(Some(AutoCompact {
            check_every: Duration::MAX,
            ..AutoCompact::default()
        }))
        .open(&t.path)
        .unwrap();
    s.put(b"k", b"v").unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(s.stats().background_errors, 0);
    // The thread was alive to be stopped: shutdown joins it without a panic.
    s.close().unwrap();
    let s = Store::open(&t.path).unwrap();
    assert_eq!(s.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
}

#[test]
fn shutdown_closes_a_shared_store_for_writing_and_reports_background_errors() {
    let fs = Arc::new(FaultStorage::new());
    let s = Arc::new(
        Options::new()
            .sync(SyncPolicy::Periodic(Duration::from_millis(1)))
            .auto_compact(None)
            .open_on("shared.sfs", fs.clone() as Arc<dyn Storage>)
            .unwrap(),
    );
    let writer = Arc::clone(&s);
    std::thread::spawn(move || writer.put(b"a", b"1"))
        .join()
        .unwrap()
        .unwrap();
    fs.fail_next(Call::Sync, FaultError::Io);
    wait_for_background_error(&s);
    let e = s.shutdown().unwrap_err();
    assert!(matches!(e, Error::Background { .. }), "{e}");
    // Reads go on; writes are refused, naming the file.
    assert_eq!(s.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
    let e = s.put(b"b", b"2").unwrap_err();
    assert!(matches!(e, Error::Closed { .. }), "{e}");
    assert!(e.to_string().contains("shared.sfs"), "{e}");
    assert!(matches!(s.delete(b"a"), Err(Error::Closed { .. })));
    // Everything written before is durable: a second shutdown has nothing to
    // report, and the file reopens with it.
    s.shutdown().unwrap();
    drop(s);
    let bytes = fs.bytes();
    let again = Options::new()
        .read_only(true)
        .open_on(
            "shared.sfs",
            Arc::new(MemStorage::with_bytes(bytes)) as Arc<dyn Storage>,
        )
        .unwrap();
    assert_eq!(again.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
}

#[test]
fn touch_whose_sync_and_take_back_both_fail_leaves_memory_as_the_file() {
    // The entry is held by a reader, so touch writes a new copy; its sync
    // fails, and so does the write that would free the copy again: the copy
    // stays valid on disk with the newest sequence number, so memory must
    // hold it too (what a fresh open finds).
    // A mapped file, so that `get_ref` really holds the block.
    let t = common::TempStore::new();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&t.path)
        .unwrap();
    let fs = Arc::new(FaultStorage::wrap(Arc::new(
        FileStorage::new(file, true).unwrap(),
    )));
    let clock = common::clock();
    let s = Options::new()
        .sync(SyncPolicy::Always)
        .clock(clock.clone())
        .open_on("touch.sfs", fs.clone() as Arc<dyn Storage>)
        .unwrap();
    s.put_with_ttl(b"lease", b"node-7", Duration::from_secs(10))
        .unwrap();
    let held = s.get_ref(b"lease").unwrap().unwrap();
    fs.fail_next(Call::Sync, FaultError::Io);
    // No free space: the copy goes at the end (the file grows, no split
    // header), so its write is the next one and the take-back the one after.
    let writes = fs.calls().0;
    fs.fail_from(Call::Write, writes + 2, FaultError::Io);
    let r = s.touch(b"lease", Duration::from_secs(60));
    fs.heal();
    assert!(r.is_err(), "{r:?}");
    drop(held);
    s.check_invariants().unwrap();
    let in_memory = s.get_entry(b"lease").unwrap().unwrap().expires_at;
    let bytes = fs.bytes();
    let fresh = Options::new()
        .read_only(true)
        .clock(clock.clone())
        .open_on(
            "touch.sfs",
            Arc::new(MemStorage::with_bytes(bytes)) as Arc<dyn Storage>,
        )
        .unwrap();
    let on_disk = fresh.get_entry(b"lease").unwrap().unwrap().expires_at;
    assert_eq!(in_memory, on_disk);
    // ...and both hold the renewal: the copy could not be taken back.
    let renewed = std::time::UNIX_EPOCH
        + Duration::from_millis(sfs::Clock::now_millis(&*clock) as u64 + 60_000);
    assert_eq!(on_disk, Some(renewed));
}

/// A memory file that, once armed, orders two writers: the first write (A's
/// entry) returns only after the second (B's) is done, so that A's sync
/// covers both; B's write returns only once A's sync is running, so that B
/// waits for it; that sync then fails.
struct FailingGroupSync {
    inner: MemStorage,
    armed: AtomicBool,
    writes: std::sync::atomic::AtomicUsize,
    in_sync: AtomicBool,
}

impl FailingGroupSync {
    fn wait_for(&self, done: impl Fn() -> bool) {
        let start = Instant::now();
        while !done() && start.elapsed() < Duration::from_secs(10) {
            std::thread::yield_now();
        }
    }
}

impl Storage for FailingGroupSync {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, parts: &[&[u8]]) -> std::io::Result<()> {
        self.inner.write_at(offset, parts)?;
        if self.armed.load(Ordering::Acquire) {
            match self.writes.fetch_add(1, Ordering::AcqRel) {
                0 => self.wait_for(|| self.writes.load(Ordering::Acquire) >= 2),
                1 => self.wait_for(|| self.in_sync.load(Ordering::Acquire)),
                _ => {}
            }
        }
        Ok(())
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync(&self) -> std::io::Result<()> {
        if self.armed.load(Ordering::Acquire) && !self.in_sync.swap(true, Ordering::AcqRel) {
            // B, whose write this sync covers, now waits for it.
            std::thread::sleep(Duration::from_millis(200));
            return Err(std::io::Error::other("injected writeback failure"));
        }
        self.inner.sync()
    }
}

#[test]
fn a_failed_fdatasync_is_an_error_for_every_writer_it_covered() {
    let storage = Arc::new(FailingGroupSync {
        inner: MemStorage::new(),
        armed: AtomicBool::new(false),
        writes: Default::default(),
        in_sync: AtomicBool::new(false),
    });
    let s = Arc::new(
        Options::new()
            .sync(SyncPolicy::Always)
            .auto_compact(None)
            .open_on("group.sfs", storage.clone() as Arc<dyn Storage>)
            .unwrap(),
    );
    storage.armed.store(true, Ordering::Release);
    let writer = |k: &'static [u8]| {
        let s = Arc::clone(&s);
        std::thread::spawn(move || s.put(k, b"v"))
    };
    let a = writer(b"a");
    // B starts once A's entry is written (A waits in its write for B's).
    storage.wait_for(|| storage.writes.load(Ordering::Acquire) >= 1);
    let b = writer(b"b");
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    assert!(a.is_err(), "the writer that ran the failed sync: {a:?}");
    let e = b.expect_err("a writer whose write the failed sync covered is told too");
    assert!(e.to_string().contains("group.sfs"), "{e}");
    storage.armed.store(false, Ordering::Release);
    // Neither is in the store, and a new sync succeeds.
    assert_eq!(s.get(b"a").unwrap(), None);
    assert_eq!(s.get(b"b").unwrap(), None);
    s.sync().unwrap();
    s.check_invariants().unwrap();
}
