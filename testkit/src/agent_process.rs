//! The real `multinic-agent` binary, run inside a test node's namespace with
//! `ip netns exec`, its JSON log captured to a file.
//!
//! Dropping the handle kills the agent (SIGKILL) and waits for it, so a
//! failing test never leaves an agent running.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

/// How to start an agent.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The `multinic-agent` binary (`env!("CARGO_BIN_EXE_multinic-agent")`).
    pub binary: PathBuf,
    pub namespace: String,
    /// `host:port` as seen from inside the namespace.
    pub controller: String,
    pub host_root: PathBuf,
    pub state_dir: PathBuf,
    /// `--apply`.
    pub apply: String,
    /// `--backend`.
    pub backend: String,
    /// More flags, e.g. `--node-ip 192.168.88.2` (`--http-listen` here
    /// replaces the default `127.0.0.1:0`).
    pub extra_args: Vec<String>,
    /// More environment, e.g. the pause-after-write test hook.
    pub env: Vec<(String, String)>,
}

impl AgentOptions {
    /// `--apply netlink --backend netplan`, no extra flags or environment.
    pub fn netlink(binary: PathBuf, namespace: &str, controller: String, host_root: &Path, state_dir: &Path) -> Self {
        Self {
            binary,
            namespace: namespace.to_owned(),
            controller,
            host_root: host_root.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            apply: "netlink".into(),
            backend: "netplan".into(),
            extra_args: Vec::new(),
            env: Vec::new(),
        }
    }
}

/// A running agent process.
#[derive(Debug)]
pub struct AgentProcess {
    child: Option<Child>,
    log: PathBuf,
    _log_dir: TempDir,
}

impl AgentProcess {
    pub fn start(options: &AgentOptions) -> Self {
        let log_dir = tempfile::Builder::new().prefix("multinic-agent-log-").tempdir().expect("log dir");
        let log = log_dir.path().join("agent.log");
        let file = File::create(&log).expect("log file");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &options.namespace])
            .arg(&options.binary)
            .args(["--controller", &options.controller, "--node-name", "node-under-test"])
            .arg("--host-root")
            .arg(&options.host_root)
            .arg("--state-dir")
            .arg(&options.state_dir)
            .args(["--apply", &options.apply, "--backend", &options.backend])
            .args(["--insecure", "--log-format", "json", "--log-level", "info"])
            .args(&options.extra_args)
            .envs(options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file);
        if !options.extra_args.iter().any(|a| a == "--http-listen") {
            cmd.args(["--http-listen", "127.0.0.1:0"]);
        }
        let child = cmd.spawn().expect("start multinic-agent under ip netns exec");
        Self { child: Some(child), log, _log_dir: log_dir }
    }

    /// The agent's log so far, one JSON value per line (other lines skipped).
    pub fn log(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// The raw log text, for failure messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Log events with this message.
    pub fn events(&self, message: &str) -> Vec<Value> {
        self.log().into_iter().filter(|v| v.get("message").and_then(Value::as_str) == Some(message)).collect()
    }

    /// The agent's process id (`ip netns exec` execs the agent in place).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the agent is still running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL, then wait: the agent gets no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, as the kubelet sends before stopping a pod.
    pub fn terminate(&mut self) {
        if let Some(pid) = self.child.as_ref().map(Child::id) {
            let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
    }

    /// Waits up to `timeout` for the agent to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
