//! A fake Kubernetes TokenReview endpoint, for the one edge that cannot run
//! here (no API server): it answers
//! `POST /apis/authentication.k8s.io/v1/tokenreviews` from a table of known
//! tokens the way the API server does (audiences intersected, unknown tokens
//! unauthenticated, a bad bearer token 401), and records every review.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// The ServiceAccount of test agents.
pub const AGENT_SERVICE_ACCOUNT: &str = "system:serviceaccount:multinic:multinic-agent";
/// The audience test agents' tokens are minted for.
pub const AUDIENCE: &str = "multinic-controller";
/// The bearer token the controller must present.
pub const CONTROLLER_TOKEN: &str = "controller-sa-token";

/// What the API server knows about a token.
#[derive(Debug, Clone)]
pub struct TokenIdentity {
    pub audiences: Vec<String>,
    pub username: String,
    /// `user.extra["authentication.kubernetes.io/node-name"]`.
    pub node: Option<String>,
}

impl TokenIdentity {
    /// A pod-bound token of the agent on `node`.
    pub fn agent(node: &str) -> Self {
        Self { audiences: vec![AUDIENCE.into()], username: AGENT_SERVICE_ACCOUNT.into(), node: Some(node.into()) }
    }
}

/// One review the fake answered.
#[derive(Debug, Clone)]
pub struct RecordedReview {
    pub authorization: String,
    pub token: String,
    pub audiences: Vec<String>,
}

#[derive(Debug, Default)]
struct Known {
    tokens: HashMap<String, TokenIdentity>,
    reviews: Vec<RecordedReview>,
}

/// The running fake.
#[derive(Debug)]
pub struct FakeTokenReview {
    addr: SocketAddr,
    known: Arc<Mutex<Known>>,
    task: JoinHandle<()>,
}

impl FakeTokenReview {
    pub async fn start() -> Self {
        let known = Arc::new(Mutex::new(Known::default()));
        let app = axum::Router::new()
            .route("/apis/authentication.k8s.io/v1/tokenreviews", post(review))
            .with_state(known.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, known, task }
    }

    /// The URL for the controller's `--token-review-url`.
    pub fn url(&self) -> String {
        format!("http://{}/apis/authentication.k8s.io/v1/tokenreviews", self.addr)
    }

    /// Makes `token` known as `identity`.
    pub fn add(&self, token: &str, identity: TokenIdentity) {
        self.known.lock().unwrap().tokens.insert(token.to_owned(), identity);
    }

    /// Every review so far.
    pub fn reviews(&self) -> Vec<RecordedReview> {
        self.known.lock().unwrap().reviews.clone()
    }
}

impl Drop for FakeTokenReview {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn review(State(known): State<Arc<Mutex<Known>>>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let token = body["spec"]["token"].as_str().unwrap_or("").to_owned();
    let wanted: Vec<String> = body["spec"]["audiences"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let mut known = known.lock().unwrap();
    known.reviews.push(RecordedReview {
        authorization: authorization.clone(),
        token: token.clone(),
        audiences: wanted.clone(),
    });
    if authorization != format!("Bearer {CONTROLLER_TOKEN}") {
        return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
    }
    let status = match known.tokens.get(&token) {
        None => json!({ "authenticated": false, "error": "invalid bearer token" }),
        Some(identity) => {
            let audiences: Vec<&String> = identity.audiences.iter().filter(|a| wanted.contains(a)).collect();
            if audiences.is_empty() {
                json!({
                    "authenticated": false,
                    "error": format!("token audiences {:?} is invalid for the target audiences {wanted:?}", identity.audiences),
                })
            } else {
                let mut extra = serde_json::Map::new();
                if let Some(node) = &identity.node {
                    extra.insert("authentication.kubernetes.io/node-name".into(), json!([node]));
                    extra.insert(
                        "authentication.kubernetes.io/pod-name".into(),
                        json!([format!("multinic-agent-{node}")]),
                    );
                }
                json!({
                    "authenticated": true,
                    "audiences": audiences,
                    "user": { "username": identity.username, "uid": "0000", "groups": ["system:serviceaccounts"], "extra": extra },
                })
            }
        }
    };
    Json(json!({ "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": status })).into_response()
}

/// Issuer settings that review tokens with `fake` and sign with `pki`'s CA
/// (read from its files, like the controller does).
pub fn issuer_config(
    fake: &FakeTokenReview,
    pki: &crate::certs::TestPki,
    lifetime: std::time::Duration,
) -> multinic_controller::issuer::IssuerConfig {
    use multinic_controller::issuer::{IssuancePolicy, IssuerConfig, TokenReviewer};
    let token = pki.dir().join("controller-sa-token");
    std::fs::write(&token, format!("{CONTROLLER_TOKEN}\n")).unwrap();
    let files = vec![pki.dir().join("ca.crt"), pki.dir().join("ca.key")];
    let ca = multinic_tls::live::watch_files("issuer CA", files, crate::certs::RELOAD, |f| {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        multinic_tls::CertificateAuthority::from_pem(&text(&f[0]), &text(&f[1])).map(Arc::new)
    })
    .unwrap();
    IssuerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ca,
        reviewer: TokenReviewer::new(&fake.url(), None, Some(token)).unwrap(),
        policy: IssuancePolicy { audience: AUDIENCE.into(), service_account: AGENT_SERVICE_ACCOUNT.into(), lifetime },
    }
}
