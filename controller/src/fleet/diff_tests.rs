//! `node_diff` case by case, on a real [`Fleet`] driven with plain values:
//! rows published, a Hello, reports recorded.

use std::sync::Arc;
use std::time::Duration;

use multinic_proto::{ErrorCode, InterfaceName, InterfaceState, InterfaceStatus, Outcome};

use super::*;
use crate::desired::desired_fleet;
use crate::fleet::tests::hello;
use crate::fleet::{Fleet, Published};
use crate::guard::GuardConfig;
use crate::store::{ActiveRows, InterfaceRow};
use multinic_proto::AgentReport;

const LIMIT: usize = 200;

fn mac(i: u8) -> MacAddress {
    format!("fa:16:3e:00:00:{i:02x}").parse().unwrap()
}

/// A row of node `a` for `mac(i)`, with an address in 10.0.0.0/24 when given.
fn row(id: i64, i: u8, mtu: i64, address: Option<&str>) -> InterfaceRow {
    InterfaceRow {
        address: address.map(str::to_owned),
        cidr: address.map(|_| "10.0.0.0/24".to_owned()),
        ..InterfaceRow::plain(id, "a", &mac(i).to_string(), mtu, 0)
    }
}

fn node() -> NodeName {
    "a".parse().unwrap()
}

fn publish(fleet: &Fleet, rows: Vec<InterfaceRow>) {
    fleet.publisher().publish(desired_fleet(&ActiveRows { rows }));
}

fn pushed(fleet: &Fleet) -> Arc<Published> {
    fleet.view().node(&node()).unwrap().published.unwrap()
}

/// The agent's report on the published set: every interface `state` (and
/// named `multinicN` in MAC order), except those `exceptions` name.
fn report(fleet: &Fleet, session: u64, exceptions: &[(MacAddress, InterfaceStatus)]) {
    let pushed = pushed(fleet);
    let mut interfaces: Vec<InterfaceStatus> = pushed
        .set
        .iter()
        .enumerate()
        .map(|(i, s)| InterfaceStatus::applied(s.mac, InterfaceName::new(i as u8, 10).unwrap()))
        .filter(|s| !exceptions.iter().any(|(mac, _)| *mac == s.mac))
        .collect();
    interfaces.extend(exceptions.iter().map(|(_, s)| s.clone()));
    let outcome = Outcome::of(&interfaces);
    let report = AgentReport {
        generation: pushed.generation,
        nonce: 1,
        digest: Some(pushed.set.digest().clone()),
        outcome,
        interfaces,
        error: String::new(),
        drift: Vec::new(),
    };
    fleet.sessions().record(&node(), session, &pushed, &report).unwrap();
}

fn diff(fleet: &Fleet) -> NodeDiff {
    node_diff(&fleet.view().node(&node()).unwrap(), LIMIT)
}

/// A fleet whose node `a` applied `rows` (its agent connected, session id returned).
fn applied(rows: Vec<InterfaceRow>) -> (Fleet, u64) {
    let fleet = Fleet::with_guard(GuardConfig::off());
    fleet.leadership().set_active(true);
    publish(&fleet, rows);
    let (session, _, _) = fleet.sessions().connect(&hello("a", None));
    report(&fleet, session, &[]);
    (fleet, session)
}

fn change(field: Field, old: Option<&str>, new: Option<&str>) -> FieldChange {
    FieldChange { field, old: old.map(str::to_owned), new: new.map(str::to_owned) }
}

#[test]
fn a_node_whose_agent_never_reported_is_unknown_not_empty() {
    let fleet = Fleet::new();
    fleet.leadership().set_active(true);
    publish(&fleet, vec![row(1, 1, 1500, None), row(2, 2, 1500, None)]);
    let d = diff(&fleet);
    assert_eq!(d.applied_at, None);
    assert!(!d.connected);
    assert!(d.interfaces.items.is_empty(), "nothing is compared with what is not known");
    assert_eq!(d.desired, 2);
    assert!(d.pending(), "it may change");
}

#[test]
fn a_node_as_desired_has_nothing_to_show() {
    let (fleet, _) = applied(vec![row(1, 1, 1500, Some("10.0.0.5")), row(2, 2, 9000, None)]);
    let d = diff(&fleet);
    assert!(d.applied_at.is_some() && d.connected);
    assert_eq!((d.interfaces.total(), d.unchanged, d.desired), (0, 2, 2));
    assert!(!d.pending() && d.is_quiet());
}

#[test]
fn an_edited_mtu_and_address_are_a_change_of_each_field() {
    let (fleet, _) = applied(vec![row(1, 1, 1500, Some("10.0.0.5")), row(2, 2, 1500, None)]);
    publish(&fleet, vec![row(1, 1, 1400, Some("10.0.0.6")), row(2, 2, 1500, None)]);
    let d = diff(&fleet);
    assert_eq!(d.interfaces.items.len(), 1);
    let entry = &d.interfaces.items[0];
    assert_eq!((entry.mac, entry.action), (mac(1), DiffAction::Change));
    assert_eq!(entry.name.unwrap().to_string(), "multinic0", "it keeps its name");
    assert_eq!(
        entry.changes,
        vec![
            change(Field::Mtu, Some("1500"), Some("1400")),
            change(Field::Address, Some("10.0.0.5/24"), Some("10.0.0.6/24"))
        ]
    );
    assert_eq!(entry.row_ids, vec![1]);
    assert_eq!(entry.reason, None);
    assert_eq!(d.unchanged, 1);
    assert!(d.pending());
}

#[test]
fn a_new_row_is_an_add_with_its_values_and_no_name_yet() {
    let (fleet, _) = applied(vec![row(1, 1, 1500, None)]);
    publish(&fleet, vec![row(1, 1, 1500, None), row(2, 2, 9000, Some("10.0.0.9"))]);
    let d = diff(&fleet);
    let entry = &d.interfaces.items[0];
    assert_eq!((entry.mac, entry.action, entry.name), (mac(2), DiffAction::Add, None));
    assert_eq!(
        entry.changes,
        vec![change(Field::Mtu, None, Some("9000")), change(Field::Address, None, Some("10.0.0.9/24"))]
    );
    assert_eq!(entry.row_ids, vec![2]);
}

#[test]
fn a_deleted_row_is_a_remove_of_what_the_node_has() {
    let (fleet, _) = applied(vec![row(1, 1, 1500, Some("10.0.0.5")), row(2, 2, 1500, None)]);
    publish(&fleet, vec![row(2, 2, 1500, None)]);
    let d = diff(&fleet);
    let entry = &d.interfaces.items[0];
    assert_eq!((entry.mac, entry.action), (mac(1), DiffAction::Remove));
    assert_eq!(entry.name.unwrap().to_string(), "multinic0");
    assert_eq!(
        entry.changes,
        vec![change(Field::Mtu, Some("1500"), None), change(Field::Address, Some("10.0.0.5/24"), None)]
    );
    assert!(entry.row_ids.is_empty());

    // Once the agent reports the removal, nothing is left to do.
    let session = fleet.view().node(&node()).unwrap().session.unwrap().id;
    report(&fleet, session, &[(mac(1), removed(1))]);
    assert!(!diff(&fleet).pending());
}

/// `multinic0` (`mac(1)`) in `state`, with why.
fn multinic0_of_mac1(state: InterfaceState, code: ErrorCode, message: &str) -> InterfaceStatus {
    InterfaceStatus::problem(mac(1), Some(InterfaceName::new(0, 10).unwrap()), state, code, message)
}

fn removed(i: u8) -> InterfaceStatus {
    InterfaceStatus::problem(mac(i), None, InterfaceState::Removed, ErrorCode::None, "")
}

#[test]
fn a_failed_change_still_shows_from_what_the_node_kept_with_why() {
    let (fleet, session) = applied(vec![row(1, 1, 1500, None)]);
    publish(&fleet, vec![row(1, 1, 9000, None)]);
    let failed = multinic0_of_mac1(
        InterfaceState::Failed,
        ErrorCode::MtuRejected,
        "MTU 9000 above the device's maximum 1500; rolled back to the previous state",
    );
    report(&fleet, session, &[(mac(1), failed)]);
    let entry = diff(&fleet).interfaces.items[0].clone();
    assert_eq!(entry.action, DiffAction::Change);
    assert_eq!(entry.changes, vec![change(Field::Mtu, Some("1500"), Some("9000"))], "rolled back: 1500 stays");
    assert_eq!(
        entry.reason.as_deref(),
        Some("failed: MTU_REJECTED: MTU 9000 above the device's maximum 1500; rolled back to the previous state")
    );
}

#[test]
fn a_mac_waiting_for_its_nic_is_still_an_add_and_says_so() {
    let fleet = Fleet::with_guard(GuardConfig::off());
    fleet.leadership().set_active(true);
    publish(&fleet, vec![row(1, 1, 1500, None)]);
    let (session, _, _) = fleet.sessions().connect(&hello("a", None));
    let waiting = multinic0_of_mac1(InterfaceState::Waiting, ErrorCode::MacNotPresent, "no link with this MAC");
    report(&fleet, session, &[(mac(1), waiting)]);
    let entry = diff(&fleet).interfaces.items[0].clone();
    assert_eq!(entry.action, DiffAction::Add);
    assert_eq!(entry.reason.as_deref(), Some("waiting: MAC_NOT_PRESENT: no link with this MAC"));
}

#[test]
fn a_removal_the_guard_holds_is_held_with_the_guards_reason() {
    let fleet = Fleet::with_guard(GuardConfig { max_share: 0.5, min_removals: 2, warmup: Duration::ZERO });
    fleet.leadership().set_active(true);
    let rows: Vec<InterfaceRow> = (1..=4).map(|i| row(i64::from(i), i, 1500, None)).collect();
    publish(&fleet, rows);
    let (session, _, _) = fleet.sessions().connect(&hello("a", None));
    report(&fleet, session, &[]);
    // Three of four go at once: over half, held.
    publish(&fleet, vec![row(4, 4, 1500, None)]);
    let d = diff(&fleet);
    assert_eq!(d.interfaces.items.len(), 3);
    for entry in &d.interfaces.items {
        assert_eq!(entry.action, DiffAction::Held, "{entry:?}");
        let reason = entry.reason.as_deref().unwrap();
        assert!(reason.starts_with("the mass-deletion guard holds its removal: "), "{reason}");
        assert!(reason.contains("3 of 4"), "the guard's own reason: {reason}");
        assert_eq!(entry.changes, vec![change(Field::Mtu, Some("1500"), None)], "what would go");
    }
    assert!(d.pending());
}

#[test]
fn a_rejected_row_is_listed_with_its_reason_and_changes_nothing() {
    let (fleet, _) = applied(vec![row(1, 1, 1500, None), row(2, 2, 1500, None)]);
    publish(&fleet, vec![row(1, 1, 1500, None), row(2, 2, 0, None)]);
    let d = diff(&fleet);
    assert!(d.interfaces.items.is_empty(), "the MAC is held: left exactly as it is");
    assert_eq!(d.rejected.items.len(), 1);
    assert_eq!((d.rejected.items[0].row_id, d.rejected.items[0].code), (2, ErrorCode::InvalidRow));
    assert!(d.rejected.items[0].message.contains("MTU 0"), "{}", d.rejected.items[0].message);
    assert!(!d.pending() && !d.is_quiet());
}

#[test]
fn a_disconnected_node_is_compared_with_its_last_report() {
    let (fleet, session) = applied(vec![row(1, 1, 1500, None)]);
    fleet.sessions().disconnect(&node(), session);
    publish(&fleet, vec![row(1, 1, 1400, None)]);
    let d = diff(&fleet);
    assert!(!d.connected);
    assert!(d.applied_at.is_some());
    assert_eq!(d.interfaces.items[0].changes, vec![change(Field::Mtu, Some("1500"), Some("1400"))]);
}

#[test]
fn a_failed_removal_stays_a_removal_with_why() {
    let (fleet, session) = applied(vec![row(1, 1, 1500, None), row(2, 2, 1500, None)]);
    publish(&fleet, vec![row(2, 2, 1500, None)]);
    let failed = multinic0_of_mac1(
        InterfaceState::Failed,
        ErrorCode::WriteFailed,
        "removing /etc/netplan/90-multinic0.yaml: Read-only file system",
    );
    report(&fleet, session, &[(mac(1), failed)]);
    let entry = diff(&fleet).interfaces.items[0].clone();
    assert_eq!((entry.mac, entry.action), (mac(1), DiffAction::Remove));
    assert!(entry.reason.unwrap().starts_with("failed: WRITE_FAILED: removing"));
}

#[test]
fn thousands_of_changes_are_listed_up_to_the_limit_and_counted() {
    let (fleet, _) = applied(vec![]);
    let rows: Vec<InterfaceRow> = (0..=250u8).map(|i| row(i64::from(i), i, 1500, None)).collect();
    publish(&fleet, rows);
    let d = diff(&fleet);
    assert_eq!(d.interfaces.items.len(), LIMIT);
    assert_eq!(d.interfaces.omitted, 251 - LIMIT);
    assert!(d.interfaces.items.windows(2).all(|w| w[0].mac < w[1].mac), "in MAC order");
}
