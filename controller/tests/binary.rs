//! The controller binary refuses to serve plaintext unless told to, and
//! says so when it is.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn controller() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_multinic-controller"));
    command.env_clear().args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--log-format", "text"]);
    command
}

#[test]
fn without_certificates_or_insecure_it_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("db.sqlite").display());
    let out = controller().args(["--database-url", &url]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("mTLS needs --tls-cert, --tls-key and --client-ca (or --insecure"), "{stderr}");
}

#[test]
fn insecure_serves_plaintext_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("db.sqlite").display());
    // The schema must exist for a SQLite database; the warning comes first anyway.
    let mut child = controller().args(["--database-url", &url, "--insecure"]).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        let warned =
            line.contains("WARN") && line.contains("plaintext") && line.contains("any peer can claim any node");
        seen.push(line);
        if warned || Instant::now() > deadline {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.iter().any(|l| l.contains("WARN") && l.contains("plaintext")), "{seen:#?}");
}
