//! What mTLS costs, and how quickly agents move to fresh connections.
//!
//! ```text
//! cargo run --release -p multinic-testkit --example tls_bench
//! ```
//!
//! Prints, over real loopback sockets:
//! - a fresh connection plus one `GetSummary`, mTLS vs plaintext (p50/p99);
//! - a node certificate issuance round trip (new key and CSR, TLS to the
//!   issuer, TokenReview against the local fake, signing);
//! - the planned reconnect at the connection age cap (1 s here): how long a
//!   real agent's node has no stream each time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use multinic_proto::v1::GetSummaryRequest;
use multinic_proto::v1::IssueNodeCertificateRequest;
use multinic_proto::v1::fleet_service_client::FleetServiceClient;
use multinic_proto::v1::issuer_service_client::IssuerServiceClient;
use multinic_testkit::certs::{RELOAD, TestPki, channel};
use multinic_testkit::fleet::{TestAgent, TestController, sqlite_database};
use multinic_testkit::token_review::{FakeTokenReview, TokenIdentity, issuer_config};
use multinic_tls::ClientTls;

const CALLS: usize = 200;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _pool) = sqlite_database(dir.path()).await;
    let pki = TestPki::new();

    // Fresh connection + one call.
    let tls_controller = TestController::start_tls(&db, Duration::from_secs(1), &pki).await;
    let operator = pki.client_tls(&pki.operator("bench"));
    let url = tls_controller.url();
    let mtls = measure(CALLS, || async {
        let mut client = FleetServiceClient::new(channel(&url, &operator).await.unwrap());
        client.get_summary(GetSummaryRequest {}).await.unwrap();
    })
    .await;
    let plain_controller = TestController::start(&db, Duration::from_secs(1)).await;
    let plain_url = plain_controller.url();
    let plain = measure(CALLS, || async {
        let endpoint = tonic::transport::Endpoint::from_shared(plain_url.clone()).unwrap().tcp_nodelay(true);
        let channel = endpoint.connect().await.unwrap();
        FleetServiceClient::new(channel).get_summary(GetSummaryRequest {}).await.unwrap();
    })
    .await;
    report("new connection + GetSummary, mTLS (TLS 1.3, P-256)", &mtls);
    report("new connection + GetSummary, plaintext", &plain);
    tls_controller.stop().await;
    plain_controller.stop().await;

    // Issuance.
    let fake = FakeTokenReview::start().await;
    fake.add("token", TokenIdentity::agent("node-a"));
    let mut config = pki.controller_tls();
    config.issuer = Some(issuer_config(&fake, &pki, Duration::from_secs(3600)));
    let issuing = TestController::start_mutual(&db, Duration::from_secs(1), config).await;
    let issuer_url = format!("https://{}", issuing.issuer.unwrap());
    let anonymous = ClientTls::server_auth_only(&pki.ca_file(), RELOAD).unwrap();
    let issue = measure(CALLS / 2, || async {
        let (_key, csr_pem) = multinic_tls::new_key_and_csr().unwrap();
        let mut client = IssuerServiceClient::new(channel(&issuer_url, &anonymous).await.unwrap());
        client.issue_node_certificate(IssueNodeCertificateRequest { token: "token".into(), csr_pem }).await.unwrap();
    })
    .await;
    report("node certificate issuance (key + CSR + TLS + TokenReview + sign)", &issue);
    issuing.stop().await;

    // Planned reconnects at the age cap.
    let mut config = pki.controller_tls();
    config.max_connection_age = Duration::from_secs(1);
    let aging = TestController::start_mutual(&db, Duration::from_secs(1), config).await;
    let agent = TestAgent::start_tls(&aging.url(), "node-a", pki.agent_tls("node-a")).await;
    let node = "node-a".parse().unwrap();
    let (mut gaps, mut current, mut down_since) = (Vec::new(), None::<u64>, None::<Instant>);
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        let session = aging.fleet.view().node(&node).and_then(|n| n.session).map(|s| s.id);
        match (session, down_since) {
            (None, None) if current.is_some() => down_since = Some(Instant::now()),
            (Some(id), Some(since)) => {
                gaps.push(since.elapsed());
                down_since = None;
                current = Some(id);
            }
            (Some(id), None) if current != Some(id) => {
                if current.is_some() {
                    gaps.push(Duration::ZERO);
                }
                current = Some(id);
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    report("planned reconnect at the age cap (node without a stream)", &gaps);
    println!("  {} reconnects in 15 s, agent counted {}", gaps.len(), agent.agent.status.reconnects());
    agent.stop().await;
    aging.stop().await;
}

async fn measure<F, Fut>(n: usize, mut call: F) -> Vec<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    call().await; // warm-up
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        call().await;
        times.push(start.elapsed());
    }
    times
}

fn report(what: &str, times: &[Duration]) {
    let mut sorted = times.to_vec();
    sorted.sort();
    let at = |q: f64| sorted.get(((sorted.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or_default();
    println!(
        "{what}: n={} p50={:.2} ms p99={:.2} ms max={:.2} ms",
        sorted.len(),
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3
    );
}
