//! Random sequences of operations against a `HashMap` model with expiry and
//! LRU (`sfs::fuzzing::run`, the body of the `ops` fuzz target). After every
//! step: the store's invariants hold (blocks tile the file, the free list is
//! exactly the free blocks, no two free blocks are adjacent), every key reads
//! as the model says, and a fresh open of the file as it is now (what a
//! crash would leave) holds the same.

use proptest::prelude::*;
use sfs::fuzzing::{Backing, BatchItem, Op, Scenario, run};

fn op() -> impl Strategy<Value = Op> {
    let size = prop_oneof![
        Just(0u16),
        1u16..40,
        40u16..400,
        400u16..3000,
        Just(5000u16)
    ];
    let size2 = size.clone();
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
        2 => Just(Op::Crash),
        4 => (0u8..16, size2.clone(), any::<bool>()).prop_map(|(k, n, r)| Op::Cas(k, n, r)),
        3 => (0u8..16, size2).prop_map(|(k, n)| Op::PutIfAbsent(k, n)),
        3 => (0u8..16).prop_map(Op::Update),
        2 => (0u8..16).prop_map(Op::CasDelete),
        4 => proptest::collection::vec(batch_item(), 0..8).prop_map(Op::Batch),
    ]
}

fn batch_item() -> impl Strategy<Value = BatchItem> {
    prop_oneof![
        3 => (0u8..16, 0u16..3000).prop_map(|(k, n)| BatchItem::Put(k, n)),
        1 => (0u8..16).prop_map(BatchItem::Delete),
        1 => (0u8..16, 0u16..3000).prop_map(|(k, t)| BatchItem::Touch(k, t)),
    ]
}

fn scenario(always: bool) -> impl Strategy<Value = Scenario> {
    (
        proptest::collection::vec(op(), 1..150),
        prop_oneof![Just(None), (1usize..8).prop_map(Some)],
        prop_oneof![Just(0.5), Just(0.75), Just(1.0)],
        any::<bool>(),
    )
        .prop_map(move |(ops, cap, frag, frequent)| Scenario {
            cap,
            frag,
            always,
            frequent,
            ops,
        })
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

proptest! {
    // PROPTEST_CASES=N runs more (CI runs the default of 64 per test).
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn file_store_matches_the_model(s in scenario(false)) {
        // SyncPolicy::Never on a memory-mapped file: old copies of overwritten
        // keys wait for a sync before their space is reused.
        let dir = tempfile::tempdir().unwrap();
        run(&s, Backing::File(dir.path().join("store.sfs")));
    }

    #[test]
    fn synced_store_matches_the_model(s in scenario(true)) {
        // SyncPolicy::Always on in-memory storage (whose sync is free): old
        // copies are freed as soon as the new one is durable.
        run(&s, Backing::Mem);
    }

    #[test]
    fn scenarios_survive_their_byte_encoding(s in scenario(false)) {
        // The fuzzer's input format describes every scenario the property
        // tests generate, so corpus files can be made from them.
        prop_assert_eq!(Scenario::from_bytes(&s.to_bytes()), s);
    }
}
