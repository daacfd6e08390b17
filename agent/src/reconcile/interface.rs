//! One interface's change: journal, write, apply, verify, or roll back.
//!
//! Every change starts with a journal entry holding the interface's previous
//! files and runtime state; the entry is removed only when the change is
//! verified or undone. A rollback restores exactly that entry and nothing of
//! any other interface. A failure comes back as an [`ApplyError`] made where
//! it happened, after its rollback ran. The NIC is the one the planner found
//! for the MAC (followed by ifindex); it is never searched for again.

use std::path::PathBuf;

use multinic_proto::{ErrorCode, InterfaceName, InterfaceSpec, InterfaceState, InterfaceStatus, MacAddress};
use tracing::{error, info, info_span, warn};

use super::error::{ApplyError, Rollback, RollbackError, RollbackProblem};
use super::{ApplyMode, Reconciler, Run};
use crate::backend::{ChangeKind, HostChange, HostSession, NotAdmitted, RenderedFile};
use crate::files::{Links, OUR_FILE_LIMIT, read_text};
use crate::journal::{Entry, SavedFile};
use crate::kernel::diff::{LinkTarget, mtu_allowed, rename_steps, verify};
use crate::kernel::{LinkState, StepError, converge, run_step};

/// An interface changed and not verified yet.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) name: InterfaceName,
    pub(super) spec: InterfaceSpec,
    pub(super) entry: Entry,
    /// The ifindex of its NIC.
    pub(super) index: u32,
    /// What host mode is told about it.
    pub(super) change: HostChange,
}

impl Reconciler {
    /// Starts the change of one desired interface whose NIC (if present) is
    /// `link`. Returns its status when it is already decided (applied as it
    /// is, waiting); otherwise the interface joins `run.pending` for the
    /// host apply and verification. `retired` are files of ours the
    /// rendering no longer has (the predecessor's), removed only once the
    /// interface is verified. A failure is rolled back before it is
    /// returned.
    pub(super) fn prepare(
        &self,
        run: &mut Run,
        name: InterfaceName,
        spec: &InterfaceSpec,
        write: Option<&[RenderedFile]>,
        link: Option<&LinkState>,
        retired: Vec<PathBuf>,
    ) -> Result<Option<InterfaceStatus>, ApplyError> {
        let link = link.filter(|_| self.apply != ApplyMode::None && self.kernel.is_some());
        let target = LinkTarget::desired(name, spec);
        if let Some(link) = link {
            if let Err(why) = mtu_allowed(link, target.mtu) {
                warn!(reason = %why, "MTU out of the device's range; nothing changed");
                return Err(ApplyError::Mtu(why));
            }
            // Files to retire (the predecessor's) go only once ours are verified.
            if write.is_none() && retired.is_empty() && verify(link, &target).is_ok() {
                // Verified as desired: an entry an incomplete rollback kept
                // for this interface has nothing left to restore.
                self.forget_obsolete(name);
                return Ok(Some(InterfaceStatus::applied(spec.mac, name)));
            }
        } else if write.is_none() {
            return Ok(Some(self.unapplied_status(name, spec)));
        }
        let change = HostChange {
            name,
            mac: spec.mac,
            link: link.map_or_else(|| name.to_string(), |l| l.name.clone()),
            kind: ChangeKind::Configure,
            retired,
        };
        if let (Some(host), Some(_)) = (run.host.as_mut(), link) {
            match host.admit(&change) {
                Ok(()) => {}
                Err(NotAdmitted::Refused(why)) => {
                    warn!(reason = %why, "the node's network daemon is told to leave this NIC alone; nothing changed");
                    return Err(ApplyError::HostRefused(why));
                }
                Err(NotAdmitted::Failed(why)) => {
                    warn!(reason = %why, "cannot ask the node's network daemon; nothing changed");
                    return Err(ApplyError::HostUnavailable(why));
                }
            }
        }

        let files =
            self.saved_files(name).map_err(|source| ApplyError::ReadPrevious { what: "previous files", source })?;
        let entry = Entry::new(name, spec.mac, files, link);
        self.journal.record(&entry).map_err(ApplyError::Journal)?;
        run.changing();
        if let Some(files) = write
            && let Err(source) = files.iter().try_for_each(|f| self.files.write_atomic(&f.path, &f.contents))
        {
            warn!(error = %source, "cannot write interface files; rolling back");
            let rollback = self.rollback_in(run, &entry, "previous files restored");
            return Err(ApplyError::Files { source, rollback });
        }
        let Some(link) = link else {
            self.commit(&entry);
            return Ok(Some(self.unapplied_status(name, spec)));
        };
        if let Err(source) = self.runtime_before_host(link, &target) {
            warn!(error = %source, "cannot apply; rolling back");
            let rollback = self.rollback_in(run, &entry, "rolled back to the previous state");
            return Err(ApplyError::Runtime { source, rollback });
        }
        run.pending.push(Pending { name, spec: *spec, entry, index: link.index, change });
        Ok(None)
    }

    /// The status of an interface whose files are in place but that is not
    /// applied at runtime: waiting for its MAC, or applied in a dry run.
    fn unapplied_status(&self, name: InterfaceName, spec: &InterfaceSpec) -> InterfaceStatus {
        if self.apply == ApplyMode::None {
            return InterfaceStatus::applied(spec.mac, name);
        }
        info!("MAC not on this node yet; files in place, applied when it appears");
        InterfaceStatus::problem(
            spec.mac,
            Some(name),
            InterfaceState::Waiting,
            ErrorCode::MacNotPresent,
            format!("MAC {} is not on this node yet; {name} is applied when it appears", spec.mac),
        )
    }

    /// Netlink mode: the whole runtime state. Host mode: only the rename,
    /// which no host daemon does on a live link; the daemon does the rest.
    fn runtime_before_host(&self, link: &LinkState, target: &LinkTarget) -> Result<(), StepError> {
        let Some(kernel) = &self.kernel else { return Ok(()) };
        match self.apply {
            ApplyMode::Netlink => converge(kernel.as_ref(), link.index, target),
            ApplyMode::Host => rename_steps(link, &target.name).into_iter().try_for_each(|step| {
                run_step(kernel.as_ref(), link.index, &step).map_err(|error| StepError { step, error })
            }),
            ApplyMode::None => Ok(()),
        }
    }

    /// Removes the files of a MAC no longer desired, has the node's daemon
    /// let go of it (host mode), and undoes its runtime state on `link` (its
    /// NIC, when that still carries our name and is not protected):
    /// addresses removed and link down. The `multinicN` name stays until the
    /// NIC is unplugged or the node reboots (so the index is not handed to
    /// another MAC while this NIC still carries it).
    pub(super) fn remove(
        &self,
        run: &mut Run,
        name: InterfaceName,
        mac: MacAddress,
        link: Option<&LinkState>,
    ) -> Result<InterfaceStatus, ApplyError> {
        let link = link.filter(|_| self.apply != ApplyMode::None && self.kernel.is_some());
        let files = self.saved_files(name).map_err(|source| ApplyError::ReadPrevious { what: "files", source })?;
        let entry = Entry::new(name, mac, files, link);
        self.journal.record(&entry).map_err(ApplyError::Journal)?;
        run.changing();
        if let Err(source) = self.backend.paths(name).iter().try_for_each(|p| self.files.remove(p)) {
            warn!(error = %source, "cannot remove interface files; rolling back");
            let rollback = self.rollback_in(run, &entry, "files restored");
            return Err(ApplyError::Files { source, rollback });
        }
        let change = HostChange {
            name,
            mac,
            link: link.map_or_else(|| name.to_string(), |l| l.name.clone()),
            kind: ChangeKind::Remove,
            retired: Vec::new(),
        };
        let mut host = run.host.take();
        if let Some(session) = host.as_mut() {
            let verdict = session.apply(std::slice::from_ref(&change)).pop().unwrap_or(Ok(()));
            if let Err(source) = verdict {
                warn!(error = %source, "the node's daemon did not let go of the interface; rolling back");
                let rollback = self.undo(run, Some(session.as_mut()), &change, &entry, "files restored");
                session.reread(std::slice::from_ref(&change));
                run.host = host;
                return Err(ApplyError::HostApply { source, rollback });
            }
            session.commit(&change);
        }
        run.host = host;
        if let (Some(link), Some(kernel)) = (link, &self.kernel) {
            // Read again: the daemon letting go may have changed the link.
            let undone = kernel
                .read()
                .ok()
                .and_then(|state| state.link(link.index).map(|l| l.mtu))
                .map(|mtu| LinkTarget { name: link.name.clone(), mtu, up: false, addresses: Default::default() });
            if let Some(Err(source)) = undone.map(|target| converge(kernel.as_ref(), link.index, &target)) {
                warn!(error = %source, "cannot undo the runtime state; rolling back");
                let rollback = self.rollback_in(run, &entry, "files and runtime state restored");
                return Err(ApplyError::Runtime { source, rollback });
            }
        }
        self.commit(&entry);
        info!(runtime_undone = link.is_some(), "removed: MAC no longer desired");
        Ok(InterfaceStatus::problem(mac, Some(name), InterfaceState::Removed, ErrorCode::None, ""))
    }

    /// The current files of `name`, as a journal records them.
    fn saved_files(&self, name: InterfaceName) -> Result<Vec<SavedFile>, crate::files::ReadError> {
        let paths = self.backend.paths(name);
        let found = self.files.read_existing(&paths)?;
        Ok(paths.into_iter().map(|path| SavedFile { contents: found.get(&path).cloned(), path }).collect())
    }

    pub(super) fn commit(&self, entry: &Entry) {
        if let Err(e) = self.journal.clear(&entry.interface) {
            warn!(error = %e, "cannot clear the journal entry; the next start will roll this change back");
        }
    }

    /// Rolls back every journal entry left by an agent that died mid-change.
    /// Runs at start-up, before the agent connects. Returns how many
    /// interfaces were rolled back.
    pub fn recover(&self) -> usize {
        let pending = match self.journal.pending() {
            Ok(pending) => pending,
            Err(e) => {
                warn!(error = %e, "cannot read the journal; nothing rolled back");
                return 0;
            }
        };
        let mut rolled_back = 0;
        let mut host = Run::new(self).host;
        for (interface, entry) in pending {
            match entry {
                Ok(entry) => {
                    let _span = info_span!("interface", interface = %interface, mac = %entry.mac).entered();
                    // Host mode: the daemon goes back first (a checkpoint the
                    // crash left), and reads the restored files after.
                    let change = interrupted_change(&entry);
                    if let (Some(session), Some(change)) = (host.as_mut(), &change) {
                        session.undo(change);
                    }
                    match self.rollback(&entry) {
                        Ok(_) => {
                            rolled_back += 1;
                            info!(same_boot = entry.same_boot(), "rolled back a change interrupted by a crash");
                        }
                        Err(e) => warn!(error = %e, "cannot roll back an interrupted change; kept for the next start"),
                    }
                    if let (Some(session), Some(change)) = (host.as_mut(), change) {
                        session.reread(&[change]);
                    }
                }
                Err(reason) => {
                    warn!(interface = %interface, reason = %reason, "unreadable journal entry set aside");
                    if let Err(e) = self.journal.set_aside(&interface) {
                        warn!(interface = %interface, error = %e, "cannot set the journal entry aside");
                    }
                }
            }
        }
        rolled_back
    }

    /// Undoes one change: the daemon first (host mode: it goes back to what
    /// it had, as far as it can by itself), then the files and runtime state
    /// from the journal. The caller has the daemon [`HostSession::reread`]
    /// the restored files.
    pub(super) fn undo(
        &self,
        run: &mut Run,
        session: Option<&mut dyn HostSession>,
        change: &HostChange,
        entry: &Entry,
        restored: &'static str,
    ) -> Rollback {
        if let Some(session) = session {
            session.undo(change);
        }
        self.rollback_in(run, entry, restored)
    }

    /// Rolls `entry` back and says what happened, for the report: `restored`
    /// when something was put back, that nothing had changed, or that the
    /// rollback is incomplete (the entry then stays in the journal).
    pub(super) fn rollback_in(&self, run: &mut Run, entry: &Entry, restored: &'static str) -> Rollback {
        run.rollbacks += 1;
        match self.rollback(entry) {
            Ok(true) => Rollback::Restored(restored),
            Ok(false) => Rollback::NothingChanged,
            Err(e) => {
                error!(error = %e, "rollback incomplete; the journal entry is kept for the next start");
                Rollback::Incomplete(e)
            }
        }
    }

    /// Restores the files and (same boot, same NIC) the runtime state of
    /// `entry`, then forgets it. Returns whether anything had to be put back
    /// (a file already as journaled is left alone, so a change that failed
    /// before its first write restores nothing, even on a read-only folder,
    /// and the predecessor's file, never written by a failed change, keeps
    /// its mode).
    pub(super) fn rollback(&self, entry: &Entry) -> Result<bool, RollbackError> {
        let mut problems: Vec<RollbackProblem> = Vec::new();
        let mut changed = false;
        for file in &entry.files {
            match read_text(&self.files.abs(&file.path), OUR_FILE_LIMIT, Links::Refuse) {
                Ok(now) if now == file.contents => continue,
                // Something we never write took the path meanwhile: it is not ours to replace.
                Err(e) if e.is_damaged() => {
                    problems.push(RollbackProblem::Occupied(e));
                    continue;
                }
                _ => {}
            }
            changed = true;
            let restored = match &file.contents {
                Some(contents) => self.files.write_atomic(&file.path, contents),
                None => self.files.remove(&file.path),
            };
            if let Err(e) = restored {
                problems.push(e.into());
            }
        }
        let changes_before = self.netlink_changes();
        if let (Some(saved), Some(kernel), true) = (&entry.link, &self.kernel, self.apply != ApplyMode::None) {
            if entry.same_boot() {
                match kernel.read() {
                    Ok(state) => match state.link(saved.index) {
                        Some(link) if link.identity().map(|m| m.to_string()).as_deref() == Some(entry.mac.as_str()) => {
                            if let Err(e) = converge(kernel.as_ref(), saved.index, &saved.target()) {
                                problems.push(e.into());
                            }
                        }
                        _ => info!(index = saved.index, "the NIC is gone; no runtime state to restore"),
                    },
                    Err(e) => problems.push(e.into()),
                }
            } else {
                info!("journaled during an earlier boot; only files restored");
            }
        }
        changed |= self.netlink_changes() > changes_before;
        if !problems.is_empty() {
            return Err(RollbackError(problems));
        }
        self.journal.clear(&entry.interface).map_err(|e| RollbackError(vec![e.into()]))?;
        Ok(changed)
    }

    /// Drops the journal entry of `name`, verified as desired, if one was
    /// kept by an incomplete rollback.
    fn forget_obsolete(&self, name: InterfaceName) {
        if let Err(e) = self.journal.clear(&name.to_string()) {
            warn!(error = %e, "cannot remove an obsolete journal entry");
        }
    }
}

/// What host mode is told about a change a crash interrupted.
fn interrupted_change(entry: &Entry) -> Option<HostChange> {
    let name = InterfaceName::parse(&entry.interface, multinic_proto::MAX_CAPACITY)?;
    Some(HostChange {
        name,
        mac: entry.mac.parse().ok()?,
        link: entry.link.as_ref().map_or_else(|| entry.interface.clone(), |l| l.name.clone()),
        kind: ChangeKind::Configure,
        retired: Vec::new(),
    })
}
