//! The issuer: agents exchange a projected ServiceAccount token for a
//! short-lived certificate naming their node.
//!
//! It listens on its own port (`--issuer-listen`) with server-authenticated
//! TLS only, because its callers have no client certificate yet; the gRPC
//! port keeps requiring one at the handshake. The node written into the
//! certificate comes from the Kubernetes TokenReview of the caller's token;
//! the CSR contributes its public key and nothing else.
//!
//! It must never issue without a successful review, never issue for a node
//! the review does not name, and never log a token.

pub mod token_review;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use multinic_proto::v1::{self, IssueNodeCertificateRequest, IssueNodeCertificateResponse};
use multinic_tls::{CertificateAuthority, CertificateInfo, Identity, Live, TrustDomain, Validity};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

pub use token_review::{IssuancePolicy, TokenReviewer};

use crate::tls::PeerConnection;

/// Largest token or CSR accepted (projected tokens are ~1 KB, CSRs ~0.5 KB).
const MAX_FIELD_BYTES: usize = 16 * 1024;
/// TokenReviews in flight at most: the API server is not ours to flood.
const MAX_CONCURRENT_REVIEWS: usize = 8;

/// Everything the issuer needs.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// Where agents ask for certificates.
    pub listen: SocketAddr,
    /// The CA that signs node certificates (reloaded when its files change).
    /// The gRPC port's client CA bundle must contain it.
    pub ca: Live<CertificateAuthority>,
    pub reviewer: TokenReviewer,
    pub policy: IssuancePolicy,
}

/// The `IssuerService` implementation.
#[derive(Debug, Clone)]
pub struct IssuerSvc {
    config: IssuerConfig,
    trust_domain: TrustDomain,
    reviews: Arc<Semaphore>,
}

impl IssuerSvc {
    pub fn new(config: IssuerConfig, trust_domain: TrustDomain) -> Self {
        Self { config, trust_domain, reviews: Arc::new(Semaphore::new(MAX_CONCURRENT_REVIEWS)) }
    }

    async fn issue(&self, request: &IssueNodeCertificateRequest) -> Result<IssueNodeCertificateResponse, Status> {
        if request.token.is_empty() || request.token.len() > MAX_FIELD_BYTES {
            return Err(Status::invalid_argument("token: expected a projected ServiceAccount token"));
        }
        if request.csr_pem.is_empty() || request.csr_pem.len() > MAX_FIELD_BYTES {
            return Err(Status::invalid_argument("csr_pem: expected a PEM certificate request"));
        }
        let review = {
            let _permit = self.reviews.acquire().await.map_err(|_| Status::unavailable("issuer shutting down"))?;
            self.config
                .reviewer
                .review(&request.token, &self.config.policy.audience)
                .await
                .map_err(|e| Status::unavailable(format!("cannot review the token: {e}")))?
        };
        let node = token_review::node_of(&review, &self.config.policy).inspect_err(|status| {
            warn!(user = %review.user.username, pod = review.user.pod(), "refused to issue: {}", status.message());
        })?;
        let ca = self.config.ca.borrow().clone();
        // Never valid beyond the CA itself.
        let mut validity = Validity::starting_now(self.config.policy.lifetime);
        validity.not_after = validity.not_after.min(ca.info().not_after);
        let pem = ca
            .sign_node_csr(&request.csr_pem, &node, &self.trust_domain, validity)
            .map_err(|e| Status::invalid_argument(format!("csr_pem: {e}")))?;
        let issued = CertificateInfo::from_pem(pem.as_bytes()).map_err(|e| Status::internal(e.to_string()))?;
        let spiffe_id = Identity::Node(node.clone()).spiffe_id(&self.trust_domain);
        info!(
            node = %node,
            pod = review.user.pod(),
            serial = %issued.serial,
            lifetime = ?issued.lifetime(),
            "issued a node certificate"
        );
        Ok(IssueNodeCertificateResponse {
            certificate_chain_pem: pem,
            spiffe_id,
            not_after_unix_ms: unix_ms(issued.not_after),
        })
    }
}

#[tonic::async_trait]
impl v1::issuer_service_server::IssuerService for IssuerSvc {
    async fn issue_node_certificate(
        &self,
        request: Request<IssueNodeCertificateRequest>,
    ) -> Result<Response<IssueNodeCertificateResponse>, Status> {
        let remote = PeerConnection::of(&request).map(|c| c.remote.to_string()).unwrap_or_default();
        match self.issue(request.get_ref()).await {
            Ok(response) => Ok(Response::new(response)),
            Err(status) => {
                warn!(remote = %remote, code = ?status.code(), "refused a certificate request: {}", status.message());
                Err(status)
            }
        }
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
