//! multinic-bench: how the whole system behaves at fleet scale, measured
//! with real parts and printed as one table.
//!
//! ```text
//! MariaDB (private mariadbd) ◀── multinic-controller (the release binary, a child process, mTLS)
//!    ▲ write log (trigger)                   ▲ one Sync stream per node
//!    │                                       │
//! this process: OpenStack-side changes, N simulated agents (real gRPC + rustls),
//!               /proc and USER_STATISTICS readings, the report
//! ```
//!
//! The library holds the whole run ([`run::run`]) so that a small run is
//! part of the test suite; the binary only parses flags and prints. It
//! never asserts a timing: it measures and reports. It never runs against
//! any database but the private one it starts.

pub mod baseline;
pub mod binaries;
pub mod db;
pub mod dbtime;
pub mod identities;
pub mod procfs;
pub mod real_agents;
pub mod report;
pub mod run;
mod scenario;
pub mod server;
pub mod sim;
pub mod stats;
pub mod status_load;
pub mod waves;

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can stop a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("setup: {0}")]
    Setup(String),
    #[error("timed out waiting for {what}")]
    Timeout { what: String },
    #[error("{what}: {source}")]
    Sql {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot read {}: {source}", path.display())]
    Proc {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse {what}: {text:?}")]
    Parse { what: String, text: String },
    #[error("the run went wrong: {0}")]
    Check(String),
}

/// How many rounds each change scenario runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rounds {
    pub one_node: usize,
    pub one_percent: usize,
    pub all: usize,
}

/// The binaries under test.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub controller: PathBuf,
    pub agent: PathBuf,
    /// This benchmark's own binary (for the `baseline-server` subcommand);
    /// `None` skips the baseline.
    pub bench: Option<PathBuf>,
}

/// One benchmark run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub agents: usize,
    pub interfaces_per_node: usize,
    /// Rows of history added before the run (see [`db::seed_history`]).
    pub history_rows: usize,
    /// Of those, the share soft-deleted, in percent; the rest are active
    /// rows of nodes that have no agent here.
    pub history_deleted_percent: u8,
    /// The private MariaDB's `--innodb-buffer-pool-size`.
    pub db_buffer_pool: String,
    /// Add an index on `modified_at` before the run (the benchmark's own
    /// database only).
    pub index_modified_at: bool,
    pub poll_interval: Duration,
    /// The controller's `--full-read-interval` (left at its default if `None`).
    pub full_read_interval: Option<Duration>,
    pub rounds: Rounds,
    /// Instances of the real agent binary measured at the end.
    pub real_agents: usize,
    /// How long idle CPU, idle queries and database time, and the real
    /// agents, are measured (longer than the full-read interval, so that
    /// the window holds a periodic full read).
    pub idle_window: Duration,
    /// Pause before memory is read, so that bursts have settled.
    pub settle: Duration,
    /// Handshakes in flight while the fleet first connects.
    pub connect_gate: usize,
    /// Restarts to measure: SIGTERM, SIGKILL.
    pub restarts: Vec<nix::sys::signal::Signal>,
    /// Upper bound of any single wait.
    pub timeout: Duration,
    /// Keep the run's folder (logs of every process) after the run.
    pub keep: bool,
    pub binaries: Binaries,
}

impl BenchConfig {
    /// The defaults of the command line, for `agents` agents.
    pub fn new(agents: usize, binaries: Binaries) -> Self {
        Self {
            agents,
            interfaces_per_node: 2,
            history_rows: 0,
            history_deleted_percent: 50,
            db_buffer_pool: "1G".into(),
            index_modified_at: false,
            poll_interval: Duration::from_secs(2),
            full_read_interval: None,
            rounds: Rounds { one_node: 20, one_percent: 5, all: 3 },
            real_agents: 3,
            idle_window: Duration::from_secs(65),
            settle: Duration::from_secs(3),
            connect_gate: 256,
            restarts: vec![nix::sys::signal::Signal::SIGTERM, nix::sys::signal::Signal::SIGKILL],
            timeout: Duration::from_secs(180),
            keep: false,
            binaries,
        }
    }
}

/// Lets the process hold `wanted` open files (raising the hard limit too,
/// when allowed); returns the soft limit now in force. Children inherit it.
pub fn raise_fd_limit(wanted: u64) -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return 0 };
    if soft >= wanted {
        return soft;
    }
    if setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted.max(hard)).is_ok() {
        return wanted;
    }
    let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    getrlimit(Resource::RLIMIT_NOFILE).map_or(soft, |(s, _)| s)
}
