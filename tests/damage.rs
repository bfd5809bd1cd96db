//! Damage sweep. For a small real store, every byte after the file header is
//! damaged in turn (all bits flipped, then one bit), and the promise checked:
//! the open succeeds (read-only, which writes nothing, and read-write), every
//! entry the damage did not hit reads back whole, the entry it hit is never
//! returned as data (`Ok(None)` or `Err(Error::Corrupt)`), a deleted key never
//! comes back, and the repaired file reopens clean. The same damage made
//! while the store is open is caught by reads. A damaged file header is
//! `Error::Corrupt` (`Error::NotAStore` when the magic is hit) and the file is
//! left as it is. For a larger file: sampled offsets and multi-byte damage
//! (garbage runs, zeroed runs, a zeroed page).

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use sfs::inspect::{BlockKind, Walker};
use sfs::testing::{MemStorage, Storage, TestRng};
use sfs::{Error, Options, PutOptions, Store, SyncPolicy};

/// Key → (value, metadata).
type Live = BTreeMap<Vec<u8>, (Vec<u8>, Vec<u8>)>;

/// A closed store with `n` keys of many sizes, some with metadata or an
/// expiry, built with churn (rounds of overwrites and deletes, so free blocks
/// were split, merged and reused and stale headers lie inside free space and
/// padding), and deleted keys whose old bytes lie in free blocks. Returns its
/// bytes, what it holds and the deleted keys.
fn build(path: &std::path::Path, n: usize, seed: u64) -> (Vec<u8>, Live, Vec<Vec<u8>>) {
    let s = Options::new()
        .sync(SyncPolicy::Never)
        .fragmentation_factor(0.6)
        .open(path)
        .unwrap();
    let mut live = Live::new();
    let mut r = TestRng::new(seed);
    let sizes = [0usize, 1, 7, 30, 90, 250, 400];
    let key = |i: u64| format!("key-{i:05}").into_bytes();
    for round in 0..6 * n as u64 {
        let i = r.below(n as u64 * 3 / 2);
        if r.below(4) == 0 {
            s.delete(key(i)).unwrap();
            live.remove(&key(i));
            continue;
        }
        let mut v = format!("value {round} of {i}:").into_bytes();
        v.resize(
            v.len() + sizes[r.below(sizes.len() as u64) as usize],
            b'a' + (i % 26) as u8,
        );
        let meta = if i.is_multiple_of(5) {
            format!("meta-{round}").into_bytes()
        } else {
            Vec::new()
        };
        let mut o = PutOptions::new().metadata(&meta);
        if i.is_multiple_of(7) {
            o = o.ttl(Duration::from_secs(30 * 24 * 3600));
        }
        s.put_with(key(i), &v, &o).unwrap();
        live.insert(key(i), (v, meta));
    }
    // Keys deleted last, so their bytes are still in free blocks.
    let deleted: Vec<Vec<u8>> = live.keys().step_by(3).cloned().collect();
    for k in &deleted {
        assert!(s.delete(k).unwrap());
        live.remove(k);
    }
    s.close().unwrap();
    (std::fs::read(path).unwrap(), live, deleted)
}

/// A directory for the test's files: in memory (/dev/shm, a tmpfs) when
/// there is one. The files are read and written through the same code as on
/// a disk, but the repairs' fdatasyncs do not wait for a busy disk, and the
/// sweep opens thousands of files.
fn scratch_dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap()
}

/// Block extents of a file: (offset, len, key when it is an entry).
fn blocks(bytes: &[u8]) -> Vec<(u64, u64, Option<Vec<u8>>)> {
    let mut w = Walker::new(bytes).unwrap().unwrap();
    let mut v = Vec::new();
    while let Some(b) = w.next_block().unwrap() {
        let key = matches!(b.kind, BlockKind::Entry(_)).then(|| w.key().to_vec());
        assert!(!b.is_damage());
        v.push((b.offset, b.len, key));
    }
    v
}

/// Keys whose blocks overlap `[from, to)`.
fn hit(blocks: &[(u64, u64, Option<Vec<u8>>)], from: u64, to: u64) -> Vec<Vec<u8>> {
    blocks
        .iter()
        .filter(|(o, l, k)| k.is_some() && *o < to && from < o + l)
        .map(|(_, _, k)| k.clone().unwrap())
        .collect()
}

/// Checks an opened (damaged) store: everything not hit is whole, what was
/// hit is absent or refused, deleted keys stay deleted, nothing unknown.
fn check_store(s: &Store, live: &Live, deleted: &[Vec<u8>], hit: &[Vec<u8>], what: &str) {
    for (k, (v, m)) in live {
        let got = s.get_entry(k);
        if hit.contains(k) {
            match got {
                Ok(None) | Err(Error::Corrupt { .. }) => {}
                Ok(Some(e)) => assert!(
                    e.value == *v && e.metadata == *m,
                    "{what}: damaged entry {} returned as data",
                    String::from_utf8_lossy(k)
                ),
                Err(e) => panic!("{what}: {e}"),
            }
        } else {
            let e = got
                .unwrap_or_else(|e| panic!("{what}: {}: {e}", String::from_utf8_lossy(k)))
                .unwrap_or_else(|| panic!("{what}: {} lost", String::from_utf8_lossy(k)));
            assert!(
                e.value == *v && e.metadata == *m,
                "{what}: {} differs",
                String::from_utf8_lossy(k)
            );
        }
    }
    for k in deleted {
        assert!(
            matches!(s.get(k), Ok(None)),
            "{what}: deleted {} came back",
            String::from_utf8_lossy(k)
        );
    }
    for k in s.keys() {
        assert!(
            live.contains_key(&k),
            "{what}: unknown key {:?}",
            String::from_utf8_lossy(&k)
        );
    }
}

/// Opens damaged bytes read-only then read-write (through `open`), checks,
/// reopens, checks again. `open` gives a store over the current bytes.
fn check_damaged(
    open: &dyn Fn(bool) -> sfs::Result<Store>,
    read_back: &dyn Fn() -> Vec<u8>,
    live: &Live,
    deleted: &[Vec<u8>],
    hit: &[Vec<u8>],
    what: &str,
) {
    let before = read_back();
    let ro = open(true).unwrap_or_else(|e| panic!("{what}: read-only open: {e}"));
    check_store(&ro, live, deleted, hit, what);
    drop(ro);
    assert!(read_back() == before, "{what}: a read-only open wrote");
    let s = open(false).unwrap_or_else(|e| panic!("{what}: open: {e}"));
    s.check_invariants()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    check_store(&s, live, deleted, hit, what);
    let expect: Vec<_> = {
        let mut k = s.keys();
        k.sort();
        k
    };
    drop(s);
    let s = open(false).unwrap();
    s.check_invariants().unwrap();
    let st = s.stats();
    assert!(
        st.corrupt_bytes <= 40 * st.corrupt_blocks,
        "{what}: damage left after the repair ({} bytes)",
        st.corrupt_bytes
    );
    let mut k = s.keys();
    k.sort();
    assert_eq!(k, expect, "{what}: reopen");
}

#[test]
fn every_byte_of_a_small_store_damaged_in_turn() {
    let dir = scratch_dir();
    let origin = dir.path().join("origin.sfs");
    let (good, live, deleted) = build(&origin, 8, 1);
    let blocks = blocks(&good);
    assert!(
        blocks.iter().any(|b| b.2.is_none()),
        "the store has free blocks"
    );
    let path = dir.path().join("damaged.sfs");
    let open = |ro: bool| {
        Options::new()
            .sync(SyncPolicy::Never)
            .read_only(ro)
            .open(&path)
    };
    let read_back = || std::fs::read(&path).unwrap();
    for pattern in ["all bits", "one bit"] {
        for at in 64..good.len() {
            let mut bytes = good.clone();
            bytes[at] ^= if pattern == "all bits" {
                0xFF
            } else {
                1 << (at % 8)
            };
            std::fs::write(&path, &bytes).unwrap();
            let what = format!("{pattern} of byte {at} of {}", good.len());
            let hit = hit(&blocks, at as u64, at as u64 + 1);
            check_damaged(&open, &read_back, &live, &deleted, &hit, &what);
        }
    }
    eprintln!("{} bytes damaged twice each", good.len() - 64);
}

#[test]
fn damage_made_while_the_store_is_open_is_refused_by_reads() {
    let dir = scratch_dir();
    let path = dir.path().join("live.sfs");
    let (good, live, deleted) = build(&path, 12, 2);
    let blocks = blocks(&good);
    let s = Options::new().sync(SyncPolicy::Never).open(&path).unwrap();
    // Another handle on the same file: its writes show through the map.
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    for (at, &byte) in good.iter().enumerate().skip(64) {
        f.write_all_at(&[byte ^ 0xFF], at as u64).unwrap();
        let hit = hit(&blocks, at as u64, at as u64 + 1);
        check_store(
            &s,
            &live,
            &deleted,
            &hit,
            &format!("byte {at} damaged under an open store"),
        );
        f.write_all_at(&[byte], at as u64).unwrap();
    }
    // Undamaged again: everything reads back.
    check_store(&s, &live, &deleted, &[], "after the sweep");
    s.check_invariants().unwrap();
}

#[test]
fn a_damaged_file_header_is_refused_and_left_untouched() {
    let dir = scratch_dir();
    let path = dir.path().join("h.sfs");
    let (good, _, _) = build(&path, 8, 3);
    for at in 0..64 {
        for flip in [0xFFu8, 1 << (at % 8)] {
            let mut bytes = good.clone();
            bytes[at] ^= flip;
            std::fs::write(&path, &bytes).unwrap();
            for ro in [false, true] {
                let e = Options::new().read_only(ro).open(&path).unwrap_err();
                assert!(
                    matches!(e, Error::Corrupt { offset: 0, .. }),
                    "byte {at} ^ {flip:#x}: {e}"
                );
                assert!(e.to_string().contains("h.sfs"), "{e}");
                assert_eq!(
                    std::fs::read(&path).unwrap(),
                    bytes,
                    "byte {at} changed the file"
                );
            }
        }
    }
}

#[test]
fn sampled_and_multi_byte_damage_in_a_larger_store() {
    let dir = scratch_dir();
    let (good, live, deleted) = build(&dir.path().join("big.sfs"), 800, 4);
    let blocks = blocks(&good);
    let len = good.len() as u64;
    let mut r = TestRng::new(5);
    let mut cases: Vec<(String, u64, Vec<u8>)> = Vec::new();
    for _ in 0..150 {
        let at = 64 + r.below(len - 64);
        cases.push((format!("byte {at}"), at, vec![!good[at as usize]]));
    }
    for i in 0..150 {
        let at = 64 + r.below(len - 64);
        let n = (1 + r.below(if i % 3 == 0 { 4000 } else { 200 })).min(len - at);
        let bytes: Vec<u8> = match i % 3 {
            0 => vec![0; n as usize],                                      // zeroed run
            1 => (0..n).map(|_| r.next_u64() as u8).collect(),             // garbage
            _ => (0..n).map(|j| good[(at + j) as usize] ^ 0x5A).collect(), // flipped run
        };
        cases.push((format!("{n} bytes at {at}"), at, bytes));
    }
    // A zeroed 4 KiB page, as a torn page write can leave.
    for _ in 0..20 {
        let at = (64 + r.below(len - 64)) & !4095;
        let n = 4096.min(len - at);
        cases.push((format!("page at {at}"), at.max(64), vec![0; n as usize]));
    }
    for (what, at, damage) in &cases {
        let mut bytes = good.clone();
        bytes[*at as usize..*at as usize + damage.len()].copy_from_slice(damage);
        let hit = hit(&blocks, *at, at + damage.len() as u64);
        let mem = Arc::new(MemStorage::with_bytes(bytes));
        let open = |ro: bool| {
            Options::new()
                .sync(SyncPolicy::Never)
                .read_only(ro)
                .open_on("big.sfs", mem.clone() as Arc<dyn Storage>)
        };
        let read_back = || mem.bytes();
        check_damaged(&open, &read_back, &live, &deleted, &hit, what);
    }
}
