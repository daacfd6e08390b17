//! `multinic-bench status-load`: what an operator waits for, and what
//! Kubernetes' liveness probe waits for meanwhile, when one node has
//! thousands of rejected rows.
//!
//! A private MariaDB with `bad_rows` rows of one node whose MTU is 0 (each
//! makes its MAC held and is listed as a rejected row), plus a few healthy
//! nodes; the real controller binary over mTLS; the real `multinicctl`
//! binary run `rounds` times for each of `status`, `get node <the node>`,
//! `get nodes`, `diff --node <the node>` and `diff` (wall time of the whole command: process start, TLS
//! handshake, the RPCs, printing). While they run, `/healthz` is asked every
//! 10 ms on a fresh connection; its latency is reported beside the same
//! probe with no command running. It measures and reports; it never asserts
//! a timing.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use multinic_testkit::certs::TestPki;
use multinic_testkit::mariadb::MariaDb;
use serde::Serialize;

use crate::server::{ControllerOptions, ServerProcess};
use crate::stats::Latency;
use crate::{BenchError, db};

/// The node whose rows are bad.
pub const DIRTY_NODE: &str = "dirty-node";

/// How to run it.
#[derive(Debug, Clone)]
pub struct StatusLoadConfig {
    pub controller: PathBuf,
    pub multinicctl: PathBuf,
    /// Rejected rows on [`DIRTY_NODE`].
    pub bad_rows: usize,
    /// Healthy nodes beside it (two rows each).
    pub good_nodes: usize,
    /// Runs of each command.
    pub rounds: usize,
    pub timeout: Duration,
}

/// What it measured.
#[derive(Debug, Clone, Serialize)]
pub struct StatusLoadReport {
    pub bad_rows: usize,
    pub good_nodes: usize,
    /// `multinicctl status` wall time.
    pub status: Latency,
    /// `multinicctl get node dirty-node` wall time.
    pub get_node: Latency,
    /// `multinicctl get nodes` wall time.
    pub get_nodes: Latency,
    /// `multinicctl diff --node dirty-node` wall time.
    pub diff_node: Latency,
    /// `multinicctl diff` (every node) wall time.
    pub diff: Latency,
    /// Bytes `diff` printed.
    pub diff_bytes: usize,
    /// `/healthz` with no command running.
    pub healthz_idle: Latency,
    /// `/healthz` while the commands run.
    pub healthz_busy: Latency,
    /// Bytes `status` printed (bounded lists keep it small).
    pub status_bytes: usize,
    pub cpus: usize,
    pub load_start: [f64; 3],
}

/// Runs the whole measurement.
pub async fn run(config: &StatusLoadConfig, progress: &(dyn Fn(&str) + Sync)) -> Result<StatusLoadReport, BenchError> {
    let load_start = crate::run::loadavg();
    let db = MariaDb::start().await.ok_or_else(|| BenchError::Setup("mariadbd is not installed".into()))?;
    let pool = db.pool().await;
    multinic_testkit::rows::insert_rejected_rows(&pool, DIRTY_NODE, 0xbd, config.bad_rows)
        .await
        .map_err(|source| BenchError::Sql { what: "insert rejected rows", source })?;
    let good: Vec<(usize, String)> = (0..config.good_nodes).map(|i| (i, format!("good-{i:03}"))).collect();
    db::seed(&pool, &good, 2).await?;
    progress(&format!("{} rejected rows on {DIRTY_NODE}, {} healthy nodes", config.bad_rows, config.good_nodes));

    let pki = TestPki::new();
    let dir = tempfile::Builder::new()
        .prefix("multinic-status-load-")
        .tempdir()
        .map_err(|e| BenchError::Setup(format!("temp dir: {e}")))?;
    let options = ControllerOptions {
        binary: config.controller.clone(),
        database_url: db.url(),
        cert: pki.controller().cert,
        key: pki.controller().key,
        ca: pki.ca_file(),
        trust_domain: pki.trust_domain().to_string(),
        poll_interval: Duration::from_secs(2),
        full_read_interval: None,
        log: dir.path().join("controller.log"),
        extra: Vec::new(),
    };
    let controller = ServerProcess::controller(&options, crate::server::free_addr()?)?;
    controller.wait_ready(config.timeout).await?;
    let http = controller.http.ok_or_else(|| BenchError::Setup("the controller has no HTTP address".into()))?;
    let operator = pki.operator("bench");
    let ctl = Ctl {
        binary: config.multinicctl.clone(),
        grpc: controller.grpc.to_string(),
        pki,
        operator,
        timeout: config.timeout,
    };

    progress("/healthz with nothing running");
    let healthz_idle = Latency::of(&probe_healthz(http, Duration::from_secs(2), None).await);
    let busy = Arc::new(AtomicBool::new(true));
    let prober = tokio::spawn(probe_healthz_until(http, busy.clone()));
    let mut status = Vec::new();
    let mut get_node = Vec::new();
    let mut get_nodes = Vec::new();
    let (mut diff_node, mut diff) = (Vec::new(), Vec::new());
    let (mut status_bytes, mut diff_bytes) = (0, 0);
    for round in 0..config.rounds {
        progress(&format!("round {} of {}", round + 1, config.rounds));
        let (took, bytes) = ctl.time(&["status"]).await?;
        status.push(took);
        status_bytes = bytes;
        get_node.push(ctl.time(&["get", "node", DIRTY_NODE]).await?.0);
        get_nodes.push(ctl.time(&["get", "nodes"]).await?.0);
        diff_node.push(ctl.time(&["diff", "--node", DIRTY_NODE]).await?.0);
        let (took, bytes) = ctl.time(&["diff"]).await?;
        diff.push(took);
        diff_bytes = bytes;
    }
    busy.store(false, Ordering::Relaxed);
    let healthz_busy = prober.await.map_err(|e| BenchError::Setup(format!("the /healthz prober failed: {e}")))?;
    Ok(StatusLoadReport {
        bad_rows: config.bad_rows,
        good_nodes: config.good_nodes,
        status: Latency::of(&status),
        get_node: Latency::of(&get_node),
        get_nodes: Latency::of(&get_nodes),
        diff_node: Latency::of(&diff_node),
        diff: Latency::of(&diff),
        diff_bytes,
        healthz_idle,
        healthz_busy: Latency::of(&healthz_busy),
        status_bytes,
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_start,
    })
}

impl StatusLoadReport {
    /// The report as a table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{} rejected rows on one node, {} healthy nodes; {} CPUs, load {:.1} at start\n\n",
            self.bad_rows, self.good_nodes, self.cpus, self.load_start[0]
        );
        out.push_str(&format!("{:<40} {:>6} {:>10} {:>10} {:>10}\n", "what", "n", "p50 ms", "p99 ms", "max ms"));
        for (what, l) in [
            ("multinicctl status", &self.status),
            (&format!("multinicctl get node {DIRTY_NODE}") as &str, &self.get_node),
            ("multinicctl get nodes", &self.get_nodes),
            (&format!("multinicctl diff --node {DIRTY_NODE}") as &str, &self.diff_node),
            ("multinicctl diff", &self.diff),
            ("/healthz, nothing running", &self.healthz_idle),
            ("/healthz, while the commands run", &self.healthz_busy),
        ] {
            out.push_str(&format!("{what:<40} {:>6} {:>10.1} {:>10.1} {:>10.1}\n", l.n, l.p50_ms, l.p99_ms, l.max_ms));
        }
        out.push_str(&format!(
            "\nmultinicctl status printed {} bytes, multinicctl diff {} bytes\n",
            self.status_bytes, self.diff_bytes
        ));
        out
    }
}

/// `multinicctl` with an operator certificate.
struct Ctl {
    binary: PathBuf,
    grpc: String,
    pki: TestPki,
    operator: multinic_testkit::certs::CertFiles,
    timeout: Duration,
}

impl Ctl {
    /// Runs `multinicctl args` and returns its wall time and output size;
    /// an exit code other than 0 or 2 (not converged) is an error.
    async fn time(&self, args: &[&str]) -> Result<(Duration, usize), BenchError> {
        let started = Instant::now();
        let out = tokio::process::Command::new(&self.binary)
            .env_clear()
            .args(["--controller", &self.grpc, "--tls-server-name", "localhost"])
            .arg("--ca")
            .arg(self.pki.ca_file())
            .arg("--tls-cert")
            .arg(&self.operator.cert)
            .arg("--tls-key")
            .arg(&self.operator.key)
            .args(["--timeout", &format!("{}s", self.timeout.as_secs().max(1))])
            .args(args)
            .output()
            .await
            .map_err(|e| BenchError::Setup(format!("cannot run {}: {e}", self.binary.display())))?;
        let took = started.elapsed();
        match out.status.code() {
            Some(0 | 2) => Ok((took, out.stdout.len())),
            _ => Err(BenchError::Check(format!(
                "multinicctl {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))),
        }
    }
}

/// `/healthz` every 10 ms for `window` (or until `until` turns false).
async fn probe_healthz(http: std::net::SocketAddr, window: Duration, until: Option<Arc<AtomicBool>>) -> Vec<Duration> {
    let deadline = Instant::now() + window;
    let mut samples = Vec::new();
    loop {
        let more = match &until {
            Some(flag) => flag.load(Ordering::Relaxed),
            None => Instant::now() < deadline,
        };
        if !more {
            return samples;
        }
        let started = Instant::now();
        if crate::server::http_get(http, "/healthz").await.is_ok_and(|(code, _)| code == 200) {
            samples.push(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn probe_healthz_until(http: std::net::SocketAddr, busy: Arc<AtomicBool>) -> Vec<Duration> {
    probe_healthz(http, Duration::ZERO, Some(busy)).await
}
