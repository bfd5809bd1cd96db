//! Opening: creation, refusal of files that are not ours, locks, read-only.

mod common;

use std::fs;
use std::time::Duration;

use common::{TempStore, clock};
use sfs::{Error, Options, Store, SyncPolicy};

#[test]
fn creates_the_file_and_missing_parent_directories() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/c/data.sfs");
    let s = Store::open(&path).unwrap();
    s.put(b"k", b"v").unwrap();
    drop(s);
    assert!(path.is_file());
    assert_eq!(&fs::read(&path).unwrap()[..4], b"\x89SFS");
}

#[test]
fn a_missing_file_is_an_error_without_create() {
    let t = TempStore::new();
    let e = Options::new().create(false).open(&t.path).unwrap_err();
    match &e {
        Error::Io { source, .. } => assert_eq!(source.kind(), std::io::ErrorKind::NotFound),
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("store.sfs"), "{e}");
    assert!(!t.path.exists());
    let e = Options::new().read_only(true).open(&t.path).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert!(!t.path.exists(), "read-only never creates");
}

#[test]
fn a_foreign_file_is_refused_and_left_untouched() {
    let t = TempStore::new();
    let contents = b"id,name\n1,alice\n2,bob\n".repeat(100);
    fs::write(&t.path, &contents).unwrap();
    let e = Store::open(&t.path).unwrap_err();
    assert!(matches!(e, Error::NotAStore { .. }), "{e}");
    assert!(e.to_string().contains("store.sfs"));
    assert_eq!(fs::read(&t.path).unwrap(), contents);
    // A single byte is not a store either.
    fs::write(&t.path, b"x").unwrap();
    assert!(matches!(
        Store::open(&t.path).unwrap_err(),
        Error::NotAStore { .. }
    ));
    assert_eq!(fs::read(&t.path).unwrap(), b"x");
}

#[test]
fn an_empty_existing_file_becomes_a_store() {
    let t = TempStore::new();
    fs::write(&t.path, b"").unwrap();
    let s = Store::open(&t.path).unwrap();
    s.put(b"k", b"v").unwrap();
    drop(s);
    assert_eq!(Store::open(&t.path).unwrap().len(), 1);
}

fn store_file(t: &TempStore) -> Vec<u8> {
    let s = t.open(&clock());
    s.put(b"k", b"v").unwrap();
    drop(s);
    fs::read(&t.path).unwrap()
}

#[test]
fn a_newer_format_version_is_refused_and_left_untouched() {
    let t = TempStore::new();
    let mut bytes = store_file(&t);
    bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
    let c = crc32fast::hash(&bytes[0..60]);
    bytes[60..64].copy_from_slice(&c.to_le_bytes());
    fs::write(&t.path, &bytes).unwrap();
    let e = Store::open(&t.path).unwrap_err();
    assert!(
        matches!(
            e,
            Error::UnsupportedVersion {
                found: 3,
                supported: 2,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(fs::read(&t.path).unwrap(), bytes);
}

#[test]
fn a_damaged_file_header_is_corrupt_and_left_untouched() {
    let t = TempStore::new();
    let good = store_file(&t);
    for at in [9usize, 16, 30, 61] {
        let mut bytes = good.clone();
        bytes[at] ^= 0x01;
        fs::write(&t.path, &bytes).unwrap();
        let e = Store::open(&t.path).unwrap_err();
        assert!(
            matches!(e, Error::Corrupt { offset: 0, .. }),
            "byte {at}: {e}"
        );
        assert_eq!(fs::read(&t.path).unwrap(), bytes);
        let e = Options::new().read_only(true).open(&t.path).unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    }
    // A header cut short after the magic is damage, not a foreign file.
    fs::write(&t.path, &good[..20]).unwrap();
    assert!(matches!(
        Store::open(&t.path).unwrap_err(),
        Error::Corrupt { .. }
    ));
    assert_eq!(fs::read(&t.path).unwrap(), &good[..20]);
}

#[test]
fn a_second_writer_is_locked_out_in_the_same_process() {
    let t = TempStore::new();
    let a = Store::open(&t.path).unwrap();
    let e = Store::open(&t.path).unwrap_err();
    assert!(matches!(e, Error::Locked { .. }), "{e}");
    assert!(e.to_string().contains("store.sfs"));
    let e = Options::new().read_only(true).open(&t.path).unwrap_err();
    assert!(
        matches!(e, Error::Locked { .. }),
        "a reader waits for the writer to go: {e}"
    );
    drop(a);
    let b = Store::open(&t.path).unwrap();
    b.close().unwrap();
    Store::open(&t.path).unwrap();
}

#[test]
fn read_only_opens_share_the_file_and_refuse_writes() {
    let t = TempStore::new();
    let s = t.open(&clock());
    s.put(b"k", b"v").unwrap();
    s.put_with_ttl(b"gone", b"x", Duration::from_millis(1))
        .unwrap();
    drop(s);
    let before = fs::read(&t.path).unwrap();
    let c = clock();
    c.advance(Duration::from_secs(1));
    let r1 = Options::new()
        .read_only(true)
        .clock(c.clone())
        .open(&t.path)
        .unwrap();
    let r2 = Options::new().read_only(true).open(&t.path).unwrap();
    assert_eq!(r1.get(b"k").unwrap().unwrap(), b"v");
    assert_eq!(r2.get(b"k").unwrap().unwrap(), b"v");
    assert!(!r1.contains(b"gone"));
    for e in [
        r1.put(b"a", b"b").unwrap_err(),
        r1.delete(b"k").map(|_| ()).unwrap_err(),
        r1.clear().unwrap_err(),
        r1.purge_expired().map(|_| ()).unwrap_err(),
    ] {
        assert!(matches!(e, Error::ReadOnly { .. }), "{e}");
    }
    let e = Store::open(&t.path).unwrap_err();
    assert!(matches!(e, Error::Locked { .. }), "{e}");
    r1.close().unwrap();
    drop(r2);
    assert_eq!(
        fs::read(&t.path).unwrap(),
        before,
        "read-only opens never write"
    );
}

#[test]
fn invalid_options_create_no_file() {
    let t = TempStore::new();
    let e = Options::new()
        .fragmentation_factor(1.5)
        .open(&t.path)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidOptions { .. }), "{e}");
    let e = Options::new().max_entries(0).open(&t.path).unwrap_err();
    assert!(matches!(e, Error::InvalidOptions { .. }), "{e}");
    let e = Options::new()
        .sync(SyncPolicy::Periodic(Duration::ZERO))
        .open(&t.path)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidOptions { .. }), "{e}");
    assert!(!t.path.exists());
}

#[test]
fn a_directory_is_not_a_store_file() {
    let t = TempStore::new();
    fs::create_dir(&t.path).unwrap();
    let e = Store::open(&t.path).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    let e = Options::new().read_only(true).open(&t.path).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert!(e.to_string().contains("store.sfs"), "{e}");
}

#[test]
fn a_path_under_a_file_is_an_io_error() {
    let t = TempStore::new();
    fs::write(&t.path, b"").unwrap();
    let e = Store::open(t.path.join("sub.sfs")).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
}

#[test]
fn a_torn_tail_is_skipped_counted_and_cut() {
    let t = TempStore::new();
    let s = t.open(&clock());
    s.put(b"a", vec![1u8; 100]).unwrap();
    s.put(b"b", vec![2u8; 100]).unwrap();
    drop(s);
    let bytes = fs::read(&t.path).unwrap();
    let cut = bytes.len() - 60;
    fs::write(&t.path, &bytes[..cut]).unwrap();
    let s = t.open(&clock());
    assert_eq!(s.get(b"a").unwrap().unwrap(), vec![1u8; 100]);
    assert_eq!(s.get(b"b").unwrap(), None);
    let st = s.stats();
    assert_eq!(st.corrupt_blocks, 1);
    assert_eq!(st.corrupt_bytes, (cut - (bytes.len() - 152)) as u64);
    assert_eq!(st.file_len, 64 + 152, "the torn tail was cut off");
    s.check_invariants().unwrap();
}

#[test]
fn a_flipped_value_byte_loses_only_that_entry() {
    let t = TempStore::new();
    let s = t.open(&clock());
    for i in 0..3u8 {
        s.put([i], vec![i; 100]).unwrap();
    }
    drop(s);
    let mut bytes = fs::read(&t.path).unwrap();
    bytes[64 + 152 + 100] ^= 0x20; // inside the second entry's value
    fs::write(&t.path, &bytes).unwrap();
    // Read-only: skipped and counted, nothing written.
    let r = Options::new().read_only(true).open(&t.path).unwrap();
    assert_eq!(r.stats().corrupt_blocks, 1);
    assert_eq!(r.get([1u8]).unwrap(), None);
    drop(r);
    assert_eq!(fs::read(&t.path).unwrap(), bytes);
    // Read-write: the damaged block's space is reclaimed.
    let s = t.open(&clock());
    assert_eq!(s.get([0u8]).unwrap().unwrap(), vec![0u8; 100]);
    assert_eq!(s.get([1u8]).unwrap(), None);
    assert_eq!(s.get([2u8]).unwrap().unwrap(), vec![2u8; 100]);
    assert_eq!(s.stats().corrupt_blocks, 1);
    assert_eq!(s.stats().free_blocks, 1);
    s.check_invariants().unwrap();
    drop(s);
    assert_eq!(t.open(&clock()).stats().corrupt_blocks, 0, "repaired");
}

#[test]
fn damage_after_open_is_reported_not_served() {
    let t = TempStore::new();
    let s = t.open(&clock());
    s.put(b"k", vec![5u8; 1000]).unwrap();
    s.sync().unwrap();
    // Someone scribbles on the value while the store is open.
    let f = fs::OpenOptions::new().write(true).open(&t.path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"XX", 64 + 48 + 1 + 500).unwrap();
    let e = s.get(b"k").unwrap_err();
    assert!(matches!(e, Error::Corrupt { offset: 64, .. }), "{e}");
    assert!(s.get_ref(b"k").is_err());
}

#[test]
fn the_newest_copy_of_a_key_wins_after_a_crash() {
    // Build a file where a key appears twice (a crash between writing the new
    // copy and freeing the old): the higher sequence number must win.
    let t = TempStore::new();
    let s = t.open(&clock());
    s.put(b"k", vec![1u8; 100]).unwrap();
    s.put(b"other", b"x").unwrap();
    drop(s);
    let old = fs::read(&t.path).unwrap();
    let s = t.open(&clock());
    s.put(b"k", vec![2u8; 100]).unwrap();
    drop(s);
    let new = fs::read(&t.path).unwrap();
    // Splice: the old copy in place (as before it was freed) plus the new copy appended.
    let mut spliced = old.clone();
    spliced.extend_from_slice(&new[old.len()..]);
    assert!(spliced.len() > old.len(), "the new copy was appended");
    fs::write(&t.path, &spliced).unwrap();
    let s = t.open(&clock());
    assert_eq!(s.get(b"k").unwrap().unwrap(), vec![2u8; 100]);
    assert_eq!(s.len(), 2);
    s.check_invariants().unwrap();
}

#[test]
fn a_file_whose_creation_a_crash_cut_short_opens_as_an_empty_store() {
    // Creating a store extends the file to 64 zero bytes, then writes the
    // header: a crash in between, or during that write, leaves these.
    let header = {
        let t = TempStore::new();
        drop(Store::open(&t.path).unwrap());
        fs::read(&t.path).unwrap()
    };
    for keep in [0usize, 3, 8, 20, 40, 60, 62] {
        let t = TempStore::new();
        let mut bytes = header[..keep].to_vec();
        bytes.resize(64, 0);
        fs::write(&t.path, &bytes).unwrap();
        // Read-only: an empty store, and the file is not touched.
        let ro = Options::new().read_only(true).open(&t.path).unwrap();
        assert!(ro.is_empty(), "{keep}");
        drop(ro);
        assert_eq!(fs::read(&t.path).unwrap(), bytes);
        // Read-write: the header is written afresh.
        let s = Store::open(&t.path).unwrap();
        assert!(s.is_empty());
        s.put(b"k", b"v").unwrap();
        drop(s);
        let s = Store::open(&t.path).unwrap();
        assert_eq!(s.get(b"k").unwrap().as_deref(), Some(&b"v"[..]), "{keep}");
    }
    // A damaged header of a store with entries is still refused.
    let t = TempStore::new();
    let s = Store::open(&t.path).unwrap();
    s.put(b"k", b"v").unwrap();
    drop(s);
    let mut bytes = fs::read(&t.path).unwrap();
    bytes[60..64].fill(0);
    fs::write(&t.path, &bytes).unwrap();
    assert!(matches!(
        Store::open(&t.path).unwrap_err(),
        Error::Corrupt { .. }
    ));
    assert_eq!(fs::read(&t.path).unwrap(), bytes);
}

#[test]
fn creating_a_store_syncs_its_directory_and_reopening_does_not() {
    // Without it, a power loss could take a new store file, and the
    // acknowledged writes in it, away with its directory entry. (The count
    // is per thread: other tests open stores meanwhile.)
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub").join("new.sfs");
    let before = sfs::testing::dir_syncs();
    let s = sfs::Store::open(&path).unwrap();
    assert_eq!(
        sfs::testing::dir_syncs(),
        before + 1,
        "the new file's directory was synced"
    );
    s.put(b"k", b"v").unwrap();
    s.close().unwrap();
    drop(sfs::Store::open(&path).unwrap());
    assert_eq!(
        sfs::testing::dir_syncs(),
        before + 1,
        "a reopen creates nothing"
    );
}
