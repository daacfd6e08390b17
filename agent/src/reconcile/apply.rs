//! The second half of a reconcile: the host apply (host mode) of every
//! interface prepared, then verification through netlink, then commit or
//! rollback of each interface on its own.
//!
//! Interfaces are independent here too: one the daemon refuses, or one
//! whose verification fails, is undone alone (the daemon first, then its
//! files and runtime state from the journal, then the daemon reads the
//! restored files); the others carry on. This module never acts on an
//! interface that was not prepared in the same reconcile.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use multinic_proto::InterfaceStatus;
use tracing::{error, info, info_span, warn};

use super::error::{ApplyError, VerifyError};
use super::interface::Pending;
use super::{Reconciler, Run};
use crate::backend::HostChange;
use crate::kernel::KernelState;
use crate::kernel::diff::{LinkTarget, verify};

impl Reconciler {
    /// Host apply (host mode), then verification of every pending interface;
    /// what fails is rolled back alone.
    pub(super) fn apply_and_verify(&self, run: &mut Run) -> Vec<InterfaceStatus> {
        let mut statuses = Vec::new();
        let mut pending = std::mem::take(&mut run.pending);
        let mut host = run.host.take();
        if let Some(session) = host.as_mut()
            && !pending.is_empty()
        {
            let changes: Vec<HostChange> = pending.iter().map(|p| p.change.clone()).collect();
            let verdicts = session.apply(&changes);
            let mut applied = Vec::new();
            let mut undone = Vec::new();
            for (p, verdict) in pending.into_iter().zip(verdicts) {
                let Err(source) = verdict else {
                    applied.push(p);
                    continue;
                };
                let _span = info_span!("interface", interface = %p.name, mac = %p.spec.mac).entered();
                error!(error = %source, "host apply failed; rolling back");
                let rollback =
                    self.undo(run, Some(session.as_mut()), &p.change, &p.entry, "rolled back to the previous state");
                statuses.push(ApplyError::HostApply { source, rollback }.status(p.spec.mac, Some(p.name)));
                undone.push(p.change);
            }
            if !undone.is_empty() {
                session.reread(&undone);
            }
            pending = applied;
        }
        if pending.is_empty() {
            run.host = host;
            return statuses;
        }
        #[cfg(feature = "test-hooks")]
        if let Some(pause) = &self.pause_after_write {
            pause.pause();
        }
        let verdicts = self.verify_settled(run, &pending);
        let mut undone = Vec::new();
        for (p, verdict) in pending.into_iter().zip(verdicts) {
            let _span = info_span!("interface", interface = %p.name, mac = %p.spec.mac).entered();
            match verdict {
                Ok(()) => {
                    self.retire(&p.change.retired);
                    if let Some(session) = host.as_mut() {
                        session.commit(&p.change);
                    }
                    self.commit(&p.entry);
                    info!("applied and verified");
                    statuses.push(InterfaceStatus::applied(p.spec.mac, p.name));
                }
                Err(source) => {
                    warn!(reason = %source, "verification failed; rolling back");
                    let session = host.as_mut().map(|s| s.as_mut() as _);
                    let rollback = self.undo(run, session, &p.change, &p.entry, "rolled back to the previous state");
                    statuses.push(ApplyError::Verify { source, rollback }.status(p.spec.mac, Some(p.name)));
                    undone.push(p.change);
                }
            }
        }
        if let Some(session) = host.as_mut()
            && !undone.is_empty()
        {
            session.reread(&undone);
        }
        run.host = host;
        statuses
    }

    /// Removes files of ours the interface's rendering no longer has (the
    /// predecessor's), now that it is verified. They are in the journal
    /// entry until it is cleared, so a crash before then restores them.
    fn retire(&self, retired: &[PathBuf]) {
        for path in retired {
            match self.files.remove(path) {
                Ok(()) => info!(file = %self.files.abs(path).display(), "retired: replaced by our verified files"),
                Err(e) => warn!(error = %e, "cannot retire a file; it is retired at the next change"),
            }
        }
    }

    /// Reads the kernel until every pending interface's NIC (by ifindex)
    /// matches its target or the settle time is over; one verdict per
    /// pending interface.
    fn verify_settled(&self, run: &mut Run, pending: &[Pending]) -> Vec<Result<(), VerifyError>> {
        let started = Instant::now();
        let check = |state: &KernelState, p: &Pending| match state.link(p.index) {
            Some(link) if link.identity() == Some(p.spec.mac) => {
                Ok(verify(link, &LinkTarget::desired(p.name, &p.spec))?)
            }
            _ => Err(VerifyError::Gone { mac: p.spec.mac, index: p.index }),
        };
        // Quick re-reads first: a daemon's apply is usually done in a few ms.
        let mut pause = Duration::from_millis(5);
        let verdicts = loop {
            let verdicts: Vec<Result<(), VerifyError>> = match self.kernel.as_ref().map(|k| k.read()) {
                Some(Ok(state)) => pending.iter().map(|p| check(&state, p)).collect(),
                Some(Err(e)) => pending.iter().map(|_| Err(VerifyError::ReadKernel(e.clone()))).collect(),
                None => pending.iter().map(|_| Err(VerifyError::NoNetlink)).collect(),
            };
            if verdicts.iter().all(Result::is_ok) || started.elapsed() >= self.settle_time {
                break verdicts;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        };
        run.verify_duration += started.elapsed();
        verdicts
    }
}
