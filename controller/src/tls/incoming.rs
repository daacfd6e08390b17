//! The TLS accept loop handed to tonic's `serve_with_incoming`.
//!
//! Each TCP connection gets its own task that runs the handshake under a
//! timeout, so a peer that never speaks TLS cannot hold up `accept()` for
//! anyone else. A failed handshake is logged (with the remote address and
//! rustls's reason) and counted; it never reaches tonic.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use multinic_tls::{CertificateInfo, TrustDomain};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tracing::{debug, info, warn};

use super::connection_lifetime;
use crate::grpc::identity::{Peer, PeerConnection};

/// Handshakes in progress at most; further connections wait in the backlog.
const MAX_PENDING_HANDSHAKES: usize = 1024;

/// Handshake outcomes of one listener.
#[derive(Debug, Default)]
pub struct HandshakeStats {
    accepted: AtomicU64,
    refused: AtomicU64,
    timed_out: AtomicU64,
    last_refusal: Mutex<Option<String>>,
}

impl HandshakeStats {
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Handshakes that failed (bad or missing client certificate, plaintext, ...).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    pub fn timed_out(&self) -> u64 {
        self.timed_out.load(Ordering::Relaxed)
    }

    /// rustls's reason for the last refused handshake.
    pub fn last_refusal(&self) -> Option<String> {
        self.last_refusal.lock().ok().and_then(|r| r.clone())
    }

    fn refuse(&self, reason: String) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_refusal.lock() {
            *last = Some(reason);
        }
    }
}

/// Who is asked for a certificate, and how long connections may live.
#[derive(Debug, Clone)]
pub struct AcceptPolicy {
    /// `None` on the issuer's listener: callers have no certificate.
    pub trust_domain: Option<TrustDomain>,
    pub max_connection_age: Duration,
    pub handshake_timeout: Duration,
}

/// Accepts TCP connections, completes TLS handshakes concurrently, and
/// yields the connections that made it, each with its [`PeerConnection`].
pub fn tls_incoming(
    what: &'static str,
    listener: TcpListener,
    config: Arc<ServerConfig>,
    policy: AcceptPolicy,
    stats: Arc<HandshakeStats>,
) -> ReceiverStream<Result<TlsConn, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, don't die.
                        warn!(listener = what, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = pending.clone().acquire_owned().await else { return };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, stats, policy) = (acceptor.clone(), tx.clone(), stats.clone(), policy.clone());
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(policy.handshake_timeout, acceptor.accept(tcp)).await;
                drop(permit);
                match handshake {
                    Ok(Ok(stream)) => {
                        let info = connection_info(&stream, remote, &policy);
                        stats.accepted.fetch_add(1, Ordering::Relaxed);
                        debug!(listener = what, remote = %remote, peer = %info.peer, "TLS connection accepted");
                        let _ = tx.send(Ok(TlsConn { inner: stream, info })).await;
                    }
                    Ok(Err(e)) => {
                        warn!(listener = what, remote = %remote, error = %e, "refused a TLS handshake");
                        stats.refuse(e.to_string());
                    }
                    Err(_) => {
                        info!(listener = what, remote = %remote, timeout = ?policy.handshake_timeout, "TLS handshake timed out");
                        stats.timed_out.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// The peer (from the verified certificate) and when its streams must end.
fn connection_info(
    stream: &tokio_rustls::server::TlsStream<TcpStream>,
    remote: SocketAddr,
    policy: &AcceptPolicy,
) -> PeerConnection {
    let certificate = stream.get_ref().1.peer_certificates().and_then(|c| c.first());
    let (peer, remaining) = match (&policy.trust_domain, certificate) {
        (Some(td), Some(der)) => match CertificateInfo::from_der(der) {
            Ok(info) => (Peer::from_certificate(&info, td), info.remaining(SystemTime::now())),
            Err(e) => (Peer::Unrecognized { reason: e.to_string() }, Duration::ZERO),
        },
        // The issuer asks for no certificate; with mTLS rustls never gets here without one.
        _ => (Peer::Anonymous, policy.max_connection_age * 2),
    };
    let lifetime = connection_lifetime(policy.max_connection_age, remaining, 0.85 + 0.15 * fastrand::f64());
    PeerConnection { peer, remote, streams_end_at: Some(Instant::now() + lifetime) }
}

/// A TLS connection carrying its peer for tonic's request extensions.
/// (A newtype: tonic's `Connected` cannot be implemented for tokio-rustls's
/// stream here, and its own implementation gives raw certificates only.)
#[derive(Debug)]
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerConnection,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerConnection;

    fn connect_info(&self) -> PeerConnection {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
