//! multinic-controller: the only component with database credentials.
//!
//! It probes `multi_interface` once per interval, reads only the rows that
//! changed (the whole fleet at start and now and then), recomputes the
//! desired sets of the nodes those rows touch, pushes changed sets to the
//! nodes' agents over gRPC, and records the agents' outcomes in
//! `netplan_success`.
//!
//! ```text
//! RowFeed: Store::probe ─▶ ChangeTracker (pure) ─▶ Store::read_changed | read_fleet ─▶ RowCopy (pure)
//!   ─▶ node_desired (pure, touched nodes) ─▶ Publisher::publish_nodes ─▶ agent sessions ─▶ agents
//!                                            Sessions::record ◀─ reports ◀──────┘
//!                 Store::record ◀─ recorder (batched multi-row conditional UPDATEs)
//! ```

pub mod alert_metrics;
pub mod args;
pub mod change;
pub mod claims;
pub mod desired;
pub mod feed;
pub mod fleet;
pub mod grpc;
pub mod guard;
pub mod http;
pub mod issuer;
pub mod leader;
pub mod metrics;
pub mod recorder;
pub mod rollout;
pub mod row_copy;
pub mod store;
pub mod sync;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use multinic_proto::MAX_MESSAGE_BYTES;
use multinic_proto::v1::agent_service_server::AgentServiceServer;
use multinic_proto::v1::fleet_service_server::FleetServiceServer;
use multinic_proto::v1::issuer_service_server::IssuerServiceServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::fleet::Fleet;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::tls::{AcceptPolicy, HandshakeStats, TlsConfig, Transport};

/// Everything a running controller needs.
#[derive(Clone)]
pub struct ControllerConfig {
    pub store: Arc<dyn Store>,
    /// Who may act: a MariaDB named lock, or always this process (SQLite).
    pub election: Arc<dyn leader::Election>,
    pub poll_interval: Duration,
    /// The whole fleet is read at least this often, whatever the probe says.
    pub full_read_interval: Duration,
    pub hello_timeout: Duration,
    /// How long shutdown waits for streams to drain.
    pub drain_timeout: Duration,
    /// When mass removals are held back.
    pub guard: guard::GuardConfig,
    /// A push the agent has not answered for this long shows in status.
    pub push_answer_timeout: Duration,
    /// When changes of many nodes are released in waves.
    pub rollout: rollout::RolloutConfig,
    /// mTLS (the default of the binary) or plaintext (`--insecure`).
    pub transport: Transport,
}

impl std::fmt::Debug for ControllerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerConfig")
            .field("store", &self.store.kind())
            .field("poll_interval", &self.poll_interval)
            .field("tls", &matches!(self.transport, Transport::Mutual(_)))
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
    #[error("TLS configuration: {source}")]
    Tls {
        #[source]
        source: multinic_tls::Error,
    },
}

/// A controller bound to its sockets, ready to serve.
#[derive(Debug)]
pub struct Controller {
    config: ControllerConfig,
    grpc: TcpListener,
    http: TcpListener,
    /// The issuer's own port (server-authenticated TLS only), when enabled.
    issuer: Option<TcpListener>,
    fleet: Arc<Fleet>,
    metrics: Arc<Metrics>,
    handshakes: Arc<HandshakeStats>,
}

impl Controller {
    /// Binds the gRPC and HTTP listeners, and the issuer's when configured
    /// (port 0 picks a free port).
    pub async fn bind(config: ControllerConfig, grpc: SocketAddr, http: SocketAddr) -> Result<Self, ServeError> {
        let grpc =
            TcpListener::bind(grpc).await.map_err(|source| ServeError::Bind { what: "gRPC", addr: grpc, source })?;
        let http =
            TcpListener::bind(http).await.map_err(|source| ServeError::Bind { what: "HTTP", addr: http, source })?;
        let issuer = match &config.transport {
            Transport::Mutual(tls) => match &tls.issuer {
                Some(issuer) => Some(TcpListener::bind(issuer.listen).await.map_err(|source| ServeError::Bind {
                    what: "issuer",
                    addr: issuer.listen,
                    source,
                })?),
                None => None,
            },
            Transport::Insecure => None,
        };
        let metrics = Arc::new(Metrics::new());
        let fleet = Arc::new(
            Fleet::with_guard(config.guard)
                .answer_within(config.push_answer_timeout)
                .with_rollouts(config.rollout, metrics.rollouts.clone()),
        );
        Ok(Self { config, grpc, http, issuer, fleet, metrics, handshakes: Arc::new(HandshakeStats::default()) })
    }

    /// The address agents and multinicctl connect to.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The address of `/healthz`, `/readyz` and `/metrics`.
    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The issuer's address, when issuance is enabled.
    pub fn issuer_addr(&self) -> Option<SocketAddr> {
        self.issuer.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The fleet state (for in-process users such as the demo and tests).
    pub fn fleet(&self) -> Arc<Fleet> {
        self.fleet.clone()
    }

    /// TLS handshake outcomes of the gRPC port.
    pub fn handshakes(&self) -> Arc<HandshakeStats> {
        self.handshakes.clone()
    }

    /// Serves until `shutdown` is cancelled, then tells agents to reconnect,
    /// drains streams for at most the drain timeout, and returns.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), ServeError> {
        let Self { config, grpc, http, issuer, fleet, metrics, handshakes } = self;
        let ControllerConfig {
            store,
            election,
            poll_interval,
            full_read_interval,
            hello_timeout,
            drain_timeout,
            transport,
            guard: _,
            push_answer_timeout: _,
            rollout: _,
        } = config;
        let serving = Arc::new(AtomicBool::new(false));
        let certificates = alert_metrics::WatchedCertificates::of(&transport);
        // TLS configurations first: an error here must not leave tasks behind.
        let transport = Prepared::new(transport)?;

        let recorder::Recorder { handle: recorder, task: recorder_task, recorded } =
            recorder::spawn(store.clone(), fleet.clone(), metrics.clone(), shutdown.clone());
        let poll_loop = sync::PollLoop {
            store: store.clone(),
            election: election.clone(),
            fleet: fleet.clone(),
            recorder: recorder.clone(),
            recorded,
            metrics: metrics.clone(),
            interval: poll_interval,
            full_read_interval,
        };
        let poll = tokio::spawn(poll_loop.run(shutdown.clone()));

        let http_state = http::HttpState {
            fleet: fleet.clone(),
            metrics: metrics.clone(),
            serving: serving.clone(),
            handshakes: handshakes.clone(),
            certificates,
        };
        let http_shutdown = shutdown.clone();
        let http_server = tokio::spawn(async move {
            axum::serve(http, http::router(http_state))
                .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
                .await
                .map_err(|source| ServeError::Http { source })
        });

        let agent_svc = grpc::AgentSvc::new(fleet.clone(), recorder, metrics.clone(), shutdown.clone(), hello_timeout);
        let fleet_svc = grpc::FleetSvc::new(fleet.clone(), shutdown.clone());
        let grpc_shutdown = shutdown.clone();
        let mut builder = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .tcp_nodelay(true);
        if let Prepared::Mutual { tls, .. } = &transport {
            // Idle and unary-only connections close at the cap too (GOAWAY);
            // agent streams are ended by their handler a little earlier.
            builder = builder.max_connection_age(tls.max_connection_age);
        }
        let router = builder
            .add_service(
                AgentServiceServer::new(agent_svc)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(FleetServiceServer::new(fleet_svc).max_decoding_message_size(MAX_MESSAGE_BYTES));
        let signal = async move { grpc_shutdown.cancelled().await };
        let (server, issuer_server) = match transport {
            Prepared::Mutual { tls, grpc: config, issuer: issuer_config } => {
                let policy = AcceptPolicy {
                    trust_domain: Some(tls.trust_domain.clone()),
                    max_connection_age: tls.max_connection_age,
                    handshake_timeout: tls.handshake_timeout,
                };
                let incoming = tls::tls_incoming("grpc", grpc, config, policy, handshakes);
                let issuer_server = match (issuer, &tls.issuer, issuer_config) {
                    (Some(listener), Some(issuer), Some(config)) => {
                        Some(serve_issuer(listener, issuer, config, &tls, shutdown.clone()))
                    }
                    _ => None,
                };
                info!(
                    trust_domain = %tls.trust_domain,
                    max_connection_age = ?tls.max_connection_age,
                    issuer = issuer_server.is_some(),
                    "gRPC requires TLS 1.3 with client certificates"
                );
                (tokio::spawn(router.serve_with_incoming_shutdown(incoming, signal)), issuer_server)
            }
            Prepared::Insecure => {
                warn!("serving plaintext gRPC without client certificates (--insecure): any peer can claim any node");
                // Server::tcp_nodelay only applies to listeners tonic binds itself.
                let incoming =
                    tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(grpc), |tcp| {
                        tcp.inspect(|tcp| {
                            let _ = tcp.set_nodelay(true);
                        })
                    });
                (tokio::spawn(router.serve_with_incoming_shutdown(incoming, signal)), None)
            }
        };
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
        if let Some(issuer) = issuer_server {
            let abort = issuer.abort_handle();
            if tokio::time::timeout(Duration::from_secs(1), issuer).await.is_err() {
                abort.abort();
            }
        }
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

/// The transport with its rustls configurations built.
enum Prepared {
    Insecure,
    Mutual { tls: Box<TlsConfig>, grpc: Arc<rustls::ServerConfig>, issuer: Option<Arc<rustls::ServerConfig>> },
}

impl Prepared {
    fn new(transport: Transport) -> Result<Self, ServeError> {
        let tls = match transport {
            Transport::Insecure => return Ok(Self::Insecure),
            Transport::Mutual(tls) => tls,
        };
        let tls_err = |source| ServeError::Tls { source };
        let grpc = tls.server.mutual_config().map_err(tls_err)?;
        let issuer = match &tls.issuer {
            Some(_) => Some(tls.server.server_auth_config().map_err(tls_err)?),
            None => None,
        };
        Ok(Self::Mutual { tls, grpc, issuer })
    }
}

/// Serves the issuer on its own listener: server-authenticated TLS only.
fn serve_issuer(
    listener: TcpListener,
    issuer: &issuer::IssuerConfig,
    config: Arc<rustls::ServerConfig>,
    tls: &TlsConfig,
    shutdown: CancellationToken,
) -> JoinHandle<Result<(), tonic::transport::Error>> {
    let listener_addr = listener.local_addr().ok();
    let policy = AcceptPolicy {
        trust_domain: None,
        max_connection_age: tls.max_connection_age,
        handshake_timeout: tls.handshake_timeout,
    };
    let incoming = tls::tls_incoming("issuer", listener, config, policy, Arc::new(HandshakeStats::default()));
    let service = issuer::IssuerSvc::new(issuer.clone(), tls.trust_domain.clone());
    let server = tonic::transport::Server::builder()
        .max_connection_age(tls.max_connection_age)
        .add_service(IssuerServiceServer::new(service).max_decoding_message_size(64 * 1024))
        .serve_with_incoming_shutdown(incoming, async move { shutdown.cancelled().await });
    info!(listen = ?listener_addr, audience = %issuer.policy.audience, "issuing node certificates");
    tokio::spawn(server)
}
