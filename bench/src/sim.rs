//! Simulated agents: the real protocol over real gRPC + mTLS connections,
//! without touching the kernel.
//!
//! Each agent has its own node certificate, opens one `AgentService.Sync`
//! stream, says Hello with the digest and statuses it last applied, answers
//! every push with a Report that marks every interface applied, and
//! reconnects the way the real agent does (the agent crate's own jittered
//! backoff; the controller's Reconnect delay). It never writes a file and
//! never talks to the database. Tests may make an agent fail its pushes or
//! keep silent ([`Answer`]) and read what it received and answered, in
//! order ([`SimEvent`]).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use multinic_agent::backoff::{Backoff, jitter};
use multinic_proto::v1::agent_message::Kind as AgentKind;
use multinic_proto::v1::agent_service_client::AgentServiceClient;
use multinic_proto::v1::controller_message::Kind as ControllerKind;
use multinic_proto::v1::{self, AgentMessage};
use multinic_proto::{
    AgentHello, AgentReport, DesiredPush, Digest, ErrorCode, InterfaceName, InterfaceState, InterfaceStatus, NodeName,
    Outcome,
};
use multinic_tls::ClientTls;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

/// What the real agent uses (`multinic-agent`'s session defaults).
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
const HEALTHY_AFTER: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One simulated node agent.
#[derive(Debug)]
pub struct SimAgent {
    pub node: NodeName,
    tls: ClientTls,
    state: Mutex<Applied>,
    answer: Mutex<Answer>,
    events: Mutex<Vec<SimEvent>>,
}

/// How a simulated agent answers a push.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Answer {
    /// Every interface applied.
    #[default]
    Apply,
    /// Every interface failed (rolled back): it keeps what it had applied.
    Fail,
    /// No report at all (an agent stuck applying).
    Silent,
}

/// A push received or a report sent, with when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimEvent {
    pub at: Instant,
    /// A push received (else a report sent).
    pub push: bool,
    pub digest: Digest,
    /// A report of failed interfaces.
    pub failed: bool,
}

/// What the agent last applied and when it reported.
#[derive(Debug, Default, Clone)]
struct Applied {
    digest: Option<Digest>,
    statuses: Vec<InterfaceStatus>,
    reported_at: Option<SystemTime>,
}

impl SimAgent {
    pub fn new(node: NodeName, tls: ClientTls) -> Self {
        Self {
            node,
            tls,
            state: Mutex::new(Applied::default()),
            answer: Mutex::new(Answer::default()),
            events: Mutex::new(Vec::new()),
        }
    }

    /// How it answers the pushes it receives from now on.
    pub fn set_answer(&self, answer: Answer) {
        *self.answer.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = answer;
    }

    /// The pushes it received and the reports it sent, in order.
    pub fn events(&self) -> Vec<SimEvent> {
        self.events.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The digest it says it applied (its next Hello's).
    pub fn applied_digest(&self) -> Option<Digest> {
        self.applied().digest
    }

    fn note(&self, push: bool, digest: &Digest, failed: bool) {
        let event = SimEvent { at: Instant::now(), push, digest: digest.clone(), failed };
        self.events.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(event);
    }

    /// When the agent last sent a Report.
    pub fn reported_at(&self) -> Option<SystemTime> {
        self.applied().reported_at
    }

    /// Forgets what it applied (as a fresh node would).
    pub fn forget(&self) {
        *self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Applied::default();
    }

    fn applied(&self) -> Applied {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn set_applied(&self, applied: Applied) {
        *self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = applied;
    }
}

/// Counters over the whole simulated fleet.
#[derive(Debug, Default)]
pub struct FleetCounters {
    /// Agents with an open stream now.
    pub connected: AtomicUsize,
    /// Pushes received, all agents, all streams.
    pub pushes: AtomicU64,
    /// Streams opened, all agents.
    pub streams: AtomicU64,
}

/// A running simulated fleet aimed at one server.
#[derive(Debug)]
pub struct SimFleet {
    pub counters: Arc<FleetCounters>,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl SimFleet {
    /// Starts every agent against `url` (`https://host:port`). At most
    /// `connect_gate` handshakes are in flight during the first connects
    /// (later reconnects are not gated, like a real fleet's).
    pub fn start(agents: &[Arc<SimAgent>], url: &str, connect_gate: usize) -> Result<Self, crate::BenchError> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| crate::BenchError::Setup(format!("bad controller URL {url}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let counters = Arc::new(FleetCounters::default());
        let shutdown = CancellationToken::new();
        let gate = Arc::new(Semaphore::new(connect_gate.max(1)));
        let mut tasks = JoinSet::new();
        for agent in agents {
            let run = AgentRun {
                agent: agent.clone(),
                endpoint: endpoint.clone(),
                counters: counters.clone(),
                shutdown: shutdown.clone(),
                gate: Some(gate.clone()),
            };
            tasks.spawn(run.run());
        }
        Ok(Self { counters, shutdown, tasks })
    }

    pub fn connected(&self) -> usize {
        self.counters.connected.load(Ordering::Relaxed)
    }

    pub fn pushes(&self) -> u64 {
        self.counters.pushes.load(Ordering::Relaxed)
    }

    /// Closes every stream and waits for the agents to stop.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Why one stream ended.
enum StreamEnd {
    Shutdown,
    Reconnect(Duration),
    Lost,
}

/// One agent's connect–stream–reconnect loop.
struct AgentRun {
    agent: Arc<SimAgent>,
    endpoint: Endpoint,
    counters: Arc<FleetCounters>,
    shutdown: CancellationToken,
    /// Limits the first connect only.
    gate: Option<Arc<Semaphore>>,
}

impl AgentRun {
    async fn run(mut self) {
        let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_CAP);
        loop {
            let started = Instant::now();
            let delay = match self.stream_once().await {
                StreamEnd::Shutdown => return,
                StreamEnd::Reconnect(after) => {
                    backoff.reset();
                    jitter(after.max(Duration::from_millis(100)) * 2)
                }
                StreamEnd::Lost => {
                    if started.elapsed() >= HEALTHY_AFTER {
                        backoff.reset();
                    }
                    backoff.next_delay()
                }
            };
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.shutdown.cancelled() => return,
            }
        }
    }

    async fn stream_once(&mut self) -> StreamEnd {
        let permit = match &self.gate {
            Some(gate) => gate.clone().acquire_owned().await.ok(),
            None => None,
        };
        let channel = tokio::select! {
            channel = self.agent.tls.connect(&self.endpoint) => channel,
            () = self.shutdown.cancelled() => return StreamEnd::Shutdown,
        };
        let Ok(channel) = channel else { return StreamEnd::Lost };
        let mut client = AgentServiceClient::new(channel);
        let (tx, rx) = mpsc::channel::<AgentMessage>(4);
        let applied = self.agent.applied();
        let hello = AgentHello {
            node: self.agent.node.clone(),
            agent_version: "bench".into(),
            backend: "netplan".into(),
            apply_mode: "none".into(),
            applied_digest: applied.digest.clone(),
            interfaces: applied.statuses.clone(),
        };
        // The channel is empty and its receiver alive: this cannot fail.
        let _ = tx.send(AgentMessage { kind: Some(AgentKind::Hello(v1::Hello::from(&hello))) }).await;
        let mut inbound = match client.sync(ReceiverStream::new(rx)).await {
            Ok(response) => response.into_inner(),
            Err(_) => return StreamEnd::Lost,
        };
        // Connected: the gate only spreads out the first wave.
        drop(permit);
        self.gate = None;
        self.counters.streams.fetch_add(1, Ordering::Relaxed);
        let _connected = Connected::new(&self.counters);
        loop {
            let message = tokio::select! {
                () = self.shutdown.cancelled() => return StreamEnd::Shutdown,
                message = inbound.message() => message,
            };
            let kind = match message {
                Ok(Some(message)) => message.kind,
                Ok(None) | Err(_) => return StreamEnd::Lost,
            };
            match kind {
                Some(ControllerKind::Desired(desired)) => {
                    self.counters.pushes.fetch_add(1, Ordering::Relaxed);
                    let Some(report) = self.answer(&desired) else { continue };
                    if tx.send(AgentMessage { kind: Some(AgentKind::Report(report)) }).await.is_err() {
                        return StreamEnd::Lost;
                    }
                }
                Some(ControllerKind::Reconnect(r)) => {
                    return StreamEnd::Reconnect(Duration::from_millis(u64::from(r.after_ms)));
                }
                None => {}
            }
        }
    }

    /// Every interface of a valid push applied, or failed, or no answer, as
    /// the agent's [`Answer`] says (a malformed push is ignored: the
    /// controller never sends one here).
    fn answer(&self, desired: &v1::DesiredState) -> Option<v1::Report> {
        let push = DesiredPush::try_from(desired).ok()?;
        let answer = *self.agent.answer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.agent.note(true, push.set.digest(), false);
        if answer == Answer::Silent {
            return None;
        }
        let failed = answer == Answer::Fail;
        let statuses: Vec<InterfaceStatus> = push
            .set
            .iter()
            .enumerate()
            .filter_map(|(i, spec)| {
                let name = InterfaceName::new(u8::try_from(i).ok()?, multinic_proto::DEFAULT_CAPACITY)?;
                Some(match failed {
                    false => InterfaceStatus::applied(spec.mac, name),
                    true => InterfaceStatus::problem(
                        spec.mac,
                        Some(name),
                        InterfaceState::Failed,
                        ErrorCode::ApplyFailed,
                        "simulated: the MTU was refused; rolled back",
                    ),
                })
            })
            .collect();
        let report = AgentReport {
            generation: push.generation,
            nonce: push.nonce,
            digest: Some(push.set.digest().clone()),
            outcome: if failed { Outcome::Partial } else { Outcome::Applied },
            interfaces: statuses.clone(),
            error: String::new(),
            drift: Vec::new(),
        };
        // A failed apply was rolled back: the agent still has what it had.
        if !failed {
            self.agent.set_applied(Applied {
                digest: Some(push.set.digest().clone()),
                statuses,
                reported_at: Some(SystemTime::now()),
            });
        }
        self.agent.note(false, push.set.digest(), failed);
        Some(v1::Report::from(&report))
    }
}

/// Counts an open stream for as long as it lives.
struct Connected(Arc<FleetCounters>);

impl Connected {
    fn new(counters: &Arc<FleetCounters>) -> Self {
        counters.connected.fetch_add(1, Ordering::Relaxed);
        Self(counters.clone())
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.connected.fetch_sub(1, Ordering::Relaxed);
    }
}
