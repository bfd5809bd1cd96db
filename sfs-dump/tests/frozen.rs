//! `sfs-dump` on the frozen store files of format version 1
//! (`tests/frozen/v1` of the `sfs` package): every case of
//! `tests/frozen/cases` gives, byte for byte, the standard output, standard
//! error and exit status that the sfs-dump of release 0.1 gave
//! (`tests/frozen/capture.sh` captured them). A change of the output is a
//! change of the tool's interface: recapture, and say so.

use std::path::Path;
use std::process::Command;

#[test]
fn every_frozen_case_prints_what_release_0_1_printed() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let expected = here.join("tests/frozen");
    let root = here.parent().expect("the workspace root");
    let cases = std::fs::read_to_string(expected.join("cases")).unwrap();
    let mut failures = Vec::new();
    let mut count = 0;
    for line in cases.lines() {
        let mut words = line.split(' ');
        let name = words.next().unwrap();
        let status: i32 = words.next().unwrap().parse().unwrap();
        let args: Vec<&str> = words.collect();
        let o = Command::new(env!("CARGO_BIN_EXE_sfs-dump"))
            .args(&args)
            .current_dir(root)
            .env("COLUMNS", "80")
            .env_remove("NO_COLOR")
            .output()
            .unwrap();
        let out = std::fs::read(expected.join(format!("{name}.out"))).unwrap();
        let err = std::fs::read(expected.join(format!("{name}.err"))).unwrap_or_default();
        if o.status.code() != Some(status) {
            failures.push(format!(
                "{name}: exit {:?}, expected {status}",
                o.status.code()
            ));
        }
        if o.stdout != out {
            failures.push(format!(
                "{name}: stdout differs; got:\n{}",
                String::from_utf8_lossy(&o.stdout)
            ));
        }
        if o.stderr != err {
            failures.push(format!(
                "{name}: stderr differs; got:\n{}",
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        count += 1;
    }
    assert!(count >= 30, "the cases file lists every case");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
