//! The rollout RPCs of `FleetService` (GetRollout, ResumeRollout,
//! AbortRollout): the fleet's [`crate::rollout::Rollout`] as a wire
//! message, and an operator's action refused with a clear status.
//!
//! Exists to keep the fleet service's edge small. The view is bounded: each
//! wave lists at most [`WAVE_NODES`] nodes (failed ones first) and counts
//! the rest. It never changes a rollout except through
//! [`crate::fleet::Rollouts`].

use multinic_proto::v1;

use super::fleet_service::unix_ms;
use crate::rollout::{NodeState, Rollout, RolloutError, RolloutState};

/// Nodes listed per wave at most.
pub const WAVE_NODES: usize = 50;

/// The rollout as `GetRollout` shows it (`present: false` when none).
pub fn status(rollout: Option<&Rollout>) -> v1::RolloutStatus {
    let Some(r) = rollout else { return v1::RolloutStatus::default() };
    let c = r.counts();
    v1::RolloutStatus {
        present: true,
        id: r.id,
        state: state(r.state).into(),
        reason: r.reason.clone().unwrap_or_default(),
        started_unix_ms: unix_ms(r.started),
        updated_unix_ms: unix_ms(r.updated),
        threshold: count(r.threshold),
        max_unavailable: count(r.max_unavailable),
        nodes_total: count(r.len()),
        nodes_pending: count(c.pending),
        nodes_released: count(c.released),
        nodes_done: count(c.done),
        nodes_failed: count(c.failed),
        waves: r
            .waves()
            .map(|wave| {
                // Failed nodes first: they are why it stopped.
                let mut nodes: Vec<_> = wave.nodes().collect();
                nodes.sort_by_key(|n| n.state != NodeState::Failed);
                let listed = nodes.len().min(WAVE_NODES);
                v1::RolloutWave {
                    number: count(wave.number),
                    state: node_state(wave.state()).into(),
                    released_unix_ms: wave.released_at().map_or(0, unix_ms),
                    nodes: nodes[..listed]
                        .iter()
                        .map(|n| v1::RolloutNode {
                            name: n.name.to_string(),
                            state: node_state(n.state).into(),
                            reason: n.reason.clone().unwrap_or_default(),
                        })
                        .collect(),
                    nodes_omitted: count(nodes.len() - listed),
                    nodes_total: count(nodes.len()),
                }
            })
            .collect(),
    }
}

/// An action refused: which status says why.
pub fn refused(e: &RolloutError) -> tonic::Status {
    match e {
        RolloutError::NoRollout => tonic::Status::not_found(e.to_string()),
        _ => tonic::Status::failed_precondition(e.to_string()),
    }
}

fn state(s: RolloutState) -> v1::RolloutState {
    match s {
        RolloutState::Running => v1::RolloutState::Running,
        RolloutState::Stopped => v1::RolloutState::Stopped,
        RolloutState::Aborted => v1::RolloutState::Aborted,
        RolloutState::Completed => v1::RolloutState::Completed,
        RolloutState::Superseded => v1::RolloutState::Superseded,
    }
}

fn node_state(s: NodeState) -> v1::RolloutNodeState {
    match s {
        NodeState::Pending => v1::RolloutNodeState::Pending,
        NodeState::Released => v1::RolloutNodeState::Released,
        NodeState::Done => v1::RolloutNodeState::Done,
        NodeState::Failed => v1::RolloutNodeState::Failed,
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
