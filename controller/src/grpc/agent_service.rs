//! `AgentService`: one bidirectional stream per node agent.
//!
//! A session waits for Hello, binds the stream to the node (from the
//! certificate when there is one), then pushes the node's desired set
//! whenever it differs from what the agent has processed, and records the
//! agent's reports. It never reads the database, and never believes a
//! Hello or Report that [`crate::claims`] refuses. A node has one current
//! stream: a newer one ends the older, and a certificate may hold only a
//! few open at once ([`super::limits`]).
//!
//! What to push, when a Hello is adopted as a report, which report answers
//! which push and when an aged connection ends are decided by
//! [`super::stream_rules`]; this module only performs those decisions
//! (sends, records in the fleet, counts, logs) and converts wire messages.

use std::num::NonZeroU64;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::Stream;
use multinic_proto::v1::agent_message::Kind as AgentKind;
use multinic_proto::v1::controller_message::Kind as ControllerKind;
use multinic_proto::v1::{self, AgentMessage, ControllerMessage};
use multinic_proto::{AgentHello, AgentReport, DesiredPush, Digest, NodeName};
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};

use super::limits::{AGENT_STREAMS_PER_NODE, StreamLimits, StreamPermit};
use super::stream_rules::{AgeStep, OnPublished, Refusal, StreamRules};
use crate::claims;
use crate::fleet::Fleet;
use crate::metrics::Metrics;
use crate::recorder::RecorderHandle;
use crate::tls::{Peer, PeerConnection};

/// How long a new stream may take to send Hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The `AgentService` implementation.
#[derive(Debug, Clone)]
pub struct AgentSvc {
    fleet: Arc<Fleet>,
    recorder: RecorderHandle,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    hello_timeout: Duration,
    /// Streams open now, and when shutdown began (spreads the reconnects
    /// asked for at shutdown).
    streams: Arc<AtomicUsize>,
    streams_at_shutdown: Arc<OnceLock<usize>>,
    /// Open streams per node certificate.
    limits: Arc<StreamLimits>,
}

impl AgentSvc {
    pub fn new(
        fleet: Arc<Fleet>,
        recorder: RecorderHandle,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        hello_timeout: Duration,
    ) -> Self {
        Self {
            fleet,
            recorder,
            metrics,
            shutdown,
            hello_timeout,
            streams: Arc::default(),
            streams_at_shutdown: Arc::default(),
            limits: StreamLimits::new("agent streams", AGENT_STREAMS_PER_NODE),
        }
    }
}

/// A stream's outgoing queue. Items are boxed: the queue allocates room
/// for 32 items at once, and an item unboxed (a message or a `Status`) is
/// about 180 bytes: almost 6 KB per stream for a queue that holds two.
struct Outbound(mpsc::Sender<Box<Result<ControllerMessage, Status>>>);

impl Outbound {
    /// Queues `item`; `Err` when the stream is gone.
    async fn send(&self, item: Result<ControllerMessage, Status>) -> Result<(), ()> {
        self.0.send(Box::new(item)).await.map_err(|_| ())
    }
}

#[tonic::async_trait]
impl v1::agent_service_server::AgentService for AgentSvc {
    type SyncStream = Pin<Box<dyn Stream<Item = Result<ControllerMessage, Status>> + Send>>;

    async fn sync(&self, request: Request<Streaming<AgentMessage>>) -> Result<Response<Self::SyncStream>, Status> {
        let peer = Peer::of(&request);
        if let Err(status) = peer.require_agent() {
            warn!(peer = %peer, "refused agent stream: {}", status.message());
            return Err(status);
        }
        if !self.fleet.leadership().is_active() {
            return Err(Status::unavailable(
                "this controller replica is on standby; retry (the Service routes to the active one)",
            ));
        }
        let permit = match &peer {
            Peer::Agent { node } => match self.limits.open(&format!("node {node}")) {
                Ok(permit) => Some(permit),
                Err(status) => {
                    self.metrics.rejected_messages.get_or_create(&vec![("reason", "too_many_streams")]).inc();
                    warn!(peer = %peer, "refused agent stream: {}", status.message());
                    return Err(status);
                }
            },
            _ => None,
        };
        let connection = PeerConnection::of(&request);
        let streams_end_at = connection.and_then(|c| c.streams_end_at);
        let remote = connection.map(|c| c.remote).or_else(|| request.remote_addr());
        let remote = remote.map(|a| a.to_string()).unwrap_or_default();
        let inbound = request.into_inner();
        // Small: newer desired sets coalesce in the node's watch channel, so a
        // slow agent only ever has the newest set waiting for it.
        let (tx, rx) = mpsc::channel(2);
        let tx = Outbound(tx);
        let session = Session { svc: self.clone(), peer: peer.clone(), streams_end_at, _permit: permit };
        let span = info_span!("agent_stream", peer = %peer, remote = %remote, node = tracing::field::Empty);
        tokio::spawn(session.run(inbound, tx).instrument(span));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(|item| *item))))
    }
}

/// Asks the agent to reconnect at once (a planned reconnect, not a failure:
/// the new connection is checked against current certificates), then ends
/// the stream with a retryable status for clients that ignore the request.
async fn ask_to_reconnect(tx: &Outbound) {
    let reconnect =
        v1::Reconnect { reason: "connection age limit reached: reconnect with fresh certificates".into(), after_ms: 0 };
    let _ = tx.send(Ok(ControllerMessage { kind: Some(ControllerKind::Reconnect(reconnect)) })).await;
    let _ = tx.send(Err(Status::unavailable("connection age limit reached: reconnect"))).await;
}

struct Session {
    svc: AgentSvc,
    peer: Peer,
    /// The connection age cap: the stream ends then (once no push awaits
    /// its report) and asks the agent to reconnect with fresh certificates.
    streams_end_at: Option<tokio::time::Instant>,
    /// Counts this stream against its certificate's limit while it lives.
    _permit: Option<StreamPermit>,
}

impl Session {
    async fn run(self, mut inbound: Streaming<AgentMessage>, tx: Outbound) {
        // Boxed: its state would otherwise widen every stream's task for its
        // whole life (by about 700 bytes, of about 2.4 KB).
        let Some(hello) = Box::pin(self.hello(&mut inbound, &tx)).await else { return };
        // With mTLS the node is the certificate's (Hello was checked to match).
        let node = match &self.peer {
            Peer::Agent { node } => node.clone(),
            _ => hello.node.clone(),
        };
        tracing::Span::current().record("node", node.as_str());
        let fleet = &self.svc.fleet;
        let (session, mut published, replaced) = fleet.sessions().connect(&hello);
        let _open = OpenStream::new(&self.svc.streams);
        let mut active = fleet.leadership().subscribe();
        info!(
            agent_version = %hello.agent_version,
            backend = %hello.backend,
            apply = %hello.apply_mode,
            applied_digest = hello.applied_digest.as_ref().map_or("", Digest::short),
            "agent connected"
        );

        let mut rules = StreamRules::new(hello.applied_digest.clone());
        // The Hello may already be the agent's report on the published set.
        self.adopt(&mut rules, session, &hello, &node);
        published.mark_changed();

        let far = tokio::time::Instant::now() + Duration::from_secs(10 * 365 * 86_400);
        let age_limit = tokio::time::sleep_until(self.streams_end_at.unwrap_or(far));
        tokio::pin!(age_limit);
        let end = loop {
            if rules.ends_for_age() {
                ask_to_reconnect(&tx).await;
                break "connection age limit reached";
            }
            tokio::select! {
                () = self.svc.shutdown.cancelled() => {
                    let streams = *self.svc.streams_at_shutdown.get_or_init(|| self.svc.streams.load(Ordering::Relaxed));
                    let after = shutdown_reconnect_delay(streams, fastrand::f64());
                    let _ = tx.send(Ok(reconnect("controller shutting down", after))).await;
                    break "controller shutting down";
                }
                () = replaced.cancelled() => {
                    let _ = tx.send(Err(Status::aborted("replaced by a newer stream from the same node"))).await;
                    break "replaced by a newer stream";
                }
                _ = active.changed() => {
                    if !*active.borrow_and_update() {
                        let _ = tx.send(Ok(reconnect("this replica lost the controller lock", RECONNECT_AFTER))).await;
                        break "lost the controller lock";
                    }
                }
                () = &mut age_limit => match rules.age_limit() {
                    AgeStep::End => {
                        ask_to_reconnect(&tx).await;
                        break "connection age limit reached (no report in time)";
                    }
                    // End at the top of the loop, or once the push being
                    // applied is reported (at most the grace later).
                    AgeStep::Grace(grace) => {
                        age_limit.as_mut().reset(tokio::time::Instant::now() + grace);
                        debug!("connection age limit reached");
                    }
                },
                changed = published.changed(), if rules.takes_pushes() => {
                    if changed.is_err() || !fleet.sessions().is_current(&node, session) {
                        let _ = tx.send(Err(Status::aborted("replaced by a newer stream from the same node"))).await;
                        break "replaced by a newer stream";
                    }
                    let Some(current) = published.borrow_and_update().clone() else { continue };
                    match rules.on_published(&current) {
                        OnPublished::Nothing => continue,
                        // The agent connected before this set was first
                        // published (a controller just started): its Hello
                        // is its report, as if the set had been there.
                        OnPublished::Adopt => {
                            self.adopt(&mut rules, session, &hello, &node);
                            continue;
                        }
                        OnPublished::Push => {}
                    }
                    let nonce = NonZeroU64::new(fastrand::u64(1..)).unwrap_or(NonZeroU64::MIN);
                    let push = DesiredPush { generation: current.generation, nonce: nonce.get(), set: current.set.clone() };
                    let msg = ControllerMessage { kind: Some(ControllerKind::Desired(v1::DesiredState::from(&push))) };
                    if tx.send(Ok(msg)).await.is_err() {
                        break "stream closed";
                    }
                    self.svc.metrics.pushes.inc();
                    fleet.sessions().pushed(&node, session, current.generation);
                    info!(
                        generation = current.generation,
                        interfaces = current.set.len(),
                        held = current.set.held().len(),
                        digest = current.set.digest().short(),
                        "pushed desired state"
                    );
                    rules.pushed(current, nonce);
                }
                message = inbound.message() => match message {
                    Ok(Some(AgentMessage { kind: Some(AgentKind::Report(report)) })) => {
                        fleet.sessions().seen(&node);
                        self.report(&node, session, &mut rules, &report);
                    }
                    Ok(Some(_)) => {
                        self.reject("unexpected", "ignored a message that is not a Report after Hello");
                    }
                    Ok(None) => break "agent closed the stream",
                    Err(status) => {
                        debug!(code = ?status.code(), error = %status.message(), "stream error");
                        // Tell the agent why (it may still be listening), e.g. a
                        // message over the size limit.
                        let _ = tx.send(Err(Status::new(status.code(), format!("cannot read the stream: {}", status.message())))).await;
                        break "stream error";
                    }
                },
            }
        };
        fleet.sessions().disconnect(&node, session);
        info!(reason = end, "agent disconnected");
    }

    /// Takes the agent's Hello as its report on the published set, if the
    /// rules still allow it and the fleet finds that it fits.
    fn adopt(&self, rules: &mut StreamRules, session: u64, hello: &AgentHello, node: &NodeName) {
        if !rules.may_adopt() {
            return;
        }
        if let Some(adopted) = self.svc.fleet.sessions().adopt(session, hello) {
            debug!(generation = adopted.generation, "agent already has the desired set; nothing to push");
            rules.adopted(adopted);
            self.svc.recorder.dirty(node.clone());
        }
    }

    /// Waits for a valid Hello; answers the agent with a clear status otherwise.
    async fn hello(&self, inbound: &mut Streaming<AgentMessage>, tx: &Outbound) -> Option<AgentHello> {
        let refuse = |status: Status| async move {
            warn!(peer = %self.peer, "refused agent stream: {}", status.message());
            let _ = tx.send(Err(status)).await;
            None
        };
        let first = match tokio::time::timeout(self.svc.hello_timeout, inbound.message()).await {
            Err(_) => {
                self.reject("no_hello", "no Hello");
                let timeout = self.svc.hello_timeout.as_secs();
                return refuse(Status::deadline_exceeded(format!("no Hello within {timeout}s"))).await;
            }
            Ok(Err(status)) => {
                // E.g. a message over the size limit: say why before closing.
                self.reject("malformed", "stream failed before Hello");
                return refuse(Status::new(status.code(), format!("cannot read Hello: {}", status.message()))).await;
            }
            Ok(Ok(None)) => return None,
            Ok(Ok(Some(message))) => message,
        };
        let Some(AgentKind::Hello(hello)) = first.kind else {
            self.reject("no_hello", "first message was not Hello");
            return refuse(Status::invalid_argument("the first message on the stream must be Hello")).await;
        };
        let hello = match AgentHello::try_from(&hello) {
            Ok(hello) => hello,
            Err(e) => {
                self.reject("malformed", "malformed Hello");
                return refuse(Status::invalid_argument(format!("invalid Hello: {e}"))).await;
            }
        };
        if let Peer::Agent { node } = &self.peer
            && *node != hello.node
        {
            self.reject("wrong_node", "Hello names another node");
            return refuse(Status::permission_denied(format!(
                "certificate is for node {node} but Hello names node {}",
                hello.node
            )))
            .await;
        }
        if let Err(e) = claims::check_hello(&hello.interfaces) {
            self.reject(e.reason(), "Hello not believed");
            return refuse(Status::invalid_argument(format!("Hello of node {} not believed: {e}", hello.node))).await;
        }
        Some(hello)
    }

    /// Records a report if it answers the push this stream is on.
    fn report(&self, node: &NodeName, session: u64, rules: &mut StreamRules, report: &v1::Report) {
        let report = match AgentReport::try_from(report) {
            Ok(report) => report,
            Err(e) => {
                self.reject("malformed", "malformed Report");
                warn!(error = %e, "ignored a malformed report");
                return;
            }
        };
        let published = match rules.answered(&report) {
            Ok(published) => published,
            Err(refusal) => {
                self.reject(refusal.reason(), refusal.what());
                match refusal {
                    Refusal::NoSuchPush => warn!(
                        nonce = report.nonce,
                        generation = report.generation,
                        "ignored a report for a push this stream is not on"
                    ),
                    Refusal::DigestMismatch => {
                        warn!(generation = report.generation, "ignored a report whose digest is not the pushed set's")
                    }
                    Refusal::NotBelieved(e) => warn!(
                        generation = report.generation,
                        error = %e,
                        "ignored a report that does not fit the push it answers"
                    ),
                }
                return;
            }
        };
        self.svc.metrics.reports.get_or_create(&vec![("outcome", report.outcome.as_str())]).inc();
        if report.outcome == multinic_proto::Outcome::Rejected {
            warn!(generation = report.generation, reason = %report.error, "agent rejected the push");
        }
        match self.svc.fleet.sessions().record(node, session, &published, &report) {
            Ok(()) => {
                if rules.recorded() {
                    self.svc.metrics.convergence_seconds.observe(published.age().as_secs_f64());
                }
                info!(
                    generation = report.generation,
                    outcome = report.outcome.as_str(),
                    interfaces = report.interfaces.len(),
                    drift = report.drift.len(),
                    "agent reported"
                );
                for finding in &report.drift {
                    let labels = vec![("kind", finding.kind.as_str()), ("action", finding.action.as_str())];
                    self.svc.metrics.drift_findings.get_or_create(&labels).inc();
                }
                self.svc.recorder.dirty(node.clone());
            }
            Err(e) => warn!(error = %e, "report not recorded"),
        }
    }

    fn reject(&self, reason: &'static str, what: &str) {
        self.svc.metrics.rejected_messages.get_or_create(&vec![("reason", reason)]).inc();
        debug!(peer = %self.peer, reason, "{what}");
    }
}

/// How long agents wait before reconnecting to another replica.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// Tells the agent to reconnect (to whichever replica is active) after
/// `after` (it waits between once and twice that, jittered).
fn reconnect(reason: &str, after: Duration) -> ControllerMessage {
    let after_ms = u32::try_from(after.as_millis()).unwrap_or(u32::MAX);
    ControllerMessage { kind: Some(ControllerKind::Reconnect(v1::Reconnect { reason: reason.to_owned(), after_ms })) }
}

/// The delay asked of one agent at shutdown: [`RECONNECT_AFTER`] plus a
/// share (`spread`, in 0..1) of a quarter millisecond per open stream, so
/// that a whole fleet does not hand the next controller every TLS handshake
/// in the same second (agents wait once to twice the delay: 10,000 of them
/// come back over about 1 to 7 s).
pub fn shutdown_reconnect_delay(streams: usize, spread: f64) -> Duration {
    let window = Duration::from_micros(250).saturating_mul(u32::try_from(streams).unwrap_or(u32::MAX));
    RECONNECT_AFTER + window.mul_f64(spread.clamp(0.0, 1.0))
}

/// Counts an open stream while it lives.
struct OpenStream(Arc<AtomicUsize>);

impl OpenStream {
    fn new(streams: &Arc<AtomicUsize>) -> Self {
        streams.fetch_add(1, Ordering::Relaxed);
        Self(streams.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_reconnects_spread_with_the_fleet() {
        assert_eq!(shutdown_reconnect_delay(0, 0.7), RECONNECT_AFTER);
        assert_eq!(shutdown_reconnect_delay(10_000, 0.0), RECONNECT_AFTER);
        assert_eq!(shutdown_reconnect_delay(10_000, 1.0), RECONNECT_AFTER + Duration::from_millis(2500));
        assert_eq!(shutdown_reconnect_delay(10_000, 2.0), RECONNECT_AFTER + Duration::from_millis(2500), "clamped");
    }
}
