//! Support for the tests of `sfs-dump`: the store tests' shared helpers
//! (`tests/common` of the `sfs` package: temporary stores, crafted files, a
//! real store's bytes), and one run of the tool on bytes.
#![allow(dead_code)]

#[path = "../../../tests/common/mod.rs"]
mod common;

#[allow(unused_imports)]
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

// ---- runs of the installed binary ------------------------------------------

/// Runs the `sfs-dump` binary with `args`, in a plain terminal setting (no
/// width from the environment, no colour).
pub fn sfs_dump_cmd(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_sfs-dump"))
        .args(args)
        .env_remove("COLUMNS")
        .env("NO_COLOR", "1")
        .output()
        .expect("run sfs-dump")
}

pub fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn code(o: &std::process::Output) -> i32 {
    o.status.code().expect("exited")
}

pub fn json(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", stdout(o)))
}
