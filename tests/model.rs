//! Random sequences of operations against a `HashMap` model with expiry and
//! LRU. After every step: the store's invariants hold (blocks tile the file,
//! the free list is exactly the free blocks, no two free blocks are adjacent),
//! every key reads as the model says, and a fresh open of the file as it is
//! now (what a crash would leave) holds the same.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Model, TempStore, clock};
use proptest::prelude::*;
use sfs::testing::{MemStorage, Storage};
use sfs::{ManualClock, Options, Store, SyncPolicy};

#[derive(Clone, Debug)]
enum Op {
    Put(u8, u16),
    PutTtl(u8, u16, u16),
    Get(u8),
    GetRef(u8),
    Delete(u8),
    Clear,
    Purge,
    Advance(u16),
    Reopen,
    Sync,
    Touch(u8, u16),
    Compact,
}

fn op() -> impl Strategy<Value = Op> {
    let size = prop_oneof![
        Just(0u16),
        1u16..40,
        40u16..400,
        400u16..3000,
        Just(5000u16)
    ];
    prop_oneof![
        30 => (0u8..16, size.clone()).prop_map(|(k, n)| Op::Put(k, n)),
        10 => (0u8..16, size, 1u16..3000).prop_map(|(k, n, t)| Op::PutTtl(k, n, t)),
        12 => (0u8..16).prop_map(Op::Get),
        4 => (0u8..16).prop_map(Op::GetRef),
        10 => (0u8..16).prop_map(Op::Delete),
        1 => Just(Op::Clear),
        3 => Just(Op::Purge),
        6 => (0u16..2000).prop_map(Op::Advance),
        3 => Just(Op::Reopen),
        2 => Just(Op::Sync),
        5 => (0u8..16, 0u16..3000).prop_map(|(k, t)| Op::Touch(k, t)),
        2 => Just(Op::Compact),
    ]
}

/// Keys 8..16 are longer than the index stores inline.
fn key(k: u8) -> Vec<u8> {
    if k < 8 {
        vec![b'k', k]
    } else {
        format!("a-rather-long-key-number-{k:03}").into_bytes()
    }
}

/// A value that says which key and which write it belongs to.
fn value(k: u8, version: u32, len: u16) -> Vec<u8> {
    let mut v = format!("{k}:{version}:").into_bytes();
    v.resize(len as usize, (version % 251) as u8);
    v.truncate(len as usize);
    v
}

/// Where the store lives: a real file (memory-mapped) or an in-memory storage.
enum Backing {
    File(TempStore),
    Mem(Arc<MemStorage>, TempStore),
}

impl Backing {
    fn open(&self, opts: &Options) -> Store {
        match self {
            Backing::File(t) => opts.open(&t.path).unwrap(),
            Backing::Mem(m, t) => opts
                .open_on(&t.path, m.clone() as Arc<dyn Storage>)
                .unwrap(),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        match self {
            Backing::File(t) => std::fs::read(&t.path).unwrap(),
            Backing::Mem(m, _) => m.bytes(),
        }
    }
}

fn check_against_model(s: &Store, model: &Model, now: i64, when: &str) {
    let mut keys = s.keys();
    keys.sort();
    assert_eq!(keys, model.live_keys(now), "{when}: live keys");
    for k in 0..16u8 {
        let got = s.peek(key(k)).unwrap();
        assert_eq!(got.as_ref(), model.visible(&key(k), now), "{when}: key {k}");
    }
}

fn run(ops: Vec<Op>, cap: Option<usize>, frag: f64, policy: SyncPolicy, mem: bool) {
    let c: Arc<ManualClock> = clock();
    let t = TempStore::new();
    let backing = if mem {
        Backing::Mem(Arc::new(MemStorage::new()), t)
    } else {
        Backing::File(t)
    };
    let mut opts = Options::new()
        .sync(policy)
        .clock(c.clone())
        .fragmentation_factor(frag);
    if let Some(n) = cap {
        opts = opts.max_entries(n);
    }
    let mut store = backing.open(&opts);
    let mut model = Model::new(cap);
    let mut version = 0u32;
    for (step, op) in ops.into_iter().enumerate() {
        let now = c.now();
        let when = format!("step {step} ({op:?})");
        match op {
            Op::Put(k, n) => {
                version += 1;
                let v = value(k, version, n);
                store.put(key(k), &v).unwrap();
                model.put(&key(k), &v, 0, now);
            }
            Op::PutTtl(k, n, ttl) => {
                version += 1;
                let v = value(k, version, n);
                store
                    .put_with_ttl(key(k), &v, Duration::from_millis(u64::from(ttl)))
                    .unwrap();
                model.put(&key(k), &v, (now + i64::from(ttl)) as u64, now);
            }
            Op::Get(k) => {
                assert_eq!(
                    store.get(key(k)).unwrap(),
                    model.get(&key(k), now),
                    "{when}"
                );
            }
            Op::GetRef(k) => {
                let r = store.get_ref(key(k)).unwrap().map(|r| r.to_vec());
                assert_eq!(r, model.get(&key(k), now), "{when}");
            }
            Op::Delete(k) => {
                let visible = model.visible(&key(k), now).is_some();
                model.delete(&key(k));
                assert_eq!(store.delete(key(k)).unwrap(), visible, "{when}");
            }
            Op::Clear => {
                store.clear().unwrap();
                model.clear();
                assert_eq!(store.stats().file_len, 64, "{when}");
            }
            Op::Purge => {
                let n = model.purge(now);
                assert_eq!(store.purge_expired().unwrap(), n, "{when}");
            }
            Op::Advance(ms) => c.advance(Duration::from_millis(u64::from(ms))),
            Op::Reopen => {
                drop(store);
                store = backing.open(&opts);
                model.reopen(now);
                assert_eq!(
                    store.len(),
                    model.map.len(),
                    "{when}: expired entries are dropped at open"
                );
            }
            Op::Sync => store.sync().unwrap(),
            Op::Touch(k, ttl) => {
                let renewed = store
                    .touch(key(k), Duration::from_millis(u64::from(ttl)))
                    .unwrap();
                assert_eq!(
                    renewed,
                    model.touch(&key(k), now + i64::from(ttl), now),
                    "{when}"
                );
            }
            Op::Compact => {
                let before = store.stats().file_len;
                let c = store.compact().unwrap();
                assert_eq!(c.file_len_before, before, "{when}");
                let st = store.stats();
                assert_eq!(st.file_len, c.file_len_after, "{when}");
                assert_eq!(
                    st.free_bytes + st.live_bytes + 64,
                    st.file_len,
                    "{when}: nothing held after compact"
                );
            }
        }
        let now = c.now();
        store
            .check_invariants()
            .unwrap_or_else(|e| panic!("{when}: {e}"));
        assert_eq!(store.len(), model.map.len(), "{when}: entry count");
        check_against_model(&store, &model, now, &when);
        // A fresh open of the bytes as they are now (what a crash would leave)
        // holds the same live entries.
        let snapshot = Arc::new(MemStorage::with_bytes(backing.bytes()));
        let fresh = Options::new()
            .read_only(true)
            .clock(c.clone())
            .open_on("snapshot.sfs", snapshot as Arc<dyn Storage>)
            .unwrap();
        assert_eq!(
            fresh.stats().corrupt_blocks,
            0,
            "{when}: the file has no damage"
        );
        let mut fk = fresh.keys();
        fk.sort();
        assert_eq!(fk, model.live_keys(now), "{when}: keys after a fresh open");
        for k in &fk {
            assert_eq!(
                fresh.get(k).unwrap().as_ref(),
                model.visible(k, now),
                "{when}: fresh open"
            );
        }
    }
    drop(store);
    // Everything survives a last reopen.
    let store = backing.open(&opts);
    model.reopen(c.now());
    store.check_invariants().unwrap();
    check_against_model(&store, &model, c.now(), "final reopen");
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

trait Now {
    fn now(&self) -> i64;
}

impl Now for Arc<ManualClock> {
    fn now(&self) -> i64 {
        use sfs::Clock;
        self.now_millis()
    }
}

proptest! {
    // PROPTEST_CASES=N runs more (CI runs the default of 64 per test).
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn file_store_matches_the_model(
        ops in proptest::collection::vec(op(), 1..150),
        cap in prop_oneof![Just(None), (1usize..8).prop_map(Some)],
        frag in prop_oneof![Just(0.5), Just(0.75), Just(1.0)],
    ) {
        run(ops, cap, frag, SyncPolicy::Never, false);
    }

    #[test]
    fn synced_store_matches_the_model(
        ops in proptest::collection::vec(op(), 1..150),
        cap in prop_oneof![Just(None), (1usize..8).prop_map(Some)],
        frag in prop_oneof![Just(0.5), Just(0.75), Just(1.0)],
    ) {
        // SyncPolicy::Always on an in-memory storage (whose sync is free):
        // old copies are freed at once instead of after a sync.
        run(ops, cap, frag, SyncPolicy::Always, true);
    }
}
