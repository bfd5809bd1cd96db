//! Space and leases: `compact()` itself, and `touch` (renewing an entry's
//! expiry in place) against a put of the same value with a new TTL.
//! `SyncPolicy::Never` unless a bench says `durable`. Run:
//! `cargo bench --bench space` (`-- compact`, `-- touch`).
//!
//! - `compact/<workload>`: the time of one `compact()` call on a store built
//!   (untimed) for each iteration: 100,000 16-byte keys with 100-byte or
//!   1 KiB values, then 50% or 90% of the keys deleted in a random order;
//!   `nothing_to_move` compacts a store without free space (the cost of the
//!   scan and sort of the index alone).
//! - `touch/<size>` vs `put_same_value/<size>`: 10,000 keys with a TTL,
//!   renewed round-robin with `touch(key, ttl)` or `put_with_ttl(key, value,
//!   ttl)` (the same value); `touch_durable` and `put_durable` the same under
//!   `SyncPolicy::Always` (one `fdatasync` each), 100-byte values.

mod support;

use std::time::{Duration, Instant};

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use sfs::{Options, SyncPolicy};
use support::{Lcg, SIZES, TempStore, key, never, value};

/// A store of `n` keys holding `len`-byte values with `tenths`/10 of the keys
/// then deleted in a random order; automatic compaction off.
fn fragmented(n: u64, len: usize, tenths: u64) -> TempStore {
    let v = value(len);
    let t = TempStore::filled(never().auto_compact(None), n, &v);
    let mut order: Vec<u64> = (0..n).collect();
    let mut rng = Lcg::new(0x5eed + n + tenths);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    for &i in &order[..(n * tenths / 10) as usize] {
        t.store.delete(key(i)).expect("delete");
    }
    t.store.sync().expect("sync");
    t
}

fn compact(c: &mut Criterion) {
    let mut g = c.benchmark_group("compact");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for (name, len, tenths) in [
        ("100k_100B_delete_90pct", 100, 9),
        ("100k_100B_delete_50pct", 100, 5),
        ("100k_1KiB_delete_50pct", 1024, 5),
        ("100k_100B_nothing_to_move", 100, 0),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = fragmented(100_000, len, tenths);
                    let start = Instant::now();
                    let c = t.store.compact().expect("compact");
                    total += start.elapsed();
                    std::hint::black_box(c);
                }
                total
            })
        });
    }
    g.finish();
}

/// Keys renewed by the touch benches.
const LEASES: u64 = 10_000;

fn touch(c: &mut Criterion) {
    let ttl = Duration::from_secs(3600);
    for (group, sizes, opts) in [
        ("touch", SIZES, never()),
        (
            "touch_durable",
            &SIZES[..1],
            Options::new().sync(SyncPolicy::Always),
        ),
    ] {
        let mut g = c.benchmark_group(group);
        for &(len, name) in sizes {
            let v = value(len);
            let t = TempStore::new(opts.clone().auto_compact(None));
            for i in 0..LEASES {
                t.store.put_with_ttl(key(i), &v, ttl).expect("put");
            }
            t.store.sync().expect("sync");
            g.throughput(Throughput::Elements(1));
            let mut i = 0u64;
            g.bench_function(BenchmarkId::new("touch", name), |b| {
                b.iter(|| {
                    i = (i + 1) % LEASES;
                    assert!(t.store.touch(key(i), ttl).expect("touch"));
                })
            });
            g.bench_function(BenchmarkId::new("put_same_value", name), |b| {
                b.iter(|| {
                    i = (i + 1) % LEASES;
                    t.store.put_with_ttl(key(i), &v, ttl).expect("put");
                })
            });
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = support::criterion();
    targets = compact, touch
}
criterion_main!(benches);
