//! multinicctl: see the fleet at a glance, and run the whole system locally.

mod client;
mod commands;
mod out;
mod view;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::client::ConnectArgs;
use crate::view::Format;

/// See and operate a multinic fleet.
///
/// Exit codes: 0 = success (for status: every node converged and the
/// database up; for diff: nothing would change; for rollout status: no
/// rollout in progress); 1 = error (e.g. controller unreachable); 2 = the
/// fleet is not converged (status), changes are pending (diff) or a rollout
/// is running or stopped (rollout status), so scripts can gate on it.
#[derive(Debug, Parser)]
#[command(name = "multinicctl", version, about, long_about)]
struct Cli {
    #[command(flatten)]
    connect: ConnectArgs,

    /// Output format.
    #[arg(short = 'o', long, global = true, env = "MULTINIC_OUTPUT", default_value = "table")]
    output: Format,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fleet summary plus the nodes that need attention.
    Status,
    /// Show nodes or interfaces.
    Get {
        #[command(subcommand)]
        what: commands::get::What,
    },
    /// Every node's state, then each change as it happens (until interrupted).
    Watch,
    /// What the database's desired state would change on each node, before it lands.
    ///
    /// Per node and interface, against what its agent last reported applied: add, change (each
    /// field: old → new), remove, held (the mass-deletion guard holds the
    /// removal, or a rollout holds the node's changes, and why), and the rows validation rejected, with their
    /// reasons. A node whose agent has not reported since the controller
    /// became active is shown as unknown. Exit 0: nothing would change; 2:
    /// changes are pending (or a node is unknown); rejected rows alone
    /// change nothing.
    Diff {
        /// Only this node (short or full name; case does not matter).
        #[arg(long, env = "MULTINIC_DIFF_NODE")]
        node: Option<String>,
    },
    /// See and steer a change released in waves: one that touched more
    /// nodes than the controller's `--rollout-threshold` goes out to a canary
    /// node first, then in growing waves, each once the previous one reported,
    /// and stops at the first failed interface.
    Rollout {
        #[command(subcommand)]
        action: commands::rollout::Action,
    },
    /// Let go the removals held by the mass-deletion guard. TOKEN (from
    /// `status`) names the exact set of removals held; if it changed since,
    /// nothing is released.
    ConfirmRemovals {
        /// The token `multinicctl status` shows.
        token: String,
    },
    /// Run the whole system locally: embedded SQLite, a controller and three
    /// agents in temporary folders; no root, no server to install.
    #[cfg(feature = "demo")]
    Demo(commands::demo::DemoArgs),
    /// Make a development CA and controller, agent and operator certificates.
    Certs(commands::certs::CertsArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Status => commands::status::run(&cli.connect, cli.output).await,
        Command::Get { what } => commands::get::run(&cli.connect, cli.output, what).await,
        Command::Watch => commands::watch::run(&cli.connect, cli.output).await,
        Command::Diff { node } => commands::diff::run(&cli.connect, cli.output, node).await,
        Command::Rollout { action } => commands::rollout::run(&cli.connect, cli.output, action).await,
        Command::ConfirmRemovals { token } => commands::confirm::run(&cli.connect, token).await,
        #[cfg(feature = "demo")]
        Command::Demo(args) => commands::demo::run(args).await,
        Command::Certs(args) => commands::certs::run(args),
    };
    match (result, out::failure()) {
        (Err(e), _) => {
            eprintln!("error: {}", multinic_runtime::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
        (Ok(_), Some(failure)) => {
            eprintln!("error: cannot write to stdout: {failure}");
            ExitCode::FAILURE
        }
        (Ok(code), None) => code,
    }
}
