//! What a drift check found on a node: an interface of ours no longer as it
//! was applied (the kernel or our files changed behind the agent's back),
//! and what the agent did about it.
//!
//! Values only; the agent decides, the controller shows. The wire form is
//! in `convert.rs`, where a finding is bounded like every peer's text.

use std::fmt;

use super::{InterfaceName, MacAddress};

/// One way an interface drifted. `as_str` is the metric label and what
/// logs, tables and JSON show; it never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DriftKind {
    Mtu,
    /// An address of ours is no longer on the NIC.
    AddressMissing,
    /// An address that is not ours was added to our NIC.
    AddressExtra,
    /// Our NIC was set down.
    LinkDown,
    /// Our NIC lost its `multinicN` name.
    NameLost,
    /// A file of ours was deleted.
    FileDeleted,
    /// A file of ours was changed (or no longer parses).
    FileEdited,
    /// A file of ours for a MAC no longer desired, or a second one for a MAC.
    FileUnwanted,
}

impl DriftKind {
    /// Every kind, in wire order.
    pub const ALL: [Self; 8] = [
        Self::Mtu,
        Self::AddressMissing,
        Self::AddressExtra,
        Self::LinkDown,
        Self::NameLost,
        Self::FileDeleted,
        Self::FileEdited,
        Self::FileUnwanted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mtu => "mtu",
            Self::AddressMissing => "address_missing",
            Self::AddressExtra => "address_extra",
            Self::LinkDown => "link_down",
            Self::NameLost => "name_lost",
            Self::FileDeleted => "file_deleted",
            Self::FileEdited => "file_edited",
            Self::FileUnwanted => "file_unwanted",
        }
    }

    /// Whether the finding is about our files (else about the kernel).
    pub fn is_file(self) -> bool {
        matches!(self, Self::FileDeleted | Self::FileEdited | Self::FileUnwanted)
    }
}

impl fmt::Display for DriftKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the agent did about a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DriftAction {
    /// Set back through the journal like any apply, and verified.
    Repaired,
    /// The repair failed and was rolled back; the interface is reported failed.
    RepairFailed,
    /// Detected only (`--drift-repair=false`).
    NotRepaired,
    /// It kept coming back after repairs: no longer repaired for a while.
    GivenUp,
}

impl DriftAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Repaired => "repaired",
            Self::RepairFailed => "repair_failed",
            Self::NotRepaired => "not_repaired",
            Self::GivenUp => "given_up",
        }
    }
}

impl fmt::Display for DriftAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One drift of one interface, said as what was found and what was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriftFinding {
    pub mac: MacAddress,
    pub name: InterfaceName,
    pub kind: DriftKind,
    /// What the check found, e.g. `MTU 1300`.
    pub found: String,
    /// What was applied, e.g. `MTU 1500`.
    pub wanted: String,
    pub action: DriftAction,
}

impl fmt::Display for DriftFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {} → {} ({})", self.name, self.kind, self.found, self.wanted, self.action)
    }
}
