//! Every apply runs on the blocking pool and is watched, not cancelled: it
//! may be inside a host command or the kernel, where it cannot be stopped.
//!
//! Past `--apply-deadline` the agent turns unready and says why, and keeps
//! waiting. On shutdown an apply in flight is waited for while it is within
//! its deadline, at most [`SHUTDOWN_WAIT`]; then the agent stops without it
//! (the journal rolls it back at the next start). This module never starts
//! an apply on its own and never gives one up but at shutdown.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::status::AgentStatus;

/// How long a shutdown waits for an apply in flight (under Kubernetes'
/// default grace period of 30 s), if the apply is within its deadline.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(20);

/// The agent stopped while an apply was still running (it could not be
/// cancelled); the journal rolls back what it changed at the next start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stopped with an apply still running: the apply of generation {generation} had run for {running:?}")]
pub struct ApplyAbandoned {
    pub generation: u64,
    pub running: Duration,
}

/// Why watched work gave no result.
#[derive(Debug)]
pub(super) enum Unfinished {
    /// The work panicked (a bug); nothing is known of what it did.
    Panicked(tokio::task::JoinError),
    /// Shutdown came and the work did not end in time.
    Abandoned(ApplyAbandoned),
}

/// What watches an apply: the status it marks, the shutdown signal and the deadline.
#[derive(Debug, Clone)]
pub(super) struct Watch {
    pub(super) deadline: Duration,
    pub(super) shutdown: CancellationToken,
}

impl Watch {
    /// Runs `work` (an apply of `generation`) on the blocking pool and waits
    /// for it: past the deadline the agent turns unready, says why, and
    /// keeps waiting; on shutdown it waits only while the apply is within
    /// its deadline, at most [`SHUTDOWN_WAIT`].
    pub(super) async fn run<T: Send + 'static>(
        &self,
        status: &AgentStatus,
        generation: u64,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Unfinished> {
        let started = tokio::time::Instant::now();
        let overdue_at = started + self.deadline;
        status.apply_started(generation, self.deadline);
        let mut task = tokio::task::spawn_blocking(work);
        let mut overdue = false;
        let mut give_up_at: Option<tokio::time::Instant> = None;
        let result = loop {
            tokio::select! {
                joined = &mut task => break joined.map_err(Unfinished::Panicked),
                () = tokio::time::sleep_until(overdue_at), if !overdue => {
                    overdue = true;
                    error!(generation, deadline = ?self.deadline, "the apply has not finished within its deadline; not ready until it does");
                }
                () = self.shutdown.cancelled(), if give_up_at.is_none() => {
                    let at = overdue_at.min(tokio::time::Instant::now() + SHUTDOWN_WAIT);
                    info!(generation, wait = ?at.saturating_duration_since(tokio::time::Instant::now()), "stopping: waiting for the apply in flight");
                    give_up_at = Some(at);
                }
                () = tokio::time::sleep_until(give_up_at.unwrap_or(overdue_at)), if give_up_at.is_some() => {
                    let running = started.elapsed();
                    error!(generation, running = ?running, "stopping without the apply in flight; the journal rolls back what it changed at the next start");
                    break Err(Unfinished::Abandoned(ApplyAbandoned { generation, running }));
                }
            }
        };
        if overdue && result.is_ok() {
            info!(generation, took = ?started.elapsed(), "the overdue apply finished");
        }
        status.apply_finished();
        result
    }
}
