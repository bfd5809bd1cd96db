//! The public API's behaviour, one method at a time.

mod common;

use std::time::{Duration, UNIX_EPOCH};

use common::{TempStore, clock, sorted_keys};
use sfs::{Error, Options, PutOptions, Store, SyncPolicy};

#[test]
fn put_get_overwrite_delete() {
    let t = TempStore::new();
    let s = t.open(&clock());
    assert_eq!(s.get(b"k").unwrap(), None);
    s.put(b"k", b"one").unwrap();
    assert_eq!(s.get(b"k").unwrap().as_deref(), Some(&b"one"[..]));
    s.put(b"k", b"two, longer than one").unwrap();
    assert_eq!(
        s.get(b"k").unwrap().as_deref(),
        Some(&b"two, longer than one"[..])
    );
    assert_eq!(s.len(), 1);
    assert!(s.contains(b"k"));
    assert!(s.delete(b"k").unwrap());
    assert!(!s.delete(b"k").unwrap());
    assert!(!s.contains(b"k"));
    assert_eq!(s.get(b"k").unwrap(), None);
    assert!(s.is_empty());
    s.check_invariants().unwrap();
}

#[test]
fn empty_keys_and_values_work() {
    let t = TempStore::new();
    let s = t.open(&clock());
    s.put(b"", b"empty key").unwrap();
    s.put(b"empty value", b"").unwrap();
    s.put(b"", b"").unwrap();
    assert_eq!(s.get(b"").unwrap(), Some(vec![]));
    assert_eq!(s.get(b"empty value").unwrap(), Some(vec![]));
    drop(s);
    let s = t.open(&clock());
    assert_eq!(s.get(b"").unwrap(), Some(vec![]));
    assert_eq!(s.len(), 2);
    s.check_invariants().unwrap();
}

#[test]
fn everything_survives_close_and_reopen() {
    let t = TempStore::new();
    let c = clock();
    let s = t.open(&c);
    for i in 0..500u32 {
        s.put(format!("key{i}"), vec![i as u8; (i as usize * 7) % 3000])
            .unwrap();
    }
    for i in (0..500u32).step_by(3) {
        s.delete(format!("key{i}")).unwrap();
    }
    for i in (1..500u32).step_by(3) {
        s.put(format!("key{i}"), format!("new{i}")).unwrap();
    }
    s.close().unwrap();
    let s = t.open(&c);
    s.check_invariants().unwrap();
    for i in 0..500u32 {
        let v = s.get(format!("key{i}")).unwrap();
        match i % 3 {
            0 => assert_eq!(v, None),
            1 => assert_eq!(v, Some(format!("new{i}").into_bytes())),
            _ => assert_eq!(v, Some(vec![i as u8; (i as usize * 7) % 3000])),
        }
    }
    assert_eq!(s.stats().corrupt_blocks, 0);
}

#[test]
fn keys_and_iter_are_snapshots_of_live_entries() {
    let t = TempStore::new();
    let c = clock();
    let s = t.open(&c);
    s.put(b"a", b"1").unwrap();
    s.put(b"b", b"2").unwrap();
    s.put_with_ttl(b"c", b"3", Duration::from_secs(1)).unwrap();
    c.advance(Duration::from_secs(2));
    assert_eq!(sorted_keys(&s), vec![b"a".to_vec(), b"b".to_vec()]);
    let mut n = 0;
    for item in s.iter() {
        let (k, v) = item.unwrap();
        // The loop body may use the store: no lock is held.
        s.put(&k, [v.as_slice(), b"!"].concat()).unwrap();
        n += 1;
    }
    assert_eq!(n, 2);
    assert_eq!(s.get(b"a").unwrap().unwrap(), b"1!");
}

#[test]
fn over_limit_sizes_are_too_large_and_change_nothing() {
    let t = TempStore::new();
    let s = t.open(&clock());
    s.put(b"k", b"v").unwrap();
    let before = std::fs::read(&t.path).unwrap();
    let long_key = vec![1u8; 65_536];
    let e = s.put(&long_key, b"v").unwrap_err();
    assert!(
        matches!(
            e,
            Error::TooLarge {
                what: "key",
                len: 65_536,
                max: 65_535,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("store.sfs"), "{e}");
    let e = s
        .put_with(b"k", b"v", &PutOptions::new().metadata(&long_key))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::TooLarge {
                what: "metadata",
                ..
            }
        ),
        "{e}"
    );
    // A value one byte over 4 GiB - 1: the zeroed buffer is virtual memory, never touched.
    let huge = vec![0u8; u32::MAX as usize + 1];
    let e = s.put(b"k", &huge).unwrap_err();
    assert!(matches!(e, Error::TooLarge { what: "value", .. }), "{e}");
    drop(huge);
    assert_eq!(std::fs::read(&t.path).unwrap(), before);
    assert_eq!(s.get(b"k").unwrap().unwrap(), b"v");
    // The largest key is fine.
    let max_key = vec![2u8; 65_535];
    s.put(&max_key, b"max").unwrap();
    assert_eq!(s.get(&max_key).unwrap().unwrap(), b"max");
}

#[test]
fn expired_entries_are_invisible_at_once_and_purged() {
    let t = TempStore::new();
    let c = clock();
    let s = t.open(&c);
    s.put(b"keep", b"forever").unwrap();
    for i in 0..50u32 {
        s.put_with_ttl(format!("ttl{i}"), vec![0u8; 500], Duration::from_secs(10))
            .unwrap();
    }
    assert!(s.contains(b"ttl3"));
    c.advance(Duration::from_millis(9_999));
    assert!(s.contains(b"ttl3"), "not yet expired");
    c.advance(Duration::from_millis(1));
    assert!(!s.contains(b"ttl3"));
    assert_eq!(s.get(b"ttl3").unwrap(), None);
    assert_eq!(s.keys(), vec![b"keep".to_vec()]);
    assert!(s.get_ref(b"ttl3").unwrap().is_none());
    assert!(
        !s.delete(b"ttl4").unwrap(),
        "an expired key was not there to delete"
    );
    let big = s.stats().file_len;
    assert_eq!(s.purge_expired().unwrap(), 49);
    assert_eq!(s.purge_expired().unwrap(), 0);
    assert_eq!(s.len(), 1);
    assert!(
        s.stats().file_len < big / 10,
        "purged space at the end was cut off"
    );
    s.check_invariants().unwrap();
}

#[test]
fn expired_entries_are_dropped_at_open() {
    let t = TempStore::new();
    let c = clock();
    let s = t.open(&c);
    s.put_with_ttl(b"a", b"1", Duration::from_secs(5)).unwrap();
    s.put(b"b", b"2").unwrap();
    drop(s);
    c.advance(Duration::from_secs(6));
    let s = t.open(&c);
    assert_eq!(s.len(), 1);
    assert_eq!(s.stats().expired_purged, 1);
    s.check_invariants().unwrap();
}

#[test]
fn expiry_in_the_past_removes_the_key() {
    let t = TempStore::new();
    let c = clock();
    let s = t.open(&c);
    s.put(b"k", b"v").unwrap();
    s.put_with_expiry(b"k", b"w", UNIX_EPOCH + Duration::from_millis(5))
        .unwrap();
    assert!(!s.contains(b"k"));
    assert_eq!(s.len(), 0);
    let at = UNIX_EPOCH + Duration::from_millis(1_000_000 + 500);
    s.put_with_expiry(b"k", b"w", at).unwrap();
    assert!(s.contains(b"k"));
    assert_eq!(s.get_entry(b"k").unwrap().unwrap().expires_at, Some(at));
    c.advance(Duration::from_millis(500));
    assert!(!s.contains(b"k"));
}

#[test]
fn metadata_is_stored_beside_the_value() {
    let t = TempStore::new();
    let c = clock();
    let s = t.open(&c);
    s.put_with(b"k", b"value", &PutOptions::new().metadata(b"meta"))
        .unwrap();
    s.put(b"plain", b"v").unwrap();
    drop(s);
    let s = t.open(&c);
    let e = s.get_entry(b"k").unwrap().unwrap();
    assert_eq!(
        (e.value.as_slice(), e.metadata.as_slice(), e.expires_at),
        (&b"value"[..], &b"meta"[..], None)
    );
    assert_eq!(s.get(b"k").unwrap().unwrap(), b"value");
    assert!(s.get_entry(b"plain").unwrap().unwrap().metadata.is_empty());
}

#[test]
fn lru_cap_evicts_the_least_recently_used() {
    let t = TempStore::new();
    let c = clock();
    let s = t.options(&c).max_entries(3).open(&t.path).unwrap();
    s.put(b"a", b"1").unwrap();
    s.put(b"b", b"2").unwrap();
    s.put(b"c", b"3").unwrap();
    s.get(b"a").unwrap(); // order now b, c, a
    s.put(b"d", b"4").unwrap(); // evicts b
    assert_eq!(
        sorted_keys(&s),
        vec![b"a".to_vec(), b"c".to_vec(), b"d".to_vec()]
    );
    s.put(b"c", b"33").unwrap(); // overwrite counts as use; order a, d, c
    s.put(b"e", b"5").unwrap(); // evicts a
    assert_eq!(
        sorted_keys(&s),
        vec![b"c".to_vec(), b"d".to_vec(), b"e".to_vec()]
    );
    assert_eq!(s.stats().evictions, 2);
    s.check_invariants().unwrap();
    drop(s);
    // Evictions are persistent, and after a reopen the order is the write order: d, c, e.
    let s = t.options(&c).max_entries(3).open(&t.path).unwrap();
    assert_eq!(
        sorted_keys(&s),
        vec![b"c".to_vec(), b"d".to_vec(), b"e".to_vec()]
    );
    s.put(b"f", b"6").unwrap(); // evicts d
    assert_eq!(
        sorted_keys(&s),
        vec![b"c".to_vec(), b"e".to_vec(), b"f".to_vec()]
    );
    drop(s);
    // A smaller cap trims at open, oldest writes first.
    let s = t.options(&c).max_entries(1).open(&t.path).unwrap();
    assert_eq!(s.keys(), vec![b"f".to_vec()]);
    assert_eq!(s.stats().evictions, 2);
    s.check_invariants().unwrap();
    drop(s);
    let s = t.open(&c);
    assert_eq!(
        s.keys(),
        vec![b"f".to_vec()],
        "trimmed entries are gone from the file"
    );
}

#[test]
fn freed_space_is_reused_and_the_tail_is_cut() {
    let t = TempStore::new();
    let c = clock();
    let s = t.open(&c);
    for i in 0..100u32 {
        s.put(format!("k{i:03}"), vec![1u8; 1000]).unwrap();
    }
    let full = s.stats().file_len;
    // Under SyncPolicy::Never an old copy is reused only after the next sync
    // (so a synced value survives power loss): one round of overwrites may
    // double the file, later rounds reuse the space.
    for round in 0..5u8 {
        for i in 0..100u32 {
            s.put(format!("k{i:03}"), vec![round; 1000]).unwrap();
        }
        s.sync().unwrap();
        assert!(
            s.stats().file_len <= 2 * full,
            "round {round}: file grew from {full} to {}",
            s.stats().file_len
        );
    }
    s.check_invariants().unwrap();
    drop(s);
    // Under SyncPolicy::Always the old copy is free as soon as the new one is durable.
    let s = Options::new()
        .sync(SyncPolicy::Always)
        .clock(c.clone())
        .open(&t.path)
        .unwrap();
    let compacted = s.stats().file_len;
    for i in 0..100u32 {
        s.put(format!("k{i:03}"), vec![7u8; 1000]).unwrap();
    }
    assert!(
        s.stats().file_len <= compacted + 1048,
        "file grew from {compacted} to {}",
        s.stats().file_len
    );
    drop(s);
    let s = t.open(&c);
    // Deleting every other key leaves holes that a smaller entry fills.
    for i in (0..100u32).step_by(2) {
        s.delete(format!("k{i:03}")).unwrap();
    }
    let st = s.stats();
    assert_eq!(st.free_blocks, 50, "holes between live blocks do not merge");
    let len = st.file_len;
    s.put(b"small", vec![9u8; 500]).unwrap();
    assert_eq!(s.stats().file_len, len, "the new entry went into a hole");
    // Deleting the rest merges everything and the file shrinks to its header.
    for i in (1..100u32).step_by(2) {
        s.delete(format!("k{i:03}")).unwrap();
    }
    s.delete(b"small").unwrap();
    let st = s.stats();
    assert_eq!((st.file_len, st.free_blocks, st.free_bytes), (64, 0, 0));
    assert_eq!(std::fs::metadata(&t.path).unwrap().len(), 64);
    s.check_invariants().unwrap();
}

#[test]
fn clear_takes_the_file_back_to_its_header() {
    let t = TempStore::new();
    let c = clock();
    let s = t.open(&c);
    for i in 0..100u32 {
        s.put(i.to_le_bytes(), vec![3u8; 300]).unwrap();
    }
    s.clear().unwrap();
    assert_eq!(s.len(), 0);
    assert_eq!(s.stats().file_len, 64);
    assert_eq!(s.get(1u32.to_le_bytes()).unwrap(), None);
    s.put(b"after", b"clear").unwrap();
    s.check_invariants().unwrap();
    drop(s);
    let s = t.open(&c);
    assert_eq!(s.keys(), vec![b"after".to_vec()]);
}

#[test]
fn value_refs_survive_delete_overwrite_and_clear() {
    let t = TempStore::new();
    let c = clock();
    let s = t.open(&c);
    s.put(b"a", vec![1u8; 10_000]).unwrap();
    s.put(b"b", vec![2u8; 10_000]).unwrap();
    let ra = s.get_ref(b"a").unwrap().unwrap();
    let rb = s.get_ref(b"b").unwrap().unwrap();
    s.delete(b"a").unwrap();
    s.put(b"b", vec![3u8; 10_000]).unwrap();
    s.sync().unwrap();
    // New writes must not land in the held blocks.
    for i in 0..50u32 {
        s.put(format!("x{i}"), vec![9u8; 10_000]).unwrap();
    }
    assert!(s.stats().reader_locked_blocks >= 1);
    s.clear().unwrap();
    s.put(b"c", vec![4u8; 10_000]).unwrap();
    assert!(ra.iter().all(|&x| x == 1) && ra.len() == 10_000);
    assert!(rb.iter().all(|&x| x == 2) && rb.len() == 10_000);
    drop(ra);
    drop(rb);
    assert_eq!(s.stats().reader_locked_blocks, 0);
    s.check_invariants().unwrap();
    s.delete(b"c").unwrap();
    assert_eq!(
        s.stats().file_len,
        64,
        "held blocks were freed when their readers left"
    );
}

#[test]
fn default_policy_syncs_every_write() {
    let t = TempStore::new();
    let s = Store::open(&t.path).unwrap();
    s.put(b"k", b"v").unwrap();
    assert_eq!(s.get(b"k").unwrap().unwrap(), b"v");
    s.close().unwrap();
    let s = Options::new()
        .sync(SyncPolicy::Periodic(Duration::from_millis(5)))
        .open(&t.path)
        .unwrap();
    s.put(b"k2", b"v2").unwrap();
    std::thread::sleep(Duration::from_millis(30));
    drop(s);
    let s = Options::new().read_only(true).open(&t.path).unwrap();
    assert_eq!(s.len(), 2);
}

#[test]
fn stats_describe_the_store() {
    let t = TempStore::new();
    let s = t.open(&clock());
    for i in 0..10u32 {
        s.put(i.to_le_bytes(), vec![0u8; 100]).unwrap();
    }
    s.delete(3u32.to_le_bytes()).unwrap();
    s.delete(6u32.to_le_bytes()).unwrap();
    let st = s.stats();
    assert_eq!(st.entries, 8);
    assert_eq!(st.file_len, std::fs::metadata(&t.path).unwrap().len());
    assert_eq!(st.free_blocks, 2);
    assert_eq!(st.free_bytes, 2 * 152);
    assert_eq!(st.largest_free_block, 152);
    assert_eq!(st.live_bytes, 8 * 152);
    assert_eq!(st.file_len, 64 + 10 * 152);
    assert!((st.fragmentation() - 0.5).abs() < 1e-9);
    assert!(st.index_bytes > 0);
}

#[test]
fn an_expired_entry_never_costs_a_live_one_its_place_under_the_cap() {
    // Issue "Every interleaving keeps the promises", case 6: expired entries
    // counted toward max_entries, so a live entry was evicted while the store
    // held fewer live entries than its cap, and a reopen (which drops expired
    // entries first) disagreed with memory.
    let t = common::TempStore::new();
    let clock = common::clock();
    let opts = t.options(&clock).max_entries(2);
    let s = opts.open(&t.path).unwrap();
    s.put_with_ttl(b"lease", b"x", std::time::Duration::from_millis(10))
        .unwrap();
    s.put(b"old", b"1").unwrap();
    clock.advance(std::time::Duration::from_millis(20));
    assert_eq!(s.len(), 1, "the expired lease is not counted");
    s.put(b"new", b"2").unwrap();
    assert!(
        s.contains(b"old"),
        "the least recently used live entry stays"
    );
    assert!(s.contains(b"new"));
    let st = s.stats();
    assert_eq!(
        (st.evictions, st.entries),
        (0, 2),
        "the expired entry went, not a live one"
    );
    drop(s);
    let s = opts.open(&t.path).unwrap();
    assert_eq!(
        common::sorted_keys(&s),
        vec![b"new".to_vec(), b"old".to_vec()]
    );
}
