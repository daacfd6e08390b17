//! The end-to-end stack the tests against real network daemons share: a
//! private MariaDB, the real controller binary, and (once started) the real
//! agent binary in a test node's namespace, with `--backend auto --apply
//! auto` and an `/etc/os-release` in its host root.
//!
//! A test keeps its node (networkd, NetworkManager) beside the stack and
//! declares the stack first, so the agent and the controller stop before the
//! node's daemon and namespace go.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use sqlx::MySqlPool;
use tempfile::TempDir;

use crate::agent_process::{AgentOptions, AgentProcess};
use crate::mariadb::MariaDb;
use crate::netns::TestNode;
use crate::process::{ControllerProcess, controller_beside};
use crate::rows::netplan_success_of_port;
use crate::scrape::Metrics;

/// How long a test waits for the stack to converge.
pub const WAIT: Duration = Duration::from_secs(40);

/// Where the agent serves HTTP inside the node's namespace, when a test
/// starts it with `--http-listen` this (see [`Stack::agent_metrics`]).
pub const AGENT_HTTP: &str = "127.0.0.1:9737";

/// MariaDB, the controller and the agent of one test node.
#[derive(Debug)]
pub struct Stack {
    pub agent: Option<AgentProcess>,
    pub controller: ControllerProcess,
    pub pool: MySqlPool,
    _db: MariaDb,
    pub state: TempDir,
    _logs: TempDir,
    options: AgentOptions,
}

impl Stack {
    /// Starts MariaDB and the controller (beside `agent_binary`) for the
    /// node `kernel`, whose host root `host_root` gets `os_release`; the
    /// agent will run with `extra_args`. `None` when MariaDB cannot run here.
    pub async fn start(
        agent_binary: &str,
        kernel: &mut TestNode,
        host_root: &Path,
        os_release: &str,
        extra_args: Vec<String>,
    ) -> Option<Self> {
        let db = MariaDb::start().await?;
        std::fs::create_dir_all(host_root.join("etc")).expect("etc");
        std::fs::write(host_root.join("etc/os-release"), os_release).expect("os-release");
        let logs = tempfile::tempdir().expect("log folder");
        let controller = ControllerProcess::start(
            &controller_beside(agent_binary),
            &db.url(),
            crate::free_addr(),
            &logs.path().join("controller.log"),
            &[],
        )
        .await;
        controller.wait_ready().await;
        let port = kernel.forward_to(controller.grpc);
        let state = tempfile::Builder::new().prefix("multinic-state-").tempdir().expect("state folder");
        let options = AgentOptions {
            binary: PathBuf::from(agent_binary),
            namespace: kernel.name().to_owned(),
            controller: format!("127.0.0.1:{port}"),
            host_root: host_root.to_path_buf(),
            state_dir: state.path().to_path_buf(),
            apply: "auto".into(),
            backend: "auto".into(),
            extra_args,
            env: Vec::new(),
        };
        let pool = db.pool().await;
        Some(Self { agent: None, controller, pool, _db: db, state, _logs: logs, options })
    }

    /// Starts the agent (again: the previous one is killed first).
    pub fn start_agent(&mut self) {
        self.start_agent_with(&[]);
    }

    /// Starts the agent with `extra_args` after those given to
    /// [`Self::start`] (again: the previous one is killed first).
    pub fn start_agent_with(&mut self, extra_args: &[&str]) {
        self.agent = None;
        let mut options = self.options.clone();
        options.extra_args.extend(extra_args.iter().map(|a| (*a).to_owned()));
        self.agent = Some(AgentProcess::start(&options));
    }

    /// The agent's `/metrics`, read inside the node's namespace `kernel`,
    /// when it was started with `--http-listen` [`AGENT_HTTP`].
    pub async fn agent_metrics(&self, kernel: &TestNode) -> Metrics {
        let addr = AGENT_HTTP.parse().expect("a socket address");
        let (code, body) = kernel.http_get(addr, "/metrics").await.expect("the agent serves HTTP");
        assert_eq!(code, 200, "{body}");
        Metrics::parse(&body)
    }

    /// How many drift checks the agent made so far (see
    /// [`Self::agent_metrics`]).
    pub async fn drift_checks(&self, kernel: &TestNode) -> f64 {
        self.agent_metrics(kernel).await.get("multinic_agent_drift_checks_total", &[])
    }

    pub fn agent(&self) -> &AgentProcess {
        self.agent.as_ref().expect("agent started")
    }

    /// Waits until the row of `port` says `value`; `context` (e.g. the
    /// daemon's log) goes into the failure message.
    pub async fn row_is(&self, port: &str, value: i64, context: &str) {
        let what = format!(
            "netplan_success of {port} = {value}; agent log:\n{}\ncontroller log:\n{}\n{context}",
            self.agent.as_ref().map(AgentProcess::log_text).unwrap_or_default(),
            self.controller.log()
        );
        crate::eventually(WAIT, &what, || async {
            (netplan_success_of_port(&self.pool, port).await == value).then_some(())
        })
        .await;
    }

    pub async fn sql(&self, statement: &str) {
        sqlx::query(statement).execute(&self.pool).await.expect("SQL");
    }

    /// Waits until the controller's desired set for `node` has `count`
    /// interfaces (asked over its FleetService): rows inserted one by one
    /// may be read in more than one poll, and an agent that connects in
    /// between is told the partial set, removals included.
    pub async fn wait_desired(&self, node: &str, count: usize) {
        use multinic_proto::v1::GetNodeRequest;
        use multinic_proto::v1::fleet_service_client::FleetServiceClient;
        let what = format!("the controller's desired set for {node} to have {count} interfaces");
        crate::eventually(WAIT, &what, || async {
            let mut client = FleetServiceClient::connect(self.controller.url()).await.ok()?;
            let status = client.get_node(GetNodeRequest { name: node.to_owned() }).await.ok()?.into_inner();
            (status.interfaces.len() == count).then_some(())
        })
        .await;
    }

    /// The "applied desired state" events the agent logged so far.
    pub fn applies(&self) -> Vec<Value> {
        self.agent().events("applied desired state")
    }

    /// Restarts the agent and waits until it is connected; asserts that
    /// every apply it logged after two more seconds changed nothing.
    pub async fn restart_agent_expecting_no_change(&mut self) {
        self.start_agent();
        crate::eventually(WAIT, "the restarted agent connects", || async {
            (!self.agent().events("connected to the controller").is_empty()).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        for event in self.applies() {
            assert_eq!(event["changes"], 0, "a restart changes nothing: {event}");
        }
    }
}
