//! `multinicctl get nodes | node NAME | interfaces [--node N]`.

use std::process::ExitCode;

use clap::Subcommand;
use multinic_proto::v1::fleet_service_client::FleetServiceClient;
use multinic_proto::v1::{self, GetNodeRequest, ListNodesRequest};
use tonic::transport::Channel;

use crate::client::ConnectArgs;
use crate::out::out;
use crate::view::{
    DriftView, Format, InterfaceView, NodeView, Table, age, convergence, print_structured, problems_table,
};

#[derive(Debug, Subcommand)]
pub enum What {
    /// Every node, one line each.
    Nodes,
    /// One node with its interfaces.
    Node {
        /// The node's name (short or full; case does not matter).
        name: String,
    },
    /// Every interface of the fleet, or of one node.
    Interfaces {
        /// Only this node's interfaces.
        #[arg(long)]
        node: Option<String>,
    },
}

pub async fn run(connect: &ConnectArgs, format: Format, what: What) -> anyhow::Result<ExitCode> {
    let mut client = connect.fleet().await?;
    match what {
        What::Nodes => {
            let nodes = all_nodes(&mut client).await?;
            match format {
                Format::Json | Format::Yaml => {
                    print_structured(&nodes.iter().map(NodeView::from).collect::<Vec<_>>(), format)?;
                }
                Format::Table | Format::Wide => out!("{}", nodes_table(&nodes, format == Format::Wide)),
            }
        }
        What::Node { name } => {
            let node = client.get_node(GetNodeRequest { name }).await.map_err(status_error)?.into_inner();
            match format {
                Format::Json | Format::Yaml => print_structured(&NodeView::from(&node), format)?,
                Format::Table | Format::Wide => out!("{}", node_details(&node, format == Format::Wide)),
            }
        }
        What::Interfaces { node } => {
            let nodes = match node {
                Some(name) => vec![client.get_node(GetNodeRequest { name }).await.map_err(status_error)?.into_inner()],
                None => all_nodes(&mut client).await?,
            };
            let interfaces: Vec<InterfaceView> = nodes.iter().flat_map(|n| NodeView::from(n).interfaces).collect();
            match format {
                Format::Json | Format::Yaml => print_structured(&interfaces, format)?,
                Format::Table | Format::Wide => out!("{}", interfaces_table(&interfaces, format == Format::Wide)),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Every node, page by page.
pub async fn all_nodes(client: &mut FleetServiceClient<Channel>) -> anyhow::Result<Vec<v1::NodeStatus>> {
    let mut nodes = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_nodes(ListNodesRequest { page_size: 1000, page_token })
            .await
            .map_err(status_error)?
            .into_inner();
        nodes.extend(page.nodes);
        if page.next_page_token.is_empty() {
            return Ok(nodes);
        }
        page_token = page.next_page_token;
    }
}

/// A gRPC status as a one-line error.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    // Transport failures (e.g. a refused TLS handshake) hide their reason in the source chain.
    match std::error::Error::source(&status) {
        Some(source) => {
            anyhow::anyhow!("{:?}: {}: {}", status.code(), status.message(), crate::client::root_cause(source))
        }
        None => anyhow::anyhow!("{:?}: {}", status.code(), status.message()),
    }
}

pub fn nodes_table(nodes: &[v1::NodeStatus], wide: bool) -> String {
    let mut header = vec!["NODE", "STATE", "CONNECTED", "INTERFACES", "GENERATION", "LAST SEEN"];
    if wide {
        header.extend(["AGENT", "BACKEND", "APPLY", "DESIRED DIGEST", "APPLIED DIGEST"]);
    }
    let mut table = Table::new(&header).color_columns(&[1, 2]);
    for n in nodes {
        let (applied, desired) = crate::view::applied_of(&n.interfaces);
        let mut row = vec![
            n.name.clone(),
            convergence(n.convergence).to_owned(),
            if n.connected { "yes" } else { "no" }.to_owned(),
            format!("{applied}/{desired}"),
            format!("{}/{}", n.applied_generation, n.desired_generation),
            age(n.last_seen_unix_ms),
        ];
        if wide {
            row.extend([
                dash(&n.agent_version),
                dash(&n.backend),
                dash(&n.apply_mode),
                short(&n.desired_digest),
                short(&n.applied_digest),
            ]);
        }
        table.row(row);
    }
    table.render()
}

pub fn interfaces_table(interfaces: &[InterfaceView], wide: bool) -> String {
    let mut header = vec!["NODE", "NAME", "MAC", "ADDRESS", "MTU", "STATE", "ERROR"];
    if wide {
        header.extend(["ROWS", "SINCE"]);
    }
    let mut table = Table::new(&header).color_columns(&[5]);
    for i in interfaces {
        let error = if i.error_code.is_empty() { "-".to_owned() } else { format!("{}: {}", i.error_code, i.message) };
        let mut row = vec![
            i.node.clone(),
            dash(&i.name),
            i.mac_address.clone(),
            dash(&i.address),
            if i.mtu == 0 { "-".to_owned() } else { i.mtu.to_string() },
            i.state.clone(),
            error,
        ];
        if wide {
            row.push(i.row_ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(","));
            row.push(i.last_change.clone().unwrap_or_else(|| "-".to_owned()));
        }
        table.row(row);
    }
    table.render()
}

fn node_details(n: &v1::NodeStatus, wide: bool) -> String {
    let view = NodeView::from(n);
    let mut out = format!(
        "Node:        {}\nState:       {}\nConnected:   {}\nAgent:       {} ({} backend, apply {})\nLast seen:   {}\nGeneration:  applied {} of {}\nDigest:      applied {} desired {}\n\n",
        view.name,
        view.convergence,
        if view.connected { "yes" } else { "no" },
        dash(&view.agent_version),
        dash(&view.backend),
        dash(&view.apply_mode),
        age(n.last_seen_unix_ms),
        view.applied_generation,
        view.desired_generation,
        short(&view.applied_digest),
        short(&view.desired_digest),
    );
    if view.last_drift.is_some() {
        out.push_str(&format!(
            "Drift:       last found {} ago, {} repaired since the controller became active\n\n",
            age(n.last_drift_unix_ms),
            view.drift_repairs
        ));
    }
    if !view.problems.is_empty() {
        out.push_str("Problems:\n");
        for p in &view.problems {
            out.push_str(&format!("  {}: {}\n", p.error_code, p.message));
        }
        out.push('\n');
    }
    if view.interfaces.is_empty() {
        out.push_str("No interfaces desired.\n");
    } else {
        out.push_str(&interfaces_table(&view.interfaces, wide));
    }
    if view.interfaces_omitted > 0 {
        out.push_str(&format!("... and {} more held interfaces not listed\n", view.interfaces_omitted));
    }
    if !view.drift.is_empty() {
        out.push_str("\nLast drift found:\n");
        out.push_str(&drift_table(&view.drift));
    }
    if !view.row_problems.is_empty() {
        out.push_str("\nRows with problems:\n");
        out.push_str(&problems_table(&view.row_problems, view.row_problems_omitted, false, "rejected rows"));
    }
    if !view.row_warnings.is_empty() {
        out.push_str("\nRows that look wrong (applied anyway):\n");
        out.push_str(&problems_table(&view.row_warnings, view.row_warnings_omitted, false, "warnings"));
    }
    out
}

/// `NAME MAC KIND FOUND WANTED ACTION` rows of one drift check.
pub fn drift_table(drift: &[DriftView]) -> String {
    let mut table = Table::new(&["NAME", "MAC", "KIND", "FOUND", "WANTED", "ACTION"]).color_columns(&[5]);
    for d in drift {
        table.row(vec![
            d.name.clone(),
            d.mac_address.clone(),
            d.kind.clone(),
            d.found.clone(),
            d.wanted.clone(),
            d.action.clone(),
        ]);
    }
    table.render()
}

pub fn dash(s: &str) -> String {
    if s.is_empty() { "-".to_owned() } else { s.to_owned() }
}

fn short(digest: &str) -> String {
    if digest.is_empty() { "-".to_owned() } else { digest.chars().take(12).collect() }
}
