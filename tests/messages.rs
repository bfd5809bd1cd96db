//! The messages a user reads: each error a user can cause says what is wrong
//! and what to do, and what it says is true (issue 16, item 5).
//!
//! - `Locked` says who holds the file (another handle of this process for
//!   writing, read-only handles of this process, another process) and points
//!   to sharing one `Arc<Store>`;
//! - `Corrupt` from a read names the key, says that a reopen shows the key as
//!   absent (checked here), that deleting it drops it now (checked here), and
//!   points to `sfs-dump --check`;
//! - an empty path is `InvalidOptions` saying so;
//! - closing a store releases its lock at once, even while another thread
//!   forks child processes.

mod common;

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::TempStore;
use sfs::{Error, LockHolder, Options, Store, SyncPolicy};

fn holder(e: &Error) -> (LockHolder, bool) {
    match e {
        Error::Locked {
            holder, read_only, ..
        } => (*holder, *read_only),
        e => panic!("not Locked: {e}"),
    }
}

#[test]
fn locked_says_which_handle_of_this_process_holds_the_file() {
    let t = TempStore::new();
    let w = Store::open(&t.path).unwrap();
    let e = Store::open(&t.path).unwrap_err();
    assert_eq!(holder(&e), (LockHolder::WriterInThisProcess, false));
    let text = e.to_string();
    assert!(
        text.contains("store.sfs: locked: another handle in this process"),
        "{text}"
    );
    assert!(text.contains("Arc<Store>"), "{text}");
    let e = Options::new().read_only(true).open(&t.path).unwrap_err();
    assert_eq!(holder(&e), (LockHolder::WriterInThisProcess, true));
    assert!(
        e.to_string()
            .contains("a read-only open waits for the writer"),
        "{e}"
    );
    w.close().unwrap();

    let r = Options::new().read_only(true).open(&t.path).unwrap();
    let e = Store::open(&t.path).unwrap_err();
    assert_eq!(holder(&e), (LockHolder::ReadersInThisProcess, false));
    assert!(
        e.to_string().contains("read-only handles in this process"),
        "{e}"
    );
    drop(r);
    Store::open(&t.path).unwrap().close().unwrap();
}

#[test]
fn locked_through_another_path_to_the_same_file_is_still_this_process() {
    let t = TempStore::new();
    let _w = Store::open(&t.path).unwrap();
    let link = t.dir.path().join("link.sfs");
    std::os::unix::fs::symlink(&t.path, &link).unwrap();
    let e = Store::open(&link).unwrap_err();
    assert_eq!(holder(&e), (LockHolder::WriterInThisProcess, false));
    assert!(
        e.to_string().starts_with(&format!("{}: ", link.display())),
        "{e}"
    );
}

#[test]
fn a_damaged_value_names_its_key_and_reads_as_absent_after_a_reopen() {
    let t = TempStore::new();
    let opts = Options::new().sync(SyncPolicy::Never);
    let s = opts.open(&t.path).unwrap();
    s.put(b"cache:2", [7u8; 400]).unwrap();
    s.put(b"other", b"fine").unwrap();
    s.sync().unwrap();
    // The first entry starts after the 64-byte file header; its 48-byte
    // header and 7-byte key come before the value.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&t.path)
        .unwrap();
    f.write_all_at(&[0xFF], 64 + 48 + 7 + 100).unwrap();
    let e = s.get(b"cache:2").unwrap_err();
    assert!(matches!(e, Error::Corrupt { offset: 64, .. }), "{e}");
    let text = e.to_string();
    for part in [
        "corrupt at offset 64: entry checksum mismatch (entry of key \"cache:2\")",
        "never served",
        "the key then reads as absent",
        "deleting or overwriting the key drops it now",
        &format!("`sfs-dump {} --check`", t.path.display()),
    ] {
        assert!(text.contains(part), "{part:?} not in {text}");
    }
    // get_ref, peek and get_entry say the same.
    for e in [
        s.peek(b"cache:2").unwrap_err(),
        s.get_entry(b"cache:2").unwrap_err(),
        s.get_ref(b"cache:2").unwrap_err(),
    ] {
        assert!(e.to_string().contains("(entry of key \"cache:2\")"), "{e}");
    }
    s.close().unwrap();
    // What the message promises: after a reopen the key is absent, the rest served.
    let s = opts.open(&t.path).unwrap();
    assert_eq!(s.get(b"cache:2").unwrap(), None);
    assert_eq!(s.get(b"other").unwrap().as_deref(), Some(&b"fine"[..]));
    assert_eq!(s.stats().corrupt_blocks, 1);
}

#[test]
fn deleting_a_damaged_entry_drops_it_at_once() {
    let t = TempStore::new();
    let s = Options::new()
        .sync(SyncPolicy::Never)
        .open(&t.path)
        .unwrap();
    s.put(b"k", [1u8; 64]).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&t.path)
        .unwrap();
    f.write_all_at(&[0xEE], 64 + 48 + 1 + 10).unwrap();
    assert!(matches!(s.get(b"k"), Err(Error::Corrupt { .. })));
    assert!(s.delete(b"k").unwrap());
    assert_eq!(s.get(b"k").unwrap(), None);
    s.put(b"k", b"new").unwrap();
    assert_eq!(s.get(b"k").unwrap().as_deref(), Some(&b"new"[..]));
}

#[test]
fn an_empty_path_is_invalid_options_saying_so() {
    for e in [
        Store::open("").unwrap_err(),
        Options::new().read_only(true).open("").unwrap_err(),
        sfs::TypedStore::<String, String>::open("").unwrap_err(),
    ] {
        assert!(matches!(e, Error::InvalidOptions { .. }), "{e}");
        assert!(
            e.to_string()
                .starts_with("invalid options: the path of the store file is empty"),
            "{e}"
        );
    }
}

/// A child process forked by another thread shares the store's descriptor
/// until it execs; were the lock released only by closing the descriptor,
/// an open right after a close would meet the child's copy of the lock.
#[test]
fn close_then_open_is_never_locked_while_another_thread_spawns_processes() {
    let t = TempStore::new();
    let stop = Arc::new(AtomicBool::new(false));
    let spawner = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut spawned = 0u32;
            while !stop.load(Ordering::Relaxed) {
                std::process::Command::new("true").status().unwrap();
                spawned += 1;
            }
            spawned
        })
    };
    let opts = Options::new().sync(SyncPolicy::Never);
    for i in 0..300u32 {
        let s = opts
            .open(&t.path)
            .unwrap_or_else(|e| panic!("open {i} after a close: {e}"));
        s.put(b"n", i.to_le_bytes()).unwrap();
        s.close().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    assert!(
        spawner.join().unwrap() > 0,
        "the other thread spawned processes"
    );
}
