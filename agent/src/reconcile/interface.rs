//! One interface's change: journal, write, apply, verify, or roll back.
//!
//! Every change starts with a journal entry holding the interface's previous
//! files and runtime state; the entry is removed only when the change is
//! verified or undone. A rollback restores exactly that entry and nothing of
//! any other interface. A failure comes back as an [`ApplyError`] made where
//! it happened, after its rollback ran.

use multinic_proto::{ErrorCode, InterfaceName, InterfaceSpec, InterfaceState, InterfaceStatus, MacAddress};
use tracing::{error, info, info_span, warn};

use super::error::{ApplyError, Rollback, RollbackError, RollbackProblem};
use super::{ApplyMode, Reconciler, Run};
use crate::backend::RenderedFile;
use crate::files::{Links, OUR_FILE_LIMIT, read_text};
use crate::journal::{Entry, SavedFile};
use crate::kernel::diff::{LinkTarget, mtu_allowed, rename_steps, verify};
use crate::kernel::facts::{LinkMatch, find_link};
use crate::kernel::{KernelState, LinkState, StepError, converge, run_step};
use crate::plan::NodeFacts;

/// An interface changed and not verified yet.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) name: InterfaceName,
    pub(super) spec: InterfaceSpec,
    pub(super) entry: Entry,
}

impl Reconciler {
    /// Starts the change of one desired interface. Returns its status when it
    /// is already decided (applied as it is, waiting); otherwise the
    /// interface joins `run.pending` for the host apply and verification.
    /// A failure is rolled back before it is returned.
    pub(super) fn prepare(
        &self,
        run: &mut Run,
        name: InterfaceName,
        spec: &InterfaceSpec,
        write: Option<&[RenderedFile]>,
        kernel: Option<&KernelState>,
    ) -> Result<Option<InterfaceStatus>, ApplyError> {
        let link = match (self.apply, kernel) {
            (ApplyMode::None, _) | (_, None) => None,
            (_, Some(kernel)) => match find_link(kernel, spec.mac) {
                LinkMatch::One(link) => Some(link),
                LinkMatch::Absent => None,
                LinkMatch::Ambiguous(names) => {
                    let names = names.into_iter().map(str::to_owned).collect();
                    return Err(ApplyError::AmbiguousMac { mac: spec.mac, names });
                }
            },
        };
        let target = LinkTarget::desired(name, spec);
        if let Some(link) = link {
            if let Err(why) = mtu_allowed(link, target.mtu) {
                warn!(reason = %why, "MTU out of the device's range; nothing changed");
                return Err(ApplyError::Mtu(why));
            }
            if write.is_none() && verify(link, &target).is_ok() {
                // Verified as desired: an entry an incomplete rollback kept
                // for this interface has nothing left to restore.
                self.forget_obsolete(name);
                return Ok(Some(InterfaceStatus::applied(spec.mac, name)));
            }
        } else if write.is_none() {
            return Ok(Some(self.unapplied_status(name, spec)));
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
        run.pending.push(Pending { name, spec: *spec, entry });
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
    /// which netplan and wicked cannot do on a live link; they do the rest.
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

    /// Removes the files of a MAC no longer desired and undoes its runtime
    /// state: addresses removed and link down. The `multinicN` name stays
    /// until the NIC is unplugged or the node reboots (so the index is not
    /// handed to another MAC while this NIC still carries it).
    pub(super) fn remove(
        &self,
        run: &mut Run,
        name: InterfaceName,
        mac: MacAddress,
        kernel: Option<&KernelState>,
        facts: &NodeFacts,
    ) -> Result<InterfaceStatus, ApplyError> {
        let link = match (self.apply, kernel) {
            (ApplyMode::None, _) | (_, None) => None,
            (_, Some(kernel)) => match find_link(kernel, mac) {
                // Only a link that is ours by name, and never a protected one.
                LinkMatch::One(link) if link.name == name.to_string() && !facts.protected.contains_key(&mac) => {
                    Some(link)
                }
                _ => None,
            },
        };
        let files = self.saved_files(name).map_err(|source| ApplyError::ReadPrevious { what: "files", source })?;
        let entry = Entry::new(name, mac, files, link);
        self.journal.record(&entry).map_err(ApplyError::Journal)?;
        run.changing();
        if let Err(source) = self.backend.paths(name).iter().try_for_each(|p| self.files.remove(p)) {
            warn!(error = %source, "cannot remove interface files; rolling back");
            let rollback = self.rollback_in(run, &entry, "files restored");
            return Err(ApplyError::Files { source, rollback });
        }
        if let (Some(link), Some(kernel)) = (link, &self.kernel) {
            let undone =
                LinkTarget { name: link.name.clone(), mtu: link.mtu, up: false, addresses: Default::default() };
            if let Err(source) = converge(kernel.as_ref(), link.index, &undone) {
                warn!(error = %source, "cannot undo the runtime state; rolling back");
                let rollback = self.rollback_in(run, &entry, "files and runtime state restored");
                return Err(ApplyError::Runtime { source, rollback });
            }
        }
        self.commit(&entry);
        run.removed.push(name);
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
        for (interface, entry) in pending {
            match entry {
                Ok(entry) => {
                    let _span = info_span!("interface", interface = %interface, mac = %entry.mac).entered();
                    match self.rollback(&entry) {
                        Ok(_) => {
                            rolled_back += 1;
                            info!(same_boot = entry.same_boot(), "rolled back a change interrupted by a crash");
                        }
                        Err(e) => warn!(error = %e, "cannot roll back an interrupted change; kept for the next start"),
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
    /// before its first write restores nothing, even on a read-only folder).
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
