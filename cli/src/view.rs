//! What multinicctl prints: views of the fleet service's messages, as
//! tables (kubectl style) or as JSON/YAML carrying every field.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::out::{out, outln};
use multinic_proto::v1;
use serde::Serialize;

/// `-o`: how to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Wide,
    Json,
    Yaml,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "table" => Ok(Self::Table),
            "wide" => Ok(Self::Wide),
            "json" => Ok(Self::Json),
            "yaml" => Ok(Self::Yaml),
            other => Err(format!("unknown output format {other:?}: expected table, wide, json or yaml")),
        }
    }
}

/// Prints a serialisable value as JSON or YAML.
pub fn print_structured<T: Serialize>(value: &T, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Yaml => out!("{}", serde_yaml::to_string(value)?),
        _ => outln!("{}", serde_json::to_string_pretty(value)?),
    }
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct SummaryView {
    pub nodes_known: u32,
    pub agents_connected: u32,
    pub nodes_converged: u32,
    pub nodes_pending: u32,
    pub nodes_failed: u32,
    pub db_up: bool,
    pub db_error: String,
    pub last_poll: Option<String>,
    pub invalid_rows: u32,
    pub controller_version: String,
    pub row_problems: Vec<ProblemView>,
    /// Rejected rows not listed (the list is bounded).
    pub row_problems_omitted: u32,
    /// Accepted rows that look wrong (applied anyway).
    pub row_warnings: Vec<ProblemView>,
    pub row_warnings_omitted: u32,
    pub removals_held: u32,
    pub removal_guard: String,
    pub removal_guard_token: String,
}

#[derive(Debug, Serialize)]
pub struct ProblemView {
    pub row_id: i64,
    pub node: String,
    pub mac_address: String,
    pub error_code: String,
    pub message: String,
}

#[derive(Debug, Serialize)]
pub struct NodeView {
    pub name: String,
    pub convergence: String,
    pub connected: bool,
    pub agent_version: String,
    pub backend: String,
    pub apply_mode: String,
    pub last_seen: Option<String>,
    pub desired_generation: u64,
    pub desired_digest: String,
    pub applied_generation: u64,
    pub applied_digest: String,
    pub interfaces: Vec<InterfaceView>,
    /// Held interfaces not listed (the list is bounded).
    pub interfaces_omitted: u32,
    pub row_problems: Vec<ProblemView>,
    pub row_problems_omitted: u32,
    pub row_warnings: Vec<ProblemView>,
    pub row_warnings_omitted: u32,
    /// What is wrong with the node as a whole.
    pub problems: Vec<NodeProblemView>,
    /// When its agent last reported drift (the node no longer as applied).
    pub last_drift: Option<String>,
    /// What that drift check found, and what the agent did about it.
    pub drift: Vec<DriftView>,
    /// Drift repaired on the node since the controller became active.
    pub drift_repairs: u64,
}

#[derive(Debug, Serialize)]
pub struct DriftView {
    pub mac_address: String,
    pub name: String,
    pub kind: String,
    pub found: String,
    pub wanted: String,
    pub action: String,
}

impl From<&v1::DriftFinding> for DriftView {
    fn from(f: &v1::DriftFinding) -> Self {
        // Unknown values (a newer agent) read as their number.
        let kind =
            multinic_proto::DriftKind::try_from(f.kind).map_or_else(|_| f.kind.to_string(), |k| k.as_str().into());
        let action = multinic_proto::DriftAction::try_from(f.action)
            .map_or_else(|_| f.action.to_string(), |a| a.as_str().into());
        Self {
            mac_address: f.mac_address.clone(),
            name: f.name.clone(),
            kind,
            found: f.found.clone(),
            wanted: f.wanted.clone(),
            action,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct NodeProblemView {
    pub error_code: String,
    pub message: String,
}

impl From<&v1::NodeProblem> for NodeProblemView {
    fn from(p: &v1::NodeProblem) -> Self {
        Self { error_code: error_code(p.error_code), message: p.message.clone() }
    }
}

#[derive(Debug, Serialize)]
pub struct InterfaceView {
    pub node: String,
    pub mac_address: String,
    pub name: String,
    pub address: String,
    pub mtu: u32,
    pub state: String,
    pub error_code: String,
    pub message: String,
    pub last_change: Option<String>,
    pub row_ids: Vec<i64>,
}

impl From<&v1::FleetSummary> for SummaryView {
    fn from(s: &v1::FleetSummary) -> Self {
        Self {
            nodes_known: s.nodes_known,
            agents_connected: s.agents_connected,
            nodes_converged: s.nodes_converged,
            nodes_pending: s.nodes_pending,
            nodes_failed: s.nodes_failed,
            db_up: s.db_up,
            db_error: s.db_error.clone(),
            last_poll: time(s.last_poll_unix_ms),
            invalid_rows: s.invalid_rows,
            controller_version: s.controller_version.clone(),
            row_problems: s.row_problems.iter().map(ProblemView::from).collect(),
            row_problems_omitted: s.row_problems_omitted,
            row_warnings: s.row_warnings.iter().map(ProblemView::from).collect(),
            row_warnings_omitted: s.row_warnings_omitted,
            removals_held: s.removals_held,
            removal_guard: s.removal_guard.clone(),
            removal_guard_token: s.removal_guard_token.clone(),
        }
    }
}

impl From<&v1::RowProblem> for ProblemView {
    fn from(p: &v1::RowProblem) -> Self {
        Self {
            row_id: p.row_id,
            node: p.node_name.clone(),
            mac_address: p.mac_address.clone(),
            error_code: error_code(p.error_code),
            message: p.message.clone(),
        }
    }
}

impl From<&v1::NodeStatus> for NodeView {
    fn from(n: &v1::NodeStatus) -> Self {
        Self {
            name: n.name.clone(),
            convergence: convergence(n.convergence).to_owned(),
            connected: n.connected,
            agent_version: n.agent_version.clone(),
            backend: n.backend.clone(),
            apply_mode: n.apply_mode.clone(),
            last_seen: time(n.last_seen_unix_ms),
            desired_generation: n.desired_generation,
            desired_digest: n.desired_digest.clone(),
            applied_generation: n.applied_generation,
            applied_digest: n.applied_digest.clone(),
            interfaces: n.interfaces.iter().map(|i| InterfaceView::new(&n.name, i)).collect(),
            interfaces_omitted: n.interfaces_omitted,
            row_problems: n.row_problems.iter().map(ProblemView::from).collect(),
            row_problems_omitted: n.row_problems_omitted,
            row_warnings: n.row_warnings.iter().map(ProblemView::from).collect(),
            row_warnings_omitted: n.row_warnings_omitted,
            problems: n.problems.iter().map(NodeProblemView::from).collect(),
            last_drift: time(n.last_drift_unix_ms),
            drift: n.last_drift.iter().map(DriftView::from).collect(),
            drift_repairs: n.drift_repairs,
        }
    }
}

/// `ROW NODE MAC ERROR MESSAGE` rows (the node column left out for one
/// node's rows), then how many more there are, if any.
pub fn problems_table(problems: &[ProblemView], omitted: u32, with_node: bool, what: &str) -> String {
    let header: &[&str] =
        if with_node { &["ROW", "NODE", "MAC", "ERROR", "MESSAGE"] } else { &["ROW", "MAC", "ERROR", "MESSAGE"] };
    let mut table = Table::new(header);
    for p in problems {
        let mut row = vec![p.row_id.to_string(), p.mac_address.clone(), p.error_code.clone(), p.message.clone()];
        if with_node {
            row.insert(1, if p.node.is_empty() { "-".to_owned() } else { p.node.clone() });
        }
        table.row(row);
    }
    let mut out = table.render();
    if omitted > 0 {
        out.push_str(&format!("... and {omitted} more {what} not listed\n"));
    }
    out
}

impl InterfaceView {
    fn new(node: &str, i: &v1::InterfaceView) -> Self {
        Self {
            node: node.to_owned(),
            mac_address: i.mac_address.clone(),
            name: i.name.clone(),
            address: i.address.clone(),
            mtu: i.mtu,
            state: state(i.state).to_owned(),
            error_code: error_code(i.error_code),
            message: i.message.clone(),
            last_change: time(i.last_change_unix_ms),
            row_ids: i.row_ids.clone(),
        }
    }
}

/// Applied interfaces and desired ones (held MACs are not desired: they are
/// left as they are).
pub fn applied_of(interfaces: &[v1::InterfaceView]) -> (usize, usize) {
    let desired = interfaces.iter().filter(|i| i.state != v1::InterfaceState::Held as i32);
    let (applied, total) =
        desired.fold((0, 0), |(a, t), i| (a + usize::from(i.state == v1::InterfaceState::Applied as i32), t + 1));
    (applied, total)
}

pub fn convergence(value: i32) -> &'static str {
    match v1::Convergence::try_from(value) {
        Ok(v1::Convergence::Converged) => "converged",
        Ok(v1::Convergence::Pending) => "pending",
        Ok(v1::Convergence::Failed) => "failed",
        Ok(v1::Convergence::Waiting) => "waiting",
        _ => "unknown",
    }
}

pub fn state(value: i32) -> &'static str {
    multinic_proto::InterfaceState::try_from(value).map_or("unknown", |s| s.as_str())
}

pub fn error_code(value: i32) -> String {
    multinic_proto::ErrorCode::from(value).as_str().to_owned()
}

/// RFC 3339 (UTC, seconds) of a unix-millisecond time; `None` for 0.
pub fn time(unix_ms: i64) -> Option<String> {
    let ms = u64::try_from(unix_ms).ok().filter(|ms| *ms > 0)?;
    Some(humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string())
}

/// "3s", "5m", "2h" since a unix-millisecond time; "-" for 0.
pub fn age(unix_ms: i64) -> String {
    let Some(ms) = u64::try_from(unix_ms).ok().filter(|ms| *ms > 0) else { return "-".to_owned() };
    let then = UNIX_EPOCH + Duration::from_millis(ms);
    let secs = SystemTime::now().duration_since(then).unwrap_or_default().as_secs();
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// Whether to colour output: only on a terminal, and never with `NO_COLOR`.
pub fn colors_enabled() -> bool {
    use std::io::IsTerminal;
    std::env::var_os("NO_COLOR").is_none() && std::io::stdout().is_terminal()
}

/// `text` in the colour its state word calls for (green good, yellow in
/// progress, red bad), when colours are enabled.
pub fn paint(text: &str, enabled: bool) -> String {
    let code = match text.trim() {
        "converged" | "applied" | "yes" | "repaired" => "32",
        "pending" | "waiting" | "held" => "33",
        "failed" | "refused" | "no" | "DOWN" | "repair_failed" | "given_up" | "not_repaired" => "31",
        _ => return text.to_owned(),
    };
    if enabled { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_owned() }
}

/// A plain-text table with left-aligned columns separated by three spaces.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
    /// Columns whose state words are coloured on a terminal.
    colored: Vec<usize>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self { rows: vec![header.iter().map(|h| (*h).to_owned()).collect()], colored: Vec::new() }
    }

    /// Colours the state words of these columns (body rows only).
    pub fn color_columns(mut self, columns: &[usize]) -> Self {
        self.colored = columns.to_vec();
        self
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        self.render_with(colors_enabled())
    }

    /// Renders with colours on or off (tests render without).
    pub fn render_with(&self, colors: bool) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| self.rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for (r, row) in self.rows.iter().enumerate() {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                let padded =
                    if c + 1 == row.len() { cell.clone() } else { format!("{cell:<width$}   ", width = widths[c]) };
                if r > 0 && self.colored.contains(&c) {
                    line.push_str(&paint(&padded, colors));
                } else {
                    line.push_str(&padded);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}
