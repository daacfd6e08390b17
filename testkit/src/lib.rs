//! Test support shared by every crate's tests: real parts, started and
//! cleaned up by the test itself.
//!
//! - [`mariadb::MariaDb`]: a private `mariadbd` on a free port.
//! - [`netplan_generate`]: the real `netplan generate --root-dir` on a tree.
//! - [`netns`]: a network namespace set up as a node, inspected with `ip -j`.
//! - [`agent_process`]: the real agent binary run inside such a namespace.
//! - [`confined`]: a host in such a namespace whose real network daemon
//!   runs confined; [`networkd`]: systemd-networkd driven by netplan on it;
//!   [`networkmanager`]: NetworkManager as on RHEL, with libnm's keyfile
//!   reader ([`networkmanager::libnm_read`]) for every keyfile we render.
//! - [`e2e`]: MariaDB, the real controller and the real agent of one such
//!   node, for the end-to-end tests against real daemons.
//! - [`bystanders`]: what a node carries besides our NICs (a CNI's routes,
//!   a VIP, rules) and the snapshot that proves an apply left it alone.
//! - [`latency`]: one timed reconcile and percentiles, for the latency examples.
//! - [`fake_controller`]: a scripted controller that records what agents say.
//! - [`process`]: the real controller binary as a child (SIGKILL, SIGTERM).
//! - [`proxy`]: a Service stand-in routing to the ready replica.
//! - [`scrape`]: `/metrics` scraped and parsed.
//! - [`fleet`]: an in-process controller and agents over real sockets,
//!   plaintext or mTLS.
//! - [`feed`]: the controller's change detection driven tick by tick, and
//!   a real store whose full reads the test holds back ([`feed::HeldReads`]).
//! - [`certs`]: a throwaway CA and certificates for mTLS tests.
//! - [`token_review`]: a fake Kubernetes TokenReview endpoint.
//! - [`assert_golden`]: a rendered text against its golden file.
//!
//! A test that needs something this machine lacks (root, `mariadbd`,
//! `netplan`) calls [`require`]: on a developer machine it is skipped with a
//! loud message; under `CI=true` it fails, because CI must run everything.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod agent_process;
pub mod bystanders;
pub mod certs;
pub mod confined;
pub mod e2e;
pub mod fake_controller;
pub mod feed;
pub mod fleet;
pub mod latency;
pub mod mariadb;
pub mod netns;
pub mod networkd;
pub mod networkmanager;
pub mod process;
pub mod proxy;
pub mod rows;
pub mod scrape;
pub mod token_review;

pub use sqlx;

use std::future::Future;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Logs to stderr at the level in `TEST_LOG` (e.g. `TEST_LOG=debug`), when set:
/// `TEST_LOG=info cargo nextest run ... --no-capture`.
pub fn test_logging() {
    if let Ok(level) = std::env::var("TEST_LOG") {
        let _ = multinic_runtime::init_logging(multinic_runtime::LogFormat::Text, &level);
    }
}

/// Asserts that `actual` is the content of the golden file at `path`;
/// with `UPDATE_GOLDEN=1` in the environment it first writes `actual` there
/// (the one-command refresh: `UPDATE_GOLDEN=1 cargo nextest run -p <crate>`).
pub fn assert_golden(path: &Path, actual: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(actual, expected, "golden file {} differs; UPDATE_GOLDEN=1 refreshes it", path.display());
}

/// Whether we run in CI (`CI=true`), where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Returns `true` when `available`; otherwise skips loudly (developer
/// machine) or panics (CI) naming what is missing and how to get it.
pub fn require(available: bool, what: &str, how: &str) -> bool {
    if available {
        return true;
    }
    let message = format!("{what} is not available ({how})");
    if in_ci() {
        panic!("CI=true: cannot skip: {message}");
    }
    eprintln!("\n!!!!!!!! SKIPPED: {message} !!!!!!!!\n");
    false
}

/// Whether the process runs as root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// Whether `program` is on PATH (or an absolute path that exists).
pub fn have(program: &str) -> bool {
    which(program).is_some()
}

/// The full path of `program`, looking in PATH and the sbin folders.
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    if program.contains('/') {
        return Path::new(program).exists().then(|| program.into());
    }
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"])
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

/// Polls `check` until it returns `Some`, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the real `netplan generate --root-dir root` and returns its output on
/// failure. Every netplan file a test renders goes through this.
pub fn netplan_generate(root: &Path) -> Result<(), String> {
    let netplan = which("netplan").ok_or("netplan is not installed (apt-get install netplan.io)")?;
    let out = Command::new(netplan)
        .arg("generate")
        .arg("--root-dir")
        .arg(root)
        .output()
        .map_err(|e| format!("cannot run netplan: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("netplan generate failed ({}): {stderr}", out.status));
    }
    if stderr.contains("WARNING") {
        return Err(format!("netplan generate warned: {stderr}"));
    }
    Ok(())
}

/// Writes `contents` to `path` with mode 0600, as network daemons want
/// their configuration files (and as the agent writes its own).
pub fn write_0600(path: &Path, contents: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 0600");
}

/// Checks `netplan` is present, honouring the skip policy.
pub fn require_netplan() -> bool {
    require(have("netplan"), "netplan", "apt-get install -y netplan.io")
}

/// `GET path` over plain HTTP/1.1; returns the status code and the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    http_get_over(stream, path).await
}

/// `GET path` over plain HTTP/1.1 on a connection already made (e.g. inside
/// a test namespace); returns the status code and the body.
pub async fn http_get_over(mut stream: tokio::net::TcpStream, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write request");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read response");
    let code = response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (code, body)
}

/// A free TCP port on 127.0.0.1 (racy, fine for tests).
pub fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port")
}

/// An embedded SQLite database with the schema, for tests that need no MariaDB.
pub async fn sqlite_db(dir: &Path) -> (String, sqlx::SqlitePool) {
    let url = format!("sqlite://{}", dir.join("multinic.sqlite").display());
    multinic_controller::store::create_sqlite_schema(&url).await.expect("sqlite schema");
    let pool = sqlx::SqlitePool::connect(&url).await.expect("sqlite pool");
    (url, pool)
}

/// Like [`http_get`] but `None` when the server cannot be reached.
pub async fn http_get_checked(addr: std::net::SocketAddr, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    response.split_whitespace().nth(1).and_then(|c| c.parse().ok())
}

/// The Hello a fresh agent of `node` sends first (netplan, `--apply none`,
/// nothing applied yet), for tests that speak the agent protocol by hand.
pub fn hello_message(node: &str) -> multinic_proto::v1::AgentMessage {
    use multinic_proto::v1;
    v1::AgentMessage {
        kind: Some(v1::agent_message::Kind::Hello(v1::Hello {
            node_name: node.into(),
            agent_version: "test".into(),
            backend: "netplan".into(),
            apply_mode: "none".into(),
            ..Default::default()
        })),
    }
}
