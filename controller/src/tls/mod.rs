//! The controller's TLS edge: how its gRPC port (and the issuer's) accept
//! connections, and how long a connection may live.
//!
//! Exists because tonic's own TLS acceptor neither reloads certificates nor
//! exposes the parsed peer identity. Here the handshake (with rustls
//! configurations from `multinic-tls`) runs in its own task with a timeout,
//! the client certificate is read once, and the result travels with the
//! connection as a [`PeerConnection`].
//!
//! Certificates are checked only at the handshake, so a connection must not
//! outlive the certificate it was checked with: every connection gets a
//! deadline (the connection age cap, never more than half the peer
//! certificate's remaining lifetime) at which its agent stream is ended with
//! a reconnect request. This module never serves plaintext.

mod incoming;
mod peer;

use std::time::Duration;

use multinic_tls::{ServerTls, TrustDomain};

pub use incoming::{AcceptPolicy, HandshakeStats, TlsConn, tls_incoming};
pub use peer::{Peer, PeerConnection};

use crate::issuer::IssuerConfig;

/// Default cap on a connection's age.
pub const DEFAULT_MAX_CONNECTION_AGE: Duration = Duration::from_secs(3600);
/// A connection always gets at least this long (no reconnect storms when a
/// peer's certificate is about to expire; it will then fail the handshake).
pub const MIN_CONNECTION_AGE: Duration = Duration::from_secs(1);

/// How the gRPC port is secured.
#[derive(Debug, Clone)]
pub enum Transport {
    /// Plaintext without client identities. Development only.
    Insecure,
    /// TLS 1.3 with client certificates.
    Mutual(Box<TlsConfig>),
}

/// mTLS settings of the gRPC port (and the issuer, which shares the
/// controller's server certificate).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// The controller's certificate and the client CA bundle (both reloaded).
    pub server: ServerTls,
    /// The trust domain of accepted SPIFFE IDs.
    pub trust_domain: TrustDomain,
    /// Connections (and their agent streams) end after at most this long.
    pub max_connection_age: Duration,
    /// A TLS handshake that takes longer is dropped.
    pub handshake_timeout: Duration,
    /// Certificate issuance for agents with a ServiceAccount token.
    pub issuer: Option<IssuerConfig>,
}

impl TlsConfig {
    /// Defaults for everything but the material.
    pub fn new(server: ServerTls, trust_domain: TrustDomain) -> Self {
        Self {
            server,
            trust_domain,
            max_connection_age: DEFAULT_MAX_CONNECTION_AGE,
            handshake_timeout: Duration::from_secs(10),
            issuer: None,
        }
    }
}

/// How long a connection may live: the age cap, but at most half of what
/// is left of the peer certificate's lifetime, scaled by `spread` (in
/// 0.85..=1.0, random per connection, so agents that connected together do
/// not all reconnect together), and never less than [`MIN_CONNECTION_AGE`].
pub fn connection_lifetime(max_age: Duration, certificate_remaining: Duration, spread: f64) -> Duration {
    let cap = max_age.min(certificate_remaining / 2);
    cap.mul_f64(spread.clamp(0.85, 1.0)).max(MIN_CONNECTION_AGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_live_at_most_the_cap_or_half_the_remaining_certificate() {
        let hour = Duration::from_secs(3600);
        assert_eq!(connection_lifetime(hour, 24 * hour, 1.0), hour);
        assert_eq!(connection_lifetime(hour, hour, 1.0), hour / 2);
        assert_eq!(connection_lifetime(hour, 24 * hour, 0.0), hour.mul_f64(0.85), "spread is clamped");
        assert_eq!(connection_lifetime(hour, Duration::ZERO, 1.0), MIN_CONNECTION_AGE);
        for _ in 0..100 {
            let age = connection_lifetime(hour, 24 * hour, 0.85 + fastrand::f64() * 0.15);
            assert!(age <= hour && age >= hour.mul_f64(0.85), "{age:?}");
        }
    }
}
