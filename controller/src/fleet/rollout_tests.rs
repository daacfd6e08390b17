//! Rollouts in the fleet, on plain values: the gate, reports releasing
//! waves, a stop, resume, abort, supersede, and the restart rebuild.

use std::collections::BTreeMap;

use super::tests::hello;
use super::*;
use crate::desired::desired_fleet;
use crate::metrics::RolloutMetrics;
use crate::rollout::{MaxUnavailable, NodeState, RolloutConfig, RolloutState};
use crate::store::{ActiveRows, InterfaceRow};
use multinic_proto::{AgentReport, ErrorCode, InterfaceName, InterfaceState, InterfaceStatus, Outcome};

const NODES: usize = 10;

fn name(i: usize) -> NodeName {
    format!("node-{i:02}").parse().unwrap()
}

/// One row per node, node `i` with MTU `mtus(i)`.
fn rows(mtus: impl Fn(usize) -> i64) -> ActiveRows {
    let rows = (0..NODES)
        .map(|i| InterfaceRow::plain(i as i64 + 1, name(i).as_str(), &format!("fa:16:3e:00:00:{i:02x}"), mtus(i), 1))
        .collect();
    ActiveRows { rows }
}

fn fleet() -> Fleet {
    let config = RolloutConfig { threshold: 5, max_unavailable: MaxUnavailable::Count(4) };
    Fleet::new().with_rollouts(config, RolloutMetrics::default())
}

fn report(p: &Published, fail: bool) -> AgentReport {
    let interfaces = p
        .set
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut status = InterfaceStatus::applied(s.mac, InterfaceName::new(i as u8, 10).unwrap());
            if fail {
                status.state = InterfaceState::Failed;
                status.code = ErrorCode::ApplyFailed;
                status.message = "mtu 9000 refused".into();
            }
            status
        })
        .collect();
    let outcome = if fail { Outcome::Partial } else { Outcome::Applied };
    AgentReport {
        generation: p.generation,
        nonce: 1,
        digest: Some(p.set.digest().clone()),
        outcome,
        interfaces,
        error: String::new(),
        drift: Vec::new(),
    }
}

/// Sessions of every node, connected and converged on MTU 1500.
fn converged(fleet: &Fleet) -> BTreeMap<NodeName, u64> {
    fleet.publisher().publish(desired_fleet(&rows(|_| 1500)));
    let mut sessions = BTreeMap::new();
    for i in 0..NODES {
        let (session, _, _) = fleet.sessions().connect(&hello(name(i).as_str(), None));
        answer(fleet, session, i, false);
        sessions.insert(name(i), session);
    }
    sessions
}

/// The node's agent answers its published set.
fn answer(fleet: &Fleet, session: u64, i: usize, fail: bool) {
    let p = published(fleet, i).unwrap();
    fleet.sessions().record(&name(i), session, &p, &report(&p, fail)).unwrap();
}

fn published(fleet: &Fleet, i: usize) -> Option<Arc<Published>> {
    fleet.view().node(&name(i)).unwrap().published
}

fn mtu_of(fleet: &Fleet, i: usize) -> u16 {
    published(fleet, i).unwrap().set.iter().next().unwrap().mtu.get()
}

fn at_9000(fleet: &Fleet) -> Vec<usize> {
    (0..NODES).filter(|&i| mtu_of(fleet, i) == 9000).collect()
}

#[test]
fn a_fleet_wide_change_goes_in_waves_and_a_failure_stops_it() {
    let fleet = fleet();
    let sessions = converged(&fleet);
    let changed = fleet.publisher().publish(desired_fleet(&rows(|_| 9000)));
    assert_eq!(changed, [name(0)], "only the canary is published");
    assert_eq!(at_9000(&fleet), [0]);
    let rollout = fleet.rollouts().status().unwrap();
    assert_eq!((rollout.id, rollout.state, rollout.len()), (1, RolloutState::Running, NODES));

    // Held nodes keep what they had; their rows are not confirmed.
    let held = fleet.view().node(&name(5)).unwrap();
    assert_eq!(
        held.rollout_hold.as_deref(),
        Some("rollout 1: wave 3 of 4 not released (waiting for the waves before it)")
    );
    let updates = fleet.write_back().row_updates(&name(5));
    assert!(updates.iter().all(|u| !u.success), "held rows read 0: {updates:?}");
    let diff = diff::node_diff(&held, 10);
    assert_eq!(diff.interfaces.items[0].action, diff::DiffAction::Held);
    assert!(diff.interfaces.items[0].reason.as_deref().unwrap().starts_with("rollout 1: wave 3"));

    answer(&fleet, sessions[&name(0)], 0, false);
    assert_eq!(at_9000(&fleet), [0, 1, 2], "the canary reported: the next wave (2) goes");
    answer(&fleet, sessions[&name(1)], 1, false);
    assert_eq!(at_9000(&fleet), [0, 1, 2], "not before the whole wave reported");
    answer(&fleet, sessions[&name(2)], 2, true);
    let rollout = fleet.rollouts().status().unwrap();
    assert_eq!(rollout.state, RolloutState::Stopped);
    let reason = rollout.reason.unwrap();
    assert_eq!(reason, "node-02 multinic0 failed: APPLY_FAILED: mtu 9000 refused");
    assert_eq!(at_9000(&fleet), [0, 1, 2], "stopped: nothing more");
    let hold = fleet.view().node(&name(7)).unwrap().rollout_hold.unwrap();
    assert_eq!(hold, format!("rollout 1: wave 4 of 4 not released (stopped: {reason})"));

    // A small change elsewhere goes at once; a small change of a held node stays held.
    let small = fleet.publisher().publish(desired_fleet(&rows(|i| if i == 8 { 8000 } else { 9000 })));
    assert!(small.is_empty(), "node-08 is held: its newer change waits too");
    assert_eq!(fleet.rollouts().status().unwrap().id, 1, "a small change starts no rollout");
    let small = fleet.publisher().publish(desired_fleet(&rows(|i| match i {
        8 => 8000,
        1 => 1400,
        _ => 9000,
    })));
    assert_eq!(small, [name(1)], "a released node's change goes at once");

    assert!(fleet.rollouts().resume(2).is_err(), "another id");
    let resumed = fleet.rollouts().resume(1).unwrap();
    assert_eq!(resumed.state, RolloutState::Running);
    assert_eq!(resumed.counts().released, 4, "the next wave");
    for i in 3..7 {
        answer(&fleet, sessions[&name(i)], i, false);
    }
    for i in 7..10 {
        answer(&fleet, sessions[&name(i)], i, false);
    }
    let done = fleet.rollouts().status().unwrap();
    assert_eq!(done.state, RolloutState::Completed);
    assert_eq!(mtu_of(&fleet, 8), 8000, "released with its newest rows");
    assert_eq!(done.counts().failed, 1);
    assert!(fleet.view().node(&name(8)).unwrap().rollout_hold.is_none());
}

#[test]
fn abort_leaves_the_rest_until_their_rows_change_and_a_newer_change_supersedes() {
    let fleet = fleet();
    let sessions = converged(&fleet);
    fleet.publisher().publish(desired_fleet(&rows(|_| 9000)));
    answer(&fleet, sessions[&name(0)], 0, true);
    let aborted = fleet.rollouts().abort(1).unwrap();
    assert_eq!(aborted.state, RolloutState::Aborted);
    assert!(fleet.rollouts().resume(1).is_err());
    // A full read with the same rows changes nothing for them.
    assert!(fleet.publisher().publish(desired_fleet(&rows(|_| 9000))).is_empty());
    assert_eq!(at_9000(&fleet), [0]);
    let hold = fleet.view().node(&name(3)).unwrap().rollout_hold.unwrap();
    assert!(hold.contains("rollout 1 was aborted"), "{hold}");

    // One node's rows change again: it goes at once.
    let one = fleet.publisher().publish(desired_fleet(&rows(|i| if i == 3 { 1400 } else { 9000 })));
    assert_eq!(one, [name(3)]);
    // Many change again: a new rollout.
    fleet.publisher().publish(desired_fleet(&rows(|i| if i == 3 { 1400 } else { 7000 })));
    let second = fleet.rollouts().status().unwrap();
    assert_eq!((second.id, second.state), (2, RolloutState::Running));
    assert_eq!(second.len(), NODES - 1, "node-03 did not change");

    // A newer change of many nodes while it runs supersedes it and takes
    // its pending nodes over.
    let canary = (0..NODES).find(|&i| second.node(&name(i)).is_some_and(|n| n.state == NodeState::Released)).unwrap();
    answer(&fleet, sessions[&name(canary)], canary, false);
    fleet.publisher().publish(desired_fleet(&rows(|i| if i < 6 { 6000 } else { 7000 })));
    let third = fleet.rollouts().status().unwrap();
    assert_eq!(third.id, 3);
    assert!(third.len() >= 6, "the changed nodes and the second's pending ones: {}", third.len());
    assert!(third.node(&name(9)).is_some(), "node-09 was pending in rollout 2");
}

#[test]
fn few_changes_go_at_once() {
    let fleet = fleet();
    converged(&fleet);
    let changed = fleet.publisher().publish(desired_fleet(&rows(|i| if i < 5 { 9000 } else { 1500 })));
    assert_eq!(changed.len(), 5, "at the threshold: at once");
    assert!(fleet.rollouts().status().is_none());
}

#[test]
fn a_restarted_controller_rebuilds_a_stopped_rollout_from_the_agents_hellos() {
    let before = fleet();
    let sessions = converged(&before);
    let old: Vec<_> = (0..NODES).map(|i| published(&before, i).unwrap()).collect();
    before.publisher().publish(desired_fleet(&rows(|_| 9000)));
    answer(&before, sessions[&name(0)], 0, false);
    let new0 = published(&before, 0).unwrap();

    // A new controller: agents say Hello with what they applied, one fresh.
    let after = fleet();
    for (i, old) in old.iter().enumerate() {
        let digest = match i {
            0 => Some(new0.set.digest().clone()),
            9 => None,
            _ => Some(old.set.digest().clone()),
        };
        after.sessions().connect(&hello(name(i).as_str(), digest));
    }
    after.publisher().publish(desired_fleet(&rows(|_| 9000)));
    let shown: Vec<usize> = (0..NODES).filter(|&i| published(&after, i).is_some()).collect();
    assert_eq!(shown, [0, 9], "held until the decision: only the node at its set and the fresh agent");
    after.rollouts().tick();
    let rebuilt = after.rollouts().status().unwrap();
    assert_eq!(rebuilt.state, RolloutState::Stopped);
    assert_eq!(rebuilt.counts().pending, 8);
    assert_eq!(
        rebuilt.reason.as_deref(),
        Some(
            "controller restarted during a rollout: 8 nodes not yet released; resume to continue, abort to leave them"
        )
    );
    after.rollouts().tick();
    assert!((1..9).all(|i| published(&after, i).is_none()), "nothing released by itself");
    let resumed = after.rollouts().resume(rebuilt.id).unwrap();
    assert_eq!(resumed.counts().released, 1, "a canary first");
    assert!(published(&after, 1).is_some());
}

#[test]
fn a_fresh_fleet_is_never_held() {
    let fleet = fleet();
    for i in 0..NODES {
        fleet.sessions().connect(&hello(name(i).as_str(), None));
    }
    assert_eq!(fleet.publisher().publish(desired_fleet(&rows(|_| 1500))).len(), NODES);
    fleet.rollouts().tick();
    assert!(fleet.rollouts().status().is_none());
}
