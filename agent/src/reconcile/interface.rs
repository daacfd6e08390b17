//! One interface's change: journal, write, apply, verify, or roll back.
//!
//! Every change starts with a journal entry holding the interface's previous
//! files and runtime state; the entry is removed only when the change is
//! verified or undone. A rollback restores exactly that entry and nothing of
//! any other interface. The NIC is the one the planner found for the MAC
//! (by ifindex); it is never searched for again.

use std::path::PathBuf;
use std::time::Duration;

use multinic_proto::{ErrorCode, InterfaceName, InterfaceSpec, InterfaceState, InterfaceStatus, MacAddress};
use tracing::{error, info, warn};

use super::{ApplyMode, Reconciler, Run};
use crate::backend::{ChangeKind, HostChange, NotAdmitted, RenderedFile};
use crate::journal::{Entry, SavedFile};
use crate::kernel::diff::{LinkTarget, Step, mtu_allowed, rename_steps, verify};
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
    /// is, waiting, refused, failed); otherwise the interface joins
    /// `run.pending` for the host apply and verification.
    pub(super) fn prepare(
        &self,
        run: &mut Run,
        name: InterfaceName,
        spec: &InterfaceSpec,
        write: Option<&[RenderedFile]>,
        link: Option<&LinkState>,
        retired: Vec<PathBuf>,
    ) -> Option<InterfaceStatus> {
        let fail = |code, message: String| {
            Some(InterfaceStatus::problem(spec.mac, Some(name), InterfaceState::Failed, code, message))
        };
        let link = link.filter(|_| self.apply != ApplyMode::None && self.kernel.is_some());
        let target = LinkTarget::desired(name, spec);
        if let Some(link) = link {
            if let Err(why) = mtu_allowed(link, target.mtu) {
                warn!(reason = %why, "MTU out of the device's range; nothing changed");
                return fail(ErrorCode::MtuRejected, format!("{why}; nothing changed"));
            }
            // Files to retire (the predecessor's) go only once ours are verified.
            if write.is_none() && retired.is_empty() && verify(link, &target).is_ok() {
                return Some(InterfaceStatus::applied(spec.mac, name));
            }
        } else if write.is_none() {
            return Some(self.unapplied_status(name, spec));
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
                    return Some(InterfaceStatus::problem(
                        spec.mac,
                        Some(name),
                        InterfaceState::Refused,
                        ErrorCode::ForeignInterface,
                        format!("{why}; it is left alone"),
                    ));
                }
                Err(NotAdmitted::Failed(why)) => {
                    warn!(reason = %why, "cannot ask the node's network daemon; nothing changed");
                    return fail(ErrorCode::ApplyFailed, format!("{why}; nothing changed"));
                }
            }
        }

        let entry = match self.saved_files(name) {
            Ok(files) => Entry::new(name, spec.mac, files, link),
            Err(e) => {
                return fail(ErrorCode::WriteFailed, format!("cannot read the previous files: {e}; nothing changed"));
            }
        };
        if let Err(e) = self.journal.record(&entry) {
            return fail(ErrorCode::WriteFailed, format!("cannot journal the previous state: {e}; nothing changed"));
        }
        run.changing();
        if let Some(files) = write
            && let Err(e) = files.iter().try_for_each(|f| self.files.write_atomic(&f.path, &f.contents))
        {
            warn!(error = %e, "cannot write interface files; rolling back");
            self.rollback_in(run, &entry);
            return fail(ErrorCode::WriteFailed, format!("{e}; previous files restored"));
        }
        let Some(link) = link else {
            self.commit(&entry);
            return Some(self.unapplied_status(name, spec));
        };
        if let Err(e) = self.runtime_before_host(link, &target) {
            warn!(error = %e, "cannot apply; rolling back");
            self.rollback_in(run, &entry);
            let code = if matches!(e.step, Step::Mtu(_)) { ErrorCode::MtuRejected } else { ErrorCode::ApplyFailed };
            return fail(code, format!("{e}; rolled back to the previous state"));
        }
        run.pending.push(Pending { name, spec: *spec, entry, index: link.index, change });
        None
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
    ) -> InterfaceStatus {
        let fail =
            |code, message: String| InterfaceStatus::problem(mac, Some(name), InterfaceState::Failed, code, message);
        let link = link.filter(|_| self.apply != ApplyMode::None && self.kernel.is_some());
        let entry = match self.saved_files(name) {
            Ok(files) => Entry::new(name, mac, files, link),
            Err(e) => return fail(ErrorCode::WriteFailed, format!("cannot read the files: {e}; nothing changed")),
        };
        if let Err(e) = self.journal.record(&entry) {
            return fail(ErrorCode::WriteFailed, format!("cannot journal the previous state: {e}; nothing changed"));
        }
        run.changing();
        if let Err(e) = self.backend.paths(name).iter().try_for_each(|p| self.files.remove(p)) {
            warn!(error = %e, "cannot remove interface files; rolling back");
            self.rollback_in(run, &entry);
            return fail(ErrorCode::WriteFailed, format!("{e}; files restored"));
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
            if let Err(e) = verdict {
                warn!(error = %e, "the node's daemon did not let go of the interface; rolling back");
                session.undo(&change);
                self.rollback_in(run, &entry);
                session.reread(std::slice::from_ref(&change));
                run.host = host;
                return fail(ErrorCode::ApplyFailed, format!("{e}; files restored"));
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
            if let Some(Err(e)) = undone.map(|target| converge(kernel.as_ref(), link.index, &target)) {
                warn!(error = %e, "cannot undo the runtime state; rolling back");
                self.rollback_in(run, &entry);
                return fail(ErrorCode::ApplyFailed, format!("{e}; files and runtime state restored"));
            }
        }
        self.commit(&entry);
        info!(runtime_undone = link.is_some(), "removed: MAC no longer desired");
        InterfaceStatus::problem(mac, Some(name), InterfaceState::Removed, ErrorCode::None, "")
    }

    /// The current files of `name`, as a journal records them.
    fn saved_files(&self, name: InterfaceName) -> Result<Vec<SavedFile>, crate::files::FileError> {
        let paths = self.backend.paths(name);
        let found = self.files.read_existing(&paths)?;
        Ok(paths.into_iter().map(|path| SavedFile { contents: found.get(&path).cloned(), path }).collect())
    }

    pub(super) fn commit(&self, entry: &Entry) {
        if let Err(e) = self.journal.clear(&entry.interface) {
            warn!(error = %e, "cannot clear the journal entry; the next start will roll this change back");
        }
    }

    pub(super) fn rollback_in(&self, run: &mut Run, entry: &Entry) {
        run.rollbacks += 1;
        if let Err(e) = self.rollback(entry) {
            error!(error = %e, "rollback incomplete; the journal entry is kept for the next start");
        }
    }

    /// Restores the files and (same boot, same NIC) the runtime state of
    /// `entry`, then forgets it. A file already as journaled is left alone
    /// (e.g. the predecessor's file, never written by a failed change).
    pub(super) fn rollback(&self, entry: &Entry) -> Result<(), String> {
        let mut problems = Vec::new();
        for file in &entry.files {
            let now = self.files.read_existing(std::slice::from_ref(&file.path)).map(|mut f| f.remove(&file.path));
            if now.as_ref().is_ok_and(|now| *now == file.contents) {
                continue;
            }
            let restored = match &file.contents {
                Some(contents) => self.files.write_atomic(&file.path, contents),
                None => self.files.remove(&file.path),
            };
            if let Err(e) = restored {
                problems.push(e.to_string());
            }
        }
        if let (Some(saved), Some(kernel), true) = (&entry.link, &self.kernel, self.apply != ApplyMode::None) {
            if entry.same_boot() {
                match kernel.read() {
                    Ok(state) => match state.link(saved.index) {
                        Some(link) if link.identity().map(|m| m.to_string()).as_deref() == Some(entry.mac.as_str()) => {
                            if let Err(e) = converge(kernel.as_ref(), saved.index, &saved.target()) {
                                problems.push(e.to_string());
                            }
                        }
                        _ => info!(index = saved.index, "the NIC is gone; no runtime state to restore"),
                    },
                    Err(e) => problems.push(e.to_string()),
                }
            } else {
                info!("journaled during an earlier boot; only files restored");
            }
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        self.journal.clear(&entry.interface).map_err(|e| e.to_string())
    }
}

/// Test hook: creates `marker`, then stops for `MULTINIC_TEST_PAUSE_SECONDS`
/// (so a test can stop the agent mid-apply) or, when unset, forever (so a
/// test can kill it there).
pub(super) fn pause(marker: &std::path::Path) {
    warn!(marker = %marker.display(), "test hook: paused after writing, before verifying");
    if let Err(e) = std::fs::write(marker, std::process::id().to_string()) {
        warn!(error = %e, "test hook: cannot create the marker");
    }
    match std::env::var("MULTINIC_TEST_PAUSE_SECONDS").ok().and_then(|s| s.parse::<u64>().ok()) {
        Some(seconds) => std::thread::sleep(Duration::from_secs(seconds)),
        None => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
    }
}
