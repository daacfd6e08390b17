//! The application side of the agent's stream: typed commands in, reports
//! out. The session (the transport) reads frames, turns them into
//! [`Command`]s, hands each to the [`Worker`] and only converts and sends
//! what comes back; the worker knows nothing of gRPC or of the stream.
//!
//! | command | what the worker does | answer |
//! |---|---|---|
//! | [`Command::Push`] | applies the set, remembers it as the last push | its report |
//! | [`Command::Reject`] | nothing on the node; forgets the last push | a rejected report |
//! | [`Command::Recheck`] | applies the waiting NICs of the last push that appeared, only them | the last push's report, updated, if any appeared |
//! | [`Command::Check`] | checks the node against the last push (read only) and repairs what drifted, only that (`check.rs`, `drift.rs`) | the last push's report with what drifted, if anything did |
//!
//! The worker owns what outlives a stream: the last applied push (so that
//! waiting NICs are picked up on the next stream too) and the status
//! bookkeeping (metrics, readiness, what Hello says). Every apply runs on the
//! blocking pool, watched against `--apply-deadline` (`watch.rs`).
//!
//! Work the agent starts by itself is scheduled here, not in the session:
//! [`Worker::due`] says which command is next and after how long, and the
//! session sleeps that long and hands it back: a recheck every second
//! while a NIC waits, a drift check every `--drift-check-interval` after
//! the last push or check. Both answer, through the same `report` tail as
//! every apply, with the last push's report when there is news. Checks run
//! while a stream is up (their reports need one); a restarted stream
//! resumes them.
//!
//! The worker never reads the network configuration of the node itself:
//! the [`Reconciler`] does.

mod check;
pub mod drift;
mod watch;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use multinic_proto::{
    AgentHello, AgentReport, DesiredPush, DesiredSet, Digest, InterfaceState, InterfaceStatus, MacAddress, NodeName,
    Outcome, ParseError,
};
use tokio_util::sync::CancellationToken;
use tracing::{Span, debug, info, info_span, warn};

use self::drift::{DriftConfig, DriftPolicy};
pub use self::watch::{ApplyAbandoned, SHUTDOWN_WAIT};
use self::watch::{Unfinished, Watch};
use crate::reconcile::{self, Reconciler, Scope};
use crate::status::{AgentStatus, Processed};

/// How often the links are checked while an interface waits for its MAC.
pub const WAITING_POLL: Duration = Duration::from_secs(1);

/// What the session asks of the worker.
#[derive(Debug)]
pub enum Command {
    /// A push of the controller, parsed: apply it and report.
    Push(DesiredPush),
    /// A push that did not parse: rejected whole; nothing changes.
    Reject(RejectedPush),
    /// Look for NICs of the last push that waited and appeared; the report
    /// (if any did) answers the push with this nonce.
    Recheck { nonce: u64 },
    /// Check the node against the last push for drift and act on it; the
    /// report (if anything drifted) answers the push with this nonce.
    Check { nonce: u64 },
}

/// A push refused at the edge, with what could still be read of it.
#[derive(Debug)]
pub struct RejectedPush {
    pub generation: u64,
    pub nonce: u64,
    pub digest: Option<Digest>,
    pub error: ParseError,
}

/// The last push applied, kept across streams so that waiting interfaces
/// are picked up and reported on.
#[derive(Debug, Clone)]
struct Applied {
    generation: u64,
    set: DesiredSet,
    statuses: Vec<InterfaceStatus>,
}

impl Applied {
    /// MACs of the set that wait for their NIC.
    fn waiting(&self) -> BTreeSet<MacAddress> {
        self.statuses.iter().filter(|s| s.state == InterfaceState::Waiting).map(|s| s.mac).collect()
    }
}

/// What started an apply (it decides the log line and whether it counts as a push).
#[derive(Debug, Clone, Copy)]
enum Trigger {
    Push,
    /// This many waiting NICs appeared.
    Appeared(usize),
    /// A drift check found this much; `reconciled`: it ran a repair.
    Drift {
        findings: usize,
        reconciled: bool,
    },
}

/// Carries out the session's commands on the node.
#[derive(Debug)]
pub struct Worker {
    reconciler: Arc<Reconciler>,
    status: Arc<AgentStatus>,
    watch: Watch,
    last: Option<Applied>,
    drift: DriftPolicy,
}

impl Worker {
    /// A worker whose applies are watched against `apply_deadline` and
    /// given up at `shutdown` (see `watch.rs`).
    pub fn new(
        reconciler: Arc<Reconciler>,
        status: Arc<AgentStatus>,
        apply_deadline: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            reconciler,
            status,
            watch: Watch { deadline: apply_deadline, shutdown },
            last: None,
            drift: DriftPolicy::new(DriftConfig::OFF),
        }
    }

    /// Checks the node for drift as `config` says (off unless called).
    pub fn with_drift(mut self, config: DriftConfig) -> Self {
        self.drift = DriftPolicy::new(config);
        self
    }

    /// What this node says first on a stream: the last set it processed
    /// and how that went.
    pub fn hello(&self, node: &NodeName) -> AgentHello {
        let processed = self.status.processed();
        AgentHello {
            node: node.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            backend: self.reconciler.backend().name().to_owned(),
            apply_mode: self.reconciler.apply_mode().as_str().to_owned(),
            applied_digest: processed.digest,
            interfaces: processed.interfaces,
        }
    }

    /// The command the worker wants to run by itself next, and after how
    /// long from now, if any: a [`Command::Recheck`] every [`WAITING_POLL`]
    /// while a NIC of the last push waits, a [`Command::Check`] when the
    /// drift check interval has passed since the last push or check
    /// (whichever comes first). `nonce` is the one its report answers (the
    /// stream's last push, or 0 when the controller adopted our Hello).
    pub fn due(&self, nonce: u64) -> Option<(Duration, Command)> {
        let last = self.last.as_ref()?;
        let recheck = (!last.waiting().is_empty()).then_some(WAITING_POLL);
        let check = self.drift.due_in(Instant::now());
        match (recheck, check) {
            (Some(recheck), Some(check)) if check < recheck => Some((check, Command::Check { nonce })),
            (Some(recheck), _) => Some((recheck, Command::Recheck { nonce })),
            (None, Some(check)) => Some((check, Command::Check { nonce })),
            (None, None) => None,
        }
    }

    /// Carries out `command`: the report to send, if there is one; `Err`
    /// when shutdown gave up on an apply still running.
    pub async fn handle(&mut self, command: Command) -> Result<Option<AgentReport>, ApplyAbandoned> {
        match command {
            Command::Push(push) => self.push(push).await.map(Some),
            Command::Reject(rejected) => Ok(Some(self.reject(rejected))),
            Command::Recheck { nonce } => self.recheck(nonce).await,
            Command::Check { nonce } => self.drift_check(nonce).await,
        }
    }

    fn reject(&mut self, rejected: RejectedPush) -> AgentReport {
        let RejectedPush { generation, nonce, digest, error } = rejected;
        warn!(generation, error = %error, "rejected a malformed push; nothing changed");
        // The controller moved on from the last set: stop reporting on it.
        self.last = None;
        self.drift.forget();
        self.status.record_apply(Outcome::Rejected, Duration::ZERO, None);
        AgentReport {
            generation,
            nonce,
            digest,
            outcome: Outcome::Rejected,
            interfaces: Vec::new(),
            error: error.to_string(),
            drift: Vec::new(),
        }
    }

    async fn push(&mut self, push: DesiredPush) -> Result<AgentReport, ApplyAbandoned> {
        let span = info_span!("apply", generation = push.generation, digest = push.set.digest().short());
        let started = Instant::now();
        let set = push.set.clone();
        let work = match self.apply(&span, push.generation, move |r| r.reconcile(&set)).await {
            Ok(work) => work,
            Err(Unfinished::Abandoned(abandoned)) => return Err(abandoned),
            Err(Unfinished::Panicked(e)) => {
                self.last = None;
                self.drift.forget();
                return Ok(AgentReport {
                    generation: push.generation,
                    nonce: push.nonce,
                    digest: Some(push.set.digest().clone()),
                    outcome: Outcome::Rejected,
                    interfaces: Vec::new(),
                    error: format!("internal error while applying: {e}"),
                    drift: Vec::new(),
                });
            }
        };
        self.drift.pushed(Instant::now());
        let last =
            self.last.insert(Applied { generation: push.generation, set: push.set, statuses: work.statuses.clone() });
        Ok(report(&self.status, last, push.nonce, &work, started.elapsed(), Trigger::Push, &span))
    }

    async fn recheck(&mut self, nonce: u64) -> Result<Option<AgentReport>, ApplyAbandoned> {
        let Some(last) = &self.last else { return Ok(None) };
        let (reconciler, waiting) = (self.reconciler.clone(), last.waiting());
        let Some(present) = read_node("looking for waiting NICs", move || reconciler.present(&waiting)).await else {
            return Ok(None);
        };
        let appeared = match present {
            Ok(appeared) if !appeared.is_empty() => appeared,
            Ok(_) => return Ok(None),
            Err(e) => {
                debug!(error = %e, "cannot read links to look for waiting NICs");
                return Ok(None);
            }
        };
        let span =
            info_span!("apply", generation = last.generation, digest = last.set.digest().short(), trigger = "appeared");
        let (set, only, generation) = (last.set.clone(), appeared.clone(), last.generation);
        let started = Instant::now();
        let work = match self.apply(&span, generation, move |r| r.reconcile_in(&set, Scope::Only(&only))).await {
            Ok(work) => work,
            Err(Unfinished::Abandoned(abandoned)) => return Err(abandoned),
            Err(Unfinished::Panicked(e)) => {
                warn!(error = %e, "applying an appeared NIC panicked");
                return Ok(None);
            }
        };
        let Some(last) = self.last.as_mut() else { return Ok(None) };
        merge(last, &work.statuses);
        let trigger = Trigger::Appeared(appeared.len());
        Ok(Some(report(&self.status, last, nonce, &work, started.elapsed(), trigger, &span)))
    }

    /// Runs `reconcile` on the blocking pool inside `span`, watched.
    async fn apply(
        &self,
        span: &Span,
        generation: u64,
        reconcile: impl FnOnce(&Reconciler) -> reconcile::Outcome + Send + 'static,
    ) -> Result<reconcile::Outcome, Unfinished> {
        let reconciler = self.reconciler.clone();
        // The blocking thread enters the apply span itself (a span does not
        // follow a closure onto another thread), so every line carries it.
        let inner = span.clone();
        self.watch.run(&self.status, generation, move || inner.in_scope(|| reconcile(&reconciler))).await
    }
}

/// Runs `read` (a look at the node, no change) on the blocking pool; a
/// panic is logged and gives `None`.
async fn read_node<T: Send + 'static>(what: &'static str, read: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    match tokio::task::spawn_blocking(read).await {
        Ok(value) => Some(value),
        Err(e) => {
            warn!(error = %e, "{what} panicked");
            None
        }
    }
}

/// Puts the statuses of a scoped reconcile in place of the last push's.
fn merge(last: &mut Applied, statuses: &[InterfaceStatus]) {
    for new in statuses {
        match last.statuses.iter_mut().find(|s| s.mac == new.mac) {
            Some(old) => *old = new.clone(),
            None => last.statuses.push(new.clone()),
        }
    }
}

/// The tail of every apply: the metrics, the log line, what Hello and
/// `GET /` say from now on, and the report on the last push (`last`, whose
/// statuses already include what `work` did).
fn report(
    status: &AgentStatus,
    last: &Applied,
    nonce: u64,
    work: &reconcile::Outcome,
    took: Duration,
    trigger: Trigger,
    span: &Span,
) -> AgentReport {
    let result = Outcome::of(&last.statuses);
    if !matches!(trigger, Trigger::Drift { reconciled: false, .. }) {
        status.record_apply(result, took, Some(work));
    }
    let (apply_ms, verify_ms) = (work.apply_duration.as_millis() as u64, work.verify_duration.as_millis() as u64);
    span.in_scope(|| match trigger {
        Trigger::Push => info!(
            outcome = result.as_str(),
            changes = work.changes,
            file_writes = work.file_writes,
            netlink_changes = work.netlink_changes,
            rollbacks = work.rollbacks,
            apply_ms,
            verify_ms,
            interfaces = last.set.len(),
            took_ms = took.as_millis() as u64,
            "applied desired state"
        ),
        Trigger::Appeared(_) | Trigger::Drift { .. } => {
            let (what, appeared, findings) = match trigger {
                Trigger::Drift { findings, .. } => ("the drift check found the node out of line", 0, findings),
                Trigger::Appeared(appeared) => ("applied NICs that appeared", appeared, 0),
                Trigger::Push => ("", 0, 0),
            };
            info!(
                appeared,
                findings,
                outcome = result.as_str(),
                file_writes = work.file_writes,
                netlink_changes = work.netlink_changes,
                rollbacks = work.rollbacks,
                apply_ms,
                verify_ms,
                "{what}"
            );
        }
    });
    let kept: Vec<_> = last.statuses.iter().filter(|s| s.state != InterfaceState::Removed).cloned().collect();
    let processed =
        Processed { digest: Some(last.set.digest().clone()), generation: last.generation, interfaces: kept };
    match trigger {
        Trigger::Push => status.processed_push(processed),
        Trigger::Appeared(_) | Trigger::Drift { .. } => status.refresh_processed(processed),
    }
    AgentReport {
        generation: last.generation,
        nonce,
        digest: Some(last.set.digest().clone()),
        outcome: result,
        interfaces: last.statuses.clone(),
        error: String::new(),
        drift: Vec::new(),
    }
}

#[cfg(test)]
mod tests;
