//! Small crash scenarios, one per bug the crash-at-every-write test found:
//! each runs a few operations on a recording storage, rebuilds the file as
//! a crash at every event of the operation under test would leave it, and
//! checks what the key (or keys) may read.

use std::sync::Arc;

use sfs::testing::{FaultStorage, MemStorage, Recording, Storage};
use sfs::{Options, Store, SyncPolicy};

/// A store on a recording storage.
fn store(policy: SyncPolicy, cap: Option<usize>) -> (Arc<FaultStorage>, Options, Store) {
    let fs = Arc::new(FaultStorage::new());
    let mut opts = Options::new().sync(policy);
    if let Some(c) = cap {
        opts = opts.max_entries(c);
    }
    let s = opts
        .open_on("r.sfs", fs.clone() as Arc<dyn Storage>)
        .unwrap();
    (fs, opts, s)
}

/// Which file images to try.
#[derive(Clone, Copy, PartialEq)]
enum Crashes {
    /// Process crashes and torn writes.
    Process,
    /// Those, and power losses.
    All,
}

/// Every file a crash during events `from..to` may leave.
fn images(rec: &Recording, from: usize, to: usize, which: Crashes) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for k in from..=to {
        v.push((format!("crash after event {k}"), rec.after(k)));
        if k < to {
            for keep in rec.tear_points(k) {
                v.push((format!("event {k} torn at {keep}"), rec.torn(k, keep)));
            }
        }
        if which == Crashes::All {
            for seed in 0..40 {
                v.push((
                    format!("power loss after event {k}, seed {seed}"),
                    rec.power_loss(k, seed),
                ));
            }
        }
    }
    v
}

/// Opens each image and checks that `key` reads one of `allowed`.
/// A key and the values it may read as (`None`: absent).
type Expect<'a> = (&'a [u8], &'a [Option<&'a [u8]>]);

fn check(opts: &Options, imgs: &[(String, Vec<u8>)], checks: &[Expect<'_>]) {
    for (what, bytes) in imgs {
        let mem = Arc::new(MemStorage::with_bytes(bytes.clone()));
        let s = opts
            .open_on("r.sfs", mem as Arc<dyn Storage>)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        s.check_invariants().unwrap();
        for (key, allowed) in checks {
            let got = s.get(key).unwrap();
            assert!(
                allowed.contains(&got.as_deref()),
                "{what}: {:?} reads {:?}, allowed {allowed:?}",
                String::from_utf8_lossy(key),
                got.as_deref().map(String::from_utf8_lossy)
            );
        }
    }
}

#[test]
fn a_delete_cut_short_never_brings_back_an_older_copy() {
    // Under Never the old copy of an overwritten key stays valid until a sync
    // covers the new one. A delete frees both; freeing the newest first let a
    // crash in between bring the older value back.
    let (fs, opts, s) = store(SyncPolicy::Never, None);
    s.put(b"k", b"old").unwrap();
    s.sync().unwrap();
    s.put(b"k", b"new").unwrap();
    let from = fs.event_count();
    s.delete(b"k").unwrap();
    let to = fs.event_count();
    std::mem::forget(s); // a crash: no close
    let imgs = images(&fs.recording(), from, to, Crashes::Process);
    check(&opts, &imgs, &[(b"k", &[Some(b"new"), None])]);
}

/// Puts `a`, `b` and `t` under a cap of 3, reads `a` (so `b` is the least
/// recently used although `a` was written first), then inserts `c`, larger,
/// which evicts `b` and goes to the end of the file. Returns the images of a
/// crash anywhere in that insert and the options to open them with.
/// What an image of `insert_over_the_cap` may hold: `a` (just used) always
/// survives; `b` (the LRU entry) is evicted or not yet; `c` (the insert)
/// made it or not; `t` is untouched.
const AFTER_INSERT_OVER_THE_CAP: &[Expect<'static>] = &[
    (b"a", &[Some(b"1")]),
    (b"b", &[Some(b"2"), None]),
    (b"c", &[Some(&[b'3'; 100]), None]),
    (b"t", &[Some(b"4")]),
];

fn insert_over_the_cap(policy: SyncPolicy, which: Crashes) -> (Options, Vec<(String, Vec<u8>)>) {
    let (fs, opts, s) = store(policy, Some(3));
    s.put(b"a", b"1").unwrap();
    s.put(b"b", b"2").unwrap();
    s.put(b"t", b"4").unwrap();
    s.sync().unwrap();
    assert_eq!(s.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
    let from = fs.event_count();
    s.put(b"c", [b'3'; 100]).unwrap();
    assert!(!s.contains(b"b"), "b was the least recently used");
    let to = fs.event_count();
    std::mem::forget(s);
    let imgs = images(&fs.recording(), from, to, which);
    (opts, imgs)
}

#[test]
fn an_insert_cut_short_never_evicts_another_key_than_the_lru_one() {
    // The new entry used to be written before the eviction: a crash in
    // between left three entries, and the open, which evicts by write order,
    // dropped `a`, the most recently used.
    for policy in [SyncPolicy::Never, SyncPolicy::Always] {
        let (opts, imgs) = insert_over_the_cap(policy, Crashes::Process);
        check(&opts, &imgs, AFTER_INSERT_OVER_THE_CAP);
    }
}

#[test]
fn an_eviction_is_durable_before_the_insert_under_always() {
    // Under Always the eviction's free header must be on disk before the new
    // entry can be: else a power loss keeps the entry and not the eviction,
    // and the open evicts `a` instead of `b`. And the eviction is durable
    // when the insert returns.
    let (opts, imgs) = insert_over_the_cap(SyncPolicy::Always, Crashes::All);
    check(&opts, &imgs, AFTER_INSERT_OVER_THE_CAP);
}

#[test]
fn a_removal_cut_short_by_power_loss_never_brings_back_an_older_copy_under_always() {
    // Under Always an overwrite frees the old copy once the new one is
    // durable, but that free header is itself not synced. Removing the key
    // next wrote the newest copy's free header: a power loss could keep that
    // one and drop the older, so the older value came back.
    let clock = Arc::new(sfs::ManualClock::new(1_000_000));
    for removal in ["delete", "purge", "evict"] {
        let (fs, opts, s) = store(SyncPolicy::Always, Some(2));
        let opts = opts.clock(clock.clone()).active_expiry(None);
        drop(s);
        let s = opts
            .open_on("r.sfs", fs.clone() as Arc<dyn Storage>)
            .unwrap();
        s.put(b"other", b"x").unwrap();
        s.put(b"k", b"old").unwrap();
        if removal == "purge" {
            s.put_with_ttl(b"k", b"new", std::time::Duration::from_millis(10))
                .unwrap();
            clock.advance(std::time::Duration::from_millis(20));
        } else {
            s.put(b"k", b"new").unwrap();
        }
        if removal == "evict" {
            assert!(s.get(b"other").unwrap().is_some()); // k is now the LRU one
        }
        let from = fs.event_count();
        match removal {
            "delete" => assert!(s.delete(b"k").unwrap()),
            "purge" => assert_eq!(s.purge_expired().unwrap(), 1),
            _ => s.put(b"third", b"y").unwrap(),
        }
        assert!(!s.contains(b"k"));
        let to = fs.event_count();
        std::mem::forget(s);
        let imgs = images(&fs.recording(), from, to, Crashes::All);
        let allowed: &[Option<&[u8]>] = if removal == "purge" {
            &[None] // the new copy is expired
        } else {
            &[Some(b"new"), None]
        };
        check(&opts, &imgs, &[(b"k", allowed), (b"other", &[Some(b"x")])]);
    }
}

/// A file with entries `a` and `b` and `gap` bytes of garbage between them,
/// as a power loss that kept a new entry but not the free header behind it
/// can leave.
fn file_with_a_gap(gap: usize) -> Vec<u8> {
    use sfs::format::{BlockHeader, FIRST_FORMAT_VERSION, FileHeader, Kind, crc, entry_block_len};
    let salt = 77;
    let mut f = FileHeader {
        version: FIRST_FORMAT_VERSION,
        salt,
        created_ms: 0,
    }
    .encode()
    .to_vec();
    for (i, (k, v)) in [(b"a", b"1"), (b"b", b"2")].iter().enumerate() {
        let h = BlockHeader {
            kind: Kind::Entry,
            block_len: entry_block_len(1, 0, 1),
            key_len: 1,
            meta_len: 0,
            value_len: 1,
            seq: i as u64 + 1,
            expiry_ms: 0,
            payload_crc: crc(salt, &[&k[..], &v[..]]),
            pending: false,
        };
        let at = f.len();
        f.extend_from_slice(&h.encode(salt));
        f.extend_from_slice(&k[..]);
        f.extend_from_slice(&v[..]);
        f.resize(at + h.block_len as usize, 0);
        if i == 0 {
            f.extend((0..gap).map(|j| 0xA0 ^ j as u8));
        }
    }
    f
}

#[test]
fn a_gap_shorter_than_a_block_header_between_entries_is_not_written_over() {
    // Reclaiming such a gap as a free block wrote a 48-byte free header into
    // it, over the next entry's header (a debug assertion caught it first).
    for gap in [8usize, 16, 32, 40] {
        let bytes = file_with_a_gap(gap);
        let mem = Arc::new(MemStorage::with_bytes(bytes));
        let opts = Options::new().sync(SyncPolicy::Always);
        let s = opts
            .open_on("g.sfs", mem.clone() as Arc<dyn Storage>)
            .unwrap();
        assert_eq!(s.stats().corrupt_blocks, 1, "gap {gap}");
        s.check_invariants().unwrap();
        assert_eq!(s.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(s.get(b"b").unwrap().as_deref(), Some(&b"2"[..]));
        // Freeing a neighbour takes the gap in: the damage is gone for good.
        assert!(s.delete(b"a").unwrap());
        s.check_invariants().unwrap();
        drop(s);
        let s = opts.open_on("g.sfs", mem as Arc<dyn Storage>).unwrap();
        assert_eq!(s.stats().corrupt_blocks, 0, "gap {gap}");
        assert_eq!(s.get(b"b").unwrap().as_deref(), Some(&b"2"[..]));
        s.check_invariants().unwrap();
    }
}

#[test]
fn a_value_replaced_before_a_sync_never_comes_back_after_a_power_loss() {
    // After a sync, the old copies it made safe are freed, and their free
    // headers are not synced yet. Deleting such a key wrote its newest
    // copy's free header: a power loss could keep that one and drop the old
    // copy's, and a value the sync had already replaced came back. `sync()`
    // syncs twice, so its second fdatasync failing shows it (the periodic
    // flusher and the sync for space synced once).
    let (fs, opts, s) = store(SyncPolicy::Never, None);
    s.put(b"k", b"old").unwrap();
    s.sync().unwrap();
    s.put(b"k", b"new").unwrap();
    let (_, _, syncs) = fs.calls();
    fs.fail(
        sfs::testing::Call::Sync,
        syncs + 2,
        sfs::testing::FaultError::Io,
    );
    assert!(s.sync().is_err(), "the second sync fails");
    let from = fs.event_count();
    s.delete(b"k").unwrap();
    let to = fs.event_count();
    std::mem::forget(s);
    let imgs = images(&fs.recording(), from, to, Crashes::All);
    check(&opts, &imgs, &[(b"k", &[Some(b"new"), None])]);
}
