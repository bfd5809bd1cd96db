//! A compacted copy of a store file, online or offline:
//!
//! ```sh
//! cargo run --example backup -- SOURCE.sfs DESTINATION.sfs
//! ```
//!
//! It opens `SOURCE` read-only (so it never changes it, and works on a file
//! no program has open, or one other read-only opens share) and writes the
//! copy with `Store::backup`: a store file holding every live entry once,
//! with no free space, synced and renamed into place. A program that has its
//! store open for writing calls `Store::backup` itself (the copy is taken
//! while it keeps serving). `sfs-dump` stays read-only: this is a separate
//! program.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [source, destination] = &args[..] else {
        eprintln!("usage: backup SOURCE.sfs DESTINATION.sfs");
        return ExitCode::from(2);
    };
    let copy = || -> sfs::Result<sfs::BackupReport> {
        let store = sfs::Options::new()
            .read_only(true)
            .create(false)
            .open(source)?;
        store.backup(destination)
    };
    match copy() {
        Ok(r) => {
            println!(
                "{destination}: {} entries, {} bytes, written in {:.1?}",
                r.entries, r.file_len, r.duration
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("backup: {e}");
            ExitCode::FAILURE
        }
    }
}
