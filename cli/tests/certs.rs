//! `multinicctl certs` makes a PKI that works as is: a controller serving
//! its certificate lets `multinicctl status` in with the operator
//! certificate, and refuses the agent certificate and no certificate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use multinic_controller::tls::TlsConfig;
use multinic_testkit::eventually;
use multinic_testkit::fleet::{TestController, sqlite_database};
use multinic_tls::{ServerTls, TrustDomain};

fn multinicctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_multinicctl")).env_clear().args(args).output().unwrap()
}

fn certs(dir: &Path, args: &[&str]) {
    let mut all = vec!["certs", "--dir", dir.to_str().unwrap()];
    all.extend(args);
    let out = multinicctl(&all);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_from_multinicctl_certs_work_for_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    certs(&pki, &["init"]);
    certs(&pki, &["controller", "--dns", "localhost", "--ip", "127.0.0.1"]);
    certs(&pki, &["agent", "--node", "Node-1.novalocal"]);
    certs(&pki, &["operator", "--name", "ops"]);
    for key in ["ca.key", "controller.key", "agent-node-1.key", "operator-ops.key"] {
        let mode = std::fs::metadata(pki.join(key)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    let again = multinicctl(&["certs", "--dir", pki.to_str().unwrap(), "init"]);
    assert!(!again.status.success(), "an existing CA is not replaced without --force");

    let (db, _pool) = sqlite_database(dir.path()).await;
    let server = ServerTls::from_files(
        &pki.join("controller.crt"),
        &pki.join("controller.key"),
        &pki.join("ca.crt"),
        Duration::from_secs(1),
    )
    .unwrap();
    let controller =
        TestController::start_mutual(&db, Duration::from_millis(100), TlsConfig::new(server, TrustDomain::default()))
            .await;
    eventually(Duration::from_secs(10), "first poll", || async { controller.fleet.db().status().synced.then_some(()) })
        .await;

    let address = controller.grpc.to_string();
    let status = |stem: &str| {
        let (cert, key) = (pki.join(format!("{stem}.crt")), pki.join(format!("{stem}.key")));
        multinicctl(&[
            "--controller",
            &address,
            "--ca",
            pki.join("ca.crt").to_str().unwrap(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "status",
        ])
    };
    let out = status("operator-ops");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let out = status("agent-node-1");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PermissionDenied") && stderr.contains("agent of node node-1"), "{stderr}");

    let out = multinicctl(&["--controller", &address, "status"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("requires mTLS: pass --ca, --tls-cert and --tls-key"), "{stderr}");
    controller.stop().await;
}
