//! A certificate authority: signs controller (server), agent and operator
//! certificates, and node certificates from CSRs.
//!
//! The controller's issuer uses it to turn a verified token into a node
//! certificate; `multinicctl certs` and the tests use it as a development
//! PKI. It exists so that every certificate multinic makes has the same,
//! minimal shape: one name (a SPIFFE ID for clients), the one extended key
//! usage the role needs, no CA flag, a random serial.
//!
//! It must never copy anything a CSR asks for into a certificate: only the
//! CSR's public key is used (its signature proves the requester holds the key).

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use multinic_proto::NodeName;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::{CertificateInfo, Identity, TrustDomain};
use crate::{Error, Result};

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// Valid from a little before now (clock skew between machines: a tenth
    /// of the lifetime, at most a minute) for `lifetime`.
    pub fn starting_now(lifetime: Duration) -> Self {
        let now = SystemTime::now();
        Self { not_before: now - (lifetime / 10).min(Duration::from_secs(60)), not_after: now + lifetime }
    }
}

/// A certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyedCertificate {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for KeyedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let info = CertificateInfo::from_pem(self.cert_pem.as_bytes()).ok();
        f.debug_struct("KeyedCertificate").field("cert", &info).finish_non_exhaustive()
    }
}

impl KeyedCertificate {
    /// Writes the certificate (0644) and the key (0600), each atomically; the
    /// key first, so a reader never sees a new certificate with an old key
    /// for long (and readers check that the two match anyway).
    pub fn write(&self, cert: &Path, key: &Path) -> Result<()> {
        crate::pem::write_atomic(key, self.key_pem.as_bytes(), 0o600)?;
        crate::pem::write_atomic(cert, self.cert_pem.as_bytes(), 0o644)
    }

    /// What the certificate says.
    pub fn info(&self) -> Result<CertificateInfo> {
        CertificateInfo::from_pem(self.cert_pem.as_bytes())
    }
}

/// A CA certificate with the key that signs with it.
pub struct CertificateAuthority {
    cert_pem: String,
    info: CertificateInfo,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority").field("cert", &self.info).finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A new self-signed CA (ECDSA P-256).
    pub fn generate(common_name: &str, lifetime: Duration) -> Result<Self> {
        let key = KeyPair::generate().map_err(rcgen_err("generate the CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial()?);
        set_validity(&mut params, Validity::starting_now(lifetime));
        let cert = params.self_signed(&key).map_err(rcgen_err("self-sign the CA"))?;
        let cert_pem = cert.pem();
        let info = CertificateInfo::from_der(cert.der())?;
        Ok(Self { cert_pem, info, issuer: Issuer::new(params, key) })
    }

    /// A CA from its PEM certificate and key; refuses a key that is not the
    /// certificate's (e.g. a half-finished rotation).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(key_pem).map_err(rcgen_err("CA key"))?;
        let der = crate::pem::certificates(cert_pem.as_bytes(), "CA certificate")?;
        let first = der.first().ok_or_else(|| Error::Certificate { reason: "empty CA certificate file".into() })?;
        let (_, x509) = X509Certificate::from_der(first)
            .map_err(|e| Error::Certificate { reason: format!("CA certificate: {e}") })?;
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(Error::Certificate { reason: "the CA key does not belong to the CA certificate".into() });
        }
        let info = CertificateInfo::from_der(first)?;
        if !info.is_ca {
            return Err(Error::Certificate { reason: "the CA certificate is not a CA (basicConstraints)".into() });
        }
        let issuer = Issuer::from_ca_cert_der(first, key).map_err(rcgen_err("CA certificate"))?;
        Ok(Self { cert_pem: cert_pem.to_owned(), info, issuer })
    }

    /// Reads a CA from its certificate and key files.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self> {
        let cert_pem = String::from_utf8_lossy(&crate::pem::read(cert)?).into_owned();
        let key_pem = String::from_utf8_lossy(&crate::pem::read(key)?).into_owned();
        Self::from_pem(&cert_pem, &key_pem)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The signing key, PEM (PKCS#8). Handle with care.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    pub fn info(&self) -> &CertificateInfo {
        &self.info
    }

    /// A server certificate (the controller's) for DNS names and IPs.
    pub fn server_certificate(&self, dns: &[String], ips: &[IpAddr], validity: Validity) -> Result<KeyedCertificate> {
        let mut sans = Vec::new();
        for name in dns {
            let ia5 = name.clone().try_into().map_err(rcgen_err("DNS name"))?;
            sans.push(SanType::DnsName(ia5));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let cn = dns.first().cloned().unwrap_or_else(|| "multinic-controller".to_owned());
        let params = self.leaf_params(&cn, sans, ExtendedKeyUsagePurpose::ServerAuth, validity)?;
        self.sign_new_key(&params)
    }

    /// A client certificate naming `identity` (an agent or an operator).
    pub fn client_certificate(
        &self,
        identity: &Identity,
        trust_domain: &TrustDomain,
        validity: Validity,
    ) -> Result<KeyedCertificate> {
        let params = self.client_params(identity, trust_domain, validity)?;
        self.sign_new_key(&params)
    }

    /// Signs the public key of a PEM CSR into a node certificate for `node`.
    /// The CSR's signature is checked; its names, CA flag and key usages are
    /// ignored: the certificate names `node` and nothing else.
    pub fn sign_node_csr(
        &self,
        csr_pem: &str,
        node: &NodeName,
        trust_domain: &TrustDomain,
        validity: Validity,
    ) -> Result<String> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(rcgen_err("certificate request"))?;
        let params = self.client_params(&Identity::Node(node.clone()), trust_domain, validity)?;
        let cert = params.signed_by(&csr.public_key, &self.issuer).map_err(rcgen_err("sign the node certificate"))?;
        Ok(cert.pem())
    }

    fn client_params(&self, identity: &Identity, td: &TrustDomain, validity: Validity) -> Result<CertificateParams> {
        let uri = identity.spiffe_id(td).try_into().map_err(rcgen_err("SPIFFE ID"))?;
        self.leaf_params(
            &format!("multinic {identity}"),
            vec![SanType::URI(uri)],
            ExtendedKeyUsagePurpose::ClientAuth,
            validity,
        )
    }

    fn leaf_params(
        &self,
        common_name: &str,
        sans: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
        validity: Validity,
    ) -> Result<CertificateParams> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        set_validity(&mut params, validity);
        Ok(params)
    }

    fn sign_new_key(&self, params: &CertificateParams) -> Result<KeyedCertificate> {
        let key = KeyPair::generate().map_err(rcgen_err("generate a key"))?;
        let cert = params.signed_by(&key, &self.issuer).map_err(rcgen_err("sign the certificate"))?;
        Ok(KeyedCertificate { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// A new private key (PEM) and a CSR (PEM) for it that asks for no names:
/// what an agent sends to the issuer.
pub fn new_key_and_csr() -> Result<(String, String)> {
    let key = KeyPair::generate().map_err(rcgen_err("generate a key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(rcgen_err("make a CSR"))?;
    let csr_pem = csr.pem().map_err(rcgen_err("encode the CSR"))?;
    Ok((key.serialize_pem(), csr_pem))
}

fn set_validity(params: &mut CertificateParams, validity: Validity) {
    params.not_before = validity.not_before.into();
    params.not_after = validity.not_after.into();
}

/// 16 random bytes, positive (high bit clear) and never zero.
fn random_serial() -> Result<SerialNumber> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Certificate { reason: "no randomness for a serial number".into() })?;
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn rcgen_err(what: &'static str) -> impl Fn(rcgen::Error) -> Error {
    move |source| Error::Rcgen { what: what.to_owned(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        "multinic.test".parse().unwrap()
    }

    #[test]
    fn node_certificates_from_csrs_ignore_what_the_csr_asks_for() {
        let ca = CertificateAuthority::generate("test CA", Duration::from_secs(3600)).unwrap();
        // A CSR that asks for another node, a DNS name, an IP and the CA flag.
        let key = KeyPair::generate().unwrap();
        let mut wanted = CertificateParams::new(vec!["admin.evil".to_owned(), "10.0.0.1".to_owned()]).unwrap();
        wanted.subject_alt_names.push(SanType::URI("spiffe://multinic.test/multinic/node/node-b".try_into().unwrap()));
        wanted.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let csr = wanted.serialize_request(&key).unwrap().pem().unwrap();

        let node: NodeName = "node-a".parse().unwrap();
        let pem = ca.sign_node_csr(&csr, &node, &td(), Validity::starting_now(Duration::from_secs(600))).unwrap();
        let info = CertificateInfo::from_pem(pem.as_bytes()).unwrap();
        assert_eq!(info.uris, vec!["spiffe://multinic.test/multinic/node/node-a".to_owned()]);
        assert!(info.dns_names.is_empty() && info.ips.is_empty() && !info.is_ca, "{info:?}");
        assert_eq!(info.identity(&td()).unwrap(), Identity::Node(node));
        let certified = crate::server::certified_key(pem.as_bytes(), key.serialize_pem().as_bytes(), "issued");
        assert!(certified.is_ok(), "the CSR's key is certified: {certified:?}");
    }

    #[test]
    fn tampered_csrs_and_mismatched_ca_keys_are_refused() {
        let ca = CertificateAuthority::generate("test CA", Duration::from_secs(3600)).unwrap();
        let (_key, csr) = new_key_and_csr().unwrap();
        let tampered = csr.replacen("MI", "MJ", 1);
        let node: NodeName = "node-a".parse().unwrap();
        assert!(ca.sign_node_csr(&tampered, &node, &td(), Validity::starting_now(Duration::from_secs(60))).is_err());

        let other = CertificateAuthority::generate("other CA", Duration::from_secs(3600)).unwrap();
        let err = CertificateAuthority::from_pem(ca.cert_pem(), &other.key_pem()).unwrap_err().to_string();
        assert!(err.contains("does not belong"), "{err}");
        let reloaded = CertificateAuthority::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(reloaded.info(), ca.info());
    }

    #[test]
    fn server_and_client_certificates_have_their_names() {
        let ca = CertificateAuthority::generate("test CA", Duration::from_secs(3600)).unwrap();
        let validity = Validity::starting_now(Duration::from_secs(600));
        let server = ca
            .server_certificate(&["controller.multinic.test".into()], &["127.0.0.1".parse().unwrap()], validity)
            .unwrap();
        let info = server.info().unwrap();
        assert_eq!(info.dns_names, vec!["controller.multinic.test".to_owned()]);
        assert_eq!(info.ips, vec!["127.0.0.1".parse::<IpAddr>().unwrap()]);
        let operator = Identity::Operator("alice".parse().unwrap());
        let client = ca.client_certificate(&operator, &td(), validity).unwrap();
        assert_eq!(client.info().unwrap().identity(&td()).unwrap(), operator);
        assert!(info.lifetime() >= Duration::from_secs(600));
    }
}
