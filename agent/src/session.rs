//! The agent's side of the stream: connect, say Hello, apply each push,
//! report, and reconnect with jittered backoff when the stream ends.
//!
//! A push that does not parse is rejected whole and changes nothing. While a
//! push is being applied newer pushes queue up; only the newest of them is
//! applied next (newer pushes supersede older ones).
//!
//! While interfaces of the last push wait for their MAC, the session checks
//! the kernel's links every [`WAITING_POLL`]; when one appears it applies
//! just that interface and sends an unsolicited Report for the same push
//! (same generation and digest; the nonce of the last push on this stream,
//! or 0 when the controller adopted our Hello instead of pushing).
//!
//! Every apply is watched: past `--apply-deadline` the agent says so and is
//! not ready until the apply ends (it cannot be cancelled: it may be inside
//! a host command or the kernel). On shutdown an apply in flight is waited
//! for while it is within its deadline, at most [`SHUTDOWN_WAIT`]; then the
//! agent stops without it and the journal rolls it back at the next start.
//!
//! Backoff starts over once a stream was established: it stayed open
//! [`ESTABLISHED_AFTER`] (the controller refuses a bad Hello at once), or
//! carried a push and our report. A controller that accepts and drops
//! streams sooner (crash-looping) keeps the delay growing to its cap.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use multinic_proto::v1::agent_message::Kind as AgentKind;
use multinic_proto::v1::agent_service_client::AgentServiceClient;
use multinic_proto::v1::controller_message::Kind as ControllerKind;
use multinic_proto::v1::{self, AgentMessage, ControllerMessage};
use multinic_proto::{
    AgentHello, AgentReport, DesiredPush, DesiredSet, InterfaceState, InterfaceStatus, MacAddress, NodeName, Outcome,
};
use multinic_tls::ClientTls;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::backoff::{Backoff, jitter};
use crate::reconcile::{Reconciler, Scope};
use crate::status::{AgentStatus, Processed};

/// Largest message accepted from the controller.
const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// A stream open this long was established: backoff starts over.
pub const ESTABLISHED_AFTER: Duration = Duration::from_secs(5);
/// How long a shutdown waits for an apply in flight (under Kubernetes'
/// default grace period of 30 s), if the apply is within its deadline.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(20);
/// How often the links are checked while an interface waits for its MAC.
pub const WAITING_POLL: Duration = Duration::from_secs(1);

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

/// Everything a session needs.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// `http://host:port` (or `https://` with TLS).
    pub controller: String,
    /// TLS with this node's certificate; `None` only with `--insecure`.
    pub tls: Option<ClientTls>,
    pub node: NodeName,
    pub connect_timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// An apply running longer makes the agent unready until it ends.
    pub apply_deadline: Duration,
}

/// The agent stopped while an apply was still running (it could not be
/// cancelled); the journal rolls back what it changed at the next start.
#[derive(Debug, thiserror::Error)]
#[error("stopped with an apply still running: {0}")]
pub struct ApplyAbandoned(pub String);

/// Why a stream ended.
#[derive(Debug)]
enum StreamEnd {
    Shutdown,
    /// The controller asked us to reconnect after a delay.
    Reconnect(Duration),
    /// The stream closed or failed.
    Lost(String),
    /// Shutdown came while an apply was still running and it did not end in time.
    Abandoned(String),
}

/// How far a stream got, for the backoff.
#[derive(Debug, Default)]
struct StreamLife {
    /// When the controller accepted the stream.
    opened: Option<Instant>,
    /// Whether a push of the controller was answered with a report.
    answered: bool,
}

impl StreamLife {
    fn established(&self) -> bool {
        established(self.opened.map(|t| t.elapsed()), self.answered)
    }
}

/// Whether a stream open for `open_for` (`None`: never accepted) that
/// carried a push and its report or not counts as established.
fn established(open_for: Option<Duration>, answered: bool) -> bool {
    answered || open_for.is_some_and(|d| d >= ESTABLISHED_AFTER)
}

/// Runs sessions until `shutdown` is cancelled.
pub async fn run(
    config: SessionConfig,
    reconciler: Arc<Reconciler>,
    status: Arc<AgentStatus>,
    shutdown: CancellationToken,
) -> Result<(), ApplyAbandoned> {
    let mut backoff = Backoff::new(config.backoff_base, config.backoff_cap);
    let mut attempt = 0u64;
    let mut applied = None;
    loop {
        attempt += 1;
        let mut life = StreamLife::default();
        let span = info_span!("stream", node = %config.node, attempt);
        let end = stream_once(&config, &reconciler, &status, &shutdown, &mut applied, &mut life).instrument(span).await;
        status.set_connected(false);
        let delay = match end {
            StreamEnd::Shutdown => return Ok(()),
            StreamEnd::Abandoned(why) => return Err(ApplyAbandoned(why)),
            StreamEnd::Reconnect(after) => {
                info!(after = ?after, "controller asked us to reconnect");
                backoff.reset();
                jitter(after.max(Duration::from_millis(100)) * 2)
            }
            StreamEnd::Lost(reason) => {
                if life.established() {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                warn!(controller = %config.controller, reason = %reason, retry_in = ?delay, "stream to the controller lost");
                delay
            }
        };
        status.count_reconnect();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return Ok(()),
        }
    }
}

/// A new connection for every stream, so that each one is checked against
/// the newest certificates (both ours and the controller's CA).
async fn connect(config: &SessionConfig) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(config.controller.clone())
        .map_err(|e| format!("invalid controller address {:?}: {e}", config.controller))?
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let channel = match &config.tls {
        Some(tls) => tls.connect(&endpoint).await,
        None => endpoint.connect().await,
    };
    channel
        .map_err(|e| format!("cannot connect to {}: {}", config.controller, multinic_proto::runtime::error_chain(&e)))
}

async fn stream_once(
    config: &SessionConfig,
    reconciler: &Arc<Reconciler>,
    status: &Arc<AgentStatus>,
    shutdown: &CancellationToken,
    applied: &mut Option<Applied>,
    life: &mut StreamLife,
) -> StreamEnd {
    let channel = tokio::select! {
        result = connect(config) => match result {
            Ok(channel) => channel,
            Err(reason) => return StreamEnd::Lost(reason),
        },
        () = shutdown.cancelled() => return StreamEnd::Shutdown,
    };
    let mut client = AgentServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel::<AgentMessage>(4);
    let processed = status.processed();
    let hello = AgentHello {
        node: config.node.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        backend: reconciler.backend().as_str().to_owned(),
        apply_mode: reconciler.apply_mode().as_str().to_owned(),
        applied_digest: processed.digest.clone(),
        interfaces: processed.interfaces.clone(),
    };
    // The channel is empty and its receiver alive: this cannot fail.
    let _ = tx.send(AgentMessage { kind: Some(AgentKind::Hello(v1::Hello::from(&hello))) }).await;
    let mut inbound = match client.sync(ReceiverStream::new(rx)).await {
        Ok(response) => response.into_inner(),
        Err(status) => return StreamEnd::Lost(format!("{:?}: {}", status.code(), status.message())),
    };
    status.set_connected(true);
    life.opened = Some(Instant::now());
    let watch = Watch { status, shutdown, deadline: config.apply_deadline };
    info!(controller = %config.controller, applied_digest = processed.digest.as_ref().map_or("", |d| d.short()), "connected to the controller");
    // The nonce of the last push on this stream; 0 until one arrives (what
    // the controller expects when it adopted our Hello).
    let mut nonce = 0u64;
    loop {
        let waiting = applied.as_ref().map(Applied::waiting).unwrap_or_default();
        let message = tokio::select! {
            () = shutdown.cancelled() => return close(tx, inbound).await,
            message = inbound.message() => message,
            () = tokio::time::sleep(WAITING_POLL), if !waiting.is_empty() => {
                let report = match recheck_waiting(&waiting, applied, nonce, reconciler, &watch).await {
                    Ok(report) => report,
                    Err(why) => return StreamEnd::Abandoned(why),
                };
                if let Some(report) = report {
                    debug!(nonce, "sending an unsolicited report: a waiting NIC appeared");
                    if tx.send(AgentMessage { kind: Some(AgentKind::Report(report)) }).await.is_err() {
                        return StreamEnd::Lost("the stream closed while reporting".into());
                    }
                }
                continue;
            }
        };
        let message = match message {
            Ok(Some(message)) => message,
            Ok(None) => return StreamEnd::Lost("the controller closed the stream".into()),
            Err(status) => return StreamEnd::Lost(format!("{:?}: {}", status.code(), status.message())),
        };
        let (desired, reconnect) = newest(message, &mut inbound);
        if let Some(desired) = desired {
            nonce = desired.nonce;
            let report = match apply_push(&desired, reconciler, &watch, applied).await {
                Ok(report) => report,
                Err(why) => return StreamEnd::Abandoned(why),
            };
            debug!(nonce = desired.nonce, "sending report");
            if tx.send(AgentMessage { kind: Some(AgentKind::Report(report)) }).await.is_err() {
                return StreamEnd::Lost("the stream closed while reporting".into());
            }
            life.answered = true;
        }
        if let Some(after) = reconnect {
            return StreamEnd::Reconnect(after);
        }
    }
}

/// Ends the stream on shutdown without losing a report just sent: our half
/// closes, and the controller closes its half once it has read (and
/// recorded) everything before the end. Waits at most two seconds.
async fn close(tx: mpsc::Sender<AgentMessage>, mut inbound: Streaming<ControllerMessage>) -> StreamEnd {
    drop(tx);
    let drained =
        tokio::time::timeout(Duration::from_secs(2), async { while let Ok(Some(_)) = inbound.message().await {} })
            .await;
    if drained.is_err() {
        debug!("the controller did not close the stream within 2s; leaving anyway");
    }
    StreamEnd::Shutdown
}

/// The newest push among `first` and whatever else already arrived, and a
/// reconnect request if one came.
fn newest(
    first: ControllerMessage,
    inbound: &mut Streaming<ControllerMessage>,
) -> (Option<v1::DesiredState>, Option<Duration>) {
    let mut desired = None;
    let mut reconnect = None;
    let mut take = |message: ControllerMessage| match message.kind {
        Some(ControllerKind::Desired(d)) => {
            if let Some(old) = desired.replace(d) {
                debug!(superseded = old.generation, "a newer push arrived before this one was applied");
            }
        }
        Some(ControllerKind::Reconnect(r)) => reconnect = Some(Duration::from_millis(u64::from(r.after_ms))),
        None => {}
    };
    take(first);
    // `message()` is cancel-safe: a message not ready yet stays in the stream.
    while let Some(Ok(Some(next))) = inbound.message().now_or_never() {
        take(next);
    }
    (desired, reconnect)
}

/// What watches an apply: the status it marks, the shutdown signal and the deadline.
struct Watch<'a> {
    status: &'a Arc<AgentStatus>,
    shutdown: &'a CancellationToken,
    deadline: Duration,
}

/// Why watched work gave no result.
enum Unfinished {
    Panicked(String),
    /// Shutdown came and the work did not end in time.
    Abandoned(String),
}

/// Runs `work` (an apply of `generation`) on the blocking pool and waits for
/// it: past the deadline the agent turns unready, says why, and keeps
/// waiting; on shutdown it waits only while the apply is within its
/// deadline, at most [`SHUTDOWN_WAIT`].
async fn watched<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
    generation: u64,
    watch: &Watch<'_>,
) -> Result<T, Unfinished> {
    let started = tokio::time::Instant::now();
    let overdue_at = started + watch.deadline;
    watch.status.apply_started(generation, watch.deadline);
    let mut task = tokio::task::spawn_blocking(work);
    let mut overdue = false;
    let mut give_up_at: Option<tokio::time::Instant> = None;
    let result = loop {
        tokio::select! {
            joined = &mut task => break joined.map_err(|e| Unfinished::Panicked(e.to_string())),
            () = tokio::time::sleep_until(overdue_at), if !overdue => {
                overdue = true;
                error!(generation, deadline = ?watch.deadline, "the apply has not finished within its deadline; not ready until it does");
            }
            () = watch.shutdown.cancelled(), if give_up_at.is_none() => {
                let at = overdue_at.min(tokio::time::Instant::now() + SHUTDOWN_WAIT);
                info!(generation, wait = ?at.saturating_duration_since(tokio::time::Instant::now()), "stopping: waiting for the apply in flight");
                give_up_at = Some(at);
            }
            () = tokio::time::sleep_until(give_up_at.unwrap_or(overdue_at)), if give_up_at.is_some() => {
                let running = started.elapsed();
                error!(generation, running = ?running, "stopping without the apply in flight; the journal rolls back what it changed at the next start");
                break Err(Unfinished::Abandoned(format!("the apply of generation {generation} had run for {running:?}")));
            }
        }
    };
    if overdue && result.is_ok() {
        info!(generation, took = ?started.elapsed(), "the overdue apply finished");
    }
    watch.status.apply_finished();
    result
}

/// Applies one push and builds the report; `Err` when shutdown gave up on it.
async fn apply_push(
    msg: &v1::DesiredState,
    reconciler: &Arc<Reconciler>,
    watch: &Watch<'_>,
    applied: &mut Option<Applied>,
) -> Result<v1::Report, String> {
    let status = watch.status;
    let push = match DesiredPush::try_from(msg) {
        Ok(push) => push,
        Err(e) => {
            warn!(generation = msg.generation, error = %e, "rejected a malformed push; nothing changed");
            // The controller moved on from the last set: stop reporting on it.
            *applied = None;
            let report = AgentReport {
                generation: msg.generation,
                nonce: msg.nonce,
                digest: multinic_proto::Digest::from_wire(&msg.digest),
                outcome: Outcome::Rejected,
                interfaces: Vec::new(),
                error: e.to_string(),
            };
            status.record_apply(Outcome::Rejected, std::time::Duration::ZERO, None);
            return Ok(v1::Report::from(&report));
        }
    };
    let span = info_span!("apply", generation = push.generation, digest = push.set.digest().short());
    let set = push.set.clone();
    let worker = reconciler.clone();
    let started = Instant::now();
    // The blocking thread enters the apply span itself (a span does not
    // follow a closure onto another thread), so every line carries it.
    let inner = span.clone();
    let outcome = watched(move || inner.in_scope(|| worker.reconcile(&set)), push.generation, watch).await;
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(Unfinished::Abandoned(why)) => return Err(why),
        Err(Unfinished::Panicked(e)) => {
            *applied = None;
            let report = AgentReport {
                generation: push.generation,
                nonce: push.nonce,
                digest: Some(push.set.digest().clone()),
                outcome: Outcome::Rejected,
                interfaces: Vec::new(),
                error: format!("internal error while applying: {e}"),
            };
            return Ok(v1::Report::from(&report));
        }
    };
    let result = Outcome::of(&outcome.statuses);
    status.record_apply(result, started.elapsed(), Some(&outcome));
    span.in_scope(|| {
        info!(
            outcome = result.as_str(),
            changes = outcome.changes,
            file_writes = outcome.file_writes,
            netlink_changes = outcome.netlink_changes,
            rollbacks = outcome.rollbacks,
            apply_ms = outcome.apply_duration.as_millis() as u64,
            verify_ms = outcome.verify_duration.as_millis() as u64,
            interfaces = push.set.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "applied desired state"
        );
    });
    *applied = Some(Applied { generation: push.generation, set: push.set.clone(), statuses: outcome.statuses.clone() });
    let kept: Vec<_> = outcome.statuses.iter().filter(|s| s.state != InterfaceState::Removed).cloned().collect();
    status.processed_push(Processed {
        digest: Some(push.set.digest().clone()),
        generation: push.generation,
        interfaces: kept,
    });
    let report = AgentReport {
        generation: push.generation,
        nonce: push.nonce,
        digest: Some(push.set.digest().clone()),
        outcome: result,
        interfaces: outcome.statuses,
        error: String::new(),
    };
    Ok(v1::Report::from(&report))
}

/// Applies the waiting interfaces whose NIC appeared, and only them; the
/// report for the last push, updated, when any did (`Err` when shutdown
/// gave up on the apply).
async fn recheck_waiting(
    waiting: &BTreeSet<MacAddress>,
    applied: &mut Option<Applied>,
    nonce: u64,
    reconciler: &Arc<Reconciler>,
    watch: &Watch<'_>,
) -> Result<Option<v1::Report>, String> {
    let status = watch.status;
    let worker = reconciler.clone();
    let macs = waiting.clone();
    let appeared = match tokio::task::spawn_blocking(move || worker.present(&macs)).await {
        Ok(Ok(appeared)) if !appeared.is_empty() => appeared,
        Ok(Ok(_)) => return Ok(None),
        Ok(Err(e)) => {
            debug!(error = %e, "cannot read links to look for waiting NICs");
            return Ok(None);
        }
        Err(e) => {
            warn!(error = %e, "looking for waiting NICs panicked");
            return Ok(None);
        }
    };
    let Some(last) = applied.as_mut() else { return Ok(None) };
    let span =
        info_span!("apply", generation = last.generation, digest = last.set.digest().short(), trigger = "appeared");
    let (set, worker, only) = (last.set.clone(), reconciler.clone(), appeared.clone());
    let inner = span.clone();
    let generation = last.generation;
    let outcome = match watched(
        move || inner.in_scope(|| worker.reconcile_in(&set, Scope::Only(&only))),
        generation,
        watch,
    )
    .await
    {
        Ok(outcome) => outcome,
        Err(Unfinished::Abandoned(why)) => return Err(why),
        Err(Unfinished::Panicked(e)) => {
            warn!(error = %e, "applying an appeared NIC panicked");
            return Ok(None);
        }
    };
    for new in outcome.statuses.iter() {
        match last.statuses.iter_mut().find(|s| s.mac == new.mac) {
            Some(old) => *old = new.clone(),
            None => last.statuses.push(new.clone()),
        }
    }
    let result = Outcome::of(&last.statuses);
    status.record_apply(result, outcome.apply_duration + outcome.verify_duration, Some(&outcome));
    span.in_scope(|| {
        info!(
            appeared = appeared.len(),
            outcome = result.as_str(),
            file_writes = outcome.file_writes,
            netlink_changes = outcome.netlink_changes,
            rollbacks = outcome.rollbacks,
            apply_ms = outcome.apply_duration.as_millis() as u64,
            verify_ms = outcome.verify_duration.as_millis() as u64,
            "applied NICs that appeared"
        );
    });
    let kept: Vec<_> = last.statuses.iter().filter(|s| s.state != InterfaceState::Removed).cloned().collect();
    status.refresh_processed(Processed {
        digest: Some(last.set.digest().clone()),
        generation: last.generation,
        interfaces: kept,
    });
    let report = AgentReport {
        generation: last.generation,
        nonce,
        digest: Some(last.set.digest().clone()),
        outcome: result,
        interfaces: last.statuses.clone(),
        error: String::new(),
    };
    Ok(Some(v1::Report::from(&report)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_counts_as_established_once_it_lasted_or_carried_a_push() {
        assert!(!established(None, false), "never accepted");
        assert!(!established(Some(Duration::from_millis(300)), false), "accepted, then dropped: a crash loop");
        assert!(established(Some(ESTABLISHED_AFTER), false), "open long enough");
        assert!(established(Some(Duration::from_millis(300)), true), "a push and its report went through");
    }
}
