//! The `inspect` fuzz target's corpus (`fuzz/corpus/inspect`, written by the
//! `sfs` package's `tests/fuzz_corpus.rs`), replayed on stable Rust through
//! the whole body the fuzzer runs: the library's report and every rendering
//! of `sfs-dump`, text and JSON.

use std::path::Path;

#[test]
fn every_inspect_corpus_file_passes_the_target() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/inspect");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 3, "a corpus of at least a few files");
    for f in files {
        let data = std::fs::read(&f).unwrap();
        let run = std::panic::catch_unwind(|| sfs_dump::fuzzing::inspect(&data));
        assert!(run.is_ok(), "{} fails the inspect target", f.display());
    }
}
