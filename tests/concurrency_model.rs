//! Many threads mixing every operation on shared keys, checked against a
//! model of real-time order.
//!
//! Every operation takes a ticket from one counter when it starts and another
//! when it returns; "a returned before b started" is then exact. Values carry
//! their key, a unique version and a checksum. At the end:
//! - each read returned a whole value written to that key, by a write that
//!   had started before the read returned and had not been replaced (by a
//!   write, delete or clear that started after it returned) before the read
//!   started; a read that found nothing had a delete, clear (or the initial
//!   absence) in the same position;
//! - each key holds what one of its last writes (those no other write of the
//!   key followed in real time) left;
//! - the invariants hold (also checked while the threads run), and a reopen
//!   finds exactly the same contents.
//!
//! With an entry cap any key may have been evicted, so absence is always
//! allowed there; keys written with short expiries (while the clock moves)
//! are held to the value checks only.
//!
//! Compaction runs beside them (from the thread that also clears and
//! purges), and the keys with expiries are renewed (`touch`) now and then.
//!
//! And one race in particular: a reader letting go of a deleted entry while
//! `clear` runs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use sfs::testing::TestRng;
use sfs::{ManualClock, Options, PutOptions, Store, SyncPolicy};

const KEYS: u64 = 16;
/// Keys from here on get short expiries.
const TTL_KEYS: u64 = 12;

fn key(k: u64) -> Vec<u8> {
    format!("key-{k:02}").into_bytes()
}

/// key, version, filler, CRC of everything before.
fn value(k: u64, version: u64) -> Vec<u8> {
    let mut v = key(k);
    v.extend_from_slice(&version.to_le_bytes());
    let filler = (version.wrapping_mul(2654435761) % 2500) as usize;
    v.extend((0..filler).map(|i| (i as u64 ^ version) as u8));
    let c = crc32fast::hash(&v);
    v.extend_from_slice(&c.to_le_bytes());
    v
}

/// The version of a whole value of key `k`; panics on anything else.
fn version_of(k: u64, v: &[u8]) -> u64 {
    let kl = key(k).len();
    assert!(v.len() >= kl + 12, "value of {k} too short");
    let (body, c) = v.split_at(v.len() - 4);
    assert_eq!(
        crc32fast::hash(body).to_le_bytes(),
        c,
        "torn or foreign value for key {k}"
    );
    assert_eq!(
        &body[..kl],
        key(k).as_slice(),
        "value of another key read for key {k}"
    );
    u64::from_le_bytes(body[kl..kl + 8].try_into().unwrap())
}

/// What an operation did to a key, or saw of it.
#[derive(Clone, Copy, Debug)]
enum Event {
    /// Put this version (`None`: deleted, cleared).
    Write(Option<u64>),
    /// Read this version (`None`: found nothing).
    Read(Option<u64>),
    /// `contains` answered.
    Contains(bool),
}

#[derive(Clone, Copy, Debug)]
struct Record {
    key: u64,
    event: Event,
    start: u64,
    end: u64,
}

struct Shared {
    store: Store,
    clock: Arc<ManualClock>,
    ticket: AtomicU64,
    version: AtomicU64,
}

impl Shared {
    fn tick(&self) -> u64 {
        self.ticket.fetch_add(1, Ordering::SeqCst)
    }
}

/// A worker: `n` random operations, each logged.
fn worker(sh: &Shared, seed: u64, n: usize, log: &mut Vec<Record>) {
    let s = &sh.store;
    let mut r = TestRng::new(seed);
    for _ in 0..n {
        let k = r.below(KEYS);
        let ttl = k >= TTL_KEYS;
        let start = sh.tick();
        let event = match r.below(100) {
            0..=29 => {
                let ver = sh.version.fetch_add(1, Ordering::Relaxed);
                if ttl {
                    s.put_with_ttl(key(k), value(k, ver), Duration::from_millis(r.below(40)))
                        .unwrap();
                } else if r.below(4) == 0 {
                    let meta = ver.to_le_bytes();
                    s.put_with(key(k), value(k, ver), &PutOptions::new().metadata(&meta))
                        .unwrap();
                } else {
                    s.put(key(k), value(k, ver)).unwrap();
                }
                Event::Write(Some(ver))
            }
            30..=41 => {
                s.delete(key(k)).unwrap();
                Event::Write(None)
            }
            42..=56 => Event::Read(s.get(key(k)).unwrap().map(|v| version_of(k, &v))),
            57..=66 => {
                // Zero-copy, held across a few more operations of others.
                let g = s.get_ref(key(k)).unwrap();
                let got = g.as_ref().map(|v| version_of(k, v));
                thread::yield_now();
                if let (Some(g), Some(ver)) = (&g, got) {
                    assert_eq!(version_of(k, g), ver, "a held value changed");
                }
                Event::Read(got)
            }
            67..=74 => Event::Read(s.get_entry(key(k)).unwrap().map(|e| {
                let ver = version_of(k, &e.value);
                assert!(
                    e.metadata.is_empty() || e.metadata == ver.to_le_bytes(),
                    "metadata of another write"
                );
                ver
            })),
            75..=80 => Event::Read(s.peek(key(k)).unwrap().map(|v| version_of(k, &v))),
            81..=86 => Event::Contains(s.contains(key(k))),
            87..=90 => {
                // A snapshot: every value it yields is whole.
                for kv in s.iter() {
                    let (kk, v) = kv.unwrap();
                    let k: u64 = std::str::from_utf8(&kk[4..]).unwrap().parse().unwrap();
                    version_of(k, &v);
                }
                continue;
            }
            _ => {
                let _ = s.stats();
                let _ = s.len();
                if k >= TTL_KEYS {
                    // Renewals change expiries only; TTL keys are held to
                    // the value checks.
                    s.touch(key(k), Duration::from_millis(r.below(60))).unwrap();
                }
                continue;
            }
        };
        let end = sh.tick();
        log.push(Record {
            key: k,
            event,
            start,
            end,
        });
    }
}

/// Clears, purges, syncs and moves the clock until the workers are done
/// (and for at least `rounds` rounds).
fn janitor(sh: &Shared, rounds: usize, workers_done: &AtomicBool, log: &mut Vec<Record>) {
    let mut i = 0;
    while i < rounds || !workers_done.load(Ordering::Acquire) {
        i += 1;
        sh.clock.advance(Duration::from_millis(7));
        sh.store.purge_expired().unwrap();
        if i % 40 == 39 {
            let start = sh.tick();
            sh.store.clear().unwrap();
            let end = sh.tick();
            for k in 0..KEYS {
                log.push(Record {
                    key: k,
                    event: Event::Write(None),
                    start,
                    end,
                });
            }
        }
        if i % 10 == 0 {
            sh.store.sync().unwrap();
        }
        if i % 15 == 7 {
            // Moves entries while the workers read and write them: contents
            // do not change, so the model needs no record of it.
            sh.store.compact().unwrap();
        }
        if i % 25 == 0 {
            sh.store.check_invariants().unwrap();
        }
        thread::yield_now();
    }
}

/// A key's writes, to ask which may have been its state at some moment.
struct Writes {
    all: Vec<Record>,
    /// Ends, sorted, with the latest start among writes that ended by then.
    ends: Vec<u64>,
    max_start: Vec<u64>,
}

impl Writes {
    fn new(all: Vec<Record>) -> Writes {
        let mut by_end: Vec<(u64, u64)> = all.iter().map(|w| (w.end, w.start)).collect();
        by_end.sort_unstable();
        let mut m = 0;
        let max_start = by_end
            .iter()
            .map(|&(_, s)| {
                m = m.max(s);
                m
            })
            .collect();
        Writes {
            all,
            ends: by_end.iter().map(|e| e.0).collect(),
            max_start,
        }
    }

    /// Whether write `w` may have been the key's state during `[from, to]`:
    /// it started before `to`, and no other write started after it returned
    /// and returned before `from`.
    fn possibly_current(&self, w: &Record, from: u64, to: u64) -> bool {
        let n = self.ends.partition_point(|&e| e < from);
        w.start < to && (n == 0 || self.max_start[n - 1] <= w.end)
    }
}

fn run(policy: SyncPolicy, cap: Option<usize>, workers: u64, ops: usize, rounds: usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sfs");
    let clock = Arc::new(ManualClock::new(1_000_000));
    // No background sweep: the model removes expired entries at purges only.
    let mut opts = Options::new()
        .sync(policy)
        .clock(clock.clone())
        .active_expiry(None);
    if let Some(c) = cap {
        opts = opts.max_entries(c);
    }
    let sh = Arc::new(Shared {
        store: opts.open(&path).unwrap(),
        clock,
        ticket: AtomicU64::new(1),
        version: AtomicU64::new(1),
    });
    let go = Arc::new(Barrier::new(workers as usize + 1));
    let workers_done = Arc::new(AtomicBool::new(false));
    let mut hs = Vec::new();
    for w in 0..workers {
        let (sh, go) = (sh.clone(), go.clone());
        hs.push(thread::spawn(move || {
            let mut log = Vec::new();
            go.wait();
            worker(&sh, w + 1, ops, &mut log);
            log
        }));
    }
    let j = {
        let (sh, go, workers_done) = (sh.clone(), go.clone(), workers_done.clone());
        thread::spawn(move || {
            let mut log = Vec::new();
            go.wait();
            janitor(&sh, rounds, &workers_done, &mut log);
            log
        })
    };
    let mut log: Vec<Record> = Vec::new();
    for h in hs {
        log.extend(h.join().expect("a worker panicked"));
    }
    workers_done.store(true, Ordering::Release);
    log.extend(j.join().expect("the janitor panicked"));
    let s = &sh.store;
    s.check_invariants().unwrap();

    let end = sh.tick();
    let mut by_key: BTreeMap<u64, Vec<Record>> = BTreeMap::new();
    for r in &log {
        by_key.entry(r.key).or_default().push(*r);
    }
    let (mut reads, mut writes_total) = (0usize, 0usize);
    for k in 0..KEYS {
        let recs = by_key.remove(&k).unwrap_or_default();
        // The initial absence is a write that returned before anything.
        let mut all: Vec<Record> = vec![Record {
            key: k,
            event: Event::Write(None),
            start: 0,
            end: 0,
        }];
        all.extend(recs.iter().filter(|r| matches!(r.event, Event::Write(_))));
        writes_total += all.len() - 1;
        let writes = Writes::new(all);
        let strict = k < TTL_KEYS;
        for r in recs.iter() {
            let seen = match r.event {
                Event::Write(_) => continue,
                Event::Read(v) => Some(v),
                Event::Contains(_) => None,
            };
            reads += 1;
            let ok = writes.all.iter().any(|w| {
                let Event::Write(wv) = w.event else {
                    unreachable!()
                };
                if !writes.possibly_current(w, r.start, r.end) {
                    return false;
                }
                match (seen, r.event) {
                    (Some(v), _) => v == wv || (v.is_none() && (!strict || cap.is_some())),
                    (None, Event::Contains(c)) => {
                        c == wv.is_some() || (!c && (!strict || cap.is_some()))
                    }
                    _ => unreachable!(),
                }
            });
            // Expiring keys: a value read was at least written to that key.
            let written = match r.event {
                Event::Read(Some(v)) => writes
                    .all
                    .iter()
                    .any(|w| matches!(w.event, Event::Write(Some(x)) if x == v) && w.start < r.end),
                _ => true,
            };
            assert!(written, "key {k}: {r:?} saw a version never written to it");
            assert!(
                ok || !strict,
                "key {k}: {r:?} matches no write that could be current"
            );
        }
        // The final state.
        let last = s.peek(key(k)).unwrap().map(|v| version_of(k, &v));
        if strict {
            let ok = writes.all.iter().any(|w| {
                writes.possibly_current(w, end, end)
                    && matches!(w.event, Event::Write(v) if v == last)
            }) || (last.is_none() && cap.is_some());
            assert!(ok, "key {k} ends as {last:?}, which no last write left");
        }
    }
    assert!(
        reads > 100 && writes_total > 100,
        "{reads} reads, {writes_total} writes"
    );
    eprintln!(
        "{policy:?} cap {cap:?}: {reads} reads and {writes_total} writes checked, {} entries at the end",
        s.len()
    );
    if let Some(c) = cap {
        assert!(s.len() <= c);
    }

    // A reopen finds exactly what memory held.
    let before: BTreeMap<Vec<u8>, Vec<u8>> = s.iter().map(|r| r.unwrap()).collect();
    let sh = Arc::try_unwrap(sh).ok().expect("all threads joined");
    let clock = sh.clock.clone();
    sh.store.close().unwrap();
    let mut opts = Options::new().clock(clock);
    if let Some(c) = cap {
        opts = opts.max_entries(c);
    }
    let s = opts.open(&path).unwrap();
    s.check_invariants().unwrap();
    let after: BTreeMap<Vec<u8>, Vec<u8>> = s.iter().map(|r| r.unwrap()).collect();
    assert_eq!(after, before, "a reopen changed the contents");
}

#[test]
fn many_threads_on_shared_keys_without_sync() {
    run(SyncPolicy::Never, None, 4, 25_000, 300);
}

#[test]
fn many_threads_on_shared_keys_with_a_cap_and_the_flusher() {
    run(
        SyncPolicy::Periodic(Duration::from_millis(2)),
        Some(8),
        4,
        20_000,
        300,
    );
}

#[test]
fn many_threads_on_shared_keys_with_group_commit() {
    run(SyncPolicy::Always, Some(10), 4, 2_000, 60);
}

#[test]
fn a_reader_letting_go_of_a_deleted_entry_while_clear_runs() {
    // A zero-copy guard on a deleted entry returns the block's space when it
    // is dropped. Unpinning and returning the space were two steps: `clear`
    // could find no reader between them, cut the file back to its header,
    // and then get a block past the end of the file back in its free list.
    // A thread asking for stats keeps the space lock busy, which widens
    // that gap.
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(
        Options::new()
            .sync(SyncPolicy::Never)
            .open(dir.path().join("r.sfs"))
            .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let (s, stop) = (s.clone(), stop.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = s.stats();
            }
        })
    };
    for round in 0..4000 {
        s.put(b"other", [1u8; 100]).unwrap();
        s.put(b"k", [2u8; 3000]).unwrap();
        let guard = s.get_ref(b"k").unwrap().unwrap();
        assert!(s.delete(b"k").unwrap());
        assert_eq!(s.stats().reader_locked_blocks, 1);
        let go = Arc::new(Barrier::new(2));
        let clearer = {
            let (s, go) = (s.clone(), go.clone());
            thread::spawn(move || {
                go.wait();
                s.clear().unwrap();
            })
        };
        go.wait();
        drop(guard);
        clearer.join().unwrap();
        s.check_invariants()
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(s.stats().reader_locked_blocks, 0);
        assert_eq!(s.len(), 0);
    }
    stop.store(true, Ordering::Relaxed);
    busy.join().unwrap();
}
