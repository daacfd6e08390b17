//! How the agent proves which node it is: TLS to the controller with a
//! client certificate naming this node.
//!
//! Two sources of that certificate:
//! - mounted files (`--tls-cert --tls-key`, e.g. from cert-manager),
//!   re-read when they change;
//! - bootstrap (`--bootstrap-token-file`): the agent trades its projected
//!   ServiceAccount token at the controller's issuer for a short-lived
//!   certificate, keeps it in memory (and in its state dir, to stand in
//!   when the issuer cannot answer at a restart), and renews it at half-life.
//!
//! Either way the controller is checked against `--ca`. This module never
//! sends the token anywhere but the issuer over verified TLS, never accepts
//! an issued certificate that names another node or another key, and never
//! writes a private key readable by anyone but root.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use multinic_proto::NodeName;
use multinic_proto::v1::IssueNodeCertificateRequest;
use multinic_proto::v1::issuer_service_client::IssuerServiceClient;
use multinic_tls::client::server_roots_from_file;
use multinic_tls::server::certified_key;
use multinic_tls::{CertificateInfo, ClientTls, KeyedCertificate, Live};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use tracing::{Instrument, info, info_span, warn};

use crate::backoff::Backoff;
use crate::files::{Links, OTHER_FILE_LIMIT, ReadError, read_text};

/// The issuer's default port on the controller's host.
pub const DEFAULT_ISSUER_PORT: u16 = 50052;

/// Why the agent has no certificate to talk to the controller with (or
/// one issuance failed; it is then retried).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Material(#[from] multinic_tls::Error),
    #[error(transparent)]
    Address(#[from] http::uri::InvalidUri),
    #[error("{url} has no host")]
    NoHost { url: String },
    #[error("cannot read the token {path}: {source}")]
    Token {
        path: PathBuf,
        #[source]
        source: ReadError,
    },
    #[error("cannot read the token {path}: not found")]
    NoToken { path: PathBuf },
    #[error(transparent)]
    IssuerAddress(tonic::transport::Error),
    /// The issuer could not be reached (the whole chain of causes said once).
    #[error("{}", multinic_runtime::error_chain(.0))]
    IssuerConnect(tonic::transport::Error),
    /// The issuer answered with an error status.
    #[error("{:?}: {}", .0.code(), .0.message())]
    Refused(tonic::Status),
    #[error("{operation} {path}: {source}")]
    Save {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the certificate names {uris:?}, not this node {node}: is --node-name (NODE_NAME) the Kubernetes node name?"
    )]
    OtherNode { uris: Vec<String>, node: NodeName },
    #[error("the certificate has expired")]
    Expired,
}

/// How the agent reaches the controller.
#[derive(Debug, Clone, Default)]
pub enum AgentTransport {
    /// Plaintext; the controller trusts Hello's node name. Development only.
    #[default]
    Insecure,
    /// TLS 1.3 with a client certificate naming this node.
    Tls(AgentTls),
}

/// TLS settings of the agent.
#[derive(Debug, Clone)]
pub struct AgentTls {
    /// CA bundle the controller's (and the issuer's) certificate must chain to.
    pub ca: PathBuf,
    pub identity: AgentIdentity,
    /// Name checked in the controller's certificate instead of the host of
    /// its address.
    pub server_name: Option<String>,
    /// How often mounted files are checked for changes.
    pub reload_interval: Duration,
}

/// Where the agent's client certificate comes from.
#[derive(Debug, Clone)]
pub enum AgentIdentity {
    /// Certificate and key files, re-read when they change.
    Mounted { cert: PathBuf, key: PathBuf },
    /// Issued by the controller's issuer for a projected ServiceAccount token.
    Bootstrap {
        /// The projected token (re-read for every request: the kubelet rotates it).
        token_file: PathBuf,
        /// `https://host:port` of the issuer.
        issuer: String,
        /// Where the issued certificate and key are kept across restarts.
        state_dir: PathBuf,
    },
}

impl AgentTls {
    /// The TLS client for the controller. In bootstrap mode this waits for
    /// the first certificate (retrying until `shutdown`) and keeps renewing it.
    pub async fn client(&self, node: &NodeName, shutdown: &CancellationToken) -> Result<Option<ClientTls>, TlsError> {
        let client = match &self.identity {
            AgentIdentity::Mounted { cert, key } => ClientTls::from_files(&self.ca, cert, key, self.reload_interval)?,
            AgentIdentity::Bootstrap { token_file, issuer, state_dir } => {
                let issuer_tls = ClientTls::server_auth_only(&self.ca, self.reload_interval)?
                    .with_server_name(self.server_name.as_deref())?;
                let bootstrap = Bootstrap {
                    node: node.clone(),
                    token_file: token_file.clone(),
                    issuer: issuer.clone(),
                    issuer_tls,
                    cert_path: state_dir.join("tls/node.crt"),
                    key_path: state_dir.join("tls/node.key"),
                };
                let Some(identity) = bootstrap.start(shutdown).await else { return Ok(None) };
                ClientTls::new(server_roots_from_file(&self.ca, self.reload_interval)?, Some(identity))?
            }
        };
        Ok(Some(client.with_server_name(self.server_name.as_deref())?))
    }
}

/// `https://<host of controller>:50052`.
pub fn default_issuer_url(controller_url: &str) -> Result<String, TlsError> {
    let uri: http::Uri = controller_url.parse()?;
    let host = uri.host().ok_or_else(|| TlsError::NoHost { url: controller_url.to_owned() })?;
    Ok(format!("https://{host}:{DEFAULT_ISSUER_PORT}"))
}

/// An issued certificate, checked and ready for rustls.
struct Issued {
    pem: KeyedCertificate,
    info: CertificateInfo,
    key: Arc<CertifiedKey>,
}

/// Obtains and renews this node's certificate at the issuer.
struct Bootstrap {
    node: NodeName,
    token_file: PathBuf,
    issuer: String,
    issuer_tls: ClientTls,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl Bootstrap {
    /// The first certificate and a task renewing it; `None` if `shutdown`
    /// came first. A fresh certificate is asked for at every start (the CA
    /// may have changed since the saved one was issued); the saved one only
    /// stands in while the issuer cannot answer.
    async fn start(self, shutdown: &CancellationToken) -> Option<Live<CertifiedKey>> {
        let (current, fresh) = match self.issue_and_keep().await {
            Ok(issued) => (issued, true),
            Err(e) => match self.load_saved() {
                Some(saved) => {
                    warn!(issuer = %self.issuer, error = %e, "cannot obtain a node certificate; using the saved one meanwhile");
                    (saved, false)
                }
                None => (self.issue_until_done(shutdown).await?, true),
            },
        };
        let (tx, rx) = watch::channel(current.key.clone());
        let shutdown = shutdown.clone();
        let span = info_span!("certificate_renewal", node = %self.node);
        tokio::spawn(
            async move {
                let (mut current, mut fresh) = (current, fresh);
                loop {
                    // At half-life, a little earlier for some nodes than for
                    // others so that a fleet issued together does not renew
                    // together; soon when running on a saved certificate.
                    let until_half_life =
                        current.info.half_life().duration_since(SystemTime::now()).unwrap_or_default();
                    let wait = if fresh {
                        until_half_life.mul_f64(0.9 + 0.1 * fastrand::f64())
                    } else {
                        until_half_life.min(Duration::from_secs(30))
                    };
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = shutdown.cancelled() => return,
                        () = tx.closed() => return,
                    }
                    let Some(renewed) = self.issue_until_done(&shutdown).await else { return };
                    tx.send_replace(renewed.key.clone());
                    (current, fresh) = (renewed, true);
                }
            }
            .instrument(span),
        );
        Some(rx)
    }

    /// Issues, retrying with backoff, until it works or `shutdown`.
    async fn issue_until_done(&self, shutdown: &CancellationToken) -> Option<Issued> {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        loop {
            match self.issue_and_keep().await {
                Ok(issued) => return Some(issued),
                Err(e) => {
                    let delay = backoff.next_delay();
                    warn!(issuer = %self.issuer, error = %e, retry_in = ?delay, "cannot obtain a node certificate");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.cancelled() => return None,
                    }
                }
            }
        }
    }

    /// One issuance, saved in the state dir (or kept in memory only, if that fails).
    async fn issue_and_keep(&self) -> Result<Issued, TlsError> {
        let issued = self.issue().await?;
        info!(serial = %issued.info.serial, not_after = ?issued.info.not_after, "obtained a node certificate from the issuer");
        if let Err(e) = self.save(&issued.pem) {
            warn!(error = %e, "cannot keep the node certificate in the state dir; keeping it in memory");
        }
        Ok(issued)
    }

    /// One request: new key, CSR, token, and a check of what came back.
    async fn issue(&self) -> Result<Issued, TlsError> {
        // A projected token is a link into the volume's current data: followed,
        // but only to a regular file of a sane size.
        let path = || self.token_file.clone();
        let token = read_text(&self.token_file, OTHER_FILE_LIMIT, Links::Follow)
            .map_err(|source| TlsError::Token { path: path(), source })?
            .ok_or_else(|| TlsError::NoToken { path: path() })?;
        let (key_pem, csr_pem) = multinic_tls::new_key_and_csr()?;
        let endpoint = Endpoint::from_shared(self.issuer.clone())
            .map_err(TlsError::IssuerAddress)?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(20));
        let channel = self.issuer_tls.connect(&endpoint).await.map_err(TlsError::IssuerConnect)?;
        let request = IssueNodeCertificateRequest { token: token.trim().to_owned(), csr_pem };
        let response = IssuerServiceClient::new(channel)
            .issue_node_certificate(request)
            .await
            .map_err(TlsError::Refused)?
            .into_inner();
        self.check(KeyedCertificate { cert_pem: response.certificate_chain_pem, key_pem })
    }

    /// A certificate kept from an earlier run, if it still names this node,
    /// matches its key and is before its half-life.
    fn load_saved(&self) -> Option<Issued> {
        let saved = |path: &std::path::Path| match read_text(path, OTHER_FILE_LIMIT, Links::Refuse) {
            Ok(text) => text,
            Err(e) => {
                warn!(error = %e, "ignoring the saved node certificate");
                None
            }
        };
        let cert_pem = saved(&self.cert_path)?;
        let key_pem = saved(&self.key_path)?;
        match self.check(KeyedCertificate { cert_pem, key_pem }) {
            Ok(saved) if saved.info.half_life() > SystemTime::now() => {
                info!(serial = %saved.info.serial, path = %self.cert_path.display(), "using the saved node certificate");
                Some(saved)
            }
            Ok(_) => None,
            Err(e) => {
                warn!(path = %self.cert_path.display(), error = %e, "ignoring the saved node certificate");
                None
            }
        }
    }

    /// Keeps the certificate and key in a folder only root can read.
    fn save(&self, pem: &KeyedCertificate) -> Result<(), TlsError> {
        if let Some(dir) = self.key_path.parent() {
            let failed = |operation| move |source| TlsError::Save { operation, path: dir.to_path_buf(), source };
            std::fs::create_dir_all(dir).map_err(failed("create"))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(failed("chmod 0700"))?;
        }
        Ok(pem.write(&self.cert_path, &self.key_path)?)
    }

    fn check(&self, pem: KeyedCertificate) -> Result<Issued, TlsError> {
        let info = pem.info()?;
        let suffix = format!("/multinic/node/{}", self.node);
        let names_us = matches!(info.uris.as_slice(), [uri] if uri.starts_with("spiffe://") && uri.ends_with(&suffix));
        if !names_us {
            return Err(TlsError::OtherNode { uris: info.uris.clone(), node: self.node.clone() });
        }
        if info.remaining(SystemTime::now()).is_zero() {
            return Err(TlsError::Expired);
        }
        let key = certified_key(pem.cert_pem.as_bytes(), pem.key_pem.as_bytes(), "node certificate")?;
        Ok(Issued { pem, info, key })
    }
}
