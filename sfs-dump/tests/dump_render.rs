//! What sfs-dump prints, through `sfs_dump::run` on bytes: text for people,
//! JSON with the field names of `sfs-dump/README.md`, statuses, keys, the map.

mod support;

use serde_json::Value;
use sfs::inspect::report::{Report, ScanOptions};
use sfs_dump::{
    Failure, Progress, ProgressBar, Request, Status, human, iso8601, relative, run, thousands,
};
use support::{FileBuilder, REAL_NOW, dump_bytes, real_store_bytes};

fn req(now: i64) -> Request {
    Request::new("t.sfs", now)
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
}

const STATES: [&str; 4] = ["live", "expired", "free", "corrupt"];

#[test]
fn the_summary_shows_every_figure_human_and_exact() {
    let bytes = real_store_bytes(&support::clock());
    let r = dump_bytes(&bytes, &req(REAL_NOW));
    assert_eq!(r.result.unwrap(), Status::Ok);
    let s = Report::scan(&bytes[..], ScanOptions::at(REAL_NOW))
        .unwrap()
        .unwrap()
        .summary;
    assert!(s.live_entries > 40 && s.expired_entries == 4 && s.free_blocks > 0);
    assert!(
        r.out
            .contains("format        version 1, created 1970-01-01T00:16:40Z (2 s ago)"),
        "{}",
        r.out
    );
    assert!(r.out.contains(&format!(
        "{} ({} bytes)",
        human(s.file_len),
        thousands(s.file_len)
    )));
    for (label, blocks, bytes) in [
        ("live", s.live_entries, s.live_bytes),
        ("expired", s.expired_entries, s.expired_bytes),
        ("free", s.free_blocks, s.free_bytes),
        ("corrupt", 0, 0),
    ] {
        let line = r.out.lines().find(|l| l.starts_with(label)).unwrap();
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[1], thousands(blocks), "{line}");
        assert!(line.contains(&human(bytes)), "{line}");
        assert!(line.contains(&thousands(bytes)), "{line}");
    }
    assert!(r.out.contains("largest free block"));
    assert!(r.out.contains("fragmentation"));
    assert!(!r.out.contains("DAMAGE"));
}

#[test]
fn entries_are_one_aligned_row_per_block() {
    let bytes = real_store_bytes(&support::clock());
    let report = Report::scan(&bytes[..], ScanOptions::at(REAL_NOW))
        .unwrap()
        .unwrap();
    let r = dump_bytes(
        &bytes,
        &Request {
            entries: true,
            ..req(REAL_NOW)
        },
    );
    assert_eq!(r.result.unwrap(), Status::Ok);
    let lines: Vec<&str> = r.out.lines().collect();
    let head = lines[1];
    let state_at = head.find("state").unwrap();
    let expiry_at = head.find("expiry").unwrap();
    let rows = &lines[2..lines.len() - 1];
    assert_eq!(rows.len() as u64, report.summary.blocks());
    for row in rows {
        let state = row[state_at..].split_whitespace().next().unwrap();
        assert!(STATES.contains(&state), "state column aligned: {row}");
        if state != "free" {
            let e = &row[expiry_at..];
            assert!(
                e.starts_with("never") || e.starts_with("19"),
                "expiry column aligned: {row}"
            );
        }
    }
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with(&format!("{} blocks:", report.summary.blocks()))
    );
    assert!(r.out.contains("  user:1\n"), "printable keys as text");
    assert!(
        r.out.contains("  0x00ff62696e\n"),
        "binary keys as hex: {}",
        r.out
    );
}

#[test]
fn expiry_is_an_iso_8601_utc_time_and_a_relative_one() {
    let now = 1_700_000_000_000i64; // 2023-11-14T22:13:20Z
    let mut f = FileBuilder::new();
    f.entry_with(b"soon", b"", b"v", 1, (now + 3 * 60_000) as u64, 0);
    f.entry_with(b"gone", b"", b"v", 2, (now - 2 * 3_600_000) as u64, 0);
    f.entry(b"forever", b"v", 3);
    let r = dump_bytes(
        &f.bytes,
        &Request {
            entries: true,
            ..req(now)
        },
    );
    let line = |k: &str| r.out.lines().find(|l| l.ends_with(k)).unwrap().to_string();
    assert!(
        line("soon").contains("2023-11-14T22:16:20Z (in 3 min)"),
        "{}",
        r.out
    );
    assert!(
        line("gone").contains("2023-11-14T20:13:20Z (expired 2 h ago)"),
        "{}",
        r.out
    );
    assert!(line("gone").contains(" expired "));
    assert!(line("forever").contains(" never "));
    assert!(r.out.contains("(expiry relative to 2023-11-14T22:13:20Z)"));
}

#[test]
fn json_has_the_fields_the_spec_names() {
    let bytes = real_store_bytes(&support::clock());
    let r = dump_bytes(
        &bytes,
        &Request {
            json: true,
            entries: true,
            check: true,
            ..req(REAL_NOW)
        },
    );
    assert_eq!(r.result.unwrap(), Status::Ok);
    let v = json(&r.out);
    for f in [
        "file_len",
        "format_version",
        "live_entries",
        "live_bytes",
        "expired_entries",
        "free_blocks",
        "free_bytes",
        "corrupt_blocks",
        "largest_free_block",
    ] {
        assert!(v[f].is_u64(), "{f}: {}", v[f]);
    }
    assert_eq!(v["file_len"], bytes.len() as u64);
    assert_eq!(v["format_version"], 1);
    let entries = v["entries"].as_array().unwrap();
    let mut total = 64;
    for e in entries {
        for f in [
            "offset",
            "size",
            "state",
            "key_len",
            "value_len",
            "expiry_ms",
            "key",
        ] {
            assert!(e.get(f).is_some(), "{f} missing in {e}");
        }
        assert_eq!(e["offset"], total, "entries in file order, tiling the file");
        total += e["size"].as_u64().unwrap();
        let state = e["state"].as_str().unwrap();
        assert!(STATES.contains(&state));
        if e["kind"] == "entry" {
            assert!(e["key"].is_string() && e["key_len"].is_u64() && e["value_len"].is_u64());
            assert!(e["expiry_ms"].is_null() || e["expiry_ms"].is_u64());
        }
    }
    assert_eq!(total, bytes.len() as u64);
    let live = entries.iter().filter(|e| e["state"] == "live").count() as u64;
    assert_eq!(live, v["live_entries"].as_u64().unwrap());
    let doc = entries.iter().find(|e| e["key"] == "doc").unwrap();
    assert_eq!(
        (doc["key_len"].as_u64(), doc["value_len"].as_u64()),
        (Some(3), Some(7))
    );
    assert!(doc["expiry_ms"].is_null());
    assert!(entries.iter().any(|e| e["key"] == "0x00ff62696e"));
    let session = entries.iter().find(|e| e["key"] == "session:1").unwrap();
    assert_eq!(session["expiry_ms"], 1_000_000 + 3_600_000);
    assert_eq!(v["problems"], Value::Array(vec![]));
    assert_eq!(v["damaged"], false);
}

#[test]
fn one_json_document_holds_every_view_asked_for() {
    let mut f = FileBuilder::new();
    let a = f.entry(b"a", b"1", 1);
    f.entry(b"b", b"2", 2);
    f.bytes[a as usize + 49] ^= 1;
    let r = dump_bytes(
        &f.bytes,
        &Request {
            json: true,
            entries: true,
            check: true,
            map: true,
            ..req(0)
        },
    );
    assert_eq!(r.result.unwrap(), Status::Damaged);
    let v = json(&r.out);
    assert_eq!(v["entries"].as_array().unwrap().len(), 2);
    assert_eq!(v["entries"][0]["state"], "corrupt");
    assert!(
        v["entries"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("checksum")
    );
    let p = &v["problems"][0];
    assert_eq!(
        (p["offset"].as_u64(), p["kind"].as_str()),
        (Some(a), Some("checksum"))
    );
    assert!(
        p["reason"]
            .as_str()
            .unwrap()
            .contains("payload checksum mismatch")
    );
    assert_eq!(v["damaged"], true);
    let cells = v["map"]["cells"].as_str().unwrap();
    assert!(
        cells.starts_with("HHHHHHHHCCCCCCC") && cells.ends_with('L'),
        "{cells}"
    );
    assert_eq!(v["map"]["cell_bytes"], 8);
}

#[test]
fn the_check_lists_one_line_per_problem_with_offset_and_reason() {
    let mut f = FileBuilder::new();
    let a = f.entry(b"a", &[1; 100], 1);
    let b = f.entry(b"b", &[2; 100], 2);
    f.entry(b"c", &[3; 100], 3);
    f.bytes[a as usize + 60] ^= 1; // a value byte
    f.bytes[b as usize] = b'X'; // no magic
    let r = dump_bytes(
        &f.bytes,
        &Request {
            check: true,
            ..req(0)
        },
    );
    assert_eq!(r.result.unwrap(), Status::Damaged);
    let lines: Vec<&str> = r.out.lines().collect();
    assert!(lines[0].starts_with("check of t.sfs:"));
    assert!(
        lines[1].starts_with(&format!(
            "problem at offset {a} ({a:#x}), 152 bytes [checksum]: payload"
        )),
        "{}",
        r.out
    );
    assert!(
        lines[2].starts_with(&format!(
            "problem at offset {b} ({b:#x}), 152 bytes [tiling]: no block starts here"
        )),
        "{}",
        r.out
    );
    assert_eq!(lines.len(), 4, "{}", r.out);
    assert!(lines[3].starts_with("DAMAGE: 2 problems;"), "{}", lines[3]);
    // A note alone is not damage.
    let mut g = FileBuilder::new();
    let old = g.entry(b"k", b"old", 1);
    g.entry(b"k", b"new", 2);
    let r = dump_bytes(
        &g.bytes,
        &Request {
            check: true,
            ..req(0)
        },
    );
    assert_eq!(r.result.unwrap(), Status::Ok);
    assert!(
        r.out.contains(&format!("note at offset {old} ")),
        "{}",
        r.out
    );
    assert!(
        r.out.ends_with("no damage found; 1 note (not damage)\n"),
        "{}",
        r.out
    );
}

#[test]
fn the_map_fits_the_width_and_has_a_legend_and_colour_only_when_asked() {
    let bytes = real_store_bytes(&support::clock());
    for width in [30usize, 80, 200] {
        for color in [false, true] {
            let r = dump_bytes(
                &bytes,
                &Request {
                    map: true,
                    width,
                    color,
                    ..req(REAL_NOW)
                },
            );
            assert_eq!(r.result.unwrap(), Status::Ok);
            let plain = strip_ansi(&r.out);
            let map_lines: Vec<&str> = plain
                .lines()
                .filter(|l| l.contains('█') || l.contains('·'))
                .filter(|l| !l.starts_with("legend"))
                .collect();
            assert!(map_lines.len() >= 2 && map_lines.len() <= 16, "{plain}");
            for l in &map_lines {
                assert!(l.chars().count() <= width.max(21), "width {width}: {l}");
            }
            assert!(
                plain.contains("legend: H file header   █ live   ▒ expired   · free   X corrupt")
            );
            assert!(plain.contains("fragmentation"));
            assert_eq!(r.out.contains('\x1b'), color, "colour only when asked");
        }
    }
    // An absurd width does not size the map.
    let r = dump_bytes(
        &bytes,
        &Request {
            map: true,
            width: usize::MAX,
            ..req(REAL_NOW)
        },
    );
    let longest = r.out.lines().map(|l| l.chars().count()).max().unwrap();
    assert!(longest <= 1000, "{longest}");
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn a_key_prints_its_exact_value_raw_in_hex_or_in_json() {
    let mut f = FileBuilder::new();
    f.entry(b"bin", b"\x00\xff\n", 1);
    let text = "é".repeat(70_000); // 140,000 bytes: a character split between pieces
    f.entry_with(b"text", b"etag=1", text.as_bytes(), 2, 0, 0);
    let key = |k: &[u8], hex, json| Request {
        key: Some(k.to_vec()),
        hex,
        json,
        ..req(0)
    };
    let r = dump_bytes(&f.bytes, &key(b"bin", false, false));
    assert_eq!(
        (r.result.unwrap(), &r.raw[..]),
        (Status::Ok, &b"\x00\xff\n"[..])
    );
    let r = dump_bytes(&f.bytes, &key(b"bin", true, false));
    assert_eq!(r.out, "00ff0a\n");
    let v = json(&dump_bytes(&f.bytes, &key(b"bin", false, true)).out);
    assert_eq!(
        (v["value"].as_str(), v["value_encoding"].as_str()),
        (Some("00ff0a"), Some("hex"))
    );
    assert_eq!(
        (v["found"].as_bool(), v["state"].as_str()),
        (Some(true), Some("live"))
    );
    let v = json(&dump_bytes(&f.bytes, &key(b"text", false, true)).out);
    assert_eq!(v["value_encoding"], "utf8");
    assert_eq!(v["value"].as_str().unwrap(), text);
    assert_eq!(
        (v["metadata"].as_str(), v["value_len"].as_u64()),
        (Some("etag=1"), Some(140_000))
    );
    let v = json(&dump_bytes(&f.bytes, &key(b"text", true, true)).out);
    assert_eq!(v["value"].as_str().unwrap().len(), 280_000);
}

#[test]
fn a_missing_expired_or_corrupt_key_is_status_1_with_the_reason() {
    let mut f = FileBuilder::new();
    f.entry_with(b"old", b"", b"v", 1, 500, 0);
    let c = f.entry(b"bad", b"v", 2);
    f.bytes[c as usize + 51] ^= 1;
    let key = |k: &[u8]| Request {
        key: Some(k.to_vec()),
        ..req(1_000)
    };
    let r = dump_bytes(&f.bytes, &key(b"nope"));
    assert_eq!(
        (r.result.unwrap(), r.out.as_str()),
        (Status::KeyNotFound, "")
    );
    assert!(
        r.err
            .contains("no live key nope in t.sfs: no entry has this key"),
        "{}",
        r.err
    );
    let r = dump_bytes(&f.bytes, &key(b"old"));
    assert_eq!(r.result.unwrap(), Status::KeyNotFound);
    assert!(
        r.err.contains("expired at 1970-01-01T00:00:00Z (0 s ago)"),
        "{}",
        r.err
    );
    let r = dump_bytes(&f.bytes, &key(b"bad"));
    assert_eq!(r.result.unwrap(), Status::KeyNotFound);
    assert!(
        r.err
            .contains(&format!("only copy (seq 2, at offset {c}) is corrupt")),
        "{}",
        r.err
    );
    let r = dump_bytes(
        &f.bytes,
        &Request {
            json: true,
            ..key(b"old")
        },
    );
    let v = json(&r.out);
    assert_eq!(
        (v["found"].as_bool(), v["state"].as_str()),
        (Some(false), Some("expired"))
    );
}

#[test]
fn files_it_cannot_read_are_failures_with_exit_status_2() {
    let r = dump_bytes(b"just some text, not a store", &req(0));
    let e = r.result.unwrap_err();
    assert_eq!(e.exit_code(), 2);
    assert!(e.to_string().contains("t.sfs is not a store file"), "{e}");
    let e = dump_bytes(b"", &req(0)).result.unwrap_err();
    assert!(matches!(e, Failure::NotAStore { len: 0, .. }));
    assert!(e.to_string().contains("is empty"));
    let mut f = FileBuilder::new();
    f.bytes[8] = 9;
    f.reseal_file_header();
    let e = dump_bytes(
        &f.bytes,
        &Request {
            check: true,
            ..req(0)
        },
    )
    .result
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("format version 9; this sfs-dump reads versions 1 to 2"),
        "{e}"
    );
}

#[test]
fn a_damaged_file_header_shows_in_every_view() {
    let mut f = FileBuilder::new();
    f.entry(b"k", b"value", 1);
    f.bytes[40] = 1; // reserved byte: the header checksum fails
    let r = dump_bytes(&f.bytes, &req(0));
    assert_eq!(r.result.unwrap(), Status::Ok);
    assert!(
        r.out
            .contains("FILE HEADER DAMAGED: file header checksum mismatch"),
        "{}",
        r.out
    );
    assert!(r.out.contains("DAMAGE: file header damaged"), "{}", r.out);
    let r = dump_bytes(
        &f.bytes,
        &Request {
            check: true,
            ..req(0)
        },
    );
    assert_eq!(r.result.unwrap(), Status::Damaged);
    assert!(
        r.out
            .contains("problem at offset 0 (0x0), 64 bytes [header]"),
        "{}",
        r.out
    );
    let r = dump_bytes(
        &f.bytes,
        &Request {
            key: Some(b"k".to_vec()),
            ..req(0)
        },
    );
    assert_eq!((r.result.unwrap(), r.out.as_str()), (Status::Ok, "value"));
    assert!(
        r.err
            .contains("warning: the file header of t.sfs is damaged"),
        "{}",
        r.err
    );
}

#[test]
fn progress_is_reported_up_to_the_total_and_never_goes_back() {
    let real = real_store_bytes(&support::clock());
    // Copies of keys: the scan walks a second time over those keys.
    let mut dups = FileBuilder::new();
    for i in 0..200u64 {
        dups.entry(format!("k{}", i % 50).as_bytes(), &[1; 300], i);
    }
    for bytes in [&real[..], &dups.bytes[..]] {
        for (entries, passes) in [(false, 1), (true, 2)] {
            let mut seen: Vec<Progress> = Vec::new();
            let mut cb = |p: Progress| seen.push(p);
            let r = run(
                bytes,
                &Request {
                    entries,
                    ..req(REAL_NOW)
                },
                &mut std::io::sink(),
                &mut std::io::sink(),
                Some(&mut cb),
            );
            assert_eq!(r.unwrap(), Status::Ok);
            let last = seen.last().unwrap();
            assert_eq!(last.total, passes * bytes.len() as u64);
            assert_eq!(last.done, last.total);
            assert!(
                seen.windows(2).all(|w| w[0].done <= w[1].done),
                "never goes back"
            );
            assert_eq!(seen[0].phase, "reading");
            assert_eq!(last.phase, if entries { "listing" } else { "reading" });
        }
    }
}

#[test]
fn a_progress_bar_stays_silent_in_the_first_second() {
    let mut bar = ProgressBar::new();
    let mut out = Vec::new();
    for i in 0..1000 {
        bar.update(
            &mut out,
            Progress {
                phase: "reading",
                done: i,
                total: 1000,
            },
        );
    }
    bar.finish(&mut out);
    assert!(out.is_empty());
}

#[test]
fn numbers_and_dates_are_written_for_people() {
    assert_eq!(thousands(0), "0");
    assert_eq!(thousands(1_000), "1,000");
    assert_eq!(thousands(u64::MAX), "18,446,744,073,709,551,615");
    assert_eq!(human(1023), "1023 B");
    assert_eq!(human(1024), "1.0 KiB");
    assert_eq!(human(5 << 20), "5.0 MiB");
    assert_eq!(human(u64::MAX), "16.0 EiB");
    assert_eq!(
        iso8601(951_782_400_000),
        "2000-02-29T00:00:00Z",
        "a leap day"
    );
    assert_eq!(iso8601(1_709_164_799_000), "2024-02-28T23:59:59Z");
    assert_eq!(iso8601(253_402_300_800_000), "+10000-01-01T00:00:00Z");
    assert_eq!(iso8601(i128::from(u64::MAX)), "+584556019-04-03T14:25:51Z");
    assert_eq!(iso8601(-86_400_000), "1969-12-31T00:00:00Z");
    assert_eq!(relative(59_999, 0), "in 59 s");
    assert_eq!(relative(0, 60_000), "1 min ago");
    assert_eq!(relative(47 * 3_600_000, 0), "in 47 h");
    assert_eq!(relative(3 * 86_400_000, 0), "in 3 d");
    assert_eq!(relative(0, 800 * 86_400_000), "2 y ago");
    assert_eq!(relative(0, 0), "0 s ago");
}
