//! `multinicctl watch`: every node's state, then each change as it happens.

use std::process::ExitCode;
use std::time::SystemTime;

use multinic_proto::v1::{self, WatchRequest};

use super::get::status_error;
use crate::client::ConnectArgs;
use crate::out::{out, outln};
use crate::view::{Format, NodeView, Table, colors_enabled, convergence};

pub async fn run(connect: &ConnectArgs, format: Format) -> anyhow::Result<ExitCode> {
    let colors = colors_enabled();
    let mut header = true;
    loop {
        let mut client = connect.fleet().await?;
        let mut events = client.watch(WatchRequest {}).await.map_err(status_error)?.into_inner();
        match stream(&mut events, format, colors, &mut header).await {
            // The controller asks watchers to come back (connection age cap,
            // certificate rotation): watch again, seamlessly.
            Err(status) if status.code() == tonic::Code::Unavailable => continue,
            Err(status) => return Err(status_error(status)),
            // Our reader went away (`watch | head`): done.
            Ok(()) if crate::out::closed() => return Ok(ExitCode::SUCCESS),
            Ok(()) => break,
        }
    }
    eprintln!("the controller ended the watch (it may be restarting); run the command again");
    Ok(ExitCode::FAILURE)
}

async fn stream(
    events: &mut tonic::Streaming<v1::FleetEvent>,
    format: Format,
    colors: bool,
    header: &mut bool,
) -> Result<(), tonic::Status> {
    while let Some(event) = events.message().await? {
        let Some(node) = event.node else { continue };
        let view = NodeView::from(&node);
        match format {
            Format::Json => outln!("{}", serde_json::to_string(&view).unwrap_or_default()),
            Format::Yaml => out!("---\n{}", serde_yaml::to_string(&view).unwrap_or_default()),
            Format::Table | Format::Wide => {
                out!("{}", line(&node, *header, colors));
                *header = false;
            }
        }
        if crate::out::closed() {
            break;
        }
    }
    Ok(())
}

/// One table line per event; the header only before the first.
fn line(node: &v1::NodeStatus, header: bool, colors: bool) -> String {
    let mut table =
        Table::new(&["TIME", "NODE", "STATE", "CONNECTED", "INTERFACES", "GENERATION"]).color_columns(&[2, 3]);
    let (applied, desired) = crate::view::applied_of(&node.interfaces);
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    table.row(vec![
        now,
        node.name.clone(),
        convergence(node.convergence).to_owned(),
        if node.connected { "yes" } else { "no" }.to_owned(),
        format!("{applied}/{desired}"),
        format!("{}/{}", node.applied_generation, node.desired_generation),
    ]);
    let text = table.render_with(colors);
    if header { text } else { text.lines().skip(1).map(|l| format!("{l}\n")).collect() }
}
