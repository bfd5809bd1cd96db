//! Many threads on shared keys, checked against a model of real-time order;
//! and races between readers letting go of entries and `clear`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use sfs::{Options, SyncPolicy};

#[test]
fn a_reader_letting_go_of_a_deleted_entry_while_clear_runs() {
    // A zero-copy guard on a deleted entry returns the block's space when it
    // is dropped. Unpinning and returning the space were two steps: `clear`
    // could find no reader between them, cut the file back to its header,
    // and then get a block past the end of the file back in its free list.
    // A thread asking for stats keeps the space lock busy, which widens
    // that gap.
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(
        Options::new()
            .sync(SyncPolicy::Never)
            .open(dir.path().join("r.sfs"))
            .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let (s, stop) = (s.clone(), stop.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = s.stats();
            }
        })
    };
    for round in 0..4000 {
        s.put(b"other", [1u8; 100]).unwrap();
        s.put(b"k", [2u8; 3000]).unwrap();
        let guard = s.get_ref(b"k").unwrap().unwrap();
        assert!(s.delete(b"k").unwrap());
        assert_eq!(s.stats().reader_locked_blocks, 1);
        let go = Arc::new(Barrier::new(2));
        let clearer = {
            let (s, go) = (s.clone(), go.clone());
            thread::spawn(move || {
                go.wait();
                s.clear().unwrap();
            })
        };
        go.wait();
        drop(guard);
        clearer.join().unwrap();
        s.check_invariants()
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(s.stats().reader_locked_blocks, 0);
        assert_eq!(s.len(), 0);
    }
    stop.store(true, Ordering::Relaxed);
    busy.join().unwrap();
}
