//! The typed layer (`TypedStore`): every operation on serde keys and values,
//! lookups with borrowed keys, the boundary with the byte store, and the key
//! promise (two keys are one entry iff their encodings are equal).

mod common;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{TempStore, clock};
use serde::{Deserialize, Serialize};
use sfs::{Options, PutOptions, SyncPolicy, TypedStore};

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Session {
    user: String,
    hits: u32,
}

fn session(user: &str) -> Session {
    Session {
        user: user.into(),
        hits: 1,
    }
}

#[test]
fn every_operation_works_on_typed_keys_and_values() {
    let t = TempStore::new();
    let c = clock();
    let s: TypedStore<String, Session> = t.options(&c).open_typed(&t.path).unwrap();
    s.put("a", &session("ann")).unwrap();
    s.put_with_ttl("b", &session("bob"), Duration::from_secs(10))
        .unwrap();
    s.put_with(
        "c",
        &session("cat"),
        &PutOptions::new()
            .metadata(b"m=1")
            .ttl(Duration::from_secs(100)),
    )
    .unwrap();
    let e = s.get_entry("c").unwrap().unwrap();
    assert_eq!(e.value, session("cat"));
    assert_eq!(e.metadata, b"m=1");
    assert!(e.expires_at.is_some());
    assert_eq!(s.get_entry("a").unwrap().unwrap().expires_at, None);
    assert_eq!(s.peek("a").unwrap(), Some(session("ann")));
    {
        let r = s.get_ref("a").unwrap().unwrap();
        assert_eq!(r.decode().unwrap(), session("ann"));
        assert_eq!(
            r.as_bytes(),
            s.raw().get(s.encode_key("a").unwrap()).unwrap().unwrap()
        );
        #[derive(Deserialize)]
        struct View<'a> {
            user: &'a str,
            hits: u32,
        }
        let v: View<'_> = r.decode_borrowed().unwrap();
        assert_eq!((v.user, v.hits), ("ann", 1));
        assert!(format!("{r:?}").contains("Session"));
    }
    assert!(s.get_ref("zz").unwrap().is_none());

    // Renewals: b would expire at 10 s; renewed at 8 s for 10 s more.
    c.advance(Duration::from_secs(8));
    assert!(s.touch("b", Duration::from_secs(10)).unwrap());
    c.advance(Duration::from_secs(8));
    assert!(s.contains("b"));
    let at = std::time::SystemTime::UNIX_EPOCH + Duration::from_millis(1_000_000 + 20_000);
    assert!(s.touch_until("b", at).unwrap());
    assert!(!s.touch("nobody", Duration::from_secs(1)).unwrap());
    c.advance(Duration::from_secs(5));
    assert!(!s.contains("b"));
    assert_eq!(s.get("b").unwrap(), None);
    assert!(!s.touch("b", Duration::from_secs(10)).unwrap());

    let mut keys = s.keys().unwrap();
    keys.sort();
    assert_eq!(keys, ["a", "c"]);
    let mut all: Vec<(String, Session)> = s.iter().collect::<sfs::Result<_>>().unwrap();
    all.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        all,
        [("a".into(), session("ann")), ("c".into(), session("cat"))]
    );
    assert_eq!(s.purge_expired().unwrap(), 1);
    assert_eq!(s.len(), 2);
    assert!(!s.is_empty());
    assert_eq!(s.stats().entries, 2);
    s.sync().unwrap();
    let cs = s.compact().unwrap();
    assert_eq!(cs.file_len_after, s.stats().file_len);
    assert!(s.delete("a").unwrap());
    assert!(!s.delete("a").unwrap());
    assert_eq!(s.path(), t.path);
    assert!(format!("{s:?}").contains("TypedStore"));
    s.close().unwrap();

    let s: TypedStore<String, Session> = t.options(&c).open_typed(&t.path).unwrap();
    assert_eq!(s.get("c").unwrap(), Some(session("cat")));
    s.clear().unwrap();
    assert!(s.is_empty());
    s.close().unwrap();
}

#[test]
fn a_struct_holding_a_typed_store_can_derive_debug() {
    #[derive(Debug)]
    struct App {
        #[allow(dead_code)]
        sessions: TypedStore<String, Session>,
    }
    let t = TempStore::new();
    let app = App {
        sessions: TypedStore::open(&t.path).unwrap(),
    };
    let d = format!("{app:?}");
    assert!(d.contains("store.sfs") && d.contains("Session"), "{d}");
}

/// The pairs the docs promise: `Q` encodes exactly as `K`, so a lookup with
/// a `&Q` finds what a `&K` put.
#[test]
fn promised_borrowed_forms_encode_as_their_owners_and_find_the_entry() {
    let t = TempStore::new();
    let opts = Options::new().sync(SyncPolicy::Never);

    let s: TypedStore<String, String> = opts.open_typed(t.dir.path().join("1")).unwrap();
    s.put(&"sid-1".to_string(), &"v".to_string()).unwrap();
    assert_eq!(
        s.encode_key("sid-1").unwrap(),
        s.encode_key(&"sid-1".to_string()).unwrap()
    );
    assert_eq!(s.get("sid-1").unwrap().as_deref(), Some("v"));
    s.put("sid-2", "w").unwrap(); // &str for a String value too
    assert_eq!(s.get(&"sid-2".to_string()).unwrap().as_deref(), Some("w"));

    let s: TypedStore<Vec<u8>, Vec<u8>> = opts.open_typed(t.dir.path().join("2")).unwrap();
    let owned: Vec<u8> = vec![0, 1, 2, 255];
    s.put(&owned, &owned).unwrap();
    let slice: &[u8] = &[0, 1, 2, 255];
    assert_eq!(s.encode_key(slice).unwrap(), s.encode_key(&owned).unwrap());
    assert_eq!(s.get(slice).unwrap(), Some(owned.clone()));
    s.put(slice, slice).unwrap();
    assert_eq!(s.len(), 1);

    let s: TypedStore<Vec<String>, u8> = opts.open_typed(t.dir.path().join("3")).unwrap();
    s.put(&vec!["a".to_string(), "b".to_string()], &1).unwrap();
    let parts = ["a".to_string(), "b".to_string()];
    assert_eq!(s.get(&parts[..]).unwrap(), Some(1));

    let s: TypedStore<Box<str>, u8> = opts.open_typed(t.dir.path().join("4")).unwrap();
    s.put(&Box::<str>::from("boxed"), &2).unwrap();
    assert_eq!(s.get("boxed").unwrap(), Some(2));

    let s: TypedStore<Cow<'static, str>, u8> = opts.open_typed(t.dir.path().join("5")).unwrap();
    s.put(&Cow::Owned("cow".to_string()), &3).unwrap();
    assert_eq!(s.get("cow").unwrap(), Some(3));

    let s: TypedStore<PathBuf, u8> = opts.open_typed(t.dir.path().join("6")).unwrap();
    s.put(&PathBuf::from("/srv/a.txt"), &4).unwrap();
    assert_eq!(s.get(Path::new("/srv/a.txt")).unwrap(), Some(4));
}

/// The pair the docs warn about: an array encodes without a length, a slice
/// with one, so a slice does not find an array key.
#[test]
fn an_array_key_is_not_found_by_a_slice_as_documented() {
    let t = TempStore::new();
    let s: TypedStore<[u8; 4], u8> = TypedStore::open(&t.path).unwrap();
    s.put(&[1, 2, 3, 4], &9).unwrap();
    let slice: &[u8] = &[1, 2, 3, 4];
    assert_ne!(
        s.encode_key(slice).unwrap(),
        s.encode_key(&[1u8, 2, 3, 4]).unwrap()
    );
    assert_eq!(s.get(slice).unwrap(), None);
    assert_eq!(s.get(&[1, 2, 3, 4]).unwrap(), Some(9));
}

/// Issue 10, item 10: the store compares keys by their encoded bytes. Floats
/// that are `==` but encode differently are two entries, as documented.
#[test]
fn float_keys_zero_and_negative_zero_are_distinct_entries_as_documented() {
    assert_eq!(0.0f64, -0.0f64);
    let t = TempStore::new();
    let s: TypedStore<f64, String> = TypedStore::open(&t.path).unwrap();
    assert_ne!(s.encode_key(&0.0).unwrap(), s.encode_key(&-0.0).unwrap());
    s.put(&0.0, "plus").unwrap();
    s.put(&-0.0, "minus").unwrap();
    assert_eq!(s.len(), 2);
    assert_eq!(s.get(&0.0).unwrap().as_deref(), Some("plus"));
    assert_eq!(s.get(&-0.0).unwrap().as_deref(), Some("minus"));
    // A NaN is not equal to itself, yet finds its entry: same bytes.
    s.put(&f64::NAN, "nan").unwrap();
    assert_eq!(s.get(&f64::NAN).unwrap().as_deref(), Some("nan"));
}

/// An ordered map is a stable key: equal maps built in any order encode to
/// the same bytes and find one entry.
#[test]
fn btreemap_keys_encode_stably_whatever_the_insertion_order() {
    let t = TempStore::new();
    let s: TypedStore<BTreeMap<String, u32>, u8> = TypedStore::open(&t.path).unwrap();
    let forward: BTreeMap<String, u32> = (0..50).map(|i| (format!("k{i}"), i)).collect();
    let backward: BTreeMap<String, u32> = (0..50).rev().map(|i| (format!("k{i}"), i)).collect();
    assert_eq!(forward, backward);
    assert_eq!(
        s.encode_key(&forward).unwrap(),
        s.encode_key(&backward).unwrap()
    );
    s.put(&forward, &1).unwrap();
    s.put(&backward, &2).unwrap();
    assert_eq!(s.len(), 1);
    assert_eq!(s.get(&forward).unwrap(), Some(2));
}

/// The raw store's keys are the encoded keys: the unencoded key finds
/// nothing, `encode_key` gives the bytes that do.
#[test]
fn the_raw_store_needs_the_encoded_key() {
    let t = TempStore::new();
    let c = clock();
    let s: TypedStore<String, u64> = t.options(&c).open_typed(&t.path).unwrap();
    let sid = "sid-demo-2".to_string();
    s.put_with_ttl(&sid, &5, Duration::from_secs(10)).unwrap();
    assert!(!s.raw().touch(&sid, Duration::from_secs(60)).unwrap());
    assert!(!s.raw().contains(&sid));
    let raw = s.encode_key(&sid).unwrap();
    assert_eq!(raw[0] as usize, sid.len(), "bincode: a varint length first");
    assert_eq!(&raw[1..], sid.as_bytes());
    assert_eq!(s.raw().keys(), vec![raw.clone()]);
    assert!(s.raw().touch(&raw, Duration::from_secs(60)).unwrap());
    c.advance(Duration::from_secs(30));
    assert_eq!(
        s.get(&sid).unwrap(),
        Some(5),
        "renewed through the raw store"
    );
}
