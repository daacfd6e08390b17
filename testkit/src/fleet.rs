//! An in-process controller and agents talking gRPC over real loopback
//! sockets, for end-to-end tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use multinic_agent::{Agent, AgentConfig};
use multinic_controller::fleet::Fleet;
use multinic_controller::guard::GuardConfig;
use multinic_controller::store::{self, DatabaseConfig};
use multinic_controller::{Controller, ControllerConfig};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A controller serving on loopback.
#[derive(Debug)]
pub struct TestController {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub fleet: Arc<Fleet>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl TestController {
    /// Starts a controller on `database_url`, polling every `poll`.
    pub async fn start(database_url: &str, poll: Duration) -> Self {
        Self::start_on(database_url, poll, "127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts a controller whose gRPC listener is `grpc` (e.g. the address of
    /// a controller that was stopped, to test reconnects).
    pub async fn start_on(database_url: &str, poll: Duration, grpc: SocketAddr) -> Self {
        Self::start_guarded(database_url, poll, grpc, GuardConfig::off()).await
    }

    /// Starts a controller with a mass-deletion guard.
    pub async fn start_guarded(database_url: &str, poll: Duration, grpc: SocketAddr, guard: GuardConfig) -> Self {
        let database = DatabaseConfig::Url(database_url.to_owned());
        let store = store::connect(&database).expect("store");
        let election = multinic_controller::leader::for_database(&database).expect("election");
        let config = ControllerConfig {
            store,
            election,
            poll_interval: poll,
            hello_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(5),
            guard,
        };
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let controller = Controller::bind(config, grpc, any).await.expect("bind controller");
        let (grpc, http, fleet) = (controller.grpc_addr(), controller.http_addr(), controller.fleet());
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            controller.serve(stop).await.expect("controller serve");
        });
        Self { grpc, http, fleet, shutdown, task }
    }

    /// Waits until this replica holds the controller lock and serves agents.
    pub async fn wait_active(&self) {
        crate::eventually(Duration::from_secs(20), "the controller becomes active", || async {
            self.fleet.is_active().then_some(())
        })
        .await;
    }

    /// `http://127.0.0.1:port` for agents.
    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Graceful shutdown.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
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
    pub async fn start(controller_url: &str, node: &str) -> Self {
        let root = tempfile::Builder::new().prefix("multinic-node-").tempdir().expect("node root");
        Self::start_in(root, controller_url, node).await
    }

    /// Starts an agent on an existing host root (e.g. after a restart).
    pub async fn start_in(root: TempDir, controller_url: &str, node: &str) -> Self {
        Self::start_with(root, controller_url, node, |_| {}).await
    }

    /// Starts an agent after `adjust` changed its configuration.
    pub async fn start_with(
        root: TempDir,
        controller_url: &str,
        node: &str,
        adjust: impl FnOnce(&mut AgentConfig),
    ) -> Self {
        let mut config = AgentConfig::new(controller_url, node.parse().expect("node name"), root.path());
        adjust(&mut config);
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
