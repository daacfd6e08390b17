//! The agent's side of the stream, and only that: connect, say Hello, turn
//! each frame into a [`Command`] for the [`Worker`], send what it answers,
//! and reconnect with jittered backoff when the stream ends.
//!
//! A push that does not parse becomes [`Command::Reject`] here, at the edge
//! (the worker rejects it whole and changes nothing). While a push is being
//! applied newer pushes queue up; only the newest of them is handed on next
//! (newer pushes supersede older ones). Work the agent starts by itself
//! (a waiting NIC appeared) is the worker's to schedule ([`Worker::due`]):
//! the session sleeps as long as it says, hands the command back and sends
//! the report, if there is one, as an unsolicited Report. The session keeps
//! only the stream's own state: the nonce of its last push (what such a
//! report answers; 0 when the controller adopted our Hello) and how far the
//! stream got, for the backoff. It owns no applied set and no apply status.
//!
//! Backoff starts over once a stream was established: it stayed open
//! [`ESTABLISHED_AFTER`] (the controller refuses a bad Hello at once), or
//! carried a push and our report. A controller that accepts and drops
//! streams sooner (crash-looping) keeps the delay growing to its cap.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use multinic_proto::v1::agent_message::Kind as AgentKind;
use multinic_proto::v1::agent_service_client::AgentServiceClient;
use multinic_proto::v1::controller_message::Kind as ControllerKind;
use multinic_proto::v1::{self, AgentMessage, ControllerMessage};
use multinic_proto::{DesiredPush, Digest, MAX_MESSAGE_BYTES, NodeName};
use multinic_tls::ClientTls;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::backoff::{Backoff, jitter};
use crate::status::AgentStatus;
use crate::worker::{ApplyAbandoned, Command, RejectedPush, Worker};

/// A stream open this long was established: backoff starts over.
pub const ESTABLISHED_AFTER: Duration = Duration::from_secs(5);

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

/// Why a stream was lost (the session then reconnects).
#[derive(Debug, thiserror::Error)]
pub enum StreamLost {
    #[error("invalid controller address {address:?}: {source}")]
    Address {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot connect to {address}: {}", multinic_runtime::error_chain(.source))]
    Connect {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// The controller refused the stream or ended it with a status.
    #[error("{:?}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    #[error("the controller closed the stream")]
    Closed,
    #[error("the stream closed while reporting")]
    ReportNotSent,
}

/// Why a stream ended.
#[derive(Debug)]
enum StreamEnd {
    Shutdown,
    /// The controller asked us to reconnect after a delay.
    Reconnect(Duration),
    Lost(StreamLost),
    /// Shutdown came while an apply was still running and it did not end in time.
    Abandoned(ApplyAbandoned),
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

/// Runs sessions until `shutdown` is cancelled, handing every command to
/// `worker` (which outlives the streams).
pub async fn run(
    config: SessionConfig,
    mut worker: Worker,
    status: Arc<AgentStatus>,
    shutdown: CancellationToken,
) -> Result<(), ApplyAbandoned> {
    let mut backoff = Backoff::new(config.backoff_base, config.backoff_cap);
    let mut attempt = 0u64;
    loop {
        attempt += 1;
        let mut life = StreamLife::default();
        let span = info_span!("stream", node = %config.node, attempt);
        let end = stream_once(&config, &mut worker, &status, &shutdown, &mut life).instrument(span).await;
        status.set_connected(false);
        let delay = match end {
            StreamEnd::Shutdown => return Ok(()),
            StreamEnd::Abandoned(abandoned) => return Err(abandoned),
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
async fn connect(config: &SessionConfig) -> Result<Channel, StreamLost> {
    let address = || config.controller.clone();
    let endpoint = Endpoint::from_shared(config.controller.clone())
        .map_err(|source| StreamLost::Address { address: address(), source })?
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let channel = match &config.tls {
        Some(tls) => tls.connect(&endpoint).await,
        None => endpoint.connect().await,
    };
    channel.map_err(|source| StreamLost::Connect { address: address(), source })
}

async fn stream_once(
    config: &SessionConfig,
    worker: &mut Worker,
    status: &AgentStatus,
    shutdown: &CancellationToken,
    life: &mut StreamLife,
) -> StreamEnd {
    let channel = tokio::select! {
        result = connect(config) => match result {
            Ok(channel) => channel,
            Err(lost) => return StreamEnd::Lost(lost),
        },
        () = shutdown.cancelled() => return StreamEnd::Shutdown,
    };
    let mut client = AgentServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel::<AgentMessage>(4);
    let hello = worker.hello(&config.node);
    let applied_digest = hello.applied_digest.as_ref().map_or_else(String::new, |d| d.short().to_owned());
    // The channel is empty and its receiver alive: this cannot fail.
    let _ = tx.send(AgentMessage { kind: Some(AgentKind::Hello(v1::Hello::from(&hello))) }).await;
    let mut inbound = match client.sync(ReceiverStream::new(rx)).await {
        Ok(response) => response.into_inner(),
        Err(refused) => return StreamEnd::Lost(StreamLost::Status(refused)),
    };
    status.set_connected(true);
    life.opened = Some(Instant::now());
    info!(controller = %config.controller, applied_digest = %applied_digest, "connected to the controller");
    // The nonce of the last push on this stream; 0 until one arrives (what
    // the controller expects when it adopted our Hello).
    let mut nonce = 0u64;
    loop {
        let mut due = worker.due(nonce);
        let wake = due.as_ref().map(|(after, _)| *after);
        let message = tokio::select! {
            () = shutdown.cancelled() => return close(tx, inbound).await,
            message = inbound.message() => message,
            () = tokio::time::sleep(wake.unwrap_or_default()), if wake.is_some() => {
                let Some((_, command)) = due.take() else { continue };
                let report = match worker.handle(command).await {
                    Ok(report) => report,
                    Err(abandoned) => return StreamEnd::Abandoned(abandoned),
                };
                if let Some(report) = report {
                    debug!(nonce, "sending an unsolicited report");
                    if tx.send(AgentMessage { kind: Some(AgentKind::Report(v1::Report::from(&report))) }).await.is_err() {
                        return StreamEnd::Lost(StreamLost::ReportNotSent);
                    }
                }
                continue;
            }
        };
        let message = match message {
            Ok(Some(message)) => message,
            Ok(None) => return StreamEnd::Lost(StreamLost::Closed),
            Err(ended) => return StreamEnd::Lost(StreamLost::Status(ended)),
        };
        let (desired, reconnect) = newest(message, &mut inbound);
        if let Some(desired) = desired {
            nonce = desired.nonce;
            let report = match worker.handle(command(&desired)).await {
                Ok(report) => report,
                Err(abandoned) => return StreamEnd::Abandoned(abandoned),
            };
            if let Some(report) = report {
                debug!(nonce, "sending report");
                if tx.send(AgentMessage { kind: Some(AgentKind::Report(v1::Report::from(&report))) }).await.is_err() {
                    return StreamEnd::Lost(StreamLost::ReportNotSent);
                }
                life.answered = true;
            }
        }
        if let Some(after) = reconnect {
            return StreamEnd::Reconnect(after);
        }
    }
}

/// A push as the worker takes it: parsed, or rejected whole with the reason.
fn command(desired: &v1::DesiredState) -> Command {
    match DesiredPush::try_from(desired) {
        Ok(push) => Command::Push(push),
        Err(error) => Command::Reject(RejectedPush {
            generation: desired.generation,
            nonce: desired.nonce,
            digest: Digest::from_wire(&desired.digest),
            error,
        }),
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
