//! Any bytes through the inspection report and every sfs-dump rendering.
//! The body is `sfs_dump::fuzzing::inspect`, which `cargo test` also runs on the corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sfs_dump::fuzzing::inspect(data));
