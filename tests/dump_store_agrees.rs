//! sfs-dump and the store read a file the same way: on crafted files of every
//! kind of damage, the store's own open counts the same live entries and the
//! same corrupt blocks as the report. Also a store bug the tool's tests found.

mod common;

use std::sync::Arc;

use common::FileBuilder;
use sfs::inspect::report::{Report, ScanOptions};
use sfs::testing::MemStorage;
use sfs::{ManualClock, Options, Store};

const NOW: i64 = 1_000_000;

fn open(bytes: &[u8], read_only: bool) -> (Store, Arc<MemStorage>) {
    let mem = Arc::new(MemStorage::with_bytes(bytes.to_vec()));
    let store = Options::new()
        .read_only(read_only)
        .clock(Arc::new(ManualClock::new(NOW)))
        .open_on("crafted.sfs", mem.clone())
        .expect("the store opens a file with a valid header");
    (store, mem)
}

fn crafted_files() -> Vec<(&'static str, Vec<u8>)> {
    let mut files = Vec::new();
    let base = || {
        let mut f = FileBuilder::new();
        f.entry(b"a", &[1; 100], 1);
        f.entry_with(b"b", b"meta", &[2; 100], 2, 0, 0);
        f.entry_with(b"gone", b"", b"x", 3, (NOW - 1) as u64, 0);
        f.free(96);
        f.entry(b"c", &[3; 100], 4);
        f
    };
    files.push(("sound", base().bytes));
    let mut f = base();
    f.bytes[64 + 48 + 1 + 10] ^= 1;
    files.push(("payload checksum", f.bytes));
    let mut f = base();
    f.bytes[64 + 20] ^= 1;
    files.push(("header checksum", f.bytes));
    let mut f = base();
    f.bytes[64] = b'X';
    files.push(("no magic", f.bytes));
    let mut f = base();
    let len = f.bytes.len();
    f.bytes.truncate(len - 40);
    files.push(("cut inside the last entry", f.bytes));
    let mut f = base();
    let at = f.entry(b"d", b"1", 5);
    let mut h = f.header_at(at);
    h.block_len = 1 << 40;
    f.put_header(at, &h);
    files.push(("length past the end", f.bytes));
    let mut f = base();
    f.entry(b"a", b"newer", 9);
    files.push(("superseded copy", f.bytes));
    let mut f = base();
    f.entry(b"c", b"same seq", 4);
    files.push(("equal sequence numbers", f.bytes));
    let mut f = base();
    f.zeros(4096);
    f.entry(b"e", b"after zeros", 6);
    files.push(("unwritten zeros", f.bytes));
    files
}

#[test]
fn the_store_counts_what_the_report_counts() {
    for (what, bytes) in crafted_files() {
        let report = Report::scan(&bytes[..], ScanOptions::at(NOW))
            .unwrap()
            .unwrap();
        let (store, _) = open(&bytes, true);
        let s = store.stats();
        assert_eq!(
            store.len() as u64,
            report.summary.live_entries,
            "{what}: live"
        );
        assert_eq!(
            s.corrupt_blocks, report.summary.corrupt_blocks,
            "{what}: corrupt blocks"
        );
        assert_eq!(
            s.corrupt_bytes, report.summary.corrupt_bytes,
            "{what}: corrupt bytes"
        );
        let mut rows = report.rows(&bytes[..], false);
        while let Some(r) = rows.next_row().unwrap() {
            if r.state == sfs::inspect::report::State::Live {
                assert!(store.contains(r.key().unwrap()), "{what}: {:?}", r.key());
            }
        }
    }
}

/// A damaged or unwritten region shorter than a block header (here 16 bytes
/// of junk between two entries; sfs-dump's mutation test makes many) cannot
/// hold a free header: a read-write open keeps it free in memory only, and
/// the entry after it survives.
#[test]
fn a_damaged_region_shorter_than_a_block_header_costs_no_other_entry() {
    let mut f = FileBuilder::new();
    f.entry(b"a", &[1; 100], 1);
    f.raw(&[0x55; 16]);
    f.entry(b"b", &[2; 100], 2);
    let report = Report::scan(&f.bytes[..], ScanOptions::at(NOW))
        .unwrap()
        .unwrap();
    assert_eq!(
        (report.summary.live_entries, report.summary.corrupt_blocks),
        (2, 1)
    );
    let mem = Arc::new(MemStorage::with_bytes(f.bytes.clone()));
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Options::new()
            .clock(Arc::new(ManualClock::new(NOW)))
            .open_on("short.sfs", mem.clone())
            .map(|s| s.get(b"b").unwrap())
    }));
    let after = Report::scan(&mem.bytes()[..], ScanOptions::at(NOW))
        .unwrap()
        .unwrap();
    assert_eq!(
        after.summary.live_entries, 2,
        "the entry after the junk survives the open"
    );
    assert_eq!(opened.expect("no panic").unwrap(), Some(vec![2; 100]));
}
