//! The fuzz targets' corpora, replayed on stable Rust: every file under
//! `fuzz/corpus/TARGET/` goes through the same body the fuzzer runs
//! (`sfs::fuzzing::TARGET`). The seed files are made here, deterministically;
//! `SFS_WRITE_CORPUS=1 cargo test --test fuzz_corpus` (re)writes them, and
//! without it this test checks that they are all present and current. And
//! proptest drives the same bodies with random input: mutated seed files for
//! `open` and `inspect`, random bytes for `entry` (`ops` is driven by
//! `tests/model.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sfs::fuzzing::{BatchItem, Op, Scenario};
use sfs::testing::{MemStorage, Storage};
use sfs::{ManualClock, Options, PutOptions, SyncPolicy};

const TARGETS: [&str; 4] = ["open", "inspect", "ops", "entry"];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn body(target: &str) -> fn(&[u8]) {
    match target {
        "open" => sfs::fuzzing::open,
        "inspect" => sfs::fuzzing::inspect,
        "ops" => sfs::fuzzing::ops,
        "entry" => sfs::fuzzing::entry,
        _ => unreachable!(),
    }
}

/// A store file built by the store itself, with a fixed salt and clock so
/// that the bytes are the same on every run.
fn store_file(build: impl FnOnce(&sfs::Store)) -> Vec<u8> {
    let mem = Arc::new(MemStorage::new());
    let store = Options::new()
        .sync(SyncPolicy::Never)
        .clock(Arc::new(ManualClock::new(1_700_000_000_000)))
        .salt(0x5eed_f00d)
        .auto_compact(None)
        .open_on("seed.sfs", mem.clone() as Arc<dyn Storage>)
        .unwrap();
    build(&store);
    store.close().unwrap();
    mem.bytes()
}

/// Store files: sound ones of several shapes, and damaged copies.
fn store_seeds() -> BTreeMap<String, Vec<u8>> {
    let mut seeds = BTreeMap::new();
    seeds.insert("empty-store".into(), store_file(|_| {}));
    let small = store_file(|s| {
        s.put(b"k\x00", b"value zero").unwrap();
        s.put(b"a-rather-long-key-number-010", vec![7u8; 300])
            .unwrap();
        s.put_with(
            b"k\x01",
            b"with meta",
            &PutOptions::new()
                .metadata(b"m=1")
                .ttl(Duration::from_secs(60)),
        )
        .unwrap();
    });
    seeds.insert("small".into(), small.clone());
    let holes = store_file(|s| {
        for i in 0..40u32 {
            s.put(format!("key-{i}"), vec![i as u8; (i as usize * 37) % 900])
                .unwrap();
        }
        for i in (0..40u32).step_by(3) {
            s.delete(format!("key-{i}")).unwrap();
        }
        s.put(b"key-1", b"overwritten").unwrap();
        s.put_with_ttl(b"soon", b"expires", Duration::from_millis(1))
            .unwrap();
    });
    seeds.insert("holes".into(), holes.clone());
    let mut flipped = holes.clone();
    flipped[64 + 48 + 10] ^= 0x40;
    seeds.insert("damaged-value".into(), flipped);
    let mut header = holes.clone();
    let second = 64 + u64::from_le_bytes(holes[72..80].try_into().unwrap()) as usize;
    header[second + 9] ^= 0x01;
    seeds.insert("damaged-block-header".into(), header);
    seeds.insert("torn-tail".into(), holes[..holes.len() - 37].to_vec());
    let mut file_header = small.clone();
    file_header[20] ^= 0xff;
    seeds.insert("damaged-file-header".into(), file_header);
    let mut crumb = small.clone();
    crumb.splice(64..64, [0xAAu8; 16]);
    seeds.insert("short-damaged-region".into(), crumb);
    let mut version = small.clone();
    version[8] = 2;
    let c = crc32fast::hash(&version[0..60]);
    version[60..64].copy_from_slice(&c.to_le_bytes());
    seeds.insert("newer-version".into(), version);
    seeds.insert("not-a-store".into(), b"name,value\nalice,1\n".to_vec());
    seeds
}

fn ops_seeds() -> BTreeMap<String, Vec<u8>> {
    use Op::*;
    let scenarios = [
        (
            "basic",
            Scenario {
                cap: None,
                frag: 0.75,
                always: false,
                frequent: false,
                ops: vec![
                    Put(0, 10),
                    Put(1, 300),
                    Get(0),
                    Delete(1),
                    Put(1, 5000),
                    Reopen,
                    Get(1),
                ],
            },
        ),
        (
            "lru",
            Scenario {
                cap: Some(3),
                frag: 0.5,
                always: true,
                frequent: false,
                ops: (0..8)
                    .map(|k| Put(k, 100))
                    .chain([Get(5), Put(9, 1), Reopen, Put(10, 1)])
                    .collect(),
            },
        ),
        (
            "expiry",
            Scenario {
                cap: None,
                frag: 1.0,
                always: false,
                frequent: false,
                ops: vec![
                    PutTtl(2, 50, 100),
                    PutTtl(3, 50, 2000),
                    Touch(2, 300),
                    Advance(200),
                    Get(2),
                    Advance(400),
                    Purge,
                    Crash,
                ],
            },
        ),
        (
            "space",
            Scenario {
                cap: None,
                frag: 0.75,
                always: false,
                frequent: false,
                ops: (0..16)
                    .map(|k| Put(k, 1000))
                    .chain((0..15).map(Delete))
                    .chain([Compact, Sync, Clear, Put(3, 7), Crash])
                    .collect(),
            },
        ),
        (
            "readers",
            Scenario {
                cap: Some(5),
                frag: 0.75,
                always: true,
                frequent: false,
                ops: vec![
                    Put(4, 2000),
                    GetRef(4),
                    Delete(4),
                    Put(4, 10),
                    GetRef(4),
                    Compact,
                    Reopen,
                ],
            },
        ),
        (
            // A write-ahead log: `frequent_syncs` under `Never`, appends in
            // batches, the oldest removed, crashes between syncs.
            "wal",
            Scenario {
                cap: None,
                frag: 0.75,
                always: false,
                frequent: true,
                ops: vec![
                    Batch((0..4).map(|k| BatchItem::Put(k, 200)).collect()),
                    Sync,
                    Batch((4..8).map(|k| BatchItem::Put(k, 200)).collect()),
                    Batch(vec![BatchItem::Delete(0), BatchItem::Delete(1)]),
                    Crash,
                    Batch((8..12).map(|k| BatchItem::Put(k, 3000)).collect()),
                    Sync,
                    Put(12, 100),
                    Reopen,
                ],
            },
        ),
    ];
    scenarios
        .into_iter()
        .map(|(n, s)| {
            let bytes = s.to_bytes();
            assert_eq!(Scenario::from_bytes(&bytes), s, "seed {n} decodes back");
            (n.to_string(), bytes)
        })
        .collect()
}

fn entry_seeds() -> BTreeMap<String, Vec<u8>> {
    let mut seeds = BTreeMap::new();
    seeds.insert("short".into(), vec![1, 2, 3]);
    seeds.insert(
        "key-and-value".into(),
        b"\x11\x22\x33\x44\x05\x02\x10\x00hellomevalue bytes".to_vec(),
    );
    seeds.insert(
        "long-key".into(),
        [&[9u8, 9, 9, 9, 200, 7, 3, 1][..], &[b'x'; 260]].concat(),
    );
    seeds
}

fn seeds(target: &str) -> BTreeMap<String, Vec<u8>> {
    match target {
        "open" | "inspect" => store_seeds(),
        "ops" => ops_seeds(),
        "entry" => entry_seeds(),
        _ => unreachable!(),
    }
}

#[test]
fn seed_corpora_are_present_and_current() {
    let write = std::env::var_os("SFS_WRITE_CORPUS").is_some();
    for target in TARGETS {
        let dir = corpus_dir(target);
        for (name, bytes) in seeds(target) {
            let path = dir.join(format!("seed-{name}"));
            if write {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &bytes).unwrap();
            } else {
                let found = std::fs::read(&path).unwrap_or_else(|_| {
                    panic!(
                        "{} is missing: run SFS_WRITE_CORPUS=1 cargo test --test fuzz_corpus",
                        path.display()
                    )
                });
                assert!(
                    found == bytes,
                    "{} is stale: run SFS_WRITE_CORPUS=1 cargo test --test fuzz_corpus",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn every_corpus_file_passes_its_target() {
    for target in TARGETS {
        let dir = corpus_dir(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(
            files.len() >= 3,
            "{target}: a corpus of at least a few files"
        );
        for f in files {
            let data = std::fs::read(&f).unwrap();
            let run = std::panic::catch_unwind(|| body(target)(&data));
            assert!(run.is_ok(), "{target}: {} fails its target", f.display());
        }
    }
}

/// The seed store files, made once per test process.
fn seed_files() -> &'static [Vec<u8>] {
    static SEEDS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    SEEDS.get_or_init(|| store_seeds().into_values().collect())
}

/// A seed file with a few bytes changed.
fn mutated(seed: proptest::sample::Index, changes: &[(proptest::sample::Index, u8)]) -> Vec<u8> {
    let mut b = seed.get(seed_files()).clone();
    for (at, byte) in changes {
        if !b.is_empty() {
            let i = at.index(b.len());
            b[i] ^= byte | 1;
        }
    }
    b
}

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn open_target_on_mutated_store_files(
        seed in any::<proptest::sample::Index>(),
        changes in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..6),
    ) {
        sfs::fuzzing::open(&mutated(seed, &changes));
    }

    #[test]
    fn inspect_target_on_mutated_store_files(
        seed in any::<proptest::sample::Index>(),
        changes in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..6),
    ) {
        sfs::fuzzing::inspect(&mutated(seed, &changes));
    }

    #[test]
    fn entry_target_on_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        sfs::fuzzing::entry(&data);
    }
}
