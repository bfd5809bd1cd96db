//! The multi-process example: three `sfs-raft-kv node` processes on
//! localhost, the leader killed with SIGKILL while a client writes; every
//! acknowledged write must be on every node afterwards (the killed one
//! restarted from its data directory).

use std::process::Command;

#[test]
fn kill_9_of_the_leader_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sfs-raft-kv"))
        .arg("demo")
        .arg(dir.path())
        .arg("90")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("kill -9 of the leader"), "{stdout}");
    assert!(stdout.contains("no acknowledged write lost"), "{stdout}");
    // Each of the three nodes was checked.
    assert_eq!(
        stdout.matches("0 acknowledged writes missing").count(),
        3,
        "{stdout}"
    );
}
