//! Command-line flags of `multinic-controller`; every flag also reads an
//! environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use multinic_proto::runtime::{LogFormat, parse_duration};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::store::{self, DatabaseConfig};
use crate::{Controller, ControllerConfig};

/// Keeps the secondary NICs of every node in line with the multi_interface
/// table: polls the database, pushes each node's desired set to its agent
/// over gRPC, and records the outcome in netplan_success.
#[derive(Debug, Parser)]
#[command(name = "multinic-controller", version, about, long_about = None)]
pub struct Args {
    /// Database URL: mysql://user:pass@host:3306/db (MySQL/MariaDB) or
    /// sqlite:///path/to.db. When unset, DB_HOST/DB_PORT/DB_USER/DB_PASSWORD/DB_NAME are used.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Database host (when --database-url is unset).
    #[arg(long, env = "DB_HOST")]
    pub db_host: Option<String>,

    /// Database port (when --database-url is unset).
    #[arg(long, env = "DB_PORT", default_value_t = 3306)]
    pub db_port: u16,

    /// Database user (when --database-url is unset).
    #[arg(long, env = "DB_USER", default_value = "root")]
    pub db_user: String,

    /// Database password (when --database-url is unset).
    #[arg(long, env = "DB_PASSWORD", hide_env_values = true, default_value = "")]
    pub db_password: String,

    /// Database name (when --database-url is unset).
    #[arg(long, env = "DB_NAME", default_value = "multinic")]
    pub db_name: String,

    /// gRPC address agents and multinicctl connect to.
    #[arg(long, env = "MULTINIC_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,

    /// HTTP address of /healthz, /readyz and /metrics.
    #[arg(long, env = "MULTINIC_HTTP_LISTEN", default_value = "0.0.0.0:8080")]
    pub http_listen: SocketAddr,

    /// How often the whole fleet is read from the database (e.g. 500ms, 2s).
    #[arg(long, env = "POLL_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// How long shutdown waits for agent streams to drain.
    #[arg(long, env = "MULTINIC_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Hold removals when one database read would remove more than this share
    /// (0..1) of all interfaces the agents have, until an operator confirms.
    #[arg(long, env = "MULTINIC_MAX_REMOVAL_SHARE", default_value_t = 0.5, value_parser = parse_share)]
    pub max_removal_share: f64,

    /// ... and at least this many interfaces would go at once.
    #[arg(long, env = "MULTINIC_MIN_GUARDED_REMOVALS", default_value_t = 10)]
    pub min_guarded_removals: usize,

    /// Hold every removal this long after becoming active, until the agents
    /// have reported what they have.
    #[arg(long, env = "MULTINIC_REMOVAL_WARMUP", default_value = "30s", value_parser = parse_duration)]
    pub removal_warmup: Duration,

    /// PEM certificate chain the controller presents (reloaded when it changes).
    #[arg(long, env = "MULTINIC_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "MULTINIC_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle that agent and operator client certificates must chain to.
    #[arg(long, env = "MULTINIC_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,

    /// Serve plaintext gRPC without client certificates. Development only:
    /// any peer can then claim to be any node.
    #[arg(long, env = "MULTINIC_INSECURE")]
    pub insecure: bool,

    /// Log format: json or text.
    #[arg(long, env = "LOG_FORMAT", default_value = "json")]
    pub log_format: LogFormat,

    /// Log level or filter (e.g. info, debug, multinic_controller=debug).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

impl Args {
    /// Runs the controller until SIGTERM or SIGINT.
    pub async fn run(self) -> anyhow::Result<()> {
        let Self {
            database_url,
            db_host,
            db_port,
            db_user,
            db_password,
            db_name,
            listen,
            http_listen,
            poll_interval,
            drain_timeout,
            max_removal_share,
            min_guarded_removals,
            removal_warmup,
            tls_cert,
            tls_key,
            client_ca,
            insecure,
            log_format: _,
            log_level: _,
        } = self;

        let database = match (database_url, db_host) {
            (Some(url), _) => DatabaseConfig::Url(url),
            (None, Some(host)) => {
                DatabaseConfig::Parts { host, port: db_port, user: db_user, password: db_password, name: db_name }
            }
            (None, None) => bail!("no database configured: set --database-url (DATABASE_URL) or DB_HOST"),
        };
        if insecure {
            warn!("--insecure: serving plaintext gRPC without client certificates; any peer can claim any node");
        } else {
            let given = [&tls_cert, &tls_key, &client_ca].iter().filter(|p| p.is_some()).count();
            if given == 0 {
                bail!("mTLS needs --tls-cert, --tls-key and --client-ca (or --insecure for development)");
            }
            bail!("mTLS is not available in this build yet; run with --insecure");
        }
        let store = store::connect(&database).context("database configuration")?;
        let election = crate::leader::for_database(&database).context("database configuration")?;
        info!(database = %database.redacted(), "using database");
        let config = ControllerConfig {
            store,
            election,
            poll_interval,
            hello_timeout: crate::grpc::agent_service::HELLO_TIMEOUT,
            drain_timeout,
            guard: crate::guard::GuardConfig {
                max_share: max_removal_share,
                min_removals: min_guarded_removals,
                warmup: removal_warmup,
            },
        };
        let controller = Controller::bind(config, listen, http_listen).await?;
        info!(grpc = %controller.grpc_addr(), http = %controller.http_addr(), "listening");
        let shutdown = CancellationToken::new();
        tokio::spawn(signal_shutdown(shutdown.clone()));
        controller.serve(shutdown).await?;
        info!("controller stopped");
        Ok(())
    }
}

fn parse_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a share between 0 and 1 (e.g. 0.5)")),
    }
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
pub async fn signal_shutdown(shutdown: CancellationToken) {
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
