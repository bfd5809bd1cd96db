//! Shared helpers for the criterion benches: keys, values, stores in
//! temporary directories, and a timing loop for several threads.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::Criterion;
use sfs::{Options, Store, SyncPolicy};

/// Key length used by every bench.
pub const KEY_LEN: usize = 16;

/// Value sizes benched: 100 B, 1 KiB, 64 KiB.
pub const SIZES: &[(usize, &str)] = &[(100, "100B"), (1024, "1KiB"), (64 * 1024, "64KiB")];

/// Criterion settings that keep each bench short on a shared 2-core machine.
pub fn criterion() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args()
}

/// A 16-byte key for `i`: a bijective mix of the counter, so consecutive
/// counters land in unrelated shards and buckets.
pub fn key(i: u64) -> [u8; KEY_LEN] {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let mut k = [0u8; KEY_LEN];
    k[..8].copy_from_slice(&z.to_le_bytes());
    k[8..].copy_from_slice(&i.to_le_bytes());
    k
}

/// A key that no bench ever inserts.
pub fn absent_key(i: u64) -> [u8; KEY_LEN] {
    let mut k = key(i);
    k[15] ^= 0x80;
    k
}

/// A value of `len` bytes (not all equal, so nothing compresses it away).
pub fn value(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + 7) as u8).collect()
}

/// A cheap deterministic sequence of indices in `0..n`.
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Lcg {
        Lcg(seed | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 32) * n) >> 32
    }
}

/// A store in its own temporary directory (removed on drop).
pub struct TempStore {
    pub store: Store,
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

/// Scratch directory for bench files: `SFS_BENCH_DIR`, else the system's.
pub fn tempdir() -> tempfile::TempDir {
    match std::env::var_os("SFS_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).expect("tempdir"),
        None => tempfile::tempdir().expect("tempdir"),
    }
}

impl TempStore {
    /// A new store opened with `opts` (`SyncPolicy::Never` unless set).
    pub fn new(opts: Options) -> TempStore {
        let dir = tempdir();
        let path = dir.path().join("bench.sfs");
        let store = opts.open(&path).expect("open");
        TempStore {
            store,
            path,
            _dir: dir,
        }
    }

    /// Closes the store; returns its directory (kept until dropped) and path.
    pub fn close(self) -> (tempfile::TempDir, PathBuf) {
        self.store.close().expect("close");
        (self._dir, self.path)
    }

    /// A store with keys `0..n` holding `value`.
    pub fn filled(opts: Options, n: u64, value: &[u8]) -> TempStore {
        let t = TempStore::new(opts);
        for i in 0..n {
            t.store.put(key(i), value).expect("put");
        }
        t
    }
}

/// The default bench options: no fdatasync per write.
pub fn never() -> Options {
    Options::new().sync(SyncPolicy::Never)
}

/// Runs `op(thread, i)` for `iters` operations spread over `threads` threads
/// started together, and returns the wall time (what criterion divides by
/// `iters`: the time per operation of the whole group).
pub fn run_threads<F>(threads: usize, iters: u64, op: F) -> Duration
where
    F: Fn(usize, u64) + Sync,
{
    if threads == 1 {
        let t = Instant::now();
        for i in 0..iters {
            op(0, i);
        }
        return t.elapsed();
    }
    let barrier = Barrier::new(threads + 1);
    let per = iters.div_ceil(threads as u64);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (op, barrier) = (&op, &barrier);
            s.spawn(move || {
                barrier.wait();
                for i in 0..per {
                    op(t, i);
                }
                barrier.wait();
            });
        }
        barrier.wait();
        let t = Instant::now();
        barrier.wait();
        t.elapsed()
    })
}
