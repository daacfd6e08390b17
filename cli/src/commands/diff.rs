//! `multinicctl diff [--node N]`: what the desired state the controller read
//! from the database would change on each node, against what the node's
//! agent last reported applied, before (or while) it lands.
//!
//! Exists so an operator sees a change's effect per node and interface (add,
//! change field by field, remove, held by the guard, rejected rows) and can
//! gate on it: exit 0 when nothing would change, 2 when changes are pending.
//! It only reads: it never asks the controller to push, hold or release.

use std::process::ExitCode;

use multinic_proto::v1::fleet_service_client::FleetServiceClient;
use multinic_proto::v1::{self, DiffRequest};
use serde::Serialize;
use tonic::transport::Channel;

use super::get::{dash, status_error};
use crate::client::ConnectArgs;
use crate::out::out;
use crate::view::{Format, NodeProblemView, ProblemView, Table, age, print_structured, problems_table, time};

/// Exit code when changes are pending (documented in `--help`).
pub const CHANGES_PENDING: u8 = 2;

#[derive(Debug, Serialize)]
struct DiffView {
    /// Whether something would change (or might: a node's applied state is unknown).
    pending: bool,
    nodes: Vec<NodeDiffView>,
    /// Nodes on which nothing would change and no row is rejected.
    nodes_unchanged: u32,
    /// Rejected rows that name no valid node (not with --node).
    unattached: Vec<ProblemView>,
    unattached_omitted: u32,
}

#[derive(Debug, Serialize)]
struct NodeDiffView {
    name: String,
    connected: bool,
    /// Whether the controller knows what the agent applied (it reported since
    /// the controller became active); when false no interface is compared.
    applied_known: bool,
    /// When that report arrived.
    applied_at: Option<String>,
    #[serde(skip)]
    applied_unix_ms: i64,
    interfaces: Vec<InterfaceDiffView>,
    interfaces_omitted: u32,
    interfaces_unchanged: u32,
    interfaces_desired: u32,
    rejected_rows: Vec<ProblemView>,
    rejected_rows_omitted: u32,
    problems: Vec<NodeProblemView>,
    /// Why a rollout holds the node's changes (absent: it does not).
    #[serde(skip_serializing_if = "Option::is_none")]
    rollout_hold: Option<String>,
}

#[derive(Debug, Serialize)]
struct InterfaceDiffView {
    node: String,
    mac_address: String,
    /// Its multinicN name on the node; empty when it has none yet.
    name: String,
    /// add, change, remove or held.
    action: String,
    changes: Vec<FieldChangeView>,
    reason: String,
    row_ids: Vec<i64>,
}

#[derive(Debug, Serialize)]
struct FieldChangeView {
    field: String,
    /// `null`: none (an add's old value, a remove's new value, no address).
    old: Option<String>,
    new: Option<String>,
}

pub async fn run(connect: &ConnectArgs, format: Format, node: Option<String>) -> anyhow::Result<ExitCode> {
    let mut client = connect.fleet().await?;
    let view = match node {
        Some(node) => {
            let request = DiffRequest { node, ..Default::default() };
            let response = client.diff(request).await.map_err(status_error)?.into_inner();
            view_of(response.nodes, 0, Vec::new(), 0)
        }
        None => all_pages(&mut client).await?,
    };
    match format {
        Format::Json | Format::Yaml => print_structured(&view, format)?,
        Format::Table | Format::Wide => out!("{}", render(&view, format == Format::Wide)),
    }
    Ok(if view.pending { ExitCode::from(CHANGES_PENDING) } else { ExitCode::SUCCESS })
}

/// Every page of the fleet's diff.
async fn all_pages(client: &mut FleetServiceClient<Channel>) -> anyhow::Result<DiffView> {
    let (mut nodes, mut unchanged, mut unattached, mut unattached_omitted) = (Vec::new(), 0u32, Vec::new(), 0);
    let mut page_token = String::new();
    loop {
        let request = DiffRequest { node: String::new(), page_size: 1000, page_token };
        let page = client.diff(request).await.map_err(status_error)?.into_inner();
        nodes.extend(page.nodes);
        unchanged = unchanged.saturating_add(page.nodes_unchanged);
        unattached.extend(page.unattached);
        unattached_omitted += page.unattached_omitted;
        if page.next_page_token.is_empty() {
            return Ok(view_of(nodes, unchanged, unattached, unattached_omitted));
        }
        page_token = page.next_page_token;
    }
}

fn view_of(nodes: Vec<v1::NodeDiff>, unchanged: u32, unattached: Vec<v1::RowProblem>, omitted: u32) -> DiffView {
    let nodes: Vec<NodeDiffView> = nodes.iter().map(NodeDiffView::from).collect();
    let pending = nodes.iter().any(|n| !n.applied_known || !n.interfaces.is_empty() || n.interfaces_omitted > 0);
    DiffView {
        pending,
        nodes,
        nodes_unchanged: unchanged,
        unattached: unattached.iter().map(ProblemView::from).collect(),
        unattached_omitted: omitted,
    }
}

impl From<&v1::NodeDiff> for NodeDiffView {
    fn from(n: &v1::NodeDiff) -> Self {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let interfaces = n
            .interfaces
            .iter()
            .map(|i| InterfaceDiffView {
                node: n.name.clone(),
                mac_address: i.mac_address.clone(),
                name: i.name.clone(),
                action: action(i.action).to_owned(),
                changes: i
                    .changes
                    .iter()
                    .map(|c| FieldChangeView { field: c.field.clone(), old: some(&c.old), new: some(&c.new) })
                    .collect(),
                reason: i.reason.clone(),
                row_ids: i.row_ids.clone(),
            })
            .collect();
        Self {
            name: n.name.clone(),
            connected: n.connected,
            applied_known: n.applied_known,
            applied_at: time(n.applied_unix_ms),
            applied_unix_ms: n.applied_unix_ms,
            interfaces,
            interfaces_omitted: n.interfaces_omitted,
            interfaces_unchanged: n.interfaces_unchanged,
            interfaces_desired: n.interfaces_desired,
            rejected_rows: n.rejected_rows.iter().map(ProblemView::from).collect(),
            rejected_rows_omitted: n.rejected_rows_omitted,
            problems: n.problems.iter().map(NodeProblemView::from).collect(),
            rollout_hold: some(&n.rollout_hold),
        }
    }
}

fn action(value: i32) -> &'static str {
    match v1::DiffAction::try_from(value) {
        Ok(v1::DiffAction::Add) => "add",
        Ok(v1::DiffAction::Change) => "change",
        Ok(v1::DiffAction::Remove) => "remove",
        Ok(v1::DiffAction::Held) => "held",
        _ => "unknown",
    }
}

/// `NODE NAME MAC ACTION CHANGES REASON` (wide: and `ROWS`), one line per
/// interface and per rejected row, then what the table cannot say per line.
fn render(view: &DiffView, wide: bool) -> String {
    let mut header = vec!["NODE", "NAME", "MAC", "ACTION", "CHANGES", "REASON"];
    if wide {
        header.push("ROWS");
    }
    let mut table = Table::new(&header).color_columns(&[3]);
    let mut entries = 0;
    for node in &view.nodes {
        for i in &node.interfaces {
            let changes: Vec<String> = i
                .changes
                .iter()
                .map(|c| {
                    format!("{} {} → {}", c.field, c.old.as_deref().unwrap_or("-"), c.new.as_deref().unwrap_or("-"))
                })
                .collect();
            let mut row = vec![
                node.name.clone(),
                dash(&i.name),
                i.mac_address.clone(),
                i.action.clone(),
                if changes.is_empty() { "-".to_owned() } else { changes.join(", ") },
                dash(&i.reason),
            ];
            if wide {
                row.push(i.row_ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(","));
            }
            table.row(row);
            entries += 1;
        }
        for p in &node.rejected_rows {
            let mut row = vec![
                node.name.clone(),
                "-".to_owned(),
                p.mac_address.clone(),
                "rejected".to_owned(),
                "-".to_owned(),
                format!("row {}: {}: {}", p.row_id, p.error_code, p.message),
            ];
            if wide {
                row.push(p.row_id.to_string());
            }
            table.row(row);
            entries += 1;
        }
    }
    let mut out = if entries == 0 { "Nothing would change.\n".to_owned() } else { table.render() };
    let notes: Vec<String> = view.nodes.iter().flat_map(notes).collect();
    if !notes.is_empty() {
        out.push('\n');
        for note in notes {
            out.push_str(&format!("{note}\n"));
        }
    }
    if !view.unattached.is_empty() {
        out.push_str("\nRejected rows that name no valid node:\n");
        out.push_str(&problems_table(&view.unattached, view.unattached_omitted, true, "rejected rows"));
    }
    out.push('\n');
    out.push_str(&summary(view));
    out
}

/// What a node's lines cannot say: its agent, its problems, what was left out.
fn notes(n: &NodeDiffView) -> Vec<String> {
    let mut notes = Vec::new();
    let unknown = "what it has is unknown (no report since the controller became active)";
    match (n.connected, n.applied_known) {
        (true, true) => {}
        (false, true) => notes.push(format!(
            "{}: agent not connected: compared with what it last reported {} ago",
            n.name,
            age(n.applied_unix_ms)
        )),
        (connected, false) => notes.push(format!(
            "{}: {}{unknown}; {} interface(s) desired",
            n.name,
            if connected { "agent connected, " } else { "agent not connected, " },
            n.interfaces_desired
        )),
    }
    if let Some(hold) = &n.rollout_hold {
        notes.push(format!("{}: held by a rollout: {hold} (multinicctl rollout status)", n.name));
    }
    for p in &n.problems {
        notes.push(format!("{}: {}: {}", n.name, p.error_code, p.message));
    }
    if n.interfaces_omitted > 0 {
        notes.push(format!("{}: ... and {} more interface change(s) not listed", n.name, n.interfaces_omitted));
    }
    if n.rejected_rows_omitted > 0 {
        notes.push(format!("{}: ... and {} more rejected rows not listed", n.name, n.rejected_rows_omitted));
    }
    notes
}

fn summary(view: &DiffView) -> String {
    let changes: u32 = view.nodes.iter().map(|n| n.interfaces.len() as u32 + n.interfaces_omitted).sum();
    let changing = view.nodes.iter().filter(|n| !n.interfaces.is_empty()).count();
    let unknown = view.nodes.iter().filter(|n| !n.applied_known).count();
    let rejected: u32 = view.nodes.iter().map(|n| n.rejected_rows.len() as u32 + n.rejected_rows_omitted).sum();
    let mut parts = vec![format!("{changes} interface change(s) pending on {changing} node(s)")];
    if unknown > 0 {
        parts.push(format!("{unknown} node(s) unknown"));
    }
    if rejected > 0 {
        parts.push(format!("{rejected} rejected row(s) change nothing"));
    }
    // Nodes listed only for rejected rows or problems change nothing either.
    let quiet = view.nodes.len() - changing - unknown;
    parts.push(format!("{} node(s) unchanged", view.nodes_unchanged as usize + quiet));
    format!("{}.\n", parts.join("; "))
}
