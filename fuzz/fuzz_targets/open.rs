//! Any bytes as a store file: opens cleanly or is refused untouched; reads back, accepts writes, reopens the same.
//! The body is `sfs::fuzzing::open`, which `cargo test` also runs on the corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sfs::fuzzing::open(data));
