//! Command-line flags of `multinic-agent`; every flag also reads an
//! environment variable.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;
use multinic_proto::runtime::LogFormat;
use multinic_proto::{DEFAULT_CAPACITY, MAX_CAPACITY, NodeName};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backend::{BackendChoice, detect_backend};
use crate::reconcile::ApplyMode;
use crate::{Agent, AgentConfig, controller_url, default_host_root};

/// Applies this node's secondary NICs as the multinic controller says:
/// renders netplan or wicked files, names NICs multinic0..N by MAC, and
/// reports the outcome.
#[derive(Debug, Parser)]
#[command(name = "multinic-agent", version, about, long_about = None)]
pub struct Args {
    /// The controller's gRPC address: host:port or a URL.
    #[arg(long, env = "MULTINIC_CONTROLLER")]
    pub controller: String,

    /// This node's name (matched against attached_node_name on its short,
    /// lower-case form). Default: the short host name.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// Where the host's / is mounted. Default: /host if it exists, else /.
    #[arg(long, env = "MULTINIC_HOST_ROOT")]
    pub host_root: Option<PathBuf>,

    /// Network configuration backend: auto (from the host's /etc/os-release), netplan or wicked.
    #[arg(long, env = "MULTINIC_BACKEND", default_value = "auto")]
    pub backend: BackendChoice,

    /// How changes are applied; each is verified through netlink and rolled
    /// back per interface on failure. host: write the files, rename by MAC
    /// through netlink, then run `netplan apply` or `wicked ifreload` in the
    /// host's namespaces (entered through PID 1; needs hostPID). netlink:
    /// write the files and set name, MTU, addresses and link state directly
    /// (no network daemon needed). none: render the files only (dry run).
    #[arg(long, env = "MULTINIC_APPLY", default_value = "host")]
    pub apply: ApplyMode,

    /// How many multinicN names this node has (multinic0..multinic{N-1}).
    #[arg(long, env = "MULTINIC_CAPACITY", default_value_t = DEFAULT_CAPACITY,
          value_parser = clap::value_parser!(u8).range(1..=i64::from(MAX_CAPACITY)))]
    pub capacity: u8,

    /// Where the agent keeps its journal (never where netplan or wicked read).
    #[arg(long, env = "MULTINIC_STATE_DIR", default_value = "/var/lib/multinic")]
    pub state_dir: PathBuf,

    /// The node's own addresses, comma-separated (e.g. the pod's
    /// status.hostIP): NICs holding them are never touched, like the NICs
    /// carrying a default route.
    #[arg(long, env = "NODE_IP", value_delimiter = ',')]
    pub node_ip: Vec<IpAddr>,

    /// The host process whose namespaces --apply host enters (PID 1 of the
    /// host, seen through hostPID). For tests.
    #[arg(long, env = "MULTINIC_HOST_PID", default_value_t = 1, hide = true)]
    pub host_pid: u32,

    /// Test hook: create this file and stop after writing and applying,
    /// before verifying, so a test can kill the agent mid-change.
    #[arg(long, env = "MULTINIC_TEST_PAUSE_AFTER_WRITE", hide = true)]
    pub test_pause_after_write: Option<PathBuf>,

    /// HTTP address of /healthz, /readyz, /metrics and GET / (health JSON).
    #[arg(long, env = "MULTINIC_HTTP_LISTEN", default_value = "0.0.0.0:8080")]
    pub http_listen: SocketAddr,

    /// PEM client certificate naming this node (reloaded when it changes).
    #[arg(long, env = "MULTINIC_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "MULTINIC_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle the controller's certificate must chain to.
    #[arg(long, env = "MULTINIC_CA")]
    pub ca: Option<PathBuf>,

    /// Connect without TLS. Development only.
    #[arg(long, env = "MULTINIC_INSECURE")]
    pub insecure: bool,

    /// Log format: json or text.
    #[arg(long, env = "LOG_FORMAT", default_value = "json")]
    pub log_format: LogFormat,

    /// Log level or filter (e.g. info, debug, multinic_agent=debug).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

impl Args {
    /// Runs the agent until SIGTERM or SIGINT.
    pub async fn run(self) -> anyhow::Result<()> {
        let Self {
            controller,
            node_name,
            host_root,
            backend,
            apply,
            capacity,
            state_dir,
            node_ip,
            host_pid,
            test_pause_after_write,
            http_listen,
            tls_cert,
            tls_key,
            ca,
            insecure,
            log_format: _,
            log_level: _,
        } = self;
        let node_name = match node_name {
            Some(name) => name,
            None => short_hostname().context("cannot tell the node name: set --node-name or NODE_NAME")?,
        };
        let node: NodeName = node_name.parse().context("--node-name")?;
        let host_root = host_root.unwrap_or_else(default_host_root);
        let backend = detect_backend(backend, &host_root)?;
        if insecure {
            warn!("--insecure: talking to the controller without TLS");
        } else {
            let _ = (tls_cert, tls_key, ca);
            bail!("mTLS is not available in this build yet; run with --insecure");
        }
        let config = AgentConfig {
            controller: controller_url(&controller, !insecure),
            node,
            host_root,
            backend,
            apply,
            capacity,
            state_dir,
            http_listen: Some(http_listen),
            node_ips: node_ip,
            host_pid,
            pause_after_write: test_pause_after_write,
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(signal_shutdown(shutdown.clone()));
        let agent = Agent::new(&config);
        agent.run(config, shutdown).await
    }
}

/// The host name up to the first dot.
fn short_hostname() -> anyhow::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").context("read /proc/sys/kernel/hostname")?;
    Ok(name.trim().split('.').next().unwrap_or_default().to_owned())
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn signal_shutdown(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        warn!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => info!(signal = "SIGTERM", "shutdown requested"),
        _ = int.recv() => info!(signal = "SIGINT", "shutdown requested"),
    }
    shutdown.cancel();
}
