//! multinic-agent: makes one node's secondary NICs match the desired set the
//! controller pushes, and reports how it went.
//!
//! ```text
//! start: roll back the journal ─▶ session (stream) ─▶ worker (commands)
//!   ─▶ reconcile: our files + kernel facts ─▶ plan (pure) ─▶ journal ─▶ write
//!   ─▶ apply ─▶ verify (or roll back) ─▶ report
//! every --drift-check-interval: check (read only) ─▶ repair what drifted
//!   (a scoped reconcile) ─▶ report
//! ```
//!
//! Errors are typed per module (thiserror); `anyhow` lives only in the
//! binary's edge (`main.rs`, [`args`]).
//!
//! The agent never talks to the database, never touches a file or NIC that
//! is not ours, and does nothing on a push identical to what it has, nor
//! at a drift check of a node that is as applied.

pub mod args;
pub mod backend;
pub mod backoff;
pub mod files;
pub mod hostns;
pub mod http;
pub mod journal;
pub mod kernel;
pub mod metrics;
pub mod plan;
pub mod reconcile;
pub mod session;
pub mod status;
#[cfg(feature = "test-hooks")]
pub mod test_hooks;
pub mod tls;
pub mod worker;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use multinic_proto::{DEFAULT_CAPACITY, NodeName};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backend::Backend;
use crate::files::HostFiles;
use crate::hostns::HostNamespaces;
use crate::journal::{Journal, JournalError};
use crate::kernel::LinkOps;
use crate::kernel::rtnl::Rtnetlink;
use crate::reconcile::{ApplyMode, Reconciler};
use crate::session::SessionConfig;
use crate::status::AgentStatus;
use crate::tls::{AgentTransport, TlsError};
use crate::worker::drift::DriftConfig;
use crate::worker::{ApplyAbandoned, Worker};

/// Everything a running agent needs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `http://host:port`, or `https://host:port` with TLS.
    pub controller: String,
    /// TLS (the binary's default) or plaintext (`--insecure`).
    pub transport: AgentTransport,
    pub node: NodeName,
    /// The host's `/`, as mounted in the pod (`/host`), or `/`.
    pub host_root: PathBuf,
    pub backend: &'static dyn Backend,
    pub apply: ApplyMode,
    pub capacity: u8,
    pub state_dir: PathBuf,
    pub http_listen: Option<SocketAddr>,
    /// The node's own addresses: the NICs holding them are never touched.
    pub node_ips: Vec<IpAddr>,
    /// The process whose namespaces host commands run in (the host's PID 1).
    pub host_pid: u32,
    /// An apply running longer makes the agent unready until it ends.
    pub apply_deadline: Duration,
    /// How often the node is checked for drift, and whether drift is repaired.
    pub drift: DriftConfig,
}

/// `--apply-deadline` by default: above what a slow host apply takes (the
/// host tool's 120 s limit, then up to 30 s for the daemon to settle).
pub const DEFAULT_APPLY_DEADLINE: Duration = Duration::from_secs(180);

impl AgentConfig {
    /// A config with defaults, for tests and the demo.
    pub fn new(controller: impl Into<String>, node: NodeName, host_root: impl Into<PathBuf>) -> Self {
        let host_root = host_root.into();
        Self {
            controller: controller.into(),
            transport: AgentTransport::Insecure,
            node,
            state_dir: host_root.join("var/lib/multinic"),
            host_root,
            backend: &backend::netplan::Netplan,
            apply: ApplyMode::None,
            capacity: DEFAULT_CAPACITY,
            http_listen: None,
            node_ips: Vec::new(),
            host_pid: HostNamespaces::HOST_PID,
            apply_deadline: DEFAULT_APPLY_DEADLINE,
            drift: DEFAULT_DRIFT,
        }
    }
}

/// `--drift-check-interval 60s --drift-repair=true`.
pub const DEFAULT_DRIFT: DriftConfig = DriftConfig { interval: Duration::from_secs(60), repair: true };

/// Why the agent stopped before its shutdown was asked for, or did not
/// stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("journal recovery panicked: {0}")]
    Recovery(#[source] tokio::task::JoinError),
    #[error("cannot bind the HTTP listener on {addr}: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Abandoned(#[from] ApplyAbandoned),
}

/// A running agent's handles.
#[derive(Debug, Clone)]
pub struct Agent {
    pub status: Arc<AgentStatus>,
    pub reconciler: Arc<Reconciler>,
}

impl Agent {
    /// Builds the agent. Netlink is opened here; when it cannot be (no
    /// permission), a dry run goes on without kernel facts and the other
    /// modes report every interface failed, saying why.
    pub fn new(config: &AgentConfig) -> Self {
        let files = HostFiles::new(&config.host_root);
        let journal = Journal::new(&config.state_dir);
        let host = HostNamespaces { pid: config.host_pid, timeout: Duration::from_secs(120) };
        let mut reconciler = Reconciler::new(config.backend, files, config.capacity, config.apply, journal)
            .with_node_ips(config.node_ips.clone())
            .with_host(host);
        #[cfg(feature = "test-hooks")]
        if let Some(pause) = test_hooks::PauseAfterWrite::from_env() {
            warn!(marker = %pause.marker.display(), "test hook: the agent pauses after its first write");
            reconciler = reconciler.with_pause_after_write(Some(pause));
        }
        match Rtnetlink::open() {
            Ok(kernel) => reconciler = reconciler.with_kernel(Arc::new(kernel) as Arc<dyn LinkOps>),
            Err(e) => {
                warn!(error = %e, apply = config.apply.as_str(), "no netlink access: kernel state is not read or changed")
            }
        }
        Self { status: Arc::new(AgentStatus::new()), reconciler: Arc::new(reconciler) }
    }

    /// Rolls back what a crash left half done, then runs until `shutdown`
    /// is cancelled.
    pub async fn run(&self, config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
        let AgentConfig {
            controller,
            transport,
            node,
            host_root,
            backend,
            apply,
            capacity,
            state_dir,
            http_listen,
            node_ips,
            host_pid,
            apply_deadline,
            drift,
        } = config;
        self.status.metrics().set_info(node.as_str(), backend.name(), apply.as_str());
        Journal::new(&state_dir).check(&host_root)?;
        // Before anything else, and before connecting: undo interrupted changes.
        let reconciler = self.reconciler.clone();
        let rolled_back =
            tokio::task::spawn_blocking(move || reconciler.recover()).await.map_err(AgentError::Recovery)?;
        if rolled_back > 0 {
            warn!(interfaces = rolled_back, state_dir = %state_dir.display(), "rolled back changes a crash interrupted");
        }
        if let Some(addr) = http_listen {
            let listener = TcpListener::bind(addr).await.map_err(|source| AgentError::Http { addr, source })?;
            let router = http::router(self.status.clone());
            let stop = shutdown.clone();
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await {
                    warn!(error = %e, "HTTP server failed");
                }
            });
        }
        info!(
            node = %node,
            controller = %controller,
            host_root = %host_root.display(),
            backend = backend.name(),
            apply = apply.as_str(),
            capacity,
            node_ips = ?node_ips,
            host_pid,
            apply_deadline = ?apply_deadline,
            drift_check_interval = ?drift.interval,
            drift_repair = drift.repair,
            "agent starting"
        );
        let tls = match &transport {
            AgentTransport::Insecure => {
                warn!("talking to the controller without TLS (--insecure)");
                None
            }
            AgentTransport::Tls(tls) => match tls.client(&node, &shutdown).await? {
                Some(client) => Some(client),
                None => return Ok(()),
            },
        };
        let session = SessionConfig {
            controller,
            tls,
            node,
            connect_timeout: Duration::from_secs(5),
            backoff_base: Duration::from_millis(250),
            backoff_cap: Duration::from_secs(30),
        };
        let worker = Worker::new(self.reconciler.clone(), self.status.clone(), apply_deadline, shutdown.clone())
            .with_drift(drift);
        session::run(session, worker, self.status.clone(), shutdown).await?;
        info!("agent stopped");
        Ok(())
    }
}

/// `/host` when it exists (inside the pod), else `/`.
pub fn default_host_root() -> PathBuf {
    let host = Path::new("/host");
    if host.is_dir() { host.to_path_buf() } else { PathBuf::from("/") }
}
