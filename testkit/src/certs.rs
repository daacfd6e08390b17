//! A throwaway PKI for tests: a CA in a temporary folder, the controller's
//! certificate (for 127.0.0.1 and localhost), and agent and operator
//! certificates made on demand, all written as files so that the code under
//! test reads them (and reloads them) exactly as in production.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use multinic_agent::tls::{AgentIdentity, AgentTls};
use multinic_controller::tls::TlsConfig;
use multinic_tls::{
    CertificateAuthority, ClientTls, Identity, KeyedCertificate, OperatorName, ServerTls, TrustDomain, Validity,
};
use tempfile::TempDir;

/// How often tests' TLS files are re-read (production: seconds).
pub const RELOAD: Duration = Duration::from_millis(100);

/// The trust domain of test identities.
pub const TRUST_DOMAIN: &str = "multinic.test";

/// A certificate and key on disk.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA and the files made with it.
#[derive(Debug)]
pub struct TestPki {
    dir: TempDir,
    ca: CertificateAuthority,
    trust_domain: TrustDomain,
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

impl TestPki {
    /// A new CA (`ca.crt`, `ca.key`) and the controller's certificate.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("multinic-pki-").tempdir().unwrap();
        // Each test CA has its own name, as distinct CAs do.
        let name = format!("multinic test CA {}", dir.path().display());
        let ca = CertificateAuthority::generate(&name, Duration::from_secs(86_400)).unwrap();
        let pem = KeyedCertificate { cert_pem: ca.cert_pem().to_owned(), key_pem: ca.key_pem() };
        pem.write(&dir.path().join("ca.crt"), &dir.path().join("ca.key")).unwrap();
        let pki = Self { dir, ca, trust_domain: TRUST_DOMAIN.parse().unwrap() };
        pki.write_controller("controller");
        pki
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The CA certificate (`ca.crt`): the controller's client CA and the
    /// agents' controller CA.
    pub fn ca_file(&self) -> PathBuf {
        self.dir().join("ca.crt")
    }

    /// The controller's certificate files (`controller.crt`, `controller.key`).
    pub fn controller(&self) -> CertFiles {
        self.files("controller")
    }

    /// Writes a fresh controller certificate to `<stem>.crt`/`<stem>.key`.
    pub fn write_controller(&self, stem: &str) -> CertFiles {
        let validity = Validity::starting_now(Duration::from_secs(86_400));
        let issued =
            self.ca.server_certificate(&["localhost".into()], &["127.0.0.1".parse().unwrap()], validity).unwrap();
        self.write(stem, &issued)
    }

    /// `agent-<node>.crt`/`.key`, valid for a day.
    pub fn agent(&self, node: &str) -> CertFiles {
        self.agent_with(node, Validity::starting_now(Duration::from_secs(86_400)))
    }

    /// An agent certificate with the given validity (e.g. expired).
    pub fn agent_with(&self, node: &str, validity: Validity) -> CertFiles {
        self.client(&format!("agent-{node}"), &Identity::Node(node.parse().unwrap()), &self.trust_domain, validity)
    }

    /// `operator-<name>.crt`/`.key`.
    pub fn operator(&self, name: &str) -> CertFiles {
        let identity = Identity::Operator(name.parse::<OperatorName>().unwrap());
        self.client(
            &format!("operator-{name}"),
            &identity,
            &self.trust_domain,
            Validity::starting_now(Duration::from_secs(86_400)),
        )
    }

    /// A client certificate signed by this CA for any identity and trust
    /// domain (e.g. a foreign one), written to `<stem>.crt`/`.key`.
    pub fn client(&self, stem: &str, identity: &Identity, td: &TrustDomain, validity: Validity) -> CertFiles {
        let issued = self.ca.client_certificate(identity, td, validity).unwrap();
        self.write(stem, &issued)
    }

    /// Writes `issued` to `<stem>.crt`/`<stem>.key` (atomically, key first).
    pub fn write(&self, stem: &str, issued: &KeyedCertificate) -> CertFiles {
        let files = self.files(stem);
        issued.write(&files.cert, &files.key).unwrap();
        files
    }

    fn files(&self, stem: &str) -> CertFiles {
        CertFiles { cert: self.dir().join(format!("{stem}.crt")), key: self.dir().join(format!("{stem}.key")) }
    }

    /// The controller's mTLS settings, reading (and reloading) its files.
    pub fn controller_tls(&self) -> TlsConfig {
        let files = self.controller();
        let server = ServerTls::from_files(&files.cert, &files.key, &self.ca_file(), RELOAD).unwrap();
        TlsConfig::new(server, self.trust_domain.clone())
    }

    /// An agent's TLS settings with a mounted certificate for `node`.
    pub fn agent_tls(&self, node: &str) -> AgentTls {
        let files = self.agent(node);
        AgentTls {
            ca: self.ca_file(),
            identity: AgentIdentity::Mounted { cert: files.cert, key: files.key },
            server_name: None,
            reload_interval: RELOAD,
        }
    }

    /// A TLS client presenting `files`, checking the controller against this CA.
    pub fn client_tls(&self, files: &CertFiles) -> ClientTls {
        ClientTls::from_files(&self.ca_file(), &files.cert, &files.key, RELOAD).unwrap()
    }
}

/// A validity that ended a day ago.
pub fn expired() -> Validity {
    let now = SystemTime::now();
    Validity { not_before: now - Duration::from_secs(2 * 86_400), not_after: now - Duration::from_secs(86_400) }
}

/// A channel to `url` (`https://…`) over `tls`; errors as one line.
pub async fn channel(url: &str, tls: &ClientTls) -> Result<tonic::transport::Channel, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10));
    tls.connect(&endpoint).await.map_err(|e| error_chain(&e))
}

/// An error with its sources, on one line.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    multinic_runtime::error_chain(error)
}

/// A folder laid out like a mounted Kubernetes Secret: each file is a
/// symlink `name -> ..data/name`, `..data` a symlink to a timestamped folder,
/// and an update writes a new folder and swaps `..data` atomically (what the
/// kubelet's AtomicWriter does).
#[derive(Debug)]
pub struct SecretDir {
    dir: TempDir,
    version: std::sync::atomic::AtomicU32,
}

impl Default for SecretDir {
    fn default() -> Self {
        Self::new()
    }
}

impl SecretDir {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("multinic-secret-").tempdir().unwrap();
        Self { dir, version: std::sync::atomic::AtomicU32::new(0) }
    }

    /// The path of `name` (a symlink that always resolves to the newest version).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replaces the whole Secret with `files` (name, contents).
    pub fn update(&self, files: &[(&str, &str)]) {
        let n = self.version.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let version = format!("..2026_01_01_00_00_{n:02}");
        let folder = self.dir.path().join(&version);
        std::fs::create_dir(&folder).unwrap();
        for (name, contents) in files {
            std::fs::write(folder.join(name), contents).unwrap();
            let link = self.path(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
            }
        }
        let tmp = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("..data")).unwrap();
    }
}

/// The PEM text of a file.
pub fn pem(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}
