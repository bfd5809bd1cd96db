//! `sfs-dump` on the frozen files of format version 2 (`tests/frozen/v2` of
//! the `sfs` package): a settled batch, one a crash left complete and
//! unsettled, and one a crash cut before its commit record. `--check` is
//! clean for all three (an uncommitted batch's members are notes, not
//! damage), and the JSON says what the store's open decides.

use std::path::Path;
use std::process::Command;

fn dump(file: &str, args: &[&str]) -> (i32, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root");
    let o = Command::new(env!("CARGO_BIN_EXE_sfs-dump"))
        .arg(root.join("tests/frozen/v2").join(file))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap(),
        String::from_utf8(o.stdout).unwrap(),
    )
}

#[test]
fn check_is_clean_for_settled_unsettled_and_uncommitted_batches() {
    for file in ["settled.sfs", "unsettled.sfs", "uncommitted.sfs"] {
        let (status, out) = dump(file, &["--check"]);
        assert_eq!(status, 0, "{file}: {out}");
        assert!(out.contains("no damage found"), "{file}: {out}");
    }
}

#[test]
fn json_reports_the_batches_as_the_open_decides() {
    for (file, live, unsettled, uncommitted) in [
        ("settled.sfs", 4, 0, 0),
        ("unsettled.sfs", 4, 1, 0),
        ("uncommitted.sfs", 3, 0, 4),
    ] {
        let (status, out) = dump(
            file,
            &["--json", "--entries", "--check", "--now", "1800000000000"],
        );
        assert_eq!(status, 0, "{file}: {out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["format_version"], 2, "{file}");
        assert_eq!(v["live_entries"], live, "{file}");
        assert_eq!(v["unsettled_batches"], unsettled, "{file}");
        assert_eq!(v["uncommitted_entries"], uncommitted, "{file}");
        assert_eq!(v["damaged"], false, "{file}");
        let kinds: Vec<&str> = v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds.contains(&"commit"),
            file != "settled.sfs" && file != "uncommitted.sfs",
            "{file}: {kinds:?}"
        );
        assert_eq!(
            kinds.contains(&"uncommitted"),
            file == "uncommitted.sfs",
            "{file}: {kinds:?}"
        );
    }
}

#[test]
fn key_lookup_follows_the_batch_rules() {
    // Uncommitted: the pending copy is not the value.
    assert_eq!(
        dump("uncommitted.sfs", &["--key", "alpha"]),
        (0, "one".into())
    );
    assert_eq!(dump("uncommitted.sfs", &["--key", "zeta"]).0, 1);
    // Committed and unsettled: the pending copy is; a tombstone deletes.
    assert_eq!(
        dump("unsettled.sfs", &["--key", "alpha"]),
        (0, "one, rewritten by a batch".into())
    );
    assert_eq!(dump("unsettled.sfs", &["--key", "gone"]).0, 1);
    assert_eq!(
        dump("settled.sfs", &["--key", "alpha"]),
        (0, "one, rewritten by a batch".into())
    );
}
