//! The report layer under sfs-dump (`sfs::inspect::report`) on crafted files:
//! one test per kind of problem, plus the figures, the map and key lookup.

mod common;

use common::{FileBuilder, SALT};
use sfs::inspect::FileSource;
use sfs::inspect::report::{
    CellState, Findings, HeaderStatus, Problem, ProblemKind, Report, Row, RowKind, ScanOptions,
    State, find_key,
};
use sfs::inspect::{BlockHeaderError, FILE_HEADER_LEN, HeaderError};

const NOW: i64 = 1_000_000;

fn scan(bytes: &[u8]) -> Report {
    Report::scan(bytes, ScanOptions::at(NOW).with_map(64))
        .expect("read")
        .expect("a store file")
}

fn rows(bytes: &[u8], report: &Report) -> Vec<Row> {
    let mut rows = report.rows(bytes, true);
    let mut out = Vec::new();
    while let Some(r) = rows.next_row().expect("read") {
        out.push(r);
    }
    out
}

/// Scans, walks and checks, asserting what holds for every file: rows tile
/// the file after its header, and agree with the summary.
fn inspect(bytes: &[u8]) -> (Report, Vec<Row>, Findings) {
    let report = scan(bytes);
    let rows = rows(bytes, &report);
    let findings = report.check(bytes).expect("read");
    let s = &report.summary;
    if report.header.fields().is_some() {
        let mut at = FILE_HEADER_LEN;
        for r in &rows {
            assert_eq!(r.offset, at, "rows tile the file");
            at += r.len;
        }
        assert_eq!(at, bytes.len() as u64);
        let count = |st: State| rows.iter().filter(|r| r.state == st).count() as u64;
        let bytes_in = |st: State| {
            rows.iter()
                .filter(|r| r.state == st)
                .map(|r| r.len)
                .sum::<u64>()
        };
        assert_eq!(
            (count(State::Live), bytes_in(State::Live)),
            (s.live_entries, s.live_bytes)
        );
        assert_eq!(
            (count(State::Expired), bytes_in(State::Expired)),
            (s.expired_entries, s.expired_bytes)
        );
        assert_eq!(
            (count(State::Free), bytes_in(State::Free)),
            (s.free_blocks, s.free_bytes)
        );
        assert_eq!(
            (count(State::Corrupt), bytes_in(State::Corrupt)),
            (s.corrupt_blocks, s.corrupt_bytes)
        );
        assert_eq!(
            FILE_HEADER_LEN + s.live_bytes + s.expired_bytes + s.free_bytes + s.corrupt_bytes,
            s.file_len
        );
    }
    (report, rows, findings)
}

fn only_problem(f: &Findings) -> &Problem {
    assert_eq!(f.problems.len(), 1, "{:#?}", f.problems);
    &f.problems[0]
}

#[test]
fn a_sound_file_has_no_problems_and_its_figures_add_up() {
    let mut f = FileBuilder::new();
    let a = f.entry(b"a", b"one", 1);
    f.free(96);
    f.entry_with(b"b", b"meta", &[9; 300], 2, 0, 16);
    f.entry_with(b"gone", b"", b"x", 3, (NOW - 1) as u64, 0);
    f.entry_with(b"later", b"", b"x", 4, (NOW + 1) as u64, 0);
    f.free(48);
    let (report, rows, findings) = inspect(&f.bytes);
    let s = &report.summary;
    assert!(report.header.is_valid());
    assert_eq!((s.live_entries, s.expired_entries), (3, 1));
    assert_eq!(
        (s.free_blocks, s.free_bytes, s.largest_free_block),
        (2, 144, 96)
    );
    assert_eq!((s.corrupt_blocks, s.max_seq, s.format_version), (0, 4, 1));
    assert!((s.fragmentation() - (1.0 - 96.0 / 144.0)).abs() < 1e-9);
    assert_eq!(rows[0].offset, a);
    assert_eq!(rows[0].key(), Some(&b"a"[..]));
    assert_eq!(rows[3].state, State::Expired);
    assert_eq!(rows[4].state, State::Live, "expiry after now is live");
    assert!(findings.problems.is_empty() && findings.notes.is_empty());
    assert!(!findings.is_damaged());
}

#[test]
fn foreign_files_and_other_versions_are_refused() {
    for bytes in [
        &b""[..],
        b"x",
        b"hello, world: a text file that is long enough to hold a header!!",
    ] {
        assert_eq!(
            Report::scan(bytes, ScanOptions::at(0)).unwrap().err(),
            Some(HeaderError::NotAStore)
        );
    }
    let mut f = FileBuilder::new();
    f.entry(b"k", b"v", 1);
    f.bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
    f.reseal_file_header();
    assert_eq!(
        Report::scan(&f.bytes[..], ScanOptions::at(0))
            .unwrap()
            .err(),
        Some(HeaderError::UnsupportedVersion(3))
    );
    assert_eq!(
        find_key(&f.bytes[..], b"k", 0).unwrap().err(),
        Some(HeaderError::UnsupportedVersion(3))
    );
}

#[test]
fn a_damaged_file_header_is_a_header_problem_and_the_blocks_are_salvaged() {
    let mut f = FileBuilder::new();
    f.entry(b"k", b"v", 1);
    f.entry(b"k2", b"v2", 2);
    f.bytes[30] ^= 0xff; // the created field: the header checksum fails, the salt survives
    let (report, _rows, findings) = inspect(&f.bytes);
    let HeaderStatus::Damaged { reason, fields } = &report.header else {
        panic!("damaged header expected, got {:?}", report.header);
    };
    assert!(reason.contains("checksum"), "{reason}");
    assert_eq!(fields.unwrap().salt, SALT);
    assert_eq!(report.summary.live_entries, 2, "the entries still verify");
    let p = only_problem(&findings);
    assert_eq!((p.kind, p.offset), (ProblemKind::Header, 0));
    assert!(p.reason.contains("2 entries still verify"), "{}", p.reason);
    assert!(findings.is_damaged());
    // The salt itself damaged: nothing verifies, and the report says so.
    f.bytes[17] ^= 1;
    let (report, _, findings) = inspect(&f.bytes);
    assert_eq!(report.summary.live_entries, 0);
    assert_eq!(report.summary.corrupt_blocks, 1);
    assert!(findings.problems[0].reason.contains("no entry verifies"));
}

#[test]
fn a_file_header_cut_short_is_a_header_problem() {
    let f = FileBuilder::new();
    let cut = &f.bytes[..40];
    let (report, rows, findings) = inspect(cut);
    assert!(matches!(
        report.header,
        HeaderStatus::Damaged { fields: None, .. }
    ));
    assert!(rows.is_empty());
    assert_eq!(report.summary.file_len, 40);
    let p = only_problem(&findings);
    assert_eq!(p.kind, ProblemKind::Header);
    assert!(p.reason.contains("cut short"), "{}", p.reason);
    let map = report.map.as_ref().unwrap();
    assert!(map.cells().all(|c| c == CellState::Corrupt));
}

#[test]
fn a_payload_checksum_mismatch_is_a_checksum_problem_at_the_entry() {
    let mut f = FileBuilder::new();
    f.entry(b"a", b"1", 1);
    let b = f.entry(b"user:2", b"value-b", 2);
    f.entry(b"c", b"3", 3);
    f.bytes[b as usize + 48 + 6 + 2] ^= 1; // a value byte
    let (report, rows, findings) = inspect(&f.bytes);
    assert_eq!(report.summary.corrupt_blocks, 1);
    assert_eq!(rows[1].state, State::Corrupt);
    assert!(matches!(rows[1].kind, RowKind::CorruptEntry { .. }));
    assert_eq!(rows[1].key(), Some(&b"user:2"[..]));
    let p = only_problem(&findings);
    assert_eq!((p.kind, p.offset, p.len), (ProblemKind::Checksum, b, 64));
    assert!(
        p.reason.contains("payload checksum mismatch"),
        "{}",
        p.reason
    );
    assert!(
        p.reason.contains("\"user:2\""),
        "names the key: {}",
        p.reason
    );
}

#[test]
fn a_block_header_checksum_mismatch_is_a_checksum_problem_to_the_next_entry() {
    let mut f = FileBuilder::new();
    f.entry(b"a", &[1; 100], 1);
    let b = f.entry(b"b", &[2; 100], 2);
    let c = f.entry(b"c", &[3; 100], 3);
    f.bytes[b as usize + 30] ^= 4; // the sequence number: only the header checksum notices
    let (_, rows, findings) = inspect(&f.bytes);
    assert_eq!(
        rows[1].kind,
        RowKind::Damaged(BlockHeaderError::BadChecksum)
    );
    assert_eq!((rows[1].offset, rows[1].len), (b, c - b));
    let p = only_problem(&findings);
    assert_eq!((p.kind, p.offset, p.len), (ProblemKind::Checksum, b, c - b));
    assert!(
        p.reason.contains(&format!("up to offset {c}")),
        "{}",
        p.reason
    );
    assert_eq!(rows[2].key(), Some(&b"c"[..]), "the walk resynchronises");
}

#[test]
fn bytes_where_no_block_starts_break_the_tiling() {
    let mut f = FileBuilder::new();
    let a = f.entry(b"a", b"1", 1);
    f.raw(&[0x55; 40]); // junk between blocks
    let c = f.entry(b"c", b"3", 3);
    let (_, rows, findings) = inspect(&f.bytes);
    assert_eq!(rows[1].kind, RowKind::Damaged(BlockHeaderError::BadMagic));
    let p = only_problem(&findings);
    assert_eq!(
        (p.kind, p.offset, p.len),
        (ProblemKind::Tiling, a + 56, c - a - 56)
    );
    assert!(p.reason.contains("no block starts here"), "{}", p.reason);
}

#[test]
fn a_header_cut_by_the_end_of_the_file_breaks_the_tiling() {
    let mut f = FileBuilder::new();
    f.entry(b"a", b"1", 1);
    let b = f.entry(b"b", b"2", 2);
    f.bytes.truncate(b as usize + 20);
    let (_, rows, findings) = inspect(&f.bytes);
    assert_eq!(rows[1].kind, RowKind::Damaged(BlockHeaderError::Truncated));
    let p = only_problem(&findings);
    assert_eq!((p.kind, p.offset, p.len), (ProblemKind::Tiling, b, 20));
    assert!(p.reason.contains("only 20 bytes remain"), "{}", p.reason);
    assert!(
        p.reason.contains("up to the end of the file"),
        "{}",
        p.reason
    );
}

#[test]
fn an_impossible_block_length_is_a_size_problem() {
    let mut f = FileBuilder::new();
    let a = f.entry(b"a", &[1; 60], 1);
    f.entry(b"b", b"2", 2);
    let mut h = f.header_at(a);
    h.block_len = 44; // below a header, yet with a valid checksum
    f.put_header(a, &h);
    let (_, rows, findings) = inspect(&f.bytes);
    assert_eq!(rows[0].kind, RowKind::Damaged(BlockHeaderError::BadLength));
    let p = only_problem(&findings);
    assert_eq!((p.kind, p.offset), (ProblemKind::Size, a));
    assert!(
        p.reason.contains("block length 44 is impossible"),
        "{}",
        p.reason
    );
}

#[test]
fn a_length_past_the_end_is_a_size_problem_not_an_allocation() {
    let mut f = FileBuilder::new();
    let a = f.entry(b"a", b"1", 1);
    let mut h = f.header_at(a);
    h.value_len = u32::MAX;
    h.block_len = 1 << 42; // 4 TiB in a file of a few hundred bytes
    f.put_header(a, &h);
    let (report, rows, findings) = inspect(&f.bytes);
    assert_eq!(rows[0].kind, RowKind::Damaged(BlockHeaderError::PastEnd));
    let p = only_problem(&findings);
    assert_eq!(p.kind, ProblemKind::Size);
    assert!(
        p.reason
            .contains(&format!("block length {} runs past the end", 1u64 << 42))
    );
    assert_eq!(report.summary.largest_block, f.len() - FILE_HEADER_LEN);
    let found = find_key(&f.bytes[..], b"a", NOW).unwrap().unwrap();
    assert!(found.newest.is_none());
}

#[test]
fn fields_that_overflow_their_block_are_a_size_problem() {
    let mut f = FileBuilder::new();
    let a = f.entry(b"a", &[1; 100], 1);
    f.entry(b"b", b"2", 2);
    let mut h = f.header_at(a);
    h.meta_len = 500;
    f.put_header(a, &h);
    let (_, rows, findings) = inspect(&f.bytes);
    assert_eq!(
        rows[0].kind,
        RowKind::Damaged(BlockHeaderError::FieldsOverflow)
    );
    let p = only_problem(&findings);
    assert_eq!(p.kind, ProblemKind::Size);
    assert!(p.reason.contains("metadata (500)"), "{}", p.reason);
}

#[test]
fn an_unknown_block_kind_is_reported() {
    let mut f = FileBuilder::new();
    let a = f.entry(b"a", b"1", 1);
    f.entry(b"b", b"2", 2);
    f.bytes[a as usize + 4] = b'Z';
    f.reseal_header(a);
    let (_, rows, findings) = inspect(&f.bytes);
    assert_eq!(rows[0].kind, RowKind::Damaged(BlockHeaderError::BadKind));
    let p = only_problem(&findings);
    assert_eq!(p.kind, ProblemKind::UnknownKind);
    assert!(p.reason.contains("0x5a"), "{}", p.reason);
}

#[test]
fn an_entry_header_inside_a_free_block_is_an_overlap() {
    let mut f = FileBuilder::new();
    let free = f.free(400);
    f.entry(b"after", b"1", 9);
    // A stale entry, header and payload, left inside the free block.
    let mut stale = FileBuilder::new();
    let s = stale.entry(b"ghost", b"boo", 5);
    let ghost = stale.bytes[s as usize..].to_vec();
    let at = free as usize + 120;
    f.bytes[at..at + ghost.len()].copy_from_slice(&ghost);
    let (report, rows, findings) = inspect(&f.bytes);
    assert_eq!(
        rows[0].state,
        State::Free,
        "the walk still sees one free block"
    );
    assert_eq!(report.summary.live_entries, 1);
    let p = only_problem(&findings);
    assert_eq!((p.kind, p.offset), (ProblemKind::Overlap, at as u64));
    assert!(p.reason.contains("\"ghost\""), "{}", p.reason);
    assert!(
        p.reason.contains(&format!("free block at offset {free}")),
        "{}",
        p.reason
    );
    // Without `check`, rows do not look inside blocks.
    let mut quick = report.rows(&f.bytes[..], false);
    assert!(quick.next_row().unwrap().unwrap().problems.is_empty());
}

#[test]
fn an_entry_header_inside_a_corrupt_entry_is_an_overlap() {
    // A torn overwrite: a new entry's header landed over an old entry, whose
    // header (not overwritten) still sits inside the new one's extent.
    let mut f = FileBuilder::new();
    let big = f.entry(b"new", &[1; 200], 7);
    let old_at = big + 96;
    let mut old = FileBuilder::new();
    let o = old.entry(b"old", b"x", 3);
    let bytes = old.bytes[o as usize..].to_vec();
    f.bytes[old_at as usize..old_at as usize + bytes.len()].copy_from_slice(&bytes);
    let (_, rows, findings) = inspect(&f.bytes);
    assert_eq!(rows[0].state, State::Corrupt);
    let kinds: Vec<_> = findings
        .problems
        .iter()
        .map(|p| (p.kind, p.offset))
        .collect();
    assert_eq!(
        kinds,
        [(ProblemKind::Checksum, big), (ProblemKind::Overlap, old_at)]
    );
    assert!(findings.problems[1].reason.contains("corrupt entry"));
}

#[test]
fn two_copies_of_a_key_with_the_same_sequence_number_are_damage() {
    let mut f = FileBuilder::new();
    let a = f.entry(b"k", b"first", 4);
    let b = f.entry(b"k", b"second", 4);
    let (report, rows, findings) = inspect(&f.bytes);
    assert_eq!(rows[0].state, State::Live, "the lower offset wins a tie");
    assert_eq!(rows[1].state, State::Free);
    assert_eq!(report.summary.live_entries, 1);
    let p = only_problem(&findings);
    assert_eq!((p.kind, p.offset), (ProblemKind::DuplicateKey, b));
    assert!(p.reason.contains(&format!("at offset {a}")), "{}", p.reason);
    assert!(findings.notes.is_empty());
}

#[test]
fn older_copies_are_superseded_notes_not_damage() {
    // The older copy before the newer one, and after it.
    for older_first in [true, false] {
        let mut f = FileBuilder::new();
        let (old, new) = if older_first {
            let o = f.entry(b"k", b"old", 3);
            (o, f.entry(b"k", b"new", 8))
        } else {
            let n = f.entry(b"k", b"new", 8);
            (f.entry(b"k", b"old", 3), n)
        };
        f.entry(b"other", b"o", 5);
        let (report, rows, findings) = inspect(&f.bytes);
        let s = &report.summary;
        assert_eq!(
            (s.live_entries, s.superseded_blocks, s.free_blocks),
            (2, 1, 1)
        );
        assert_eq!(s.superseded_bytes, 56);
        let old_row = rows.iter().find(|r| r.offset == old).unwrap();
        assert_eq!(old_row.state, State::Free);
        assert!(matches!(
            old_row.kind,
            RowKind::Superseded { newest_offset, newest_seq: 8, .. } if newest_offset == new
        ));
        assert!(!findings.is_damaged(), "{:?}", findings.problems);
        assert_eq!(findings.notes.len(), 1);
        let n = &findings.notes[0];
        assert_eq!((n.kind, n.offset), (ProblemKind::Superseded, old));
        assert!(!n.kind.is_damage());
        assert!(n.reason.contains("seq 8"), "{}", n.reason);
        let found = find_key(&f.bytes[..], b"k", NOW).unwrap().unwrap();
        assert_eq!(found.newest.unwrap().offset, new);
    }
}

#[test]
fn an_expired_newest_copy_hides_older_ones() {
    let mut f = FileBuilder::new();
    let old = f.entry(b"k", b"old, no expiry", 3);
    let new = f.entry_with(b"k", b"", b"new", 8, (NOW - 10) as u64, 0);
    let (report, rows, findings) = inspect(&f.bytes);
    assert_eq!((rows[0].offset, rows[0].state), (old, State::Free));
    assert_eq!((rows[1].offset, rows[1].state), (new, State::Expired));
    assert_eq!(
        report.summary.live_entries, 0,
        "the old value does not come back"
    );
    assert!(findings.notes[0].reason.contains("expired"));
    let found = find_key(&f.bytes[..], b"k", NOW).unwrap().unwrap();
    assert_eq!(found.newest.unwrap().state, State::Expired);
}

#[test]
fn zeros_where_a_block_should_start_are_unwritten_notes() {
    let mut f = FileBuilder::new();
    f.entry(b"a", b"1", 1);
    let z = f.zeros(4096);
    f.entry(b"b", b"2", 2);
    let (report, rows, findings) = inspect(&f.bytes);
    assert_eq!(
        (rows[1].state, &rows[1].kind),
        (State::Free, &RowKind::Unwritten)
    );
    assert_eq!(
        (
            report.summary.unwritten_blocks,
            report.summary.unwritten_bytes
        ),
        (1, 4096)
    );
    assert!(!findings.is_damaged());
    assert_eq!(findings.notes.len(), 1);
    assert_eq!(
        (findings.notes[0].kind, findings.notes[0].offset),
        (ProblemKind::Unwritten, z)
    );
}

#[test]
fn expiry_is_judged_at_the_given_now_never_the_clock() {
    let mut f = FileBuilder::new();
    f.entry_with(b"k", b"", b"v", 1, 5_000, 0);
    let at = |now| {
        Report::scan(&f.bytes[..], ScanOptions::at(now))
            .unwrap()
            .unwrap()
            .summary
    };
    assert_eq!((at(4_999).live_entries, at(4_999).expired_entries), (1, 0));
    assert_eq!((at(5_000).live_entries, at(5_000).expired_entries), (0, 1));
}

#[test]
fn the_map_shows_every_state_and_never_hides_damage() {
    let mut f = FileBuilder::new();
    f.entry(b"live", &[1; 2000], 1);
    f.entry_with(b"old", b"", &[2; 2000], 2, 10, 0);
    f.free(2000);
    let c = f.entry(b"bad", &[3; 2000], 3);
    f.bytes[c as usize + 1000] ^= 1;
    f.entry(b"live2", &[4; 6000], 4);
    let last = f.bytes.len() - 10;
    f.bytes[last] ^= 1; // one bad byte in a large block
    let report = Report::scan(&f.bytes[..], ScanOptions::at(NOW).with_map(20))
        .unwrap()
        .unwrap();
    let map = report.map.as_ref().unwrap();
    assert!(map.len() <= 20 && map.len() >= 19);
    assert_eq!(map.cell_bytes() % 8, 0);
    assert!(map.cell_bytes() * map.len() as u64 >= f.len());
    let cells: String = map.cells().map(CellState::letter).collect();
    for letter in ['L', 'E', 'F', 'C'] {
        assert!(cells.contains(letter), "{letter} in {cells}");
    }
    assert!(
        cells.ends_with('C'),
        "the last cell holds one corrupt byte's block: {cells}"
    );
    // A small file: one cell per 8 bytes, the header shows.
    let mut small = FileBuilder::new();
    small.entry(b"k", b"v", 1);
    let report = Report::scan(&small.bytes[..], ScanOptions::at(NOW).with_map(1000))
        .unwrap()
        .unwrap();
    let cells: String = report.map.unwrap().cells().map(CellState::letter).collect();
    assert_eq!(cells, "HHHHHHHHLLLLLLL");
}

#[test]
fn find_key_finds_the_newest_copy_and_streams_its_value() {
    let mut f = FileBuilder::new();
    f.entry(b"k", b"old", 1);
    let value: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let at = f.entry_with(b"k", b"m=1", &value, 2, 0, 0);
    f.entry(b"j", b"other", 3);
    let found = find_key(&f.bytes[..], b"k", NOW).unwrap().unwrap();
    let e = found.newest.as_ref().unwrap();
    assert_eq!(
        (e.offset, e.state, &e.metadata[..]),
        (at, State::Live, &b"m=1"[..])
    );
    let mut got = Vec::new();
    let mut pieces = 0;
    let intact = found
        .read_value(&f.bytes[..], |p| {
            assert!(p.len() <= 1 << 16);
            pieces += 1;
            got.extend_from_slice(p);
            Ok(())
        })
        .unwrap();
    assert!(intact);
    assert_eq!(got, value);
    assert!(pieces > 1, "streamed in pieces");
    // The bytes changed after the lookup: the checksum says so.
    let mut changed = f.bytes.clone();
    changed[at as usize + 48 + 1 + 3 + 5] ^= 1;
    assert!(!found.read_value(&changed[..], |_| Ok(())).unwrap());
    // Absent key.
    let none = find_key(&f.bytes[..], b"nope", NOW).unwrap().unwrap();
    assert!(none.newest.is_none() && none.newer_corrupt.is_none());
}

#[test]
fn find_key_reports_a_newer_corrupt_copy() {
    let mut f = FileBuilder::new();
    let old = f.entry(b"k", b"old", 1);
    let new = f.entry(b"k", b"new", 2);
    f.bytes[new as usize + 49] ^= 1; // the new value
    let found = find_key(&f.bytes[..], b"k", NOW).unwrap().unwrap();
    assert_eq!(found.newest.as_ref().unwrap().offset, old);
    assert_eq!(found.newer_corrupt, Some((new, 2)));
    // The only copy corrupt.
    let mut g = FileBuilder::new();
    let only = g.entry(b"k", b"v", 1);
    g.bytes[only as usize + 49] ^= 1;
    let found = find_key(&g.bytes[..], b"k", NOW).unwrap().unwrap();
    assert!(found.newest.is_none());
    assert_eq!(found.newer_corrupt, Some((only, 1)));
}

#[test]
fn findings_keep_a_bounded_list_and_count_the_rest() {
    let mut f = Findings::default();
    let p = |kind, offset| Problem {
        offset,
        len: 8,
        kind,
        reason: String::new(),
    };
    for i in 0..Findings::LIMIT as u64 + 5 {
        f.extend([p(ProblemKind::Checksum, i)]);
    }
    f.extend([p(ProblemKind::Superseded, 0)]);
    assert_eq!(f.problems.len(), Findings::LIMIT);
    assert_eq!(f.problems_total, Findings::LIMIT as u64 + 5);
    assert_eq!((f.notes.len(), f.notes_total), (1, 1));
}

#[test]
fn a_file_source_reads_as_the_bytes_do() {
    let clock = common::clock();
    let bytes = common::real_store_bytes(&clock);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("copy.sfs");
    std::fs::write(&path, &bytes).unwrap();
    let mut src = FileSource::new(std::fs::File::open(&path).unwrap()).unwrap();
    let opts = ScanOptions::at(common::REAL_NOW).with_map(100);
    let from_file = Report::scan(&mut src, opts).unwrap().unwrap();
    let from_bytes = Report::scan(&bytes[..], opts).unwrap().unwrap();
    assert_eq!(from_file.summary, from_bytes.summary);
    assert_eq!(from_file.map, from_bytes.map);
    let (mut a, mut b) = (
        from_file.rows(&mut src, true),
        from_bytes.rows(&bytes[..], true),
    );
    let mut n = 0;
    loop {
        let (x, y) = (a.next_row().unwrap(), b.next_row().unwrap());
        assert_eq!(x, y);
        if x.is_none() {
            break;
        }
        n += 1;
    }
    assert!(n > 50);
}
