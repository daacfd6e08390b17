//! The real `multinic-controller` binary as a child process, for tests that
//! kill it (SIGKILL) or stop it (SIGTERM) like Kubernetes would.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

/// The `multinic-controller` binary of the same build as `sibling`, a binary
/// of another package (a test's `env!("CARGO_BIN_EXE_multinic-agent")`):
/// cargo puts both in the same folder. Tests that run both real binaries use
/// it; `cargo nextest run --workspace` (what CI runs) builds both.
pub fn controller_beside(sibling: &str) -> PathBuf {
    let path = Path::new(sibling).with_file_name("multinic-controller");
    assert!(
        path.is_file(),
        "{} is missing: build it first (cargo build -p multinic-controller), or run the whole workspace's tests",
        path.display()
    );
    path
}

/// A running controller process.
#[derive(Debug)]
pub struct ControllerProcess {
    child: Child,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    log: PathBuf,
}

impl ControllerProcess {
    /// Starts `binary` (the test's `CARGO_BIN_EXE_multinic-controller`) on
    /// `grpc`, insecure, with `extra` flags; its log goes to `log`.
    pub async fn start(binary: &Path, database_url: &str, grpc: SocketAddr, log: &Path, extra: &[&str]) -> Self {
        let http = crate::free_addr();
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("controller log");
        let child = Command::new(binary)
            .args(["--database-url", database_url, "--insecure", "--log-format", "text", "--log-level", "info"])
            .args(["--listen", &grpc.to_string(), "--http-listen", &http.to_string()])
            .args(["--poll-interval", "200ms", "--removal-warmup", "1s", "--drain-timeout", "5s"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn multinic-controller");
        Self { child, grpc, http, log: log.to_path_buf() }
    }

    /// `http://grpc` for agents.
    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Whether `/readyz` answers 200.
    pub async fn ready(&self) -> bool {
        crate::http_get_checked(self.http, "/readyz").await == Some(200)
    }

    /// Waits for `/readyz` to answer 200.
    pub async fn wait_ready(&self) {
        crate::eventually(Duration::from_secs(30), "the controller process is ready", || async {
            self.ready().await.then_some(())
        })
        .await;
    }

    /// SIGKILL: no shutdown, no lock release, streams cut.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM, then waits for the exit (at most `deadline`).
    pub async fn terminate(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let pid = self.child.id()?;
        let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        tokio::time::timeout(deadline, self.child.wait()).await.ok()?.ok()
    }

    /// The process's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
