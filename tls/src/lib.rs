//! mTLS for multinic, shared by the controller, the agent, `multinicctl` and
//! the tests.
//!
//! - [`identity`]: who a certificate speaks for. A peer's node (or operator
//!   name) comes from its certificate's SPIFFE ID and from nowhere else.
//! - [`ca`]: a certificate authority that signs server, agent and operator
//!   certificates and node certificates from CSRs (used by the controller's
//!   issuer and by `multinicctl certs`).
//! - [`live`]: TLS material read from files and rebuilt when the bytes on
//!   disk change (Kubernetes Secret symlink swaps included).
//! - [`server`] / [`client`]: rustls configurations that always use the
//!   newest material, TLS 1.3 only, session resumption off.
//!
//! This crate never decides what a peer may do: it only says who the peer is.
//! Authorization stays with the services. It never uses a crypto provider
//! other than ring.

pub mod ca;
pub mod client;
pub mod identity;
pub mod live;
pub mod pem;
pub mod server;

use std::path::PathBuf;
use std::sync::Arc;

pub use ca::{CertificateAuthority, KeyedCertificate, Validity, new_key_and_csr};
pub use client::ClientTls;
pub use identity::{CertificateInfo, DEFAULT_TRUST_DOMAIN, Identity, OperatorName, TrustDomain};
pub use live::Live;
pub use server::ServerTls;

/// The one crypto provider multinic uses (ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Everything that can go wrong with TLS material and identities.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {reason}")]
    Pem { what: String, reason: String },
    #[error("{what}: {source}")]
    Rustls {
        what: String,
        #[source]
        source: rustls::Error,
    },
    #[error("{what}: {source}")]
    Rcgen {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot build a certificate verifier from {what}: {reason}")]
    Verifier { what: String, reason: String },
    #[error("invalid certificate: {reason}")]
    Certificate { reason: String },
    #[error("invalid identity {input:?}: {reason}")]
    Identity { input: String, reason: String },
    #[error("invalid server name {name:?}: {reason}")]
    ServerName { name: String, reason: String },
    #[error("TLS material is reloaded by a background task, which needs a Tokio runtime")]
    NoRuntime,
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
