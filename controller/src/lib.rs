//! multinic-controller: the only component with database credentials.
//!
//! It polls `multi_interface` once per interval for the whole fleet, computes
//! each node's desired set, pushes changed sets to the nodes' agents over
//! gRPC, and records the agents' outcomes in `netplan_success`.
//!
//! ```text
//! Store::read_fleet ─▶ desired_fleet (pure) ─▶ Fleet::publish ─▶ agent sessions ─▶ agents
//!                                                  Fleet::record ◀─ reports ◀──────┘
//!                            Store::record ◀─ recorder (batched, conditional)
//! ```

pub mod args;
pub mod desired;
pub mod fleet;
pub mod grpc;
pub mod guard;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod recorder;
pub mod store;
pub mod sync;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use multinic_proto::v1::agent_service_server::AgentServiceServer;
use multinic_proto::v1::fleet_service_server::FleetServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::fleet::Fleet;
use crate::metrics::Metrics;
use crate::store::Store;

/// Messages larger than this are refused (a desired set of 100 interfaces is
/// a few KB).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// Everything a running controller needs.
#[derive(Clone)]
pub struct ControllerConfig {
    pub store: Arc<dyn Store>,
    /// Who may act: a MariaDB named lock, or always this process (SQLite).
    pub election: Arc<dyn leader::Election>,
    pub poll_interval: Duration,
    pub hello_timeout: Duration,
    /// How long shutdown waits for streams to drain.
    pub drain_timeout: Duration,
    /// When mass removals are held back.
    pub guard: guard::GuardConfig,
}

impl std::fmt::Debug for ControllerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerConfig")
            .field("store", &self.store.kind())
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

/// Errors that stop the controller.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server failed: {source}")]
    Grpc {
        #[source]
        source: tonic::transport::Error,
    },
    #[error("HTTP server failed: {source}")]
    Http {
        #[source]
        source: std::io::Error,
    },
}

/// A controller bound to its sockets, ready to serve.
#[derive(Debug)]
pub struct Controller {
    config: ControllerConfig,
    grpc: TcpListener,
    http: TcpListener,
    fleet: Arc<Fleet>,
    metrics: Arc<Metrics>,
}

impl Controller {
    /// Binds the gRPC and HTTP listeners (port 0 picks a free port).
    pub async fn bind(config: ControllerConfig, grpc: SocketAddr, http: SocketAddr) -> Result<Self, ServeError> {
        let grpc =
            TcpListener::bind(grpc).await.map_err(|source| ServeError::Bind { what: "gRPC", addr: grpc, source })?;
        let http =
            TcpListener::bind(http).await.map_err(|source| ServeError::Bind { what: "HTTP", addr: http, source })?;
        let fleet = Arc::new(Fleet::with_guard(config.guard));
        Ok(Self { config, grpc, http, fleet, metrics: Arc::new(Metrics::new()) })
    }

    /// The address agents and multinicctl connect to.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The address of `/healthz`, `/readyz` and `/metrics`.
    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The fleet state (for in-process users such as the demo and tests).
    pub fn fleet(&self) -> Arc<Fleet> {
        self.fleet.clone()
    }

    /// Serves until `shutdown` is cancelled, then tells agents to reconnect,
    /// drains streams for at most the drain timeout, and returns.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), ServeError> {
        let Self { config, grpc, http, fleet, metrics } = self;
        let ControllerConfig { store, election, poll_interval, hello_timeout, drain_timeout, guard: _ } = config;
        let serving = Arc::new(AtomicBool::new(false));

        let (recorder, recorder_task) =
            recorder::spawn(store.clone(), fleet.clone(), metrics.clone(), shutdown.clone());
        let poll = tokio::spawn(sync::poll_loop(
            store.clone(),
            election.clone(),
            fleet.clone(),
            recorder.clone(),
            metrics.clone(),
            poll_interval,
            shutdown.clone(),
        ));

        let http_state = http::HttpState { fleet: fleet.clone(), metrics: metrics.clone(), serving: serving.clone() };
        let http_shutdown = shutdown.clone();
        let http_server = tokio::spawn(async move {
            axum::serve(http, http::router(http_state))
                .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
                .await
                .map_err(|source| ServeError::Http { source })
        });

        let agent_svc = grpc::AgentSvc::new(fleet.clone(), recorder, metrics.clone(), shutdown.clone(), hello_timeout);
        let fleet_svc = grpc::FleetSvc::new(fleet.clone(), shutdown.clone());
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc);
        let grpc_shutdown = shutdown.clone();
        let server = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .tcp_nodelay(true)
            .add_service(
                AgentServiceServer::new(agent_svc)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(FleetServiceServer::new(fleet_svc).max_decoding_message_size(MAX_MESSAGE_BYTES))
            .serve_with_incoming_shutdown(incoming, async move { grpc_shutdown.cancelled().await });
        let server = tokio::spawn(server);
        serving.store(true, Ordering::Relaxed);
        info!(poll_interval = ?poll_interval, database = store.kind(), "controller serving");

        // On shutdown every agent stream sends Reconnect and ends itself; the
        // server stops accepting and waits for connections to close.
        shutdown.cancelled().await;
        serving.store(false, Ordering::Relaxed);
        info!(deadline = ?drain_timeout, "shutting down: telling agents to reconnect, draining streams");
        let abort = server.abort_handle();
        let result = tokio::time::timeout(drain_timeout, server).await;
        let _ = poll.await;
        let _ = recorder_task.await;
        let _ = http_server.await;
        // Let a standby take over now rather than when our connection times out.
        election.release().await;
        match result {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(source))) => Err(ServeError::Grpc { source }),
            Ok(Err(join)) => {
                warn!(error = %join, "gRPC server task ended abnormally");
                Ok(())
            }
            Err(_) => {
                abort.abort();
                warn!(deadline = ?drain_timeout, "streams did not drain in time; closing them");
                Ok(())
            }
        }
    }
}
