//! What an agent may claim, checked before the controller believes any of it.
//!
//! An agent's Hello and Reports say which interfaces its node has and how
//! each push went. Those claims feed the fleet-wide mass-deletion guard and
//! `netplan_success`, so a buggy or compromised node must not be able to
//! speak for more than its own few interfaces: a Hello may name at most a
//! node's capacity of interfaces it has, one status per MAC (besides files
//! it removed), one MAC per name (a removed file frees its name), and only
//! states an agent reports; a Report must answer exactly the push it names (its generation, its
//! interfaces in interface states, its held MACs as held, anything else
//! only as removed — a MAC no longer desired, or a second file of a MAC —
//! or as failed, a removal that failed)
//! with an outcome that matches its statuses. Drift a report carries may
//! name only the push's interfaces (any kind) or, as a file that should not
//! be there, a MAC the push neither names nor holds; at most
//! [`MAX_DRIFT_FINDINGS`]. A claim that fails is refused whole, never half
//! believed. Pure: values in, a verdict out.

use std::collections::{BTreeMap, BTreeSet};

use multinic_proto::{
    AgentReport, DesiredSet, DriftKind, InterfaceName, InterfaceState, InterfaceStatus, MAX_CAPACITY, MacAddress,
    Outcome,
};

/// A node has at most this many interfaces of ours (the largest capacity an
/// agent may be given), so no agent can have, or remove, more.
pub const MAX_PRESENT: usize = MAX_CAPACITY as usize;

/// A report carries at most this much drift: every kind on every
/// interface a node can have.
pub const MAX_DRIFT_FINDINGS: usize = MAX_PRESENT * DriftKind::ALL.len();

/// Why a Hello or a Report is not believed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error("{count} interfaces reported {what}; a node has at most {MAX_PRESENT} of ours")]
    TooMany { count: usize, what: &'static str },
    #[error("MAC {mac} is reported twice (besides files removed)")]
    DuplicateMac { mac: MacAddress },
    #[error("name {name} is reported for both {first} and {second}")]
    DuplicateName { name: InterfaceName, first: MacAddress, second: MacAddress },
    #[error("{mac} is reported {state}, a state only the controller gives")]
    ControllerState { mac: MacAddress, state: InterfaceState },
    #[error("the report names generation {reported}, but its nonce answers the push of generation {pushed}")]
    Generation { reported: u64, pushed: u64 },
    #[error("a rejected push must report no interfaces, this report has {count}")]
    RejectedWithStatuses { count: usize },
    #[error("{mac} is reported {state}, but the push {role}")]
    NotAsPushed { mac: MacAddress, state: InterfaceState, role: &'static str },
    #[error("the report says {claimed}, but its interfaces make it {actual}")]
    Outcome { claimed: &'static str, actual: &'static str },
    #[error("{count} drift findings; a report carries at most {MAX_DRIFT_FINDINGS}")]
    TooMuchDrift { count: usize },
    #[error("drift ({kind}) reported for {mac}, but the push {role}")]
    DriftNotAsPushed { mac: MacAddress, kind: DriftKind, role: &'static str },
}

impl ClaimError {
    /// The `reason` label of `multinic_controller_rejected_messages_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooMany { .. } => "too_many_interfaces",
            Self::DuplicateMac { .. } | Self::DuplicateName { .. } => "duplicate",
            Self::ControllerState { .. } => "controller_state",
            Self::Generation { .. } => "generation_mismatch",
            Self::RejectedWithStatuses { .. } | Self::NotAsPushed { .. } | Self::Outcome { .. } => "inconsistent",
            Self::TooMuchDrift { .. } | Self::DriftNotAsPushed { .. } => "drift",
        }
    }
}

/// Checks the statuses of a Hello: what the agent says it has.
pub fn check_hello(statuses: &[InterfaceStatus]) -> Result<(), ClaimError> {
    check_statuses(statuses)?;
    let present = statuses.iter().filter(|s| has_it(s)).count();
    if present > MAX_PRESENT {
        return Err(ClaimError::TooMany { count: present, what: "present" });
    }
    Ok(())
}

/// Checks a report against the push it answers (`pushed`, of `generation`).
/// A nonce of 0 answers no push of this stream (the controller adopted the
/// agent's Hello, and the agent reports on the set it had, whose generation
/// came from an earlier stream): its generation is not compared.
pub fn check_report(pushed: &DesiredSet, generation: u64, report: &AgentReport) -> Result<(), ClaimError> {
    if report.nonce != 0 && report.generation != generation {
        return Err(ClaimError::Generation { reported: report.generation, pushed: generation });
    }
    if report.outcome == Outcome::Rejected {
        return match report.interfaces.len() + report.drift.len() {
            0 => Ok(()),
            count => Err(ClaimError::RejectedWithStatuses { count }),
        };
    }
    check_against_set(pushed, &report.interfaces)?;
    check_drift(pushed, report)?;
    let actual = Outcome::of(&report.interfaces);
    if actual != report.outcome {
        return Err(ClaimError::Outcome { claimed: report.outcome.as_str(), actual: actual.as_str() });
    }
    Ok(())
}

/// Checks statuses about `set` (a report's, or an adopted Hello's): each
/// interface of the set in an interface state, each held MAC as held, any
/// other MAC only as removed (a file of a desired MAC may be removed too:
/// the second of two files for one MAC) or failed (its removal failed), and
/// no more of those than a node can have.
pub fn check_against_set(set: &DesiredSet, statuses: &[InterfaceStatus]) -> Result<(), ClaimError> {
    check_statuses(statuses)?;
    let mut removed = 0;
    for s in statuses {
        let role = match (set.get(&s.mac).is_some(), set.is_held(&s.mac), s.state) {
            // Removed, or a removal that failed (the agent keeps what it
            // had for that MAC and says why): both about a MAC the push no
            // longer names.
            (_, _, InterfaceState::Removed) | (false, false, InterfaceState::Failed) => {
                removed += 1;
                continue;
            }
            (true, _, InterfaceState::Applied | InterfaceState::Waiting | InterfaceState::Failed)
            | (true, _, InterfaceState::Refused)
            | (false, true, InterfaceState::Held) => continue,
            (true, _, _) => "names it as an interface to configure",
            (false, true, _) => "holds it (left as it is)",
            (false, false, _) => "does not name it",
        };
        return Err(ClaimError::NotAsPushed { mac: s.mac, state: s.state, role });
    }
    if removed > MAX_PRESENT {
        return Err(ClaimError::TooMany { count: removed, what: "removed" });
    }
    Ok(())
}

/// Drift findings name the push's interfaces, or (a file that should not
/// be there) a MAC it neither names nor holds; a held MAC is never touched,
/// so never drifts.
fn check_drift(set: &DesiredSet, report: &AgentReport) -> Result<(), ClaimError> {
    if report.drift.len() > MAX_DRIFT_FINDINGS {
        return Err(ClaimError::TooMuchDrift { count: report.drift.len() });
    }
    for finding in &report.drift {
        let role = match (set.get(&finding.mac).is_some(), set.is_held(&finding.mac), finding.kind) {
            (true, _, _) | (false, false, DriftKind::FileUnwanted) => continue,
            (false, true, _) => "holds it (left as it is)",
            (false, false, _) => "does not name it",
        };
        return Err(ClaimError::DriftNotAsPushed { mac: finding.mac, kind: finding.kind, role });
    }
    Ok(())
}

/// One status per MAC besides removed files, one MAC per name besides
/// removed files, agent states only.
fn check_statuses(statuses: &[InterfaceStatus]) -> Result<(), ClaimError> {
    let mut macs = BTreeSet::new();
    let mut names: BTreeMap<InterfaceName, MacAddress> = BTreeMap::new();
    for s in statuses {
        if s.state == InterfaceState::Pending {
            return Err(ClaimError::ControllerState { mac: s.mac, state: s.state });
        }
        if s.state != InterfaceState::Removed && !macs.insert(s.mac) {
            return Err(ClaimError::DuplicateMac { mac: s.mac });
        }
        // A removed file frees its name: the same apply may give it to
        // another MAC (the dry run; a NIC that was unplugged).
        if let Some(name) = s.name.filter(|_| s.state != InterfaceState::Removed)
            && let Some(first) = names.insert(name, s.mac)
        {
            return Err(ClaimError::DuplicateName { name, first, second: s.mac });
        }
    }
    Ok(())
}

/// Whether a status says the agent has (files or a name for) the
/// interface: applied, waiting (its file is written) or held, or failed
/// with a name (its previous state restored); a failed interface that never
/// got a name has nothing on the node.
pub fn has_it(status: &InterfaceStatus) -> bool {
    match status.state {
        InterfaceState::Applied | InterfaceState::Waiting | InterfaceState::Held => true,
        InterfaceState::Failed => status.name.is_some(),
        InterfaceState::Refused | InterfaceState::Removed | InterfaceState::Pending => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use multinic_proto::{ErrorCode, InterfaceSpec, Mtu};

    fn mac(i: u16) -> MacAddress {
        MacAddress::from_octets([2, 0, 0, 0, (i >> 8) as u8, i as u8]).unwrap()
    }

    fn name(i: u8) -> InterfaceName {
        InterfaceName::new(i, MAX_CAPACITY).unwrap()
    }

    fn status(m: u16, n: Option<u8>, state: InterfaceState) -> InterfaceStatus {
        InterfaceStatus::problem(mac(m), n.map(name), state, ErrorCode::None, "")
    }

    /// Interfaces 1 and 2, 3 held.
    fn set() -> DesiredSet {
        let spec = |m| InterfaceSpec::new(mac(m), None, Mtu::DEFAULT).unwrap();
        DesiredSet::with_held([spec(1), spec(2)], [mac(3)]).unwrap()
    }

    fn report(outcome: Outcome, interfaces: Vec<InterfaceStatus>) -> AgentReport {
        AgentReport {
            generation: 4,
            nonce: 9,
            digest: Some(set().digest().clone()),
            outcome,
            interfaces,
            error: String::new(),
            drift: Vec::new(),
        }
    }

    #[test]
    fn a_hello_may_claim_at_most_a_nodes_capacity() {
        let many: Vec<_> = (0..=MAX_PRESENT as u16).map(|i| status(i, None, InterfaceState::Applied)).collect();
        let err = check_hello(&many).unwrap_err();
        assert_eq!(err, ClaimError::TooMany { count: MAX_PRESENT + 1, what: "present" });
        assert!(err.to_string().contains("at most 100"), "{err}");
        // Refused interfaces, and failed ones that never got a name, are not
        // on the node: any number (a set of 500 whose apply failed whole).
        let refused: Vec<_> = (0..500).map(|i| status(i, None, InterfaceState::Refused)).collect();
        check_hello(&refused).unwrap();
        let failed: Vec<_> = (0..500).map(|i| status(i, None, InterfaceState::Failed)).collect();
        check_hello(&failed).unwrap();
        check_hello(&many[..MAX_PRESENT]).unwrap();
    }

    #[test]
    fn one_status_per_mac_one_mac_per_name_and_no_controller_states() {
        let twice = [status(1, Some(0), InterfaceState::Applied), status(1, Some(1), InterfaceState::Failed)];
        assert_eq!(check_hello(&twice).unwrap_err(), ClaimError::DuplicateMac { mac: mac(1) });
        let shared = [status(1, Some(0), InterfaceState::Applied), status(2, Some(0), InterfaceState::Applied)];
        assert!(matches!(check_hello(&shared).unwrap_err(), ClaimError::DuplicateName { .. }));
        let freed = [status(1, Some(0), InterfaceState::Removed), status(2, Some(0), InterfaceState::Applied)];
        check_hello(&freed).expect("a removed file's name goes to another MAC in the same apply");
        let pending = [status(1, None, InterfaceState::Pending)];
        assert_eq!(check_hello(&pending).unwrap_err().reason(), "controller_state");
    }

    #[test]
    fn a_report_answers_exactly_its_push() {
        let good = vec![
            status(1, Some(0), InterfaceState::Applied),
            status(2, Some(1), InterfaceState::Waiting),
            status(3, Some(2), InterfaceState::Held),
            status(4, Some(3), InterfaceState::Removed),
        ];
        check_report(&set(), 4, &report(Outcome::Partial, good.clone())).unwrap();

        let mut other_generation = report(Outcome::Partial, good.clone());
        other_generation.generation = 5;
        assert_eq!(
            check_report(&set(), 4, &other_generation).unwrap_err(),
            ClaimError::Generation { reported: 5, pushed: 4 }
        );
        other_generation.nonce = 0;
        check_report(&set(), 4, &other_generation).expect("a report on an adopted Hello keeps its own generation");

        let outcome = check_report(&set(), 4, &report(Outcome::Applied, good)).unwrap_err();
        assert_eq!(outcome, ClaimError::Outcome { claimed: "applied", actual: "partial" });

        let rejected = report(Outcome::Rejected, vec![status(1, Some(0), InterfaceState::Applied)]);
        assert_eq!(check_report(&set(), 4, &rejected).unwrap_err(), ClaimError::RejectedWithStatuses { count: 1 });
        check_report(&set(), 4, &report(Outcome::Rejected, vec![])).unwrap();
    }

    #[test]
    fn states_must_fit_what_the_push_asked_of_each_mac() {
        for (bad, role) in [
            (status(1, Some(0), InterfaceState::Held), "names it as an interface"),
            (status(3, Some(0), InterfaceState::Applied), "holds it"),
            (status(7, Some(0), InterfaceState::Applied), "does not name it"),
            (status(7, Some(0), InterfaceState::Held), "does not name it"),
        ] {
            let err = check_against_set(&set(), &[bad]).unwrap_err();
            assert!(err.to_string().contains(role), "{err}");
        }
        // The second of two files for one MAC is removed beside the one kept.
        let second_file = [status(1, Some(0), InterfaceState::Applied), status(1, Some(4), InterfaceState::Removed)];
        check_against_set(&set(), &second_file).unwrap();
        // A removal that failed is reported about a MAC the push no longer
        // names; the rest of that report stands.
        let failed_removal = [status(1, Some(0), InterfaceState::Applied), status(7, Some(5), InterfaceState::Failed)];
        check_against_set(&set(), &failed_removal).unwrap();
        let removed: Vec<_> =
            (10..=MAX_PRESENT as u16 + 10).map(|i| status(i, None, InterfaceState::Removed)).collect();
        assert!(matches!(check_against_set(&set(), &removed), Err(ClaimError::TooMany { what: "removed", .. })));
    }

    #[test]
    fn drift_names_the_pushs_interfaces_or_a_file_it_does_not_want() {
        use multinic_proto::{DriftAction, DriftFinding};
        let finding = |m: u16, kind| DriftFinding {
            mac: mac(m),
            name: name(0),
            kind,
            found: "MTU 1300".into(),
            wanted: "MTU 1500".into(),
            action: DriftAction::Repaired,
        };
        let applied = vec![status(1, Some(0), InterfaceState::Applied), status(2, Some(1), InterfaceState::Applied)];
        let with = |drift: Vec<DriftFinding>| AgentReport { drift, ..report(Outcome::Applied, applied.clone()) };
        check_report(&set(), 4, &with(vec![finding(1, DriftKind::Mtu), finding(9, DriftKind::FileUnwanted)])).unwrap();
        for (bad, role) in [
            (finding(9, DriftKind::Mtu), "does not name it"),
            (finding(3, DriftKind::Mtu), "holds it"),
            (finding(3, DriftKind::FileUnwanted), "holds it"),
        ] {
            let err = check_report(&set(), 4, &with(vec![bad])).unwrap_err();
            assert!(err.to_string().contains(role) && err.reason() == "drift", "{err}");
        }
        let flood = vec![finding(1, DriftKind::Mtu); MAX_DRIFT_FINDINGS + 1];
        assert_eq!(check_report(&set(), 4, &with(flood)).unwrap_err(), ClaimError::TooMuchDrift { count: 801 });
        let rejected = AgentReport { drift: vec![finding(1, DriftKind::Mtu)], ..report(Outcome::Rejected, vec![]) };
        assert!(check_report(&set(), 4, &rejected).is_err(), "a rejected push changed nothing, so found nothing");
    }
}
