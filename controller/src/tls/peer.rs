//! Who is on the other end of a request.
//!
//! It lives at the TLS edge because that is where it is made: with mTLS, the
//! accept loop ([`super::tls_incoming`]) verifies the client certificate once
//! per connection, reads its SPIFFE ID, and hands tonic a [`PeerConnection`]
//! that tonic copies into every request's extensions. The services
//! ([`crate::grpc`], [`crate::issuer`]) only read it: they ask [`Peer::of`]
//! and refuse with a clear status. Without TLS
//! (`--insecure`) no request carries a `PeerConnection`: every peer is
//! anonymous and an agent is trusted to name its own node in Hello.
//!
//! This module must never take a node or operator name from anything but a
//! verified certificate, and never treat a certificate whose identity it does
//! not recognize as anonymous.

use std::net::SocketAddr;

use multinic_proto::NodeName;
use multinic_tls::{CertificateInfo, Identity, TrustDomain};
use tokio::time::Instant;
use tonic::{Request, Status};

/// The verified identity of a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// Plaintext (`--insecure`), or the issuer's callers (no certificate yet).
    Anonymous,
    /// An agent certificate naming its node.
    Agent { node: NodeName },
    /// An operator certificate (multinicctl).
    Operator { name: String },
    /// A certificate our CA signed whose identity we do not accept (foreign
    /// trust domain, unknown role, no or several URI SANs). Refused everywhere.
    Unrecognized { reason: String },
}

/// What tonic attaches to every request of a TLS connection.
#[derive(Debug, Clone)]
pub struct PeerConnection {
    pub peer: Peer,
    pub remote: SocketAddr,
    /// When this connection's streams must end so that the peer reconnects
    /// with fresh certificates (the connection age cap); `None` without one.
    pub streams_end_at: Option<Instant>,
}

impl PeerConnection {
    /// The connection a request came over, when it came over TLS.
    pub fn of<T>(request: &Request<T>) -> Option<&Self> {
        request.extensions().get::<Self>()
    }
}

impl Peer {
    /// The peer of a request.
    pub fn of<T>(request: &Request<T>) -> Self {
        PeerConnection::of(request).map_or(Self::Anonymous, |c| c.peer.clone())
    }

    /// The peer a verified client certificate names.
    pub fn from_certificate(certificate: &CertificateInfo, trust_domain: &TrustDomain) -> Self {
        match certificate.identity(trust_domain) {
            Ok(Identity::Node(node)) => Self::Agent { node },
            Ok(Identity::Operator(name)) => Self::Operator { name: name.to_string() },
            Err(e) => Self::Unrecognized { reason: e.to_string() },
        }
    }

    /// Refuses anyone but an agent (or anybody when running insecure).
    pub fn require_agent(&self) -> Result<(), Status> {
        match self {
            Self::Anonymous | Self::Agent { .. } => Ok(()),
            Self::Operator { name } => Err(Status::permission_denied(format!(
                "operator {name:?} may not open an agent stream: AgentService needs an agent certificate"
            ))),
            Self::Unrecognized { reason } => Err(unrecognized(reason)),
        }
    }

    /// Refuses anyone but an operator (or anybody when running insecure).
    pub fn require_operator(&self) -> Result<(), Status> {
        match self {
            Self::Anonymous | Self::Operator { .. } => Ok(()),
            Self::Agent { node } => Err(Status::permission_denied(format!(
                "agent of node {node} may not use the fleet service: FleetService needs an operator certificate"
            ))),
            Self::Unrecognized { reason } => Err(unrecognized(reason)),
        }
    }
}

fn unrecognized(reason: &str) -> Status {
    Status::permission_denied(format!("the client certificate names no identity this controller accepts: {reason}"))
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Anonymous => f.write_str("anonymous"),
            Self::Agent { node } => write!(f, "agent/{node}"),
            Self::Operator { name } => write!(f, "operator/{name}"),
            Self::Unrecognized { .. } => f.write_str("unrecognized"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use multinic_tls::{CertificateAuthority, Validity};

    use super::*;

    #[test]
    fn certificates_map_to_peers_and_roles() {
        let ca = CertificateAuthority::generate("test", Duration::from_secs(600)).unwrap();
        let ours: TrustDomain = "multinic.test".parse().unwrap();
        let foreign: TrustDomain = "evil.test".parse().unwrap();
        let validity = Validity::starting_now(Duration::from_secs(60));
        let peer = |identity: Identity, td: &TrustDomain| {
            let cert = ca.client_certificate(&identity, td, validity).unwrap();
            Peer::from_certificate(&cert.info().unwrap(), &ours)
        };
        let agent = peer(Identity::Node("node-a".parse().unwrap()), &ours);
        assert_eq!(agent, Peer::Agent { node: "node-a".parse().unwrap() });
        assert!(agent.require_agent().is_ok());
        let status = agent.require_operator().unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);

        let operator = peer(Identity::Operator("alice".parse().unwrap()), &ours);
        assert!(operator.require_operator().is_ok());
        assert_eq!(operator.require_agent().unwrap_err().code(), tonic::Code::PermissionDenied);

        let stranger = peer(Identity::Node("node-a".parse().unwrap()), &foreign);
        assert!(matches!(stranger, Peer::Unrecognized { .. }), "{stranger:?}");
        for status in [stranger.require_agent().unwrap_err(), stranger.require_operator().unwrap_err()] {
            assert_eq!(status.code(), tonic::Code::PermissionDenied);
            assert!(status.message().contains("evil.test"), "{}", status.message());
        }
    }
}
