//! The comparison point: a bare tonic server with the same rustls mTLS
//! configuration as the controller, holding agent streams and nothing else.
//!
//! It speaks `AgentService.Sync` just enough for the simulated agents: it
//! pushes one fixed desired set and reads what the agent sends until the
//! stream ends. No fleet state, no queue, no database, no logging per
//! stream.
//! What the controller's memory per stream costs above this is what the
//! controller adds. It must never grow features: it is the floor.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use multinic_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use multinic_proto::v1::controller_message::Kind as ControllerKind;
use multinic_proto::v1::{self, AgentMessage, ControllerMessage};
use multinic_proto::{DesiredPush, DesiredSet, Mtu};
use multinic_tls::ServerTls;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status, Streaming};

use crate::BenchError;

/// Where the bare server listens and what it presents.
#[derive(Debug, Clone)]
pub struct BaselineOptions {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// Interfaces in the one push each stream gets.
    pub interfaces: usize,
}

/// Serves until the process is killed.
pub async fn serve(options: BaselineOptions) -> Result<(), BenchError> {
    let tls = ServerTls::from_files(&options.cert, &options.key, &options.ca, Duration::from_secs(3600))
        .map_err(|e| BenchError::Setup(format!("baseline TLS: {e}")))?;
    let config = tls.mutual_config().map_err(|e| BenchError::Setup(format!("baseline TLS: {e}")))?;
    let listener = TcpListener::bind(options.listen)
        .await
        .map_err(|e| BenchError::Setup(format!("bind {}: {e}", options.listen)))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let (tx, rx) = mpsc::channel::<Result<BareConn, io::Error>>(64);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    let _ = tx.send(Ok(BareConn(stream))).await;
                }
            });
        }
    });
    let push = Arc::new(push_of(options.interfaces)?);
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(AgentServiceServer::new(Bare { push }))
        .serve_with_incoming(ReceiverStream::new(rx))
        .await
        .map_err(|e| BenchError::Setup(format!("baseline server: {e}")))
}

/// One desired set of `interfaces` interfaces, as every stream gets it.
fn push_of(interfaces: usize) -> Result<ControllerMessage, BenchError> {
    let specs = (0..interfaces).map(|i| {
        let mac = crate::db::mac(0, i).parse().map_err(|e| BenchError::Setup(format!("MAC: {e}")))?;
        multinic_proto::InterfaceSpec::new(mac, None, Mtu::DEFAULT).map_err(|e| BenchError::Setup(format!("spec: {e}")))
    });
    let set =
        DesiredSet::new(specs.collect::<Result<Vec<_>, _>>()?).map_err(|e| BenchError::Setup(format!("set: {e}")))?;
    let push = DesiredPush { generation: 1, nonce: 1, set };
    Ok(ControllerMessage { kind: Some(ControllerKind::Desired(v1::DesiredState::from(&push))) })
}

struct Bare {
    push: Arc<ControllerMessage>,
}

#[tonic::async_trait]
impl AgentService for Bare {
    type SyncStream = Pin<Box<dyn Stream<Item = Result<ControllerMessage, Status>> + Send>>;

    /// The push goes out at once and the stream then stays open; a task
    /// reads (and drops) what the agent sends until it goes away.
    async fn sync(&self, request: Request<Streaming<AgentMessage>>) -> Result<Response<Self::SyncStream>, Status> {
        let mut inbound = request.into_inner();
        tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
        let push = futures::stream::once(std::future::ready(Ok((*self.push).clone())));
        Ok(Response::new(Box::pin(futures::StreamExt::chain(push, futures::stream::pending()))))
    }
}

/// A TLS connection for tonic (which implements `Connected` for rustls
/// streams only with its own TLS features).
struct BareConn(tokio_rustls::server::TlsStream<TcpStream>);

impl Connected for BareConn {
    type ConnectInfo = ();

    fn connect_info(&self) {}
}

impl AsyncRead for BareConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for BareConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}
