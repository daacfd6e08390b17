//! One whole benchmark run, phase by phase.
//!
//! Setup (MariaDB, rows, write log, certificates), then the bare-server
//! baseline, then the real controller: connect the fleet, memory, idle CPU
//! and queries, convergence rounds, restarts, and finally a few real agent
//! binaries. Every wait is bounded; a run that cannot finish says what it
//! was waiting for. Correctness failures (a row never recorded, a row
//! recorded 0) end the run with [`BenchError::Check`].

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use multinic_proto::NodeName;
use multinic_testkit::certs::TestPki;
use multinic_testkit::mariadb::{MariaDb, ServerOptions};
use nix::sys::signal::Signal;
use sqlx::{MySqlConnection, MySqlPool};
use tempfile::TempDir;

use crate::real_agents::RealAgentFleet;
use crate::report::{Initial, Memory, Report, Setup};
use crate::server::{ControllerOptions, ServerProcess};
use crate::sim::{SimAgent, SimFleet};
use crate::{BenchConfig, BenchError, db, identities, procfs, scenario};

/// Names of simulated nodes start with this; real agents' with `real-`.
pub const SIM_PREFIX: &str = "bench-";
const REAL_PREFIX: &str = "real-";

/// What the phases share.
pub(crate) struct Bench<'a> {
    pub config: &'a BenchConfig,
    pub db: MariaDb,
    pub pool: MySqlPool,
    pub root: MySqlConnection,
    pub pki: TestPki,
    pub dir: TempDir,
    pub agents: Vec<Arc<SimAgent>>,
    pub progress: &'a (dyn Fn(&str) + Sync),
}

/// Runs every phase and returns the report.
pub async fn run(config: &BenchConfig, progress: &(dyn Fn(&str) + Sync)) -> Result<Report, BenchError> {
    let load_start = loadavg();
    let limit = crate::raise_fd_limit((config.agents as u64) * 4 + 10_000);
    progress(&format!("open-file limit {limit}; starting MariaDB"));
    let server =
        ServerOptions { buffer_pool: config.db_buffer_pool.clone(), statement_history: Some(crate::dbtime::HISTORY) };
    let db = MariaDb::start_with(server).await.ok_or_else(|| BenchError::Setup("mariadbd is not installed".into()))?;
    let pool = db.pool().await;
    let mut root = db.root().await;
    db::install_write_log(&mut root).await?;
    let sim: Vec<(usize, String)> = (0..config.agents).map(|i| (i, format!("{SIM_PREFIX}{i:05}"))).collect();
    let real: Vec<(usize, String)> =
        (0..config.real_agents).map(|i| (config.agents + i, format!("{REAL_PREFIX}{i}"))).collect();
    if config.history_rows > 0 {
        progress(&format!(
            "adding {} history rows ({} % soft-deleted, the rest other nodes' active rows)",
            config.history_rows, config.history_deleted_percent
        ));
        db::seed_history(&pool, config.history_rows, config.history_deleted_percent, config.agents).await?;
    }
    if config.index_modified_at {
        progress("adding an index on multi_interface.modified_at");
        db::index_modified_at(&mut root).await?;
    }
    let rows = db::seed(&pool, &sim, config.interfaces_per_node).await?;
    db::seed(&pool, &real, config.interfaces_per_node).await?;
    progress(&format!("{rows} rows for {} nodes; making {} node certificates", sim.len(), sim.len()));
    let pki = TestPki::new();
    let names: Vec<NodeName> = sim
        .iter()
        .map(|(_, n)| n.parse().map_err(|e| BenchError::Setup(format!("node name {n}: {e}"))))
        .collect::<Result<_, _>>()?;
    let agents = identities::make_agents(pki.ca(), pki.trust_domain(), &names).await?;
    let dir = tempfile::Builder::new()
        .prefix("multinic-bench-")
        .tempdir()
        .map_err(|e| BenchError::Setup(format!("temp dir: {e}")))?;
    if config.keep {
        progress(&format!("logs and files in {} (kept)", dir.path().display()));
    }
    let mut bench = Bench { config, db, pool, root, pki, dir, agents, progress };
    let result = phases(&mut bench, real).await;
    if config.keep {
        bench.dir.disable_cleanup(true);
    }
    result.map(|mut report| {
        report.setup.rows = rows;
        report.setup.load_start = load_start;
        report
    })
}

/// The baseline, then every phase against the controller.
async fn phases(bench: &mut Bench<'_>, real: Vec<(usize, String)>) -> Result<Report, BenchError> {
    let config = bench.config;
    let progress = bench.progress;

    let mut report = Report {
        setup: Setup {
            agents: config.agents,
            rows: 0,
            interfaces_per_node: config.interfaces_per_node,
            history_rows: config.history_rows,
            history_deleted_percent: config.history_deleted_percent,
            db_buffer_pool: config.db_buffer_pool.clone(),
            index_modified_at: config.index_modified_at,
            poll_interval_ms: u64::try_from(config.poll_interval.as_millis()).unwrap_or(u64::MAX),
            full_read_interval_s: config.full_read_interval.map_or(60, |d| d.as_secs()),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            load_start: [0.0; 3],
            load_end: [0.0; 3],
        },
        ..Report::default()
    };
    if let Some(binary) = config.binaries.bench.clone() {
        report.baseline = Some(baseline(bench, &binary).await?);
        for agent in &bench.agents {
            agent.forget();
        }
    }

    let options = ControllerOptions {
        binary: config.binaries.controller.clone(),
        database_url: bench.db.url(),
        cert: bench.pki.controller().cert,
        key: bench.pki.controller().key,
        ca: bench.pki.ca_file(),
        trust_domain: bench.pki.trust_domain().to_string(),
        poll_interval: config.poll_interval,
        full_read_interval: config.full_read_interval,
        log: bench.dir.path().join("controller.log"),
        extra: Vec::new(),
    };
    let mut controller = ServerProcess::controller(&options, crate::server::free_addr()?)?;
    controller.wait_ready(config.timeout).await?;
    tokio::time::sleep(config.settle).await;
    let rss_idle = procfs::rss_bytes(controller.pid()?)?;

    progress(&format!("connecting {} agents to the controller", config.agents));
    let started = Instant::now();
    let fleet = SimFleet::start(&bench.agents, &controller.url(), config.connect_gate)?;
    let n = config.agents as u64;
    wait(config.timeout, "every agent connected to the controller", || async {
        Ok(controller.metrics().await?.agents_connected >= n && fleet.connected() >= config.agents)
    })
    .await?;
    let connect_s = started.elapsed().as_secs_f64();
    wait(config.timeout, "every row recorded after the first connect", || async {
        Ok(db::pending_rows(&bench.pool, SIM_PREFIX).await? == 0)
    })
    .await?;
    report.initial =
        Initial { connect_s, converge_s: started.elapsed().as_secs_f64(), pushes: controller.metrics().await?.pushes };
    tokio::time::sleep(config.settle).await;
    let rss_agents = procfs::rss_bytes(controller.pid()?)?;
    report.controller = memory(rss_idle, rss_agents, config.agents);
    progress(&format!("controller: {:.1} KB per agent; measuring idle", report.controller.per_agent_kb));

    (report.db_idle, report.controller_idle_cpu_percent, report.db_time_idle) =
        scenario::idle(bench, &controller).await?;
    let prepared = crate::dbtime::prepared(&mut bench.root).await?;
    report.convergence = scenario::convergence(bench, &controller, &mut report.db_change).await?;
    report.db_time_changes = crate::dbtime::kinds_between(&prepared, &crate::dbtime::prepared(&mut bench.root).await?);
    for signal in config.restarts.clone() {
        let (next, restart) = scenario::restart(bench, controller, &options, &fleet, signal).await?;
        controller = next;
        report.restarts.push(restart);
    }
    if config.real_agents > 0 {
        report.real_agents = Some(real_agents(bench, &controller, &real).await?);
    }
    fleet.stop().await;
    controller.stop(Signal::SIGTERM, Duration::from_secs(15)).await?;
    report.setup.load_end = loadavg();
    Ok(report)
}

/// The bare server holding the same streams.
async fn baseline(bench: &Bench<'_>, binary: &std::path::Path) -> Result<Memory, BenchError> {
    let config = bench.config;
    (bench.progress)(&format!("baseline: a bare tonic + rustls server with {} agents", config.agents));
    let log = bench.dir.path().join("baseline.log");
    let server = ServerProcess::baseline(binary, bench.pki.dir(), config.interfaces_per_node, &log)?;
    server.wait_ready(config.timeout).await?;
    tokio::time::sleep(config.settle).await;
    let idle = procfs::rss_bytes(server.pid()?)?;
    let fleet = SimFleet::start(&bench.agents, &server.url(), config.connect_gate)?;
    let reported = || bench.agents.iter().all(|a| a.reported_at().is_some());
    wait(config.timeout, "every agent answered the bare server's push", || async { Ok(reported()) }).await?;
    tokio::time::sleep(config.settle).await;
    let with = procfs::rss_bytes(server.pid()?)?;
    fleet.stop().await;
    server.stop(Signal::SIGKILL, Duration::from_secs(5)).await?;
    let memory = memory(idle, with, config.agents);
    (bench.progress)(&format!("baseline: {:.1} KB per agent", memory.per_agent_kb));
    Ok(memory)
}

/// A few real agent binaries, idle.
async fn real_agents(
    bench: &Bench<'_>,
    controller: &ServerProcess,
    real: &[(usize, String)],
) -> Result<crate::report::RealAgents, BenchError> {
    let config = bench.config;
    (bench.progress)(&format!("starting {} real agent binaries", real.len()));
    let nodes: Vec<String> = real.iter().map(|(_, n)| n.clone()).collect();
    let dir = bench.dir.path().join("real-agents");
    let fleet = RealAgentFleet::start(&config.binaries.agent, &controller.url(), &bench.pki, &nodes, &dir)?;
    wait(config.timeout, "the real agents' rows recorded", || async {
        Ok(db::pending_rows(&bench.pool, REAL_PREFIX).await? == 0)
    })
    .await?;
    tokio::time::sleep(config.settle).await;
    // Ten seconds are plenty for an idle agent (the idle window is long
    // only so that it holds a periodic full read).
    let measured = fleet.measure(config.idle_window.min(Duration::from_secs(10)), bench.db.port()).await?;
    fleet.stop().await;
    Ok(measured)
}

fn memory(without: u64, with: u64, agents: usize) -> Memory {
    let delta = i64::try_from(with).unwrap_or(i64::MAX) - i64::try_from(without).unwrap_or(i64::MAX);
    Memory {
        rss_without_agents_mb: without as f64 / 1_048_576.0,
        rss_with_agents_mb: with as f64 / 1_048_576.0,
        per_agent_kb: crate::stats::per_item(delta, agents) / 1024.0,
    }
}

/// Polls `check` every 50 ms until it says yes, for at most `timeout`.
pub(crate) async fn wait<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<(), BenchError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, BenchError>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Timeout { what: what.to_owned() });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut fields = text.split_whitespace().map(|f| f.parse().unwrap_or(0.0));
    [fields.next().unwrap_or(0.0), fields.next().unwrap_or(0.0), fields.next().unwrap_or(0.0)]
}
