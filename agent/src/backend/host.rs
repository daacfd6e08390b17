//! Host mode: what the agent asks of the node's own network daemon, through
//! the host's own tools run in the host's namespaces
//! ([`crate::hostns::HostNamespaces`]).
//!
//! The reconciler drives it and knows nothing of any daemon: per reconcile
//! it opens a [`HostSession`], asks it whether an interface may be changed
//! ([`HostSession::admit`], before anything changes), has it apply the
//! interfaces whose files were written, and then, per interface, either
//! [`HostSession::commit`] (verified) or [`HostSession::undo`] followed by
//! [`HostSession::reread`] once the previous files are back. A session must
//! never act on an interface it was not given, nor run anything that
//! reloads or restarts the host's networking as a whole.

use std::error::Error;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use multinic_proto::{InterfaceName, MacAddress};

use crate::hostns::{HostError, HostNamespaces};

/// One interface host mode acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostChange {
    pub name: InterfaceName,
    pub mac: MacAddress,
    /// The kernel's name of the NIC when the change started: `name`, or
    /// the name it had before its first apply renamed it.
    pub link: String,
    pub kind: ChangeKind,
    /// Files of ours this change retires once it is verified (paths
    /// relative to the host root, already removed when the session hears
    /// of them in [`HostSession::commit`]).
    pub retired: Vec<PathBuf>,
}

/// What happens to the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Its files were written (created or changed): configure it from them.
    Configure,
    /// Its files were removed: the daemon lets go of it.
    Remove,
}

/// Why the node's daemon did not do what host mode asked of it.
#[derive(Debug, thiserror::Error)]
pub enum HostApplyError {
    /// A host tool could not run, timed out or failed (`wicked ifreload`).
    #[error(transparent)]
    Command(#[from] HostError),
    /// What the daemon answered (or that it could not be asked), in the
    /// backend's own error type, with its context.
    #[error(transparent)]
    Daemon(Box<dyn Error + Send + Sync + 'static>),
}

/// One verdict of [`HostSession::apply`]; a failure may be shared by
/// several changes (one command for all of them).
pub type HostVerdict = Result<(), Arc<HostApplyError>>;

/// Why a session does not let an interface be changed.
#[derive(Debug, thiserror::Error)]
pub enum NotAdmitted {
    /// The daemon is told to leave this NIC alone: reported refused.
    #[error(transparent)]
    Refused(HostApplyError),
    /// The daemon could not be asked: reported failed, nothing changed.
    #[error(transparent)]
    Failed(HostApplyError),
}

/// The host side of a backend: opens one session per reconcile.
pub trait HostApply: fmt::Debug + Send + Sync {
    /// A session that runs its commands in the namespaces of `host`.
    fn session(&self, host: HostNamespaces) -> Box<dyn HostSession>;
}

/// What host mode does for one reconcile. A session may remember what it
/// learns about an interface between calls (e.g. a checkpoint to roll back).
pub trait HostSession: fmt::Debug + Send {
    /// Called before anything of the interface changes (no file written, no
    /// rename): whether the daemon lets us configure this NIC. On `Err`
    /// nothing is touched.
    fn admit(&mut self, change: &HostChange) -> Result<(), NotAdmitted> {
        let _ = change;
        Ok(())
    }

    /// Applies interfaces whose files are in place (renamed already): one
    /// verdict per change, in order. For each change given here the
    /// reconciler later calls exactly one of [`Self::commit`] or
    /// [`Self::undo`].
    fn apply(&mut self, changes: &[HostChange]) -> Vec<HostVerdict>;

    /// The change is verified (or, for a removal, done): whatever was kept
    /// to undo it may go.
    fn commit(&mut self, change: &HostChange) {
        let _ = change;
    }

    /// The change failed, before its previous files are restored: the
    /// daemon goes back to what it had, as far as it can by itself.
    fn undo(&mut self, change: &HostChange) {
        let _ = change;
    }

    /// The previous files of `changes` are back (a rollback, or recovery
    /// after a crash): the daemon reads them again.
    fn reread(&mut self, changes: &[HostChange]);
}

/// A command run on the host: a program of the host's and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCommand {
    pub program: &'static str,
    pub args: Vec<String>,
}

impl HostCommand {
    pub fn new(program: &'static str, args: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self { program, args: args.into_iter().map(Into::into).collect() }
    }

    /// Runs it in the namespaces of `host`; its output.
    pub fn run(&self, host: &HostNamespaces) -> Result<String, HostError> {
        host.run(self.program, &self.args)
    }
}

impl fmt::Display for HostCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.program)?;
        self.args.iter().try_for_each(|a| write!(f, " {a}"))
    }
}
