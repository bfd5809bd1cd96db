//! Full disks and I/O errors. A write that the OS refuses returns
//! `Error::Io` naming the file; the store stays usable and consistent (what
//! it holds in memory is what a fresh open of its file finds), nothing
//! written before is lost, and once space is freed writes succeed again.
//!
//! - On a real, size-limited file system (a 2 MiB tmpfs mounted for the test
//!   when the process may mount; otherwise the test says so and skips);
//! - on the fault-injecting storage with a byte budget (always);
//! - with `EIO` from `fdatasync`;
//! - with each write, length change and sync of a workload failing in turn,
//!   once or until the disk heals a few operations later.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use sfs::testing::{Call, FaultError, FaultStorage, MemStorage, Storage, TestRng};
use sfs::{Clock, Error, ManualClock, Options, Store, SyncPolicy};

/// Key → value.
type Contents = BTreeMap<Vec<u8>, Vec<u8>>;

fn contents(s: &Store) -> Contents {
    s.iter().map(|r| r.unwrap()).collect()
}

/// What a fresh read-only open of these bytes holds (clock at `now`).
fn contents_of_bytes(bytes: Vec<u8>, now: i64) -> Contents {
    let mem = Arc::new(MemStorage::with_bytes(bytes));
    let s = Options::new()
        .read_only(true)
        .clock(Arc::new(ManualClock::new(now)))
        .open_on("copy.sfs", mem as Arc<dyn Storage>)
        .unwrap();
    contents(&s)
}

fn is_enospc(e: &Error) -> bool {
    match e {
        Error::Io { source, .. } => source.raw_os_error() == Some(libc::ENOSPC),
        _ => false,
    }
}

/// A tmpfs of `size` mounted on a new directory, unmounted on drop (a
/// failing test unwinds through the drop too).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` when mounting is not permitted here.
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "note: cannot mount a tmpfs here ({}), the real-disk test is skipped; \
                 the fault-injecting one runs",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("warning: could not unmount {}", self.dir.path().display());
        }
    }
}

/// Where a store lives for the full-disk scenario.
trait Disk {
    fn open(&self) -> Store;
    /// The file's bytes as they are now.
    fn bytes(&self) -> Vec<u8>;
    fn name(&self) -> &str;
}

struct RealDisk(PathBuf);

impl Disk for RealDisk {
    fn open(&self) -> Store {
        Options::new()
            .sync(SyncPolicy::Always)
            .open(&self.0)
            .unwrap()
    }
    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.0).unwrap()
    }
    fn name(&self) -> &str {
        "full.sfs"
    }
}

struct FakeDisk(Arc<FaultStorage>);

impl Disk for FakeDisk {
    fn open(&self) -> Store {
        Options::new()
            .sync(SyncPolicy::Always)
            .open_on("full.sfs", self.0.clone() as Arc<dyn Storage>)
            .unwrap()
    }
    fn bytes(&self) -> Vec<u8> {
        self.0.bytes()
    }
    fn name(&self) -> &str {
        "full.sfs"
    }
}

fn value(i: usize, len: usize) -> Vec<u8> {
    let mut v = format!("value {i}:").into_bytes();
    v.resize(len, (i % 251) as u8);
    v
}

/// Fills the disk, checks the error and the store, frees space, writes again.
fn fill_the_disk(disk: &dyn Disk) {
    let s = disk.open();
    let mut model = Contents::new();
    let mut err = None;
    for i in 0..10_000 {
        let k = format!("key-{i:05}").into_bytes();
        let v = value(i, 8000 + (i * 977) % 9000);
        match s.put(&k, &v) {
            Ok(()) => {
                model.insert(k, v);
            }
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let e = err.expect("the disk never filled up");
    assert!(is_enospc(&e), "{e}");
    assert!(e.to_string().contains(disk.name()), "{e}");
    assert!(model.len() > 10, "only {} entries fit", model.len());
    // Usable and consistent: memory is what the file holds.
    s.check_invariants().unwrap();
    assert_eq!(contents(&s), model, "nothing written before is lost");
    assert_eq!(
        contents_of_bytes(disk.bytes(), 0),
        model,
        "memory matches the file"
    );
    // More writes that need space fail the same way and change nothing.
    let (first, _) = model.iter().next().unwrap();
    let e = s.put(first, value(0, 200_000)).unwrap_err();
    assert!(is_enospc(&e), "{e}");
    let e = s.put(b"another", value(1, 100_000)).unwrap_err();
    assert!(is_enospc(&e), "{e}");
    s.check_invariants().unwrap();
    assert_eq!(contents(&s), model);
    // Reads, syncs and deletes still work on a full disk.
    s.sync().unwrap();
    let doomed: Vec<Vec<u8>> = model.keys().rev().take(model.len() / 3).cloned().collect();
    for k in &doomed {
        assert!(s.delete(k).unwrap());
        model.remove(k);
    }
    s.check_invariants().unwrap();
    // Space is back: writes succeed again.
    for i in 0..5 {
        let k = format!("again-{i}").into_bytes();
        let v = value(i, 9000);
        s.put(&k, &v).unwrap();
        model.insert(k, v);
    }
    s.check_invariants().unwrap();
    assert_eq!(contents(&s), model);
    drop(s);
    let s = disk.open();
    s.check_invariants().unwrap();
    assert_eq!(contents(&s), model, "after a reopen");
}

#[test]
fn a_full_file_system_is_an_error_and_the_store_survives_it() {
    let Some(fs) = Tmpfs::mount("2m") else {
        return;
    };
    fill_the_disk(&RealDisk(fs.path().join("full.sfs")));
}

#[test]
fn a_full_disk_simulated_by_a_byte_budget() {
    let fs = Arc::new(FaultStorage::new());
    fs.set_space_budget(Some(2 << 20));
    fill_the_disk(&FakeDisk(fs.clone()));
    assert!(fs.failures() >= 3);
}

#[test]
fn eio_from_fdatasync_is_an_error_and_the_store_stays_consistent() {
    let fs = Arc::new(FaultStorage::new());
    let s = Options::new()
        .sync(SyncPolicy::Always)
        .open_on("eio.sfs", fs.clone() as Arc<dyn Storage>)
        .unwrap();
    s.put(b"a", b"1").unwrap();
    s.put(b"b", b"2").unwrap();
    // A put whose sync fails is not published: the old value stays.
    fs.fail_next(Call::Sync, FaultError::Io);
    let e = s.put(b"a", b"new").unwrap_err();
    assert!(
        matches!(&e, Error::Io { source, .. } if source.raw_os_error() == Some(libc::EIO)),
        "{e}"
    );
    assert!(e.to_string().contains("eio.sfs"), "{e}");
    assert_eq!(s.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
    s.check_invariants().unwrap();
    assert_eq!(contents_of_bytes(fs.bytes(), 0), contents(&s));
    // A delete whose sync fails reports it; memory and file agree either way.
    fs.fail_next(Call::Sync, FaultError::Io);
    assert!(s.delete(b"b").is_err());
    s.check_invariants().unwrap();
    assert_eq!(contents_of_bytes(fs.bytes(), 0), contents(&s));
    // The next writes succeed.
    s.put(b"a", b"newer").unwrap();
    s.put(b"c", b"3").unwrap();
    assert_eq!(s.get(b"a").unwrap().as_deref(), Some(&b"newer"[..]));
    s.check_invariants().unwrap();
    drop(s);

    // Under Never: a failed sync() keeps old copies until a sync succeeds.
    let fs = Arc::new(FaultStorage::new());
    let open = || {
        Options::new()
            .sync(SyncPolicy::Never)
            .open_on("eio.sfs", fs.clone() as Arc<dyn Storage>)
            .unwrap()
    };
    let s = open();
    s.put(b"k", b"old").unwrap();
    s.sync().unwrap();
    s.put(b"k", b"new").unwrap();
    fs.fail_next(Call::Sync, FaultError::Io);
    assert!(s.sync().is_err());
    assert!(
        s.stats().pending_free_bytes > 0,
        "the old copy is still kept"
    );
    // What a power loss now would leave: the old value at least.
    let rec = fs.recording();
    let n = rec.events.len();
    for seed in 0..20 {
        let got = contents_of_bytes(rec.power_loss(n, seed), 0);
        let k = got.get(&b"k"[..]).map(Vec::as_slice);
        assert!(k == Some(b"old") || k == Some(b"new"), "{k:?}");
    }
    s.sync().unwrap();
    assert_eq!(s.stats().pending_free_bytes, 0);
    s.check_invariants().unwrap();
    drop(s);
    assert_eq!(open().get(b"k").unwrap().as_deref(), Some(&b"new"[..]));
}

#[test]
fn a_delete_that_cannot_free_an_old_copy_fails_and_keeps_the_key() {
    // Under Never the old copy of an overwritten key waits for a sync. A
    // delete frees it first; when that write failed, the error was ignored
    // and the newest copy freed, so the old value came back at the next open.
    let fs = Arc::new(FaultStorage::new());
    let s = Options::new()
        .sync(SyncPolicy::Never)
        .open_on("d.sfs", fs.clone() as Arc<dyn Storage>)
        .unwrap();
    s.put(b"k", b"old").unwrap();
    s.sync().unwrap();
    s.put(b"k", b"new").unwrap();
    fs.fail_next(Call::Write, FaultError::Io);
    let e = s.delete(b"k").unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert_eq!(s.get(b"k").unwrap().as_deref(), Some(&b"new"[..]));
    s.check_invariants().unwrap();
    assert_eq!(contents_of_bytes(fs.bytes(), 0), contents(&s));
    assert!(s.delete(b"k").unwrap());
    assert_eq!(contents_of_bytes(fs.bytes(), 0), Contents::new());
    s.check_invariants().unwrap();
}

/// A store on a fault-injecting storage, with `Always` or `Never`.
fn faulty(policy: SyncPolicy) -> (Arc<FaultStorage>, Store) {
    let fs = Arc::new(FaultStorage::new());
    let s = Options::new()
        .sync(policy)
        .open_on("e.sfs", fs.clone() as Arc<dyn Storage>)
        .unwrap();
    (fs, s)
}

/// Memory matches the file, and the invariants hold.
fn consistent(fs: &FaultStorage, s: &Store) {
    s.check_invariants().unwrap();
    assert_eq!(contents_of_bytes(fs.bytes(), 0), contents(s));
}

#[test]
fn a_split_whose_remainder_header_cannot_be_written_changes_nothing() {
    // Splitting a free block writes the remainder's free header. A failure
    // was ignored: the free list held a block the file had no header for.
    let (fs, s) = faulty(SyncPolicy::Always);
    s.put(b"a", [1u8; 2000]).unwrap();
    s.put(b"b", b"2").unwrap();
    assert!(s.delete(b"a").unwrap());
    fs.fail_next(Call::Write, FaultError::Io); // the remainder's header
    let e = s.put(b"c", b"3").unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    consistent(&fs, &s);
    s.put(b"c", b"3").unwrap();
    consistent(&fs, &s);
}

#[test]
fn a_put_whose_sync_and_rollback_both_fail_leaves_memory_as_the_file() {
    // Under Always a put whose sync fails takes its entry back by writing a
    // free header over it. If that write fails too, the entry stays valid on
    // disk with the newest sequence number: memory must then hold it too.
    let (fs, s) = faulty(SyncPolicy::Always);
    s.put(b"k", b"old").unwrap();
    let (writes, _, syncs) = fs.calls();
    fs.fail(Call::Sync, syncs + 1, FaultError::Io);
    fs.fail(Call::Write, writes + 2, FaultError::Io);
    assert!(s.put(b"k", b"new").is_err());
    assert_eq!(fs.failures(), 2);
    consistent(&fs, &s);
    assert_eq!(s.get(b"k").unwrap().as_deref(), Some(&b"new"[..]));
}

#[test]
fn an_old_copy_whose_free_header_failed_never_comes_back() {
    // Under Always an overwrite frees the old copy at once. When that write
    // failed the block was set aside and forgotten by deletes: deleting the
    // key freed the newest copy, and the old value came back at the next open.
    let (fs, s) = faulty(SyncPolicy::Always);
    s.put(b"k", b"old").unwrap();
    let (writes, _, _) = fs.calls();
    // The new entry is written, synced, then the old copy's header freed.
    fs.fail(Call::Write, writes + 2, FaultError::Io);
    s.put(b"k", b"new").unwrap();
    assert_eq!(fs.failures(), 1);
    consistent(&fs, &s);
    let _ = s.delete(b"k");
    consistent(&fs, &s);
    assert!(s.delete(b"k").is_ok());
    s.sync().unwrap();
    consistent(&fs, &s);
    assert_eq!(contents_of_bytes(fs.bytes(), 0), Contents::new());
}

#[test]
fn a_merged_free_header_that_cannot_be_written_leaves_the_parts_as_they_are() {
    // Freeing a block next to free space writes one header for the merged
    // block. When that failed, the free list kept the merged block while the
    // file still had the parts.
    for policy in [SyncPolicy::Always, SyncPolicy::Never] {
        let (fs, s) = faulty(policy);
        s.put(b"a", [1u8; 300]).unwrap();
        s.put(b"b", [2u8; 300]).unwrap();
        s.put(b"c", [3u8; 300]).unwrap();
        // Under `Always` the file grew with a reserve behind c: one free
        // block of its own.
        let tail = s.stats().free_blocks;
        assert!(s.delete(b"a").unwrap());
        let (writes, _, _) = fs.calls();
        fs.fail(Call::Write, writes + 2, FaultError::Io); // b's, then the merged header
        s.delete(b"b").unwrap();
        assert_eq!(fs.failures(), 1);
        consistent(&fs, &s);
        // The next sync merges them after all.
        s.sync().unwrap();
        consistent(&fs, &s);
        assert_eq!(
            s.stats().free_blocks,
            tail + 1,
            "{policy:?}: a and b merged"
        );
        assert_eq!(s.stats().pending_free_bytes, 0);
    }
}

#[test]
fn a_failed_entry_write_never_leaves_a_header_that_hides_later_entries() {
    // A new entry split from a free block: when its write failed and the free
    // header meant to replace it failed too, the block kept the header of the
    // whole free block it came from. Once the remainder held an entry, the
    // next open took that stale header's word and skipped the entry.
    let (fs, s) = faulty(SyncPolicy::Never);
    s.put(b"a", [1u8; 2000]).unwrap();
    s.put(b"b", b"2").unwrap();
    assert!(s.delete(b"a").unwrap());
    let (writes, _, _) = fs.calls();
    fs.fail(Call::Write, writes + 2, FaultError::Io);
    fs.fail(Call::Write, writes + 3, FaultError::Io);
    assert!(s.put(b"c", b"3").is_err());
    fs.heal();
    s.put(b"d", [4u8; 100]).unwrap();
    consistent(&fs, &s);
    // A crash now: the file as it is.
    let after_crash = contents_of_bytes(fs.bytes(), 0);
    assert_eq!(after_crash.get(&b"d"[..]).map(Vec::len), Some(100));
}

// ---- every I/O call failing in turn ----------------------------------------

#[derive(Clone, Copy, Debug)]
enum Op {
    Put(u8, u16),
    PutTtl(u8, u16),
    Delete(u8),
    Purge,
    Clear,
    Sync,
    Advance,
}

fn workload(seed: u64, n: usize) -> Vec<Op> {
    let mut r = TestRng::new(seed);
    let sizes = [0u16, 20, 100, 400, 1500, 4000];
    (0..n)
        .map(|_| {
            let k = r.below(8) as u8;
            let size = sizes[r.below(sizes.len() as u64) as usize];
            match r.below(100) {
                0..=49 => Op::Put(k, size),
                50..=59 => Op::PutTtl(k, size),
                60..=79 => Op::Delete(k),
                80..=84 => Op::Purge,
                85..=86 => Op::Clear,
                87..=93 => Op::Sync,
                _ => Op::Advance,
            }
        })
        .collect()
}

fn key(k: u8) -> Vec<u8> {
    format!("key-{k}").into_bytes()
}

/// Which calls fail.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// The `nth` call of its kind, once.
    Once(Call, u64, FaultError),
    /// Every call of its kind from the `nth` on, until the disk heals
    /// three operations after the first failure.
    Until(Call, u64, FaultError),
}

/// Runs the workload with a fault. After an operation that met it each key
/// holds its value from before or after the operation; every other operation
/// behaves exactly as the model says; memory always matches a fresh open of
/// the file; and everything survives a reopen.
fn run_with_fault(policy: SyncPolicy, ops: &[Op], fault: Option<Fault>) -> (u64, u64, u64) {
    let fs = Arc::new(FaultStorage::new());
    let clock = Arc::new(ManualClock::new(1_000_000));
    // No background sweep: the faults are counted for the workload's calls.
    let opts = Options::new()
        .sync(policy)
        .clock(clock.clone())
        .active_expiry(None);
    let s = opts
        .open_on("f.sfs", fs.clone() as Arc<dyn Storage>)
        .unwrap();
    match fault {
        Some(Fault::Once(call, nth, err)) => fs.fail(call, nth, err),
        Some(Fault::Until(call, nth, err)) => fs.fail_from(call, nth, err),
        None => {}
    }
    let mut heal_at = None;
    let what = |i: usize, op: &Op| format!("{policy:?}, fault {fault:?}, op {i} {op:?}");
    let mut model = Contents::new();
    for (i, op) in ops.iter().enumerate() {
        if heal_at == Some(i) {
            fs.heal();
        }
        let before = contents(&s);
        let failures = fs.failures();
        let v = format!("{i}:{op:?}").into_bytes();
        // What the store should hold if the operation happened.
        let mut intended = model.clone();
        let r: sfs::Result<()> = match *op {
            Op::Put(k, n) => {
                let mut v = v.clone();
                v.resize(v.len() + usize::from(n), 7);
                intended.insert(key(k), v.clone());
                s.put(key(k), &v)
            }
            Op::PutTtl(k, n) => {
                let mut v = v.clone();
                v.resize(v.len() + usize::from(n), 9);
                intended.insert(key(k), v.clone());
                s.put_with_ttl(key(k), &v, Duration::from_millis(50))
            }
            Op::Delete(k) => {
                intended.remove(&key(k));
                s.delete(key(k)).map(drop)
            }
            Op::Purge => s.purge_expired().map(drop),
            Op::Clear => {
                intended.clear();
                s.clear()
            }
            Op::Sync => s.sync(),
            Op::Advance => {
                clock.advance(Duration::from_millis(40));
                Ok(())
            }
        };
        let after = contents(&s);
        // Expired entries vanish by themselves.
        intended.retain(|k, _| after.contains_key(k) || !model.contains_key(k));
        if fs.failures() > failures {
            // This operation met the fault: an error, or it got over it.
            heal_at.get_or_insert(i + 3);
            if let Err(e) = &r {
                assert!(matches!(e, Error::Io { .. }), "{}: {e}", what(i, op));
                assert!(e.to_string().contains("f.sfs"), "{e}");
            }
            let mut touched = intended.clone();
            touched.extend(before.clone());
            for k in touched.keys() {
                let got = after.get(k);
                assert!(
                    got == before.get(k) || got == intended.get(k),
                    "{}: {} neither before nor after",
                    what(i, op),
                    String::from_utf8_lossy(k)
                );
            }
        } else {
            r.unwrap_or_else(|e| panic!("{}: {e}", what(i, op)));
            assert!(
                after == intended,
                "{}: store {}, model {}",
                what(i, op),
                short(&after),
                short(&intended)
            );
        }
        model = after.clone();
        let now = clock.now_millis();
        s.check_invariants()
            .unwrap_or_else(|e| panic!("{}: {e}", what(i, op)));
        let on_disk = contents_of_bytes(fs.bytes(), now);
        assert!(
            on_disk == after,
            "{}: memory and file disagree: memory {}, file {}",
            what(i, op),
            short(&after),
            short(&on_disk)
        );
    }
    let expect = contents(&s);
    drop(s);
    fs.heal();
    let s = opts
        .open_on("f.sfs", fs.clone() as Arc<dyn Storage>)
        .unwrap();
    s.check_invariants().unwrap();
    assert_eq!(contents(&s), expect, "{policy:?}, fault {fault:?}: reopen");
    let (w, l, y) = fs.calls();
    (w, l, y)
}

/// Keys and the start of their values, for messages.
fn short(c: &Contents) -> String {
    c.iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                String::from_utf8_lossy(k),
                String::from_utf8_lossy(&v[..v.len().min(16)])
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn every_call_fails_in_turn(policy: SyncPolicy, seed: u64) {
    let ops = workload(seed, 100);
    let (writes, set_lens, syncs) = run_with_fault(policy, &ops, None);
    let mut runs = 0;
    for (call, count, err) in [
        (Call::Write, writes, FaultError::Io),
        (Call::SetLen, set_lens, FaultError::NoSpace),
        (Call::Sync, syncs, FaultError::Io),
    ] {
        for nth in 1..=count {
            run_with_fault(policy, &ops, Some(Fault::Once(call, nth, err)));
            run_with_fault(policy, &ops, Some(Fault::Until(call, nth, err)));
            runs += 2;
        }
    }
    eprintln!("{policy:?}: {writes} writes, {set_lens} length changes, {syncs} syncs; {runs} runs");
}

#[test]
fn each_io_call_failing_in_turn_under_always() {
    for seed in [1, 3, 5] {
        every_call_fails_in_turn(SyncPolicy::Always, seed);
    }
}

#[test]
fn each_io_call_failing_in_turn_under_never() {
    for seed in [2, 4, 6] {
        every_call_fails_in_turn(SyncPolicy::Never, seed);
    }
}

/// Under `Always` a small file grows by at least 16 KiB at a time; on a
/// disk without room for that, a put that fits without the reserve still
/// succeeds (the file grows by the entry alone), and the next put that does
/// not fit at all is `ENOSPC` with the store as it was.
#[test]
fn a_growth_reserve_that_does_not_fit_is_dropped_not_the_put() {
    let (fs, s) = faulty(SyncPolicy::Always);
    s.put(b"a", [1u8; 100]).unwrap();
    let len = fs.bytes().len() as u64;
    let (_, grown, _) = fs.calls();
    // Room for the reserve's free space the first put left, plus 2 KiB.
    fs.set_space_budget(Some(len + 2048));
    let mut i = 0u32;
    while fs.bytes().len() as u64 <= len {
        s.put(format!("b{i}"), [2u8; 100]).unwrap(); // into the reserve
        i += 1;
    }
    assert!(i > 50, "only {i} puts went into the reserve");
    let (_, grown_now, _) = fs.calls();
    assert!(
        fs.failures() > 0,
        "the growth with a reserve was not refused"
    );
    assert!(grown_now >= grown + 2, "no retry without the reserve");
    assert!(fs.bytes().len() as u64 <= len + 2048);
    // Fill what is left, then one more: ENOSPC, nothing changed.
    let e = loop {
        match s.put(format!("c{i}"), [3u8; 100]) {
            Ok(()) => i += 1,
            Err(e) => break e,
        }
    };
    assert!(is_enospc(&e), "{e}");
    consistent(&fs, &s);
    assert_eq!(s.get(b"a").unwrap().unwrap(), [1u8; 100]);
}
