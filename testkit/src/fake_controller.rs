//! A scripted controller: it serves `AgentService` on a given socket, sends
//! exactly the pushes a test asks for, and records every Hello and Report.
//!
//! For agent tests that must control when and what is pushed (a crash in
//! the middle of a change, a repeated identical push). The real controller,
//! with its database, is in [`crate::fleet`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use multinic_proto::v1::agent_message::Kind as AgentKind;
use multinic_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use multinic_proto::v1::controller_message::Kind as ControllerKind;
use multinic_proto::v1::{self, AgentMessage, ControllerMessage};
use multinic_proto::{AgentHello, AgentReport, DesiredPush, DesiredSet};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

type Outbound = mpsc::Sender<Result<ControllerMessage, Status>>;

#[derive(Debug, Default)]
struct Recorded {
    hellos: Vec<AgentHello>,
    reports: Vec<AgentReport>,
    /// The newest stream (pushes go there).
    stream: Option<Outbound>,
    /// New streams are refused (`UNAVAILABLE`), as by a controller starting up.
    refusing: bool,
}

/// A controller that does what the test says.
#[derive(Debug)]
pub struct FakeController {
    recorded: Arc<Mutex<Recorded>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Clone)]
struct Svc {
    recorded: Arc<Mutex<Recorded>>,
}

#[tonic::async_trait]
impl AgentService for Svc {
    type SyncStream = ReceiverStream<Result<ControllerMessage, Status>>;

    async fn sync(&self, request: Request<Streaming<AgentMessage>>) -> Result<Response<Self::SyncStream>, Status> {
        if lock(&self.recorded).refusing {
            return Err(Status::unavailable("the scripted controller is refusing streams"));
        }
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        lock(&self.recorded).stream = Some(tx);
        let recorded = self.recorded.clone();
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                match message.kind {
                    Some(AgentKind::Hello(hello)) => {
                        let hello = AgentHello::try_from(&hello).expect("the agent sent a valid Hello");
                        lock(&recorded).hellos.push(hello);
                    }
                    Some(AgentKind::Report(report)) => {
                        let report = AgentReport::try_from(&report).expect("the agent sent a valid Report");
                        lock(&recorded).reports.push(report);
                    }
                    None => {}
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl FakeController {
    /// Serves on `listener` (e.g. one made inside a test namespace).
    pub fn serve(listener: std::net::TcpListener) -> Self {
        let recorded = Arc::new(Mutex::new(Recorded::default()));
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        let service = AgentServiceServer::new(Svc { recorded: recorded.clone() });
        let task = tokio::spawn(async move {
            let incoming = TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await;
        });
        Self { recorded, task }
    }

    /// Waits for the `n`th Hello (1-based) and returns it.
    pub async fn hello(&self, n: usize, timeout: Duration) -> AgentHello {
        crate::eventually(timeout, &format!("Hello #{n}"), || async { lock(&self.recorded).hellos.get(n - 1).cloned() })
            .await
    }

    /// Pushes `set` as `generation` on the newest stream; returns the nonce.
    pub async fn push(&self, generation: u64, set: &DesiredSet) -> u64 {
        let nonce = 1000 + generation * 7 + u64::from(fastrand_u16());
        let push = DesiredPush { generation, nonce, set: set.clone() };
        let message = ControllerMessage { kind: Some(ControllerKind::Desired(v1::DesiredState::from(&push))) };
        let stream = crate::eventually(Duration::from_secs(10), "an agent stream", || async {
            lock(&self.recorded).stream.clone()
        })
        .await;
        stream.send(Ok(message)).await.expect("the agent stream is open");
        nonce
    }

    /// Waits for a report on `nonce` that satisfies `accept`; returns it.
    pub async fn report(
        &self,
        nonce: u64,
        timeout: Duration,
        what: &str,
        accept: impl Fn(&AgentReport) -> bool,
    ) -> AgentReport {
        crate::eventually(timeout, what, || async {
            lock(&self.recorded).reports.iter().rev().find(|r| r.nonce == nonce && accept(r)).cloned()
        })
        .await
    }

    /// Ends the current stream with `UNAVAILABLE`, as a controller that
    /// dies does, and refuses new ones while `refuse` is set (a restart).
    pub async fn end_streams(&self, refuse: bool) {
        let stream = {
            let mut recorded = lock(&self.recorded);
            recorded.refusing = refuse;
            recorded.stream.take()
        };
        if let Some(stream) = stream {
            let _ = stream.send(Err(Status::unavailable("the scripted controller went away"))).await;
        }
    }

    /// Accepts streams again after [`Self::end_streams`].
    pub fn accept_streams(&self) {
        lock(&self.recorded).refusing = false;
    }

    /// Hellos received so far.
    pub fn hellos(&self) -> usize {
        lock(&self.recorded).hellos.len()
    }

    /// Every report received so far.
    pub fn reports(&self) -> Vec<AgentReport> {
        lock(&self.recorded).reports.clone()
    }
}

impl Drop for FakeController {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A little randomness for nonces without another dependency.
fn fastrand_u16() -> u16 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    (nanos % 65_521) as u16
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
