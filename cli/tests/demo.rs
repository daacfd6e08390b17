//! The README's first command works: `multinicctl demo` exits 0 and shows
//! each step's effect.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn demo_runs_the_whole_system_and_exits_zero() {
    let out = Command::new(env!("CARGO_BIN_EXE_multinicctl")).arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for needle in [
        "every row now reads netplan_success = 1",
        "rewrote",
        "removed",
        "files written on the node: 0",
        "3/3 nodes converged",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
}

#[test]
fn unreachable_controller_is_a_one_line_error_naming_the_address() {
    let out = Command::new(env!("CARGO_BIN_EXE_multinicctl"))
        .args(["--insecure", "--controller", "127.0.0.1:9", "--timeout", "2s", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("http://127.0.0.1:9"), "{stderr}");
}
