//! One interface's change: journal, write, apply, verify, or roll back.
//!
//! Every change starts with a journal entry holding the interface's previous
//! files and runtime state; the entry is removed only when the change is
//! verified or undone. A rollback restores exactly that entry and nothing of
//! any other interface.

use std::time::{Duration, Instant};

use multinic_proto::{ErrorCode, InterfaceName, InterfaceSpec, InterfaceState, InterfaceStatus, MacAddress};
use tracing::{error, info, info_span, warn};

use super::{ApplyMode, Reconciler, Run};
use crate::backend::RenderedFile;
use crate::files::{Links, OUR_FILE_LIMIT, read_text};
use crate::journal::{Entry, SavedFile};
use crate::kernel::diff::{LinkTarget, Step, mtu_allowed, rename_steps, verify};
use crate::kernel::facts::{LinkMatch, find_link};
use crate::kernel::{KernelState, LinkState, StepError, converge, run_step};
use crate::plan::NodeFacts;

/// An interface changed and not verified yet.
#[derive(Debug)]
pub(super) struct Pending {
    name: InterfaceName,
    spec: InterfaceSpec,
    entry: Entry,
}

impl Reconciler {
    /// Starts the change of one desired interface. Returns its status when it
    /// is already decided (applied as it is, waiting, failed); otherwise the
    /// interface joins `run.pending` for the host apply and verification.
    pub(super) fn prepare(
        &self,
        run: &mut Run,
        name: InterfaceName,
        spec: &InterfaceSpec,
        write: Option<&[RenderedFile]>,
        kernel: Option<&KernelState>,
    ) -> Option<InterfaceStatus> {
        let fail = |code, message: String| {
            Some(InterfaceStatus::problem(spec.mac, Some(name), InterfaceState::Failed, code, message))
        };
        let link = match (self.apply, kernel) {
            (ApplyMode::None, _) | (_, None) => None,
            (_, Some(kernel)) => match find_link(kernel, spec.mac) {
                LinkMatch::One(link) => Some(link),
                LinkMatch::Absent => None,
                LinkMatch::Ambiguous(names) => {
                    let message = format!("MAC {} is claimed by several links ({})", spec.mac, names.join(", "));
                    return Some(InterfaceStatus::problem(
                        spec.mac,
                        Some(name),
                        InterfaceState::Refused,
                        ErrorCode::ForeignInterface,
                        message,
                    ));
                }
            },
        };
        let target = LinkTarget::desired(name, spec);
        if let Some(link) = link {
            if let Err(why) = mtu_allowed(link, target.mtu) {
                warn!(reason = %why, "MTU out of the device's range; nothing changed");
                return fail(ErrorCode::MtuRejected, format!("{why}; nothing changed"));
            }
            if write.is_none() && verify(link, &target).is_ok() {
                // Verified as desired: an entry an incomplete rollback kept
                // for this interface has nothing left to restore.
                self.forget_obsolete(name);
                return Some(InterfaceStatus::applied(spec.mac, name));
            }
        } else if write.is_none() {
            return Some(self.unapplied_status(name, spec));
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
            let rolled_back = self.rollback_in(run, &entry, "previous files restored");
            return fail(ErrorCode::WriteFailed, format!("{e}; {rolled_back}"));
        }
        let Some(link) = link else {
            self.commit(&entry);
            return Some(self.unapplied_status(name, spec));
        };
        if let Err(e) = self.runtime_before_host(link, &target) {
            warn!(error = %e, "cannot apply; rolling back");
            let rolled_back = self.rollback_in(run, &entry, "rolled back to the previous state");
            let code = if matches!(e.step, Step::Mtu(_)) { ErrorCode::MtuRejected } else { ErrorCode::ApplyFailed };
            return fail(code, format!("{e}; {rolled_back}"));
        }
        run.pending.push(Pending { name, spec: *spec, entry });
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
    ) -> InterfaceStatus {
        let fail =
            |code, message: String| InterfaceStatus::problem(mac, Some(name), InterfaceState::Failed, code, message);
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
            let rolled_back = self.rollback_in(run, &entry, "files restored");
            return fail(ErrorCode::WriteFailed, format!("{e}; {rolled_back}"));
        }
        if let (Some(link), Some(kernel)) = (link, &self.kernel) {
            let undone =
                LinkTarget { name: link.name.clone(), mtu: link.mtu, up: false, addresses: Default::default() };
            if let Err(e) = converge(kernel.as_ref(), link.index, &undone) {
                warn!(error = %e, "cannot undo the runtime state; rolling back");
                let rolled_back = self.rollback_in(run, &entry, "files and runtime state restored");
                return fail(ErrorCode::ApplyFailed, format!("{e}; {rolled_back}"));
            }
        }
        self.commit(&entry);
        run.removed.push(name);
        info!(runtime_undone = link.is_some(), "removed: MAC no longer desired");
        InterfaceStatus::problem(mac, Some(name), InterfaceState::Removed, ErrorCode::None, "")
    }

    /// Host apply (host mode), then verification of every pending interface;
    /// what fails is rolled back alone.
    pub(super) fn apply_and_verify(&self, run: &mut Run) -> Vec<InterfaceStatus> {
        let mut statuses = Vec::new();
        let mut pending = std::mem::take(&mut run.pending);
        if self.apply == ApplyMode::Host && (!pending.is_empty() || !run.removed.is_empty()) {
            let mut names: Vec<InterfaceName> =
                pending.iter().map(|p| p.name).chain(run.removed.iter().copied()).collect();
            names.sort();
            if let Err(e) = self.host_apply(&names) {
                error!(error = %e, "host apply failed; rolling back the changed interfaces");
                for p in pending.drain(..) {
                    let _span = info_span!("interface", interface = %p.name, mac = %p.spec.mac).entered();
                    let rolled_back = self.rollback_in(run, &p.entry, "rolled back to the previous state");
                    statuses.push(InterfaceStatus::problem(
                        p.spec.mac,
                        Some(p.name),
                        InterfaceState::Failed,
                        ErrorCode::ApplyFailed,
                        format!("{e}; {rolled_back}"),
                    ));
                }
                self.host_apply_after_rollback(&names);
            }
        }
        if pending.is_empty() {
            return statuses;
        }
        if let Some(marker) = &self.pause_after_write {
            pause(marker);
        }
        let verdicts = self.verify_settled(run, &pending);
        let mut rolled_back = Vec::new();
        for (p, verdict) in pending.into_iter().zip(verdicts) {
            let _span = info_span!("interface", interface = %p.name, mac = %p.spec.mac).entered();
            match verdict {
                Ok(()) => {
                    self.commit(&p.entry);
                    info!("applied and verified");
                    statuses.push(InterfaceStatus::applied(p.spec.mac, p.name));
                }
                Err(why) => {
                    warn!(reason = %why, "verification failed; rolling back");
                    let note = self.rollback_in(run, &p.entry, "rolled back to the previous state");
                    rolled_back.push(p.name);
                    statuses.push(InterfaceStatus::problem(
                        p.spec.mac,
                        Some(p.name),
                        InterfaceState::Failed,
                        ErrorCode::VerifyFailed,
                        format!("after apply: {why}; {note}"),
                    ));
                }
            }
        }
        if self.apply == ApplyMode::Host && !rolled_back.is_empty() {
            self.host_apply_after_rollback(&rolled_back);
        }
        statuses
    }

    /// Reads the kernel until every pending interface matches its target or
    /// the settle time is over; one verdict per pending interface.
    fn verify_settled(&self, run: &mut Run, pending: &[Pending]) -> Vec<Result<(), String>> {
        let started = Instant::now();
        let check = |state: &KernelState, p: &Pending| match find_link(state, p.spec.mac) {
            LinkMatch::One(link) => verify(link, &LinkTarget::desired(p.name, &p.spec)),
            LinkMatch::Absent => Err(format!("no link has MAC {} any more", p.spec.mac)),
            LinkMatch::Ambiguous(names) => Err(format!("several links have MAC {} ({})", p.spec.mac, names.join(", "))),
        };
        let verdicts = loop {
            let verdicts: Vec<Result<(), String>> = match self.kernel.as_ref().map(|k| k.read()) {
                Some(Ok(state)) => pending.iter().map(|p| check(&state, p)).collect(),
                Some(Err(e)) => pending.iter().map(|_| Err(format!("cannot read the kernel: {e}"))).collect(),
                None => pending.iter().map(|_| Err("no netlink access to verify".to_owned())).collect(),
            };
            if verdicts.iter().all(Result::is_ok) || started.elapsed() >= self.settle_time {
                break verdicts;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        run.verify_duration += started.elapsed();
        verdicts
    }

    fn host_apply(&self, names: &[InterfaceName]) -> Result<(), String> {
        for command in self.backend.kind().apply_commands(names) {
            let output = self.host.run(command.program, &command.args).map_err(|e| e.to_string())?;
            info!(command = command.program, args = ?command.args, output = %output.trim(), "host apply ran");
        }
        Ok(())
    }

    /// After a rollback restored files, lets the backend read them again.
    fn host_apply_after_rollback(&self, names: &[InterfaceName]) {
        if let Err(e) = self.host_apply(names) {
            warn!(error = %e, "host apply after rollback failed; runtime state was restored through netlink");
        }
    }

    /// The current files of `name`, as a journal records them.
    fn saved_files(&self, name: InterfaceName) -> Result<Vec<SavedFile>, crate::files::ReadError> {
        let paths = self.backend.paths(name);
        let found = self.files.read_existing(&paths)?;
        Ok(paths.into_iter().map(|path| SavedFile { contents: found.get(&path).cloned(), path }).collect())
    }

    fn commit(&self, entry: &Entry) {
        if let Err(e) = self.journal.clear(&entry.interface) {
            warn!(error = %e, "cannot clear the journal entry; the next start will roll this change back");
        }
    }

    /// Rolls `entry` back and says what happened, for the report: `restored`
    /// when something was put back, that nothing had changed, or that the
    /// rollback is incomplete (the entry then stays in the journal).
    fn rollback_in(&self, run: &mut Run, entry: &Entry, restored: &str) -> String {
        run.rollbacks += 1;
        match self.rollback(entry) {
            Ok(true) => restored.to_owned(),
            Ok(false) => "nothing had changed".to_owned(),
            Err(e) => {
                error!(error = %e, "rollback incomplete; the journal entry is kept for the next start");
                format!(
                    "rollback incomplete ({e}); the journal keeps the previous state, restored at the next start \
                     or replaced by the next verified change"
                )
            }
        }
    }

    /// Restores the files and (same boot, same NIC) the runtime state of
    /// `entry`, then forgets it. Returns whether anything had to be put back
    /// (a file already as journaled is left alone, so a change that failed
    /// before its first write restores nothing, even on a read-only folder).
    pub(super) fn rollback(&self, entry: &Entry) -> Result<bool, String> {
        let mut problems = Vec::new();
        let mut changed = false;
        for file in &entry.files {
            match read_text(&self.files.abs(&file.path), OUR_FILE_LIMIT, Links::Refuse) {
                Ok(now) if now == file.contents => continue,
                // Something we never write took the path meanwhile: it is not ours to replace.
                Err(e) if e.is_damaged() => {
                    problems.push(e.to_string());
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
                problems.push(e.to_string());
            }
        }
        let changes_before = self.netlink_changes();
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
        changed |= self.netlink_changes() > changes_before;
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        self.journal.clear(&entry.interface).map_err(|e| e.to_string())?;
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

/// The test hook: marks the spot and stops here until killed.
/// Test hook: creates `marker`, then stops for `MULTINIC_TEST_PAUSE_SECONDS`
/// (so a test can stop the agent mid-apply) or, when unset, forever (so a
/// test can kill it there).
fn pause(marker: &std::path::Path) {
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
