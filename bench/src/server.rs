//! The servers under measurement as child processes: the real
//! `multinic-controller` binary, and the bare tonic server baseline (this
//! benchmark's own binary, `baseline-server` subcommand).
//!
//! Child processes, so that `/proc/<pid>` accounts for exactly one server's
//! memory and CPU. Their logs go to files in the run's folder. A child is
//! killed when its handle drops; nothing here outlives the benchmark.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::BenchError;

/// A server process.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    pub grpc: SocketAddr,
    /// The controller's `/metrics` address (none for the baseline).
    pub http: Option<SocketAddr>,
    pub log: PathBuf,
}

/// How to start the controller.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    pub binary: PathBuf,
    pub database_url: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub trust_domain: String,
    pub poll_interval: Duration,
    /// `--full-read-interval`, when the binary has it.
    pub full_read_interval: Option<Duration>,
    pub log: PathBuf,
    /// More flags (e.g. `--rollout-threshold`), when the binary has them.
    pub extra: Vec<String>,
}

impl ServerProcess {
    /// Starts the controller on `grpc` (a fresh HTTP port each time).
    pub fn controller(options: &ControllerOptions, grpc: SocketAddr) -> Result<Self, BenchError> {
        let http = free_addr()?;
        let mut cmd = Command::new(&options.binary);
        cmd.args(["--database-url", &options.database_url])
            .args(["--listen", &grpc.to_string(), "--http-listen", &http.to_string()])
            .args(["--poll-interval", &format!("{}ms", options.poll_interval.as_millis())])
            .arg("--tls-cert")
            .arg(&options.cert)
            .arg("--tls-key")
            .arg(&options.key)
            .arg("--client-ca")
            .arg(&options.ca)
            .args(["--trust-domain", &options.trust_domain, "--log-format", "json", "--log-level", "info"]);
        if let Some(every) = options.full_read_interval {
            cmd.args(["--full-read-interval", &format!("{}ms", every.as_millis())]);
        }
        cmd.args(&options.extra);
        let child = spawn(cmd, &options.log)?;
        Ok(Self { child, grpc, http: Some(http), log: options.log.clone() })
    }

    /// Starts the bare tonic + rustls server (`bench_binary baseline-server`).
    pub fn baseline(bench_binary: &Path, pki: &Path, interfaces: usize, log: &Path) -> Result<Self, BenchError> {
        let grpc = free_addr()?;
        let mut cmd = Command::new(bench_binary);
        cmd.args(["baseline-server", "--listen", &grpc.to_string(), "--interfaces", &interfaces.to_string()])
            .arg("--cert")
            .arg(pki.join("controller.crt"))
            .arg("--key")
            .arg(pki.join("controller.key"))
            .arg("--ca")
            .arg(pki.join("ca.crt"));
        let child = spawn(cmd, log)?;
        Ok(Self { child, grpc, http: None, log: log.to_owned() })
    }

    pub fn pid(&self) -> Result<u32, BenchError> {
        self.child.id().ok_or_else(|| BenchError::Setup("the server process has exited".into()))
    }

    /// `https://grpc` for agents.
    pub fn url(&self) -> String {
        format!("https://{}", self.grpc)
    }

    /// Waits until the gRPC port accepts connections (and, for the
    /// controller, `/readyz` says ready).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), BenchError> {
        let deadline = Instant::now() + timeout;
        loop {
            let up = match self.http {
                Some(http) => http_get(http, "/readyz").await.is_ok_and(|(code, _)| code == 200),
                None => tokio::net::TcpStream::connect(self.grpc).await.is_ok(),
            };
            if up {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BenchError::Timeout { what: format!("server ready (log: {})", self.log.display()) });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The controller's metrics.
    pub async fn metrics(&self) -> Result<Metrics, BenchError> {
        let http = self.http.ok_or_else(|| BenchError::Setup("the baseline has no metrics".into()))?;
        let (_, body) = http_get(http, "/metrics").await?;
        Ok(Metrics::parse(&body))
    }

    /// Sends `signal` and waits for the exit (SIGKILL after `deadline`).
    pub async fn stop(mut self, signal: nix::sys::signal::Signal, deadline: Duration) -> Result<(), BenchError> {
        let pid = self.pid()?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
        nix::sys::signal::kill(pid, signal).map_err(|e| BenchError::Setup(format!("kill {pid}: {e}")))?;
        if tokio::time::timeout(deadline, self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
        Ok(())
    }
}

fn spawn(mut cmd: Command, log: &Path) -> Result<Child, BenchError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|source| BenchError::Proc { path: log.to_owned(), source })?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| BenchError::Setup(format!("cannot start {:?}: {e}", cmd.as_std().get_program())))
}

/// The controller metrics the benchmark reads.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Metrics {
    pub pushes: u64,
    pub agents_connected: u64,
    pub converged: u64,
    pub rows_recorded: u64,
    /// Database reads beyond the per-tick probe (changed rows, subnets,
    /// whole fleet).
    pub reads: u64,
}

impl Metrics {
    /// From the Prometheus text format.
    pub fn parse(text: &str) -> Self {
        let value = |name: &str| -> u64 {
            text.lines()
                .filter(|l| l.starts_with(name))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        };
        Self {
            pushes: value("multinic_controller_pushes_total "),
            agents_connected: value("multinic_controller_agents_connected "),
            converged: value("multinic_controller_nodes{state=\"converged\"} "),
            rows_recorded: value("multinic_controller_rows_recorded_total{"),
            reads: ["changed", "subnets", "full"]
                .iter()
                .map(|kind| value(&format!("multinic_controller_db_reads_total{{kind=\"{kind}\"}} ")))
                .sum(),
        }
    }
}

/// A free loopback port.
pub fn free_addr() -> Result<SocketAddr, BenchError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| BenchError::Setup(format!("no free port: {e}")))
}

/// `GET path` over HTTP/1.1: status code and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), BenchError> {
    let io = |e: std::io::Error| BenchError::Setup(format!("GET http://{addr}{path}: {e}"));
    let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(io)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.map_err(io)?;
    let code = response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((code, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_metrics_it_needs() {
        let text = "# HELP x\nmultinic_controller_pushes_total 12\nmultinic_controller_agents_connected 3\n\
            multinic_controller_nodes{state=\"converged\"} 2\nmultinic_controller_nodes{state=\"pending\"} 1\n\
            multinic_controller_rows_recorded_total{value=\"1\"} 5\nmultinic_controller_rows_recorded_total{value=\"0\"} 1\n\
            multinic_controller_db_reads_total{kind=\"probe\"} 40\nmultinic_controller_db_reads_total{kind=\"changed\"} 3\n\
            multinic_controller_db_reads_total{kind=\"full\"} 2\n";
        let want = Metrics { pushes: 12, agents_connected: 3, converged: 2, rows_recorded: 6, reads: 5 };
        assert_eq!(Metrics::parse(text), want);
    }
}
