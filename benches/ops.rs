//! Single operations on a store: put (new key, overwrite), get (hit, miss,
//! zero-copy), delete and put_with_ttl, with 16-byte keys and 100 B, 1 KiB and
//! 64 KiB values; with and without `max_entries`; puts and gets from 1, 2 and
//! 4 threads. `SyncPolicy::Never` throughout (durable puts are measured by
//! benches/compare). Run: `cargo bench --bench ops`.

mod support;

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use support::{KEY_LEN, Lcg, SIZES, TempStore, absent_key, key, never, run_threads, value};

/// Keys preloaded for the hit/overwrite benches, by value size: about 100 MiB
/// of data at most.
fn preload(len: usize) -> u64 {
    (100 << 20) as u64 / (len as u64 + 64).max(1024)
}

/// Above this many bytes of live data, new-key benches clear the store
/// (untimed) so that the file stays small.
const CLEAR_AT: u64 = 256 << 20;

/// Times `iters` inserts of new keys (`put(key, value)`), clearing the store
/// outside the timed sections when it grows past [`CLEAR_AT`].
fn time_new_keys(
    t: &TempStore,
    next: &mut u64,
    iters: u64,
    len: usize,
    put: impl Fn(&[u8; KEY_LEN]),
) -> Duration {
    let per_chunk = (CLEAR_AT / (len as u64 + 64)).max(1);
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(per_chunk);
        let start = Instant::now();
        for _ in 0..n {
            put(&key(*next));
            *next += 1;
        }
        total += start.elapsed();
        left -= n;
        if t.store.stats().live_bytes > CLEAR_AT {
            t.store.clear().expect("clear");
        }
    }
    total
}

fn put_new(c: &mut Criterion) {
    let mut g = c.benchmark_group("put_new");
    for &(len, name) in SIZES {
        let v = value(len);
        g.throughput(Throughput::Bytes(len as u64));
        let t = TempStore::new(never());
        let mut next = 0u64;
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| {
                time_new_keys(&t, &mut next, iters, len, |k| {
                    t.store.put(k, &v).expect("put")
                })
            })
        });
    }
    g.finish();
}

fn put_with_ttl(c: &mut Criterion) {
    let mut g = c.benchmark_group("put_with_ttl");
    for &(len, name) in SIZES {
        let v = value(len);
        g.throughput(Throughput::Bytes(len as u64));
        let t = TempStore::new(never());
        let mut next = 0u64;
        let ttl = Duration::from_secs(3600);
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| {
                time_new_keys(&t, &mut next, iters, len, |k| {
                    t.store.put_with_ttl(k, &v, ttl).expect("put")
                })
            })
        });
    }
    g.finish();
}

fn put_overwrite(c: &mut Criterion) {
    let mut g = c.benchmark_group("put_overwrite");
    for &(len, name) in SIZES {
        let v = value(len);
        let n = preload(len);
        g.throughput(Throughput::Bytes(len as u64));
        let t = TempStore::filled(never(), n, &v);
        let mut rng = Lcg::new(1);
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| t.store.put(key(rng.below(n)), &v).expect("put"))
        });
    }
    g.finish();
}

fn get(c: &mut Criterion) {
    let mut g = c.benchmark_group("get");
    for &(len, name) in SIZES {
        let v = value(len);
        let n = preload(len);
        g.throughput(Throughput::Bytes(len as u64));
        let t = TempStore::filled(never(), n, &v);
        let mut rng = Lcg::new(2);
        g.bench_function(BenchmarkId::new("hit", name), |b| {
            b.iter(|| t.store.get(key(rng.below(n))).expect("get").expect("hit"))
        });
        g.bench_function(BenchmarkId::new("hit_ref", name), |b| {
            b.iter(|| {
                let r = t
                    .store
                    .get_ref(key(rng.below(n)))
                    .expect("get")
                    .expect("hit");
                std::hint::black_box(r[r.len() - 1]);
            })
        });
        // The same read without checksum verification: what the CRC of the
        // payload costs (it dominates large zero-copy reads).
        let t2 = TempStore::filled(never().verify_checksums(false), n, &v);
        let n2 = n;
        g.bench_function(BenchmarkId::new("hit_ref_noverify", name), |b| {
            b.iter(|| {
                let r = t2
                    .store
                    .get_ref(key(rng.below(n2)))
                    .expect("get")
                    .expect("hit");
                std::hint::black_box(r[r.len() - 1]);
            })
        });
        drop(t2);
        g.bench_function(BenchmarkId::new("miss", name), |b| {
            b.iter(|| {
                assert!(
                    t.store
                        .get(absent_key(rng.below(n)))
                        .expect("get")
                        .is_none()
                )
            })
        });
    }
    g.finish();
}

fn delete(c: &mut Criterion) {
    let mut g = c.benchmark_group("delete");
    for &(len, name) in SIZES {
        let v = value(len);
        let t = TempStore::new(never());
        let chunk = (CLEAR_AT / (len as u64 + 64)).clamp(1, 100_000);
        let mut next = 0u64;
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(chunk);
                    let first = next;
                    // n keys to delete, then one that stays: it keeps the
                    // freed space inside the file (reused by the next
                    // chunk) instead of letting the last delete cut the
                    // whole chunk off the end in one large truncation.
                    for _ in 0..=n {
                        t.store.put(key(next), &v).expect("put");
                        next += 1;
                    }
                    let start = Instant::now();
                    for i in first..first + n {
                        assert!(t.store.delete(key(i)).expect("delete"));
                    }
                    total += start.elapsed();
                    left -= n;
                }
                total
            })
        });
    }
    g.finish();
}

/// With an entry cap: every new key evicts the least recently used one, and
/// every get moves its key to the front of the LRU order.
fn capped(c: &mut Criterion) {
    let mut g = c.benchmark_group("max_entries");
    let v = value(100);
    let cap = 100_000u64;
    for (label, opts) in [
        ("unbounded", never()),
        ("cap_100k", never().max_entries(cap as usize)),
    ] {
        let t = TempStore::filled(opts, cap, &v);
        let mut rng = Lcg::new(3);
        g.bench_function(BenchmarkId::new("get_hit_100B", label), |b| {
            b.iter(|| t.store.get(key(rng.below(cap))).expect("get").expect("hit"))
        });
        let mut next = cap;
        g.bench_function(BenchmarkId::new("put_new_100B", label), |b| {
            b.iter_custom(|iters| {
                time_new_keys(&t, &mut next, iters, 100, |k| {
                    t.store.put(k, &v).expect("put")
                })
            })
        });
    }
    g.finish();
}

/// Puts of new keys and gets of present keys from 1, 2 and 4 threads at
/// once; the time is per operation of the whole group.
fn threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("threads");
    let v = value(100);
    let n = preload(100);
    for threads in [1usize, 2, 4] {
        let t = TempStore::filled(never(), n, &v);
        g.bench_function(BenchmarkId::new("get_hit_100B", threads), |b| {
            b.iter_custom(|iters| {
                run_threads(threads, iters, |th, i| {
                    let k = key((i.wrapping_mul(2_654_435_761) + th as u64 * 7919) % n);
                    t.store.get(k).expect("get").expect("hit");
                })
            })
        });
        let mut round = 0u64;
        g.bench_function(BenchmarkId::new("put_new_100B", threads), |b| {
            b.iter_custom(|iters| {
                round += 1;
                let base = round << 40;
                let d = run_threads(threads, iters, |th, i| {
                    t.store
                        .put(key(base + ((th as u64) << 32) + i), &v)
                        .expect("put")
                });
                if t.store.stats().live_bytes > CLEAR_AT {
                    t.store.clear().expect("clear");
                }
                d
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = support::criterion();
    targets = put_new, put_overwrite, put_with_ttl, get, delete, capped, threads
}
criterion_main!(benches);
