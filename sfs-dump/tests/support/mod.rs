//! Support for the tests of `sfs-dump`: the store tests' shared helpers
//! (`tests/common` of the `sfs` package: temporary stores, crafted files, a
//! real store's bytes), and one run of the tool on bytes.
#![allow(dead_code)]

#[path = "../../../tests/common/mod.rs"]
mod common;

pub use common::*;

/// The output of one `sfs_dump::run` on bytes.
pub struct DumpRun {
    pub result: Result<sfs_dump::Status, sfs_dump::Failure>,
    /// Standard output as bytes, and as text.
    pub raw: Vec<u8>,
    pub out: String,
    pub err: String,
}

pub fn dump_bytes(bytes: &[u8], req: &sfs_dump::Request) -> DumpRun {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let result = sfs_dump::run(bytes, req, &mut out, &mut err, None);
    DumpRun {
        result,
        out: String::from_utf8_lossy(&out).into_owned(),
        raw: out,
        err: String::from_utf8_lossy(&err).into_owned(),
    }
}
