//! The benchmark's results: one value type, printed as a table or as JSON.
//!
//! Pure: the runner fills a [`Report`]; this module only formats it. It
//! never measures, and the table never shows a figure the JSON lacks.

use std::fmt::Write as _;

use serde::Serialize;

use crate::dbtime::{DbTime, KindTime};
use crate::stats::Latency;

/// Everything one run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub setup: Setup,
    /// Time to connect every simulated agent and converge the fleet once.
    pub initial: Initial,
    pub convergence: Vec<Scenario>,
    pub controller: Memory,
    /// The same streams held by a bare tonic + rustls server (no state, no
    /// database), measured the same way.
    pub baseline: Option<Memory>,
    /// Controller idle CPU with every agent connected, % of one core.
    pub controller_idle_cpu_percent: f64,
    pub db_idle: DbLoad,
    pub db_change: DbLoad,
    /// MariaDB's own time on the controller's statements while idle.
    pub db_time_idle: DbTime,
    /// ... and per kind of statement during the change rounds.
    pub db_time_changes: Vec<KindTime>,
    pub restarts: Vec<Restart>,
    pub real_agents: Option<RealAgents>,
}

/// What ran, where.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Setup {
    pub agents: usize,
    pub rows: usize,
    pub interfaces_per_node: usize,
    /// Rows of history added first, and the share of them soft-deleted (%).
    pub history_rows: usize,
    pub history_deleted_percent: u8,
    pub db_buffer_pool: String,
    /// An index on `modified_at` was added for the run.
    pub index_modified_at: bool,
    pub poll_interval_ms: u64,
    pub full_read_interval_s: u64,
    pub cpus: usize,
    /// 1, 5 and 15 minute load averages when the run started and ended.
    pub load_start: [f64; 3],
    pub load_end: [f64; 3],
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Initial {
    pub connect_s: f64,
    pub converge_s: f64,
    pub pushes: u64,
}

/// One kind of database change, measured over several rounds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Scenario {
    pub name: String,
    pub nodes: usize,
    pub rows: usize,
    pub rounds: usize,
    /// The controller's pushes per round (newest wins: one per changed node).
    pub pushes_per_round: f64,
    /// Change committed → the agent's report sent, per node.
    pub report: Latency,
    /// Change committed → `netplan_success` written, per row.
    pub write: Latency,
    /// The rollout of each round whose change went in waves.
    pub waves: Vec<crate::waves::Waves>,
}

/// Resident memory of a server with no agents and with all of them.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Memory {
    pub rss_without_agents_mb: f64,
    pub rss_with_agents_mb: f64,
    pub per_agent_kb: f64,
}

/// The controller's cost to MariaDB (its own user's statistics).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct DbLoad {
    pub window_s: f64,
    pub ticks: f64,
    /// Statements of every kind (SELECT, UPDATE, BEGIN/COMMIT, ...) per poll tick.
    pub statements_per_tick: f64,
    pub selects_per_tick: f64,
    pub updates_per_tick: f64,
    pub rows_read_per_tick: f64,
    pub bytes_sent_per_tick: f64,
    /// The controller's connections (most seen during the window).
    pub connections: usize,
}

/// Agents back and converged after the controller process restarted.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Restart {
    pub signal: String,
    /// From the signal to every agent connected to the new process.
    pub all_connected_s: f64,
    /// ... and every node confirmed converged by it.
    pub all_converged_s: f64,
    pub pushes: u64,
    pub rows_written: u64,
    /// The controller's statements from the signal until converged (plus
    /// two poll intervals): none of them may be per agent.
    pub db_statements: i64,
    pub db_updates: i64,
    pub window_s: f64,
}

/// The real agent binary, idle.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RealAgents {
    pub count: usize,
    pub rss_mb_max: f64,
    /// Of that, the anonymous part (not the binary's clean pages).
    pub rss_anon_mb_max: f64,
    pub cpu_percent_max: f64,
    pub window_s: f64,
    /// TCP connections from the agents to the database port (must be 0).
    pub db_connections: usize,
    /// Database variables in the agents' environment or flags (must be empty).
    pub db_settings: Vec<String>,
}

impl Report {
    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut t = Table::default();
        let s = &self.setup;
        t.title(format!(
            "multinic fleet benchmark: {} agents over mTLS, {} rows + {} history ({} % soft-deleted){}, \
             buffer pool {}, poll {} ms, full re-read every {} s, {} CPUs, load {} -> {}",
            s.agents,
            s.rows,
            s.history_rows,
            s.history_deleted_percent,
            if s.index_modified_at { ", index on modified_at" } else { "" },
            s.db_buffer_pool,
            s.poll_interval_ms,
            s.full_read_interval_s,
            s.cpus,
            load(s.load_start),
            load(s.load_end)
        ));
        t.row(
            "connect all agents / converge all",
            format!(
                "{:.1} s / {:.1} s, {} pushes",
                self.initial.connect_s, self.initial.converge_s, self.initial.pushes
            ),
        );
        for c in &self.convergence {
            let what = format!("{} ({} nodes, {} rows, {} rounds)", c.name, c.nodes, c.rows, c.rounds);
            t.row(&format!("convergence {what}: DB -> netplan_success"), latency(&c.write));
            t.row("    DB -> agent report", latency(&c.report));
            t.row("    pushes per round", format!("{:.0}", c.pushes_per_round));
            if let Some(last) = c.waves.last() {
                let totals: Vec<String> = c.waves.iter().map(|w| format!("{:.2}", w.total_s)).collect();
                t.row("    in waves (last round)", last.summary());
                t.row("    rollout time per round", format!("{} s", totals.join(", ")));
            }
        }
        let mem = |m: &Memory| {
            format!(
                "{:.1} KB/agent ({:.0} MB idle, {:.0} MB with agents)",
                m.per_agent_kb, m.rss_without_agents_mb, m.rss_with_agents_mb
            )
        };
        t.row("controller RSS", mem(&self.controller));
        if let Some(b) = &self.baseline {
            t.row("bare tonic+rustls server RSS", mem(b));
            if b.per_agent_kb > 0.0 {
                t.row(
                    "    controller / bare server per agent",
                    format!("{:.2}x", self.controller.per_agent_kb / b.per_agent_kb),
                );
            }
        }
        t.row(
            "controller CPU, idle, all agents connected",
            format!("{:.2} % of one core", self.controller_idle_cpu_percent),
        );
        for (name, d) in [("idle", &self.db_idle), ("under change (100%)", &self.db_change)] {
            t.row(
                &format!("DB per poll tick, {name}"),
                format!(
                    "{:.2} statements ({:.2} SELECT, {:.2} UPDATE), {:.0} rows read, {:.0} bytes sent; {} connections",
                    d.statements_per_tick,
                    d.selects_per_tick,
                    d.updates_per_tick,
                    d.rows_read_per_tick,
                    d.bytes_sent_per_tick,
                    d.connections
                ),
            );
        }
        let d = &self.db_time_idle;
        t.row(
            &format!("DB time per idle tick ({:.0} s, performance_schema)", d.window_s),
            format!(
                "p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (n={}); controller's DB share {:.2} % of a core",
                d.tick.p50_ms, d.tick.p99_ms, d.tick.max_ms, d.tick.n, d.busy_percent
            ),
        );
        t.row(
            "    ticks that read rows (the periodic full read)",
            if d.reading_ticks.n == 0 {
                "none in the window".to_owned()
            } else {
                format!("max {:.1} ms  (n={})", d.reading_ticks.max_ms, d.reading_ticks.n)
            },
        );
        let kinds = |kinds: &[KindTime]| {
            let each: Vec<String> =
                kinds.iter().map(|k| format!("{} {}x {:.2} ms", k.kind, k.count, k.mean_ms)).collect();
            if each.is_empty() { "none".to_owned() } else { each.join(", ") }
        };
        t.row("    by statement, idle (count, mean)", kinds(&d.kinds));
        t.row("    by statement, change rounds (count, mean)", kinds(&self.db_time_changes));
        for r in &self.restarts {
            t.row(
                &format!("controller restart ({})", r.signal),
                format!(
                    "all connected {:.1} s, all converged {:.1} s, {} pushes, {} rows written; DB: {} statements ({} UPDATE) in {:.0} s",
                    r.all_connected_s, r.all_converged_s, r.pushes, r.rows_written, r.db_statements, r.db_updates, r.window_s
                ),
            );
        }
        if let Some(a) = &self.real_agents {
            t.row(
                &format!("real agent binary, idle ({}, --apply none)", a.count),
                format!(
                    "RSS {:.1} MB ({:.1} MB anonymous), CPU {:.2} % (max of {}); DB connections {}, DB settings {}",
                    a.rss_mb_max,
                    a.rss_anon_mb_max,
                    a.cpu_percent_max,
                    a.count,
                    a.db_connections,
                    if a.db_settings.is_empty() { "none".to_owned() } else { a.db_settings.join(",") }
                ),
            );
        }
        t.finish()
    }
}

fn latency(l: &Latency) -> String {
    format!(
        "p50 {:.0} ms  p95 {:.0} ms  p99 {:.0} ms  max {:.0} ms  (n={})",
        l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms, l.n
    )
}

fn load(l: [f64; 3]) -> String {
    format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2])
}

/// Two left-aligned columns.
#[derive(Default)]
struct Table {
    title: String,
    rows: Vec<(String, String)>,
}

impl Table {
    fn title(&mut self, title: String) {
        self.title = title;
    }

    fn row(&mut self, name: &str, value: String) {
        self.rows.push((name.to_owned(), value));
    }

    fn finish(self) -> String {
        let width = self.rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        let mut out = format!("{}\n", self.title);
        for (name, value) in &self.rows {
            let _ = writeln!(out, "  {name:<width$}  {value}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_every_section() {
        let report = Report {
            convergence: vec![Scenario { name: "1 node".into(), nodes: 1, rows: 2, rounds: 3, ..Scenario::default() }],
            baseline: Some(Memory { per_agent_kb: 40.0, ..Memory::default() }),
            controller: Memory { per_agent_kb: 44.0, ..Memory::default() },
            restarts: vec![Restart { signal: "SIGTERM".into(), ..Restart::default() }],
            real_agents: Some(RealAgents { count: 3, ..RealAgents::default() }),
            ..Report::default()
        };
        let table = report.table();
        for needle in [
            "convergence 1 node",
            "1.10x",
            "SIGTERM",
            "real agent binary",
            "DB per poll tick, idle",
            "DB time per idle tick",
        ] {
            assert!(table.contains(needle), "{needle} missing from\n{table}");
        }
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["convergence"][0]["rows"], 2);
    }
}
