//! An in-process controller and agents talking gRPC over real loopback
//! sockets, for end-to-end tests: plaintext, or mTLS with [`TestPki`]
//! certificates.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use multinic_agent::tls::{AgentTls, AgentTransport};
use multinic_agent::{Agent, AgentConfig};
use multinic_controller::fleet::Fleet;
use multinic_controller::guard::GuardConfig;
use multinic_controller::store::{self, DatabaseConfig};
use multinic_controller::tls::{HandshakeStats, TlsConfig, Transport};
use multinic_controller::{Controller, ControllerConfig};
use sqlx::SqlitePool;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::certs::TestPki;

/// The controller's default `--full-read-interval`.
pub const DEFAULT_FULL_READ: Duration = Duration::from_secs(60);

/// A controller serving on loopback.
#[derive(Debug)]
pub struct TestController {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    /// The issuer's address, when the controller issues certificates.
    pub issuer: Option<SocketAddr>,
    pub fleet: Arc<Fleet>,
    /// TLS handshake outcomes of the gRPC port.
    pub handshakes: Arc<HandshakeStats>,
    tls: bool,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl TestController {
    /// Starts a plaintext (`--insecure`) controller on `database_url`, polling every `poll`.
    pub async fn start(database_url: &str, poll: Duration) -> Self {
        Self::start_full(database_url, poll, "127.0.0.1:0".parse().unwrap(), Transport::Insecure, GuardConfig::off())
            .await
    }

    /// Starts a plaintext controller that reads the whole fleet every `full_read`.
    pub async fn start_reading(database_url: &str, poll: Duration, full_read: Duration) -> Self {
        let any = "127.0.0.1:0".parse().unwrap();
        Self::launch(database_url, poll, full_read, any, Transport::Insecure, GuardConfig::off(), |_| {}).await
    }

    /// Starts a plaintext controller after `adjust` changed its configuration.
    pub async fn start_adjusted(
        database_url: &str,
        poll: Duration,
        adjust: impl FnOnce(&mut ControllerConfig),
    ) -> Self {
        let any = "127.0.0.1:0".parse().unwrap();
        Self::launch(database_url, poll, DEFAULT_FULL_READ, any, Transport::Insecure, GuardConfig::off(), adjust).await
    }

    /// Starts a controller whose gRPC listener is `grpc` (e.g. the address of
    /// a controller that was stopped, to test reconnects).
    pub async fn start_on(database_url: &str, poll: Duration, grpc: SocketAddr) -> Self {
        Self::start_full(database_url, poll, grpc, Transport::Insecure, GuardConfig::off()).await
    }

    /// Starts a controller with a mass-deletion guard.
    pub async fn start_guarded(database_url: &str, poll: Duration, grpc: SocketAddr, guard: GuardConfig) -> Self {
        Self::start_full(database_url, poll, grpc, Transport::Insecure, guard).await
    }

    /// Starts an mTLS controller with `pki`'s certificates.
    pub async fn start_tls(database_url: &str, poll: Duration, pki: &TestPki) -> Self {
        Self::start_with(database_url, poll, Transport::Mutual(Box::new(pki.controller_tls()))).await
    }

    /// Starts a controller with the given TLS settings.
    pub async fn start_mutual(database_url: &str, poll: Duration, tls: TlsConfig) -> Self {
        Self::start_with(database_url, poll, Transport::Mutual(Box::new(tls))).await
    }

    async fn start_with(database_url: &str, poll: Duration, transport: Transport) -> Self {
        Self::start_full(database_url, poll, "127.0.0.1:0".parse().unwrap(), transport, GuardConfig::off()).await
    }

    async fn start_full(
        database_url: &str,
        poll: Duration,
        grpc: SocketAddr,
        transport: Transport,
        guard: GuardConfig,
    ) -> Self {
        Self::launch(database_url, poll, DEFAULT_FULL_READ, grpc, transport, guard, |_| {}).await
    }

    async fn launch(
        database_url: &str,
        poll: Duration,
        full_read: Duration,
        grpc: SocketAddr,
        transport: Transport,
        guard: GuardConfig,
        adjust: impl FnOnce(&mut ControllerConfig),
    ) -> Self {
        let database = DatabaseConfig::Url(database_url.to_owned());
        let store = store::connect(&database).expect("store");
        let election = multinic_controller::leader::for_database(&database).expect("election");
        let tls = matches!(transport, Transport::Mutual(_));
        let mut config = ControllerConfig {
            store,
            election,
            poll_interval: poll,
            full_read_interval: full_read,
            hello_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(5),
            guard,
            push_answer_timeout: Duration::from_secs(60),
            // In-process tests opt in to waves (`start_adjusted`).
            rollout: multinic_controller::rollout::RolloutConfig::off(),
            transport,
        };
        adjust(&mut config);
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let controller = Controller::bind(config, grpc, any).await.expect("bind controller");
        let (grpc, http, fleet) = (controller.grpc_addr(), controller.http_addr(), controller.fleet());
        let (issuer, handshakes) = (controller.issuer_addr(), controller.handshakes());
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            controller.serve(stop).await.expect("controller serve");
        });
        Self { grpc, http, issuer, fleet, handshakes, tls, shutdown, task }
    }

    /// Waits until this replica holds the controller lock and serves agents.
    pub async fn wait_active(&self) {
        crate::eventually(Duration::from_secs(20), "the controller becomes active", || async {
            self.fleet.leadership().is_active().then_some(())
        })
        .await;
    }

    /// `http://127.0.0.1:port`, or `https://` with TLS, for agents.
    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.grpc)
    }

    /// Graceful shutdown.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// An embedded SQLite database with the schema, in `dir`: its URL and a pool
/// for the test's own SQL (the OpenStack side).
pub async fn sqlite_database(dir: &Path) -> (String, SqlitePool) {
    let url = format!("sqlite://{}", dir.join("multinic.db").display());
    store::create_sqlite_schema(&url).await.expect("schema");
    let pool = SqlitePool::connect(&url).await.expect("sqlite pool");
    (url, pool)
}

/// An agent with its own sandboxed host root (`--apply none`).
#[derive(Debug)]
pub struct TestAgent {
    pub root: TempDir,
    pub agent: Agent,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl TestAgent {
    /// A plaintext agent.
    pub async fn start(controller_url: &str, node: &str) -> Self {
        let root = tempfile::Builder::new().prefix("multinic-node-").tempdir().expect("node root");
        Self::start_in(root, controller_url, node).await
    }

    /// An mTLS agent.
    pub async fn start_tls(controller_url: &str, node: &str, tls: AgentTls) -> Self {
        let root = tempfile::Builder::new().prefix("multinic-node-").tempdir().expect("node root");
        Self::start_with(root, controller_url, node, AgentTransport::Tls(tls)).await
    }

    /// Starts a plaintext agent on an existing host root (e.g. after a restart).
    pub async fn start_in(root: TempDir, controller_url: &str, node: &str) -> Self {
        Self::start_with(root, controller_url, node, AgentTransport::Insecure).await
    }

    /// Starts an agent (plaintext) after `adjust` changed its configuration.
    pub async fn start_adjusted(
        root: TempDir,
        controller_url: &str,
        node: &str,
        adjust: impl FnOnce(&mut AgentConfig),
    ) -> Self {
        let mut config = AgentConfig::new(controller_url, node.parse().expect("node name"), root.path());
        adjust(&mut config);
        Self::launch(root, config)
    }

    /// Starts an agent on `root` with the given transport.
    pub async fn start_with(root: TempDir, controller_url: &str, node: &str, transport: AgentTransport) -> Self {
        let mut config = AgentConfig::new(controller_url, node.parse().expect("node name"), root.path());
        config.transport = transport;
        Self::launch(root, config)
    }

    fn launch(root: TempDir, config: AgentConfig) -> Self {
        let agent = Agent::new(&config);
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let runner = agent.clone();
        let task = tokio::spawn(async move {
            runner.run(config, stop).await.expect("agent run");
        });
        Self { root, agent, shutdown, task }
    }

    /// The netplan file of `multinic{index}`, if present.
    pub fn netplan_file(&self, index: u8) -> Option<String> {
        std::fs::read_to_string(self.netplan_path(index)).ok()
    }

    pub fn netplan_path(&self, index: u8) -> PathBuf {
        self.root.path().join(format!("etc/netplan/9{index}-multinic{index}.yaml"))
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The agent's state dir (journal, issued certificate).
    pub fn state_dir(&self) -> PathBuf {
        self.root.path().join("var/lib/multinic")
    }

    /// Files this agent wrote so far.
    pub fn writes(&self) -> u64 {
        self.agent.reconciler.files().writes()
    }

    /// Stops the agent, keeping its host root.
    pub async fn stop(self) -> TempDir {
        self.shutdown.cancel();
        let _ = self.task.await;
        self.root
    }
}
