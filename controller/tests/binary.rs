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

/// What the TLS port logs for connections that never become TLS, in the
/// peer's terms: silence, plaintext, a certificate it does not trust (named
/// by its subject and SANs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_refusals_say_what_the_peer_did_and_who_it_was() {
    use multinic_testkit::certs::{TestPki, channel};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let (url, _pool) = multinic_testkit::sqlite_db(dir.path()).await;
    let pki = TestPki::new();
    let files = pki.controller();
    let (grpc, http) = (multinic_testkit::free_addr(), multinic_testkit::free_addr());
    let log = dir.path().join("controller.log");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_multinic-controller"))
        .env_clear()
        .args(["--database-url", &url, "--log-format", "text", "--tls-handshake-timeout", "1s"])
        .args(["--listen", &grpc.to_string(), "--http-listen", &http.to_string()])
        .arg("--tls-cert")
        .arg(&files.cert)
        .arg("--tls-key")
        .arg(&files.key)
        .arg("--client-ca")
        .arg(pki.ca_file())
        .args(["--trust-domain", &pki.trust_domain().to_string()])
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    multinic_testkit::eventually(Duration::from_secs(30), "the controller serves", || async {
        (multinic_testkit::http_get_checked(http, "/readyz").await == Some(200)).then_some(())
    })
    .await;

    // Silence until the handshake timeout.
    let silent = tokio::net::TcpStream::connect(grpc).await.unwrap();
    // gRPC without TLS.
    let mut plain = tokio::net::TcpStream::connect(grpc).await.unwrap();
    plain.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    let _ = plain.read_to_end(&mut Vec::new()).await;
    // A certificate from a CA the controller does not trust.
    let stranger = TestPki::new();
    let mallory = stranger.operator("mallory");
    let tls = multinic_tls::ClientTls::from_files(&pki.ca_file(), &mallory.cert, &mallory.key, Duration::from_secs(1))
        .unwrap();
    // (TLS 1.3: the client may only learn of the refusal at its first call.)
    if let Ok(channel) = channel(&format!("https://{grpc}"), &tls).await {
        let mut client = multinic_proto::v1::fleet_service_client::FleetServiceClient::new(channel);
        assert!(client.get_summary(multinic_proto::v1::GetSummaryRequest {}).await.is_err());
    }

    let expected = [
        "dropped a connection: it sent nothing within 1s",
        "plaintext HTTP/2 (gRPC without TLS)",
        "UnknownIssuer (client certificate: subject CN=multinic operator/mallory, SAN spiffe://",
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut text = String::new();
    while Instant::now() < deadline {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if expected.iter().all(|e| text.contains(e)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for e in expected {
        assert!(text.contains(e), "{e:?} is not logged:\n{text}");
    }
    assert!(text.lines().filter(|l| l.contains("WARN")).count() >= 3, "{text}");
    drop(silent);
    let _ = child.kill().await;
}
