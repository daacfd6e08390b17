//! `multinicctl status`: the fleet summary and the nodes that need attention.

use std::process::ExitCode;

use multinic_proto::v1::{self, GetRolloutRequest, GetSummaryRequest};
use serde::Serialize;

use super::get::{all_nodes, status_error};
use crate::client::ConnectArgs;
use crate::out::out;
use crate::view::{Format, NodeView, ProblemView, SummaryView, Table, age, print_structured, problems_table};

/// Exit code when the fleet is not converged (documented in `--help`).
pub const NOT_CONVERGED: u8 = 2;

#[derive(Debug, Serialize)]
struct StatusView {
    summary: SummaryView,
    converged: bool,
    attention: Vec<NodeView>,
    /// The rollout in progress (running or stopped), if any: its nodes may
    /// look converged on their previous set while they wait for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    rollout: Option<RolloutLine>,
}

#[derive(Debug, Serialize)]
struct RolloutLine {
    id: u64,
    state: String,
    reason: String,
    nodes_total: u32,
    nodes_done: u32,
    nodes_pending: u32,
    nodes_failed: u32,
}

pub async fn run(connect: &ConnectArgs, format: Format) -> anyhow::Result<ExitCode> {
    let mut client = connect.fleet().await?;
    let summary = client.get_summary(GetSummaryRequest {}).await.map_err(status_error)?.into_inner();
    let nodes = all_nodes(&mut client).await?;
    let attention: Vec<v1::NodeStatus> = nodes.into_iter().filter(needs_attention).collect();
    let rollout = rollout_in_progress(&mut client).await?;
    let converged = summary.db_up
        && rollout.is_none()
        && attention.is_empty()
        && summary.nodes_converged == summary.nodes_known
        && summary.removals_held == 0;
    match format {
        Format::Json | Format::Yaml => {
            let view = StatusView {
                summary: SummaryView::from(&summary),
                converged,
                attention: attention.iter().map(NodeView::from).collect(),
                rollout,
            };
            print_structured(&view, format)?;
        }
        Format::Table | Format::Wide => {
            out!(
                "{}{}",
                rollout.map(|r| r.headline()).unwrap_or_default(),
                render(&summary, &attention, format == Format::Wide)
            )
        }
    }
    Ok(if converged { ExitCode::SUCCESS } else { ExitCode::from(NOT_CONVERGED) })
}

/// The rollout running or stopped now, if any. A controller that predates
/// rollouts (during an upgrade) has none.
async fn rollout_in_progress(
    client: &mut multinic_proto::v1::fleet_service_client::FleetServiceClient<tonic::transport::Channel>,
) -> anyhow::Result<Option<RolloutLine>> {
    let r = match client.get_rollout(GetRolloutRequest {}).await {
        Ok(r) => r.into_inner(),
        Err(status) if status.code() == tonic::Code::Unimplemented => return Ok(None),
        Err(status) => return Err(status_error(status)),
    };
    let state = super::rollout::rollout_state(r.state);
    if !matches!(state, "running" | "stopped") {
        return Ok(None);
    }
    Ok(r.present.then(|| RolloutLine {
        id: r.id,
        state: state.to_owned(),
        reason: r.reason,
        nodes_total: r.nodes_total,
        nodes_done: r.nodes_done,
        nodes_pending: r.nodes_pending,
        nodes_failed: r.nodes_failed,
    }))
}

impl RolloutLine {
    /// The lines `status` starts with while a rollout is in progress.
    fn headline(&self) -> String {
        let mut line = format!(
            "ROLLOUT {} {}: {} of {} node(s) done, {} pending, {} failed",
            self.id,
            self.state.to_uppercase(),
            self.nodes_done,
            self.nodes_total,
            self.nodes_pending,
            self.nodes_failed
        );
        if !self.reason.is_empty() {
            line.push_str(&format!("\n  {}", self.reason));
        }
        format!("{line}\n  Pending nodes keep their previous set meanwhile: multinicctl rollout status\n\n")
    }
}

fn needs_attention(n: &v1::NodeStatus) -> bool {
    n.convergence != v1::Convergence::Converged as i32
        || !n.connected
        || !n.row_problems.is_empty()
        || !n.problems.is_empty()
        || n.interfaces.iter().any(|i| i.state == v1::InterfaceState::Held as i32)
}

/// Why each node needs attention, in one line.
fn attention_table(nodes: &[v1::NodeStatus], wide: bool) -> String {
    let mut header = vec!["NODE", "STATE", "CONNECTED", "INTERFACES", "REASON"];
    if wide {
        header.insert(4, "GENERATION");
    }
    let mut table = Table::new(&header).color_columns(&[1, 2]);
    for n in nodes {
        let (applied, desired) = crate::view::applied_of(&n.interfaces);
        let mut row = vec![
            n.name.clone(),
            crate::view::convergence(n.convergence).to_owned(),
            if n.connected { "yes" } else { "no" }.to_owned(),
            format!("{applied}/{desired}"),
            reason(n),
        ];
        if wide {
            row.insert(4, format!("{}/{}", n.applied_generation, n.desired_generation));
        }
        table.row(row);
    }
    table.render()
}

fn reason(n: &v1::NodeStatus) -> String {
    let count = |state: v1::InterfaceState| n.interfaces.iter().filter(|i| i.state == state as i32).count();
    let mut reasons: Vec<String> = n.problems.iter().map(|p| p.message.clone()).collect();
    if !n.connected {
        reasons.push("agent not connected".to_owned());
    }
    let bad: Vec<&v1::InterfaceView> = n
        .interfaces
        .iter()
        .filter(|i| i.state == v1::InterfaceState::Failed as i32 || i.state == v1::InterfaceState::Refused as i32)
        .collect();
    if let Some(first) = bad.first() {
        let code = crate::view::error_code(first.error_code);
        reasons.push(format!("{} interface(s) failed or refused ({code} on {})", bad.len(), first.mac_address));
    }
    let waiting = count(v1::InterfaceState::Waiting);
    if waiting > 0 {
        reasons.push(format!("{waiting} interface(s) waiting for their MAC to appear"));
    }
    let unanswered = n.problems.iter().any(|p| p.error_code == v1::ErrorCode::PushUnanswered as i32);
    if n.connected && n.convergence == v1::Convergence::Pending as i32 && !unanswered {
        reasons.push(format!(
            "push outstanding (applied generation {} of {})",
            n.applied_generation, n.desired_generation
        ));
    }
    if !n.row_problems.is_empty() {
        reasons.push(format!("{} rejected row(s)", n.row_problems.len() + n.row_problems_omitted as usize));
    }
    let guarded = n.interfaces.iter().filter(|i| i.error_code == v1::ErrorCode::RemovalHeld as i32).count();
    if guarded > 0 {
        reasons.push(format!("{guarded} removal(s) held by the guard"));
    }
    reasons.join("; ")
}

fn render(s: &v1::FleetSummary, attention: &[v1::NodeStatus], wide: bool) -> String {
    let db = if s.db_up {
        format!("up, last poll {} ago", age(s.last_poll_unix_ms))
    } else {
        format!("DOWN ({}); agents keep their last desired state", s.db_error)
    };
    let mut out = String::new();
    if s.removals_held > 0 {
        out.push_str(&format!(
            "REMOVALS HELD: {} interface removal(s) held back by the mass-deletion guard:\n  {}\n\
             Check the database. If the removals are intended: multinicctl confirm-removals {}\n\n",
            s.removals_held, s.removal_guard, s.removal_guard_token
        ));
    }
    out.push_str(&format!(
        "Nodes:      {} known, {} agents connected\nConverged:  {} converged, {} pending, {} failed\nDatabase:   {db}\nBad rows:   {}\n",
        s.nodes_known, s.agents_connected, s.nodes_converged, s.nodes_pending, s.nodes_failed, s.invalid_rows,
    ));
    let warnings = s.row_warnings.len() + s.row_warnings_omitted as usize;
    if warnings > 0 {
        out.push_str(&format!("Warnings:   {warnings} row(s) look wrong but are applied\n"));
    }
    if attention.is_empty() && s.db_up {
        out.push_str("\nAll nodes converged.\n");
    } else if attention.is_empty() {
        out.push_str("\nEvery node has its last desired state; changes wait until the database is back.\n");
    } else {
        out.push_str("\nNodes that need attention:\n");
        out.push_str(&attention_table(attention, wide));
    }
    if !s.row_problems.is_empty() {
        out.push_str("\nRows the controller rejected:\n");
        let problems: Vec<ProblemView> = s.row_problems.iter().map(ProblemView::from).collect();
        out.push_str(&problems_table(&problems, s.row_problems_omitted, true, "rejected rows"));
    }
    if !s.row_warnings.is_empty() {
        out.push_str("\nRows that look wrong (applied anyway):\n");
        let warnings: Vec<ProblemView> = s.row_warnings.iter().map(ProblemView::from).collect();
        out.push_str(&problems_table(&warnings, s.row_warnings_omitted, true, "warnings"));
    }
    out
}
