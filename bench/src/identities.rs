//! One client certificate per simulated node, made in memory.
//!
//! Exists because the controller takes a node's name from its certificate
//! only: ten thousand agents need ten thousand certificates. Keys and
//! certificates never touch the disk (the real agents of the benchmark use
//! files, made by the test PKI). It never weakens verification: every agent
//! checks the controller against the CA like the real one does.

use std::sync::Arc;
use std::time::Duration;

use multinic_proto::NodeName;
use multinic_tls::client::server_verifier;
use multinic_tls::server::certified_key;
use multinic_tls::{CertificateAuthority, ClientTls, Identity, TrustDomain, Validity};
use rustls::client::danger::ServerCertVerifier;
use tokio::sync::watch;

use crate::BenchError;
use crate::sim::SimAgent;

/// Makes a simulated agent, with a fresh key and certificate, for each node.
/// Key generation and signing run on every core.
pub async fn make_agents(
    ca: &CertificateAuthority,
    trust_domain: &TrustDomain,
    nodes: &[NodeName],
) -> Result<Vec<Arc<SimAgent>>, BenchError> {
    let verifier = server_verifier(ca.cert_pem().as_bytes(), "controller CA").map_err(tls_error)?;
    let (_, roots) = watch::channel::<Arc<dyn ServerCertVerifier>>(verifier);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = nodes.len().div_ceil(workers).max(1);
    let mut jobs = Vec::new();
    for part in nodes.chunks(chunk) {
        let (part, td, roots) = (part.to_vec(), trust_domain.clone(), roots.clone());
        let (ca_cert, ca_key) = (ca.cert_pem().to_owned(), ca.key_pem());
        jobs.push(tokio::task::spawn_blocking(move || {
            let ca = CertificateAuthority::from_pem(&ca_cert, &ca_key).map_err(tls_error)?;
            part.into_iter()
                .map(|node| {
                    let validity = Validity::starting_now(Duration::from_secs(86_400));
                    let issued =
                        ca.client_certificate(&Identity::Node(node.clone()), &td, validity).map_err(tls_error)?;
                    let key = certified_key(issued.cert_pem.as_bytes(), issued.key_pem.as_bytes(), "agent")
                        .map_err(tls_error)?;
                    let (_, identity) = watch::channel(key);
                    let tls = ClientTls::new(roots.clone(), Some(identity)).map_err(tls_error)?;
                    Ok(Arc::new(SimAgent::new(node, tls)))
                })
                .collect::<Result<Vec<_>, BenchError>>()
        }));
    }
    let mut agents = Vec::with_capacity(nodes.len());
    for job in jobs {
        let part = job.await.map_err(|e| BenchError::Setup(format!("certificate worker failed: {e}")))??;
        agents.extend(part);
    }
    Ok(agents)
}

fn tls_error(e: multinic_tls::Error) -> BenchError {
    BenchError::Setup(format!("certificates: {e}"))
}
