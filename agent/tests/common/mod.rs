//! A test node with a scripted controller and the real agent binary.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use multinic_proto::{AgentReport, DesiredSet, ErrorCode, InterfaceSpec, InterfaceState, InterfaceStatus, Mtu};
use multinic_testkit::agent_process::{AgentOptions, AgentProcess};
use multinic_testkit::fake_controller::FakeController;
use multinic_testkit::netns::{self, TestNode};
use multinic_testkit::scrape::Metrics;
use serde_json::Value;
use tempfile::TempDir;

pub const WAIT: Duration = Duration::from_secs(20);
/// Where an agent serves HTTP inside its namespace (`--http-listen`), for
/// tests that read its metrics: the address testkit's stacks use too.
pub use multinic_testkit::e2e::AGENT_HTTP as HTTP;

/// One node: a namespace, a host root, a state dir, a scripted controller
/// listening inside the namespace, and (once started) the agent.
pub struct Node {
    // Dropped in this order: the agent first, the namespace last.
    pub agent: Option<AgentProcess>,
    pub controller: FakeController,
    pub root: TempDir,
    pub state: TempDir,
    pub kernel: TestNode,
    port: u16,
}

impl Node {
    /// `None` when this machine cannot run namespace tests (skipped loudly;
    /// CI fails instead).
    pub fn new() -> Option<Self> {
        if !netns::available() {
            return None;
        }
        let kernel = TestNode::new();
        let listener = kernel.listen_inside();
        let port = listener.local_addr().unwrap().port();
        let controller = FakeController::serve(listener);
        let root = tempfile::Builder::new().prefix("multinic-host-").tempdir().unwrap();
        let state = tempfile::Builder::new().prefix("multinic-state-").tempdir().unwrap();
        Some(Self { agent: None, controller, root, state, kernel, port })
    }

    pub fn options(&self, apply: &str, backend: &str) -> AgentOptions {
        AgentOptions {
            binary: PathBuf::from(env!("CARGO_BIN_EXE_multinic-agent")),
            namespace: self.kernel.name().to_owned(),
            controller: format!("127.0.0.1:{}", self.port),
            host_root: self.root.path().to_path_buf(),
            state_dir: self.state.path().to_path_buf(),
            apply: apply.to_owned(),
            backend: backend.to_owned(),
            extra_args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Starts the agent with `--apply netlink --backend netplan`.
    pub fn start_agent(&mut self) {
        let options = self.options("netlink", "netplan");
        self.start_with(&options);
    }

    pub fn start_with(&mut self, options: &AgentOptions) {
        self.agent = Some(AgentProcess::start(options));
    }

    pub fn agent(&self) -> &AgentProcess {
        self.agent.as_ref().expect("agent started")
    }

    /// Pushes `set` and waits for the agent's answer to it.
    pub async fn push(&self, generation: u64, set: &DesiredSet) -> AgentReport {
        let nonce = self.controller.push(generation, set).await;
        let agent = self.agent();
        let what = format!("report on push {generation}; agent log:\n{}", agent.log_text());
        self.controller.report(nonce, WAIT, &what, |_| true).await
    }

    /// The files under the host root's `etc/netplan`, by name.
    pub fn netplan_files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.root.path().join("etc/netplan"))
            .map(|d| d.map(|e| e.unwrap().file_name().into_string().unwrap()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    pub fn file(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.root.path().join(rel)).ok()
    }

    /// The agent's `/metrics`, when it was started with
    /// `--http-listen` [`HTTP`] (inside the namespace).
    pub async fn metrics(&self) -> Metrics {
        let (code, body) =
            self.kernel.http_get(HTTP.parse().unwrap(), "/metrics").await.expect("the agent serves HTTP");
        assert_eq!(code, 200, "{body}");
        Metrics::parse(&body)
    }

    /// The agent's "applied desired state" event for `generation`.
    pub fn applied_event(&self, generation: u64) -> Value {
        let agent = self.agent();
        agent
            .events("applied desired state")
            .into_iter()
            .find(|e| e.pointer("/span/generation").and_then(Value::as_u64) == Some(generation))
            .unwrap_or_else(|| panic!("no 'applied desired state' for generation {generation}:\n{}", agent.log_text()))
    }
}

pub fn spec(mac: &str, address: Option<&str>, mtu: i64) -> InterfaceSpec {
    InterfaceSpec::new(mac.parse().unwrap(), address.map(|a| a.parse().unwrap()), Mtu::new(mtu).unwrap()).unwrap()
}

pub fn set(specs: &[InterfaceSpec]) -> DesiredSet {
    DesiredSet::new(specs.iter().copied()).unwrap()
}

/// The status of `mac` in `report`.
pub fn status<'a>(report: &'a AgentReport, mac: &str) -> &'a InterfaceStatus {
    let mac = mac.parse().unwrap();
    report.interfaces.iter().find(|s| s.mac == mac).unwrap_or_else(|| panic!("no status for {mac} in {report:?}"))
}

pub fn assert_state(report: &AgentReport, mac: &str, state: InterfaceState, code: ErrorCode) {
    let s = status(report, mac);
    assert_eq!((s.state, s.code), (state, code), "{mac}: {}", s.message);
}
