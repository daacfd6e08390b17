//! `multinicctl certs`: a development CA and the certificates signed by it,
//! so that running multinic with mTLS needs no openssl recipe.
//!
//! `init` makes the CA (`ca.crt`, `ca.key`); `controller`, `agent` and
//! `operator` make `<name>.crt` and `<name>.key` signed by it, with exactly
//! the names the controller expects (a SPIFFE ID for clients). Keys are
//! written with mode 0600. This command never overwrites a CA without
//! `--force`, and is meant for development and tests: production clusters
//! use the controller's issuer or cert-manager.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::out::outln;
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use multinic_proto::NodeName;
use multinic_tls::{CertificateAuthority, Identity, KeyedCertificate, OperatorName, TrustDomain, Validity};

const DAY: Duration = Duration::from_secs(86_400);

#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Folder holding the CA (ca.crt, ca.key) and the certificates made with it.
    #[arg(long, env = "MULTINIC_CERTS_DIR", default_value = "multinic-certs")]
    dir: PathBuf,

    /// SPIFFE trust domain of agent and operator identities (the controller's --trust-domain).
    #[arg(long, env = "MULTINIC_TRUST_DOMAIN", default_value = multinic_tls::DEFAULT_TRUST_DOMAIN)]
    trust_domain: TrustDomain,

    #[command(subcommand)]
    what: CertsCommand,
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Create a development CA: ca.crt and ca.key.
    Init {
        /// Days the CA is valid.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Replace an existing CA (every certificate it signed stops working).
        #[arg(long)]
        force: bool,
    },
    /// The controller's server certificate: controller.crt, controller.key.
    Controller {
        /// DNS names agents and multinicctl connect to (comma-separated or repeated).
        #[arg(long, value_delimiter = ',', default_values_t = ["localhost".to_owned()])]
        dns: Vec<String>,
        /// IP addresses agents and multinicctl connect to.
        #[arg(long, value_delimiter = ',', default_values_t = [IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)])]
        ip: Vec<IpAddr>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// An agent's certificate for one node: agent-<node>.crt, agent-<node>.key.
    Agent {
        /// The node (its short, lower-case name is what the certificate names).
        #[arg(long)]
        node: NodeName,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// An operator's certificate for multinicctl: operator-<name>.crt, operator-<name>.key.
    Operator {
        /// The operator's name.
        #[arg(long)]
        name: OperatorName,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

pub fn run(args: CertsArgs) -> anyhow::Result<ExitCode> {
    let CertsArgs { dir, trust_domain, what } = args;
    let days = |n: u32| DAY * n;
    match what {
        CertsCommand::Init { days: n, force } => {
            let (cert, key) = (dir.join("ca.crt"), dir.join("ca.key"));
            if cert.exists() && !force {
                bail!("{} exists; pass --force to replace the CA", cert.display());
            }
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            let ca = CertificateAuthority::generate("multinic development CA", days(n))?;
            let pem = KeyedCertificate { cert_pem: ca.cert_pem().to_owned(), key_pem: ca.key_pem() };
            write(&pem, &cert, &key)?;
        }
        CertsCommand::Controller { dns, ip, days: n } => {
            let issued = load_ca(&dir)?.server_certificate(&dns, &ip, Validity::starting_now(days(n)))?;
            write(&issued, &dir.join("controller.crt"), &dir.join("controller.key"))?;
        }
        CertsCommand::Agent { node, days: n } => {
            let identity = Identity::Node(node.clone());
            let issued =
                load_ca(&dir)?.client_certificate(&identity, &trust_domain, Validity::starting_now(days(n)))?;
            write(&issued, &dir.join(format!("agent-{node}.crt")), &dir.join(format!("agent-{node}.key")))?;
        }
        CertsCommand::Operator { name, days: n } => {
            let identity = Identity::Operator(name.clone());
            let issued =
                load_ca(&dir)?.client_certificate(&identity, &trust_domain, Validity::starting_now(days(n)))?;
            write(&issued, &dir.join(format!("operator-{name}.crt")), &dir.join(format!("operator-{name}.key")))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn load_ca(dir: &Path) -> anyhow::Result<CertificateAuthority> {
    let (cert, key) = (dir.join("ca.crt"), dir.join("ca.key"));
    if !cert.exists() {
        bail!("no CA in {}: run `multinicctl certs --dir {} init` first", dir.display(), dir.display());
    }
    Ok(CertificateAuthority::from_files(&cert, &key)?)
}

fn write(issued: &KeyedCertificate, cert: &Path, key: &Path) -> anyhow::Result<()> {
    issued.write(cert, key)?;
    let info = issued.info()?;
    let names: Vec<String> = info
        .uris
        .iter()
        .cloned()
        .chain(info.dns_names.iter().map(|d| format!("DNS:{d}")))
        .chain(info.ips.iter().map(|ip| format!("IP:{ip}")))
        .collect();
    let until = humantime::format_rfc3339_seconds(info.not_after);
    let names = if names.is_empty() { "(CA)".to_owned() } else { names.join(", ") };
    outln!("wrote {} and {} (0600): {names}, valid until {until}", cert.display(), key.display());
    Ok(())
}
