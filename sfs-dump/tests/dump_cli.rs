//! The `sfs-dump` binary on real stores made with `sfs::Store` and on damaged
//! copies: text, JSON, exit statuses (as `sfs-dump/README.md` specifies
//! them), and that it only ever reads.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use serde_json::Value;
use sfs::{ManualClock, Options};
use support::{REAL_NOW, TempStore, code, json, real_store_bytes, stderr, stdout};

const NOW: &str = "1002000"; // REAL_NOW

fn sfs_dump(args: &[&str]) -> Output {
    support::sfs_dump_cmd(args)
}

/// A real store file in a temporary directory.
fn real_store() -> (tempfile::TempDir, PathBuf) {
    let bytes = real_store_bytes(&support::clock());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("real.sfs");
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The store's own view of a file, opened read-only at REAL_NOW.
fn store_stats(path: &Path) -> sfs::Stats {
    let clock = Arc::new(ManualClock::new(REAL_NOW));
    let store = Options::new()
        .read_only(true)
        .clock(clock)
        .open(path)
        .expect("the store opens it");
    store.stats()
}

/// The JSON entry of `key` in `path`.
fn entry_of(path: &Path, key: &str) -> Value {
    let v = json(&sfs_dump(&[p(path), "--entries", "--json", "--now", NOW]));
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == key && e["state"] == "live")
        .unwrap_or_else(|| panic!("no live {key}"))
        .clone()
}

#[test]
fn the_summary_of_a_real_store_agrees_with_the_store() {
    let (_dir, path) = real_store();
    let o = sfs_dump(&[p(&path), "--now", NOW]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.starts_with(&format!("file          {}\n", path.display())),
        "{text}"
    );
    assert!(
        text.contains("version 1, created 1970-01-01T00:16:40Z"),
        "{text}"
    );
    assert!(stderr(&o).is_empty());
    let v = json(&sfs_dump(&[p(&path), "--json", "--now", NOW]));
    let stats = store_stats(&path);
    assert_eq!(v["live_entries"], stats.entries as u64);
    assert_eq!(v["corrupt_blocks"], stats.corrupt_blocks);
    assert_eq!(
        v["expired_entries"], stats.expired_purged,
        "expired at open, for the store"
    );
    assert_eq!(v["file_len"], std::fs::metadata(&path).unwrap().len());
    assert!(
        text.contains(&format!(
            "live      {:>8}",
            v["live_entries"].as_u64().unwrap()
        )),
        "{text}"
    );
}

#[test]
fn every_mode_only_reads_even_a_store_in_use() {
    let t = TempStore::new();
    let clock = support::clock();
    let store = t.open(&clock);
    for i in 0..50u32 {
        store.put(format!("k{i}"), vec![i as u8; 100]).unwrap();
    }
    store.put(b"k1", b"overwritten").unwrap();
    store.sync().unwrap();
    let before = std::fs::read(&t.path).unwrap();
    let mtime = std::fs::metadata(&t.path).unwrap().modified().unwrap();
    // The store holds the file's write lock all along.
    let path = p(&t.path);
    for args in [
        vec![path],
        vec![path, "--entries"],
        vec![path, "--map"],
        vec![path, "--check"],
        vec![path, "--entries", "--map", "--check", "--json"],
        vec![path, "--key", "k1"],
    ] {
        let o = sfs_dump(&args);
        assert_eq!(code(&o), 0, "{args:?}: {}{}", stdout(&o), stderr(&o));
    }
    assert_eq!(stdout(&sfs_dump(&[path, "--key", "k1"])), "overwritten");
    assert_eq!(
        std::fs::read(&t.path).unwrap(),
        before,
        "not one byte changed"
    );
    assert_eq!(
        std::fs::metadata(&t.path).unwrap().modified().unwrap(),
        mtime
    );
    assert!(store.contains(b"k2"), "the store is unaffected");
    store.close().unwrap();
    // A path that does not exist is not created.
    let missing = t.dir.path().join("missing.sfs");
    let o = sfs_dump(&[p(&missing)]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("No such file"), "{}", stderr(&o));
    assert!(!missing.exists());
}

#[test]
fn a_damaged_copy_is_diagnosed_from_the_output_alone() {
    let (_dir, path) = real_store();
    let e = entry_of(&path, "user:5");
    let off = e["offset"].as_u64().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[off as usize + 48 + 6 + 3] ^= 0x20; // a value byte of user:5
    std::fs::write(&path, &bytes).unwrap();

    let o = sfs_dump(&[p(&path), "--check", "--now", NOW]);
    assert_eq!(code(&o), 1, "damage found: exit 1");
    let text = stdout(&o);
    let line = text
        .lines()
        .find(|l| l.starts_with("problem"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.starts_with(&format!("problem at offset {off} ({off:#x})")),
        "{line}"
    );
    assert!(
        line.contains("payload checksum mismatch") && line.contains("\"user:5\""),
        "{line}"
    );
    assert_eq!(text.lines().filter(|l| l.starts_with("problem")).count(), 1);

    let v = json(&sfs_dump(&[p(&path), "--check", "--json", "--now", NOW]));
    assert_eq!(v["problems"][0]["offset"], off);
    assert!(
        v["problems"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("checksum")
    );
    assert_eq!(v["corrupt_blocks"], 1);
    assert_eq!(store_stats(&path).corrupt_blocks, 1, "the store agrees");

    let o = sfs_dump(&[p(&path), "--now", NOW]);
    assert_eq!(code(&o), 0, "a summary of a damaged file still reads fine");
    assert!(
        stdout(&o).contains("DAMAGE: 1 corrupt block"),
        "{}",
        stdout(&o)
    );
    let o = sfs_dump(&[p(&path), "--key", "user:5"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("is corrupt"), "{}", stderr(&o));
    let o = sfs_dump(&[p(&path), "--entries", "--now", NOW]);
    let row = stdout(&o)
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{off} ")))
        .unwrap()
        .to_string();
    assert!(
        row.contains(" corrupt ") && row.contains("user:5?"),
        "{row}"
    );
}

#[test]
fn a_cut_copy_is_damage_to_the_end_of_the_file() {
    let (_dir, path) = real_store();
    let big = entry_of(&path, "big");
    let off = big["offset"].as_u64().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..off as usize + 5_000]).unwrap();
    let o = sfs_dump(&[p(&path), "--check", "--json", "--now", NOW]);
    assert_eq!(code(&o), 1);
    let v = json(&o);
    let problem = v["problems"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(problem["offset"], off);
    assert_eq!(problem["kind"], "size");
    let reason = problem["reason"].as_str().unwrap();
    assert!(reason.contains("runs past the end of the file"), "{reason}");
    assert!(reason.contains("up to the end of the file"), "{reason}");
}

#[test]
fn keys_print_their_values_with_exit_status_0_or_1() {
    let (_dir, path) = real_store();
    let o = sfs_dump(&[p(&path), "--key", "doc"]);
    assert_eq!((code(&o), o.stdout.as_slice()), (0, &b"{\"a\":1}"[..]));
    let o = sfs_dump(&[p(&path), "--key", "big"]);
    assert_eq!(o.stdout, vec![7u8; 20_000]);
    let o = sfs_dump(&[p(&path), "--hex-key", "00ff62696e", "--hex"]);
    assert_eq!((code(&o), stdout(&o).as_str()), (0, "0102\n"));
    let o = sfs_dump(&[p(&path), "--key", "0x00ff62696e", "--hex-key"]);
    assert_eq!(o.stdout, b"\x01\x02");
    let o = sfs_dump(&[p(&path), "--key", "session:0", "--now", NOW]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("expired at"), "{}", stderr(&o));
    let o = sfs_dump(&[p(&path), "--key", "session:1", "--now", NOW, "--json"]);
    assert_eq!(code(&o), 0);
    let v = json(&o);
    assert_eq!(
        (v["value"].as_str(), v["expiry_ms"].as_u64()),
        (Some("token"), Some(4_600_000))
    );
    let o = sfs_dump(&[p(&path), "--key", "no such key"]);
    assert_eq!((code(&o), o.stdout.len()), (1, 0));
    assert!(stderr(&o).contains("no entry has this key"));
}

#[test]
fn usage_errors_and_unreadable_files_exit_with_2_and_say_which() {
    let (dir, path) = real_store();
    let path = p(&path);
    for args in [
        vec![],
        vec![path, "--bogus"],
        vec![path, "--key", "k", "--map"],
        vec![path, "--key", "k", "--entries"],
        vec![path, "--hex"],
        vec![path, "--hex-key", "zz"],
        vec![path, "--key", "a", "--hex-key", "00"],
        vec![path, "--now", "soon"],
    ] {
        let o = sfs_dump(&args);
        assert_eq!(code(&o), 2, "{args:?}");
        assert!(o.stdout.is_empty(), "{args:?}");
        assert!(!stderr(&o).is_empty(), "{args:?}");
    }
    let text = dir.path().join("notes.txt");
    std::fs::write(
        &text,
        "a text file, long enough to be more than sixty-four bytes in length",
    )
    .unwrap();
    let empty = dir.path().join("empty.sfs");
    std::fs::write(&empty, "").unwrap();
    for (file, says) in [
        (dir.path().to_path_buf(), "is not a regular file"),
        (text, "is not a store file"),
        (empty, "is empty: not a store file"),
    ] {
        let o = sfs_dump(&[p(&file), "--check"]);
        assert_eq!(code(&o), 2, "{file:?}");
        assert!(stderr(&o).contains(says), "{file:?}: {}", stderr(&o));
    }
    // A FIFO is refused before it is opened (opening it would block).
    let fifo = dir.path().join("fifo");
    if Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success())
    {
        let o = sfs_dump(&[p(&fifo)]);
        assert_eq!(code(&o), 2);
        assert!(stderr(&o).contains("not a regular file"));
    }
}

#[test]
fn help_shows_examples_and_version_prints_the_version() {
    let o = sfs_dump(&["--help"]);
    assert_eq!(code(&o), 0);
    let help = stdout(&o);
    for s in [
        "Examples:",
        "--entries",
        "--map",
        "--check",
        "--key",
        "--hex-key",
        "--hex",
        "--json",
        "Exit status",
    ] {
        assert!(help.contains(s), "{s} in\n{help}");
    }
    let o = sfs_dump(&["--version"]);
    assert_eq!(code(&o), 0);
    assert_eq!(
        stdout(&o).trim(),
        format!("sfs-dump {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn the_map_follows_columns_and_has_no_colour_in_a_pipe() {
    let (_dir, path) = real_store();
    for columns in ["50", "120"] {
        let o = Command::new(env!("CARGO_BIN_EXE_sfs-dump"))
            .args([p(&path), "--map", "--now", NOW])
            .env("COLUMNS", columns)
            .env_remove("NO_COLOR")
            .output()
            .unwrap();
        assert_eq!(code(&o), 0);
        let text = stdout(&o);
        assert!(
            !text.contains('\x1b'),
            "no colour when stdout is not a terminal"
        );
        let width: usize = columns.parse().unwrap();
        let map_lines: Vec<&str> = text
            .lines()
            .skip(1)
            .take_while(|l| !l.starts_with("legend"))
            .collect();
        assert!(!map_lines.is_empty());
        for l in &map_lines {
            assert!(l.chars().count() <= width, "{l}");
        }
        assert!(
            map_lines[0].chars().count() >= width - 2,
            "uses the width: {}",
            map_lines[0]
        );
        assert!(text.contains("legend:") && text.contains("fragmentation"));
    }
}

#[test]
fn one_json_document_for_every_mode_at_once() {
    let (_dir, path) = real_store();
    let o = sfs_dump(&[
        p(&path),
        "--entries",
        "--map",
        "--check",
        "--json",
        "--now",
        NOW,
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v = json(&o);
    assert!(v["entries"].is_array() && v["map"]["cells"].is_string() && v["problems"].is_array());
    assert_eq!(v["blocks"], v["entries"].as_array().unwrap().len() as u64);
    assert!(
        stderr(&o).is_empty(),
        "no progress bar when stderr is not a terminal"
    );
}
