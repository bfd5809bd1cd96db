//! Block headers and entries: decoding any bytes never panics; encode/decode round-trips.
//! The body is `sfs::fuzzing::entry`, which `cargo test` also runs on the corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sfs::fuzzing::entry(data));
