//! Conversions between wire messages (`v1`) and domain values.
//!
//! Every conversion from the wire validates; an error names the field and the
//! value. Conversions to the wire cannot fail.

use crate::domain::{
    AgentHello, AgentReport, DesiredPush, DesiredSet, Digest, DriftAction, DriftFinding, DriftKind, ErrorCode,
    IfaceAddr, InterfaceName, InterfaceSpec, InterfaceState, InterfaceStatus, MAX_CAPACITY, MacAddress, Mtu, Outcome,
    ParseError,
};
use crate::v1;

impl From<&InterfaceSpec> for v1::Interface {
    fn from(spec: &InterfaceSpec) -> Self {
        Self {
            mac_address: spec.mac.to_string(),
            address: spec.address.map(|a| a.to_string()).unwrap_or_default(),
            mtu: u32::from(spec.mtu.get()),
        }
    }
}

impl TryFrom<&v1::Interface> for InterfaceSpec {
    type Error = ParseError;

    fn try_from(msg: &v1::Interface) -> Result<Self, Self::Error> {
        let mac: MacAddress = msg.mac_address.parse()?;
        let address = match msg.address.as_str() {
            "" => None,
            a => Some(a.parse::<IfaceAddr>()?),
        };
        let mtu = Mtu::new(i64::from(msg.mtu))?;
        InterfaceSpec::new(mac, address, mtu)
    }
}

impl From<&DesiredPush> for v1::DesiredState {
    fn from(push: &DesiredPush) -> Self {
        Self {
            generation: push.generation,
            nonce: push.nonce,
            digest: push.set.digest().to_string(),
            interfaces: push.set.iter().map(v1::Interface::from).collect(),
            held_mac_addresses: push.set.held().iter().map(MacAddress::to_string).collect(),
        }
    }
}

impl TryFrom<&v1::DesiredState> for DesiredPush {
    type Error = ParseError;

    /// Refuses the whole push if any interface is malformed or the digest does
    /// not match the content: applying part of a corrupt set could remove
    /// interfaces the controller never meant to remove.
    fn try_from(msg: &v1::DesiredState) -> Result<Self, Self::Error> {
        let specs = msg.interfaces.iter().map(InterfaceSpec::try_from).collect::<Result<Vec<_>, _>>()?;
        let held = msg.held_mac_addresses.iter().map(|m| m.parse::<MacAddress>()).collect::<Result<Vec<_>, _>>()?;
        let set = DesiredSet::with_held(specs, held)?;
        if set.digest().as_str() != msg.digest {
            return Err(ParseError::DigestMismatch { claimed: msg.digest.clone(), actual: set.digest().to_string() });
        }
        Ok(Self { generation: msg.generation, nonce: msg.nonce, set })
    }
}

impl From<InterfaceState> for v1::InterfaceState {
    fn from(state: InterfaceState) -> Self {
        match state {
            InterfaceState::Applied => Self::Applied,
            InterfaceState::Waiting => Self::Waiting,
            InterfaceState::Failed => Self::Failed,
            InterfaceState::Refused => Self::Refused,
            InterfaceState::Removed => Self::Removed,
            InterfaceState::Pending => Self::Pending,
            InterfaceState::Held => Self::Held,
        }
    }
}

impl TryFrom<i32> for InterfaceState {
    type Error = ParseError;

    fn try_from(value: i32) -> Result<Self, Self::Error> {
        let unknown = ParseError::UnknownEnum { field: "InterfaceStatus.state", value };
        Ok(match v1::InterfaceState::try_from(value).map_err(|_| unknown.clone())? {
            v1::InterfaceState::Applied => Self::Applied,
            v1::InterfaceState::Waiting => Self::Waiting,
            v1::InterfaceState::Failed => Self::Failed,
            v1::InterfaceState::Refused => Self::Refused,
            v1::InterfaceState::Removed => Self::Removed,
            v1::InterfaceState::Pending => Self::Pending,
            v1::InterfaceState::Held => Self::Held,
            v1::InterfaceState::Unspecified => return Err(unknown),
        })
    }
}

impl From<ErrorCode> for v1::ErrorCode {
    fn from(code: ErrorCode) -> Self {
        match code {
            ErrorCode::None => Self::None,
            ErrorCode::InvalidSpec => Self::InvalidSpec,
            ErrorCode::CapacityExceeded => Self::CapacityExceeded,
            ErrorCode::ProtectedInterface => Self::ProtectedInterface,
            ErrorCode::ForeignInterface => Self::ForeignInterface,
            ErrorCode::WriteFailed => Self::WriteFailed,
            ErrorCode::ApplyFailed => Self::ApplyFailed,
            ErrorCode::VerifyFailed => Self::VerifyFailed,
            ErrorCode::MacNotPresent => Self::MacNotPresent,
            ErrorCode::MtuRejected => Self::MtuRejected,
            ErrorCode::CorruptFile => Self::CorruptFile,
            ErrorCode::InvalidRow => Self::InvalidRow,
            ErrorCode::DuplicateMac => Self::DuplicateMac,
            ErrorCode::RemovalHeld => Self::RemovalHeld,
            ErrorCode::Internal => Self::Internal,
            ErrorCode::PushTooLarge => Self::PushTooLarge,
            ErrorCode::PushUnanswered => Self::PushUnanswered,
            ErrorCode::PushRejected => Self::PushRejected,
            ErrorCode::DuplicateAddress => Self::DuplicateAddress,
            ErrorCode::DriftRepeated => Self::DriftRepeated,
            ErrorCode::Drifted => Self::Drifted,
        }
    }
}

impl From<i32> for ErrorCode {
    /// Unknown codes (from a newer peer) read as `Internal`, keeping the message.
    fn from(value: i32) -> Self {
        match v1::ErrorCode::try_from(value) {
            Ok(v1::ErrorCode::None) => Self::None,
            Ok(v1::ErrorCode::InvalidSpec) => Self::InvalidSpec,
            Ok(v1::ErrorCode::CapacityExceeded) => Self::CapacityExceeded,
            Ok(v1::ErrorCode::ProtectedInterface) => Self::ProtectedInterface,
            Ok(v1::ErrorCode::ForeignInterface) => Self::ForeignInterface,
            Ok(v1::ErrorCode::WriteFailed) => Self::WriteFailed,
            Ok(v1::ErrorCode::ApplyFailed) => Self::ApplyFailed,
            Ok(v1::ErrorCode::VerifyFailed) => Self::VerifyFailed,
            Ok(v1::ErrorCode::MacNotPresent) => Self::MacNotPresent,
            Ok(v1::ErrorCode::MtuRejected) => Self::MtuRejected,
            Ok(v1::ErrorCode::CorruptFile) => Self::CorruptFile,
            Ok(v1::ErrorCode::InvalidRow) => Self::InvalidRow,
            Ok(v1::ErrorCode::DuplicateMac) => Self::DuplicateMac,
            Ok(v1::ErrorCode::RemovalHeld) => Self::RemovalHeld,
            Ok(v1::ErrorCode::PushTooLarge) => Self::PushTooLarge,
            Ok(v1::ErrorCode::PushUnanswered) => Self::PushUnanswered,
            Ok(v1::ErrorCode::PushRejected) => Self::PushRejected,
            Ok(v1::ErrorCode::DuplicateAddress) => Self::DuplicateAddress,
            Ok(v1::ErrorCode::DriftRepeated) => Self::DriftRepeated,
            Ok(v1::ErrorCode::Drifted) => Self::Drifted,
            Ok(v1::ErrorCode::Internal) | Err(_) => Self::Internal,
        }
    }
}

impl From<&InterfaceStatus> for v1::InterfaceStatus {
    fn from(status: &InterfaceStatus) -> Self {
        Self {
            mac_address: status.mac.to_string(),
            name: status.name.map(|n| n.to_string()).unwrap_or_default(),
            state: v1::InterfaceState::from(status.state).into(),
            error_code: v1::ErrorCode::from(status.code).into(),
            message: status.message.clone(),
        }
    }
}

impl TryFrom<&v1::InterfaceStatus> for InterfaceStatus {
    type Error = ParseError;

    fn try_from(msg: &v1::InterfaceStatus) -> Result<Self, Self::Error> {
        let name = match msg.name.as_str() {
            "" => None,
            n => Some(InterfaceName::parse(n, MAX_CAPACITY).ok_or_else(|| ParseError::InterfaceName {
                input: n.to_owned(),
                reason: "not a multinicN name".to_owned(),
            })?),
        };
        Ok(Self {
            mac: msg.mac_address.parse()?,
            name,
            state: InterfaceState::try_from(msg.state)?,
            code: ErrorCode::from(msg.error_code),
            message: truncate(&msg.message, 1024),
        })
    }
}

impl From<Outcome> for v1::Outcome {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Applied => Self::Applied,
            Outcome::Partial => Self::Partial,
            Outcome::Rejected => Self::Rejected,
        }
    }
}

impl From<&AgentHello> for v1::Hello {
    fn from(hello: &AgentHello) -> Self {
        Self {
            node_name: hello.node.to_string(),
            agent_version: hello.agent_version.clone(),
            backend: hello.backend.clone(),
            applied_digest: hello.applied_digest.as_ref().map(Digest::to_string).unwrap_or_default(),
            interfaces: hello.interfaces.iter().map(v1::InterfaceStatus::from).collect(),
            apply_mode: hello.apply_mode.clone(),
        }
    }
}

impl TryFrom<&v1::Hello> for AgentHello {
    type Error = ParseError;

    fn try_from(msg: &v1::Hello) -> Result<Self, Self::Error> {
        Ok(Self {
            node: msg.node_name.parse()?,
            agent_version: truncate(&msg.agent_version, 64),
            backend: truncate(&msg.backend, 32),
            apply_mode: truncate(&msg.apply_mode, 32),
            applied_digest: Digest::from_wire(&msg.applied_digest),
            interfaces: statuses(&msg.interfaces)?,
        })
    }
}

impl From<&AgentReport> for v1::Report {
    fn from(report: &AgentReport) -> Self {
        Self {
            generation: report.generation,
            nonce: report.nonce,
            digest: report.digest.as_ref().map(Digest::to_string).unwrap_or_default(),
            outcome: v1::Outcome::from(report.outcome).into(),
            interfaces: report.interfaces.iter().map(v1::InterfaceStatus::from).collect(),
            error: report.error.clone(),
            drift: report.drift.iter().map(v1::DriftFinding::from).collect(),
        }
    }
}

impl TryFrom<&v1::Report> for AgentReport {
    type Error = ParseError;

    fn try_from(msg: &v1::Report) -> Result<Self, Self::Error> {
        let outcome = match v1::Outcome::try_from(msg.outcome) {
            Ok(v1::Outcome::Applied) => Outcome::Applied,
            Ok(v1::Outcome::Partial) => Outcome::Partial,
            Ok(v1::Outcome::Rejected) => Outcome::Rejected,
            _ => return Err(ParseError::UnknownEnum { field: "Report.outcome", value: msg.outcome }),
        };
        Ok(Self {
            generation: msg.generation,
            nonce: msg.nonce,
            digest: Digest::from_wire(&msg.digest),
            outcome,
            interfaces: statuses(&msg.interfaces)?,
            error: truncate(&msg.error, 1024),
            drift: msg.drift.iter().map(DriftFinding::try_from).collect::<Result<_, _>>()?,
        })
    }
}

impl From<DriftKind> for v1::DriftKind {
    fn from(kind: DriftKind) -> Self {
        match kind {
            DriftKind::Mtu => Self::Mtu,
            DriftKind::AddressMissing => Self::AddressMissing,
            DriftKind::AddressExtra => Self::AddressExtra,
            DriftKind::LinkDown => Self::LinkDown,
            DriftKind::NameLost => Self::NameLost,
            DriftKind::FileDeleted => Self::FileDeleted,
            DriftKind::FileEdited => Self::FileEdited,
            DriftKind::FileUnwanted => Self::FileUnwanted,
        }
    }
}

impl TryFrom<i32> for DriftKind {
    type Error = ParseError;

    fn try_from(value: i32) -> Result<Self, Self::Error> {
        let unknown = ParseError::UnknownEnum { field: "DriftFinding.kind", value };
        Ok(match v1::DriftKind::try_from(value).map_err(|_| unknown.clone())? {
            v1::DriftKind::Mtu => Self::Mtu,
            v1::DriftKind::AddressMissing => Self::AddressMissing,
            v1::DriftKind::AddressExtra => Self::AddressExtra,
            v1::DriftKind::LinkDown => Self::LinkDown,
            v1::DriftKind::NameLost => Self::NameLost,
            v1::DriftKind::FileDeleted => Self::FileDeleted,
            v1::DriftKind::FileEdited => Self::FileEdited,
            v1::DriftKind::FileUnwanted => Self::FileUnwanted,
            v1::DriftKind::Unspecified => return Err(unknown),
        })
    }
}

impl From<DriftAction> for v1::DriftAction {
    fn from(action: DriftAction) -> Self {
        match action {
            DriftAction::Repaired => Self::Repaired,
            DriftAction::RepairFailed => Self::RepairFailed,
            DriftAction::NotRepaired => Self::NotRepaired,
            DriftAction::GivenUp => Self::GivenUp,
        }
    }
}

impl TryFrom<i32> for DriftAction {
    type Error = ParseError;

    fn try_from(value: i32) -> Result<Self, Self::Error> {
        let unknown = ParseError::UnknownEnum { field: "DriftFinding.action", value };
        Ok(match v1::DriftAction::try_from(value).map_err(|_| unknown.clone())? {
            v1::DriftAction::Repaired => Self::Repaired,
            v1::DriftAction::RepairFailed => Self::RepairFailed,
            v1::DriftAction::NotRepaired => Self::NotRepaired,
            v1::DriftAction::GivenUp => Self::GivenUp,
            v1::DriftAction::Unspecified => return Err(unknown),
        })
    }
}

impl From<&DriftFinding> for v1::DriftFinding {
    fn from(finding: &DriftFinding) -> Self {
        Self {
            mac_address: finding.mac.to_string(),
            name: finding.name.to_string(),
            kind: v1::DriftKind::from(finding.kind).into(),
            found: finding.found.clone(),
            wanted: finding.wanted.clone(),
            action: v1::DriftAction::from(finding.action).into(),
        }
    }
}

impl TryFrom<&v1::DriftFinding> for DriftFinding {
    type Error = ParseError;

    fn try_from(msg: &v1::DriftFinding) -> Result<Self, Self::Error> {
        let name = InterfaceName::parse(&msg.name, MAX_CAPACITY).ok_or_else(|| ParseError::InterfaceName {
            input: truncate(&msg.name, 32),
            reason: "not a multinicN name".to_owned(),
        })?;
        Ok(Self {
            mac: msg.mac_address.parse()?,
            name,
            kind: DriftKind::try_from(msg.kind)?,
            found: truncate(&msg.found, DRIFT_TEXT_LIMIT),
            wanted: truncate(&msg.wanted, DRIFT_TEXT_LIMIT),
            action: DriftAction::try_from(msg.action)?,
        })
    }
}

/// The most of a drift finding's `found` and `wanted` texts a peer keeps.
pub const DRIFT_TEXT_LIMIT: usize = 256;

fn statuses(msgs: &[v1::InterfaceStatus]) -> Result<Vec<InterfaceStatus>, ParseError> {
    msgs.iter().map(InterfaceStatus::try_from).collect()
}

/// Caps peer-supplied free text so one message cannot bloat controller state.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push() -> DesiredPush {
        let spec = InterfaceSpec::new(
            "fa:16:3e:00:00:01".parse().unwrap(),
            Some("10.0.0.5/24".parse().unwrap()),
            Mtu::new(1450).unwrap(),
        )
        .unwrap();
        DesiredPush { generation: 3, nonce: 77, set: DesiredSet::new([spec]).unwrap() }
    }

    #[test]
    fn desired_state_round_trips() {
        let push = push();
        let wire = v1::DesiredState::from(&push);
        assert_eq!(wire.interfaces[0].address, "10.0.0.5/24");
        assert_eq!(DesiredPush::try_from(&wire).unwrap(), push);
    }

    #[test]
    fn held_macs_travel() {
        let mut push = push();
        let held: MacAddress = "fa:16:3e:00:00:09".parse().unwrap();
        push.set = DesiredSet::with_held(push.set.iter().copied().collect::<Vec<_>>(), [held]).unwrap();
        let wire = v1::DesiredState::from(&push);
        assert_eq!(wire.held_mac_addresses, vec!["fa:16:3e:00:00:09".to_owned()]);
        assert_eq!(DesiredPush::try_from(&wire).unwrap(), push);
    }

    #[test]
    fn tampered_push_is_refused_whole() {
        let mut wire = v1::DesiredState::from(&push());
        wire.interfaces[0].mtu = 9000;
        assert!(matches!(DesiredPush::try_from(&wire), Err(ParseError::DigestMismatch { .. })));

        let mut wire = v1::DesiredState::from(&push());
        wire.interfaces[0].mac_address = "00-11-22-33-44-55".into();
        assert!(matches!(DesiredPush::try_from(&wire), Err(ParseError::Mac { .. })));

        let mut wire = v1::DesiredState::from(&push());
        wire.interfaces.push(wire.interfaces[0].clone());
        assert!(matches!(DesiredPush::try_from(&wire), Err(ParseError::DuplicateMac { .. })));
    }

    #[test]
    fn report_round_trips_and_rejects_unknown_state() {
        let mac: MacAddress = "fa:16:3e:00:00:01".parse().unwrap();
        let report = AgentReport {
            generation: 1,
            nonce: 2,
            digest: Some(push().set.digest().clone()),
            outcome: Outcome::Partial,
            interfaces: vec![InterfaceStatus::problem(
                mac,
                InterfaceName::new(0, 10),
                InterfaceState::Failed,
                ErrorCode::MtuRejected,
                "device refused mtu 9000",
            )],
            error: String::new(),
            drift: vec![DriftFinding {
                mac,
                name: InterfaceName::new(0, 10).unwrap(),
                kind: DriftKind::Mtu,
                found: "MTU 1300".into(),
                wanted: "MTU 1500".into(),
                action: DriftAction::Repaired,
            }],
        };
        let wire = v1::Report::from(&report);
        assert_eq!(AgentReport::try_from(&wire).unwrap(), report);

        let mut bad = wire.clone();
        bad.interfaces[0].state = 99;
        assert!(AgentReport::try_from(&bad).is_err());
        let mut bad = wire;
        bad.interfaces[0].name = "eth0".into();
        assert!(AgentReport::try_from(&bad).unwrap_err().to_string().contains("eth0"));
    }

    #[test]
    fn drift_findings_round_trip_and_unknown_or_oversized_ones_are_bounded() {
        for kind in DriftKind::ALL {
            for action in
                [DriftAction::Repaired, DriftAction::RepairFailed, DriftAction::NotRepaired, DriftAction::GivenUp]
            {
                let finding = DriftFinding {
                    mac: "fa:16:3e:00:00:01".parse().unwrap(),
                    name: InterfaceName::new(3, 10).unwrap(),
                    kind,
                    found: "found".into(),
                    wanted: "wanted".into(),
                    action,
                };
                assert_eq!(DriftFinding::try_from(&v1::DriftFinding::from(&finding)).unwrap(), finding);
            }
        }
        let good = v1::DriftFinding {
            mac_address: "fa:16:3e:00:00:01".into(),
            name: "multinic0".into(),
            kind: v1::DriftKind::Mtu.into(),
            found: "x".repeat(10_000),
            wanted: String::new(),
            action: v1::DriftAction::Repaired.into(),
        };
        assert!(DriftFinding::try_from(&good).unwrap().found.len() <= DRIFT_TEXT_LIMIT + 3, "bounded");
        let err = DriftFinding::try_from(&v1::DriftFinding { kind: 0, ..good.clone() }).unwrap_err();
        assert!(err.to_string().contains("DriftFinding.kind"), "{err}");
        let err = DriftFinding::try_from(&v1::DriftFinding { action: 42, ..good.clone() }).unwrap_err();
        assert!(err.to_string().contains("DriftFinding.action"), "{err}");
        let err = DriftFinding::try_from(&v1::DriftFinding { name: "eth0".into(), ..good }).unwrap_err();
        assert!(err.to_string().contains("eth0"), "{err}");
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("ééé", 3), "é…");
        assert_eq!(truncate("abc", 3), "abc");
    }
}
