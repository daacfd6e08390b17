//! What the desired state read from the database would change on a node,
//! against what the node's agent last reported applied: `multinicctl diff`.
//!
//! Exists so an operator can see a change before (or while) it lands: per
//! interface, `add`, `change` (each field, old → new), `remove`, or `held`
//! (the mass-deletion guard holds the removal, or a rollout the change), plus the node's rows that
//! validation rejected, with their reasons. Pure: it reads a
//! [`NodeSnapshot`] and returns values; no I/O, no clock, no lock. It must
//! never guess: what the agent has is taken only from its reports in this
//! controller run, and a node without one is said to be unknown, not empty.
//! Lists are bounded like every status view.

use std::collections::BTreeSet;
use std::time::SystemTime;

use multinic_proto::{InterfaceName, InterfaceSpec, InterfaceState, MacAddress, NodeName};

use super::{Bounded, NodeProblem, NodeSnapshot};
use crate::desired::RowProblem;

/// What would happen to one interface of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiffAction {
    /// The node does not have it yet.
    Add,
    /// The node has it with other settings.
    Change,
    /// No active row names it for the node any more.
    Remove,
    /// Its removal is held back by the mass-deletion guard, or its change by
    /// a rollout.
    Held,
}

impl DiffAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "add",
            Self::Change => "change",
            Self::Remove => "remove",
            Self::Held => "held",
        }
    }
}

/// A field of an interface that the database decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Mtu,
    Address,
}

impl Field {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mtu => "mtu",
            Self::Address => "address",
        }
    }
}

/// One field's value before and after (`None`: none, e.g. an add's old value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldChange {
    pub field: Field,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// What would happen to one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceDiff {
    pub mac: MacAddress,
    /// Its name on the node, when it has one (a new MAC is named by the agent).
    pub name: Option<InterfaceName>,
    pub action: DiffAction,
    pub changes: Vec<FieldChange>,
    /// Held: why. Otherwise how the agent's last attempt at exactly this
    /// change ended when it did not succeed (failed, waiting, refused).
    pub reason: Option<String>,
    /// The rows behind the desired interface (none for a removal).
    pub row_ids: Vec<i64>,
}

/// What would change on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDiff {
    pub name: NodeName,
    pub connected: bool,
    /// When the agent last reported (or was adopted) in this controller run;
    /// `None`: what it has is unknown, and no interface is compared.
    pub applied_at: Option<SystemTime>,
    pub interfaces: Bounded<InterfaceDiff>,
    /// Desired interfaces the node already has exactly so.
    pub unchanged: usize,
    /// Interfaces the database wants on the node.
    pub desired: usize,
    pub rejected: Bounded<RowProblem>,
    pub problems: Vec<NodeProblem>,
    /// Why a rollout holds the node's changes (they are listed as held).
    pub rollout_hold: Option<String>,
}

impl NodeDiff {
    /// Whether something would change on the node, or might (its applied
    /// state is unknown). Rejected rows change nothing: their MACs are left
    /// as they are.
    pub fn pending(&self) -> bool {
        self.applied_at.is_none() || self.interfaces.total() > 0
    }

    /// Whether there is anything to show about the node.
    pub fn is_quiet(&self) -> bool {
        !self.pending() && self.rejected.total() == 0 && self.problems.is_empty()
    }
}

/// Compares the node's desired set (from the database) with what its agent
/// last reported applied, listing at most `limit` interfaces and rejected
/// rows (the rest are counted).
pub fn node_diff(node: &NodeSnapshot, limit: usize) -> NodeDiff {
    let desired = &node.desired;
    let mut rejected = Bounded::new();
    rejected.extend(&desired.problems, limit);
    let mut diff = NodeDiff {
        name: node.name.clone(),
        connected: node.session.is_some(),
        applied_at: node.applied.as_ref().map(|a| a.at),
        interfaces: Bounded::new(),
        unchanged: 0,
        desired: desired.set.len(),
        rejected,
        problems: node.problems.clone(),
        rollout_hold: node.rollout_hold.clone(),
    };
    if diff.applied_at.is_none() {
        return diff;
    }
    let macs: BTreeSet<&MacAddress> =
        desired.set.iter().map(|s| &s.mac).chain(node.interfaces.keys()).chain(node.guarded.iter()).collect();
    for mac in macs {
        if desired.set.is_held(mac) {
            continue; // its rows are rejected: listed with their reasons, the MAC left as it is
        }
        match interface_diff(node, mac) {
            Some(entry) => diff.interfaces.push(entry, limit),
            None => diff.unchanged += 1,
        }
    }
    diff
}

/// One MAC's entry; `None` when the node has it exactly as desired.
fn interface_diff(node: &NodeSnapshot, mac: &MacAddress) -> Option<InterfaceDiff> {
    let want = node.desired.set.get(mac);
    let record = node.interfaces.get(mac);
    let have = record.and_then(|r| r.applied);
    // How the agent's last attempt at exactly this content ended, if badly.
    let attempt = record
        .filter(|r| r.status.state != InterfaceState::Applied && r.spec.as_ref() == want)
        .map(|r| format!("{}: {}: {}", r.status.state.as_str(), r.status.code.as_str(), r.status.message));
    let row_ids = node.desired.rows.get(mac).map(|rows| rows.iter().map(|r| r.id).collect()).unwrap_or_default();
    let (action, changes, reason) = match (want, have) {
        (Some(want), Some(have)) if *want == have => return None,
        (Some(want), Some(have)) => (DiffAction::Change, fields(Some(&have), Some(want)), attempt),
        (Some(want), None) => (DiffAction::Add, fields(None, Some(want)), attempt),
        (None, have) if node.guarded.contains(mac) => {
            let why = node.guard_reason.as_deref().unwrap_or("it holds removals");
            let reason = format!("the mass-deletion guard holds its removal: {why}");
            (DiffAction::Held, fields(have.as_ref(), None), Some(reason))
        }
        (None, have) => (DiffAction::Remove, fields(have.as_ref(), None), attempt),
    };
    // A rollout holds every change of the node: it keeps its previous set.
    let (action, reason) = match &node.rollout_hold {
        Some(hold) if action != DiffAction::Held => (DiffAction::Held, Some(hold.clone())),
        _ => (action, reason),
    };
    let name = record.and_then(|r| r.status.name);
    Some(InterfaceDiff { mac: *mac, name, action, changes, reason, row_ids })
}

/// The fields that differ between `old` and `new` (every field either has).
fn fields(old: Option<&InterfaceSpec>, new: Option<&InterfaceSpec>) -> Vec<FieldChange> {
    let mtu = |s: Option<&InterfaceSpec>| s.map(|s| s.mtu.to_string());
    let address = |s: Option<&InterfaceSpec>| s.and_then(|s| s.address).map(|a| a.to_string());
    let mut changes = Vec::new();
    for (field, old, new) in [(Field::Mtu, mtu(old), mtu(new)), (Field::Address, address(old), address(new))] {
        if old != new {
            changes.push(FieldChange { field, old, new });
        }
    }
    changes
}

#[cfg(test)]
#[path = "diff_tests.rs"]
mod tests;
