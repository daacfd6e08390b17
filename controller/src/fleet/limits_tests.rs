//! What an agent's claims, a superseded stream, a stuck agent and a set too
//! large to push do to the fleet's state, on plain values.

use std::time::{Duration, SystemTime};

use super::*;
use crate::desired::desired_fleet;
use crate::guard::GuardConfig;
use crate::store::{ActiveRows, InterfaceRow};
use multinic_proto::{AgentHello, AgentReport, Digest, InterfaceName, InterfaceStatus, MacAddress, Outcome};

fn mac(i: u16) -> MacAddress {
    MacAddress::from_octets([0xfa, 0x16, 0x3e, 0, (i >> 8) as u8, i as u8]).unwrap()
}

fn row(id: i64, node: &str, m: u16, mtu: i64) -> InterfaceRow {
    InterfaceRow::plain(id, node, &mac(m).to_string(), mtu, 0)
}

/// A Hello of `node` that has applied `macs`.
fn hello(node: &str, digest: Option<Digest>, macs: impl IntoIterator<Item = u16>) -> AgentHello {
    let mut hello = super::tests::hello(node, digest);
    hello.interfaces = macs
        .into_iter()
        .enumerate()
        .map(|(i, m)| InterfaceStatus::applied(mac(m), InterfaceName::new(i as u8, 100).unwrap()))
        .collect();
    hello
}

fn name(n: &str) -> NodeName {
    n.parse().unwrap()
}

/// Four nodes with two rows each, agents connected and believed, the guard
/// holding removals of more than half of what agents have (at least 3).
fn fleet_of_four(warmup: Duration) -> Fleet {
    let fleet = Fleet::with_guard(GuardConfig { max_share: 0.5, min_removals: 3, warmup });
    fleet.leadership().set_active(true);
    let rows = (0..4u16).flat_map(|n| {
        [
            row(i64::from(n) * 2, &format!("n{n}"), n * 2, 1500),
            row(i64::from(n) * 2 + 1, &format!("n{n}"), n * 2 + 1, 1500),
        ]
    });
    fleet.publisher().publish(desired_fleet(&ActiveRows { rows: rows.collect() }));
    for n in 0..4u16 {
        let digest = fleet.view().node(&name(&format!("n{n}"))).unwrap().published.unwrap().set.digest().clone();
        let h = hello(&format!("n{n}"), Some(digest), [n * 2, n * 2 + 1]);
        let (session, _, _) = fleet.sessions().connect(&h);
        fleet.sessions().adopt(session, &h).unwrap();
    }
    fleet
}

#[test]
fn a_late_node_claiming_made_up_macs_holds_nobodys_removals() {
    let fleet = fleet_of_four(Duration::ZERO);
    let rogue = hello("rogue", Some(Digest::from_wire("ab").unwrap()), 1000..1100);
    let (session, _, _) = fleet.sessions().connect(&rogue);
    assert_eq!(fleet.guard().status().removals_held, 0, "100 made-up MACs do not count toward the verdict");

    // A real removal on n0 (one of eight: below the guard) goes ahead.
    fleet.publisher().publish_nodes(
        [(
            name("n0"),
            Some(desired_fleet(&ActiveRows { rows: vec![row(0, "n0", 0, 1500)] }).nodes.remove(&name("n0")).unwrap()),
        )]
        .into(),
        None,
    );
    let n0 = fleet.view().node(&name("n0")).unwrap();
    assert!(n0.guarded.is_empty());
    assert_eq!(n0.published.unwrap().set.len(), 1, "n0's removal is pushed");

    // The rogue's claims are its own node's only, and gone with its stream.
    assert_eq!(fleet.view().node(&name("rogue")).unwrap().published.unwrap().set.held().len(), 0);
    fleet.sessions().disconnect(&name("rogue"), session);
    let entry = fleet.nodes.get(&name("rogue")).map(|e| e.claimed.len());
    assert_eq!(entry, Some(0), "forgotten when the stream ends");
}

#[test]
fn claims_made_in_the_warm_up_count_and_outlive_the_stream() {
    // A restarted controller onto an emptied table: agents say what they have.
    let fleet = Fleet::with_guard(GuardConfig { max_share: 0.5, min_removals: 3, warmup: Duration::from_secs(3600) });
    fleet.leadership().set_active(true);
    fleet.publisher().publish(desired_fleet(&ActiveRows::default()));
    let mut sessions = Vec::new();
    for n in 0..4u16 {
        let h = hello(&format!("n{n}"), Some(Digest::from_wire("ab").unwrap()), [n * 2, n * 2 + 1]);
        sessions.push(fleet.sessions().connect(&h).0);
    }
    assert_eq!(fleet.guard().status().removals_held, 8);
    fleet.sessions().disconnect(&name("n0"), sessions[0]);
    assert_eq!(fleet.guard().status().removals_held, 8, "a reconnecting agent's claims still count");
}

#[test]
fn a_report_speaks_only_for_the_macs_its_push_named() {
    let fleet = fleet_of_four(Duration::ZERO);
    let (session, rx, _) = fleet.sessions().connect(&hello("n1", None, []));
    let pushed = rx.borrow().clone().unwrap();
    let mut report = AgentReport {
        generation: pushed.generation,
        nonce: 5,
        digest: Some(pushed.set.digest().clone()),
        outcome: Outcome::Applied,
        interfaces: hello("n1", None, [2, 3]).interfaces,
        error: String::new(),
        drift: Vec::new(),
    };
    // A status about another MAC sneaked in (a caller that skipped the checks).
    report.interfaces.push(InterfaceStatus::applied(mac(900), InterfaceName::new(5, 100).unwrap()));
    fleet.sessions().record(&name("n1"), session, &pushed, &report).unwrap();
    let entry = fleet.nodes.get(&name("n1")).unwrap();
    assert_eq!(entry.present, [mac(2), mac(3)].into());
    assert!(entry.claimed.is_empty());
}

#[test]
fn a_newer_stream_ends_the_older_one() {
    let fleet = fleet_of_four(Duration::ZERO);
    let (_, _, first) = fleet.sessions().connect(&hello("n2", None, []));
    assert!(!first.is_cancelled());
    let (_, _, second) = fleet.sessions().connect(&hello("n2", None, []));
    assert!(first.is_cancelled(), "the superseded stream is told to end");
    assert!(!second.is_cancelled());
}

#[test]
fn a_push_unanswered_for_long_is_a_node_problem() {
    let fleet = fleet_of_four(Duration::ZERO);
    let (session, rx, _) = fleet.sessions().connect(&hello("n3", None, []));
    let generation = rx.borrow().clone().unwrap().generation;
    fleet.sessions().pushed(&name("n3"), session, generation);
    let entry = fleet.nodes.get(&name("n3")).unwrap();
    assert!(entry.problems(SystemTime::now(), UNANSWERED_AFTER).is_empty(), "just sent");
    let later = SystemTime::now() + UNANSWERED_AFTER + Duration::from_secs(73);
    let problems = entry.problems(later, UNANSWERED_AFTER);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].code, multinic_proto::ErrorCode::PushUnanswered);
    assert!(
        problems[0].message.starts_with(&format!("push of generation {generation} unanswered for 2m1")),
        "{}",
        problems[0].message
    );
    drop(entry);
    fleet.sessions().disconnect(&name("n3"), session);
    let entry = fleet.nodes.get(&name("n3")).unwrap();
    assert!(entry.problems(later, UNANSWERED_AFTER).is_empty(), "a gone stream waits for nothing");
}

/// `held` rows with a bad MTU (their MACs held) and one good row on node `a`.
fn rows_with_held(held: u16) -> Vec<InterfaceRow> {
    let mut rows = vec![row(1, "a", 1, 1500)];
    rows.extend((0..held).map(|i| row(i64::from(i) + 10, "a", i + 10, 0)));
    rows
}

#[test]
fn a_set_too_large_to_push_carries_only_the_held_macs_the_node_has() {
    let fleet = Fleet::new();
    fleet.leadership().set_active(true);
    fleet.publisher().publish(desired_fleet(&ActiveRows { rows: vec![row(1, "a", 1, 1500), row(10, "a", 10, 0)] }));
    let digest = fleet.view().node(&name("a")).unwrap().published.unwrap().set.digest().clone();
    // The agent has both: the interface and the held MAC (it keeps it).
    let mut h = hello("a", Some(digest), [1, 10]);
    h.interfaces[1].state = multinic_proto::InterfaceState::Held;
    let (session, _, _) = fleet.sessions().connect(&h);
    fleet.sessions().adopt(session, &h).unwrap();

    // 14,000 held MACs: over the message limit; the node has only one of them.
    fleet.publisher().publish(desired_fleet(&ActiveRows { rows: rows_with_held(14_000) }));
    let node = fleet.view().node(&name("a")).unwrap();
    let set = node.published.unwrap().set.clone();
    assert!(node.problems.is_empty(), "{:?}", node.problems);
    assert_eq!(set.len(), 1);
    assert_eq!(set.held().iter().copied().collect::<Vec<_>>(), vec![mac(10)], "only what the node has");
    assert!(wire_bound(&set) <= MAX_PUSH_BYTES);
    let wire =
        multinic_proto::v1::DesiredState::from(&multinic_proto::DesiredPush { generation: 1, nonce: u64::MAX, set });
    assert!(prost::Message::encoded_len(&wire) <= MAX_PUSH_BYTES);
}

#[test]
fn a_set_too_large_for_an_agent_that_said_nothing_is_a_node_problem() {
    let fleet = Fleet::new();
    fleet.leadership().set_active(true);
    fleet.publisher().publish(desired_fleet(&ActiveRows { rows: vec![row(1, "a", 1, 1500)] }));
    let before = fleet.view().node(&name("a")).unwrap().published.unwrap().set.digest().clone();
    let _ = fleet.sessions().connect(&hello("a", None, []));
    fleet.publisher().publish(desired_fleet(&ActiveRows { rows: rows_with_held(14_000) }));
    let node = fleet.view().node(&name("a")).unwrap();
    assert_eq!(node.published.unwrap().set.digest(), &before, "the last set that could be pushed stays");
    assert_eq!(node.convergence, Convergence::Failed);
    assert_eq!(node.problems.len(), 1);
    let problem = &node.problems[0];
    assert_eq!(problem.code, multinic_proto::ErrorCode::PushTooLarge);
    assert!(
        problem.message.contains("14000 held MACs") && problem.message.contains("over the 256 KiB message limit"),
        "{}",
        problem.message
    );

    // Fixed rows: the problem goes and the set is pushed.
    fleet.publisher().publish(desired_fleet(&ActiveRows { rows: vec![row(1, "a", 1, 9000)] }));
    let node = fleet.view().node(&name("a")).unwrap();
    assert!(node.problems.is_empty());
    assert_eq!(node.published.unwrap().set.iter().next().unwrap().mtu.get(), 9000);
}

#[test]
fn the_wire_bound_is_an_upper_bound() {
    use multinic_proto::{DesiredPush, DesiredSet, InterfaceSpec, Mtu};
    let v6 = "2001:db8:ffff:ffff:ffff:ffff:ffff:fffe/128".parse().unwrap();
    let specs: Vec<_> =
        (0..50).map(|i| InterfaceSpec::new(mac(i), Some(v6), Mtu::new(9216).unwrap()).unwrap()).collect();
    let set = DesiredSet::with_held(specs, (100..400).map(mac)).unwrap();
    let wire = multinic_proto::v1::DesiredState::from(&DesiredPush {
        generation: u64::MAX,
        nonce: u64::MAX,
        set: set.clone(),
    });
    let envelope = multinic_proto::v1::ControllerMessage {
        kind: Some(multinic_proto::v1::controller_message::Kind::Desired(wire)),
    };
    assert!(prost::Message::encoded_len(&envelope) <= wire_bound(&set));
}

#[test]
fn a_second_file_removed_beside_the_kept_one_leaves_the_interface_applied() {
    let fleet = fleet_of_four(Duration::ZERO);
    let (session, rx, _) = fleet.sessions().connect(&hello("n1", None, []));
    let pushed = rx.borrow().clone().unwrap();
    let mut interfaces = hello("n1", None, [2, 3]).interfaces;
    interfaces.push(InterfaceStatus::problem(
        mac(2),
        InterfaceName::new(7, 100),
        multinic_proto::InterfaceState::Removed,
        multinic_proto::ErrorCode::None,
        "a second file of this MAC",
    ));
    let report = AgentReport {
        generation: pushed.generation,
        nonce: 5,
        digest: Some(pushed.set.digest().clone()),
        outcome: Outcome::Applied,
        interfaces,
        error: String::new(),
        drift: Vec::new(),
    };
    crate::claims::check_report(&pushed.set, pushed.generation, &report).unwrap();
    fleet.sessions().record(&name("n1"), session, &pushed, &report).unwrap();
    assert_eq!(fleet.view().node(&name("n1")).unwrap().convergence, Convergence::Converged);
}

#[test]
fn the_warm_up_ends_once_every_node_with_rows_reported_but_rowless_removals_wait_for_its_end() {
    let fleet = Fleet::with_guard(GuardConfig { warmup: Duration::from_secs(3600), ..GuardConfig::default() });
    fleet.leadership().set_active(true);
    // Node a has rows for MACs 1 and 2, node b for MAC 3; node gone has none.
    fleet.publisher().publish(desired_fleet(&ActiveRows {
        rows: vec![row(1, "a", 1, 1500), row(2, "a", 2, 1500), row(3, "b", 3, 1500)],
    }));
    let digest = |n: &str| fleet.view().node(&name(n)).unwrap().published.unwrap().set.digest().clone();

    // a still has MAC 9 (its row was deleted while the controller was away).
    fleet.sessions().connect(&hello("a", Some(digest("a")), [1, 2, 9]));
    // (The warm-up looks at most every 100 ms, and at every poll tick.)
    fleet.guard().rejudge();
    let status = fleet.guard().status();
    assert_eq!(status.removals_held, 1);
    let reason = status.reason.unwrap();
    assert!(
        reason.contains("until every node with rows has reported") && reason.contains("(1 not yet: b)"),
        "{reason}"
    );
    let view = fleet.view().node(&name("a")).unwrap();
    assert!(view.guard_reason.as_deref().is_some_and(|r| r.contains("1 not yet: b")), "status says why: {view:?}");

    // b reports: every node with rows has; a's removal goes at once, an hour early.
    fleet.sessions().connect(&hello("b", Some(digest("b")), [3]));
    fleet.guard().rejudge();
    assert_eq!(fleet.guard().status(), GuardStatus::default(), "nothing held");
    assert!(fleet.view().node(&name("a")).unwrap().guarded.is_empty());
    assert!(!fleet.view().node(&name("a")).unwrap().published.unwrap().set.is_held(&mac(9)), "a's removal is pushed");

    // A node deleted from the table whole still waits for the warm-up's end.
    fleet.sessions().connect(&hello("gone", Some(Digest::from_wire("ab").unwrap()), [7, 8]));
    let status = fleet.guard().status();
    assert_eq!(status.removals_held, 2, "{status:?}");
    assert!(status.reason.unwrap().contains("no rows left wait"));
    let gone = fleet.view().node(&name("gone")).unwrap();
    assert_eq!(gone.guarded, [mac(7), mac(8)].into());
    assert!(gone.published.unwrap().set.is_held(&mac(7)));
}

#[test]
fn an_empty_table_keeps_the_whole_warm_up() {
    let fleet = Fleet::with_guard(GuardConfig { warmup: Duration::from_secs(3600), ..GuardConfig::default() });
    fleet.leadership().set_active(true);
    fleet.publisher().publish(desired_fleet(&ActiveRows::default()));
    fleet.sessions().connect(&hello("a", Some(Digest::from_wire("ab").unwrap()), [1, 2]));
    fleet.guard().rejudge();
    let status = fleet.guard().status();
    assert_eq!(status.removals_held, 2, "no node has rows: nothing says the table is whole");
    assert!(status.reason.unwrap().contains("until every node with rows has reported"));
}
