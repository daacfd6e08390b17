//! The TLS accept loop handed to tonic's `serve_with_incoming`.
//!
//! Each TCP connection gets its own task that runs the handshake under a
//! timeout, so a peer that never speaks TLS cannot hold up `accept()` for
//! anyone else. A failed handshake is logged and counted, and never reaches
//! tonic. Its log line says what happened in the peer's terms: it sent
//! nothing, it speaks plaintext (gRPC without TLS), it did not finish in
//! time, or rustls refused it (with the subject and SANs of the certificate
//! it presented, if any).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use multinic_tls::server::capturing_presented;
use multinic_tls::{CertificateInfo, TrustDomain};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tracing::{debug, warn};

use super::connection_lifetime;
use super::{Peer, PeerConnection};

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
                let handshake = handshake(&acceptor, tcp, policy.handshake_timeout).await;
                drop(permit);
                match handshake {
                    Ok(stream) => {
                        let info = connection_info(&stream, remote, &policy);
                        stats.accepted.fetch_add(1, Ordering::Relaxed);
                        debug!(listener = what, remote = %remote, peer = %info.peer, "TLS connection accepted");
                        let _ = tx.send(Ok(TlsConn { inner: stream, info })).await;
                    }
                    Err(Refusal::Closed) => {
                        // A TCP probe or a port scan: nothing to tell anyone.
                        debug!(listener = what, remote = %remote, "connection closed before it sent anything");
                        stats.refuse("closed before sending anything".into());
                    }
                    Err(Refusal::TimedOut(reason)) => {
                        warn!(listener = what, remote = %remote, timeout = ?policy.handshake_timeout, "dropped a connection: {reason}");
                        stats.timed_out.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(Refusal::Refused(reason)) => {
                        warn!(listener = what, remote = %remote, error = %reason, "refused a TLS handshake");
                        stats.refuse(reason);
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Why a connection never became a TLS connection.
#[derive(Debug)]
enum Refusal {
    /// Closed before sending a byte.
    Closed,
    /// No handshake within the timeout (the reason says how far it got).
    TimedOut(String),
    /// Not TLS, or a handshake rustls refused.
    Refused(String),
}

/// A TLS record of the handshake type starts every TLS connection.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Runs the server side of the handshake within `timeout`: first waits for
/// the peer's first bytes (to tell silence and plaintext from TLS), then
/// lets rustls finish, noting the client certificate it was shown.
async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, Refusal> {
    let deadline = Instant::now() + timeout;
    let mut first = [0u8; 16];
    let seen = match tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await {
        Err(_) => return Err(Refusal::TimedOut(format!("it sent nothing within {timeout:?}"))),
        Ok(Err(e)) => return Err(Refusal::Refused(format!("cannot read from the connection: {e}"))),
        Ok(Ok(0)) => return Err(Refusal::Closed),
        Ok(Ok(n)) => &first[..n],
    };
    if seen[0] != TLS_HANDSHAKE_RECORD {
        return Err(Refusal::Refused(not_tls(seen)));
    }
    let (result, presented) = capturing_presented(tokio::time::timeout_at(deadline, acceptor.accept(tcp))).await;
    let who = presented.map(|p| format!(" (client certificate: {p})")).unwrap_or_default();
    match result {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(Refusal::Refused(format!("{e}{who}"))),
        Err(_) => Err(Refusal::TimedOut(format!("it did not finish the TLS handshake within {timeout:?}{who}"))),
    }
}

/// What a peer that does not start with a TLS record speaks, for the log.
fn not_tls(first: &[u8]) -> String {
    const HINT: &str =
        "this port takes only TLS with a client certificate (use https://, and --ca, --tls-cert, --tls-key)";
    if b"PRI * HTTP/2.0".starts_with(first) || first.starts_with(b"PRI ") {
        format!("plaintext HTTP/2 (gRPC without TLS): {HINT}")
    } else if first.iter().take_while(|b| b.is_ascii_uppercase()).count() >= 3 {
        format!("plaintext HTTP/1 (e.g. curl http://): {HINT}")
    } else {
        format!("not TLS (first byte {:#04x}): {HINT}", first[0])
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_is_named_for_what_it_is() {
        assert!(not_tls(b"PRI * HTTP/2.0\r\n").starts_with("plaintext HTTP/2 (gRPC without TLS)"));
        assert!(not_tls(b"PR").starts_with("plaintext HTTP/2"), "a short first read");
        assert!(not_tls(b"GET /healthz HTTP/1.1").starts_with("plaintext HTTP/1"));
        assert!(not_tls(b"\x00\xff junk").starts_with("not TLS (first byte 0x00)"));
        assert!(not_tls(b"\x00").contains("use https://"));
    }
}
