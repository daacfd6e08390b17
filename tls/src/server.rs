//! The controller's side: rustls server configurations that present the
//! newest certificate and check clients against the newest CA bundle.
//!
//! Exists so that rotating the controller's certificate or the client CA
//! needs no restart: new handshakes use the new material, established
//! connections keep theirs (their age is capped by the controller).
//!
//! It never resumes TLS sessions: a resumed session would skip the client
//! certificate check against the current CA. It speaks TLS 1.3 only.
//!
//! A refused client certificate is described (subject, SANs, serial) to the
//! accept loop that runs the handshake inside [`capturing_presented`], so
//! its log line can say who was refused.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};

use crate::identity::CertificateInfo;
use crate::live::{self, Live};
use crate::{Error, Result, pem, provider};

tokio::task_local! {
    /// The client certificate presented in the handshake the task runs.
    static PRESENTED: RefCell<Option<String>>;
}

/// Runs `handshake` (a TLS accept) and returns its output with a
/// description of the client certificate it presented, if any was checked.
pub async fn capturing_presented<F: Future>(handshake: F) -> (F::Output, Option<String>) {
    PRESENTED
        .scope(RefCell::new(None), async move {
            let output = handshake.await;
            let presented = PRESENTED.try_with(|p| p.borrow_mut().take()).ok().flatten();
            (output, presented)
        })
        .await
}

/// The controller's certificate and, for mTLS, the client CA bundle.
#[derive(Debug, Clone)]
pub struct ServerTls {
    certificate: Live<CertifiedKey>,
    client_verifier: Live<dyn ClientCertVerifier>,
}

impl ServerTls {
    /// Reads the files now and re-reads them every `every`.
    pub fn from_files(cert: &Path, key: &Path, client_ca: &Path, every: Duration) -> Result<Self> {
        let certificate = live::watch_files("server certificate", vec![cert.into(), key.into()], every, |f| {
            certified_key(&f[0], &f[1], "server certificate")
        })?;
        let client_verifier =
            live::watch_files("client CA", vec![client_ca.into()], every, |f| client_verifier(&f[0], "client CA"))?;
        Ok(Self { certificate, client_verifier })
    }

    /// The certificate presented right now.
    pub fn current_certificate(&self) -> Arc<CertifiedKey> {
        self.certificate.borrow().clone()
    }

    /// Client certificates required, chaining to the client CA bundle.
    pub fn mutual_config(&self) -> Result<Arc<ServerConfig>> {
        let verifier = Arc::new(LiveClientVerifier(self.client_verifier.clone()));
        let config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|source| Error::Rustls { what: "server TLS versions".into(), source })?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(LiveCertResolver(self.certificate.clone())));
        Ok(Arc::new(finish(config)))
    }

    /// No client certificates: for the issuer, whose callers have none yet.
    pub fn server_auth_config(&self) -> Result<Arc<ServerConfig>> {
        let config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|source| Error::Rustls { what: "server TLS versions".into(), source })?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(LiveCertResolver(self.certificate.clone())));
        Ok(Arc::new(finish(config)))
    }
}

fn finish(mut config: ServerConfig) -> ServerConfig {
    config.alpn_protocols = vec![b"h2".to_vec()];
    // Every connection is a full handshake, checked against today's CA.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config
}

/// A certificate chain and its key, checked to belong together.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8], what: &str) -> Result<Arc<CertifiedKey>> {
    let chain = pem::certificates(cert_pem, what)?;
    let key = pem::private_key(key_pem, &format!("{what} key"))?;
    // Loads the key and checks it matches the certificate (a half-written
    // rotation fails here and the previous pair stays in use).
    let certified = CertifiedKey::from_der(chain, key, &provider())
        .map_err(|source| Error::Rustls { what: format!("{what} and its key"), source })?;
    Ok(Arc::new(certified))
}

fn client_verifier(ca_pem: &[u8], what: &str) -> Result<Arc<dyn ClientCertVerifier>> {
    let roots = pem::root_store(ca_pem, what)?;
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| Error::Verifier { what: what.to_owned(), reason: e.to_string() })
}

#[derive(Debug)]
struct LiveCertResolver(Live<CertifiedKey>);

impl ResolvesServerCert for LiveCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.borrow().clone())
    }
}

/// Delegates to the verifier of the newest client CA bundle.
struct LiveClientVerifier(Live<dyn ClientCertVerifier>);

impl fmt::Debug for LiveClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LiveClientVerifier").finish()
    }
}

impl LiveClientVerifier {
    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        self.0.borrow().clone()
    }
}

impl ClientCertVerifier for LiveClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No CA hints: they could not borrow from a verifier that may be
    /// replaced, and our clients have exactly one certificate anyway.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Outside `capturing_presented` (another caller) there is no slot: fine.
        let _ = PRESENTED.try_with(|p| {
            let described = CertificateInfo::from_der(end_entity)
                .map_or_else(|e| format!("an unreadable certificate ({e})"), |info| info.describe());
            *p.borrow_mut() = Some(described);
        });
        self.current().verify_client_cert(end_entity, intermediates, now)
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
