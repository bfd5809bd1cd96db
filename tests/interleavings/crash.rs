//! (b) of the explorer: the file after every event of a schedule, as a
//! process crash, a torn write and a power loss would leave it, opens and
//! holds what the operations allow.
//!
//! At a crash after event `k`, an operation that had returned (its last event
//! before `k`) must be there, one that had not started must not, and one in
//! flight may or may not; the states allowed are those of every serial order
//! of the required operations and any subset of those in flight. A power loss
//! under `SyncPolicy::Always` keeps the same promise (a returned write was
//! synced); under `Never` only what a completed `sync()` covered is required.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use sfs::fuzzing::Model;
use sfs::testing::{MemStorage, Recording, Storage};
use sfs::{ManualClock, SyncPolicy};

use crate::common::look_read_only;

use super::{
    Contents, Done, Op, Outcome, Setup, batch_keys, model_contents, model_op, model_room,
    model_room_part, serial_orders, show, store_contents,
};

/// The whole states a batch's keys may be in together: their contents in
/// every allowed serial order (a batch is all or nothing, so each key's
/// allowed set alone would not catch half a batch).
type Whole = BTreeSet<Contents>;

/// A batch's keys and the states they may be in together.
type Together = Option<(Vec<Vec<u8>>, Whole)>;

/// Images already checked against the same allowed states.
#[derive(Default)]
pub struct Cache(HashSet<u64>);

/// Key → every (value, expiry) it may hold; `None` for absent.
type Allowed = BTreeMap<Vec<u8>, BTreeSet<Option<(Vec<u8>, u64)>>>;

/// Checks every crash image of the recording from event `from` on; returns
/// how many were opened.
pub fn check_all(
    setup: Setup,
    rec: &Recording,
    from: usize,
    done: &[Done],
    initial: &Model,
    keys: &[Vec<u8>],
    cache: &mut Cache,
) -> Result<usize, String> {
    let n = rec.events.len();
    let mut opened = 0;
    for k in from..=n {
        let (process, now, whole) = allowed_at(k, n, done, initial, keys, false, setup);
        let mut images: Vec<(Vec<u8>, &Allowed, &Together, String)> =
            vec![(rec.after(k), &process, &whole, "process crash".into())];
        if k < n {
            for keep in rec.tear_points(k) {
                images.push((
                    rec.torn(k, keep),
                    &process,
                    &whole,
                    format!("torn, {keep} bytes"),
                ));
            }
        }
        let power;
        if rec.durable_prefix(k) < k {
            power = allowed_at(k, n, done, initial, keys, true, setup);
            for seed in [0, 2, 3] {
                images.push((
                    rec.power_loss(k, seed),
                    &power.0,
                    &power.2,
                    format!("power loss, seed {seed}"),
                ));
            }
        }
        for (bytes, allowed, whole, how) in images {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (&bytes, allowed, whole, now, setup.cap).hash(&mut h);
            if !cache.0.insert(h.finish()) {
                continue;
            }
            opened += 1;
            check_image(bytes, allowed, whole.as_ref(), now, setup, keys)
                .map_err(|e| format!("crash after event {k}/{n} ({how}): {e}"))?;
        }
    }
    Ok(opened)
}

/// The allowed states after a crash right after event `k` of `n`, and the
/// clock then. With `power`, under `SyncPolicy::Never`, only what a completed
/// `sync()` covered is required.
fn allowed_at(
    k: usize,
    n: usize,
    done: &[Done],
    initial: &Model,
    keys: &[Vec<u8>],
    power: bool,
    setup: Setup,
) -> (Allowed, i64, Together) {
    let policy = setup.policy;
    // Returned before the crash: its last event came before event k, or
    // every operation is over.
    let returned = |d: &Done| k == n || d.events.1 < k;
    let started = |d: &Done| d.events.0 <= k;
    let synced = |d: &Done| {
        done.iter()
            .any(|s| s.op == Op::Sync && returned(s) && s.span.start > d.span.end)
    };
    // Only acknowledged writes that changed something are promised to
    // survive; a read (or a write that found nothing to do) may have seen a
    // write still in flight, which a crash may then undo.
    let required: Vec<usize> = (0..done.len())
        .filter(|&i| {
            let d = &done[i];
            returned(d) && changed(d) && (!power || policy == SyncPolicy::Always || synced(d))
        })
        .collect();
    let optional: Vec<usize> = (0..done.len())
        .filter(|&i| started(&done[i]) && !required.contains(&i))
        .collect();
    let now = if done.iter().any(|d| d.op == Op::Expire && started(d)) {
        setup.start_ms() + super::EXPIRE_MS
    } else {
        setup.start_ms()
    };
    let mut allowed = Allowed::new();
    // A batch started: its keys' states are checked together too, except
    // after a power loss under `Never` with a cap, where any key may be the
    // one the open evicts.
    let batch = done
        .iter()
        .position(|d| matches!(d.op, Op::Batch | Op::BatchApart) && started(d))
        .filter(|_| !(power && policy != SyncPolicy::Always && initial.cap.is_some()));
    let mut whole = batch.map(|slot| (batch_keys(done[slot].op, slot), Whole::new()));
    // What each operation in flight may have done: nothing, all of it, or
    // its first step alone: for a renewal of a held entry, its `get_ref` (a
    // read of its own, which makes `c` recently used, so that an insert
    // meanwhile evicts another entry), its touch lost in the crash; for an
    // insert under the cap, the room it made (evictions come before the
    // writes, README "Guarantees"). The first steps are listed after
    // `done`, with the same span.
    let mut steps = done.to_vec();
    let mut kinds: Vec<(Half, usize)> = (0..done.len()).map(|i| (Half::Whole, i)).collect();
    let choices: Vec<Vec<Option<usize>>> = optional
        .iter()
        .map(|&i| {
            let mut c = vec![None, Some(i)];
            let half = match done[i].op {
                Op::TouchHeld => Some(Half::GetRef),
                Op::PutNew
                | Op::Overwrite
                | Op::PutIfAbsent
                | Op::Update
                | Op::Batch
                | Op::BatchApart
                    if setup.cap.is_some() =>
                {
                    Some(Half::Room)
                }
                _ => None,
            };
            if let Some(h) = half {
                c.push(Some(steps.len()));
                steps.push(done[i].clone());
                kinds.push((h, i));
            }
            // A batch may evict several keys for its room, one write each:
            // a crash may come after the first alone.
            if matches!(done[i].op, Op::Batch | Op::BatchApart) && setup.cap.is_some() {
                c.push(Some(steps.len()));
                steps.push(done[i].clone());
                kinds.push((Half::RoomPart(1), i));
            }
            c
        })
        .collect();
    let combinations: usize = choices.iter().map(Vec::len).product();
    for mut n in 0..combinations {
        let mut ops = required.clone();
        for c in &choices {
            ops.extend(c[n % c.len()]);
            n /= c.len();
        }
        for order in serial_orders(&steps, &ops) {
            let mut m = initial.clone();
            let mut t = setup.start_ms();
            for &i in &order {
                let (half, slot) = kinds[i];
                match half {
                    Half::Whole => {
                        model_op(done[slot].op, slot, &mut m, &mut t);
                    }
                    Half::GetRef => {
                        model_op(Op::GetRefHeld, slot, &mut m, &mut t);
                    }
                    Half::Room => model_room(done[slot].op, slot, &mut m, t),
                    Half::RoomPart(n) => model_room_part(done[slot].op, slot, &mut m, t, n),
                }
            }
            let c = model_contents(&m, now, keys);
            if let Some((bk, w)) = &mut whole {
                w.insert(model_contents(&m, now, bk));
            }
            for key in keys {
                allowed
                    .entry(key.clone())
                    .or_default()
                    .insert(c.get(key).cloned());
            }
        }
    }
    if power && policy != SyncPolicy::Always && initial.cap.is_some() {
        // Memory evicts by use, the open by write order: after a power loss
        // that dropped some of the writes since the last sync, any key may be
        // the one evicted (README, Guarantees).
        let inserted = optional.iter().any(|&i| {
            matches!(
                done[i].op,
                Op::PutNew | Op::PutIfAbsent | Op::Update | Op::Batch | Op::BatchApart
            )
        });
        if inserted {
            for a in allowed.values_mut() {
                a.insert(None);
            }
        }
    }
    (allowed, now, whole)
}

/// What of an operation in flight a crash may have kept.
#[derive(Clone, Copy)]
enum Half {
    /// All of it.
    Whole,
    /// The `get_ref` of a renewal of a held entry.
    GetRef,
    /// The room an insert made under the cap.
    Room,
    /// Part of a batch's room: this many of its evictions.
    RoomPart(usize),
}

/// Whether an operation is a write that changed the store.
fn changed(d: &Done) -> bool {
    match d.op {
        Op::PutNew | Op::Overwrite | Op::Clear => true,
        Op::Delete
        | Op::Touch
        | Op::TouchHeld
        | Op::RenewB
        | Op::Cas
        | Op::CasDelete
        | Op::PutIfAbsent
        | Op::Batch
        | Op::BatchApart => d.outcome == Outcome::Bool(true),
        Op::Update => true,
        // A sweep's crash images are a purge's.
        Op::Purge | Op::Sweep => d.outcome != Outcome::Count(0),
        Op::GetRefHeld | Op::Expire | Op::Compact | Op::Sync | Op::Backup => false,
    }
}

fn check_image(
    bytes: Vec<u8>,
    allowed: &Allowed,
    whole: Option<&(Vec<Vec<u8>>, Whole)>,
    now: i64,
    setup: Setup,
    keys: &[Vec<u8>],
) -> Result<(), String> {
    let clock = Arc::new(ManualClock::new(now));
    let opts = setup.options(&clock).sync(SyncPolicy::Always);
    let ro_contents = look_read_only(&opts, &bytes, |ro| store_contents(ro, keys))?;
    let mem = Arc::new(MemStorage::with_bytes(bytes));
    let store = opts
        .open_on("crash.sfs", mem as Arc<dyn Storage>)
        .map_err(|e| format!("open failed: {e}"))?;
    store.check_invariants()?;
    let got: Contents = store_contents(&store, keys)?;
    if got != ro_contents {
        return Err("read-only and read-write opens disagree".into());
    }
    if let Some(cap) = setup.cap
        && store.len() > cap
    {
        return Err(format!("{} entries over a cap of {cap}", store.len()));
    }
    for key in keys {
        let v = got.get(key).cloned();
        let ok = &allowed[key];
        if !ok.contains(&v) {
            let shown: Vec<String> = ok
                .iter()
                .map(|a| match a {
                    None => "absent".to_string(),
                    Some(x) => show(&[(key.clone(), x.clone())].into_iter().collect()),
                })
                .collect();
            return Err(format!(
                "key {} reads {:?}; allowed: {shown:?}; file holds {}",
                String::from_utf8_lossy(key),
                v.as_ref()
                    .map(|(v, e)| (String::from_utf8_lossy(v).into_owned(), e)),
                show(&got)
            ));
        }
    }
    if let Some((bk, w)) = whole {
        let mine: Contents = got
            .iter()
            .filter(|(k, _)| bk.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !w.contains(&mine) {
            return Err(format!(
                "half a batch: its keys hold {}; allowed together: {:?}",
                show(&mine),
                w.iter().map(show).collect::<Vec<_>>()
            ));
        }
    }
    Ok(())
}

/// The recording's events, one short line each.
pub fn describe_events(rec: &Recording) -> String {
    use sfs::testing::Event;
    rec.events
        .iter()
        .enumerate()
        .map(|(i, e)| match e {
            Event::Write { offset, bytes, .. } => {
                format!("\n  {}: write {} bytes at {offset}", i + 1, bytes.len())
            }
            Event::SetLen(l) => format!("\n  {}: set_len {l}", i + 1),
            Event::Sync => format!("\n  {}: sync", i + 1),
        })
        .collect()
}
