//! Per-interface outcomes reported by agents.

use std::fmt;

use super::{InterfaceName, MacAddress};

/// Where one interface stands on its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InterfaceState {
    /// Rendered, applied and verified.
    Applied,
    /// The MAC is not on the node yet; applied when it appears.
    Waiting,
    /// Apply or verification failed; the previous state was restored.
    Failed,
    /// Never touched: protected NIC, foreign name, or over capacity.
    Refused,
    /// No longer desired; our file and runtime state are gone.
    Removed,
    /// Desired, no report yet.
    Pending,
    /// Left exactly as it is on purpose (held by the controller).
    Held,
}

impl InterfaceState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Waiting => "waiting",
            Self::Failed => "failed",
            Self::Refused => "refused",
            Self::Removed => "removed",
            Self::Pending => "pending",
            Self::Held => "held",
        }
    }

    /// Whether the row behind this interface should read `netplan_success = 1`
    /// (`Some(true)`), `0` (`Some(false)`), or is not decided yet (`None`).
    pub fn netplan_success(self) -> Option<bool> {
        match self {
            Self::Applied => Some(true),
            Self::Failed | Self::Refused | Self::Waiting => Some(false),
            Self::Removed | Self::Pending | Self::Held => None,
        }
    }
}

impl fmt::Display for InterfaceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Stable error codes (the wire enum `ErrorCode`); `as_str` is what logs,
/// tables and JSON show, and never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorCode {
    None,
    InvalidSpec,
    CapacityExceeded,
    ProtectedInterface,
    ForeignInterface,
    WriteFailed,
    ApplyFailed,
    VerifyFailed,
    MacNotPresent,
    MtuRejected,
    CorruptFile,
    InvalidRow,
    DuplicateMac,
    RemovalHeld,
    Internal,
    PushTooLarge,
    PushUnanswered,
    PushRejected,
    DuplicateAddress,
    DriftRepeated,
    Drifted,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "",
            Self::InvalidSpec => "INVALID_SPEC",
            Self::CapacityExceeded => "CAPACITY_EXCEEDED",
            Self::ProtectedInterface => "PROTECTED_INTERFACE",
            Self::ForeignInterface => "FOREIGN_INTERFACE",
            Self::WriteFailed => "WRITE_FAILED",
            Self::ApplyFailed => "APPLY_FAILED",
            Self::VerifyFailed => "VERIFY_FAILED",
            Self::MacNotPresent => "MAC_NOT_PRESENT",
            Self::MtuRejected => "MTU_REJECTED",
            Self::CorruptFile => "CORRUPT_FILE",
            Self::InvalidRow => "INVALID_ROW",
            Self::DuplicateMac => "DUPLICATE_MAC",
            Self::RemovalHeld => "REMOVAL_HELD",
            Self::Internal => "INTERNAL",
            Self::PushTooLarge => "PUSH_TOO_LARGE",
            Self::PushUnanswered => "PUSH_UNANSWERED",
            Self::PushRejected => "PUSH_REJECTED",
            Self::DuplicateAddress => "DUPLICATE_ADDRESS",
            Self::DriftRepeated => "DRIFT_REPEATED",
            Self::Drifted => "DRIFTED",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One interface's reported state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceStatus {
    pub mac: MacAddress,
    pub name: Option<InterfaceName>,
    pub state: InterfaceState,
    pub code: ErrorCode,
    pub message: String,
}

impl InterfaceStatus {
    /// An applied interface.
    pub fn applied(mac: MacAddress, name: InterfaceName) -> Self {
        Self { mac, name: Some(name), state: InterfaceState::Applied, code: ErrorCode::None, message: String::new() }
    }

    /// An interface in a non-applied state, with its reason.
    pub fn problem(
        mac: MacAddress,
        name: Option<InterfaceName>,
        state: InterfaceState,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> Self {
        Self { mac, name, state, code, message: message.into() }
    }
}

/// How a whole push went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Partial,
    Rejected,
}

impl Outcome {
    /// `Applied` when every desired interface is applied (and the rest
    /// removed or held as asked), else `Partial`.
    pub fn of<'a>(statuses: impl IntoIterator<Item = &'a InterfaceStatus>) -> Self {
        let all_applied = statuses
            .into_iter()
            .all(|s| matches!(s.state, InterfaceState::Applied | InterfaceState::Removed | InterfaceState::Held));
        if all_applied { Self::Applied } else { Self::Partial }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Partial => "partial",
            Self::Rejected => "rejected",
        }
    }
}
