//! Two processes on one file. The test binary runs itself again as the
//! second process (an environment variable says so), which opens the store
//! read-write or read-only and reports what happened on its stdout:
//! - while one process has the file open for writing, another gets
//!   `Error::Locked`, for writing and for reading;
//! - read-only opens in several processes coexist, and then a writer is
//!   locked out until the last reader closes;
//! - a lock dies with its process: after the writer exits, the file opens.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use sfs::{Error, Options, Store};

const PATH: &str = "SFS_TWO_PROCESSES_PATH";
const MODE: &str = "SFS_TWO_PROCESSES_MODE";

/// The tests of this file run one at a time: a process started by one test
/// inherits, between its fork and its exec, the open files of the other,
/// and with them its file locks.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// In the second process: open as told and report.
fn child(path: &str, mode: &str) {
    let r = Options::new().read_only(mode == "ro").open(path);
    let report = match &r {
        Ok(s) => {
            let v = s.get(b"k").unwrap().unwrap_or_default();
            format!("ok {}", String::from_utf8_lossy(&v))
        }
        Err(e @ Error::Locked { .. }) => format!("locked: {e}"),
        Err(e) => format!("error {e}"),
    };
    if let Ok(s) = r
        && mode == "rw"
    {
        s.put(b"k", b"written by the child").unwrap();
    }
    println!("report: {report}");
}

/// Runs `test` (this file's test of that name) as a second process opening
/// `path` with `mode`; returns its report.
fn second_process(test: &str, path: &Path, mode: &str) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(PATH, path)
        .env(MODE, mode)
        .output()
        .unwrap();
    assert!(out.status.success(), "the second process failed: {out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .find_map(|l| {
            l.split_once("report: ")
                .map(|(_, r)| r.trim_end().to_owned())
        })
        .expect("a report")
}

/// Whether this process is the second one (and did its part).
fn is_child() -> bool {
    match (std::env::var(PATH), std::env::var(MODE)) {
        (Ok(p), Ok(m)) => {
            child(&p, &m);
            true
        }
        _ => false,
    }
}

#[test]
fn a_second_writer_in_another_process_is_locked_out() {
    if is_child() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("two.sfs");
    let s = Store::open(&path).unwrap();
    s.put(b"k", b"parent").unwrap();
    let me = "a_second_writer_in_another_process_is_locked_out";
    let r = second_process(me, &path, "rw");
    assert!(r.starts_with("locked") && r.contains("two.sfs"), "{r}");
    assert!(r.contains("locked by another process"), "{r}");
    let r = second_process(me, &path, "ro");
    assert!(
        r.starts_with("locked"),
        "readers wait for the writer too: {r}"
    );
    assert!(
        r.contains("another process, which has the file open for writing"),
        "{r}"
    );
    assert_eq!(s.get(b"k").unwrap().as_deref(), Some(&b"parent"[..]));
    drop(s);
    // Closed: the other process may write now, and its lock ends with it.
    assert_eq!(second_process(me, &path, "rw"), "ok parent");
    let s = Store::open(&path).unwrap();
    assert_eq!(
        s.get(b"k").unwrap().as_deref(),
        Some(&b"written by the child"[..])
    );
}

#[test]
fn read_only_opens_coexist_across_processes() {
    if is_child() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ro.sfs");
    let s = Store::open(&path).unwrap();
    s.put(b"k", b"shared").unwrap();
    s.close().unwrap();
    let me = "read_only_opens_coexist_across_processes";
    let a = Options::new().read_only(true).open(&path).unwrap();
    let b = Options::new().read_only(true).open(&path).unwrap();
    assert_eq!(second_process(me, &path, "ro"), "ok shared");
    let r = second_process(me, &path, "rw");
    assert!(
        r.starts_with("locked"),
        "a writer waits for the readers: {r}"
    );
    drop(a);
    let r = second_process(me, &path, "rw");
    assert!(r.starts_with("locked"), "one reader is left: {r}");
    assert_eq!(b.get(b"k").unwrap().as_deref(), Some(&b"shared"[..]));
    drop(b);
    assert_eq!(second_process(me, &path, "rw"), "ok shared");
}
