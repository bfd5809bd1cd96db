//! Atomic batches (`Store::apply`, README "Guarantees"): what a batch does
//! (puts with expiry and metadata, deletes, touches, several operations on
//! one key), that an empty batch does nothing, that a batch with an entry
//! too large fails whole and writes nothing, that a batch of more than a
//! GiB works, that it costs one fdatasync under `SyncPolicy::Always`, what
//! a reader sees while a batch is published, how the file's format version
//! changes, what an open does with a batch a crash left unsettled, and what
//! a batch whose settling or publication fails half-way leaves (an error,
//! and memory as an open of the file finds it).
//! Crashes at every write are in `tests/crash_every_write.rs`; every
//! interleaving with other operations in `tests/interleavings`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use common::{TempStore, clock, sorted_keys};
use sfs::testing::{Call, Event, FaultError, FaultStorage, MemStorage, Storage};
use sfs::{Batch, Error, Options, PutOptions, Store, SyncPolicy};

fn version_of(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(bytes[8..12].try_into().unwrap())
}

#[test]
fn a_batch_puts_deletes_and_touches_and_survives_a_reopen() {
    let t = TempStore::new();
    let c = clock();
    let s = t.open(&c);
    s.put("old", "1").unwrap();
    s.put("gone", "x").unwrap();
    s.put_with_ttl("lease", "me", Duration::from_secs(10))
        .unwrap();
    let mut b = Batch::new();
    b.put("new", "2")
        .put_with(
            "meta",
            "v",
            &PutOptions::new()
                .metadata(b"m")
                .ttl(Duration::from_secs(60)),
        )
        .put("old", "3")
        .delete("gone")
        .delete("never-there")
        .touch("lease", Duration::from_secs(100))
        .touch("absent", Duration::from_secs(5));
    assert_eq!(b.len(), 7);
    s.apply(&b).unwrap();
    s.check_invariants().unwrap();
    let check = |s: &Store| {
        assert_eq!(s.get("new").unwrap().as_deref(), Some(&b"2"[..]));
        assert_eq!(s.get("old").unwrap().as_deref(), Some(&b"3"[..]));
        assert!(!s.contains("gone") && !s.contains("never-there") && !s.contains("absent"));
        let e = s.get_entry("meta").unwrap().unwrap();
        assert_eq!(
            (e.value.as_slice(), e.metadata.as_slice()),
            (&b"v"[..], &b"m"[..])
        );
        let at = |secs: u64| Some(UNIX_EPOCH + Duration::from_millis(1_000_000 + secs * 1000));
        assert_eq!(e.expires_at, at(60));
        assert_eq!(s.get_entry("lease").unwrap().unwrap().expires_at, at(100));
        assert_eq!(s.get("lease").unwrap().as_deref(), Some(&b"me"[..]));
        assert_eq!(s.len(), 4);
    };
    check(&s);
    s.close().unwrap();
    let s = t.open(&c);
    check(&s);
    s.check_invariants().unwrap();
    c.advance(Duration::from_secs(61));
    assert!(!s.contains("meta"));
    assert!(s.contains("lease"));
}

#[test]
fn operations_on_one_key_apply_in_order() {
    let t = TempStore::new();
    let c = clock();
    let s = t.open(&c);
    s.put("a", "0").unwrap();
    s.put("d", "0").unwrap();
    let mut b = Batch::new();
    // a: put, put: the last put wins.
    b.put("a", "1").put("a", "2");
    // b: put then delete: absent.
    b.put("b", "1").delete("b");
    // c: delete then put: present.
    b.delete("c").put("c", "3");
    // d: put then touch: the put with the touch's expiry.
    b.put("d", "4").touch("d", Duration::from_secs(7));
    // e: delete then touch: absent (a touch of an absent key does nothing).
    b.put("e", "5")
        .delete("e")
        .touch("e", Duration::from_secs(7));
    // f: put then a touch into the past: absent.
    b.put("f", "6").touch("f", Duration::ZERO);
    s.apply(&b).unwrap();
    assert_eq!(s.get("a").unwrap().as_deref(), Some(&b"2"[..]));
    assert!(!s.contains("b"));
    assert_eq!(s.get("c").unwrap().as_deref(), Some(&b"3"[..]));
    let d = s.get_entry("d").unwrap().unwrap();
    assert_eq!(d.value, b"4");
    assert_eq!(
        d.expires_at,
        Some(UNIX_EPOCH + Duration::from_millis(1_000_000 + 7_000))
    );
    assert!(!s.contains("e") && !s.contains("f"));
    assert_eq!(
        sorted_keys(&s),
        vec![b"a".to_vec(), b"c".to_vec(), b"d".to_vec()]
    );
    s.check_invariants().unwrap();
}

#[test]
fn an_empty_batch_does_nothing() {
    let t = TempStore::new();
    let c = clock();
    let s = Options::new()
        .clock(c.clone())
        .active_expiry(None)
        .open(&t.path)
        .unwrap();
    s.put("k", "v").unwrap();
    let before = std::fs::read(&t.path).unwrap();
    let syncs = s.stats().syncs;
    s.apply(&Batch::new()).unwrap();
    // Deletes and touches of absent keys change nothing either.
    let mut b = Batch::new();
    b.delete("nope").touch("nope", Duration::from_secs(1));
    s.apply(&b).unwrap();
    assert_eq!(s.stats().syncs, syncs);
    assert_eq!(std::fs::read(&t.path).unwrap(), before);
    assert_eq!(version_of(&before), 1);
}

#[test]
fn a_batch_with_an_entry_too_large_fails_whole_and_writes_nothing() {
    let t = TempStore::new();
    let c = clock();
    let s = t.open(&c);
    s.put("keep", "1").unwrap();
    s.sync().unwrap();
    let before = std::fs::read(&t.path).unwrap();
    let mut b = Batch::new();
    b.put("a", "1").delete("keep").put(vec![b'k'; 70_000], "v");
    match s.apply(&b) {
        Err(Error::TooLarge { what, path, .. }) => {
            assert_eq!(what, "key");
            assert_eq!(path, t.path);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let mut b = Batch::new();
    b.put("a", "1")
        .put_with("b", "v", &PutOptions::new().metadata(&[0u8; 70_000]));
    assert!(matches!(
        s.apply(&b),
        Err(Error::TooLarge {
            what: "metadata",
            ..
        })
    ));
    assert!(!s.contains("a"));
    assert!(s.contains("keep"));
    s.sync().unwrap();
    assert_eq!(std::fs::read(&t.path).unwrap(), before);
}

#[test]
fn a_durable_batch_costs_one_fdatasync_whatever_its_size() {
    let t = TempStore::new();
    let c = clock();
    let s = Options::new()
        .sync(SyncPolicy::Always)
        .clock(c.clone())
        .active_expiry(None)
        .open(&t.path)
        .unwrap();
    for i in 0..50 {
        s.put(format!("d{i}"), "x").unwrap();
    }
    // The first batch upgrades the file: one more sync, once.
    let syncs = s.stats().syncs;
    let mut b = Batch::new();
    b.put("first", "1");
    s.apply(&b).unwrap();
    assert_eq!(s.stats().syncs - syncs, 2);
    for n in [1usize, 10, 100, 1000] {
        let mut b = Batch::new();
        for i in 0..n {
            b.put(format!("k{i}"), format!("v{n}"));
        }
        b.delete(format!("d{}", n % 50));
        let syncs = s.stats().syncs;
        s.apply(&b).unwrap();
        // The batch's own sync; the record of the batch before went with it.
        assert_eq!(s.stats().syncs - syncs, 1, "a batch of {n}");
    }
    s.check_invariants().unwrap();
    assert_eq!(s.get("k999").unwrap().as_deref(), Some(&b"v1000"[..]));
    assert_eq!(s.get("k0").unwrap().as_deref(), Some(&b"v1000"[..]));
}

#[test]
fn the_first_batch_makes_the_file_version_2_and_a_reopen_keeps_it() {
    let t = TempStore::new();
    let c = clock();
    let s = t.open(&c);
    s.put("a", "1").unwrap();
    s.close().unwrap();
    assert_eq!(version_of(&std::fs::read(&t.path).unwrap()), 1);
    let s = t.open(&c);
    let mut b = Batch::new();
    b.put("b", "2");
    s.apply(&b).unwrap();
    assert_eq!(version_of(&std::fs::read(&t.path).unwrap()), 2);
    s.close().unwrap();
    let s = t.open(&c);
    assert_eq!(sorted_keys(&s), vec![b"a".to_vec(), b"b".to_vec()]);
    s.close().unwrap();
    assert_eq!(version_of(&std::fs::read(&t.path).unwrap()), 2);
}

/// A store on a recording storage; the file image at the point where the
/// batch is durable but not settled.
fn unsettled_image() -> Vec<u8> {
    let fs = Arc::new(FaultStorage::new());
    let s = Options::new()
        .sync(SyncPolicy::Always)
        .active_expiry(None)
        .open_on("u.sfs", fs.clone() as Arc<dyn Storage>)
        .unwrap();
    s.put("a", "old").unwrap();
    s.put("b", "old").unwrap();
    let mark = fs.event_count();
    let mut bt = Batch::new();
    bt.put("a", "new").delete("b").put("c", "new");
    s.apply(&bt).unwrap();
    let rec = fs.recording();
    // The batch's own sync: the last before the settling writes.
    let syncs: Vec<usize> = (mark..rec.events.len())
        .filter(|&i| rec.events[i] == Event::Sync)
        .collect();
    rec.after(syncs[1] + 1)
}

#[test]
fn an_open_settles_a_batch_a_crash_left_unsettled() {
    let image = unsettled_image();
    // A reader of version 1 rules would not see the batch: its members are
    // pending and its record is of kind C.
    assert_eq!(version_of(&image), 2);
    let check = |s: &Store| {
        assert_eq!(s.get("a").unwrap().as_deref(), Some(&b"new"[..]));
        assert!(!s.contains("b"));
        assert_eq!(s.get("c").unwrap().as_deref(), Some(&b"new"[..]));
        assert_eq!(s.len(), 2);
    };
    // Read-only: the same decisions in memory, nothing written.
    let mem = Arc::new(MemStorage::with_bytes(image.clone()));
    let ro = Options::new()
        .read_only(true)
        .active_expiry(None)
        .open_on("ro.sfs", mem.clone() as Arc<dyn Storage>)
        .unwrap();
    check(&ro);
    drop(ro);
    assert_eq!(mem.bytes(), image);
    // Read-write: settled, the record freed.
    let s = Options::new()
        .active_expiry(None)
        .open_on("rw.sfs", mem.clone() as Arc<dyn Storage>)
        .unwrap();
    check(&s);
    s.check_invariants().unwrap();
    drop(s);
    let after = mem.bytes();
    assert!(
        !after.windows(6).any(|w| w == b"sfsBC\0"),
        "a commit record remains"
    );
    let s = Options::new()
        .active_expiry(None)
        .open_on("again.sfs", mem as Arc<dyn Storage>)
        .unwrap();
    check(&s);
    s.check_invariants().unwrap();
}

fn k(i: usize) -> String {
    format!("key{i}")
}

fn read(s: &Store, i: usize) -> u64 {
    u64::from_le_bytes(s.get(k(i)).unwrap().unwrap().try_into().unwrap())
}

#[test]
fn readers_see_the_keys_of_a_batch_switch_in_batch_order() {
    const KEYS: usize = 8;
    const BATCHES: u64 = 300;
    let t = TempStore::new();
    let c = clock();
    let s = Arc::new(t.open(&c));
    for i in 0..KEYS {
        s.put(k(i), 0u64.to_le_bytes()).unwrap();
    }
    let done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for reverse in [true, false] {
        let (s, done) = (s.clone(), done.clone());
        readers.push(std::thread::spawn(move || {
            let mut mixed = 0u64;
            while !done.load(Ordering::Acquire) {
                let order: Vec<usize> = if reverse {
                    (0..KEYS).rev().collect()
                } else {
                    (0..KEYS).collect()
                };
                let seen: Vec<u64> = order.iter().map(|&i| read(&s, i)).collect();
                if seen.iter().any(|&v| v != seen[0]) {
                    mixed += 1;
                }
                for w in seen.windows(2) {
                    if reverse {
                        // Read against the batch's order: a later key new
                        // means every earlier key is new too.
                        assert!(w[1] >= w[0], "{seen:?}");
                    } else {
                        // Read in the batch's order: a key is at most one
                        // batch behind the one before it (that batch had
                        // finished), and never ahead of what was published.
                        assert!(w[1] + 1 >= w[0], "{seen:?}");
                    }
                }
            }
            mixed
        }));
    }
    for n in 1..=BATCHES {
        let mut b = Batch::new();
        for i in 0..KEYS {
            b.put(k(i), n.to_le_bytes());
        }
        s.apply(&b).unwrap();
        for i in 0..KEYS {
            assert_eq!(read(&s, i), n);
        }
    }
    done.store(true, Ordering::Release);
    for r in readers {
        // How often a reader saw a batch half published is timing; that it
        // may is the documented behaviour, checked above for its bounds.
        let _mixed = r.join().unwrap();
    }
}

#[test]
fn two_batches_never_interleave_even_with_their_keys_in_opposite_orders() {
    let t = TempStore::new();
    let c = clock();
    let s = Arc::new(t.open(&c));
    let keys = ["x", "y", "z"];
    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let s = s.clone();
            std::thread::spawn(move || {
                for n in 0..300u64 {
                    let v = (w * 1000 + n).to_le_bytes();
                    let mut b = Batch::new();
                    let order: Vec<&str> = match w {
                        0 => keys.to_vec(),
                        _ => keys.iter().rev().copied().collect(),
                    };
                    for k in order {
                        b.put(k, v);
                    }
                    s.apply(&b).unwrap();
                }
            })
        })
        .collect();
    // Single writes of the same keys run beside them: each is wholly
    // before or after a batch, never inside one.
    for _ in 0..300 {
        s.delete("y").unwrap();
    }
    for w in writers {
        w.join().unwrap();
    }
    // The last batch wrote all three keys, after every other batch.
    let x = s.get("x").unwrap();
    assert_eq!(x, s.get("z").unwrap());
    if let Some(y) = s.get("y").unwrap() {
        assert_eq!(Some(y), x);
    }
    s.check_invariants().unwrap();
}

#[test]
fn a_batch_of_more_than_a_gib_is_written_read_back_and_reopened() {
    const PART: usize = 130 << 20;
    const PARTS: usize = 9;
    let t = TempStore::new();
    let c = clock();
    let s = t.open(&c);
    let mut b = Batch::new();
    for i in 0..PARTS {
        b.put(format!("big{i}"), vec![i as u8 + 1; PART]);
    }
    s.apply(&b).unwrap();
    drop(b);
    let check = |s: &Store| {
        for i in 0..PARTS {
            let v = s.get_ref(format!("big{i}")).unwrap().unwrap();
            assert_eq!(v.len(), PART);
            assert!(v.iter().step_by(4096).all(|&x| x == i as u8 + 1));
            assert_eq!(v[PART - 1], i as u8 + 1);
        }
    };
    check(&s);
    s.close().unwrap();
    assert!(std::fs::metadata(&t.path).unwrap().len() > (1 << 30));
    let s = t.open(&c);
    check(&s);
    s.check_invariants().unwrap();
}

#[test]
fn a_batch_makes_room_under_the_entry_cap_first() {
    let t = TempStore::new();
    let c = clock();
    let s = t.options(&c).max_entries(4).open(&t.path).unwrap();
    for i in 0..4 {
        s.put(format!("k{i}"), "v").unwrap();
    }
    s.get("k0").unwrap();
    let mut b = Batch::new();
    b.put("n1", "1").put("n2", "2").put("k0", "new");
    s.apply(&b).unwrap();
    s.check_invariants().unwrap();
    assert_eq!(s.stats().entries, 4);
    // The least recently used went: k1 and k2.
    assert_eq!(
        sorted_keys(&s),
        vec![
            b"k0".to_vec(),
            b"k3".to_vec(),
            b"n1".to_vec(),
            b"n2".to_vec()
        ]
    );
    // Five keys at once (n3..n7) cannot fit a cap of 4: refused, saying so
    // in entries, with nothing evicted.
    let mut big = Batch::new();
    for i in 3..8 {
        big.put(format!("n{i}"), "x");
    }
    let e = s.apply(&big).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, Error::TooLarge { len: 5, max: 4, .. }), "{e:?}");
    assert!(
        text.contains("of 5 entries is over the limit of 4 entries; nothing was written"),
        "{text}"
    );
    assert!(text.contains(&t.path.display().to_string()), "{text}");
    assert_eq!(s.stats().entries, 4);
    s.close().unwrap();
    let s = t.options(&c).max_entries(4).open(&t.path).unwrap();
    assert_eq!(s.len(), 4);
}

#[test]
fn a_typed_batch_applies_whole_and_a_value_that_cannot_be_encoded_fails_it() {
    let t = TempStore::new();
    let c = clock();
    let s = t.options(&c).open_typed::<String, i64>(&t.path).unwrap();
    s.put("alice", &100).unwrap();
    let mut b = sfs::TypedBatch::new();
    b.put("alice", &70).put("bob", &30).delete("carol");
    s.apply(&b).unwrap();
    assert_eq!(
        (s.get("alice").unwrap(), s.get("bob").unwrap()),
        (Some(70), Some(30))
    );
    // A value whose encoding fails.
    #[derive(serde::Deserialize)]
    struct Bad;
    impl serde::Serialize for Bad {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("no"))
        }
    }
    let raw: sfs::TypedStore<String, Bad> = sfs::TypedStore::from_store(s.into_raw());
    let mut b = sfs::TypedBatch::<String, Bad>::new();
    b.put("x", &Bad).delete("alice");
    assert!(matches!(raw.apply(&b), Err(Error::Codec { .. })));
    assert!(raw.raw().contains(raw.encode_key("alice").unwrap()));
}

#[test]
fn damage_to_an_unsettled_commit_record_costs_the_batch_and_nothing_else() {
    let image = unsettled_image();
    let at = image
        .windows(5)
        .position(|w| w == b"sfsBC")
        .expect("the commit record");
    // One byte of its payload (the digest).
    let mut bytes = image.clone();
    bytes[at + 48 + 8] ^= 0x01;
    let mem = Arc::new(MemStorage::with_bytes(bytes));
    let s = Options::new()
        .active_expiry(None)
        .open_on("damaged.sfs", mem as Arc<dyn Storage>)
        .unwrap();
    // The batch is gone whole: a and b as before it, c never written.
    assert_eq!(s.get("a").unwrap().as_deref(), Some(&b"old"[..]));
    assert_eq!(s.get("b").unwrap().as_deref(), Some(&b"old"[..]));
    assert!(!s.contains("c"));
    assert_eq!(s.stats().corrupt_blocks, 1, "the record is the damage");
    s.check_invariants().unwrap();
}

// ---- failures after the batch's sync ----------------------------------------

/// Key → value, as a store holds them.
fn contents(s: &Store) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut c: Vec<_> = s.iter().map(|r| r.unwrap()).collect();
    c.sort();
    c
}

fn pairs(kv: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut c: Vec<_> = kv
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    c.sort();
    c
}

/// A store under `Always` on a fault-injecting storage, holding `a` and
/// `b` (value `old-a`, `old-b`) and `z` from a first batch (so the file is
/// version 2 already and the next batch's first sync is its own).
fn faulty_store() -> (Arc<FaultStorage>, Store) {
    let fs = Arc::new(FaultStorage::new());
    let s = Options::new()
        .sync(SyncPolicy::Always)
        .active_expiry(None)
        .open_on("f.sfs", fs.clone() as Arc<dyn Storage>)
        .unwrap();
    s.put("a", "old-a").unwrap();
    s.put("b", "old-b").unwrap();
    let mut first = Batch::new();
    first.put("z", "first");
    s.apply(&first).unwrap();
    (fs, s)
}

/// The batch of the tests below: put `a`, delete `b`, put `c`.
fn the_batch() -> Batch {
    let mut bt = Batch::new();
    bt.put("a", "new").delete("b").put("c", "new");
    bt
}

/// Applies the batch to a twin of `faulty_store` (the same calls in the
/// same order), then `then`, and returns the number (1-based, as
/// `FaultStorage::fail` counts write calls) of the first write after the
/// batch's sync that `pick` chooses, given the twin's file before the
/// batch, the write's offset and whether it is an 8-byte word store.
fn nth_write_after_the_sync(pick: impl Fn(&[u8], u64, bool) -> bool, then: impl Fn(&Store)) -> u64 {
    let (fs, s) = faulty_store();
    let before = fs.calls().0;
    let image = fs.bytes();
    let mark = fs.event_count();
    s.apply(&the_batch()).unwrap();
    then(&s);
    let rec = fs.recording();
    let writes: Vec<(usize, u64, bool)> = (mark..rec.events.len())
        .filter_map(|i| match &rec.events[i] {
            Event::Write { offset, atomic, .. } => Some((i, *offset, *atomic)),
            _ => None,
        })
        .collect();
    let sync = (mark..rec.events.len())
        .find(|&i| rec.events[i] == Event::Sync)
        .unwrap();
    let n = writes
        .iter()
        .position(|&(i, offset, atomic)| i > sync && pick(&image, offset, atomic))
        .expect("no such write");
    before + n as u64 + 1
}

/// The store after the failure: the error reported, memory as a fresh open
/// of the file finds it (the batch whole), usable once the disk heals, and
/// a reopen settles the batch and passes the invariant checks.
fn check_after_failure(fs: &FaultStorage, s: Store, e: Error) {
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert_eq!(fs.failures(), 1);
    let want = pairs(&[("a", "new"), ("c", "new"), ("z", "first")]);
    assert_eq!(contents(&s), want, "memory");
    s.check_invariants().unwrap();
    assert_eq!(contents_of(fs.bytes()), want, "an open of the file");
    fs.heal();
    s.put("d", "after").unwrap();
    s.delete("z").unwrap();
    s.sync().unwrap();
    let want = pairs(&[("a", "new"), ("c", "new"), ("d", "after")]);
    assert_eq!(contents(&s), want);
    s.check_invariants().unwrap();
    drop(s);
    let s = reopen(fs);
    assert_eq!(contents(&s), want, "after a reopen");
    s.check_invariants().unwrap();
}

/// The first settling store of the batch's members: made by the sync of
/// the next durable write, a put of `d`.
fn nth_settling_store() -> u64 {
    nth_write_after_the_sync(|_, _, word| word, |s| s.put("d", "after").unwrap())
}

#[test]
fn a_settling_store_that_fails_leaves_the_batch_whole_and_pending_until_a_later_sync() {
    // A batch is settled by a later sync than its own (here the put's):
    // the store of `a`'s settled word fails. The put is not failed for it:
    // the batch stays whole on disk, pending, its record kept, and a later
    // sync settles it.
    let nth = nth_settling_store();
    let (fs, s) = faulty_store();
    fs.fail(Call::Write, nth, FaultError::Io);
    s.apply(&the_batch()).unwrap();
    s.put("d", "after").unwrap();
    assert_eq!(fs.failures(), 1, "the settling store was made and failed");
    let want = pairs(&[("a", "new"), ("c", "new"), ("d", "after"), ("z", "first")]);
    assert_eq!(contents(&s), want, "memory");
    s.check_invariants().unwrap();
    assert_eq!(contents_of(fs.bytes()), want, "an open of the file");
    fs.heal();
    s.sync().unwrap();
    s.check_invariants().unwrap();
    drop(s);
    let s = reopen(&fs);
    assert_eq!(contents(&s), want, "after a reopen");
    s.check_invariants().unwrap();
}

#[test]
fn a_deleted_key_whose_free_header_fails_mid_batch_leaves_the_batch_whole_and_reports_it() {
    // The write of the free header over `b`'s copy, between the
    // publication of `a` and that of `c`: `c` is published all the same,
    // `b` leaves the index (the batch's tombstone deletes it on disk while
    // the record, kept for the next open, lives).
    let nth = nth_write_after_the_sync(
        |image, offset, _| {
            let at = offset as usize + 48;
            image.get(at..at + 6) == Some(&b"bold-b"[..])
        },
        |_| {},
    );
    let (fs, s) = faulty_store();
    fs.fail(Call::Write, nth, FaultError::Io);
    let e = s.apply(&the_batch()).unwrap_err();
    check_after_failure(&fs, s, e);
}

#[test]
fn a_member_left_pending_by_a_failed_settling_is_never_freed_before_its_batch_is_settled() {
    // As above: `a`'s settling store fails, so `a` and `c` stay pending
    // on disk, valid only while both are there. Overwriting `c` frees its
    // pending copy: were that free written before the batch is settled,
    // a reopen would find the batch incomplete and drop `a`'s new value.
    let nth = nth_settling_store();
    let (fs, s) = faulty_store();
    fs.fail(Call::Write, nth, FaultError::Io);
    s.apply(&the_batch()).unwrap();
    s.put("d", "after").unwrap();
    fs.heal();
    s.check_invariants().unwrap();
    s.put("c", "newer").unwrap();
    s.sync().unwrap();
    s.compact().unwrap();
    let want = pairs(&[("a", "new"), ("c", "newer"), ("d", "after"), ("z", "first")]);
    assert_eq!(contents(&s), want, "memory");
    s.check_invariants().unwrap();
    // Every event's image: a process crash after any of them keeps the
    // batch (its members pending with the record, or settled).
    let rec = fs.recording();
    // The batch was synced before its settling failed: from there on, a
    // process crash or a power loss (any reordering since the last sync)
    // after any event keeps `a` new.
    let written = (1..rec.events.len())
        .find(|&n| contents_of(rec.after(n)).contains(&(b"a".to_vec(), b"new".to_vec())))
        .expect("the batch reaches the file");
    let start = (written..rec.events.len())
        .find(|&i| rec.events[i] == Event::Sync)
        .expect("the batch's sync")
        + 1;
    for n in start..=rec.events.len() {
        let mut images = vec![("a process crash", rec.after(n))];
        images.extend((0..8).map(|seed| ("a power loss", rec.power_loss(n, seed))));
        for (what, image) in images {
            let got = contents_of(image);
            assert_eq!(
                got.iter()
                    .find(|(k, _)| k == b"a")
                    .map(|(_, v)| v.as_slice()),
                Some(&b"new"[..]),
                "{what} after event {n} of {}: {got:?}",
                rec.events.len()
            );
        }
    }
    drop(s);
    let s = reopen(&fs);
    assert_eq!(contents(&s), want, "after a reopen");
    s.check_invariants().unwrap();
}

/// A read-write open of what `fs` holds now.
fn reopen(fs: &FaultStorage) -> Store {
    Options::new()
        .active_expiry(None)
        .open_on(
            "again.sfs",
            Arc::new(MemStorage::with_bytes(fs.bytes())) as Arc<dyn Storage>,
        )
        .unwrap()
}

/// What a read-only open of `image` holds.
fn contents_of(image: Vec<u8>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let ro = Options::new()
        .read_only(true)
        .active_expiry(None)
        .open_on(
            "ro.sfs",
            Arc::new(MemStorage::with_bytes(image)) as Arc<dyn Storage>,
        )
        .unwrap();
    contents(&ro)
}

#[test]
fn concurrent_batches_at_the_cap_are_never_refused_for_each_others_keys() {
    // A complement to the explorer's `disjoint` test: 4 threads, each
    // applying batches that overwrite a key of its own and add a new one,
    // under a cap of 4 that the store is always at. Each batch's room can
    // only come from keys other batches in flight keep, at times; none may
    // be refused or wait forever.
    let dir = tempfile::tempdir().unwrap();
    let s = Options::new()
        .max_entries(4)
        .sync(SyncPolicy::Never)
        .open(dir.path().join("cap.sfs"))
        .unwrap();
    for t in 0..4 {
        s.put(format!("own-{t}"), "0").unwrap();
    }
    std::thread::scope(|sc| {
        for t in 0..4 {
            let s = &s;
            sc.spawn(move || {
                for i in 0..300 {
                    let mut b = Batch::new();
                    b.put(format!("own-{t}"), format!("{i}"))
                        .put(format!("new-{t}-{i}"), "x");
                    s.apply(&b)
                        .unwrap_or_else(|e| panic!("thread {t} batch {i}: {e}"));
                }
            });
        }
    });
    assert!(s.len() <= 4, "{} entries over a cap of 4", s.len());
    s.check_invariants().unwrap();
}

/// A store under `Never` on a fault-injecting storage, holding `puts` and
/// `v` from a first batch (the file is version 2 already: the upgrade syncs
/// once), all synced.
fn never_store(puts: &[(&str, &str)]) -> (Arc<FaultStorage>, Store) {
    let fs = Arc::new(FaultStorage::new());
    let s = Options::new()
        .sync(SyncPolicy::Never)
        .active_expiry(None)
        .auto_compact(None)
        .open_on("n.sfs", fs.clone() as Arc<dyn Storage>)
        .unwrap();
    for (k, v) in puts {
        s.put(k, v).unwrap();
    }
    let mut first = Batch::new();
    first.put("v", "first");
    s.apply(&first).unwrap();
    s.sync().unwrap();
    (fs, s)
}

#[test]
fn under_never_a_batch_of_puts_skips_its_sync_and_stays_all_or_nothing_until_the_next() {
    // Under `Never` a batch of puts is written and published without a
    // sync, its members pending until the next sync settles them. Writes
    // that free or renew a member meanwhile (a delete of `x`, a touch
    // of `w`, a compaction) settle the batch first. After every event, a
    // process crash keeps the batch whole, and a power loss keeps its
    // untouched members (`y`, `z`) both or neither. (A delete of `x`
    // before any sync: without settling first, its free header would make
    // the batch's record incomplete, and an open would drop `y` and `z`.)
    let (fs, s) = never_store(&[("x", "old-x")]);
    let syncs = s.stats().syncs;
    let mut b = Batch::new();
    b.put("x", "new-x")
        .put("y", "new-y")
        .put("z", "new-z")
        .put_with_ttl("w", "new-w", Duration::from_secs(60));
    s.apply(&b).unwrap();
    let applied = fs.event_count();
    assert_eq!(
        s.stats().syncs,
        syncs,
        "no sync for a batch of puts under Never"
    );
    s.check_invariants().unwrap();
    s.delete("x").unwrap();
    s.put("x", "newer-x").unwrap();
    s.touch("w", Duration::from_secs(120)).unwrap();
    s.compact().unwrap();
    s.sync().unwrap();
    let synced = fs.event_count();
    s.check_invariants().unwrap();
    // Many batches left pending, then every member freed: one settling each,
    // not one nested inside another.
    for i in 0..300 {
        let mut b = Batch::new();
        b.put(format!("many-{i}"), "1")
            .put(format!("more-{i}"), "1");
        s.apply(&b).unwrap();
    }
    for i in 0..300 {
        s.put(format!("many-{i}"), "2").unwrap();
    }
    s.sync().unwrap();
    s.check_invariants().unwrap();
    assert_eq!(s.get("many-7").unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(s.get("more-7").unwrap().as_deref(), Some(&b"1"[..]));

    let rec = fs.recording();
    let pair = |c: &[(Vec<u8>, Vec<u8>)]| {
        let get = |k: &[u8]| c.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        (get(b"y"), get(b"z"))
    };
    let new = (Some(b"new-y".to_vec()), Some(b"new-z".to_vec()));
    for n in 0..=rec.events.len() {
        // Once `apply` returned, a process crash keeps the batch; once
        // `sync` returned, so does a power loss.
        let crash = pair(&contents_of(rec.after(n)));
        match n >= applied {
            true => assert_eq!(crash, new, "a process crash after event {n}"),
            false => assert_eq!(crash, (None, None), "a process crash after event {n}"),
        }
        for seed in 0..4 {
            let lost = pair(&contents_of(rec.power_loss(n, seed)));
            match n >= synced {
                true => assert_eq!(lost, new, "a power loss after event {n} (seed {seed})"),
                false => assert!(
                    lost == new || lost == (None, None),
                    "a power loss after event {n} (seed {seed}): {lost:?}"
                ),
            }
        }
    }
    drop(s);
    let s = reopen(&fs);
    assert_eq!(s.get("x").unwrap().as_deref(), Some(&b"newer-x"[..]));
    assert_eq!(s.get("y").unwrap().as_deref(), Some(&b"new-y"[..]));
    assert_eq!(s.get("w").unwrap().as_deref(), Some(&b"new-w"[..]));
    s.check_invariants().unwrap();
}

#[test]
fn a_durable_batch_under_never_is_on_disk_when_apply_returns() {
    let (fs, s) = never_store(&[]);
    let syncs = s.stats().syncs;
    let mut b = Batch::new();
    b.put("a", "1").put("b", "2").durable();
    s.apply(&b).unwrap();
    assert_eq!(s.stats().syncs, syncs + 1, "one fdatasync");
    let rec = fs.recording();
    let n = fs.event_count();
    for seed in 0..8 {
        let got = contents_of(rec.power_loss(n, seed));
        let want = pairs(&[("a", "1"), ("b", "2"), ("v", "first")]);
        assert_eq!(got, want, "a power loss right after apply (seed {seed})");
    }
    s.check_invariants().unwrap();
}
