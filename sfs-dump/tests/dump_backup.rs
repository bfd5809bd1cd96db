//! `sfs-dump --check` on the copy `Store::backup` writes of a real store
//! with holes, expired entries and metadata: clean, and with no free space.

mod support;

use std::time::Duration;

use serde_json::Value;
use sfs::{Options, PutOptions, SyncPolicy};
use support::{json, sfs_dump_cmd, stdout};

#[test]
fn sfs_dump_finds_a_backup_clean_and_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Options::new()
        .sync(SyncPolicy::Never)
        .open(dir.path().join("live.sfs"))
        .unwrap();
    for i in 0..500u32 {
        let k = format!("key-{i:03}");
        let meta = format!("m{i}");
        store
            .put_with(
                &k,
                vec![b'v'; 10 + i as usize],
                &PutOptions::new().metadata(meta.as_bytes()),
            )
            .unwrap();
    }
    for i in (0..500u32).step_by(2) {
        store.delete(format!("key-{i:03}")).unwrap();
    }
    store
        .put_with_ttl("short", b"gone soon", Duration::from_millis(1))
        .unwrap();
    std::thread::sleep(Duration::from_millis(5));
    let copy = dir.path().join("copy.sfs");
    let report = store.backup(&copy).unwrap();
    assert_eq!(report.entries, 250);
    let path = copy.to_str().unwrap();
    let check = sfs_dump_cmd(&[path, "--check"]);
    assert_eq!(check.status.code(), Some(0), "{}", stdout(&check));
    assert!(
        stdout(&check).contains("no damage found"),
        "{}",
        stdout(&check)
    );
    let summary: Value = json(&sfs_dump_cmd(&[path, "--json"]));
    assert_eq!(summary["live_entries"], 250, "{summary}");
    assert_eq!(summary["free_blocks"], 0, "{summary}");
    assert_eq!(summary["expired_entries"], 0, "{summary}");
    assert_eq!(summary["file_len"], report.file_len, "{summary}");
}
