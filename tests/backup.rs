//! `Store::backup`: a compacted copy holding exactly the store's contents at
//! the final pause, taken while writers and readers carry on; cancel and
//! destination failures leave nothing behind; a kill -9 during a backup
//! leaves the destination absent or whole.

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sfs::inspect::report::{Report, ScanOptions};
use sfs::testing::{FileStorage, Storage, TestRng};
use sfs::{
    BackupCancel, BackupOptions, BackupPhase, Error, IfBehind, ManualClock, Options, PutOptions,
    Store, SyncPolicy,
};

/// Key → (value, metadata, expiry ms).
type Contents = BTreeMap<Vec<u8>, (Vec<u8>, Vec<u8>, u64)>;

fn ms(t: Option<SystemTime>) -> u64 {
    t.map_or(0, |t| {
        t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
    })
}

fn contents(s: &Store) -> Contents {
    let mut c = Contents::new();
    for k in s.keys() {
        if let Some(e) = s.get_entry(&k).unwrap() {
            c.insert(k, (e.value, e.metadata, ms(e.expires_at)));
        }
    }
    c
}

/// A store's storage with a hook at its named points (`Storage::point`):
/// the seam that tells a test where a backup is.
struct Hooked {
    inner: Arc<dyn Storage>,
    hook: Box<dyn Fn(&'static str) + Send + Sync>,
}

impl Storage for Hooked {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, parts: &[&[u8]]) -> std::io::Result<()> {
        self.inner.write_at(offset, parts)
    }
    fn write_at_before_sync(&self, offset: u64, parts: &[&[u8]]) -> std::io::Result<()> {
        self.inner.write_at_before_sync(offset, parts)
    }
    fn write_word(&self, offset: u64, word: u64) -> std::io::Result<()> {
        self.inner.write_word(offset, word)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync(&self) -> std::io::Result<()> {
        self.inner.sync()
    }
    unsafe fn view(&self, offset: u64, len: u64) -> Option<&[u8]> {
        // SAFETY: the caller's promise is passed on unchanged.
        unsafe { self.inner.view(offset, len) }
    }
    fn point(&self, name: &'static str) {
        (self.hook)(name)
    }
}

/// Opens the store file at `path` with a hook at its named points.
fn open_hooked(
    path: &Path,
    opts: Options,
    hook: impl Fn(&'static str) + Send + Sync + 'static,
) -> Store {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    let storage = Arc::new(Hooked {
        inner: Arc::new(FileStorage::new(file, true).unwrap()),
        hook: Box::new(hook),
    });
    opts.open_on(path, storage).unwrap()
}

/// Checks the copy at `path` as `sfs-dump --check` would (no problem, no
/// free space, nothing expired at `now`) and returns what it holds.
fn check_copy(path: &Path, now: i64, len: u64) -> Contents {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(bytes.len() as u64, len, "the report's length");
    let report = Report::scan(&bytes[..], ScanOptions::at(now))
        .unwrap()
        .expect("a store file");
    let found = report.check(&bytes[..]).unwrap();
    assert_eq!(found.problems_total, 0, "{:?}", found.problems);
    assert_eq!(found.notes_total, 0, "{:?}", found.notes);
    let s = &report.summary;
    assert_eq!(s.format_version, 1);
    assert_eq!((s.free_blocks, s.free_bytes), (0, 0), "compacted: {s:?}");
    assert_eq!(s.expired_entries, 0, "{s:?}");
    let clock = Arc::new(ManualClock::new(now));
    let copy = Options::new()
        .read_only(true)
        .clock(clock)
        .open(path)
        .unwrap();
    assert_eq!(copy.stats().free_bytes, 0);
    let c = contents(&copy);
    assert_eq!(c.len() as u64, s.live_entries);
    c
}

/// No file under the destination's name, and no temporary file beside it.
fn nothing_left(dir: &Path, dest: &str) {
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(dest) || n.contains("sfs-backup"))
        .collect();
    assert!(names.is_empty(), "left behind: {names:?}");
}

fn value_of(tag: &str, len: usize) -> Vec<u8> {
    let mut v = tag.as_bytes().to_vec();
    v.resize(len.max(tag.len()), b'.');
    v
}

#[test]
fn a_backup_holds_every_entry_with_metadata_and_expiry_and_no_free_space() {
    let t = common::TempStore::new();
    let clock = common::clock();
    let store = t.open(&clock);
    let mut rng = TestRng::new(7);
    for i in 0..3000u32 {
        let k = format!("key-{i:05}");
        let v = value_of(&k, rng.below(3000) as usize);
        match i % 5 {
            0 => store
                .put_with(
                    &k,
                    &v,
                    &PutOptions::new().metadata(format!("m{i}").as_bytes()),
                )
                .unwrap(),
            1 => store
                .put_with_ttl(&k, &v, Duration::from_secs(1 + u64::from(i % 7)))
                .unwrap(),
            _ => store.put(&k, &v).unwrap(),
        }
    }
    for i in (0..3000u32).step_by(3) {
        store.delete(format!("key-{i:05}")).unwrap(); // holes
    }
    clock.advance(Duration::from_secs(4)); // some TTLs have passed, unpurged
    let expected = contents(&store);
    assert!(store.stats().free_bytes > 0 && store.stats().entries > expected.len());
    let dest = t.dir.path().join("copy.sfs");
    let report = store.backup(&dest).unwrap();
    assert_eq!(report.entries as usize, expected.len());
    assert_eq!(report.damaged_entries, 0);
    let got = check_copy(&dest, clock.now_millis_for_tests(), report.file_len);
    assert_eq!(got, expected);
    // Restore: the copy opens read-write as a store like any other.
    let restored = Options::new().clock(clock.clone()).open(&dest).unwrap();
    restored.check_invariants().unwrap();
    assert_eq!(contents(&restored), expected);
    restored.put(b"after", b"restore").unwrap();
}

/// `ManualClock::now_millis` through the `Clock` trait.
trait Now {
    fn now_millis_for_tests(&self) -> i64;
}

impl Now for Arc<ManualClock> {
    fn now_millis_for_tests(&self) -> i64 {
        sfs::Clock::now_millis(&**self)
    }
}

#[test]
fn a_backup_keeps_the_eviction_order_a_reopen_would_have() {
    let t = common::TempStore::new();
    let clock = common::clock();
    let cap = 50;
    let opts = t.options(&clock).max_entries(cap);
    let store = opts.open(&t.path).unwrap();
    let mut rng = TestRng::new(11);
    for i in 0..400u32 {
        let k = format!("k{}", rng.below(80));
        store.put(&k, value_of(&format!("{k}-{i}"), 40)).unwrap();
        if i % 9 == 0 {
            store.touch(&k, Duration::from_secs(3600)).unwrap();
        }
    }
    let dest = t.dir.path().join("copy.sfs");
    let report = store.backup(&dest).unwrap();
    assert_eq!(report.entries as usize, cap);
    let before = contents(&store);
    store.close().unwrap();
    // The store reopened and the copy opened, with the cap: the same
    // contents (read in opens of their own: a read is a use), and new
    // inserts evict the same keys in the same order.
    for p in [&t.path, &dest] {
        assert_eq!(contents(&opts.open(p).unwrap()), before);
    }
    let a = opts.open(&t.path).unwrap();
    let b = opts.open(&dest).unwrap();
    for i in 0..cap {
        let k = format!("new{i}");
        a.put(&k, b"x").unwrap();
        b.put(&k, b"x").unwrap();
        assert_eq!(
            common::sorted_keys(&a),
            common::sorted_keys(&b),
            "insert {i}"
        );
    }
}

/// One write of a writer thread, with the ticks at which it started and
/// returned.
#[derive(Clone, Debug)]
struct Logged {
    key: Vec<u8>,
    /// `None`: a delete.
    put: Option<(Vec<u8>, Vec<u8>, u64)>,
    start: u64,
    end: u64,
}

fn run_with_writers(opts: BackupOptions, seed: u64) {
    const WRITERS: usize = 4;
    const KEYS: u64 = 300;
    let t = common::TempStore::new();
    let clock = common::clock();
    let tick = Arc::new(AtomicU64::new(0));
    let pauses = Arc::new(Mutex::new(Vec::new()));
    let (tk, ps) = (tick.clone(), pauses.clone());
    let store = Arc::new(open_hooked(&t.path, t.options(&clock), move |name| {
        if name == "backup: pause" {
            // Writers are stopped here: every write has returned or waits.
            ps.lock().unwrap().push(tk.fetch_add(1, Ordering::SeqCst));
        }
    }));
    // The store before the writers start: theirs keys, plus expired ones.
    let mut start = Contents::new();
    for w in 0..WRITERS {
        for k in 0..KEYS {
            let key = format!("w{w}-{k:03}").into_bytes();
            let v = value_of(&format!("w{w}-{k:03}-init"), 700);
            store.put(&key, &v).unwrap();
            start.insert(key, (v, Vec::new(), 0));
        }
    }
    for k in 0..200 {
        store
            .put_with_ttl(format!("gone-{k}"), b"x", Duration::from_secs(1))
            .unwrap();
    }
    clock.advance(Duration::from_secs(2));
    let expiry = (clock.now_millis_for_tests() + 3_600_000) as u64;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (store, tick, stop, started) =
                (store.clone(), tick.clone(), stop.clone(), started.clone());
            std::thread::spawn(move || {
                let mut rng = TestRng::new(seed * 31 + w as u64);
                let mut log = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let key = format!("w{w}-{:03}", rng.below(KEYS)).into_bytes();
                    let v = value_of(
                        &format!("{}-{i}", String::from_utf8_lossy(&key)),
                        rng.below(2000) as usize,
                    );
                    let s = tick.fetch_add(1, Ordering::SeqCst);
                    let put = match rng.below(10) {
                        0 | 1 => {
                            store.delete(&key).unwrap();
                            None
                        }
                        2 => {
                            let m = format!("meta-{i}").into_bytes();
                            store
                                .put_with(&key, &v, &PutOptions::new().metadata(&m))
                                .unwrap();
                            Some((v, m, 0))
                        }
                        3 => {
                            store
                                .put_with_expiry(
                                    &key,
                                    &v,
                                    UNIX_EPOCH + Duration::from_millis(expiry),
                                )
                                .unwrap();
                            Some((v, Vec::new(), expiry))
                        }
                        _ => {
                            store.put(&key, &v).unwrap();
                            Some((v, Vec::new(), 0))
                        }
                    };
                    let e = tick.fetch_add(1, Ordering::SeqCst);
                    log.push(Logged {
                        key,
                        put,
                        start: s,
                        end: e,
                    });
                    if i == 50 {
                        started.fetch_add(1, Ordering::SeqCst);
                    }
                    i += 1;
                }
                log
            })
        })
        .collect();
    let readers: Vec<_> = (0..4)
        .map(|r| {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut rng = TestRng::new(seed * 77 + r);
                let mut reads = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let key = format!("w{}-{:03}", rng.below(WRITERS as u64), rng.below(KEYS));
                    if let Some(v) = store.get(&key).unwrap() {
                        assert!(
                            v.starts_with(key.as_bytes()),
                            "{key}: a whole value of its own"
                        );
                    }
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    while started.load(Ordering::SeqCst) < WRITERS {
        std::thread::yield_now();
    }
    let dest = t.dir.path().join("copy.sfs");
    let phases = Arc::new(Mutex::new(Vec::new()));
    let ph = phases.clone();
    let opts = opts.on_progress(move |p| ph.lock().unwrap().push(p.clone()));
    let report = store.backup_with(&dest, &opts).unwrap();
    stop.store(true, Ordering::SeqCst);
    let logs: Vec<Vec<Logged>> = writers.into_iter().map(|h| h.join().unwrap()).collect();
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    let pause = *pauses.lock().unwrap().last().expect("a pause");
    let got = check_copy(&dest, clock.now_millis_for_tests(), report.file_len);
    // Per writer: the writes that returned before the pause are in, those
    // begun after it are not; the one in flight at the pause (at most one:
    // each writer waits for its own) may be either.
    let mut in_flight_applied = 0;
    for (w, log) in logs.iter().enumerate() {
        let prefix = format!("w{w}-").into_bytes();
        let mine: Contents = got
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut model: Contents = start
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let apply = |m: &mut Contents, l: &Logged| match &l.put {
            Some(p) => drop(m.insert(l.key.clone(), p.clone())),
            None => drop(m.remove(&l.key)),
        };
        let done = log.iter().take_while(|l| l.end < pause).count();
        assert!(log[done..].iter().skip(1).all(|l| l.start > pause));
        for l in &log[..done] {
            apply(&mut model, l);
        }
        if mine == model {
            continue;
        }
        let next = log.get(done).filter(|l| l.start < pause);
        let Some(next) = next else {
            panic!("writer {w}: the copy does not hold the writes acknowledged before the pause");
        };
        apply(&mut model, next);
        assert!(
            mine == model,
            "writer {w}: the copy is not the state at the pause"
        );
        in_flight_applied += 1;
    }
    assert_eq!(got.keys().filter(|k| k.starts_with(b"gone-")).count(), 0);
    assert_eq!(got.len(), report.entries as usize);
    let phases = phases.lock().unwrap();
    assert_eq!(phases.last().map(|p| p.phase), Some(BackupPhase::Done));
    assert!(
        phases
            .windows(2)
            .all(|p| p[0].entries_copied <= p[1].entries_copied)
    );
    eprintln!(
        "{} rounds, {} recopied, pause {:?}, {} writes, {in_flight_applied} in flight at the pause and in",
        report.rounds,
        report.recopied_entries,
        report.pause,
        logs.iter().map(Vec::len).sum::<usize>()
    );
    store.check_invariants().unwrap();
}

#[test]
fn a_backup_beside_four_writers_and_four_readers_equals_the_store_at_the_pause() {
    for seed in 0..3 {
        run_with_writers(BackupOptions::new(), seed);
    }
}

#[test]
fn a_backup_in_several_rounds_equals_the_store_at_the_pause() {
    // No pause budget: every round that leaves a changed key is followed by
    // another, up to five; then the writers wait for what is left.
    for seed in 0..3 {
        let opts = BackupOptions::new()
            .pause_budget(Duration::ZERO)
            .max_rounds(5)
            .if_behind(IfBehind::PauseUpTo(Duration::from_secs(30)));
        run_with_writers(opts, 10 + seed);
    }
}

/// A store of `n` entries and its contents.
fn filled(t: &common::TempStore, clock: &Arc<ManualClock>, n: u32) -> (Store, Contents) {
    let store = t.open(clock);
    for i in 0..n {
        let k = format!("key-{i:05}");
        store.put(&k, value_of(&k, 200)).unwrap();
    }
    let c = contents(&store);
    (store, c)
}

#[test]
fn a_cancelled_backup_leaves_the_store_unchanged_and_nothing_behind() {
    let mut rng = TestRng::new(3);
    // How many named points a backup of the store passes (rounds, batches
    // of entries, the final round, the pause): a cancel at each is a cancel
    // at a moment of the backup.
    let points = {
        let t = common::TempStore::new();
        let (store, _) = filled(&t, &common::clock(), 3000);
        store.close().unwrap();
        let n = Arc::new(AtomicU64::new(0));
        let seen = n.clone();
        let store = open_hooked(&t.path, t.options(&common::clock()), move |_| {
            seen.fetch_add(1, Ordering::SeqCst);
        });
        store.backup(t.dir.path().join("copy.sfs")).unwrap();
        n.load(Ordering::SeqCst)
    };
    assert!(points > 10, "{points} points");
    for round in 0..12 {
        let t = common::TempStore::new();
        let clock = common::clock();
        let (store, expected) = filled(&t, &clock, 3000);
        store.close().unwrap();
        // Cancelled at a random point of the backup: in the first round,
        // before the final one, or in the pause.
        let cancel = BackupCancel::new();
        let at = match round {
            0 => points - 1, // the pause
            _ => rng.below(points),
        };
        let seen = Arc::new(AtomicU64::new(0));
        let (c, s) = (cancel.clone(), seen.clone());
        let store = open_hooked(&t.path, t.options(&clock), move |_| {
            if s.fetch_add(1, Ordering::SeqCst) == at {
                c.cancel();
            }
        });
        let opts = BackupOptions::new().cancel_token(cancel);
        let dest = t.dir.path().join("copy.sfs");
        let r = store.backup_with(&dest, &opts);
        assert!(
            matches!(r, Err(Error::BackupCancelled { .. })),
            "round {round}, cancel at {at}: {r:?}"
        );
        let msg = r.unwrap_err().to_string();
        assert!(
            msg.contains("copy.sfs") && msg.contains("cancelled"),
            "{msg}"
        );
        nothing_left(t.dir.path(), "copy.sfs");
        store.check_invariants().unwrap();
        assert_eq!(contents(&store), expected);
        // It keeps serving, and backs up once not cancelled.
        store.put(b"after", b"cancel").unwrap();
        let report = store.backup(&dest).unwrap();
        assert_eq!(report.entries as usize, expected.len() + 1);
    }
}

#[test]
fn a_progress_callback_may_cancel() {
    let t = common::TempStore::new();
    let clock = common::clock();
    let (store, expected) = filled(&t, &clock, 5000);
    let cancel = BackupCancel::new();
    let c = cancel.clone();
    let opts = BackupOptions::new()
        .cancel_token(cancel)
        .on_progress(move |p| {
            if p.entries_copied >= 2048 {
                c.cancel();
            }
        });
    let dest = t.dir.path().join("copy.sfs");
    let r = store.backup_with(&dest, &opts);
    assert!(matches!(r, Err(Error::BackupCancelled { .. })), "{r:?}");
    nothing_left(t.dir.path(), "copy.sfs");
    assert_eq!(contents(&store), expected);
}

/// A writer that fails after `left` bytes.
struct FailingWriter {
    left: usize,
    got: Vec<u8>,
}

impl Write for FailingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::other("the disk is gone"));
        }
        let n = buf.len().min(self.left);
        self.left -= n;
        self.got.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_destination_that_fails_leaves_the_store_unchanged_and_nothing_behind() {
    let t = common::TempStore::new();
    let clock = common::clock();
    let (store, expected) = filled(&t, &clock, 3000);
    let store_dir: Vec<_> = std::fs::read_dir(t.dir.path()).unwrap().collect();
    // A writer that fails part way.
    for left in [0, 100, 500_000] {
        let mut w = FailingWriter {
            left,
            got: Vec::new(),
        };
        let r = store.backup_to(&mut w, &BackupOptions::new());
        let Err(Error::Io { action, .. }) = &r else {
            panic!("{r:?}");
        };
        assert!(action.contains("writer"), "{action}");
        assert_eq!(
            std::fs::read_dir(t.dir.path()).unwrap().count(),
            store_dir.len(),
            "the stream's temporary file is removed"
        );
    }
    // A directory where the copy should go: the rename fails at the end.
    let dest = t.dir.path().join("taken");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("inside"), b"x").unwrap();
    let r = store.backup(&dest);
    let Err(e @ Error::Io { .. }) = &r else {
        panic!("{r:?}");
    };
    assert!(e.to_string().contains("taken"), "{e}");
    assert!(dest.join("inside").exists());
    nothing_left(t.dir.path(), "sfs-backup");
    // A directory that does not exist.
    let r = store.backup(t.dir.path().join("no/such/dir/copy.sfs"));
    assert!(matches!(r, Err(Error::Io { .. })), "{r:?}");
    // The store's own file.
    let r = store.backup(&t.path);
    assert!(matches!(r, Err(Error::InvalidOptions { .. })), "{r:?}");
    store.check_invariants().unwrap();
    assert_eq!(contents(&store), expected);
    store.put(b"still", b"serving").unwrap();
    // And to a writer that works: the same bytes a file gets.
    let mut bytes = Vec::new();
    let report = store.backup_to(&mut bytes, &BackupOptions::new()).unwrap();
    assert_eq!(bytes.len() as u64, report.file_len);
    let file = t.dir.path().join("copy.sfs");
    std::fs::write(&file, &bytes).unwrap();
    let got = check_copy(&file, clock.now_millis_for_tests(), report.file_len);
    assert_eq!(got.len(), expected.len() + 1);
}

#[test]
fn a_backup_that_cannot_keep_up_gives_up_or_pauses_longer_as_asked() {
    let t = common::TempStore::new();
    let clock = common::clock();
    let (store, _) = filled(&t, &clock, 500);
    let store = Arc::new(store);
    // After each round, a write comes in: with no pause budget, there is
    // always something left to copy. (The callback runs under no lock of
    // the store, so it may write to it.)
    let s = store.clone();
    let n = Arc::new(AtomicU64::new(0));
    let writes = move |p: &sfs::BackupProgress| {
        if p.phase == BackupPhase::Copying {
            let i = n.fetch_add(1, Ordering::SeqCst);
            s.put(format!("key-{:05}", i % 500), b"new").unwrap();
        }
    };
    let dest = t.dir.path().join("copy.sfs");
    let give_up = BackupOptions::new()
        .pause_budget(Duration::ZERO)
        .max_rounds(3)
        .on_progress(writes);
    let r = store.backup_with(&dest, &give_up);
    let Err(e @ Error::BackupBehind { rounds: 3, .. }) = &r else {
        panic!("{r:?}");
    };
    assert!(e.to_string().contains("could not keep up"), "{e}");
    nothing_left(t.dir.path(), "copy.sfs");
    let longer = give_up.if_behind(IfBehind::PauseUpTo(Duration::from_secs(60)));
    let report = store.backup_with(&dest, &longer).unwrap();
    assert_eq!(report.rounds, 4);
    assert!(report.recopied_entries > 0);
    let got = check_copy(&dest, clock.now_millis_for_tests(), report.file_len);
    assert_eq!(got, contents(&store));
}

/// Backs up a store of 1,000 entries while `changes` of its keys are
/// rewritten once, from the progress callback during round 1; returns the
/// rounds the backup took, after checking the copy.
fn rounds_after_changing_in_round_1(changes: u32) -> u32 {
    let t = common::TempStore::new();
    let clock = common::clock();
    let (store, _) = filled(&t, &clock, 1000);
    let store = Arc::new(store);
    let s = store.clone();
    let wrote = Arc::new(AtomicU64::new(0));
    let w = wrote.clone();
    let once = move |p: &sfs::BackupProgress| {
        if p.phase == BackupPhase::Copying && p.round == 1 && w.fetch_add(1, Ordering::SeqCst) == 0
        {
            for i in 0..changes {
                s.put(format!("key-{i:05}"), b"changed during round 1")
                    .unwrap();
            }
        }
    };
    let dest = t.dir.path().join("copy.sfs");
    let report = store
        .backup_with(&dest, &BackupOptions::new().on_progress(once))
        .unwrap();
    assert!(wrote.load(Ordering::SeqCst) > 0, "the callback ran");
    let got = check_copy(&dest, clock.now_millis_for_tests(), report.file_len);
    assert_eq!(got, contents(&store));
    report.rounds
}

#[test]
fn the_final_round_waits_until_a_later_round_has_timed_copying_keys() {
    // Round 1 streams entries in file order, faster per entry than the
    // later rounds copy keys found through the index; the
    // final round copies keys. So when many keys changed during round 1
    // they are copied in a round of their own (writers still running)
    // before the pause is predicted, not in a final round planned at round
    // 1's speed (which ran a whole budget and over with busy writers,
    // stopping them twice).
    assert_eq!(
        rounds_after_changing_in_round_1(300),
        3,
        "round 1, the keys' round, the final round"
    );
    // A few keys take no time to copy at any speed: straight to the final
    // round.
    assert_eq!(
        rounds_after_changing_in_round_1(5),
        2,
        "round 1, the final round"
    );
}

#[test]
fn a_bandwidth_limit_slows_the_copy_down() {
    let t = common::TempStore::new();
    let clock = common::clock();
    let (store, _) = filled(&t, &clock, 4000); // about 1 MB of blocks
    let dest = t.dir.path().join("copy.sfs");
    let started = std::time::Instant::now();
    let report = store
        .backup_with(&dest, &BackupOptions::new().bandwidth(4 << 20))
        .unwrap();
    // A lower bound only: the limit makes the copy wait, never hurry.
    let floor = report.file_len as f64 / f64::from(4u32 << 20);
    assert!(
        started.elapsed().as_secs_f64() >= floor * 0.7,
        "{:?} for {} bytes",
        started.elapsed(),
        report.file_len
    );
}

const CHILD_PATH: &str = "SFS_BACKUP_KILL9_PATH";

/// The child of the kill -9 test: a writer thread and backups in a loop.
fn child(path: &str) {
    let store = Arc::new(
        Options::new()
            .sync(SyncPolicy::Never)
            .open(path)
            .expect("child open"),
    );
    let s = store.clone();
    std::thread::spawn(move || {
        for i in 0u64.. {
            let k = format!("key-{:05}", i % 4000);
            s.put(&k, value_of(&format!("{k}-{i}"), 300)).unwrap();
        }
    });
    let dest = Path::new(path).with_file_name("copy.sfs");
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    loop {
        store.backup(&dest).unwrap();
        if writeln!(out, "done").and_then(|()| out.flush()).is_err() {
            return;
        }
    }
}

#[test]
fn a_kill_9_during_a_backup_leaves_the_destination_absent_or_whole() {
    if let Ok(path) = std::env::var(CHILD_PATH) {
        child(&path);
        return;
    }
    let t = common::TempStore::new();
    let clock = common::clock();
    let (store, _) = filled(&t, &clock, 4000);
    store.close().unwrap();
    let dest: PathBuf = t.dir.path().join("copy.sfs");
    let exe = std::env::current_exe().unwrap();
    let mut rng = TestRng::new(0x6b39);
    let (mut whole, mut absent) = (0, 0);
    for round in 0..8 {
        if rng.below(2) == 0 && dest.exists() {
            std::fs::remove_file(&dest).unwrap();
        }
        let mut child = Command::new(&exe)
            .args([
                "a_kill_9_during_a_backup_leaves_the_destination_absent_or_whole",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_PATH, &t.path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let backups = rng.below(3);
        let mut done = 0;
        for line in lines.by_ref() {
            match line.unwrap().as_str() {
                "ready" if backups == 0 => break,
                "done" => {
                    done += 1;
                    if done >= backups {
                        break;
                    }
                }
                _ => {}
            }
        }
        // Somewhere inside the next backup.
        std::thread::sleep(Duration::from_micros(rng.below(6_000)));
        child.kill().unwrap();
        child.wait().unwrap();
        drop(lines);
        // The store reopens as after any crash.
        let store = Options::new().open(&t.path).unwrap();
        store.check_invariants().unwrap();
        // The destination: absent (when no backup finished this round and
        // the file was removed before), or a whole copy.
        if dest.exists() {
            let got = check_copy(
                &dest,
                clock.now_millis_for_tests(),
                std::fs::metadata(&dest).unwrap().len(),
            );
            assert_eq!(got.len(), 4000, "round {round}");
            for (k, (v, _, _)) in &got {
                assert!(v.starts_with(k), "round {round}: a whole value of its own");
            }
            whole += 1;
        } else {
            assert_eq!(done, 0, "round {round}: a finished backup's copy is gone");
            absent += 1;
        }
        // A temporary file a crash left is reused by the next backup.
        store.backup(&dest).unwrap();
        let left: Vec<_> = std::fs::read_dir(t.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().contains("sfs-backup"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        store.close().unwrap();
    }
    eprintln!("8 kills: destination whole {whole} times, absent {absent} times");
}

#[test]
fn a_backup_of_a_store_that_applied_batches_is_a_version_1_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = sfs::Store::open(dir.path().join("s.sfs")).unwrap();
    store.put("a", "1").unwrap();
    let mut batch = sfs::Batch::new();
    batch.put("b", "2").put("c", "3").delete("a");
    store.apply(&batch).unwrap();
    // The store's own file became version 2 with its first batch.
    assert_eq!(std::fs::read(dir.path().join("s.sfs")).unwrap()[8], 2);
    let copy = dir.path().join("copy.sfs");
    store.backup(&copy).unwrap();
    // The copy holds no batch machinery: version 1, which every release opens.
    assert_eq!(std::fs::read(&copy).unwrap()[8], 1);
    let c = sfs::Store::open(&copy).unwrap();
    assert_eq!(c.get("a").unwrap(), None);
    assert_eq!(c.get("b").unwrap().as_deref(), Some(b"2".as_slice()));
    assert_eq!(c.get("c").unwrap().as_deref(), Some(b"3".as_slice()));
    assert_eq!(c.len(), 2);
}

/// Where `needle` (unique in the file) is in the store file.
fn find_in_file(path: &Path, needle: &[u8]) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    let at = bytes.windows(needle.len()).position(|w| w == needle);
    let at = at.unwrap_or_else(|| panic!("{:?} in the file", String::from_utf8_lossy(needle)));
    assert!(
        bytes[at + 1..].windows(needle.len()).all(|w| w != needle),
        "unique"
    );
    at as u64
}

/// Writes `bytes` at `offset` of the store file behind the store's back
/// (its map is shared: the store sees them).
fn damage(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

/// Round 1 copies runs of entries in file order straight from their blocks,
/// without reading their slots again: it must still leave out an entry whose
/// payload or header is damaged, one expired before the backup, and one that
/// expires between round 1 and the pause (cut out of the copy after it).
#[test]
fn a_backup_with_no_writers_leaves_out_damaged_and_expired_entries() {
    no_writers_damaged_and_expired(2000);
}

/// The same in a store large enough that round 1 copies many entries per
/// taking of the shard locks, in runs of adjacent blocks; some blocks are
/// longer than their entries (values put again shorter), so runs break.
#[test]
fn a_backup_in_long_stretches_leaves_out_damaged_and_expired_entries() {
    no_writers_damaged_and_expired(40_000);
}

fn no_writers_damaged_and_expired(n: u32) {
    let t = common::TempStore::new();
    let clock = common::clock();
    let at_pause = Arc::new(Mutex::new(None::<Arc<ManualClock>>));
    let hook_clock = at_pause.clone();
    let store = open_hooked(&t.path, t.options(&clock), move |name| {
        if name == "backup: final round"
            && let Some(c) = hook_clock.lock().unwrap().as_ref()
        {
            c.advance(Duration::from_secs(20)); // past the 10 s TTLs
        }
    });
    for i in 0..n {
        let k = format!("key-{i:05}");
        let v = value_of(&format!("value-{i:05}"), 100);
        match i % 10 {
            3 => store
                .put_with_ttl(&k, &v, Duration::from_secs(1)) // gone before
                .unwrap(),
            4 => store
                .put_with_ttl(&k, &v, Duration::from_secs(10)) // gone at the pause
                .unwrap(),
            5 => store
                .put_with_ttl(&k, &v, Duration::from_secs(3600))
                .unwrap(),
            6 => store
                .put_with(&k, &v, &PutOptions::new().metadata(b"meta"))
                .unwrap(),
            _ => store.put(&k, &v).unwrap(),
        }
    }
    // Values put again shorter, in place of longer ones: their blocks may be
    // longer than the entries now (keys ending in 7: no expiry).
    for i in (7..n).step_by(70) {
        let k = format!("key-{i:05}");
        store.delete(&k).unwrap();
        store
            .put(format!("big-{i:05}"), value_of("big", 400))
            .unwrap();
        store.delete(format!("big-{i:05}")).unwrap();
        store
            .put(
                &k,
                value_of(&format!("short-{i:05}"), 20 + (i % 50) as usize),
            )
            .unwrap();
    }
    store.sync().unwrap();
    clock.advance(Duration::from_secs(2));
    let mut expected = contents(&store);
    expected.retain(|k, _| !k.ends_with(b"4") || k.len() != 9);
    // A damaged payload byte (the value of key-00101) and a damaged header
    // byte (the sequence number of key-01207's block: 48 bytes of header
    // before the key).
    let v = find_in_file(&t.path, b"value-00101");
    damage(&t.path, v + 3, b"#");
    let k = find_in_file(&t.path, b"key-01207");
    damage(&t.path, k - 48 + 24, &[0xEE]);
    expected.remove(&b"key-00101"[..]);
    expected.remove(&b"key-01207"[..]);
    *at_pause.lock().unwrap() = Some(clock.clone());
    let dest = t.dir.path().join("copy.sfs");
    let report = store.backup(&dest).unwrap();
    assert_eq!(report.damaged_entries, 2);
    assert_eq!(report.recopied_entries, 0);
    assert_eq!(report.entries as usize, expected.len());
    let got = check_copy(&dest, clock.now_millis_for_tests(), report.file_len);
    assert_eq!(got, expected);
}

/// Writes in the middle of round 1 (at its 100th copy, in file order, keys
/// in insertion order): keys already copied are overwritten, deleted and
/// renewed, keys not yet copied overwritten and deleted (their shards
/// changed: round 1 reads their slots again), new keys put. The copy holds
/// each key once, as the store has it at the pause.
#[test]
fn a_backup_with_writes_during_round_1_holds_each_key_once() {
    writes_during_round_1(1000, 100);
}

/// The same in a store large enough that round 1 copies many entries per
/// taking of the shard locks (the writes come between two such stretches,
/// after a few hundred entries).
#[test]
fn a_backup_with_writes_between_long_stretches_holds_each_key_once() {
    writes_during_round_1(40_000, 10);
}

/// Writes a test makes from inside a backup.
type Writes = Box<dyn FnOnce() + Send>;

/// A store whose `at_copy`-th pass through the "backup: copy" point runs
/// the writes left in the returned slot by then (no store lock is held
/// there, so they may write to the store).
fn store_writing_at_copy(
    t: &common::TempStore,
    clock: &Arc<sfs::ManualClock>,
    at_copy: usize,
) -> (Arc<Store>, Arc<Mutex<Option<Writes>>>) {
    let writes: Arc<Mutex<Option<Writes>>> = Arc::new(Mutex::new(None));
    let copies = AtomicUsize::new(0);
    let w = writes.clone();
    let store = Arc::new(open_hooked(&t.path, t.options(clock), move |name| {
        if name == "backup: copy" && copies.fetch_add(1, Ordering::SeqCst) == at_copy {
            let writes = w.lock().unwrap().take();
            if let Some(f) = writes {
                f();
            }
        }
    }));
    (store, writes)
}

fn writes_during_round_1(n: u32, at_copy: usize) {
    let t = common::TempStore::new();
    let clock = common::clock();
    let (store, writes) = store_writing_at_copy(&t, &clock, at_copy);
    let key = |i: u32| format!("key-{i:05}");
    for i in 0..n {
        store.put(key(i), value_of(&key(i), 150)).unwrap();
    }
    let s = store.clone();
    let later = (clock.now_millis_for_tests() + 3_600_000) as u64;
    *writes.lock().unwrap() = Some(Box::new(move || {
        for i in (0..90).step_by(9) {
            s.put(key(i), value_of(&format!("{}-again", key(i)), 60))
                .unwrap();
        }
        for i in (1..90).step_by(9) {
            s.delete(key(i)).unwrap();
        }
        for i in (2..90).step_by(9) {
            let until = UNIX_EPOCH + Duration::from_millis(later);
            assert!(s.touch_until(key(i), until).unwrap());
        }
        for i in (500..1000).step_by(7) {
            s.put(key(i), value_of(&format!("{}-later", key(i)), 400))
                .unwrap();
        }
        for i in (501..1000).step_by(7) {
            s.delete(key(i)).unwrap();
        }
        for i in 0..50u32 {
            s.put(format!("new-{i}"), value_of("new", 90)).unwrap();
        }
        // A key deleted and put again: it may land in another slot.
        s.delete(key(3)).unwrap();
        s.put(key(3), b"back").unwrap();
    }));
    let dest = t.dir.path().join("copy.sfs");
    let report = store.backup(&dest).unwrap();
    assert!(writes.lock().unwrap().is_none(), "the writes ran");
    assert!(report.recopied_entries > 0);
    assert_eq!(report.damaged_entries, 0);
    let expected = contents(&store);
    assert_eq!(
        expected[key(0).as_bytes()].0,
        value_of("key-00000-again", 60)
    );
    assert_eq!(expected[key(2).as_bytes()].2, later);
    assert!(!expected.contains_key(key(501).as_bytes()));
    assert_eq!(report.entries as usize, expected.len());
    let got = check_copy(&dest, clock.now_millis_for_tests(), report.file_len);
    assert_eq!(got, expected);
}

#[test]
fn a_backup_writes_the_pending_members_of_batches_settled() {
    // Under `Never`, batches of puts are pending on disk until the next
    // sync. A backup (round 1 copies runs of blocks as they are, where it
    // can) must write them settled: pending entries with no commit record
    // would be free space to an open of the copy. Enough entries for round
    // 1's stretches of many blocks.
    let t = common::TempStore::new();
    let clock = common::clock();
    let store = Options::new()
        .sync(sfs::SyncPolicy::Never)
        .clock(clock.clone())
        .active_expiry(None)
        .auto_compact(None)
        .open(&t.path)
        .unwrap();
    for b in 0..30 {
        let mut batch = sfs::Batch::new();
        for i in 0..200 {
            let k = format!("key-{b:02}-{i:03}");
            batch.put(&k, value_of(&k, 100));
        }
        store.apply(&batch).unwrap();
    }
    let expected = contents(&store);
    assert_eq!(expected.len(), 6000);
    let dest = t.dir.path().join("copy.sfs");
    let report = store.backup(&dest).unwrap();
    let got = check_copy(&dest, clock.now_millis_for_tests(), report.file_len);
    assert_eq!(got, expected);
    store.check_invariants().unwrap();
}

/// A store large enough that round 1 copies runs of blocks byte for byte
/// and hands its write buffers to a writer thread: damaged payloads
/// anywhere in its runs (two adjacent ones, the first and the last entry, a
/// damaged key, a value's last byte) are left out, and a block's padding,
/// nonzero in the store, is zero in the copy.
#[test]
fn a_backup_leaves_out_payloads_damaged_anywhere_in_round_1s_runs() {
    damaged_in_runs(false);
}

/// The same with writes in the middle of round 1: keys whose damaged blocks
/// round 1 met are written again (their new entries copied, and no hole or
/// damaged copy left behind), and new keys are put.
#[test]
fn a_backup_copies_damaged_keys_written_again_during_round_1() {
    damaged_in_runs(true);
}

fn damaged_in_runs(with_writes: bool) {
    const N: u32 = 20_000;
    let t = common::TempStore::new();
    let clock = common::clock();
    // About 30 stretches of 19 entries in: keys 0 and 100 are copied.
    let (store, writes) = store_writing_at_copy(&t, &clock, 30);
    let key = |i: u32| format!("key-{i:05}");
    let value = |i: u32| value_of(&format!("value-{i:05}"), 100);
    for i in 0..N {
        store.put(key(i), value(i)).unwrap();
    }
    store.sync().unwrap();
    let mut expected = contents(&store);
    // Key, no metadata, value: the key's 9 bytes end where the value
    // begins.
    let damaged = [0, 100, 3000, 3001, 7000, 12000, N - 1];
    for (j, &i) in damaged.iter().enumerate() {
        let v = find_in_file(&t.path, format!("value-{i:05}").as_bytes());
        let at = [v + 3, v + 99, v - 2][j % 3];
        damage(&t.path, at, b"#");
        expected.remove(key(i).as_bytes());
    }
    // 48 + 9 + 100 bytes used of a 160-byte block: 3 bytes of padding.
    let v = find_in_file(&t.path, b"value-15000");
    damage(&t.path, v + 100, &[0xAB, 0xCD, 0xEF]);
    let model = Arc::new(Mutex::new(expected));
    if with_writes {
        let (s, m) = (store.clone(), model.clone());
        *writes.lock().unwrap() = Some(Box::new(move || {
            let mut m = m.lock().unwrap();
            for i in [0, 100] {
                let v = value_of(&format!("again-{i:05}"), 70);
                s.put(key(i), &v).unwrap();
                m.insert(key(i).into_bytes(), (v, Vec::new(), 0));
            }
            for i in 0..20 {
                let (k, v) = (format!("new-{i:02}"), value_of("new", 90));
                s.put(&k, &v).unwrap();
                m.insert(k.into_bytes(), (v, Vec::new(), 0));
            }
        }));
    }
    let dest = t.dir.path().join("copy.sfs");
    let report = store.backup(&dest).unwrap();
    let expected = model.lock().unwrap().clone();
    if with_writes {
        assert!(writes.lock().unwrap().is_none(), "the writes ran");
        assert!(report.rounds >= 2);
    }
    // The damaged blocks of 0 and 100 were never copies of theirs.
    assert_eq!(report.recopied_entries, 0);
    assert_eq!(report.damaged_entries, damaged.len() as u64);
    assert_eq!(report.entries as usize, expected.len());
    let got = check_copy(&dest, clock.now_millis_for_tests(), report.file_len);
    assert_eq!(got, expected);
    let v = find_in_file(&dest, b"value-15000");
    let copy = std::fs::read(&dest).unwrap();
    let v = v as usize;
    assert_eq!(copy[v + 100..v + 103], [0, 0, 0], "padding written zero");
    assert_eq!(&copy[v + 103..v + 107], b"sfsB", "the next block");
}

/// Values over 1 MiB are streamed straight to the copy, which first stops
/// round 1's writer thread (a store large enough to have one): the entries
/// before, between and after them, a damaged long value (left out, its
/// partial copy overwritten) and an intact one are all as in the store.
#[test]
fn a_backup_streams_long_values_between_runs_written_by_the_writer_thread() {
    let t = common::TempStore::new();
    let clock = common::clock();
    let store = t.open(&clock);
    let key = |i: u32| format!("key-{i:05}");
    let long = |tag: &str| value_of(tag, (3 << 19) + 11); // 1.5 MiB and a bit
    for i in 0..6000 {
        store.put(key(i), value_of(&key(i), 120)).unwrap();
        if i == 1500 {
            store.put("long-intact", long("long-intact")).unwrap();
        }
        if i == 3000 {
            store.put("long-damaged", long("long-damaged")).unwrap();
        }
    }
    store.sync().unwrap();
    let mut expected = contents(&store);
    // A byte near the end of the damaged value, past its first 1 MiB.
    let v = find_in_file(&t.path, b"long-damagedlong-damaged");
    damage(&t.path, v + 12 + (3 << 19) - 5, b"#");
    expected.remove(&b"long-damaged"[..]);
    let dest = t.dir.path().join("copy.sfs");
    let report = store.backup(&dest).unwrap();
    assert_eq!(report.damaged_entries, 1);
    assert_eq!(report.entries as usize, expected.len());
    let got = check_copy(&dest, clock.now_millis_for_tests(), report.file_len);
    assert_eq!(got, expected);
}

/// Puts `/dev/full` in the place of every descriptor of this process open
/// on `path`, under the same numbers: writes through them then fail with
/// "no space left on device", as on a full disk. Returns how many.
fn fill_up(path: &Path) -> usize {
    use std::os::fd::AsRawFd;
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let mut replaced = 0;
    for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
        let entry = entry.unwrap();
        // (The listing's own descriptor is gone by the time it is read.)
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if target != path {
            continue;
        }
        let fd: i32 = entry.file_name().to_str().unwrap().parse().unwrap();
        // SAFETY: `dup2` makes `fd` refer to `/dev/full` in one atomic
        // step: it stays open under its number, and its owner (the
        // backup's handle of its temporary file) still uses and closes it
        // exactly once; only the file behind it changes. `full` stays open
        // meanwhile.
        #[allow(unsafe_code)]
        let r = unsafe { libc::dup2(full.as_raw_fd(), fd) };
        assert_eq!(r, fd, "dup2: {}", std::io::Error::last_os_error());
        replaced += 1;
    }
    replaced
}

/// The copy's temporary file fails while round 1's writer thread writes
/// it (a store large enough to have one; the disk "fills up" a few stretches
/// into round 1): the backup fails with an I/O error naming the destination,
/// the store is unchanged and serving, no file is left under the
/// destination's name nor beside it, and the next backup there works.
#[test]
fn a_write_error_on_round_1s_writer_thread_fails_the_backup_and_leaves_nothing() {
    const N: u32 = 20_000;
    let t = common::TempStore::new();
    let clock = common::clock();
    // About 30 stretches of 19 entries in, before the first 1 MiB buffer is
    // handed to the writer thread.
    let (store, writes) = store_writing_at_copy(&t, &clock, 30);
    for i in 0..N {
        let k = format!("key-{i:05}");
        store.put(&k, value_of(&k, 100)).unwrap();
    }
    let expected = contents(&store);
    let dir = t.dir.path().canonicalize().unwrap();
    let scratch = dir.join(".copy.sfs.sfs-backup.tmp");
    let replaced = Arc::new(AtomicUsize::new(0));
    let r = replaced.clone();
    *writes.lock().unwrap() = Some(Box::new(move || {
        r.store(fill_up(&scratch), Ordering::SeqCst);
    }));
    let dest = t.dir.path().join("copy.sfs");
    let r = store.backup(&dest);
    // Two descriptors: the backup's, and the writer thread's (which only
    // exists while that thread runs).
    assert_eq!(replaced.load(Ordering::SeqCst), 2, "{r:?}");
    let Err(e @ Error::Io { action, source, .. }) = &r else {
        panic!("{r:?}");
    };
    assert_eq!(e.path(), Some(dest.as_path()));
    assert_eq!(*action, "writing the backup");
    assert_eq!(source.kind(), std::io::ErrorKind::StorageFull, "{source}");
    assert!(e.to_string().contains("copy.sfs"), "{e}");
    nothing_left(t.dir.path(), "copy.sfs");
    store.check_invariants().unwrap();
    assert_eq!(contents(&store), expected);
    store.put(b"still", b"serving").unwrap();
    assert_eq!(store.get(b"still").unwrap().unwrap(), b"serving");
    let report = store.backup(&dest).unwrap();
    let got = check_copy(&dest, clock.now_millis_for_tests(), report.file_len);
    assert_eq!(got.len(), expected.len() + 1);
}
