//! The fleet's rules, on plain values.

use super::*;
use crate::desired::{NodeDesired, desired_fleet};
use crate::store::{ActiveRows, InterfaceRow};
use multinic_proto::{
    AgentHello, AgentReport, Digest, ErrorCode, InterfaceName, InterfaceState, InterfaceStatus, MacAddress, Outcome,
};

fn row(id: i64, node: &str, mac: &str, mtu: i64, success: i64) -> InterfaceRow {
    InterfaceRow::plain(id, node, mac, mtu, success)
}

pub(super) fn hello(node: &str, digest: Option<Digest>) -> AgentHello {
    AgentHello {
        node: node.parse().unwrap(),
        agent_version: "t".into(),
        backend: "netplan".into(),
        apply_mode: "none".into(),
        applied_digest: digest,
        interfaces: vec![],
    }
}

fn applied_report(p: &Published) -> AgentReport {
    AgentReport {
        generation: p.generation,
        nonce: 1,
        digest: Some(p.set.digest().clone()),
        outcome: Outcome::Applied,
        interfaces: p
            .set
            .iter()
            .enumerate()
            .map(|(i, s)| InterfaceStatus::applied(s.mac, InterfaceName::new(i as u8, 10).unwrap()))
            .collect(),
        error: String::new(),
        drift: Vec::new(),
    }
}

#[test]
fn publish_only_changes_and_bumps_generation() {
    let fleet = Fleet::new();
    let snap = ActiveRows { rows: vec![row(1, "a", "fa:16:3e:00:00:01", 1500, 0)] };
    assert_eq!(fleet.publisher().publish(desired_fleet(&snap)).len(), 1);
    assert!(fleet.publisher().publish(desired_fleet(&snap)).is_empty(), "same content, no publish");
    let snap2 = ActiveRows { rows: vec![row(1, "a", "fa:16:3e:00:00:01", 9000, 0)] };
    assert_eq!(fleet.publisher().publish(desired_fleet(&snap2)).len(), 1);
    let node = fleet.view().node(&"a".parse().unwrap()).unwrap();
    assert_eq!(node.published.unwrap().generation, 2);
}

#[test]
fn report_drives_row_updates_for_exact_content_only() {
    let fleet = Fleet::new();
    let a: NodeName = "a".parse().unwrap();
    let snap = ActiveRows { rows: vec![row(1, "a", "fa:16:3e:00:00:01", 1500, 0)] };
    fleet.publisher().publish(desired_fleet(&snap));
    let (session, rx, _) = fleet.sessions().connect(&hello("a", None));
    let pushed = rx.borrow().clone().unwrap();
    fleet.sessions().record(&a, session, &pushed, &applied_report(&pushed)).unwrap();
    let updates = fleet.write_back().row_updates(&a);
    assert_eq!(updates.len(), 1);
    assert!(updates[0].success);
    assert_eq!(fleet.view().node(&a).unwrap().convergence, Convergence::Converged);

    // The row changes: the old report must not mark the new content.
    let snap2 = ActiveRows { rows: vec![row(1, "a", "fa:16:3e:00:00:01", 9000, 1)] };
    fleet.publisher().publish(desired_fleet(&snap2));
    assert!(fleet.write_back().row_updates(&a).is_empty());
    assert_eq!(fleet.view().node(&a).unwrap().convergence, Convergence::Pending);

    // A re-inserted row (new id) with already-applied content gets 1.
    let snap3 = ActiveRows { rows: vec![row(7, "a", "fa:16:3e:00:00:01", 1500, 0)] };
    fleet.publisher().publish(desired_fleet(&snap3));
    let updates = fleet.write_back().row_updates(&a);
    assert_eq!(updates.iter().map(|u| (u.id, u.success)).collect::<Vec<_>>(), vec![(7, true)]);
}

#[test]
fn drift_that_could_not_be_repaired_reads_zero_and_status_keeps_what_was_found() {
    use multinic_proto::{DriftAction, DriftFinding, DriftKind};
    let fleet = Fleet::new();
    let a: NodeName = "a".parse().unwrap();
    // Both rows read 1: the node applied them.
    let snap =
        ActiveRows { rows: vec![row(1, "a", "fa:16:3e:00:00:01", 1500, 1), row(2, "a", "fa:16:3e:00:00:02", 1500, 1)] };
    fleet.publisher().publish(desired_fleet(&snap));
    let (session, rx, _) = fleet.sessions().connect(&hello("a", None));
    let pushed = rx.borrow().clone().unwrap();
    fleet.sessions().record(&a, session, &pushed, &applied_report(&pushed)).unwrap();
    assert!(fleet.write_back().row_updates(&a).is_empty());
    assert!(fleet.view().node(&a).unwrap().drift.is_none(), "no drift reported yet");

    // The agent repaired an MTU on one interface: both stay 1, the repair counts.
    let finding = |mac: &str, action| DriftFinding {
        mac: mac.parse().unwrap(),
        name: InterfaceName::new(0, 10).unwrap(),
        kind: DriftKind::Mtu,
        found: "MTU 1300".into(),
        wanted: "MTU 1500".into(),
        action,
    };
    let repaired =
        AgentReport { drift: vec![finding("fa:16:3e:00:00:01", DriftAction::Repaired)], ..applied_report(&pushed) };
    fleet.sessions().record(&a, session, &pushed, &repaired).unwrap();
    let node = fleet.view().node(&a).unwrap();
    let drift = node.drift.expect("kept for status");
    assert_eq!((drift.findings.len(), drift.repairs), (1, 1));
    assert_eq!(node.convergence, Convergence::Converged);
    assert!(fleet.write_back().row_updates(&a).is_empty(), "repaired: still 1");

    // Then it gave up on it: that row reads 0, the other stays 1.
    let mut gave_up = applied_report(&pushed);
    gave_up.outcome = Outcome::Partial;
    let status = gave_up.interfaces.iter_mut().find(|s| s.mac.to_string() == "fa:16:3e:00:00:01").unwrap();
    status.state = InterfaceState::Failed;
    status.code = ErrorCode::DriftRepeated;
    gave_up.drift = vec![finding("fa:16:3e:00:00:01", DriftAction::GivenUp)];
    fleet.sessions().record(&a, session, &pushed, &gave_up).unwrap();
    let wanted: Vec<_> = fleet.write_back().row_updates(&a).into_iter().map(|u| (u.id, u.success)).collect();
    assert_eq!(wanted, vec![(1, false)], "the row whose drift was not repaired goes to 0, the other stays 1");
    let node = fleet.view().node(&a).unwrap();
    assert_eq!(node.convergence, Convergence::Failed);
    let drift = node.drift.unwrap();
    assert_eq!((drift.findings[0].action, drift.repairs), (DriftAction::GivenUp, 1), "the count goes on");
}

#[test]
fn failed_interfaces_and_invalid_rows_read_zero() {
    let fleet = Fleet::new();
    let a: NodeName = "a".parse().unwrap();
    let snap =
        ActiveRows { rows: vec![row(1, "a", "fa:16:3e:00:00:01", 1500, 1), row(2, "a", "fa:16:3e:00:00:02", 0, 1)] };
    fleet.publisher().publish(desired_fleet(&snap));
    let (session, rx, _) = fleet.sessions().connect(&hello("a", None));
    let pushed = rx.borrow().clone().unwrap();
    let mac: MacAddress = "fa:16:3e:00:00:01".parse().unwrap();
    let report = AgentReport {
        generation: pushed.generation,
        nonce: 1,
        digest: Some(pushed.set.digest().clone()),
        outcome: Outcome::Partial,
        interfaces: vec![InterfaceStatus::problem(
            mac,
            None,
            InterfaceState::Refused,
            ErrorCode::CapacityExceeded,
            "full",
        )],
        error: String::new(),
        drift: Vec::new(),
    };
    fleet.sessions().record(&a, session, &pushed, &report).unwrap();
    let mut updates: Vec<_> = fleet.write_back().row_updates(&a).into_iter().map(|u| (u.id, u.success)).collect();
    updates.sort();
    assert_eq!(updates, vec![(1, false), (2, false)]);
    assert_eq!(fleet.view().node(&a).unwrap().convergence, Convergence::Failed);
}

#[test]
fn replaced_sessions_cannot_record() {
    let fleet = Fleet::new();
    let a: NodeName = "a".parse().unwrap();
    fleet.publisher().publish(desired_fleet(&ActiveRows { rows: vec![row(1, "a", "fa:16:3e:00:00:01", 1500, 0)] }));
    let (old, rx, _) = fleet.sessions().connect(&hello("a", None));
    let (_new, _, _) = fleet.sessions().connect(&hello("a", None));
    let pushed = rx.borrow().clone().unwrap();
    assert!(matches!(
        fleet.sessions().record(&a, old, &pushed, &applied_report(&pushed)),
        Err(RecordError::SessionReplaced { .. })
    ));
    fleet.sessions().disconnect(&a, old);
    assert!(fleet.view().node(&a).unwrap().session.is_some(), "the old stream's end keeps the new session");
}

#[test]
fn nodes_leaving_the_db_get_the_empty_set_or_are_forgotten() {
    let fleet = Fleet::new();
    let snap =
        ActiveRows { rows: vec![row(1, "a", "fa:16:3e:00:00:01", 1500, 0), row(2, "b", "fa:16:3e:00:00:02", 1500, 0)] };
    fleet.publisher().publish(desired_fleet(&snap));
    let _ = fleet.sessions().connect(&hello("a", None));
    let changed = fleet.publisher().publish(desired_fleet(&ActiveRows::default()));
    assert_eq!(changed, vec!["a".parse::<NodeName>().unwrap()]);
    let a = fleet.view().node(&"a".parse().unwrap()).unwrap();
    assert!(a.published.unwrap().set.is_empty());
    assert!(fleet.view().node(&"b".parse().unwrap()).is_none());
}

#[test]
fn adopt_takes_hello_when_digest_matches() {
    let fleet = Fleet::new();
    let snap = ActiveRows { rows: vec![row(1, "a", "fa:16:3e:00:00:01", 1500, 0)] };
    fleet.publisher().publish(desired_fleet(&snap));
    let digest = fleet.view().node(&"a".parse().unwrap()).unwrap().published.unwrap().set.digest().clone();
    let mut h = hello("a", Some(digest));
    h.interfaces =
        vec![InterfaceStatus::applied("fa:16:3e:00:00:01".parse().unwrap(), InterfaceName::new(0, 10).unwrap())];
    let (session, _, _) = fleet.sessions().connect(&h);
    assert!(fleet.sessions().adopt(session, &h).is_some());
    assert_eq!(fleet.view().node(&"a".parse().unwrap()).unwrap().convergence, Convergence::Converged);
    let other = hello("a", None);
    let (session, _, _) = fleet.sessions().connect(&other);
    assert!(fleet.sessions().adopt(session, &other).is_none());
}

fn mac(i: u8) -> MacAddress {
    MacAddress::from_octets([0xfa, 0x16, 0x3e, 0, 0, i]).unwrap()
}

fn node_rows(rows: Vec<InterfaceRow>, node: &str) -> Option<NodeDesired> {
    desired_fleet(&ActiveRows { rows }).nodes.remove(&node.parse::<NodeName>().unwrap())
}

#[test]
fn partial_publishes_touch_only_the_nodes_given() {
    let fleet = Fleet::new();
    let (a, b): (NodeName, NodeName) = ("a".parse().unwrap(), "b".parse().unwrap());
    let snap =
        ActiveRows { rows: vec![row(1, "a", "fa:16:3e:00:00:01", 1500, 0), row(2, "b", "fa:16:3e:00:00:02", 1500, 0)] };
    fleet.publisher().publish(desired_fleet(&snap));
    let changed = fleet
        .publisher()
        .publish_nodes([(a.clone(), node_rows(vec![row(1, "a", "fa:16:3e:00:00:01", 9000, 0)], "a"))].into(), None);
    assert_eq!(changed, vec![a.clone()]);
    assert_eq!(fleet.view().node(&a).unwrap().published.unwrap().generation, 2);
    assert_eq!(fleet.view().node(&b).unwrap().published.unwrap().generation, 1, "b untouched");

    // A node without rows: forgotten without an agent, the empty set with one.
    let _ = fleet.sessions().connect(&hello("a", None));
    fleet.publisher().publish_nodes([(a.clone(), None), (b.clone(), None)].into(), Some(vec![]));
    assert!(fleet.view().node(&b).is_none());
    let a_now = fleet.view().node(&a).unwrap();
    assert!(!a_now.in_db && a_now.published.unwrap().set.is_empty());
}

#[test]
fn the_guard_follows_partial_publishes() {
    let config = GuardConfig { max_share: 0.5, min_removals: 1, warmup: std::time::Duration::ZERO };
    let fleet = Fleet::with_guard(config);
    fleet.leadership().set_active(true);
    let rows_of = |node: &str, first: u8| {
        (first..first + 2).map(|i| row(i64::from(i), node, &mac(i).to_string(), 1500, 0)).collect::<Vec<_>>()
    };
    let mut all = rows_of("a", 1);
    all.extend(rows_of("b", 3));
    fleet.publisher().publish(desired_fleet(&ActiveRows { rows: all }));
    for (node, first) in [("a", 1u8), ("b", 3)] {
        let mut h = hello(node, None);
        h.interfaces = (first..first + 2)
            .map(|i| InterfaceStatus::applied(mac(i), InterfaceName::new(i - first, 10).unwrap()))
            .collect();
        let _ = fleet.sessions().connect(&h);
    }
    assert_eq!(fleet.guard().status().removals_held, 0);

    // Every row of a goes: half of what agents have, not more: released.
    let (a, b): (NodeName, NodeName) = ("a".parse().unwrap(), "b".parse().unwrap());
    fleet.publisher().publish_nodes([(a.clone(), None)].into(), None);
    assert_eq!(fleet.guard().status().removals_held, 0);
    assert!(fleet.view().node(&a).unwrap().published.unwrap().set.is_empty());

    // And b's too: over the guard, held on both nodes (a's set is revisited).
    fleet.publisher().publish_nodes([(b.clone(), None)].into(), None);
    let status = fleet.guard().status();
    assert_eq!(status.removals_held, 4, "{status:?}");
    assert_eq!(fleet.view().node(&a).unwrap().published.unwrap().set.held().len(), 2);

    // b's rows come back: the rest is below the guard again.
    fleet.publisher().publish_nodes([(b.clone(), node_rows(rows_of("b", 3), "b"))].into(), None);
    assert_eq!(fleet.guard().status().removals_held, 0);
    assert!(fleet.view().node(&a).unwrap().published.unwrap().set.held().is_empty());
}

#[test]
fn unconverged_nodes_name_each_node_that_is_not_converged_and_why() {
    let fleet = Fleet::new();
    let snap = ActiveRows {
        rows: vec![
            row(1, "a", "fa:16:3e:00:00:01", 1500, 0),
            row(2, "b", "fa:16:3e:00:00:02", 1500, 0),
            row(3, "c", "fa:16:3e:00:00:03", 1500, 0),
        ],
    };
    fleet.publisher().publish(desired_fleet(&snap));
    let name = |n: &str| n.parse::<NodeName>().unwrap();
    // Nobody connected yet: every node with rows is disconnected.
    let all: Vec<_> = ["a", "b", "c"].iter().map(|n| (name(n), "disconnected")).collect();
    assert_eq!(fleet.view().unconverged_nodes(usize::MAX), all);

    // a applies everything, b is pushed to but has not answered, c stays away;
    // d has no rows: its agent gets the empty set and is pending until it says so.
    let (session, rx, _) = fleet.sessions().connect(&hello("a", None));
    let pushed = rx.borrow().clone().unwrap();
    fleet.sessions().record(&name("a"), session, &pushed, &applied_report(&pushed)).unwrap();
    let (b_session, _, _) = fleet.sessions().connect(&hello("b", None));
    let _ = fleet.sessions().connect(&hello("d", None));
    assert_eq!(
        fleet.view().unconverged_nodes(usize::MAX),
        vec![(name("b"), "pending"), (name("c"), "disconnected"), (name("d"), "pending")]
    );

    // b's agent goes away after a converged report: disconnected, not converged.
    let pushed_b = fleet.view().node(&name("b")).unwrap().published.unwrap();
    fleet.sessions().record(&name("b"), b_session, &pushed_b, &applied_report(&pushed_b)).unwrap();
    assert!(fleet.view().unconverged_nodes(usize::MAX).iter().all(|(n, _)| n != &name("b")), "b converged");
    fleet.sessions().disconnect(&name("b"), b_session);
    assert!(fleet.view().unconverged_nodes(usize::MAX).contains(&(name("b"), "disconnected")));
    assert!(fleet.view().unconverged_nodes(usize::MAX).iter().all(|(n, _)| n != &name("a")), "a stays converged");
    // A limit keeps the first by name.
    assert_eq!(fleet.view().unconverged_nodes(2), vec![(name("b"), "disconnected"), (name("c"), "disconnected")]);
    assert!(fleet.view().unconverged_nodes(0).is_empty());
}
