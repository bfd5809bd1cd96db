//! Any bytes as a sequence of store operations, checked against a model after every step.
//! The body is `sfs::fuzzing::ops`, which `cargo test` also runs on the corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sfs::fuzzing::ops(data));
