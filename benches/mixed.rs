//! Read/write mixes on 100,000 keys with 100-byte values: 90% gets / 10%
//! overwrites and 50/50, from 1, 2 and 4 threads, with and without an entry
//! cap. The time is per operation of the whole group of threads.
//! `SyncPolicy::Never`. Run: `cargo bench --bench mixed`.

mod support;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use support::{TempStore, key, never, run_threads, value};

const KEYS: u64 = 100_000;

fn mixes(c: &mut Criterion) {
    let v = value(100);
    for (label, opts) in [
        ("unbounded", never()),
        ("cap_100k", never().max_entries(KEYS as usize)),
    ] {
        let t = TempStore::filled(opts, KEYS, &v);
        let mut g = c.benchmark_group(format!("mix_{label}"));
        for (mix, writes_in_10) in [("90r_10w", 1u64), ("50r_50w", 5)] {
            for threads in [1usize, 2, 4] {
                g.bench_function(BenchmarkId::new(mix, threads), |b| {
                    b.iter_custom(|iters| {
                        run_threads(threads, iters, |th, i| {
                            let x = i.wrapping_mul(2_654_435_761).wrapping_add(th as u64 * 7919);
                            let k = key(x % KEYS);
                            if (x >> 32) % 10 < writes_in_10 {
                                t.store.put(k, &v).expect("put");
                            } else {
                                t.store.get(k).expect("get").expect("hit");
                            }
                        })
                    })
                });
            }
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = support::criterion();
    targets = mixes
}
criterion_main!(benches);
