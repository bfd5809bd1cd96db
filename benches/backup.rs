//! `Store::backup` of a 1,000,000-entry store (16-byte keys, 100-byte
//! values): its time against `cp` of the same file (and `cp` then an
//! `fsync` of the copy, since a backup syncs), and, with 4 writer threads
//! running, the writers' longest stall and their throughput during the
//! backup as a ratio to their throughput without one.
//!
//! Not a criterion bench (one backup is a whole second): a program that
//! prints its figures. Run: `cargo bench --bench backup`; `SFS_BENCH_DIR`
//! picks where the ~180 MB files go; `SFS_BENCH_RUNS` (default 3) how many
//! times each figure is taken (the median is shown).

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sfs::{BackupOptions, Options, Store, SyncPolicy};
use support::{key, value};

const N: u64 = 1_000_000;
const WRITERS: usize = 4;
/// Keeps the keys of each run's writers apart from the last run's.
static NEXT: AtomicU64 = AtomicU64::new(0);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn run(cmd: &mut Command) {
    let status = cmd.status().expect("run a command");
    assert!(status.success(), "{cmd:?}: {status}");
}

/// `cp` of the closed store file, and `cp` then `sync FILE` (an fsync).
fn cp_times(src: &Path, dst: &Path) -> (f64, f64) {
    // A first copy warms the page cache, as the store's file is warm.
    run(Command::new("cp").arg(src).arg(dst));
    std::fs::remove_file(dst).expect("rm");
    let t = Instant::now();
    run(Command::new("cp").arg(src).arg(dst));
    let cp = t.elapsed().as_secs_f64();
    std::fs::remove_file(dst).expect("rm");
    let t = Instant::now();
    run(Command::new("cp").arg(src).arg(dst));
    run(Command::new("sync").arg(dst));
    let cp_sync = t.elapsed().as_secs_f64();
    std::fs::remove_file(dst).expect("rm");
    (cp, cp_sync)
}

/// What 4 writers did over a stretch of time.
struct Writers {
    ops: u64,
    max_stall: Duration,
    secs: f64,
    /// (start, length) of every write that took over 1 ms.
    slow: Vec<(Instant, Duration)>,
}

impl Writers {
    /// The longest write whose span overlaps `[from, to]`.
    fn longest_over(&self, from: Instant, to: Instant) -> Duration {
        self.slow
            .iter()
            .filter(|&&(s, d)| s <= to && s + d >= from)
            .map(|&(_, d)| d)
            .max()
            .unwrap_or_default()
    }
}

/// Runs 4 writers while `during` runs, or for `for_at_least` when it
/// returns at once, as fast as they can. Each inserts new keys of its own
/// and deletes each 1000 writes later, so the store keeps its size
/// (`SyncPolicy::Never`): no write of theirs waits for an `fdatasync`, so
/// their longest write shows the backup's pause rather than the disk's
/// sync latency (overwrites would sync on their own once old copies of
/// overwritten entries pile up).
fn with_writers(store: &Arc<Store>, for_at_least: Duration, during: impl FnOnce()) -> Writers {
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let stall_ns = Arc::new(AtomicU64::new(0));
    let slow = Arc::new(std::sync::Mutex::new(Vec::new()));
    let v = value(100);
    let handles: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (store, stop, ops, stall_ns, v, slow) = (
                store.clone(),
                stop.clone(),
                ops.clone(),
                stall_ns.clone(),
                v.clone(),
                slow.clone(),
            );
            std::thread::spawn(move || {
                let (mut n, mut worst) = (0u64, 0u64);
                let base =
                    N + (w as u64 + 1) * (1 << 40) + NEXT.fetch_add(1 << 32, Ordering::Relaxed);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    store.put(key(base + n), &v).expect("put");
                    if n >= 1000 {
                        store.delete(key(base + n - 1000)).expect("delete");
                    }
                    let took = t.elapsed();
                    if took > Duration::from_millis(1) {
                        slow.lock().expect("slow").push((t, took));
                    }
                    worst = worst.max(took.as_nanos() as u64);
                    n += 1;
                }
                ops.fetch_add(n, Ordering::Relaxed);
                stall_ns.fetch_max(worst, Ordering::Relaxed);
            })
        })
        .collect();
    let t = Instant::now();
    during();
    while t.elapsed() < for_at_least {
        std::thread::sleep(Duration::from_millis(10));
    }
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("writer");
    }
    Writers {
        ops: ops.load(Ordering::Relaxed),
        max_stall: Duration::from_nanos(stall_ns.load(Ordering::Relaxed)),
        slow: std::mem::take(&mut *slow.lock().expect("slow")),
        secs,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let runs: usize = std::env::var("SFS_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let dir = support::tempdir();
    let path = dir.path().join("store.sfs");
    let opts = Options::new().sync(SyncPolicy::Never).auto_compact(None);
    let store = opts.open(&path).expect("open");
    let v = value(100);
    for i in 0..N {
        store.put(key(i), &v).expect("put");
    }
    store.close().expect("close");
    let file_len = std::fs::metadata(&path).expect("stat").len();
    let dst = dir.path().join("cp.sfs");
    let copy = dir.path().join("backup.sfs");

    let (mut cp, mut cp_sync, mut backup) = (Vec::new(), Vec::new(), Vec::new());
    let store = Arc::new(opts.open(&path).expect("open"));
    for _ in 0..runs {
        let (a, b) = cp_times(&path, &dst);
        cp.push(a);
        cp_sync.push(b);
        let t = Instant::now();
        let r = store.backup(&copy).expect("backup");
        backup.push(t.elapsed().as_secs_f64());
        assert_eq!(r.entries, N);
        std::fs::remove_file(&copy).expect("rm");
    }
    let (cp, cp_sync, backup) = (median(cp), median(cp_sync), median(backup));
    println!("store file: {file_len} bytes, {N} entries (16-byte keys, 100-byte values)");
    println!("cp:             {:.3} s", cp);
    println!("cp + fsync:     {:.3} s", cp_sync);
    println!(
        "backup:         {:.3} s  = {:.2} x cp, {:.2} x (cp + fsync)",
        backup,
        backup / cp,
        backup / cp_sync
    );

    if std::env::var_os("SFS_BENCH_NO_WRITERS").is_some() {
        return;
    }
    // With 4 writers.
    let mut across = Vec::new();
    let (mut ratio, mut stall, mut base_stall, mut pause, mut during_s, mut rounds) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for _ in 0..runs {
        // Each run from a synced store: under `SyncPolicy::Never` the
        // store's lists of frees not yet synced grow with the writers'
        // deletes, and slow every later write until a sync.
        store.sync().expect("sync");
        let base = with_writers(&store, Duration::from_secs(2), || {});
        store.sync().expect("sync");
        let mut report = None;
        // The progress callback's first call after the pause (phase
        // Finishing) marks its end.
        let resumed = Arc::new(std::sync::Mutex::new(None));
        let r = resumed.clone();
        let opts = BackupOptions::new().on_progress(move |p| {
            if p.phase == sfs::BackupPhase::Finishing {
                *r.lock().expect("resumed") = Some(Instant::now());
            }
        });
        let busy = with_writers(&store, Duration::ZERO, || {
            report = Some(
                store
                    .backup_with(&copy, &opts)
                    .expect("backup beside writers"),
            );
        });
        let report = report.expect("a report");
        let resumed = resumed.lock().expect("resumed").expect("a pause");
        // Writes that waited across the pause: those overlapping it (and the
        // wait for the writes in flight before it, at most a few ms more).
        let at_pause =
            busy.longest_over(resumed - report.pause - Duration::from_millis(5), resumed);
        std::fs::remove_file(&copy).expect("rm");
        let base_rate = base.ops as f64 / base.secs;
        let busy_rate = busy.ops as f64 / busy.secs;
        ratio.push(busy_rate / base_rate);
        stall.push(busy.max_stall.as_secs_f64() * 1e3);
        across.push(at_pause.as_secs_f64() * 1e3);
        base_stall.push(base.max_stall.as_secs_f64() * 1e3);
        pause.push(report.pause.as_secs_f64() * 1e3);
        during_s.push(busy.secs);
        rounds.push(f64::from(report.rounds));
        println!(
            "  run: backup {:.3} s, {} rounds, {} recopied, pause {:.2} ms, longest write across it {:.2} ms; writers {:.0} writes/s during vs {:.0} without; longest write {:.2} ms during vs {:.2} ms without",
            busy.secs,
            report.rounds,
            report.recopied_entries,
            report.pause.as_secs_f64() * 1e3,
            at_pause.as_secs_f64() * 1e3,
            busy_rate,
            base_rate,
            busy.max_stall.as_secs_f64() * 1e3,
            base.max_stall.as_secs_f64() * 1e3
        );
    }
    println!(
        "with {WRITERS} writers (medians): backup {:.3} s in {} rounds; pause {:.2} ms, longest write across it {:.2} ms; longest write during the backup {:.2} ms (without a backup: {:.2} ms); throughput during the backup {:.2} x without",
        median(during_s),
        median(rounds),
        median(pause),
        median(across),
        median(stall),
        median(base_stall),
        median(ratio)
    );
}
