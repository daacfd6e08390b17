//! The second half of a reconcile: the host apply (host mode) of every
//! interface prepared, then verification through netlink, then commit or
//! rollback of each interface on its own.
//!
//! Interfaces are independent here too: when verification of one fails, it
//! alone is rolled back (its files and runtime state from the journal, then
//! the host's tool reads the restored files); the others carry on. This
//! module never acts on an interface that was not prepared in the same
//! reconcile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use multinic_proto::{InterfaceName, InterfaceStatus};
use tracing::{error, info, info_span, warn};

use super::error::{ApplyError, VerifyError};
use super::interface::Pending;
use super::{ApplyMode, Reconciler, Run};
use crate::hostns::HostError;
use crate::kernel::KernelState;
use crate::kernel::diff::{LinkTarget, verify};
use crate::kernel::facts::{LinkMatch, find_link};

impl Reconciler {
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
                // One failure of the tool, said for every interface it failed.
                let source = Arc::new(e);
                for p in pending.drain(..) {
                    let _span = info_span!("interface", interface = %p.name, mac = %p.spec.mac).entered();
                    let rollback = self.rollback_in(run, &p.entry, "rolled back to the previous state");
                    let error = ApplyError::HostApply { source: source.clone(), rollback };
                    statuses.push(error.status(p.spec.mac, Some(p.name)));
                }
                self.host_apply_after_rollback(&names);
            }
        }
        if pending.is_empty() {
            return statuses;
        }
        #[cfg(feature = "test-hooks")]
        if let Some(pause) = &self.pause_after_write {
            pause.pause();
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
                Err(source) => {
                    warn!(reason = %source, "verification failed; rolling back");
                    let rollback = self.rollback_in(run, &p.entry, "rolled back to the previous state");
                    rolled_back.push(p.name);
                    statuses.push(ApplyError::Verify { source, rollback }.status(p.spec.mac, Some(p.name)));
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
    fn verify_settled(&self, run: &mut Run, pending: &[Pending]) -> Vec<Result<(), VerifyError>> {
        let started = Instant::now();
        let check = |state: &KernelState, p: &Pending| match find_link(state, p.spec.mac) {
            LinkMatch::One(link) => Ok(verify(link, &LinkTarget::desired(p.name, &p.spec))?),
            LinkMatch::Absent => Err(VerifyError::Gone(p.spec.mac)),
            LinkMatch::Ambiguous(names) => {
                Err(VerifyError::Ambiguous { mac: p.spec.mac, names: names.into_iter().map(str::to_owned).collect() })
            }
        };
        let verdicts = loop {
            let verdicts: Vec<Result<(), VerifyError>> = match self.kernel.as_ref().map(|k| k.read()) {
                Some(Ok(state)) => pending.iter().map(|p| check(&state, p)).collect(),
                Some(Err(e)) => pending.iter().map(|_| Err(VerifyError::ReadKernel(e.clone()))).collect(),
                None => pending.iter().map(|_| Err(VerifyError::NoNetlink)).collect(),
            };
            if verdicts.iter().all(Result::is_ok) || started.elapsed() >= self.settle_time {
                break verdicts;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        run.verify_duration += started.elapsed();
        verdicts
    }

    fn host_apply(&self, names: &[InterfaceName]) -> Result<(), HostError> {
        for command in self.backend.kind().apply_commands(names) {
            let output = self.host.run(command.program, &command.args)?;
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
}
