//! Asking Kubernetes who a ServiceAccount token belongs to (TokenReview),
//! and deciding whether that answer earns a node certificate.
//!
//! Exists because the issuer must never take a node name from its caller:
//! the node comes from the API server's review of the caller's projected
//! token (`user.extra["authentication.kubernetes.io/node-name"]`, set for
//! pod-bound tokens since Kubernetes 1.30). [`node_of`] is pure and holds
//! every rule; [`TokenReviewer`] only does the HTTP round trip.
//!
//! It never logs or stores a token.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use multinic_proto::NodeName;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tonic::Status;

/// The `user.extra` key naming the node a pod-bound token's pod runs on.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
/// The `user.extra` key naming that pod (logged).
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// The in-cluster ServiceAccount files of the controller's own pod.
pub const IN_CLUSTER_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
pub const IN_CLUSTER_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// Largest TokenReview response read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// What a token must say to earn a node certificate.
#[derive(Debug, Clone)]
pub struct IssuancePolicy {
    /// The audience the agents' projected tokens are minted for.
    pub audience: String,
    /// The agents' ServiceAccount user name, `system:serviceaccount:<ns>:<name>`.
    pub service_account: String,
    /// How long an issued certificate is valid.
    pub lifetime: Duration,
}

/// `status` of a TokenReview (the fields we read).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ReviewStatus {
    #[serde(default)]
    pub authenticated: bool,
    #[serde(default)]
    pub user: ReviewUser,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    pub error: String,
}

/// `status.user` of a TokenReview.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ReviewUser {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub extra: BTreeMap<String, Vec<String>>,
}

impl ReviewUser {
    fn extra(&self, key: &str) -> Option<&str> {
        match self.extra.get(key).map(Vec::as_slice) {
            Some([one]) => Some(one.as_str()),
            _ => None,
        }
    }

    /// The pod the token is bound to, for logs.
    pub fn pod(&self) -> &str {
        self.extra(POD_NAME_EXTRA).unwrap_or("")
    }
}

/// The node a reviewed token may have a certificate for, or why not.
pub fn node_of(review: &ReviewStatus, policy: &IssuancePolicy) -> Result<NodeName, Status> {
    if !review.authenticated {
        let why = if review.error.is_empty() { "no reason given" } else { review.error.as_str() };
        return Err(Status::unauthenticated(format!("the token was not authenticated: {why}")));
    }
    // An audience-aware API server returns the audiences it checked; an
    // empty list would mean "valid for the API server itself", not for us.
    if !review.audiences.contains(&policy.audience) {
        return Err(Status::unauthenticated(format!(
            "the token is not for audience {:?} (reviewed audiences: {:?})",
            policy.audience, review.audiences
        )));
    }
    if review.user.username != policy.service_account {
        return Err(Status::permission_denied(format!(
            "{:?} is not the agents' ServiceAccount {:?}",
            review.user.username, policy.service_account
        )));
    }
    let node = review.user.extra(NODE_NAME_EXTRA).ok_or_else(|| {
        Status::permission_denied(format!(
            "the token names no node ({NODE_NAME_EXTRA}): use a projected, pod-bound token on Kubernetes 1.30 or later"
        ))
    })?;
    node.parse().map_err(|e| Status::permission_denied(format!("the token's node: {e}")))
}

/// Sends TokenReviews to the Kubernetes API (or a test endpoint).
#[derive(Debug, Clone)]
pub struct TokenReviewer {
    url: Uri,
    /// TLS to the API server (`https://` URLs).
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The controller's own ServiceAccount token, re-read for every review
    /// (the kubelet rotates it).
    bearer_token: Option<PathBuf>,
    timeout: Duration,
}

impl TokenReviewer {
    /// `https://` URLs are checked against `ca_pem`; `http://` is for tests.
    pub fn new(url: &str, ca_pem: Option<&[u8]>, bearer_token: Option<PathBuf>) -> Result<Self, String> {
        let url: Uri = url.parse().map_err(|e| format!("invalid TokenReview URL {url:?}: {e}"))?;
        let tls = match url.scheme_str() {
            Some("http") => None,
            Some("https") => {
                let ca = ca_pem.ok_or("an https TokenReview URL needs the API server's CA")?;
                let roots = multinic_tls::pem::root_store(ca, "API server CA").map_err(|e| e.to_string())?;
                let mut config = rustls::ClientConfig::builder_with_provider(multinic_tls::provider())
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                Some(Arc::new(config))
            }
            _ => return Err(format!("the TokenReview URL {url} must be http:// or https://")),
        };
        if url.host().is_none() {
            return Err(format!("the TokenReview URL {url} has no host"));
        }
        Ok(Self { url, tls, bearer_token, timeout: Duration::from_secs(10) })
    }

    /// `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/apis/authentication.k8s.io/v1/tokenreviews`.
    pub fn in_cluster_url() -> Option<String> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").ok()?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        let host = if host.contains(':') { format!("[{host}]") } else { host };
        Some(format!("https://{host}:{port}/apis/authentication.k8s.io/v1/tokenreviews"))
    }

    /// Reviews `token` for `audience`.
    pub async fn review(&self, token: &str, audience: &str) -> Result<ReviewStatus, String> {
        tokio::time::timeout(self.timeout, self.round_trip(token, audience))
            .await
            .map_err(|_| format!("no answer from {} within {:?}", self.url, self.timeout))?
    }

    async fn round_trip(&self, token: &str, audience: &str) -> Result<ReviewStatus, String> {
        let body = serde_json::to_vec(&ReviewRequest::new(token, audience)).map_err(|e| e.to_string())?;
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.url.path_and_query().map_or("/", |p| p.as_str()))
            .header(header::HOST, self.url.authority().map_or("", |a| a.as_str()))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json");
        if let Some(path) = &self.bearer_token {
            let bearer = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the controller's token {}: {e}", path.display()))?;
            request = request.header(header::AUTHORIZATION, format!("Bearer {}", bearer.trim()));
        }
        let request = request.body(Full::new(Bytes::from(body))).map_err(|e| e.to_string())?;

        let host = self.url.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = self.url.port_u16().unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        let tcp = TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("connect {}: {e}", self.url))?;
        let (status, bytes) = match &self.tls {
            None => send(tcp, request).await?,
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS to {}: {e}", self.url))?;
                send(tls, request).await?
            }
        };
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            return Err(format!("{} answered {status}: {}", self.url, text.chars().take(300).collect::<String>()));
        }
        let review: ReviewResponse =
            serde_json::from_slice(&bytes).map_err(|e| format!("unreadable TokenReview from {}: {e}", self.url))?;
        Ok(review.status)
    }
}

async fn send<IO>(io: IO, request: Request<Full<Bytes>>) -> Result<(http::StatusCode, Bytes), String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(|e| format!("TokenReview request: {e}"))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| format!("TokenReview response: {e}"))?;
    Ok((status, body.to_bytes()))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewRequest<'a> {
    api_version: &'static str,
    kind: &'static str,
    spec: ReviewSpec<'a>,
}

#[derive(Serialize)]
struct ReviewSpec<'a> {
    token: &'a str,
    audiences: [&'a str; 1],
}

impl<'a> ReviewRequest<'a> {
    fn new(token: &'a str, audience: &'a str) -> Self {
        Self {
            api_version: "authentication.k8s.io/v1",
            kind: "TokenReview",
            spec: ReviewSpec { token, audiences: [audience] },
        }
    }
}

#[derive(Deserialize)]
struct ReviewResponse {
    #[serde(default)]
    status: ReviewStatus,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> IssuancePolicy {
        IssuancePolicy {
            audience: "multinic-controller".into(),
            service_account: "system:serviceaccount:multinic:multinic-agent".into(),
            lifetime: Duration::from_secs(3600),
        }
    }

    fn review(json: serde_json::Value) -> ReviewStatus {
        serde_json::from_value::<ReviewResponse>(serde_json::json!({ "status": json })).unwrap().status
    }

    fn good() -> serde_json::Value {
        serde_json::json!({
            "authenticated": true,
            "audiences": ["multinic-controller"],
            "user": {
                "username": "system:serviceaccount:multinic:multinic-agent",
                "extra": { NODE_NAME_EXTRA: ["Worker-1.example.com"], POD_NAME_EXTRA: ["agent-x"] }
            }
        })
    }

    #[test]
    fn a_reviewed_pod_token_names_its_node() {
        let status = review(good());
        assert_eq!(node_of(&status, &policy()).unwrap().as_str(), "worker-1");
        assert_eq!(status.user.pod(), "agent-x");
    }

    #[test]
    fn every_other_review_is_refused_with_a_reason() {
        use tonic::Code::{PermissionDenied, Unauthenticated};
        type Mutation = fn(&mut serde_json::Value);
        let cases: Vec<(&str, Mutation, tonic::Code, &str)> = vec![
            ("unauthenticated", (|v| v["authenticated"] = false.into()), Unauthenticated, "not authenticated"),
            ("wrong audience", (|v| v["audiences"] = serde_json::json!(["kubernetes"])), Unauthenticated, "audience"),
            ("no audiences", (|v| v["audiences"] = serde_json::json!([])), Unauthenticated, "audience"),
            (
                "other ServiceAccount",
                (|v| v["user"]["username"] = "system:serviceaccount:default:default".into()),
                PermissionDenied,
                "not the agents' ServiceAccount",
            ),
            ("no node", (|v| v["user"]["extra"] = serde_json::json!({})), PermissionDenied, "names no node"),
            (
                "two nodes",
                (|v| v["user"]["extra"][NODE_NAME_EXTRA] = serde_json::json!(["a", "b"])),
                PermissionDenied,
                "names no node",
            ),
            (
                "bad node",
                (|v| v["user"]["extra"][NODE_NAME_EXTRA] = serde_json::json!(["a/b"])),
                PermissionDenied,
                "node",
            ),
        ];
        for (name, mutate, code, needle) in cases {
            let mut json = good();
            mutate(&mut json);
            let status = node_of(&review(json), &policy()).unwrap_err();
            assert_eq!(status.code(), code, "{name}: {status:?}");
            assert!(status.message().contains(needle), "{name}: {}", status.message());
        }
    }

    #[test]
    fn the_request_is_a_v1_token_review_for_our_audience() {
        let json = serde_json::to_value(ReviewRequest::new("tok", "aud")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "spec": { "token": "tok", "audiences": ["aud"] }
            })
        );
    }
}
