//! Who a certificate speaks for.
//!
//! Identities are SPIFFE IDs: `spiffe://<trust-domain>/multinic/node/<node>`
//! for agents and `spiffe://<trust-domain>/multinic/operator/<name>` for
//! people and tools using `multinicctl`. A certificate carries exactly one
//! such URI SAN. This module exists so that the controller can take a peer's
//! node from its certificate and from nowhere else.
//!
//! It must never accept an identity from a foreign trust domain, a node name
//! in any but its canonical (short, lower-case) form, or a certificate with
//! more than one URI SAN.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use multinic_proto::NodeName;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{Error, Result};

/// The trust domain used when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "multinic.local";

/// A SPIFFE trust domain: lower-case letters, digits, `.`, `-` and `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TrustDomain(String);

impl Default for TrustDomain {
    fn default() -> Self {
        Self(DEFAULT_TRUST_DOMAIN.to_owned())
    }
}

impl FromStr for TrustDomain {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self> {
        let err = |reason: &str| Error::Identity { input: input.to_owned(), reason: reason.to_owned() };
        if input.is_empty() || input.len() > 255 {
            return Err(err("a trust domain has 1 to 255 characters"));
        }
        if !input.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)) {
            return Err(err("a trust domain has only lower-case letters, digits, '.', '-' and '_'"));
        }
        Ok(Self(input.to_owned()))
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of an operator (a person or a tool using `multinicctl`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OperatorName(String);

impl OperatorName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for OperatorName {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self> {
        let valid = !input.is_empty()
            && input.len() <= 128
            && input.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !valid {
            return Err(Error::Identity {
                input: input.to_owned(),
                reason: "an operator name has 1 to 128 letters, digits, '.', '-' or '_'".to_owned(),
            });
        }
        Ok(Self(input.to_owned()))
    }
}

impl fmt::Display for OperatorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whom a certificate speaks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// The agent of one node.
    Node(NodeName),
    /// An operator (multinicctl).
    Operator(OperatorName),
}

impl Identity {
    /// `spiffe://<trust-domain>/multinic/{node|operator}/<name>`.
    pub fn spiffe_id(&self, trust_domain: &TrustDomain) -> String {
        match self {
            Self::Node(node) => format!("spiffe://{trust_domain}/multinic/node/{node}"),
            Self::Operator(name) => format!("spiffe://{trust_domain}/multinic/operator/{name}"),
        }
    }

    /// Parses a SPIFFE ID of `trust_domain`; any other trust domain is refused.
    pub fn from_spiffe_id(uri: &str, trust_domain: &TrustDomain) -> Result<Self> {
        let err = |reason: String| Error::Identity { input: uri.to_owned(), reason };
        let rest = uri.strip_prefix("spiffe://").ok_or_else(|| err("not a spiffe:// URI".into()))?;
        let (domain, path) = rest.split_once('/').ok_or_else(|| err("no path".into()))?;
        if domain != trust_domain.0 {
            return Err(err(format!("trust domain {domain:?} is not ours ({trust_domain})")));
        }
        let mut segments = path.split('/');
        let (Some("multinic"), Some(role), Some(name), None) =
            (segments.next(), segments.next(), segments.next(), segments.next())
        else {
            return Err(err("the path is not /multinic/node/<node> or /multinic/operator/<name>".into()));
        };
        match role {
            "node" => {
                let node: NodeName = name.parse().map_err(|e| err(format!("{e}")))?;
                if node.as_str() != name {
                    return Err(err(format!("node name is not in its canonical form {node:?}")));
                }
                Ok(Self::Node(node))
            }
            "operator" => Ok(Self::Operator(name.parse()?)),
            other => Err(err(format!("unknown role {other:?}"))),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Node(node) => write!(f, "node/{node}"),
            Self::Operator(name) => write!(f, "operator/{name}"),
        }
    }
}

/// What a certificate says, read from its DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// Serial number, lower-case hex without leading zeros.
    pub serial: String,
    /// The subject's distinguished name, e.g. `CN=node-1`.
    pub subject: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub uris: Vec<String>,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub is_ca: bool,
}

impl CertificateInfo {
    /// Reads a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| Error::Certificate { reason: format!("not an X.509 certificate: {e}") })?;
        let mut info = Self {
            serial: cert.serial.to_str_radix(16),
            subject: cert.subject().to_string(),
            not_before: unix(cert.validity().not_before.timestamp()),
            not_after: unix(cert.validity().not_after.timestamp()),
            uris: Vec::new(),
            dns_names: Vec::new(),
            ips: Vec::new(),
            is_ca: cert.is_ca(),
        };
        let san = cert
            .subject_alternative_name()
            .map_err(|e| Error::Certificate { reason: format!("bad subjectAltName: {e}") })?;
        for name in san.iter().flat_map(|san| san.value.general_names.iter()) {
            match name {
                GeneralName::URI(uri) => info.uris.push((*uri).to_owned()),
                GeneralName::DNSName(dns) => info.dns_names.push((*dns).to_owned()),
                GeneralName::IPAddress(bytes) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                        info.ips.push(IpAddr::from(v4));
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                        info.ips.push(IpAddr::from(v6));
                    }
                }
                _ => {}
            }
        }
        Ok(info)
    }

    /// Reads the first certificate of a PEM file.
    pub fn from_pem(pem: &[u8]) -> Result<Self> {
        let chain = crate::pem::certificates(pem, "certificate")?;
        // `certificates` never returns an empty chain.
        chain.first().map_or_else(|| Err(Error::Certificate { reason: "empty".into() }), |c| Self::from_der(c))
    }

    /// The identity of the certificate's only URI SAN.
    pub fn identity(&self, trust_domain: &TrustDomain) -> Result<Identity> {
        match self.uris.as_slice() {
            [uri] => Identity::from_spiffe_id(uri, trust_domain),
            [] => Err(Error::Identity { input: self.serial.clone(), reason: "the certificate has no URI SAN".into() }),
            _ => Err(Error::Identity {
                input: self.uris.join(","),
                reason: "the certificate has more than one URI SAN".into(),
            }),
        }
    }

    /// Who the certificate says it is, for log lines: its subject and names.
    pub fn describe(&self) -> String {
        let mut names: Vec<String> = self.uris.clone();
        names.extend(self.dns_names.iter().map(|d| format!("DNS:{d}")));
        names.extend(self.ips.iter().map(|ip| format!("IP:{ip}")));
        let subject = if self.subject.is_empty() { "(empty)" } else { self.subject.as_str() };
        let names = if names.is_empty() { "none".to_owned() } else { names.join(", ") };
        format!("subject {subject}, SAN {names}, serial {}", self.serial)
    }

    /// The whole validity period.
    pub fn lifetime(&self) -> Duration {
        self.not_after.duration_since(self.not_before).unwrap_or_default()
    }

    /// Time left until `not_after` (zero once expired).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.not_after.duration_since(now).unwrap_or_default()
    }

    /// The middle of the validity period: when a short-lived certificate is renewed.
    pub fn half_life(&self) -> SystemTime {
        self.not_before + self.lifetime() / 2
    }
}

fn unix(seconds: i64) -> SystemTime {
    match u64::try_from(seconds) {
        Ok(s) => UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => UNIX_EPOCH,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        "multinic.test".parse().unwrap()
    }

    #[test]
    fn spiffe_ids_round_trip() {
        for identity in [Identity::Node("node-1".parse().unwrap()), Identity::Operator("alice".parse().unwrap())] {
            let uri = identity.spiffe_id(&td());
            assert_eq!(Identity::from_spiffe_id(&uri, &td()).unwrap(), identity, "{uri}");
        }
        assert_eq!(
            Identity::Node("node-1".parse().unwrap()).spiffe_id(&td()),
            "spiffe://multinic.test/multinic/node/node-1"
        );
    }

    #[test]
    fn foreign_and_malformed_ids_are_refused() {
        for (uri, needle) in [
            ("spiffe://evil.test/multinic/node/node-1", "not ours"),
            ("https://multinic.test/multinic/node/node-1", "spiffe://"),
            ("spiffe://multinic.test/other/node/node-1", "path"),
            ("spiffe://multinic.test/multinic/node/node-1/x", "path"),
            ("spiffe://multinic.test/multinic/admin/root", "unknown role"),
            ("spiffe://multinic.test/multinic/node/Node-1", "canonical"),
            ("spiffe://multinic.test/multinic/node/node-1.novalocal", "canonical"),
            ("spiffe://multinic.test/multinic/node/", "node name"),
            ("spiffe://multinic.test/multinic/operator/a b", "operator name"),
            ("spiffe://multinic.test", "no path"),
        ] {
            let err = Identity::from_spiffe_id(uri, &td()).unwrap_err().to_string();
            assert!(err.contains(needle), "{uri}: {err}");
        }
    }

    #[test]
    fn trust_domains_are_validated() {
        assert_eq!(TrustDomain::default().to_string(), DEFAULT_TRUST_DOMAIN);
        assert!("example.org".parse::<TrustDomain>().is_ok());
        for bad in ["", "Example.org", "a/b", "a:1"] {
            assert!(bad.parse::<TrustDomain>().is_err(), "{bad}");
        }
    }
}
