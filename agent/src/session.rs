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
use tracing::{Instrument, debug, info, info_span, warn};

use crate::backoff::{Backoff, jitter};
use crate::reconcile::{Reconciler, Scope};
use crate::status::{AgentStatus, Processed};

/// Largest message accepted from the controller.
const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// A stream that lived this long counts as healthy: backoff starts over.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);
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
}

/// Why a stream ended.
#[derive(Debug)]
enum StreamEnd {
    Shutdown,
    /// The controller asked us to reconnect after a delay.
    Reconnect(Duration),
    /// The stream closed or failed.
    Lost(String),
}

/// Runs sessions until `shutdown` is cancelled.
pub async fn run(
    config: SessionConfig,
    reconciler: Arc<Reconciler>,
    status: Arc<AgentStatus>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(config.backoff_base, config.backoff_cap);
    let mut attempt = 0u64;
    let mut applied = None;
    loop {
        attempt += 1;
        let started = Instant::now();
        let span = info_span!("stream", node = %config.node, attempt);
        let end = stream_once(&config, &reconciler, &status, &shutdown, &mut applied).instrument(span).await;
        status.set_connected(false);
        let delay = match end {
            StreamEnd::Shutdown => return,
            StreamEnd::Reconnect(after) => {
                info!(after = ?after, "controller asked us to reconnect");
                backoff.reset();
                jitter(after.max(Duration::from_millis(100)) * 2)
            }
            StreamEnd::Lost(reason) => {
                if started.elapsed() >= HEALTHY_AFTER {
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
            () = shutdown.cancelled() => return,
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
        backend: reconciler.backend().name().to_owned(),
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
                if let Some(report) = recheck_waiting(&waiting, applied, nonce, reconciler, status).await {
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
            let report = apply_push(&desired, reconciler, status, applied).await;
            debug!(nonce = desired.nonce, "sending report");
            if tx.send(AgentMessage { kind: Some(AgentKind::Report(report)) }).await.is_err() {
                return StreamEnd::Lost("the stream closed while reporting".into());
            }
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

/// Applies one push and builds the report.
async fn apply_push(
    msg: &v1::DesiredState,
    reconciler: &Arc<Reconciler>,
    status: &Arc<AgentStatus>,
    applied: &mut Option<Applied>,
) -> v1::Report {
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
            return v1::Report::from(&report);
        }
    };
    let span = info_span!("apply", generation = push.generation, digest = push.set.digest().short());
    let set = push.set.clone();
    let worker = reconciler.clone();
    let started = Instant::now();
    // The blocking thread enters the apply span itself (a span does not
    // follow a closure onto another thread), so every line carries it.
    let inner = span.clone();
    let outcome = tokio::task::spawn_blocking(move || inner.in_scope(|| worker.reconcile(&set))).await;
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(e) => {
            *applied = None;
            let report = AgentReport {
                generation: push.generation,
                nonce: push.nonce,
                digest: Some(push.set.digest().clone()),
                outcome: Outcome::Rejected,
                interfaces: Vec::new(),
                error: format!("internal error while applying: {e}"),
            };
            return v1::Report::from(&report);
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
    v1::Report::from(&report)
}

/// Applies the waiting interfaces whose NIC appeared, and only them; the
/// report for the last push, updated, when any did.
async fn recheck_waiting(
    waiting: &BTreeSet<MacAddress>,
    applied: &mut Option<Applied>,
    nonce: u64,
    reconciler: &Arc<Reconciler>,
    status: &Arc<AgentStatus>,
) -> Option<v1::Report> {
    let worker = reconciler.clone();
    let macs = waiting.clone();
    let appeared = match tokio::task::spawn_blocking(move || worker.present(&macs)).await {
        Ok(Ok(appeared)) if !appeared.is_empty() => appeared,
        Ok(Ok(_)) => return None,
        Ok(Err(e)) => {
            debug!(error = %e, "cannot read links to look for waiting NICs");
            return None;
        }
        Err(e) => {
            warn!(error = %e, "looking for waiting NICs panicked");
            return None;
        }
    };
    let last = applied.as_mut()?;
    let span =
        info_span!("apply", generation = last.generation, digest = last.set.digest().short(), trigger = "appeared");
    let (set, worker, only) = (last.set.clone(), reconciler.clone(), appeared.clone());
    let inner = span.clone();
    let outcome =
        match tokio::task::spawn_blocking(move || inner.in_scope(|| worker.reconcile_in(&set, Scope::Only(&only))))
            .await
        {
            Ok(outcome) => outcome,
            Err(e) => {
                warn!(error = %e, "applying an appeared NIC panicked");
                return None;
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
    Some(v1::Report::from(&report))
}
