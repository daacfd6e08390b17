//! The agent's and `multinicctl`'s side: a tonic channel over rustls that
//! checks the controller against the newest CA bundle and presents the
//! newest client certificate.
//!
//! The configuration is consulted at every (re)connect, so a rotated
//! certificate or CA is used by the next connection without a restart. The
//! server name checked is the host of the controller's address unless an
//! override is given (e.g. when connecting by IP to a certificate with only
//! DNS names).
//!
//! It never resumes sessions and never skips server verification.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::identity::CertificateInfo;
use crate::live::{self, Live};
use crate::server::certified_key;
use crate::{Error, Result, pem, provider};

/// `host:port` → `https://host:port` (`http://` without TLS); URLs are kept
/// as they are. Shared by the agent and `multinicctl`, so both read a
/// controller address the same way.
pub fn controller_url(address: &str, tls: bool) -> String {
    if address.contains("://") {
        address.to_owned()
    } else if tls {
        format!("https://{address}")
    } else {
        format!("http://{address}")
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// How long the controller may take to send its first bytes after the handshake.
const FIRST_FLIGHT_TIMEOUT: Duration = Duration::from_secs(10);

/// How to reach the controller over TLS.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
    last_server: Arc<Mutex<Option<CertificateInfo>>>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .field("client_auth", &self.config.client_auth_cert_resolver.has_certs())
            .finish()
    }
}

impl ClientTls {
    /// mTLS from files, re-read every `every`: the controller must chain to
    /// `ca`; we present `cert` with `key`.
    pub fn from_files(ca: &Path, cert: &Path, key: &Path, every: Duration) -> Result<Self> {
        let identity = live::watch_files("client certificate", vec![cert.into(), key.into()], every, |f| {
            certified_key(&f[0], &f[1], "client certificate")
        })?;
        Self::new(server_roots_from_file(ca, every)?, Some(identity))
    }

    /// Server authentication only, no client certificate (the issuer).
    pub fn server_auth_only(ca: &Path, every: Duration) -> Result<Self> {
        Self::new(server_roots_from_file(ca, every)?, None)
    }

    /// From live parts: the agent's bootstrap mode keeps its issued
    /// certificate in memory and replaces it when it renews.
    pub fn new(server_roots: Live<dyn ServerCertVerifier>, identity: Option<Live<CertifiedKey>>) -> Result<Self> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|source| Error::Rustls { what: "client TLS versions".into(), source })?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(LiveServerVerifier(server_roots)));
        let mut config = match identity {
            Some(identity) => builder.with_client_cert_resolver(Arc::new(LiveClientCert(identity))),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Self { config: Arc::new(config), server_name: None, last_server: Arc::default() })
    }

    /// Checks the controller's certificate for `name` instead of the host
    /// of the address connected to.
    pub fn with_server_name(mut self, name: Option<&str>) -> Result<Self> {
        self.server_name = match name {
            None => None,
            Some(name) => Some(
                ServerName::try_from(name.to_owned())
                    .map_err(|e| Error::ServerName { name: name.to_owned(), reason: e.to_string() })?,
            ),
        };
        Ok(self)
    }

    /// A channel whose connections (the first and every reconnect) use the
    /// newest TLS material. `endpoint` should be an `https://` URL.
    pub async fn connect(&self, endpoint: &Endpoint) -> Result<Channel, tonic::transport::Error> {
        endpoint.connect_with_connector(Connector(self.clone())).await
    }

    /// What the controller presented at the last handshake.
    pub fn last_server_certificate(&self) -> Option<CertificateInfo> {
        self.last_server.lock().ok().and_then(|s| s.clone())
    }
}

/// The controller must chain to a certificate of this CA bundle (re-read every `every`).
pub fn server_roots_from_file(ca: &Path, every: Duration) -> Result<Live<dyn ServerCertVerifier>> {
    live::watch_files("controller CA", vec![ca.into()], every, |f| server_verifier(&f[0], "controller CA"))
}

/// A verifier of server certificates chaining to a PEM CA bundle.
pub fn server_verifier(ca_pem: &[u8], what: &str) -> Result<Arc<dyn ServerCertVerifier>> {
    let roots = pem::root_store(ca_pem, what)?;
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| Error::Verifier { what: what.to_owned(), reason: e.to_string() })?;
    Ok(verifier)
}

/// `tower::Service<Uri>` that opens TCP, then TLS, for tonic.
#[derive(Clone)]
struct Connector(ClientTls);

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Replay<TlsStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.0.clone();
        Box::pin(async move {
            let host = uri.host().ok_or_else(|| format!("{uri} has no host"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let name = match tls.server_name {
                Some(name) => name,
                None => ServerName::try_from(host.clone())
                    .map_err(|e| format!("{host:?} cannot be checked against a certificate: {e}"))?,
            };
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let mut stream = tokio_rustls::TlsConnector::from(tls.config.clone()).connect(name, tcp).await?;
            let presented = stream.get_ref().1.peer_certificates().and_then(|c| c.first());
            if let (Some(der), Ok(mut last)) = (presented, tls.last_server.lock()) {
                *last = CertificateInfo::from_der(der).ok();
            }
            let first = first_flight(&mut stream).await?;
            Ok(TokioIo::new(Replay { first, offset: 0, inner: stream }))
        })
    }
}

/// Reads the controller's first bytes (its HTTP/2 SETTINGS). With TLS 1.3 a
/// client finishes its handshake before the server has checked the client's
/// certificate, so a refusal only arrives as an alert on the first read.
/// Reading it here makes the refusal a connect error that names the reason,
/// instead of "connection closed" on the first call and a reconnect loop.
async fn first_flight(stream: &mut TlsStream) -> io::Result<Vec<u8>> {
    let mut first = vec![0; 4096];
    let n = tokio::time::timeout(FIRST_FLIGHT_TIMEOUT, stream.read(&mut first))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the controller sent nothing after the TLS handshake"))?
        .map_err(|e| {
            let hint =
                "is our certificate valid, for the controller's trust domain, and signed by a CA in its --client-ca?";
            io::Error::new(e.kind(), format!("the controller refused the TLS connection: {e} ({hint})"))
        })?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the controller closed the connection after the TLS handshake",
        ));
    }
    first.truncate(n);
    Ok(first)
}

/// A stream that first replays the bytes [`first_flight`] read.
#[derive(Debug)]
struct Replay<S> {
    first: Vec<u8>,
    offset: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.offset < self.first.len() {
            let n = buf.remaining().min(self.first.len() - self.offset);
            buf.put_slice(&self.first[self.offset..self.offset + n]);
            self.offset += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
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

#[derive(Debug)]
struct LiveClientCert(Live<CertifiedKey>);

impl ResolvesClientCert for LiveClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.borrow().clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Delegates to the verifier of the newest CA bundle.
struct LiveServerVerifier(Live<dyn ServerCertVerifier>);

impl fmt::Debug for LiveServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LiveServerVerifier").finish()
    }
}

impl LiveServerVerifier {
    fn current(&self) -> Arc<dyn ServerCertVerifier> {
        self.0.borrow().clone()
    }
}

impl ServerCertVerifier for LiveServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.current().verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}
