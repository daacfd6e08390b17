//! `multinicctl rollout status|resume|abort`: watch and steer a change that
//! the controller releases in waves.
//!
//! Exists because a change touching many nodes at once (an MTU on a subnet
//! the whole fleet uses) goes out canary first, then in growing waves, and
//! stops at the first failed interface: the operator needs to see where it
//! stands and to decide what happens next. `status` only reads; `resume` and
//! `abort` act on exactly the rollout they name (the controller refuses an
//! action naming another rollout than its current one), so a newer rollout
//! is never resumed or aborted by mistake.

use std::process::ExitCode;

use clap::Subcommand;
use multinic_proto::v1::fleet_service_client::FleetServiceClient;
use multinic_proto::v1::{self, GetRolloutRequest, RolloutActionRequest};
use serde::Serialize;
use tonic::transport::Channel;

use super::get::status_error;
use crate::client::ConnectArgs;
use crate::out::out;
use crate::view::{Format, Table, age, print_structured, time};

/// Exit code of `rollout status` while a rollout is running or stopped
/// (documented in `--help`).
pub const IN_PROGRESS: u8 = 2;

#[derive(Debug, Subcommand)]
pub enum Action {
    /// The current (or last) rollout: its state, waves and nodes. Exit 0: no
    /// rollout in progress (none, completed, aborted or superseded); 2: one is
    /// running or stopped.
    Status,
    /// Release a stopped rollout again, from the wave where it stopped; prints
    /// the rollout as `status` does.
    Resume {
        /// The rollout's id, as `rollout status` shows it (default: the
        /// current rollout; give it in scripts, so that a newer rollout is
        /// never resumed by mistake).
        id: Option<u64>,
    },
    /// End a running or stopped rollout: the nodes not yet released keep
    /// their previous set until their rows change again; prints the rollout.
    Abort {
        /// The rollout's id, as `rollout status` shows it (default: the
        /// current rollout; give it in scripts).
        id: Option<u64>,
    },
}

pub async fn run(connect: &ConnectArgs, format: Format, action: Action) -> anyhow::Result<ExitCode> {
    let mut client = connect.fleet().await?;
    let status = match action {
        Action::Status => get(&mut client).await?,
        Action::Resume { id } => {
            let id = id_or_current(&mut client, id).await?;
            client.resume_rollout(RolloutActionRequest { id }).await.map_err(status_error)?.into_inner()
        }
        Action::Abort { id } => {
            let id = id_or_current(&mut client, id).await?;
            client.abort_rollout(RolloutActionRequest { id }).await.map_err(status_error)?.into_inner()
        }
    };
    let view = RolloutView::from(&status);
    match format {
        Format::Json | Format::Yaml => print_structured(&view, format)?,
        Format::Table | Format::Wide => out!("{}", render(&view, format == Format::Wide)),
    }
    Ok(if view.in_progress() { ExitCode::from(IN_PROGRESS) } else { ExitCode::SUCCESS })
}

async fn get(client: &mut FleetServiceClient<Channel>) -> anyhow::Result<v1::RolloutStatus> {
    Ok(client.get_rollout(GetRolloutRequest {}).await.map_err(status_error)?.into_inner())
}

/// The id given, or the current rollout's.
async fn id_or_current(client: &mut FleetServiceClient<Channel>, id: Option<u64>) -> anyhow::Result<u64> {
    if let Some(id) = id {
        return Ok(id);
    }
    let current = get(client).await?;
    anyhow::ensure!(current.present, "there is no rollout to act on (none since the controller became active)");
    Ok(current.id)
}

/// Everything a rollout's status says; JSON and YAML print it whole.
#[derive(Debug, Serialize)]
struct RolloutView {
    /// False: no rollout since the controller became active.
    present: bool,
    id: u64,
    /// running, stopped, aborted, completed or superseded.
    state: String,
    reason: String,
    started_at: Option<String>,
    updated_at: Option<String>,
    #[serde(skip)]
    started_unix_ms: i64,
    #[serde(skip)]
    updated_unix_ms: i64,
    threshold: u32,
    max_unavailable: u32,
    nodes_total: u32,
    nodes_pending: u32,
    nodes_released: u32,
    nodes_done: u32,
    nodes_failed: u32,
    waves: Vec<WaveView>,
}

#[derive(Debug, Serialize)]
struct WaveView {
    /// 0 is the canary.
    number: u32,
    /// pending, released, done or failed.
    state: String,
    released_at: Option<String>,
    #[serde(skip)]
    released_unix_ms: i64,
    nodes_total: u32,
    nodes: Vec<NodeView>,
    /// Nodes of the wave not listed (the list is bounded).
    nodes_omitted: u32,
}

#[derive(Debug, Serialize)]
struct NodeView {
    name: String,
    /// pending, released, done or failed.
    state: String,
    reason: String,
}

impl RolloutView {
    fn in_progress(&self) -> bool {
        self.present && matches!(self.state.as_str(), "running" | "stopped")
    }
}

impl From<&v1::RolloutStatus> for RolloutView {
    fn from(s: &v1::RolloutStatus) -> Self {
        let waves = s
            .waves
            .iter()
            .map(|w| WaveView {
                number: w.number,
                state: node_state(w.state).to_owned(),
                released_at: time(w.released_unix_ms),
                released_unix_ms: w.released_unix_ms,
                nodes_total: w.nodes_total,
                nodes: w
                    .nodes
                    .iter()
                    .map(|n| NodeView {
                        name: n.name.clone(),
                        state: node_state(n.state).to_owned(),
                        reason: n.reason.clone(),
                    })
                    .collect(),
                nodes_omitted: w.nodes_omitted,
            })
            .collect();
        Self {
            present: s.present,
            id: s.id,
            state: if s.present { rollout_state(s.state).to_owned() } else { String::new() },
            reason: s.reason.clone(),
            started_at: time(s.started_unix_ms),
            updated_at: time(s.updated_unix_ms),
            started_unix_ms: s.started_unix_ms,
            updated_unix_ms: s.updated_unix_ms,
            threshold: s.threshold,
            max_unavailable: s.max_unavailable,
            nodes_total: s.nodes_total,
            nodes_pending: s.nodes_pending,
            nodes_released: s.nodes_released,
            nodes_done: s.nodes_done,
            nodes_failed: s.nodes_failed,
            waves,
        }
    }
}

/// The word for a `RolloutState` (`status` uses it too).
pub fn rollout_state(value: i32) -> &'static str {
    match v1::RolloutState::try_from(value) {
        Ok(v1::RolloutState::Running) => "running",
        Ok(v1::RolloutState::Stopped) => "stopped",
        Ok(v1::RolloutState::Aborted) => "aborted",
        Ok(v1::RolloutState::Completed) => "completed",
        Ok(v1::RolloutState::Superseded) => "superseded",
        _ => "unknown",
    }
}

fn node_state(value: i32) -> &'static str {
    match v1::RolloutNodeState::try_from(value) {
        Ok(v1::RolloutNodeState::Pending) => "pending",
        Ok(v1::RolloutNodeState::Released) => "released",
        Ok(v1::RolloutNodeState::Done) => "done",
        Ok(v1::RolloutNodeState::Failed) => "failed",
        _ => "unknown",
    }
}

/// A headline, the counts, one line per wave (wide: and its nodes), the
/// failed nodes with their reasons, and what the operator can do next.
fn render(view: &RolloutView, wide: bool) -> String {
    if !view.present {
        return "No rollout since the controller became active: every change so far went out at once.\n".to_owned();
    }
    let mut out = format!("Rollout {}: {}", view.id, view.state);
    if !view.reason.is_empty() {
        out.push_str(&format!(" ({})", view.reason));
    }
    out.push('\n');
    out.push_str(&format!(
        "Started {} ago, last change {} ago; waves of at most {} node(s) (threshold {} nodes).\n",
        age(view.started_unix_ms),
        age(view.updated_unix_ms),
        view.max_unavailable,
        view.threshold
    ));
    out.push_str(&format!(
        "Nodes: {} total, {} done, {} released, {} pending, {} failed.\n\n",
        view.nodes_total, view.nodes_done, view.nodes_released, view.nodes_pending, view.nodes_failed
    ));
    let mut header = vec!["WAVE", "STATE", "NODES", "RELEASED"];
    if wide {
        header.push("NODE NAMES");
    }
    let mut table = Table::new(&header).color_columns(&[1]);
    for wave in &view.waves {
        let mut row = vec![
            if wave.number == 0 { "0 (canary)".to_owned() } else { wave.number.to_string() },
            wave.state.clone(),
            wave.nodes_total.to_string(),
            if wave.released_unix_ms > 0 { format!("{} ago", age(wave.released_unix_ms)) } else { "-".to_owned() },
        ];
        if wide {
            let mut names: Vec<String> = wave.nodes.iter().map(|n| n.name.clone()).collect();
            if wave.nodes_omitted > 0 {
                names.push(format!("... {} more", wave.nodes_omitted));
            }
            row.push(names.join(","));
        }
        table.row(row);
    }
    out.push_str(&table.render());
    let failed: Vec<&NodeView> = view.waves.iter().flat_map(|w| &w.nodes).filter(|n| n.state == "failed").collect();
    if !failed.is_empty() {
        out.push_str("\nFailed:\n");
        for node in failed {
            out.push_str(&format!("  {}: {}\n", node.name, if node.reason.is_empty() { "-" } else { &node.reason }));
        }
    }
    if let Some(next) = next_steps(view) {
        out.push('\n');
        out.push_str(&next);
    }
    out
}

/// What the operator can do about a rollout in progress.
fn next_steps(view: &RolloutView) -> Option<String> {
    match view.state.as_str() {
        "stopped" => Some(format!(
            "Nothing more is released until you decide:\n  multinicctl rollout resume {id}   release it again from where it stopped\n  multinicctl rollout abort {id}    leave the {pending} pending node(s) with their previous set\n",
            id = view.id,
            pending = view.nodes_pending
        )),
        "running" => Some(format!(
            "The next wave is released when every node of the current one has reported.\n  multinicctl rollout abort {}    stop here and leave the pending node(s) as they are\n",
            view.id
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, state: v1::RolloutNodeState, reason: &str) -> v1::RolloutNode {
        v1::RolloutNode { name: name.to_owned(), state: state as i32, reason: reason.to_owned() }
    }

    fn stopped() -> v1::RolloutStatus {
        use v1::RolloutNodeState::{Failed, Pending};
        v1::RolloutStatus {
            present: true,
            id: 3,
            state: v1::RolloutState::Stopped as i32,
            reason: "node-07 multinic0 failed: MTU_REJECTED".to_owned(),
            started_unix_ms: 0,
            updated_unix_ms: 0,
            threshold: 5,
            max_unavailable: 8,
            nodes_total: 4,
            nodes_pending: 3,
            nodes_failed: 1,
            waves: vec![
                v1::RolloutWave {
                    number: 0,
                    state: Failed as i32,
                    nodes: vec![node("node-07", Failed, "multinic0 failed: MTU_REJECTED: kernel kept 1500")],
                    nodes_total: 1,
                    ..Default::default()
                },
                v1::RolloutWave {
                    number: 1,
                    state: Pending as i32,
                    nodes: vec![node("node-01", Pending, ""), node("node-02", Pending, "")],
                    nodes_omitted: 1,
                    nodes_total: 3,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn a_stopped_rollout_names_the_failure_and_the_two_ways_on() {
        let view = RolloutView::from(&stopped());
        assert!(view.in_progress());
        let text = render(&view, true);
        assert!(text.starts_with("Rollout 3: stopped (node-07 multinic0 failed: MTU_REJECTED)\n"), "{text}");
        assert!(text.contains("Nodes: 4 total, 0 done, 0 released, 3 pending, 1 failed."), "{text}");
        assert!(text.contains("0 (canary)   failed    1       -          node-07\n"), "{text}");
        assert!(text.contains("1            pending   3       -          node-01,node-02,... 1 more\n"), "{text}");
        assert!(text.contains("  node-07: multinic0 failed: MTU_REJECTED: kernel kept 1500\n"), "{text}");
        assert!(text.contains("multinicctl rollout resume 3 "), "{text}");
        assert!(text.contains("leave the 3 pending node(s)"), "{text}");
        // The narrow table has no names column.
        assert!(!render(&view, false).contains("node-01,node-02"));
    }

    #[test]
    fn finished_or_absent_rollouts_are_not_in_progress() {
        let absent = RolloutView::from(&v1::RolloutStatus::default());
        assert!(!absent.in_progress());
        assert!(render(&absent, false).starts_with("No rollout since the controller became active"));
        for (state, word) in [
            (v1::RolloutState::Completed, "completed"),
            (v1::RolloutState::Aborted, "aborted"),
            (v1::RolloutState::Superseded, "superseded"),
        ] {
            let view = RolloutView::from(&v1::RolloutStatus { state: state as i32, ..stopped() });
            assert_eq!(view.state, word);
            assert!(!view.in_progress(), "{word}");
            assert!(!render(&view, false).contains("multinicctl rollout"), "{word}: no next steps");
        }
        let running = RolloutView::from(&v1::RolloutStatus { state: v1::RolloutState::Running as i32, ..stopped() });
        assert!(running.in_progress());
        assert!(render(&running, false).contains("multinicctl rollout abort 3"));
    }
}
