//! `multinic-bench`: measures the controller, agents and database at fleet
//! scale and prints one table (or JSON).
//!
//! ```text
//! cargo run --release -p multinic-bench -- --agents 10000
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use multinic_bench::baseline::{self, BaselineOptions};
use multinic_bench::status_load::{self, StatusLoadConfig};
use multinic_bench::{BenchConfig, Binaries, Rounds, binaries, run};
use multinic_runtime::parse_duration;

/// Runs a private MariaDB, the real controller binary over mTLS and N
/// simulated agents, and prints convergence latency, memory and CPU, database
/// load, restart behaviour and the real agent's footprint.
#[derive(Debug, Parser)]
#[command(name = "multinic-bench", version, about)]
struct Args {
    /// Simulated agents (one node each).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..=60_000))]
    agents: u16,

    /// Interface rows per node.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=10))]
    interfaces_per_node: u8,

    /// Rows of history added before the run: soft-deleted rows of the
    /// simulated nodes, and active rows of nodes with no agent (other
    /// clusters sharing the table), all modified a day ago.
    #[arg(long, default_value_t = 0)]
    history_rows: usize,

    /// Of the history rows, the percentage soft-deleted.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    history_deleted_percent: u8,

    /// Add an index on multi_interface.modified_at first (the benchmark's
    /// own database; the controller never runs DDL), to measure what it
    /// buys an operator.
    #[arg(long)]
    index_modified_at: bool,

    /// The private MariaDB's --innodb-buffer-pool-size (a production
    /// server holds its tables in memory).
    #[arg(long, default_value = "1G")]
    db_buffer_pool: String,

    /// The controller's --poll-interval.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    poll_interval: Duration,

    /// The controller's --full-read-interval (its default when unset).
    #[arg(long, value_parser = parse_duration)]
    full_read_interval: Option<Duration>,

    /// Rounds of the 1-node, 1%-of-nodes and every-node changes.
    #[arg(long, num_args = 3, value_names = ["ONE", "PERCENT", "ALL"], default_values_t = [20, 5, 3])]
    rounds: Vec<usize>,

    /// Real agent binaries measured idle at the end.
    #[arg(long, default_value_t = 3)]
    real_agents: usize,

    /// How long idle CPU, idle statements and MariaDB's time on them are
    /// measured (longer than the full-read interval, so that the window
    /// holds a periodic full read; the real agents get at most 10 s).
    #[arg(long, default_value = "65s", value_parser = parse_duration)]
    idle_window: Duration,

    /// Skip the bare tonic server baseline.
    #[arg(long)]
    no_baseline: bool,

    /// The controller binary to measure (default: build it with cargo, in
    /// this benchmark's profile).
    #[arg(long, requires = "agent_bin")]
    controller_bin: Option<PathBuf>,

    /// The agent binary to measure (default: build it with cargo).
    #[arg(long, requires = "controller_bin")]
    agent_bin: Option<PathBuf>,

    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,

    /// Keep the run's folder (every process's log) and print where it is.
    #[arg(long)]
    keep: bool,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// How long `multinicctl status`, `get node`, `get nodes` and `diff` take with
    /// thousands of rejected rows on one node, and how long `/healthz`
    /// answers while they run.
    StatusLoad {
        /// Rejected rows (MTU 0) on the one dirty node.
        #[arg(long, default_value_t = 15_000)]
        bad_rows: usize,
        /// Healthy nodes beside it, two rows each.
        #[arg(long, default_value_t = 100)]
        good_nodes: usize,
        /// Runs of each command.
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// The controller binary (default: build it with cargo, in this
        /// benchmark's profile).
        #[arg(long, requires = "multinicctl_bin")]
        controller_bin: Option<PathBuf>,
        /// The multinicctl binary (default: build it with cargo).
        #[arg(long, requires = "controller_bin")]
        multinicctl_bin: Option<PathBuf>,
    },
    /// The bare tonic + rustls server the benchmark compares against
    /// (started by the benchmark itself).
    BaselineServer {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        ca: PathBuf,
        #[arg(long, default_value_t = 2)]
        interfaces: usize,
    },
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run_args(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("multinic-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_args(args: Args) -> anyhow::Result<()> {
    let Args {
        agents,
        interfaces_per_node,
        history_rows,
        history_deleted_percent,
        index_modified_at,
        db_buffer_pool,
        poll_interval,
        full_read_interval,
        rounds,
        real_agents,
        idle_window,
        no_baseline,
        controller_bin,
        agent_bin,
        json,
        keep,
        command,
    } = args;
    match command {
        Some(Command::BaselineServer { listen, cert, key, ca, interfaces }) => {
            baseline::serve(BaselineOptions { listen, cert, key, ca, interfaces }).await?;
            return Ok(());
        }
        Some(Command::StatusLoad { bad_rows, good_nodes, rounds, controller_bin, multinicctl_bin }) => {
            let (controller, multinicctl) = match (controller_bin, multinicctl_bin) {
                (Some(c), Some(m)) => (c, m),
                _ => {
                    eprintln!("building multinic-controller and multinicctl ({})", profile());
                    let [c, m] = binaries::build_bins(cfg!(debug_assertions), ["multinic-controller", "multinicctl"])?;
                    (c, m)
                }
            };
            let config = StatusLoadConfig {
                controller,
                multinicctl,
                bad_rows,
                good_nodes,
                rounds,
                timeout: Duration::from_secs(120),
            };
            let report = status_load::run(&config, &|line| eprintln!("[status-load] {line}")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.table());
            }
            return Ok(());
        }
        None => {}
    }
    let (controller, agent) = match (controller_bin, agent_bin) {
        (Some(c), Some(a)) => (c, a),
        _ => {
            eprintln!("building multinic-controller and multinic-agent ({})", profile());
            binaries::build(cfg!(debug_assertions))?
        }
    };
    let bench = (!no_baseline).then(std::env::current_exe).transpose()?;
    let mut config = BenchConfig::new(usize::from(agents), Binaries { controller, agent, bench });
    config.interfaces_per_node = usize::from(interfaces_per_node);
    config.history_rows = history_rows;
    config.history_deleted_percent = history_deleted_percent;
    config.db_buffer_pool = db_buffer_pool;
    config.index_modified_at = index_modified_at;
    config.poll_interval = poll_interval;
    config.full_read_interval = full_read_interval;
    config.rounds = Rounds { one_node: rounds[0], one_percent: rounds[1], all: rounds[2] };
    config.real_agents = real_agents;
    config.idle_window = idle_window;
    config.keep = keep;
    let report = run::run(&config, &|line| eprintln!("[bench] {line}")).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

fn profile() -> &'static str {
    if cfg!(debug_assertions) { "debug" } else { "release" }
}
