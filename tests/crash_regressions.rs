//! Small crash scenarios, one per bug the crash-at-every-write test found:
//! each runs a few operations on a recording storage, rebuilds the file as
//! a crash at every event of the operation under test would leave it, and
//! checks what the key (or keys) may read.

use std::sync::Arc;

use sfs::testing::{FaultStorage, MemStorage, Recording, Storage};
use sfs::{Options, Store, SyncPolicy};

/// A store on a recording storage.
fn store(policy: SyncPolicy, cap: Option<usize>) -> (Arc<FaultStorage>, Options, Store) {
    let fs = Arc::new(FaultStorage::new());
    let mut opts = Options::new().sync(policy);
    if let Some(c) = cap {
        opts = opts.max_entries(c);
    }
    let s = opts
        .open_on("r.sfs", fs.clone() as Arc<dyn Storage>)
        .unwrap();
    (fs, opts, s)
}

/// Which file images to try.
#[derive(Clone, Copy, PartialEq)]
enum Crashes {
    /// Process crashes and torn writes.
    Process,
    /// Those, and power losses.
    All,
}

/// Every file a crash during events `from..to` may leave.
fn images(rec: &Recording, from: usize, to: usize, which: Crashes) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for k in from..=to {
        v.push((format!("crash after event {k}"), rec.after(k)));
        if k < to {
            for keep in rec.tear_points(k) {
                v.push((format!("event {k} torn at {keep}"), rec.torn(k, keep)));
            }
        }
        if which == Crashes::All {
            for seed in 0..40 {
                v.push((
                    format!("power loss after event {k}, seed {seed}"),
                    rec.power_loss(k, seed),
                ));
            }
        }
    }
    v
}

/// Opens each image and checks that `key` reads one of `allowed`.
fn check(opts: &Options, imgs: &[(String, Vec<u8>)], checks: &[(&[u8], &[Option<&[u8]>])]) {
    for (what, bytes) in imgs {
        let mem = Arc::new(MemStorage::with_bytes(bytes.clone()));
        let s = opts
            .open_on("r.sfs", mem as Arc<dyn Storage>)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        s.check_invariants().unwrap();
        for (key, allowed) in checks {
            let got = s.get(key).unwrap();
            assert!(
                allowed.contains(&got.as_deref()),
                "{what}: {:?} reads {:?}, allowed {allowed:?}",
                String::from_utf8_lossy(key),
                got.as_deref().map(String::from_utf8_lossy)
            );
        }
    }
}

#[test]
fn a_delete_cut_short_never_brings_back_an_older_copy() {
    // Under Never the old copy of an overwritten key stays valid until a sync
    // covers the new one. A delete frees both; freeing the newest first let a
    // crash in between bring the older value back.
    let (fs, opts, s) = store(SyncPolicy::Never, None);
    s.put(b"k", b"old").unwrap();
    s.sync().unwrap();
    s.put(b"k", b"new").unwrap();
    let from = fs.event_count();
    s.delete(b"k").unwrap();
    let to = fs.event_count();
    std::mem::forget(s); // a crash: no close
    let imgs = images(&fs.recording(), from, to, Crashes::Process);
    check(&opts, &imgs, &[(b"k", &[Some(b"new"), None])]);
}
