//! Online compaction, automatic compaction, and lease renewal (`touch`).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, UNIX_EPOCH};

use common::{TempStore, clock, sorted_keys};
use sfs::{AutoCompact, Options, Store, SyncPolicy};

fn fill(s: &Store, n: u32, len: usize) {
    for i in 0..n {
        s.put(format!("k{i:05}"), vec![(i % 251) as u8; len])
            .unwrap();
    }
}

#[test]
fn compact_moves_the_tail_into_holes_and_cuts_the_file() {
    let t = TempStore::new();
    let c = clock();
    let s = t.open(&c);
    fill(&s, 200, 1000);
    for i in (0..200u32).filter(|i| i % 4 != 3) {
        s.delete(format!("k{i:05}")).unwrap();
    }
    let before = s.stats();
    assert!(before.file_len > 190 * 1000, "the last entry pins the file");
    assert!(before.compactable_bytes >= before.free_bytes);
    let r = s.compact().unwrap();
    let after = s.stats();
    assert_eq!(r.file_len_before, before.file_len);
    assert_eq!(r.file_len_after, after.file_len);
    assert_eq!(r.bytes_reclaimed, before.file_len - after.file_len);
    assert!(r.moved_entries > 20, "moved {}", r.moved_entries);
    assert_eq!(after.file_len, 64 + after.live_bytes + after.free_bytes);
    assert!(
        after.file_len <= 64 + 50 * 1048 + 1048,
        "live data is 50 entries: {}",
        after.file_len
    );
    s.check_invariants().unwrap();
    for i in 0..200u32 {
        let v = s.get(format!("k{i:05}")).unwrap();
        assert_eq!(
            v,
            (i % 4 == 3).then(|| vec![(i % 251) as u8; 1000]),
            "key {i}"
        );
    }
    drop(s);
    let s = t.open(&c);
    s.check_invariants().unwrap();
    assert_eq!(s.len(), 50);
    assert_eq!(s.stats().file_len, after.file_len);
    assert_eq!(
        s.compact().unwrap().moved_entries,
        0,
        "nothing left to move"
    );
}

#[test]
fn compact_after_random_mass_deletes_packs_the_file_to_its_live_blocks() {
    // Random deletes leave holes all over the file, many of them exactly one
    // entry long right below the entries that must move: a move has to go
    // to the lowest hole, not the best-fitting one, or the file stays long.
    let t = TempStore::new();
    let c = clock();
    let s = t.open(&c);
    let n = 20_000u32;
    fill(&s, n, 100);
    let mut order: Vec<u32> = (0..n).collect();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let (gone, kept) = order.split_at(n as usize * 9 / 10);
    for i in gone {
        s.delete(format!("k{i:05}")).unwrap();
    }
    let before = s.stats();
    let r = s.compact().unwrap();
    let after = s.stats();
    assert!(r.moved_entries > 0);
    assert_eq!(after.entries, kept.len());
    let packed = 64 + after.live_bytes;
    assert!(
        after.file_len as f64 <= 1.1 * packed as f64,
        "file {} bytes after compact(), live blocks {} (before: {})",
        after.file_len,
        packed,
        before.file_len
    );
    s.check_invariants().unwrap();
    for i in kept {
        assert_eq!(
            s.get(format!("k{i:05}")).unwrap(),
            Some(vec![(i % 251) as u8; 100])
        );
    }
}

#[test]
fn compact_keeps_lru_order_expiry_and_metadata() {
    let t = TempStore::new();
    let c = clock();
    let s = t.options(&c).max_entries(10).open(&t.path).unwrap();
    for i in 0..10u32 {
        s.put_with(
            format!("k{i}"),
            vec![i as u8; 500],
            &sfs::PutOptions::new()
                .metadata(b"m")
                .ttl(Duration::from_secs(100 + u64::from(i))),
        )
        .unwrap();
    }
    for i in 0..5u32 {
        s.delete(format!("k{i}")).unwrap();
    }
    s.get(b"k5").unwrap(); // k5 is now the most recently used
    let r = s.compact().unwrap();
    assert!(r.moved_entries >= 1);
    let e = s.get_entry(b"k9").unwrap().unwrap();
    assert_eq!(e.metadata, b"m");
    assert_eq!(
        e.expires_at,
        Some(UNIX_EPOCH + Duration::from_millis(1_000_000 + 109_000))
    );
    for i in 10..15u32 {
        s.put(format!("k{i}"), b"x").unwrap();
    }
    // Five new keys: k5 was used last among the old ones, so k6 goes first.
    s.put(b"k15", b"x").unwrap();
    assert!(!s.contains(b"k6"));
    assert!(s.contains(b"k5"));
    s.check_invariants().unwrap();
}

#[test]
fn compact_steps_around_held_readers() {
    let t = TempStore::new();
    let s = t.open(&clock());
    fill(&s, 50, 2000);
    for i in 0..45u32 {
        s.delete(format!("k{i:05}")).unwrap();
    }
    let held = s.get_ref(b"k00049").unwrap().unwrap();
    let r = s.compact().unwrap();
    assert!(r.moved_entries >= 4);
    assert_eq!(
        s.get(b"k00049").unwrap().unwrap(),
        vec![49u8; 2000],
        "the moved copy reads the same"
    );
    assert!(
        held.iter().all(|&b| b == 49) && held.len() == 2000,
        "the reader finished on the old copy"
    );
    assert!(
        s.stats().reader_locked_blocks >= 1,
        "the old copy waits for its reader"
    );
    drop(held);
    s.check_invariants().unwrap();
    let r2 = s.compact().unwrap();
    assert!(r2.file_len_after <= 64 + 5 * 2056, "{r2:?}");
}

#[test]
fn compact_under_concurrent_readers_and_writers() {
    let t = TempStore::new();
    let s = Arc::new(
        Options::new()
            .sync(SyncPolicy::Never)
            .open(&t.path)
            .unwrap(),
    );
    let check = |k: u64, v: &[u8]| {
        let (body, tail) = v.split_at(v.len() - 8);
        assert_eq!(
            u64::from_le_bytes(tail.try_into().unwrap()),
            k,
            "value of another key"
        );
        assert!(
            body.iter().all(|&b| b == (k % 256) as u8),
            "torn value for key {k}"
        );
    };
    let value = |k: u64, n: usize| {
        let mut v = vec![(k % 256) as u8; n];
        v.extend_from_slice(&k.to_le_bytes());
        v
    };
    for k in 0..400u64 {
        s.put(k.to_le_bytes(), value(k, 100 + (k as usize * 37) % 3000))
            .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let mut hs = Vec::new();
    for r in 0..2u64 {
        let (s, stop, reads) = (s.clone(), stop.clone(), reads.clone());
        hs.push(thread::spawn(move || {
            let mut k = r;
            while !stop.load(Ordering::Relaxed) {
                k = (k * 31 + 7) % 400;
                if let Some(v) = s.get(k.to_le_bytes()).unwrap() {
                    check(k, &v);
                    reads.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(v) = s.get_ref(k.to_le_bytes()).unwrap() {
                    check(k, &v);
                }
            }
        }));
    }
    {
        let (s, stop) = (s.clone(), stop.clone());
        hs.push(thread::spawn(move || {
            let mut i = 1u64;
            while !stop.load(Ordering::Relaxed) {
                i = i.wrapping_mul(6364136223846793005).wrapping_add(1);
                let k = (i >> 33) % 400;
                match i % 3 {
                    0 => {
                        s.delete(k.to_le_bytes()).unwrap();
                    }
                    1 => s
                        .put(k.to_le_bytes(), value(k, (i % 5000) as usize))
                        .unwrap(),
                    _ => {
                        s.touch(k.to_le_bytes(), Duration::from_secs(3600)).unwrap();
                    }
                }
            }
        }));
    }
    let mut moved = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        moved += s.compact().unwrap().moved_entries;
    }
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join().unwrap();
    }
    assert!(moved > 0 && reads.load(Ordering::Relaxed) > 0);
    s.check_invariants().unwrap();
    let mut before: Vec<_> = s.iter().map(|r| r.unwrap()).collect();
    before.sort();
    for (k, v) in &before {
        check(u64::from_le_bytes(k[..].try_into().unwrap()), v);
    }
    drop(s);
    let s = Store::open(&t.path).unwrap();
    let mut after: Vec<_> = s.iter().map(|r| r.unwrap()).collect();
    after.sort();
    assert_eq!(before, after);
}

#[test]
fn auto_compaction_shrinks_a_churned_file() {
    let t = TempStore::new();
    let auto = AutoCompact {
        min_free_ratio: 0.5,
        min_free_bytes: 10_000,
        check_every: Duration::from_millis(10),
    };
    let s = Options::new()
        .sync(SyncPolicy::Never)
        .auto_compact(Some(auto))
        .open(&t.path)
        .unwrap();
    fill(&s, 300, 1000);
    for i in 0..299u32 {
        s.delete(format!("k{i:05}")).unwrap();
    }
    // The background thread notices within a few checks; allow a generous deadline.
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.stats().file_len > 10_000 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert!(
        s.stats().file_len <= 10_000,
        "still {} bytes",
        s.stats().file_len
    );
    assert_eq!(
        s.get(b"k00299").unwrap().unwrap(),
        vec![(299 % 251) as u8; 1000]
    );
    s.check_invariants().unwrap();
}

#[test]
fn auto_compaction_leaves_a_store_below_its_thresholds_alone() {
    let t = TempStore::new();
    let auto = AutoCompact {
        min_free_ratio: 0.5,
        min_free_bytes: 1 << 30,
        check_every: Duration::from_millis(5),
    };
    let s = Options::new()
        .sync(SyncPolicy::Never)
        .auto_compact(Some(auto))
        .open(&t.path)
        .unwrap();
    fill(&s, 100, 1000);
    for i in 0..99u32 {
        s.delete(format!("k{i:05}")).unwrap();
    }
    let len = s.stats().file_len;
    thread::sleep(Duration::from_millis(100));
    assert_eq!(
        s.stats().file_len,
        len,
        "1 GiB of free space is needed first"
    );
}

#[test]
fn invalid_auto_compaction_options_are_refused() {
    let t = TempStore::new();
    for a in [
        AutoCompact {
            min_free_ratio: 0.0,
            ..AutoCompact::default()
        },
        AutoCompact {
            min_free_ratio: 1.5,
            ..AutoCompact::default()
        },
        AutoCompact {
            check_every: Duration::ZERO,
            ..AutoCompact::default()
        },
    ] {
        let e = Options::new()
            .auto_compact(Some(a))
            .open(&t.path)
            .unwrap_err();
        assert!(matches!(e, sfs::Error::InvalidOptions { .. }), "{e}");
    }
    assert!(!t.path.exists());
}

#[test]
fn touch_renews_and_reports_absence() {
    let t = TempStore::new();
    let c = clock();
    let s = t.open(&c);
    s.put_with_ttl(b"lease", b"node", Duration::from_secs(10))
        .unwrap();
    s.put(b"plain", b"v").unwrap();
    c.advance(Duration::from_secs(9));
    assert!(s.touch(b"lease", Duration::from_secs(10)).unwrap());
    c.advance(Duration::from_secs(9));
    assert!(s.contains(b"lease"), "renewed at 9 s for 10 s");
    assert!(
        s.touch(b"plain", Duration::from_secs(5)).unwrap(),
        "an entry without expiry gets one"
    );
    c.advance(Duration::from_secs(2));
    assert!(!s.contains(b"lease"));
    assert!(
        !s.touch(b"lease", Duration::from_secs(10)).unwrap(),
        "expired: too late"
    );
    assert!(!s.touch(b"missing", Duration::from_secs(10)).unwrap());
    let until = UNIX_EPOCH + Duration::from_millis(1_000_000 + 20_000 + 60_000);
    assert!(s.touch_until(b"plain", until).unwrap());
    assert_eq!(
        s.get_entry(b"plain").unwrap().unwrap().expires_at,
        Some(until)
    );
    assert!(
        s.touch(b"plain", Duration::ZERO).unwrap(),
        "a zero ttl expires it now"
    );
    assert!(!s.contains(b"plain"));
    s.check_invariants().unwrap();
}

#[test]
fn touch_is_in_place_and_survives_reopen() {
    let t = TempStore::new();
    let c = clock();
    let s = t.open(&c);
    s.put_with_ttl(b"lease", vec![7u8; 300], Duration::from_secs(10))
        .unwrap();
    s.sync().unwrap();
    let len = s.stats().file_len;
    let before = std::fs::read(&t.path).unwrap();
    assert!(s.touch(b"lease", Duration::from_secs(100)).unwrap());
    s.sync().unwrap();
    let after = std::fs::read(&t.path).unwrap();
    assert_eq!(s.stats().file_len, len, "nothing was appended");
    let changed: Vec<usize> = (0..before.len())
        .filter(|&i| before[i] != after[i])
        .collect();
    assert!(
        !changed.is_empty() && changed.iter().all(|&i| (64 + 32..64 + 40).contains(&i)),
        "only the expiry word changed: {changed:?}"
    );
    drop(s);
    c.advance(Duration::from_secs(50));
    let s = t.open(&c);
    assert_eq!(s.get(b"lease").unwrap().unwrap(), vec![7u8; 300]);
}

#[test]
fn touch_while_a_reader_holds_the_entry_rewrites_it() {
    let t = TempStore::new();
    let c = clock();
    let s = t.open(&c);
    s.put_with_ttl(b"lease", vec![3u8; 300], Duration::from_secs(10))
        .unwrap();
    let r = s.get_ref(b"lease").unwrap().unwrap();
    assert!(s.touch(b"lease", Duration::from_secs(100)).unwrap());
    c.advance(Duration::from_secs(50));
    assert_eq!(s.get(b"lease").unwrap().unwrap(), vec![3u8; 300]);
    assert!(r.iter().all(|&b| b == 3));
    drop(r);
    s.check_invariants().unwrap();
    drop(s);
    let s = t.open(&c);
    assert!(
        s.contains(b"lease"),
        "the rewritten copy (higher sequence number) won"
    );
}

#[test]
fn touch_counts_as_a_use() {
    let t = TempStore::new();
    let c = clock();
    let s = t.options(&c).max_entries(2).open(&t.path).unwrap();
    s.put_with_ttl(b"a", b"1", Duration::from_secs(60)).unwrap();
    s.put_with_ttl(b"b", b"2", Duration::from_secs(60)).unwrap();
    s.touch(b"a", Duration::from_secs(60)).unwrap();
    s.put(b"c", b"3").unwrap();
    assert_eq!(sorted_keys(&s), vec![b"a".to_vec(), b"c".to_vec()]);
}

#[test]
fn touch_races_with_compaction_and_the_last_renewal_wins() {
    let t = TempStore::new();
    let c = clock();
    let s = Arc::new(t.open(&c));
    for k in 0..200u32 {
        s.put_with_ttl(k.to_le_bytes(), vec![1u8; 2000], Duration::from_secs(10))
            .unwrap();
    }
    for k in (0..200u32).step_by(2) {
        s.delete(k.to_le_bytes()).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let compactor = {
        let (s, stop) = (s.clone(), stop.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                s.compact().unwrap();
                for k in (0..200u32).step_by(10) {
                    s.put(k.to_le_bytes(), vec![1u8; 2000]).unwrap();
                    s.delete(k.to_le_bytes()).unwrap();
                }
            }
        })
    };
    // Each odd key is renewed to a distinct final expiry.
    for round in 1..=20u64 {
        for k in (1..200u32).step_by(2) {
            assert!(
                s.touch(
                    k.to_le_bytes(),
                    Duration::from_secs(100 * round + u64::from(k))
                )
                .unwrap()
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    compactor.join().unwrap();
    let expect =
        |k: u32| Some(UNIX_EPOCH + Duration::from_millis(1_000_000 + (2000 + u64::from(k)) * 1000));
    for k in (1..200u32).step_by(2) {
        assert_eq!(
            s.get_entry(k.to_le_bytes()).unwrap().unwrap().expires_at,
            expect(k),
            "key {k}"
        );
    }
    s.check_invariants().unwrap();
    let s = Arc::try_unwrap(s).unwrap();
    s.close().unwrap();
    let s = t.open(&c);
    for k in (1..200u32).step_by(2) {
        assert_eq!(
            s.get_entry(k.to_le_bytes()).unwrap().unwrap().expires_at,
            expect(k),
            "key {k} after reopen"
        );
    }
}

#[test]
fn a_compaction_whose_free_header_write_fails_says_so_and_leaves_no_damage() {
    // Issue "Every interleaving keeps the promises", case 7: the header of
    // the space left over behind a moved entry could not be written, and
    // compact() returned Ok while memory and file disagreed.
    use sfs::testing::{Call, FaultError, FaultStorage, MemStorage, Storage};
    let fs = Arc::new(FaultStorage::new());
    let s = Options::new()
        .sync(SyncPolicy::Never)
        .auto_compact(None)
        .open_on("c7.sfs", fs.clone() as Arc<dyn Storage>)
        .unwrap();
    // A large hole at the start, and a small entry at the end to move into
    // it: the move splits the hole and writes the remainder's header first.
    s.put(b"hole", vec![1u8; 4000]).unwrap();
    s.put(b"pin", vec![2u8; 100]).unwrap();
    s.put(b"tail", vec![3u8; 100]).unwrap();
    s.delete(b"hole").unwrap();
    s.sync().unwrap();
    let (writes, _, _) = fs.calls();
    fs.fail(Call::Write, writes + 1, FaultError::Io);
    let e = s
        .compact()
        .expect_err("the failed header write is reported");
    assert!(e.to_string().contains("c7.sfs"), "{e}");
    fs.heal();
    s.check_invariants().unwrap();
    assert_eq!(s.get(b"tail").unwrap(), Some(vec![3u8; 100]));
    s.sync().unwrap();
    let fresh = Options::new()
        .read_only(true)
        .open_on(
            "c7.sfs",
            Arc::new(MemStorage::with_bytes(fs.bytes())) as Arc<dyn Storage>,
        )
        .unwrap();
    assert_eq!(fresh.stats().corrupt_blocks, 0, "the file holds no damage");
    assert_eq!(fresh.get(b"tail").unwrap(), Some(vec![3u8; 100]));
    assert_eq!(fresh.get(b"pin").unwrap(), Some(vec![2u8; 100]));
    // And the next compaction does the move.
    assert!(s.compact().unwrap().moved_entries >= 1);
}

/// Puts 300 entries of ~150 bytes (syncing after each when `sync_each`),
/// checks them, deletes them all; returns how often the file grew and its
/// length at the end.
fn growths_for_300_puts(s: &Store, path: &std::path::Path, sync_each: bool) -> (usize, u64) {
    let len = || std::fs::metadata(path).unwrap().len();
    let (mut growths, mut last) = (0, len());
    for i in 0..300u32 {
        s.put(format!("k{i:05}"), [9u8; 100]).unwrap();
        if sync_each {
            s.sync().unwrap();
        }
        growths += usize::from(len() > last);
        last = len();
    }
    for i in 0..300u32 {
        assert_eq!(s.get(format!("k{i:05}")).unwrap().unwrap(), [9u8; 100]);
    }
    for i in 0..300u32 {
        assert!(s.delete(format!("k{i:05}")).unwrap());
    }
    (growths, len())
}

/// Under `SyncPolicy::Always` a small file grows by a reserve of at least
/// 16 KiB, not one entry at a time: each growth changes the file's size,
/// which the `fdatasync` after it must write too (BENCHMARKS.md "Durable puts
/// into a small file"). Deleting the tail entries still cuts the file back.
#[test]
fn a_small_durable_file_grows_by_a_reserve_not_at_every_put() {
    let t = TempStore::new();
    let c = clock();
    let s = t
        .options(&c)
        .sync(SyncPolicy::Always)
        .open(&t.path)
        .unwrap();
    // 300 entries of ~150 bytes: ~44 KiB, so three growths or so; one per
    // put before the reserve.
    let (growths, end) = growths_for_300_puts(&s, &t.path, false);
    assert!((1..=4).contains(&growths), "{growths} growths for 300 puts");
    // Everything deleted, the file is cut back to its header.
    assert!(end < 4096, "{end} bytes left");
}

/// The same with `Options::frequent_syncs` under `SyncPolicy::Never`, and a
/// `sync()` after each put (BENCHMARKS.md "Syncs that also write the inode").
#[test]
fn frequent_syncs_under_never_grow_by_a_reserve_too() {
    let c = clock();
    // Without the option, a small file under `Never` grows at each put
    // (`fallocate` of what the entry needs).
    let t = TempStore::new();
    let s = t.options(&c).sync(SyncPolicy::Never).open(&t.path).unwrap();
    let (growths, _) = growths_for_300_puts(&s, &t.path, true);
    assert!(growths > 250, "{growths} growths for 300 puts");
    // With it, as under `Always`.
    let t = TempStore::new();
    let s = t
        .options(&c)
        .sync(SyncPolicy::Never)
        .frequent_syncs(true)
        .open(&t.path)
        .unwrap();
    let (growths, end) = growths_for_300_puts(&s, &t.path, true);
    assert!((1..=4).contains(&growths), "{growths} growths for 300 puts");
    assert!(end < 4096, "{end} bytes left");
}
