//! Whole-store operations: opening a file of 1,000,000 entries (16-byte keys,
//! 100-byte values: the index is rebuilt by one scan), and purging 100,000
//! expired entries out of 200,000. Run: `cargo bench --bench open`.
//! `SFS_BENCH_DIR` picks where the ~170 MB file goes.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use sfs::{ManualClock, Options};
use support::{TempStore, key, never, value};

fn open_1m(c: &mut Criterion) {
    let v = value(100);
    let (_dir, path) = TempStore::filled(never(), 1_000_000, &v).close();
    let mut g = c.benchmark_group("open");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    g.bench_function("1M_entries_100B", |b| {
        // The store is closed (synced, its index freed) outside the timing.
        b.iter_with_large_drop(|| {
            let s = never().open(&path).expect("open");
            assert_eq!(s.len(), 1_000_000);
            s
        })
    });
    g.finish();
}

fn purge_100k(c: &mut Criterion) {
    let v = value(100);
    let mut g = c.benchmark_group("purge_expired");
    g.sampling_mode(SamplingMode::Flat).sample_size(10);
    g.bench_function("100k_of_200k", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let clock = Arc::new(ManualClock::new(1_000_000));
                let t = TempStore::new(
                    Options::new()
                        .sync(sfs::SyncPolicy::Never)
                        .clock(clock.clone()),
                );
                for i in 0..200_000u64 {
                    if i % 2 == 0 {
                        t.store
                            .put_with_ttl(key(i), &v, Duration::from_secs(60))
                            .expect("put");
                    } else {
                        t.store.put(key(i), &v).expect("put");
                    }
                }
                clock.advance(Duration::from_secs(61));
                let start = Instant::now();
                assert_eq!(t.store.purge_expired().expect("purge"), 100_000);
                total += start.elapsed();
            }
            total
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = support::criterion();
    targets = open_1m, purge_100k
}
criterion_main!(benches);
