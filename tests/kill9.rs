//! kill -9. A child process (this test binary, run again with an
//! environment variable that makes it the child) writes to a real store file
//! with `SyncPolicy::Always` and reports on its stdout, through a pipe, each
//! operation that returned. The parent SIGKILLs it at a random moment (after
//! a random number of acknowledgements, zero included, so some kills land
//! while the child is still opening and recovering the file), reopens the
//! file and checks every key: each acknowledged write is there, and the one
//! operation that may have been in flight is either wholly there or not at
//! all. Nothing else may appear. Then it does it again on the same file.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sfs::testing::TestRng;
use sfs::{Options, PutOptions, Store, SyncPolicy};

const CHILD_PATH: &str = "SFS_KILL9_CHILD_PATH";
const CHILD_SEED: &str = "SFS_KILL9_CHILD_SEED";
const KEYS: u64 = 24;

#[derive(Clone, Debug)]
enum Op {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    PutMeta {
        key: Vec<u8>,
        value: Vec<u8>,
        meta: Vec<u8>,
    },
    PutTtl {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    Clear,
}

fn key(k: u64) -> Vec<u8> {
    format!("key-{k:02}").into_bytes()
}

/// The `i`-th operation of round `seed`: the same in parent and child.
fn op(seed: u64, i: u64) -> Op {
    let mut r = TestRng::new(seed.wrapping_mul(1_000_003).wrapping_add(i));
    let k = key(r.below(KEYS));
    let len = [0usize, 10, 100, 700, 3000, 9000][r.below(6) as usize];
    let mut value = format!("{}:{seed}:{i}:", String::from_utf8_lossy(&k)).into_bytes();
    value.resize(value.len() + len, (i % 251) as u8);
    match r.below(200) {
        0 => Op::Clear,
        1..=40 => Op::Delete { key: k },
        41..=55 => Op::PutMeta {
            meta: format!("meta-{seed}-{i}").into_bytes(),
            key: k,
            value,
        },
        56..=65 => Op::PutTtl { key: k, value },
        _ => Op::Put { key: k, value },
    }
}

/// Key → (value, metadata).
type Model = BTreeMap<Vec<u8>, (Vec<u8>, Vec<u8>)>;

fn apply(m: &mut Model, op: &Op) {
    match op {
        Op::Put { key, value } | Op::PutTtl { key, value } => {
            m.insert(key.clone(), (value.clone(), Vec::new()));
        }
        Op::PutMeta { key, value, meta } => {
            m.insert(key.clone(), (value.clone(), meta.clone()));
        }
        Op::Delete { key } => {
            m.remove(key);
        }
        Op::Clear => m.clear(),
    }
}

fn options() -> Options {
    Options::new().sync(SyncPolicy::Always)
}

/// The child: writes until it is killed, acknowledging each operation.
fn child(path: &str, seed: u64) {
    let store = options().open(path).expect("child open");
    let mut out = std::io::stdout().lock();
    writeln!(out, "open").unwrap();
    out.flush().unwrap();
    for i in 0..1_000_000u64 {
        match op(seed, i) {
            Op::Put { key, value } => store.put(&key, &value).unwrap(),
            Op::PutMeta { key, value, meta } => store
                .put_with(&key, &value, &PutOptions::new().metadata(&meta))
                .unwrap(),
            Op::PutTtl { key, value } => store
                .put_with_ttl(&key, &value, Duration::from_secs(3600))
                .unwrap(),
            Op::Delete { key } => drop(store.delete(&key).unwrap()),
            Op::Clear => store.clear().unwrap(),
        }
        // A closed pipe (the parent is gone) ends the child.
        if writeln!(out, "ack {i}").and_then(|()| out.flush()).is_err() {
            return;
        }
    }
}

/// Reads the child's lines until its stdout closes, counting those `is_ack`
/// says are acknowledgements, and SIGKILLs it (`Child::kill`, on Unix) once
/// it has opened the store and sent `kill_after` of them. Returns the count,
/// after checking that the child did not end on its own.
fn kill_after_acks(
    child: &mut std::process::Child,
    lines: impl Iterator<Item = std::io::Result<String>>,
    kill_after: u64,
    mut is_ack: impl FnMut(&str) -> bool,
) -> u64 {
    let mut acked = 0u64;
    let mut killed = false;
    for line in lines {
        let line = line.unwrap();
        if is_ack(&line) {
            acked += 1;
        } else if line != "open" {
            continue; // the test harness's own lines
        }
        if !killed && acked >= kill_after {
            // A second kill (after an early one) finds it gone: `Ok`.
            child.kill().unwrap();
            killed = true;
        }
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child ended on its own: {status}");
    acked
}

/// What the reopened store holds, with metadata.
fn contents(s: &Store) -> Model {
    (0..KEYS)
        .filter_map(|k| {
            let e = s.get_entry(key(k)).unwrap()?;
            Some((key(k), (e.value, e.metadata)))
        })
        .collect()
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    if let (Ok(path), Ok(seed)) = (std::env::var(CHILD_PATH), std::env::var(CHILD_SEED)) {
        child(&path, seed.parse().unwrap());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kill9.sfs");
    let exe = std::env::current_exe().unwrap();
    let mut rng = TestRng::new(0x6b69_6c6c);
    let mut model = Model::new();
    let started = Instant::now();
    let (mut rounds, mut acked_total, mut in_flight_applied) = (0u64, 0u64, 0u64);
    // Bounded: at most 200 kills, and no new round after 6 seconds.
    while rounds < 200 && (rounds < 10 || started.elapsed() < Duration::from_secs(6)) {
        let seed = rounds + 1;
        let kill_after = match rng.below(4) {
            0 => 0,
            1 => rng.below(5),
            _ => rng.below(120),
        };
        let mut child = Command::new(&exe)
            .args([
                "acknowledged_writes_survive_kill_9",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_PATH, &path)
            .env(CHILD_SEED, seed.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        if kill_after == 0 && rng.below(2) == 0 {
            // Before the child has even opened the store, or while it does.
            child.kill().unwrap();
        }
        let mut expected = 0u64;
        let acked = kill_after_acks(&mut child, lines, kill_after, |line| {
            let Some(i) = line.strip_prefix("ack ") else {
                return false;
            };
            assert_eq!(i.parse::<u64>().unwrap(), expected, "acks in order");
            expected += 1;
            true
        });
        // Operations 0..acked returned; operation `acked` may have been in
        // flight; none after it had started.
        let mut done = model.clone();
        for i in 0..acked {
            apply(&mut done, &op(seed, i));
        }
        let mut with_next = done.clone();
        apply(&mut with_next, &op(seed, acked));

        let store = options().open(&path).unwrap();
        store.check_invariants().unwrap();
        let got = contents(&store);
        assert_eq!(store.len(), got.len());
        for k in 0..KEYS {
            let k = key(k);
            let g = got.get(&k);
            assert!(
                g == done.get(&k) || g == with_next.get(&k),
                "round {seed}, {acked} acknowledged: {} holds {:?}, expected {:?} or {:?}",
                String::from_utf8_lossy(&k),
                g.map(|v| String::from_utf8_lossy(&v.0[..v.0.len().min(24)]).into_owned()),
                done.get(&k)
                    .map(|v| String::from_utf8_lossy(&v.0[..v.0.len().min(24)]).into_owned()),
                with_next
                    .get(&k)
                    .map(|v| String::from_utf8_lossy(&v.0[..v.0.len().min(24)]).into_owned()),
            );
        }
        if got != done {
            in_flight_applied += 1;
        }
        drop(store);
        // The next round starts from what is on disk.
        model = got;
        acked_total += acked;
        rounds += 1;
    }
    assert!(acked_total > 0, "no write was acknowledged");
    eprintln!(
        "{rounds} kills, {acked_total} acknowledged operations, {in_flight_applied} kills \
         caught an operation that was done but not acknowledged, {:.1?}",
        started.elapsed()
    );
}

const COUNTER_CHILD: &str = "SFS_KILL9_COUNTER_CHILD";
const COUNTER_THREADS: u64 = 4;

fn counter_value(s: &Store) -> u64 {
    s.get("counter")
        .unwrap()
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()))
}

/// The counter child: 4 threads increment one counter with `update` (two
/// of them) and `compare_and_swap` retries (the other two), acknowledging
/// each increment that returned.
fn counter_child(path: &str, policy: &str) {
    let policy = match policy {
        "always" => SyncPolicy::Always,
        _ => SyncPolicy::Never,
    };
    let store = Options::new().sync(policy).open(path).expect("child open");
    let out = std::sync::Mutex::new(std::io::stdout());
    writeln!(out.lock().unwrap(), "open").unwrap();
    std::thread::scope(|s| {
        for t in 0..COUNTER_THREADS {
            let (store, out) = (&store, &out);
            s.spawn(move || {
                let add = |v: Option<&[u8]>| {
                    let n = v.map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
                    (n + 1).to_le_bytes().to_vec()
                };
                loop {
                    if t % 2 == 0 {
                        store.update("counter", |v| Some(add(v))).unwrap();
                    } else {
                        loop {
                            let seen = store.get("counter").unwrap();
                            let next = add(seen.as_deref());
                            if store
                                .compare_and_swap("counter", seen.as_deref(), Some(&next))
                                .unwrap()
                                .is_ok()
                            {
                                break;
                            }
                        }
                    }
                    let mut o = out.lock().unwrap();
                    if writeln!(o, "ack").and_then(|()| o.flush()).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

#[test]
fn acknowledged_increments_survive_kill_9() {
    if let (Ok(path), Ok(policy)) = (std::env::var(CHILD_PATH), std::env::var(COUNTER_CHILD)) {
        counter_child(&path, &policy);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("counter.sfs");
    let exe = std::env::current_exe().unwrap();
    let mut rng = TestRng::new(0x636f_756e);
    let mut value = 0u64;
    let (mut acked_total, mut in_flight_seen) = (0u64, 0u64);
    for round in 0..24 {
        let policy = if round % 2 == 0 { "always" } else { "never" };
        let kill_after = rng.below(400);
        let mut child = Command::new(&exe)
            .args([
                "acknowledged_increments_survive_kill_9",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_PATH, &path)
            .env(COUNTER_CHILD, policy)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let acked = kill_after_acks(&mut child, lines, kill_after, |line| line == "ack");
        let store = Store::open(&path).unwrap();
        store.check_invariants().unwrap();
        let now = counter_value(&store);
        // Every acknowledged increment is there; at most one more per thread
        // (done, not yet acknowledged) may be.
        assert!(
            now >= value + acked && now <= value + acked + COUNTER_THREADS,
            "round {round} ({policy}): {value} before, {acked} acknowledged, {now} after"
        );
        in_flight_seen += now - value - acked;
        acked_total += acked;
        value = now;
    }
    assert!(acked_total > 0, "no increment was acknowledged");
    eprintln!(
        "24 kills, {acked_total} acknowledged increments, {in_flight_seen} done but not \
         acknowledged; final count {value}"
    );
}
