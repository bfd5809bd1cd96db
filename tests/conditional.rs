//! Conditional writes: `compare_and_swap`, `put_if_absent`, `update`.
//! (Their interleavings with every other operation, and the crash images of
//! each, are explored in `tests/interleavings`.)

use std::sync::Arc;
use std::time::Duration;

use sfs::{Conflict, ManualClock, Options, PutOptions, Store, SyncPolicy};

fn counter(v: Option<&[u8]>) -> u64 {
    v.map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

fn bump(v: Option<&[u8]>) -> Option<Vec<u8>> {
    Some((counter(v) + 1).to_le_bytes().to_vec())
}

#[test]
fn compare_and_swap_writes_only_over_the_expected_value() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s.sfs")).unwrap();
    // Absent expected, absent found.
    assert_eq!(
        store.compare_and_swap("k", None, Some(b"1")).unwrap(),
        Ok(())
    );
    assert_eq!(store.get("k").unwrap().as_deref(), Some(b"1".as_slice()));
    // Absent expected, a value found: the value comes back, nothing changes.
    let c = store.compare_and_swap("k", None, Some(b"2")).unwrap();
    assert_eq!(
        c,
        Err(Conflict {
            current: Some(b"1".to_vec())
        })
    );
    // The wrong value expected.
    let c = store.compare_and_swap("k", Some(b"0"), Some(b"2")).unwrap();
    assert_eq!(
        c,
        Err(Conflict {
            current: Some(b"1".to_vec())
        })
    );
    assert_eq!(store.get("k").unwrap().as_deref(), Some(b"1".as_slice()));
    // The right one.
    assert_eq!(
        store.compare_and_swap("k", Some(b"1"), Some(b"2")).unwrap(),
        Ok(())
    );
    assert_eq!(store.get("k").unwrap().as_deref(), Some(b"2".as_slice()));
    // A conditional delete: refused, then done.
    let c = store.compare_and_swap("k", Some(b"1"), None).unwrap();
    assert_eq!(
        c,
        Err(Conflict {
            current: Some(b"2".to_vec())
        })
    );
    assert_eq!(
        store.compare_and_swap("k", Some(b"2"), None).unwrap(),
        Ok(())
    );
    assert!(!store.contains("k"));
    // A value expected, absent found.
    let c = store.compare_and_swap("k", Some(b"2"), Some(b"3")).unwrap();
    assert_eq!(c, Err(Conflict { current: None }));
    assert!(c.unwrap_err().to_string().contains("absent"));
    // Absent to absent: nothing to do, and it matches.
    assert_eq!(store.compare_and_swap("k", None, None).unwrap(), Ok(()));
    assert!(store.is_empty());
    store.check_invariants().unwrap();
}

#[test]
fn an_expired_entry_counts_as_absent() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = Options::new()
        .clock(clock.clone())
        .open(dir.path().join("s.sfs"))
        .unwrap();
    // A lease: taken if free, with a TTL.
    let ttl = Duration::from_secs(10);
    assert_eq!(
        store.put_if_absent_with_ttl("lease", "a", ttl).unwrap(),
        Ok(())
    );
    let held = store.put_if_absent_with_ttl("lease", "b", ttl).unwrap();
    assert_eq!(
        held,
        Err(Conflict {
            current: Some(b"a".to_vec())
        })
    );
    clock.advance(Duration::from_secs(11));
    // Lapsed: the next taker gets it, and its own TTL.
    assert_eq!(
        store.put_if_absent_with_ttl("lease", "b", ttl).unwrap(),
        Ok(())
    );
    let e = store.get_entry("lease").unwrap().unwrap();
    assert_eq!(e.value, b"b");
    let expected_expiry = std::time::UNIX_EPOCH + Duration::from_millis(1_000_000 + 21_000);
    assert_eq!(e.expires_at, Some(expected_expiry));
    // An expired value is not the expected one.
    clock.advance(Duration::from_secs(11));
    let c = store
        .compare_and_swap("lease", Some(b"b"), Some(b"c"))
        .unwrap();
    assert_eq!(c, Err(Conflict { current: None }));
    assert_eq!(
        store.compare_and_swap("lease", None, Some(b"c")).unwrap(),
        Ok(())
    );
    store.check_invariants().unwrap();
}

#[test]
fn compare_and_swap_with_writes_expiry_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s.sfs")).unwrap();
    store.put("k", "v").unwrap();
    let opts = PutOptions::new()
        .ttl(Duration::from_secs(3600))
        .metadata(b"owner=7");
    assert_eq!(
        store
            .compare_and_swap_with("k", Some(b"v"), Some(b"w"), &opts)
            .unwrap(),
        Ok(())
    );
    let e = store.get_entry("k").unwrap().unwrap();
    assert_eq!(
        (e.value.as_slice(), e.metadata.as_slice()),
        (b"w".as_slice(), b"owner=7".as_slice())
    );
    assert!(e.expires_at.is_some());
}

#[test]
fn update_keeps_expiry_and_metadata_and_can_delete() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s.sfs")).unwrap();
    assert_eq!(store.update("n", bump).unwrap(), bump(None));
    let opts = PutOptions::new()
        .ttl(Duration::from_secs(3600))
        .metadata(b"m");
    store.put_with("n", 41u64.to_le_bytes(), &opts).unwrap();
    let before = store.get_entry("n").unwrap().unwrap();
    assert_eq!(
        store.update("n", bump).unwrap(),
        Some(42u64.to_le_bytes().to_vec())
    );
    let after = store.get_entry("n").unwrap().unwrap();
    assert_eq!(after.metadata, before.metadata);
    assert_eq!(after.expires_at, before.expires_at);
    assert_eq!(store.update("n", |_| None).unwrap(), None);
    assert!(!store.contains("n"));
    store.check_invariants().unwrap();
}

#[test]
fn too_large_a_conditional_write_fails_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s.sfs")).unwrap();
    store.put("k", "v").unwrap();
    let key = vec![b'x'; 70_000];
    let e = store.put_if_absent(&key, "v").unwrap_err();
    assert!(matches!(e, sfs::Error::TooLarge { what: "key", .. }), "{e}");
    let meta = vec![0u8; 70_000];
    let opts = PutOptions::new().metadata(&meta);
    let e = store
        .compare_and_swap_with("k", Some(b"v"), Some(b"w"), &opts)
        .unwrap_err();
    assert!(e.to_string().contains("s.sfs"), "{e}");
    assert_eq!(store.get("k").unwrap().as_deref(), Some(b"v".as_slice()));
    assert_eq!(store.len(), 1);
}

#[test]
fn a_read_only_store_refuses_conditional_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sfs");
    Store::open(&path).unwrap().close().unwrap();
    let ro = Options::new().read_only(true).open(&path).unwrap();
    assert!(ro.put_if_absent("k", "v").is_err());
    assert!(ro.compare_and_swap("k", None, None).is_err());
    assert!(ro.update("k", bump).is_err());
}

#[test]
fn a_conflicting_insert_at_the_cap_evicts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Options::new()
        .max_entries(2)
        .open(dir.path().join("s.sfs"))
        .unwrap();
    store.put("a", "1").unwrap();
    store.put("b", "2").unwrap();
    assert!(store.put_if_absent("b", "3").unwrap().is_err());
    assert!(store.contains("a") && store.contains("b"));
    // A new key: the least recently used goes, as with `put`.
    assert_eq!(store.put_if_absent("c", "4").unwrap(), Ok(()));
    assert!(!store.contains("a"));
    assert_eq!(store.stats().evictions, 1);
}

/// `threads` threads add `per` each to one counter, half with `update`,
/// half with `compare_and_swap` retries.
fn count_concurrently(store: &Store, threads: usize, per: u64) {
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                for _ in 0..per {
                    if t % 2 == 0 {
                        store.update("n", bump).unwrap();
                    } else {
                        loop {
                            let seen = store.get("n").unwrap();
                            let next = bump(seen.as_deref()).unwrap();
                            match store.compare_and_swap("n", seen.as_deref(), Some(&next)) {
                                Ok(Ok(())) => break,
                                Ok(Err(_)) => continue,
                                Err(e) => panic!("{e}"),
                            }
                        }
                    }
                }
            });
        }
    });
}

#[test]
fn concurrent_increments_are_never_lost_and_survive_a_reopen() {
    for policy in [SyncPolicy::Never, SyncPolicy::Always] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.sfs");
        let store = Options::new().sync(policy).open(&path).unwrap();
        let (threads, per) = (
            4,
            if policy == SyncPolicy::Always {
                50
            } else {
                500
            },
        );
        count_concurrently(&store, threads, per);
        let total = threads as u64 * per;
        assert_eq!(
            counter(store.get("n").unwrap().as_deref()),
            total,
            "{policy:?}"
        );
        store.check_invariants().unwrap();
        store.close().unwrap();
        let store = Store::open(&path).unwrap();
        assert_eq!(
            counter(store.get("n").unwrap().as_deref()),
            total,
            "{policy:?}"
        );
    }
}

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
struct Lease {
    holder: String,
    term: u64,
}

#[test]
fn typed_conditional_writes_compare_encodings_and_decode_the_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let leases = sfs::TypedStore::<String, Lease>::open(dir.path().join("t.sfs")).unwrap();
    let a = Lease {
        holder: "a".into(),
        term: 1,
    };
    let b = Lease {
        holder: "b".into(),
        term: 2,
    };
    assert_eq!(leases.put_if_absent("db", &a).unwrap(), Ok(()));
    let lost = leases.put_if_absent("db", &b).unwrap().unwrap_err();
    assert_eq!(lost.current, Some(a.clone()));
    assert!(lost.to_string().contains("holder: \"a\""), "{lost}");
    assert!(
        leases
            .compare_and_swap("db", Some(&b), Some(&a))
            .unwrap()
            .is_err()
    );
    assert_eq!(
        leases.compare_and_swap("db", Some(&a), Some(&b)).unwrap(),
        Ok(())
    );
    let next = leases
        .update("db", |l| {
            l.map(|l| Lease {
                term: l.term + 1,
                ..l
            })
        })
        .unwrap();
    assert_eq!(next.map(|l| l.term), Some(3));
    // A value that does not decode: an error naming the type, nothing written.
    leases
        .raw()
        .put(leases.encode_key("db").unwrap(), [0xFF])
        .unwrap();
    let e = leases.update("db", |l| l).unwrap_err();
    assert!(e.to_string().contains("Lease"), "{e}");
    assert_eq!(
        leases.raw().get(leases.encode_key("db").unwrap()).unwrap(),
        Some(vec![0xFF])
    );
}
