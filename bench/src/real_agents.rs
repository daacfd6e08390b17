//! A few instances of the real `multinic-agent` binary (`--apply none`),
//! connected to the controller over mTLS, measured while idle.
//!
//! They start with an empty environment (PATH only) and flags that name no
//! database; the benchmark then checks, from `/proc`, that no agent holds a
//! connection to the database port. Each one writes files only under its
//! own temporary host root, never under `/`.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use multinic_testkit::certs::TestPki;
use tokio::process::{Child, Command};

use crate::BenchError;
use crate::procfs;
use crate::report::RealAgents;

/// Running agent processes.
#[derive(Debug)]
pub struct RealAgentFleet {
    children: Vec<Child>,
}

impl RealAgentFleet {
    /// Starts one agent per node, each with its own host root under `dir`.
    pub fn start(
        binary: &Path,
        controller_url: &str,
        pki: &TestPki,
        nodes: &[String],
        dir: &Path,
    ) -> Result<Self, BenchError> {
        let mut children = Vec::new();
        for node in nodes {
            let files = pki.agent(node);
            let root = dir.join(node);
            let state = root.join("var/lib/multinic");
            std::fs::create_dir_all(&state).map_err(|source| BenchError::Proc { path: state.clone(), source })?;
            let log = root.join("agent.log");
            let file = std::fs::File::create(&log).map_err(|source| BenchError::Proc { path: log.clone(), source })?;
            let child = Command::new(binary)
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .args(["--controller", controller_url, "--node-name", node, "--apply", "none", "--backend", "netplan"])
                .arg("--host-root")
                .arg(&root)
                .arg("--state-dir")
                .arg(&state)
                .arg("--ca")
                .arg(pki.ca_file())
                .arg("--tls-cert")
                .arg(&files.cert)
                .arg("--tls-key")
                .arg(&files.key)
                .args(["--http-listen", "127.0.0.1:0", "--log-format", "json", "--log-level", "info"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(file))
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| BenchError::Setup(format!("cannot start {}: {e}", binary.display())))?;
            children.push(child);
        }
        Ok(Self { children })
    }

    fn pids(&self) -> Result<Vec<u32>, BenchError> {
        self.children.iter().map(|c| c.id().ok_or_else(|| BenchError::Setup("a real agent exited".into()))).collect()
    }

    /// RSS and CPU of each agent over `window`, and what they can reach.
    pub async fn measure(&self, window: Duration, db_port: u16) -> Result<RealAgents, BenchError> {
        let pids = self.pids()?;
        let before: Vec<u64> = pids.iter().map(|p| procfs::cpu_ticks(*p)).collect::<Result<_, _>>()?;
        let started = std::time::Instant::now();
        tokio::time::sleep(window).await;
        let elapsed = started.elapsed();
        let mut report = RealAgents { count: pids.len(), window_s: elapsed.as_secs_f64(), ..RealAgents::default() };
        for (pid, before) in pids.iter().zip(before) {
            let ticks = procfs::cpu_ticks(*pid)?.saturating_sub(before);
            let cpu = crate::stats::cpu_percent(ticks, procfs::USER_HZ, elapsed);
            report.cpu_percent_max = report.cpu_percent_max.max(cpu);
            report.rss_mb_max = report.rss_mb_max.max(procfs::rss_bytes(*pid)? as f64 / 1_048_576.0);
            report.rss_anon_mb_max = report.rss_anon_mb_max.max(procfs::rss_anon_bytes(*pid)? as f64 / 1_048_576.0);
            report.db_connections += procfs::remote_ports(*pid)?.iter().filter(|p| **p == db_port).count();
            for name in procfs::environment_names(*pid)? {
                if is_db_setting(&name) && !report.db_settings.contains(&name) {
                    report.db_settings.push(name);
                }
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).to_ascii_lowercase().contains("database") {
                report.db_settings.push(format!("pid {pid}: a database flag"));
            }
        }
        Ok(report)
    }

    /// Kills every agent.
    pub async fn stop(mut self) {
        for child in &mut self.children {
            let _ = child.kill().await;
        }
    }
}

/// The variables the controller reads its database from.
fn is_db_setting(name: &str) -> bool {
    name == "DATABASE_URL" || name.starts_with("DB_") || name.starts_with("MYSQL")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_settings_are_recognised() {
        assert!(is_db_setting("DATABASE_URL") && is_db_setting("DB_PASSWORD") && is_db_setting("MYSQL_PWD"));
        assert!(!is_db_setting("PATH"));
    }
}
