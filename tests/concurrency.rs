//! Many threads on shared keys: writers, deleters, readers (copying and
//! zero-copy), with `clear`, `purge_expired` and clock moves alongside. Every
//! value carries its key and a checksum, so a read that returned bytes of
//! another entry, a torn value or freed space would be caught.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::TempStore;
use sfs::{ManualClock, Options, Store, SyncPolicy};

const KEYS: u64 = 64;

fn key(k: u64) -> Vec<u8> {
    format!("key-{k:04}").into_bytes()
}

/// key length, key, version, filler, CRC of everything before.
fn value(k: u64, version: u64) -> Vec<u8> {
    let key = key(k);
    let mut v = vec![key.len() as u8];
    v.extend_from_slice(&key);
    v.extend_from_slice(&version.to_le_bytes());
    let filler = (version.wrapping_mul(2654435761) % 3000) as usize;
    v.extend((0..filler).map(|i| (i as u64 ^ version) as u8));
    let c = crc32fast::hash(&v);
    v.extend_from_slice(&c.to_le_bytes());
    v
}

/// Panics unless `v` is a whole value written for key `k`.
fn check(k: u64, v: &[u8]) {
    assert!(
        v.len() >= 1 + 8 + 4,
        "value too short for key {k}: {} bytes",
        v.len()
    );
    let (body, crc) = v.split_at(v.len() - 4);
    assert_eq!(
        crc32fast::hash(body).to_le_bytes(),
        crc,
        "torn or foreign value for key {k}"
    );
    let n = body[0] as usize;
    assert_eq!(
        &body[1..1 + n],
        key(k).as_slice(),
        "value of another key read for key {k}"
    );
}

fn run(opts: Options, clock: Arc<ManualClock>, secs: f64) {
    let t = TempStore::new();
    let store = Arc::new(opts.open(&t.path).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let version = Arc::new(AtomicU64::new(1));
    let reads = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();

    for w in 0..2u64 {
        let (s, stop, version) = (store.clone(), stop.clone(), version.clone());
        handles.push(thread::spawn(move || {
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                i = i
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let k = (i >> 33) % KEYS;
                let v = version.fetch_add(1, Ordering::Relaxed);
                if i % 4 == 0 {
                    s.put_with_ttl(key(k), value(k, v), Duration::from_millis(i % 50))
                        .unwrap();
                } else {
                    s.put(key(k), value(k, v)).unwrap();
                }
            }
        }));
    }
    {
        let (s, stop) = (store.clone(), stop.clone());
        handles.push(thread::spawn(move || {
            let mut k = 0;
            while !stop.load(Ordering::Relaxed) {
                k = (k + 7) % KEYS;
                s.delete(key(k)).unwrap();
                thread::yield_now();
            }
        }));
    }
    for r in 0..2u64 {
        let (s, stop, reads) = (store.clone(), stop.clone(), reads.clone());
        handles.push(thread::spawn(move || {
            let mut k = r;
            let mut held = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                k = (k + 13) % KEYS;
                if let Some(v) = s.get(key(k)).unwrap() {
                    check(k, &v);
                    reads.fetch_add(1, Ordering::Relaxed);
                }
                // Zero-copy reads, held across other operations for a while.
                if let Some(v) = s.get_ref(key(k)).unwrap() {
                    check(k, &v);
                    held.push((k, v.to_vec()));
                }
                if let Some(e) = s.get_entry(key(k)).unwrap() {
                    check(k, &e.value);
                }
                held.retain(|(_, _)| k % 5 != 0);
            }
        }));
    }
    {
        // Zero-copy guards kept alive across clear and purge.
        let (s, stop) = (store.clone(), stop.clone());
        handles.push(thread::spawn(move || {
            let mut k = 3;
            while !stop.load(Ordering::Relaxed) {
                k = (k + 5) % KEYS;
                let guards: Vec<_> = (0..4)
                    .filter_map(|j| s.get_ref(key((k + j) % KEYS)).unwrap().map(|g| (k + j, g)))
                    .collect();
                thread::sleep(Duration::from_micros(200));
                for (kk, g) in &guards {
                    check(kk % KEYS, g);
                }
            }
        }));
    }
    {
        let (s, stop, c) = (store.clone(), stop.clone(), clock.clone());
        handles.push(thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                c.advance(Duration::from_millis(7));
                s.purge_expired().unwrap();
                if n.is_multiple_of(50) {
                    s.clear().unwrap();
                }
                if n.is_multiple_of(20) {
                    s.sync().unwrap();
                }
                let _ = s.keys();
                let _ = s.stats();
                thread::sleep(Duration::from_millis(1));
            }
        }));
    }

    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("a thread panicked");
    }
    assert!(reads.load(Ordering::Relaxed) > 0, "readers found values");
    store.check_invariants().unwrap();
    for k in 0..KEYS {
        if let Some(v) = store.peek(key(k)).unwrap() {
            check(k, &v);
        }
    }
    let expected: Vec<(Vec<u8>, Vec<u8>)> = {
        let mut v: Vec<_> = store.iter().map(|r| r.unwrap()).collect();
        v.sort();
        v
    };
    let store = Arc::try_unwrap(store).expect("all threads joined");
    store.close().unwrap();
    // Everything reads back the same after a reopen.
    let reopened: Store = Options::new()
        .sync(SyncPolicy::Never)
        .clock(clock)
        .open(&t.path)
        .unwrap();
    reopened.check_invariants().unwrap();
    let mut got: Vec<_> = reopened.iter().map(|r| r.unwrap()).collect();
    got.sort();
    assert_eq!(got, expected);
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(1_000_000))
}

#[test]
fn concurrent_mix_without_sync() {
    let c = clock();
    run(
        Options::new().sync(SyncPolicy::Never).clock(c.clone()),
        c,
        2.0,
    );
}

#[test]
fn concurrent_mix_with_lru_cap() {
    let c = clock();
    run(
        Options::new()
            .sync(SyncPolicy::Never)
            .max_entries(20)
            .clock(c.clone()),
        c,
        2.0,
    );
}

#[test]
fn concurrent_mix_with_periodic_sync() {
    let c = clock();
    run(
        Options::new()
            .sync(SyncPolicy::Periodic(Duration::from_millis(3)))
            .clock(c.clone()),
        c,
        1.5,
    );
}

#[test]
fn concurrent_mix_with_group_commit() {
    let c = clock();
    run(
        Options::new()
            .sync(SyncPolicy::Always)
            .max_entries(40)
            .clock(c.clone()),
        c,
        1.5,
    );
}

#[test]
fn same_key_writers_agree_in_memory_and_on_disk() {
    // Two writers race on one key; whichever wins in memory must win after a
    // reopen (sequence numbers decide both).
    for round in 0..20 {
        let t = TempStore::new();
        let s = Arc::new(
            Options::new()
                .sync(SyncPolicy::Never)
                .open(&t.path)
                .unwrap(),
        );
        let hs: Vec<_> = (0..4u64)
            .map(|w| {
                let s = s.clone();
                thread::spawn(move || {
                    for i in 0..200u64 {
                        s.put(b"hot", value(0, w * 1000 + i)).unwrap();
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        let in_memory = s.get(b"hot").unwrap().unwrap();
        s.check_invariants().unwrap();
        drop(s);
        let on_disk = Store::open(&t.path).unwrap().get(b"hot").unwrap().unwrap();
        assert_eq!(in_memory, on_disk, "round {round}");
    }
}
