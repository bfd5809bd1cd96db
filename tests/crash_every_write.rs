//! Crash at every write. A workload that splits, merges, cuts the tail,
//! evicts, purges, clears, overwrites, renews expiries and compacts runs
//! once on a recording storage;
//! then, for every k, the file is rebuilt as a crash after the k-th change
//! would leave it (a process crash, the k-th write torn, a power loss that
//! drops or reorders what was not synced), opened read-write, and checked
//! against what had been acknowledged:
//! - a process crash keeps every operation that had completed; the one in
//!   flight is either wholly there or not at all, key by key;
//! - a power loss keeps the same under `SyncPolicy::Always`, and under
//!   `SyncPolicy::Never` everything up to the last completed `sync()`;
//! - a key never holds a value that was not written to it, nor a mix, nor an
//!   expiry it never had; a delete that was acknowledged (`Always`) or
//!   synced stays deleted; a renewal (`touch`) is kept or not, never lost
//!   with the entry; a compaction loses and duplicates nothing;
//! - the recovered store passes `check_invariants`, accepts writes, and
//!   reopens to the same state.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Model;
use sfs::fuzzing::BatchOp;
use sfs::testing::{Event, FaultStorage, MemStorage, Recording, Storage, TestRng};
use sfs::{Batch, Clock, ManualClock, Options, PutOptions, Store, SyncPolicy};

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)*) => {
        if !$cond {
            return Err(format!($($fmt)*));
        }
    };
}

const KEYS: u8 = 10;
const START_MS: i64 = 1_000_000;

/// Keys 5.. are longer than the index keeps inline.
fn key(k: u8) -> Vec<u8> {
    if k < 5 {
        format!("k{k}").into_bytes()
    } else {
        format!("a-rather-long-key-number-{k:03}").into_bytes()
    }
}

/// A value that says which key and which write it belongs to.
fn value(k: u8, version: u32, len: u16) -> Vec<u8> {
    let mut v = format!("{k}:{version}:").into_bytes();
    v.resize(usize::from(len).max(v.len()), (version % 251) as u8);
    v
}

#[derive(Clone, Debug)]
enum Op {
    Open,
    Put(u8, u16),
    PutTtl(u8, u16, u32),
    Get(u8),
    Delete(u8),
    Purge,
    Clear,
    Advance(u32),
    Sync,
    Touch(u8, u32),
    Compact,
    /// `compare_and_swap(k, expected, new value)`: expecting the model's
    /// value (`true`, it succeeds) or another one (it fails).
    Cas(u8, u16, bool),
    /// `compare_and_swap(k, the model's value, None)`.
    CasDelete(u8),
    PutIfAbsent(u8, u16, u32),
    /// `update(k, append a byte)`.
    Update(u8),
    /// `apply` of a batch of these.
    Batch(Vec<Item>),
    Close,
}

/// One operation of a batch.
#[derive(Clone, Debug)]
enum Item {
    Put(u8, u16),
    PutTtl(u8, u16, u32),
    Delete(u8),
    Touch(u8, u32),
}

/// A random batch of up to `n` operations on random keys.
fn random_batch(rng: &mut TestRng, n: u64, sizes: &[u16]) -> Vec<Item> {
    (0..rng.below(n + 1))
        .map(|_| {
            let k = rng.below(u64::from(KEYS)) as u8;
            let size = sizes[rng.below(sizes.len() as u64) as usize];
            match rng.below(10) {
                0..=4 => Item::Put(k, size),
                5 => Item::PutTtl(k, size, 50 + rng.below(400) as u32),
                6..=7 => Item::Delete(k),
                _ => Item::Touch(k, rng.below(600) as u32),
            }
        })
        .collect()
}

/// One operation of the workload with the model before and after it and the
/// events it caused.
struct Step {
    op: Op,
    before: Model,
    after: Model,
    /// The clock while it ran, and after.
    now: i64,
    now_after: i64,
    /// Its events are `events.0..events.1` of the recording.
    events: (usize, usize),
}

/// A scripted start that is sure to split, merge, cut the tail, purge, evict
/// and clear, then random operations.
fn workload(seed: u64, policy: SyncPolicy, n: usize) -> Vec<Op> {
    use Op::*;
    let mut ops = vec![
        Open,
        Put(0, 2000),
        Put(1, 10),
        Put(2, 300),
        Delete(0),    // a free block in the middle
        Put(3, 40),   // split from it
        Delete(3),    // merged back
        Put(4, 3000), // at the end
        Delete(4),    // the tail is cut off
        Put(1, 500),  // overwrite, larger
        Put(2, 20),   // overwrite, smaller
        PutTtl(5, 100, 100),
        PutTtl(6, 40, 5000),
        Advance(200),
        Purge, // 5 expired, 6 not
        Get(1),
        Put(6, 50),
        Put(7, 60),
        Put(8, 70),
        Get(2),
        Put(9, 80),
        Put(0, 90),
        Put(3, 100), // over a cap of 6: evictions, not in write order
        Sync,
        Put(5, 30),
        Clear,
        Put(1, 1000),
        Put(2, 16),
        Put(1, 12), // the old copy of 1 is kept until a sync
        Sync,
        Put(1, 14),
        Delete(1), // ...and freed with the key
        PutTtl(3, 200, 300),
        Touch(3, 5000), // renewed in place
        Put(4, 1500),
        Put(5, 900),
        Put(6, 700),
        Delete(4),
        Delete(2),
        Compact, // moves 5 and 6 down, cuts the tail
        Touch(6, 2000),
        Advance(400), // 3 lives on only through its renewal
        Get(3),
        Cas(5, 300, true),       // replaces 5
        Cas(5, 30, false),       // refused
        PutIfAbsent(8, 40, 300), // absent: taken, with a TTL
        PutIfAbsent(5, 40, 0),   // refused
        Update(6),               // keeps its expiry
        Update(7),               // absent: inserted
        CasDelete(6),
        Batch(vec![]),                  // empty: nothing written
        Batch(vec![Item::Put(1, 100)]), // the first: the file becomes version 2
        Batch(vec![
            Item::Put(2, 300),
            Item::Delete(1),
            Item::Put(9, 40),
            Item::Touch(8, 900),
        ]),
        Batch(vec![
            Item::Put(3, 20),
            Item::Put(3, 1500),
            Item::Delete(7),
            Item::PutTtl(4, 50, 200),
            Item::Put(0, 0),
            Item::Touch(3, 700),
            Item::Put(5, 3000),
            Item::Delete(2),
        ]),
        Put(9, 30),
        Delete(5),
    ];
    let mut rng = TestRng::new(seed);
    let sizes = [0u16, 12, 20, 40, 100, 300, 700, 1500, 3000];
    while ops.len() < n {
        let k = rng.below(u64::from(KEYS)) as u8;
        let size = sizes[rng.below(sizes.len() as u64) as usize];
        ops.push(match rng.below(100) {
            0..=33 => Put(k, size),
            34..=35 => Cas(k, size, rng.below(4) != 0),
            36 => CasDelete(k),
            37..=38 => PutIfAbsent(k, size, rng.below(2) as u32 * (50 + rng.below(400) as u32)),
            39 => Update(k),
            40..=49 => PutTtl(k, size, 50 + rng.below(400) as u32),
            50..=64 => Get(k),
            65..=79 => Delete(k),
            80..=84 => Purge,
            85 => Clear,
            86..=88 => Advance(rng.below(300) as u32),
            89..=91 => Touch(k, rng.below(600) as u32),
            92..=93 => Compact,
            94..=95 => Batch(random_batch(&mut rng, 8, &sizes)),
            _ if policy != SyncPolicy::Always => Sync,
            _ => Get(k),
        });
    }
    ops.push(Close);
    ops
}

/// Runs the workload on a recording storage; returns the steps and the
/// recording.
/// `frequent`: `Options::frequent_syncs` (growth by a reserve of written
/// space) and every batch `durable()`, as a write-ahead log under `Never`.
fn record(
    ops: &[Op],
    policy: SyncPolicy,
    cap: Option<usize>,
    frequent: bool,
) -> (Vec<Step>, Recording) {
    let fs = Arc::new(FaultStorage::new());
    let clock = Arc::new(ManualClock::new(START_MS));
    // No background sweep: its writes would land in the recording.
    let mut opts = Options::new()
        .sync(policy)
        .clock(clock.clone())
        .active_expiry(None);
    if frequent {
        // Only when asked: `false` would also turn it off under `Always`.
        opts = opts.frequent_syncs(true);
    }
    if let Some(c) = cap {
        opts = opts.max_entries(c);
    }
    let mut store: Option<Store> = None;
    let mut model = Model::new(cap);
    let mut steps = Vec::new();
    let mut version = 0u32;
    for op in ops {
        let before = model.clone();
        let now = clock.now_millis();
        let e0 = fs.event_count();
        match *op {
            Op::Open => {
                store = Some(opts.open_on("crash.sfs", fs.clone()).unwrap());
            }
            Op::Close => drop(store.take()),
            _ => {
                let s = store.as_ref().unwrap();
                match *op {
                    Op::Put(k, n) => {
                        version += 1;
                        let v = value(k, version, n);
                        s.put(key(k), &v).unwrap();
                        model.put(&key(k), &v, 0, now);
                    }
                    Op::PutTtl(k, n, ttl) => {
                        version += 1;
                        let v = value(k, version, n);
                        s.put_with_ttl(key(k), &v, Duration::from_millis(u64::from(ttl)))
                            .unwrap();
                        model.put(&key(k), &v, (now + i64::from(ttl)) as u64, now);
                    }
                    Op::Get(k) => assert_eq!(s.get(key(k)).unwrap(), model.get(&key(k), now)),
                    Op::Delete(k) => {
                        let visible = model.visible(&key(k), now).is_some();
                        model.delete(&key(k));
                        assert_eq!(s.delete(key(k)).unwrap(), visible);
                    }
                    Op::Purge => assert_eq!(s.purge_expired().unwrap(), model.purge(now)),
                    Op::Clear => {
                        s.clear().unwrap();
                        model.clear();
                    }
                    Op::Advance(ms) => clock.advance(Duration::from_millis(u64::from(ms))),
                    Op::Sync => s.sync().unwrap(),
                    Op::Touch(k, ttl) => {
                        let renewed = s
                            .touch(key(k), Duration::from_millis(u64::from(ttl)))
                            .unwrap();
                        assert_eq!(renewed, model.touch(&key(k), now + i64::from(ttl), now));
                    }
                    Op::Compact => {
                        s.compact().unwrap();
                    }
                    Op::Cas(k, n, right) => {
                        version += 1;
                        let v = value(k, version, n);
                        let current = model.visible(&key(k), now).cloned();
                        let expected = match (&current, right) {
                            (c, true) => c.clone(),
                            (Some(_), false) => None,
                            (None, false) => Some(b"not there".to_vec()),
                        };
                        let r = s.compare_and_swap(key(k), expected.as_deref(), Some(&v));
                        if right {
                            assert_eq!(r.unwrap(), Ok(()));
                            model.put(&key(k), &v, 0, now);
                        } else {
                            assert_eq!(r.unwrap().unwrap_err().current, current);
                        }
                    }
                    Op::CasDelete(k) => {
                        let current = model.visible(&key(k), now).cloned();
                        let r = s.compare_and_swap(key(k), current.as_deref(), None);
                        assert_eq!(r.unwrap(), Ok(()));
                        model.delete(&key(k));
                    }
                    Op::PutIfAbsent(k, n, ttl) => {
                        version += 1;
                        let v = value(k, version, n);
                        let opts = PutOptions::new();
                        let opts = match ttl {
                            0 => opts,
                            t => opts.ttl(Duration::from_millis(u64::from(t))),
                        };
                        let r = s.compare_and_swap_with(key(k), None, Some(&v), &opts);
                        match model.visible(&key(k), now).cloned() {
                            None => {
                                assert_eq!(r.unwrap(), Ok(()));
                                let expiry = if ttl == 0 { 0 } else { now + i64::from(ttl) };
                                model.put(&key(k), &v, expiry as u64, now);
                            }
                            current => assert_eq!(r.unwrap().unwrap_err().current, current),
                        }
                    }
                    Op::Update(k) => {
                        let new = s
                            .update(key(k), |v| Some([v.unwrap_or(b""), b"+"].concat()))
                            .unwrap()
                            .unwrap();
                        let expiry = match model.visible(&key(k), now) {
                            Some(_) => model.map[&key(k)].1,
                            None => 0,
                        };
                        let mut expected = model.visible(&key(k), now).cloned().unwrap_or_default();
                        expected.push(b'+');
                        assert_eq!(new, expected);
                        model.put(&key(k), &new, expiry, now);
                    }
                    Op::Batch(ref items) => {
                        let mut b = Batch::new();
                        if frequent {
                            b.durable();
                        }
                        let mut ops = Vec::new();
                        let ms = |t: u32| Duration::from_millis(u64::from(t));
                        for item in items {
                            match *item {
                                Item::Put(k, n) | Item::PutTtl(k, n, _) => {
                                    version += 1;
                                    let v = value(k, version, n);
                                    let ttl = match *item {
                                        Item::PutTtl(_, _, t) => t,
                                        _ => 0,
                                    };
                                    if ttl == 0 {
                                        b.put(key(k), &v);
                                        ops.push(BatchOp::Put(key(k), v, 0));
                                    } else {
                                        b.put_with_ttl(key(k), &v, ms(ttl));
                                        let e = (now + i64::from(ttl)) as u64;
                                        ops.push(BatchOp::Put(key(k), v, e));
                                    }
                                }
                                Item::Delete(k) => {
                                    b.delete(key(k));
                                    ops.push(BatchOp::Delete(key(k)));
                                }
                                Item::Touch(k, t) => {
                                    b.touch(key(k), ms(t));
                                    ops.push(BatchOp::Touch(key(k), now + i64::from(t)));
                                }
                            }
                        }
                        let applied = s.apply(&b);
                        if model.apply_batch(&ops, now) {
                            applied.unwrap();
                        } else {
                            assert!(matches!(applied, Err(sfs::Error::TooLarge { .. })));
                        }
                    }
                    Op::Open | Op::Close => unreachable!(),
                }
                s.check_invariants().unwrap();
                for k in 0..KEYS {
                    let now = clock.now_millis();
                    let want = model.visible(&key(k), now).cloned();
                    assert_eq!(s.peek(key(k)).unwrap(), want, "key {k} after {op:?}");
                }
                assert_eq!(s.len(), model.live_len(clock.now_millis()), "{op:?}");
                assert_eq!(s.stats().entries, model.map.len(), "{op:?}");
            }
        }
        steps.push(Step {
            op: op.clone(),
            before,
            after: model.clone(),
            now,
            now_after: clock.now_millis(),
            events: (e0, fs.event_count()),
        });
    }
    (steps, fs.recording())
}

/// What each key may read as after a crash: the (value, expiry) pairs
/// allowed, `None` for absent.
type Allowed = BTreeMap<u8, Vec<Option<(Vec<u8>, u64)>>>;

fn allow(allowed: &mut Allowed, m: &Model, now: i64) {
    for k in 0..KEYS {
        let v = m
            .visible(&key(k), now)
            .map(|v| (v.clone(), m.map[&key(k)].1));
        let a = allowed.entry(k).or_default();
        if !a.contains(&v) {
            a.push(v);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// kill -9: every completed write is in the page cache.
    Process,
    /// The write at the crash point is torn.
    Torn,
    /// Power loss: unsynced writes dropped or reordered.
    Power,
}

/// The states a crash right after event `k` (in `Torn` mode: in the middle of
/// event `k`) may leave, per key, and the clock at that moment.
fn allowed_after(
    steps: &[Step],
    rec: &Recording,
    k: usize,
    mode: Mode,
    policy: SyncPolicy,
    cap: Option<usize>,
) -> (Allowed, i64) {
    // The step in flight: the one that made event k (torn), or the one whose
    // events straddle k. Steps whose events all happened are complete.
    let in_flight = |s: &Step| match mode {
        Mode::Torn => s.events.0 <= k && k < s.events.1,
        _ => s.events.0 < k && k < s.events.1,
    };
    let done = steps.iter().rposition(|s| s.events.1 <= k);
    let current = steps.iter().position(in_flight);
    let now = match (current, done) {
        (Some(i), _) => steps[i].now,
        (None, Some(i)) => steps[i].now_after,
        (None, None) => START_MS,
    };
    let mut allowed = Allowed::new();
    if mode == Mode::Power && policy != SyncPolicy::Always {
        // Everything from the last completed sync on may or may not be there.
        let d = rec.durable_prefix(k);
        // The step that had started when that sync completed (the flusher's
        // syncs may also fall between two steps).
        let base = steps.iter().rposition(|s| s.events.0 < d).unwrap_or(0);
        // A batch whose own sync completed is acknowledged-to-be: durable.
        let batch_durable = batch_synced_at(&steps[base], rec).is_some_and(|j| j < d);
        if (d == 0 || d <= steps[base].events.1) && !batch_durable {
            allow(&mut allowed, &steps[base].before, now);
        }
        let last = current.or(done).unwrap_or(0);
        let mut inserted = false;
        for s in &steps[base..=last.max(base)] {
            allow(&mut allowed, &s.after, now);
            inserted |= s.after.map.keys().any(|k| !s.before.map.contains_key(k));
        }
        if cap.is_some() && inserted {
            // With a cap, an insert after the sync may have evicted one key
            // in memory while the disk kept another: the open evicts by write
            // order, the store by use. Any key may be the one evicted.
            for a in allowed.values_mut() {
                if !a.contains(&None) {
                    a.push(None);
                }
            }
        }
        return (allowed, now);
    }
    match current {
        Some(i) => {
            allow(&mut allowed, &steps[i].before, now);
            allow(&mut allowed, &steps[i].after, now);
        }
        None => match done {
            Some(i) => allow(&mut allowed, &steps[i].after, now),
            None => allow(&mut allowed, &Model::new(cap), now),
        },
    }
    (allowed, now)
}

/// The event index of a batch step's own sync: the first sync after its
/// commit record was written (`None` for other steps, or a batch that wrote
/// nothing).
fn batch_synced_at(step: &Step, rec: &Recording) -> Option<usize> {
    if !matches!(step.op, Op::Batch(_)) {
        return None;
    }
    let range = step.events.0..step.events.1;
    let commit = range.clone().find(|&i| {
        // The record may open its own write or end a run of members
        // written with it.
        matches!(&rec.events[i], Event::Write { bytes, .. } if bytes.windows(5).any(|w| w == b"sfsBC"))
    })?;
    (commit..range.end).find(|&i| rec.events[i] == Event::Sync)
}

/// What a batch in flight at a crash changes: the keys it names whose
/// visible state differs before and after it, with their states after.
/// (Keys it evicted to make room are not its effects: evictions come
/// first, as for a single put.)
/// A key's visible state: (value, expiry), or absent.
type KeyState = Option<(Vec<u8>, u64)>;

struct Joint {
    changed: Vec<(u8, KeyState)>,
    /// Whether every changed key must be old or every one new (otherwise,
    /// under `Never` after a power loss, the keys' old states may be older
    /// still: only the keys it puts are checked, all there or none).
    strict: bool,
}

fn joint_for(step: &Step, now: i64, strict: bool) -> Option<Joint> {
    let Op::Batch(items) = &step.op else {
        return None;
    };
    let state = |m: &Model, k: u8| {
        m.visible(&key(k), now)
            .map(|v| (v.clone(), m.map[&key(k)].1))
    };
    let mut named: Vec<u8> = items
        .iter()
        .map(|i| match *i {
            Item::Put(k, _) | Item::PutTtl(k, _, _) | Item::Delete(k) | Item::Touch(k, _) => k,
        })
        .collect();
    named.sort_unstable();
    named.dedup();
    let changed = named
        .into_iter()
        .filter(|&k| state(&step.before, k) != state(&step.after, k))
        .map(|k| (k, state(&step.after, k)))
        .collect();
    Some(Joint { changed, strict })
}

/// The all-or-nothing check of a batch in flight.
fn check_joint(j: &Joint, got: &BTreeMap<u8, KeyState>) -> Result<(), String> {
    let new: Vec<bool> = j.changed.iter().map(|(k, a)| &got[k] == a).collect();
    let puts: Vec<bool> = j
        .changed
        .iter()
        .zip(&new)
        .filter(|((_, a), _)| a.is_some())
        .map(|(_, &n)| n)
        .collect();
    let all_puts = !puts.is_empty() && puts.iter().all(|&n| n);
    ensure!(
        puts.iter().all(|&n| n) || puts.iter().all(|&n| !n),
        "half a batch: {:?}",
        j.changed
            .iter()
            .zip(&new)
            .map(|((k, _), n)| (k, n))
            .collect::<Vec<_>>()
    );
    if all_puts || j.strict {
        let all = new.iter().all(|&n| n);
        ensure!(
            all || !(all_puts || (j.strict && new.iter().any(|&n| n))),
            "half a batch: {:?}",
            j.changed
                .iter()
                .zip(&new)
                .map(|((k, _), n)| (k, n))
                .collect::<Vec<_>>()
        );
    }
    Ok(())
}

/// The live contents of a store, sorted.
fn contents(s: &Store) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut v: Vec<_> = s.iter().map(|r| r.unwrap()).collect();
    v.sort();
    v
}

fn describe(bytes: &[u8]) -> String {
    let m = Arc::new(MemStorage::with_bytes(bytes.to_vec()));
    match Options::new()
        .read_only(true)
        .open_on("x.sfs", m as Arc<dyn Storage>)
    {
        Ok(s) => format!(
            "{:?}",
            contents(&s)
                .iter()
                .map(|(k, v)| format!(
                    "{}={}",
                    String::from_utf8_lossy(k),
                    String::from_utf8_lossy(&v[..v.len().min(8)])
                ))
                .collect::<Vec<_>>()
        ),
        Err(e) => e.to_string(),
    }
}

fn show(v: &Option<(Vec<u8>, u64)>) -> Option<String> {
    v.as_ref().map(|(v, e)| {
        format!(
            "{} (expires {e})",
            String::from_utf8_lossy(&v[..v.len().min(12)])
        )
    })
}

/// Opens the crashed file and checks it against what may be there.
fn check_image(
    bytes: Vec<u8>,
    allowed: &Allowed,
    now: i64,
    cap: Option<usize>,
    clean: bool,
    joint: Option<&Joint>,
) -> Result<(), String> {
    let clock = Arc::new(ManualClock::new(now));
    let mut opts = Options::new()
        .sync(SyncPolicy::Always)
        .clock(clock.clone())
        .active_expiry(None);
    if let Some(c) = cap {
        opts = opts.max_entries(c);
    }
    // A read-only open writes nothing and decides the same.
    let ro_contents = common::look_read_only(&opts, &bytes, |ro| Ok(contents(ro)))?;

    let mem = Arc::new(MemStorage::with_bytes(bytes));
    let store = opts
        .open_on("crash.sfs", mem.clone() as Arc<dyn Storage>)
        .map_err(|e| format!("open failed: {e}"))?;
    store.check_invariants()?;
    let damage = store.stats().corrupt_blocks;
    ensure!(
        !clean || damage == 0,
        "{damage} damaged blocks without a torn write"
    );
    let mut seen = BTreeMap::new();
    for k in 0..KEYS {
        let got = store
            .get_entry(key(k))
            .map_err(|e| format!("key {k} after recovery: {e}"))?
            .map(|e| {
                let ms = e.expires_at.map_or(0, |t| {
                    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
                });
                (e.value, ms)
            });
        let ok = &allowed[&k];
        ensure!(
            ok.contains(&got),
            "key {k} reads {:?}, allowed: {:?}",
            show(&got),
            ok.iter().map(show).collect::<Vec<_>>()
        );
        seen.insert(k, got);
    }
    if let Some(j) = joint {
        check_joint(j, &seen)?;
    }
    let live = contents(&store);
    ensure!(
        live == ro_contents,
        "read-only and read-write opens disagree"
    );
    ensure!(
        store.len() == live.len(),
        "len {} for {} live entries",
        store.len(),
        live.len()
    );
    if let Some(c) = cap {
        ensure!(
            store.len() <= c,
            "{} entries over a cap of {c}",
            store.len()
        );
    }
    // The recovered store takes writes and reopens to the same state.
    let w = |r: sfs::Result<()>| r.map_err(|e| format!("write after recovery: {e}"));
    w(store.put(b"after-the-crash", b"new"))?;
    w(store.put(key(1), b"rewritten"))?;
    w(store.delete(key(2)).map(drop))?;
    store.check_invariants()?;
    let expect = contents(&store);
    drop(store);
    let again = opts
        .open_on("crash.sfs", mem as Arc<dyn Storage>)
        .map_err(|e| format!("second open failed: {e}"))?;
    again.check_invariants()?;
    // Only crumbs (damage shorter than a block header, which no free header
    // fits) may still be there until a neighbour is freed.
    let st = again.stats();
    ensure!(
        st.corrupt_bytes <= 40 * st.corrupt_blocks,
        "damage after the repair: {} blocks, {} bytes",
        st.corrupt_blocks,
        st.corrupt_bytes
    );
    ensure!(contents(&again) == expect, "reopen after recovery differs");
    Ok(())
}

fn crash_everywhere(policy: SyncPolicy, cap: Option<usize>, seeds: &[u64]) {
    for &seed in seeds {
        crash_everywhere_once(policy, cap, false, seed);
    }
}

fn crash_everywhere_once(policy: SyncPolicy, cap: Option<usize>, frequent: bool, seed: u64) {
    let started = Instant::now();
    let ops = workload(seed, policy, 200);
    let (steps, rec) = record(&ops, policy, cap, frequent);
    let n = rec.events.len();
    if std::env::var("SFS_CRASH_TRACE").is_ok() {
        for (i, s) in steps.iter().enumerate() {
            let syncs: Vec<usize> = (s.events.0..s.events.1)
                .filter(|&e| rec.events[e] == Event::Sync)
                .collect();
            let mut keys: Vec<u8> = (0..KEYS)
                .filter(|&k| s.after.map.contains_key(&key(k)))
                .collect();
            keys.sort_unstable();
            eprintln!(
                "step {i} {:?} events {:?} syncs {syncs:?} keys after {keys:?}",
                s.op, s.events
            );
            for e in s.events.0..s.events.1 {
                if let Event::Write { offset, bytes, .. } = &rec.events[e] {
                    let what = if bytes.len() >= 5 && &bytes[..4] == b"sfsB" {
                        bytes[4] as char
                    } else {
                        '?'
                    };
                    eprintln!("    event {e}: write {offset} len {} {what}", bytes.len());
                } else {
                    eprintln!("    event {e}: {:?}", rec.events[e]);
                }
            }
        }
    }
    // The workload did what it is meant to exercise.
    let shrinks = rec
        .events
        .iter()
        .filter(|e| matches!(e, Event::SetLen(l) if *l > 64))
        .count();
    assert!(shrinks > 0, "no growth or tail truncation");
    assert!(rec.events.contains(&Event::SetLen(64)), "no clear");
    if cap.is_some() {
        let evictions = steps
            .iter()
            .filter(|s| {
                matches!(s.op, Op::Put(..))
                    && s.before.map.keys().any(|k| !s.after.map.contains_key(k))
            })
            .count();
        assert!(evictions > 0, "no eviction");
    }
    assert!(
        steps
            .iter()
            .any(|s| matches!(s.op, Op::Purge) && s.after.map.len() < s.before.map.len()),
        "nothing purged"
    );
    for (what, is) in [
        (
            "compare_and_swap",
            (|o: &Op| matches!(o, Op::Cas(..))) as fn(&Op) -> bool,
        ),
        ("a conditional delete", |o| matches!(o, Op::CasDelete(..))),
        ("put_if_absent", |o| matches!(o, Op::PutIfAbsent(..))),
        ("update", |o| matches!(o, Op::Update(..))),
        ("a batch", |o| matches!(o, Op::Batch(..))),
    ] {
        assert!(
            steps.iter().any(|s| is(&s.op) && s.events.1 > s.events.0),
            "no {what} wrote anything"
        );
    }
    if frequent {
        // Every batch that wrote synced itself, and the file grew by the
        // reserve, not one entry at a time.
        let batches: Vec<&Step> = steps
            .iter()
            .filter(|s| matches!(s.op, Op::Batch(..)) && s.events.1 > s.events.0)
            .collect();
        for s in &batches {
            let synced = rec.events[s.events.0..s.events.1].contains(&Event::Sync);
            assert!(synced, "a durable batch without its own sync: {:?}", s.op);
        }
        assert!(batches.len() > 1, "{} batches wrote", batches.len());
        // And the check below knows them as synced (their commit records
        // are found, also inside a run of members).
        assert!(
            batches.iter().any(|s| batch_synced_at(s, &rec).is_some()),
            "no batch's own sync found"
        );
        let mut len = 0;
        for e in &rec.events {
            if let Event::SetLen(l) = *e {
                assert!(
                    l <= len || l >= len + (16 << 10) || len == 0,
                    "grew from {len} to {l}"
                );
                len = l;
            }
        }
    }
    let mut images = 0usize;
    for k in 0..=n {
        let label = |mode: Mode, extra: &str| {
            let step = steps
                .iter()
                .position(|s| s.events.0 <= k && k < s.events.1.max(s.events.0 + 1));
            format!(
                "{policy:?} cap {cap:?}: crash after event {k}/{n} ({mode:?}{extra}), in step {step:?} {:?}",
                step.map(|i| &steps[i].op)
            )
        };
        let run = |bytes: Vec<u8>, mode: Mode, extra: &str| {
            let (allowed, now) = allowed_after(&steps, &rec, k, mode, policy, cap);
            let in_flight = steps.iter().find(|s| match mode {
                Mode::Torn => s.events.0 <= k && k < s.events.1,
                _ => s.events.0 < k && k < s.events.1,
            });
            let strict = !(mode == Mode::Power && policy != SyncPolicy::Always);
            let joint = in_flight.and_then(|s| joint_for(s, now, strict));
            let shown = describe(&bytes);
            if let Err(msg) = check_image(
                bytes,
                &allowed,
                now,
                cap,
                mode == Mode::Process,
                joint.as_ref(),
            ) {
                panic!("{}: {msg}\n  file holds: {shown}", label(mode, extra));
            }
        };
        run(rec.after(k), Mode::Process, "");
        images += 1;
        if k < n {
            for keep in rec.tear_points(k) {
                run(
                    rec.torn(k, keep),
                    Mode::Torn,
                    &format!(", {keep} bytes kept"),
                );
                images += 1;
            }
        }
        if rec.durable_prefix(k) < k {
            for seed in [0, 2, 3, 4, 5, 6, 7, 8] {
                run(
                    rec.power_loss(k, seed),
                    Mode::Power,
                    &format!(", seed {seed}"),
                );
                images += 1;
            }
        }
    }
    eprintln!(
        "{policy:?} cap {cap:?} seed {seed}: {} operations, {n} events, {images} crash images checked in {:.1?}",
        steps.len(),
        started.elapsed()
    );
}

#[test]
fn always_without_cap() {
    crash_everywhere(SyncPolicy::Always, None, &[1, 11, 21]);
}

#[test]
fn always_with_lru_cap() {
    crash_everywhere(SyncPolicy::Always, Some(6), &[2, 12, 22]);
}

#[test]
fn never_with_explicit_syncs() {
    crash_everywhere(SyncPolicy::Never, None, &[3, 13, 23]);
}

#[test]
fn never_with_frequent_syncs_and_durable_batches() {
    // A write-ahead log's settings: the file grows by a reserve of written
    // space, and each batch syncs itself before `apply` returns.
    for seed in [6, 16, 26] {
        crash_everywhere_once(SyncPolicy::Never, None, true, seed);
    }
}

#[test]
fn never_with_lru_cap() {
    crash_everywhere(SyncPolicy::Never, Some(6), &[4, 14, 24]);
}

#[test]
fn periodic_flusher() {
    // The flusher syncs at moments the workload does not choose; the check
    // finds the last completed sync in the recording wherever it fell.
    crash_everywhere(
        SyncPolicy::Periodic(Duration::from_millis(1)),
        Some(6),
        &[5, 15],
    );
}
