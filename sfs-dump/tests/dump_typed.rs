//! `sfs-dump` on what users really have (issue 16, item 7): keys written by
//! `TypedStore` (`--key-format`), a listing filtered and limited (`--prefix`,
//! `--state`, `--limit`), the fragmentation of a store right after
//! `compact()`, and the verdict of `--check` on a file whose header is
//! damaged. Text and JSON, through the binary, as `sfs-dump/README.md`
//! specifies them.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use sfs::{Options, SyncPolicy, TypedStore};
use support::{code, json, stderr, stdout};

fn sfs_dump(path: &Path, args: &[&str]) -> Output {
    let path = path.to_str().expect("a UTF-8 temp path");
    let all: Vec<&str> = std::iter::once(path).chain(args.iter().copied()).collect();
    support::sfs_dump_cmd(&all)
}

/// A session store as issue 16 built it: `TypedStore<String, String>` with
/// ids `sid-demo-0..`, one of them expired, one deleted; and a store of
/// `u64` keys beside it.
fn typed_store(dir: &Path) -> PathBuf {
    let path = dir.join("sessions.sfs");
    // The expired entry must stay in the file: no background sweep.
    let store = Options::new()
        .sync(SyncPolicy::Never)
        .active_expiry(None)
        .open(&path)
        .unwrap();
    let sessions: TypedStore<String, String> = TypedStore::from_store(store);
    for i in 0..6 {
        sessions
            .put(&format!("sid-demo-{i}"), &format!("user {i}"))
            .unwrap();
    }
    sessions
        .put_with_ttl("sid-gone", "soon", Duration::from_millis(1))
        .unwrap();
    sessions.put("other", "x").unwrap();
    sessions.delete("sid-demo-5").unwrap();
    sessions.close().unwrap();
    std::thread::sleep(Duration::from_millis(5));
    path
}

fn u64_store(dir: &Path) -> PathBuf {
    let path = dir.join("numbers.sfs");
    let numbers: TypedStore<u64, String> = TypedStore::open(&path).unwrap();
    for n in [5u64, 300, 70_000, 5_000_000_000] {
        numbers.put(&n, &format!("n{n}")).unwrap();
    }
    numbers.close().unwrap();
    path
}

#[test]
fn typed_keys_show_decoded_and_marked_in_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = typed_store(dir.path());
    let o = sfs_dump(&path, &["--entries"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("\"sid-demo-2\" (bincode string)"), "{text}");
    assert!(text.contains("\"other\" (bincode string)"), "{text}");
    assert!(!text.contains("0x0a7369"), "{text}");
    // utf8: the raw key, as before --key-format (the length prefix in hex).
    let raw = stdout(&sfs_dump(&path, &["--entries", "--key-format", "utf8"]));
    assert!(raw.contains("0x0a7369642d64656d6f2d32"), "{raw}");
    assert!(!raw.contains("bincode"), "{raw}");
    let hex = stdout(&sfs_dump(&path, &["--entries", "--key-format", "hex"]));
    assert!(hex.contains("0x056f74686572"), "{hex}"); // "other", even printable

    let v = json(&sfs_dump(&path, &["--entries", "--json"]));
    let rows = v["entries"].as_array().unwrap();
    let row = rows
        .iter()
        .find(|r| r["key_decoded"] == "sid-demo-2")
        .expect("a decoded row");
    // `key` keeps its meaning: the raw key; the decoded one is beside it.
    assert_eq!(row["key"], "0x0a7369642d64656d6f2d32");
    assert_eq!(row["key_format"], "bincode-string");
    assert_eq!(row["state"], "live");
    // Raw keys get no extra fields.
    let v = json(&sfs_dump(
        &path,
        &["--entries", "--json", "--key-format", "utf8"],
    ));
    assert!(
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r.get("key_decoded").is_none())
    );
}

#[test]
fn u64_keys_show_as_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let path = u64_store(dir.path());
    let text = stdout(&sfs_dump(&path, &["--entries"]));
    for n in ["5", "300", "70000", "5000000000"] {
        assert!(text.contains(&format!("{n} (bincode u64)")), "{n}:\n{text}");
    }
    let v = json(&sfs_dump(
        &path,
        &["--entries", "--json", "--key-format", "bincode-u64"],
    ));
    let decoded: Vec<u64> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["key_decoded"].as_u64())
        .collect();
    assert_eq!(decoded, [5, 300, 70_000, 5_000_000_000]);
    let o = sfs_dump(&path, &["--key", "70000", "--key-format", "bincode-u64"]);
    assert_eq!((code(&o), stdout(&o).as_str()), (0, "\u{6}n70000"));
    let o = sfs_dump(&path, &["--key", "x7", "--key-format", "bincode-u64"]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("--key: \"x7\" is not a number"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_typed_key_is_found_with_its_format_and_hinted_at_without() {
    let dir = tempfile::tempdir().unwrap();
    let path = typed_store(dir.path());
    let o = sfs_dump(
        &path,
        &["--key", "sid-demo-2", "--key-format", "bincode-string"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // The value is a bincode String too: its length, then "user 2".
    assert_eq!(stdout(&o), "\u{6}user 2");

    let o = sfs_dump(&path, &["--key", "sid-demo-2"]);
    assert_eq!(code(&o), 1);
    let err = stderr(&o);
    assert!(err.contains("no live key sid-demo-2"), "{err}");
    assert!(
        err.contains("hint: ")
            && err
                .contains("a String key \"sid-demo-2\" (bincode string) as a TypedStore writes it")
            && err.contains("--key sid-demo-2 --key-format bincode-string"),
        "{err}"
    );
    let v = json(&sfs_dump(&path, &["--key", "sid-demo-2", "--json"]));
    assert_eq!(v["found"], false);
    assert!(
        v["hint"]
            .as_str()
            .unwrap()
            .contains("--key-format bincode-string")
    );
    let v = json(&sfs_dump(
        &path,
        &[
            "--key",
            "sid-demo-2",
            "--key-format",
            "bincode-string",
            "--json",
        ],
    ));
    assert_eq!(v["found"], true);
    assert_eq!(v["key"], "0x0a7369642d64656d6f2d32");
    assert_eq!(v["key_decoded"], "sid-demo-2");

    // No hint when neither form exists; a deleted typed key says so in its terms.
    let o = sfs_dump(&path, &["--key", "nobody"]);
    assert!(!stderr(&o).contains("hint"), "{}", stderr(&o));
    let o = sfs_dump(
        &path,
        &["--key", "sid-demo-5", "--key-format", "bincode-string"],
    );
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("no live key \"sid-demo-5\" (bincode string)"),
        "{}",
        stderr(&o)
    );
    // A number given as text hints at a u64 key.
    let numbers = u64_store(dir.path());
    let o = sfs_dump(&numbers, &["--key", "300"]);
    assert!(
        stderr(&o).contains("--key 300 --key-format bincode-u64"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn the_listing_filters_by_prefix_and_state_and_stops_at_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = typed_store(dir.path());
    let o = sfs_dump(&path, &["--entries", "--prefix", "sid-demo-"]);
    let text = stdout(&o);
    let rows = text
        .lines()
        .filter(|l| l.contains("(bincode string)"))
        .count();
    assert_eq!(rows, 5, "{text}"); // sid-demo-5 was deleted: a free block
    assert!(
        !text.contains("sid-gone") && !text.contains("other"),
        "{text}"
    );
    assert!(
        text.contains("5 blocks listed (key prefix \"sid-demo-\"): every block that matches"),
        "{text}"
    );

    let o = sfs_dump(&path, &["--entries", "--state", "expired"]);
    let text = stdout(&o);
    assert!(text.contains("\"sid-gone\" (bincode string)"), "{text}");
    assert!(
        text.contains("1 block listed (state expired): every block that matches"),
        "{text}"
    );

    let o = sfs_dump(
        &path,
        &["--entries", "--state", "live,free", "--limit", "2"],
    );
    let text = stdout(&o);
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("(bincode string)"))
            .count(),
        2,
        "{text}"
    );
    assert!(
        text.contains(
            "2 blocks listed (state live or free, --limit 2): cut at --limit 2, more blocks match"
        ),
        "{text}"
    );
    // The footer still counts the whole file.
    assert!(
        text.contains("8 blocks: 6 live, 1 expired, 1 free"),
        "{text}"
    );

    let v = json(&sfs_dump(
        &path,
        &[
            "--entries",
            "--json",
            "--prefix",
            "sid-",
            "--state",
            "live",
            "--state",
            "expired",
            "--limit",
            "3",
        ],
    ));
    assert_eq!(v["entries"].as_array().unwrap().len(), 3);
    assert_eq!(v["entries_listed"], 3);
    assert_eq!(v["entries_truncated"], true);
    assert_eq!(v["entries_filter"]["prefix"], "sid-");
    assert_eq!(
        v["entries_filter"]["states"],
        serde_json::json!(["live", "expired"])
    );
    assert_eq!(v["entries_filter"]["limit"], 3);
    let v = json(&sfs_dump(&path, &["--entries", "--json", "--limit", "100"]));
    assert_eq!(v["entries_truncated"], false);
    assert_eq!(v["entries_listed"], v["blocks"]);
    // Without a filter, none of these fields (the frozen outputs hold it).
    let v = json(&sfs_dump(&path, &["--entries", "--json"]));
    assert!(v.get("entries_listed").is_none());

    // A raw prefix in hex; filters need --entries.
    let o = sfs_dump(
        &path,
        &["--entries", "--key-format", "hex", "--prefix", "0a736964"],
    );
    assert!(
        stdout(&o).contains("5 blocks listed (key prefix 0x0a736964)"),
        "{}",
        stdout(&o)
    );
    assert_eq!(code(&sfs_dump(&path, &["--limit", "3"])), 2);
}

#[test]
fn fragmentation_of_a_few_free_bytes_is_called_negligible() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sfs");
    let store = Options::new().sync(SyncPolicy::Never).open(&path).unwrap();
    for i in 0..2000u32 {
        store
            .put(format!("key-{i}"), vec![7u8; 100 + (i % 13) as usize])
            .unwrap();
    }
    for i in (0..2000u32).step_by(3) {
        store.delete(format!("key-{i}")).unwrap();
    }
    store.compact().unwrap();
    store.close().unwrap();
    let v = json(&sfs_dump(&path, &["--json"]));
    let (free, len) = (
        v["free_bytes"].as_u64().unwrap(),
        v["file_len"].as_u64().unwrap(),
    );
    assert!(
        free * 20 < len,
        "compact leaves little free space: {free} of {len}"
    );
    assert!(v["fragmentation"].is_number());
    let text = stdout(&sfs_dump(&path, &[]));
    if free > 0 {
        assert!(
            text.contains("fragmentation       negligible: only "),
            "{text}"
        );
        assert!(text.contains("under 5 % of the file"), "{text}");
        let map = stdout(&sfs_dump(&path, &["--map"]));
        assert!(map.contains("fragmentation negligible: only "), "{map}");
    } else {
        assert!(text.contains("fragmentation       0.0 %"), "{text}");
    }
}

#[test]
fn check_of_a_damaged_file_header_says_the_store_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = typed_store(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[40] ^= 1; // a reserved byte: the header checksum fails
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        sfs::Store::open(&path),
        Err(sfs::Error::Corrupt { .. })
    ));
    let o = sfs_dump(&path, &["--check"]);
    assert_eq!(code(&o), 1);
    let text = stdout(&o);
    assert!(
        text.contains("the store refuses to open the file"),
        "{text}"
    );
    let verdict = text.lines().last().unwrap();
    assert!(verdict.starts_with("DAMAGE: "), "{text}");
    assert!(
        verdict.contains("the store refuses to open this file"),
        "{verdict}"
    );
    assert!(!verdict.contains("serves everything else"), "{verdict}");
    let v = json(&sfs_dump(&path, &["--check", "--json"]));
    assert_eq!(
        (v["header_ok"].clone(), v["damaged"].clone()),
        (Value::from(false), Value::from(true))
    );
    assert!(
        v["problems"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("the store refuses to open the file")
    );
}
