//! Why one interface was not applied, as values: what failed, where, and
//! what its rollback did; each error knows its state and wire code.
//!
//! Every failure of the reconciler becomes one [`ApplyError`] at the call
//! site that saw it (with that site's context), and only
//! [`ApplyError::status`] turns it into what the controller is told: the
//! [`InterfaceState`], the stable [`ErrorCode`] ([`ApplyError::code`]) and
//! the sentence. So a code is decided once per kind of failure, never by
//! the code that happened to notice it. Nothing here does I/O or decides
//! what to do next.

use std::fmt;
use std::sync::Arc;

use multinic_proto::{ErrorCode, InterfaceName, InterfaceState, InterfaceStatus, MacAddress};

use super::ApplyMode;
use crate::backend::HostApplyError;
use crate::files::{FileError, ReadError};
use crate::journal::JournalError;
use crate::kernel::diff::{Mismatches, MtuOutOfRange};
use crate::kernel::{KernelError, Step, StepError};

/// Why an interface (or, for the first two, every interface of a
/// reconcile) was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Before planning: the kernel's links could not be read.
    #[error("cannot read the kernel's links: {0}")]
    ReadKernel(#[source] KernelError),
    /// Before planning: the mode needs netlink and there is none.
    #[error("--apply {} needs netlink, which could not be opened", .0.as_str())]
    NoNetlink(ApplyMode),
    /// Before planning: our own files could not be read, so no name is safe.
    #[error(transparent)]
    ReadOurFiles(ReadError),
    /// The node's daemon is told to leave this NIC alone (host mode):
    /// nothing of it is ours to touch.
    #[error("{0}; it is left alone")]
    HostRefused(#[source] HostApplyError),
    /// The node's daemon could not be asked about this NIC before the
    /// change (host mode); nothing changed.
    #[error("{0}; nothing changed")]
    HostUnavailable(#[source] HostApplyError),
    /// The device does not take the MTU; nothing changed.
    #[error("{0}; nothing changed")]
    Mtu(#[source] MtuOutOfRange),
    /// The files to journal could not be read; nothing changed.
    #[error("cannot read the {what}: {source}; nothing changed")]
    ReadPrevious {
        /// "previous files" (a change) or "files" (a removal).
        what: &'static str,
        #[source]
        source: ReadError,
    },
    /// The journal entry could not be written; nothing changed.
    #[error("cannot journal the previous state: {0}; nothing changed")]
    Journal(#[source] JournalError),
    /// Writing or removing our files failed.
    #[error("{source}; {rollback}")]
    Files {
        #[source]
        source: FileError,
        rollback: Rollback,
    },
    /// A netlink step failed (the MTU one: the kernel refused the MTU).
    #[error("{source}; {rollback}")]
    Runtime {
        #[source]
        source: StepError,
        rollback: Rollback,
    },
    /// The node's daemon did not apply the change or let go of a removed
    /// interface (host mode); one failure of a tool run for several
    /// interfaces is each one's.
    #[error("{source}; {rollback}")]
    HostApply {
        #[source]
        source: Arc<HostApplyError>,
        rollback: Rollback,
    },
    /// After the apply, the kernel did not show what was asked for.
    #[error("after apply: {source}; {rollback}")]
    Verify {
        #[source]
        source: VerifyError,
        rollback: Rollback,
    },
}

impl ApplyError {
    /// The stable code the controller records for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::ReadKernel(_) | Self::NoNetlink(_) | Self::HostUnavailable(_) | Self::HostApply { .. } => {
                ErrorCode::ApplyFailed
            }
            Self::Runtime { source, .. } if matches!(source.step, Step::Mtu(_)) => ErrorCode::MtuRejected,
            Self::Runtime { .. } => ErrorCode::ApplyFailed,
            Self::ReadOurFiles(_) | Self::ReadPrevious { .. } | Self::Journal(_) | Self::Files { .. } => {
                ErrorCode::WriteFailed
            }
            Self::HostRefused(_) => ErrorCode::ForeignInterface,
            Self::Mtu(_) => ErrorCode::MtuRejected,
            Self::Verify { .. } => ErrorCode::VerifyFailed,
        }
    }

    /// Refused (nothing of it is ours to touch) or failed (tried, and
    /// rolled back or never started).
    pub fn state(&self) -> InterfaceState {
        match self {
            Self::HostRefused(_) => InterfaceState::Refused,
            _ => InterfaceState::Failed,
        }
    }

    /// What the controller is told about `mac` (named `name`, if it has one).
    pub fn status(&self, mac: MacAddress, name: Option<InterfaceName>) -> InterfaceStatus {
        InterfaceStatus::problem(mac, name, self.state(), self.code(), self.to_string())
    }
}

/// Why verification of an applied interface failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Differs(#[from] Mismatches),
    /// The NIC the change was made on is no longer there (or no longer
    /// has the MAC): found by MAC once, by the planner, and followed by
    /// ifindex since.
    #[error("the NIC with MAC {mac} (ifindex {index}) is gone")]
    Gone { mac: MacAddress, index: u32 },
    #[error("cannot read the kernel: {0}")]
    ReadKernel(#[source] KernelError),
    #[error("no netlink access to verify")]
    NoNetlink,
}

/// What the rollback of a failed change did, as the report says it.
#[derive(Debug)]
pub enum Rollback {
    /// Something was put back: what, in the words of the step that failed
    /// ("previous files restored", "rolled back to the previous state").
    Restored(&'static str),
    /// The change failed before it changed anything.
    NothingChanged,
    /// Not everything could be put back; the journal entry is kept.
    Incomplete(RollbackError),
}

impl fmt::Display for Rollback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Restored(what) => f.write_str(what),
            Self::NothingChanged => f.write_str("nothing had changed"),
            Self::Incomplete(e) => write!(
                f,
                "rollback incomplete ({e}); the journal keeps the previous state, restored at the next start or \
                 replaced by the next verified change"
            ),
        }
    }
}

/// What a rollback could not put back: every problem, each on its own
/// (one failing file does not stop the others from being restored).
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct RollbackError(pub Vec<RollbackProblem>);

/// One thing a rollback could not do.
#[derive(Debug, thiserror::Error)]
pub enum RollbackProblem {
    /// Something multinic never writes took one of our paths: not ours to replace.
    #[error(transparent)]
    Occupied(ReadError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    ReadKernel(#[from] KernelError),
    #[error(transparent)]
    Runtime(#[from] StepError),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostns::HostError;
    use crate::kernel::diff::Mismatch;

    fn host_error() -> HostApplyError {
        HostError::Timeout { command: "wicked ifreload multinic0".into(), timeout: std::time::Duration::from_secs(1) }
            .into()
    }

    fn step_error(step: Step) -> StepError {
        StepError {
            step,
            error: KernelError::Request { operation: "op".into(), errno: Some(22), message: "no".into() },
        }
    }

    #[test]
    fn each_failure_carries_its_own_code_and_state() {
        let mac: MacAddress = "02:00:00:00:00:01".parse().unwrap();
        let restored = || Rollback::Restored("rolled back to the previous state");
        let cases = [
            (ApplyError::Runtime { source: step_error(Step::Mtu(9000)), rollback: restored() }, ErrorCode::MtuRejected),
            (ApplyError::Runtime { source: step_error(Step::Up), rollback: restored() }, ErrorCode::ApplyFailed),
            (ApplyError::NoNetlink(ApplyMode::Netlink), ErrorCode::ApplyFailed),
            (
                ApplyError::Verify { source: VerifyError::NoNetlink, rollback: Rollback::NothingChanged },
                ErrorCode::VerifyFailed,
            ),
            (ApplyError::HostRefused(host_error()), ErrorCode::ForeignInterface),
            (ApplyError::HostUnavailable(host_error()), ErrorCode::ApplyFailed),
            (
                ApplyError::HostApply { source: Arc::new(host_error()), rollback: Rollback::NothingChanged },
                ErrorCode::ApplyFailed,
            ),
        ];
        for (error, code) in cases {
            let status = error.status(mac, None);
            assert_eq!((status.code, status.message.as_str()), (code, error.to_string().as_str()));
            let refused = matches!(error, ApplyError::HostRefused(_));
            assert_eq!(status.state == InterfaceState::Refused, refused, "{error}");
        }
    }

    #[test]
    fn the_sentence_says_what_failed_and_what_the_rollback_did() {
        let mismatch = Mismatches(vec![Mismatch::Mtu { have: 1500, want: 9000 }]);
        let error = ApplyError::Verify { source: mismatch.into(), rollback: Rollback::NothingChanged };
        assert_eq!(error.to_string(), "after apply: MTU 1500, want 9000; nothing had changed");
        let incomplete = Rollback::Incomplete(RollbackError(vec![
            KernelError::LinkGone { index: 4 }.into(),
            KernelError::Open { reason: "denied".into() }.into(),
        ]));
        let error = ApplyError::Runtime { source: step_error(Step::Up), rollback: incomplete };
        assert!(
            error.to_string().starts_with(
                "set link up: op: no; rollback incomplete (link with ifindex 4 is gone; cannot open a netlink socket: \
                 denied); the journal keeps"
            ),
            "{error}"
        );
    }
}
