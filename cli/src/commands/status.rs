//! `multinicctl status`: the fleet summary and the nodes that need attention.

use std::process::ExitCode;

use multinic_proto::v1::{self, GetSummaryRequest};
use serde::Serialize;

use super::get::{all_nodes, nodes_table, status_error};
use crate::client::ConnectArgs;
use crate::view::{Format, NodeView, ProblemView, SummaryView, Table, age, print_structured};

/// Exit code when the fleet is not converged (documented in `--help`).
pub const NOT_CONVERGED: u8 = 2;

#[derive(Debug, Serialize)]
struct StatusView {
    summary: SummaryView,
    converged: bool,
    attention: Vec<NodeView>,
}

pub async fn run(connect: &ConnectArgs, format: Format) -> anyhow::Result<ExitCode> {
    let mut client = connect.fleet().await?;
    let summary = client.get_summary(GetSummaryRequest {}).await.map_err(status_error)?.into_inner();
    let nodes = all_nodes(&mut client).await?;
    let attention: Vec<v1::NodeStatus> = nodes.into_iter().filter(needs_attention).collect();
    let converged = summary.db_up && attention.is_empty() && summary.nodes_converged == summary.nodes_known;
    match format {
        Format::Json | Format::Yaml => {
            let view = StatusView {
                summary: SummaryView::from(&summary),
                converged,
                attention: attention.iter().map(NodeView::from).collect(),
            };
            print_structured(&view, format)?;
        }
        Format::Table | Format::Wide => print!("{}", render(&summary, &attention, format == Format::Wide)),
    }
    Ok(if converged { ExitCode::SUCCESS } else { ExitCode::from(NOT_CONVERGED) })
}

fn needs_attention(n: &v1::NodeStatus) -> bool {
    n.convergence != v1::Convergence::Converged as i32 || !n.connected || !n.row_problems.is_empty()
}

fn render(s: &v1::FleetSummary, attention: &[v1::NodeStatus], wide: bool) -> String {
    let db = if s.db_up {
        format!("up, last poll {} ago", age(s.last_poll_unix_ms))
    } else {
        format!("DOWN ({}); agents keep their last desired state", s.db_error)
    };
    let mut out = format!(
        "Nodes:      {} known, {} agents connected\nConverged:  {} converged, {} pending, {} failed\nDatabase:   {db}\nBad rows:   {}\n",
        s.nodes_known, s.agents_connected, s.nodes_converged, s.nodes_pending, s.nodes_failed, s.invalid_rows,
    );
    if attention.is_empty() {
        out.push_str("\nAll nodes converged.\n");
    } else {
        out.push_str("\nNodes that need attention:\n");
        out.push_str(&nodes_table(attention, wide));
    }
    if !s.row_problems.is_empty() {
        out.push_str("\nRows the controller rejected:\n");
        let mut table = Table::new(&["ROW", "NODE", "MAC", "ERROR", "MESSAGE"]);
        for p in s.row_problems.iter().map(ProblemView::from) {
            let node = if p.node.is_empty() { "-".to_owned() } else { p.node };
            table.row(vec![p.row_id.to_string(), node, p.mac_address, p.error_code, p.message]);
        }
        out.push_str(&table.render());
    }
    out
}
