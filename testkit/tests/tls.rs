//! mTLS on the gRPC port, over real sockets: who gets in, and what each
//! identity may do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use multinic_proto::v1::agent_service_client::AgentServiceClient;
use multinic_proto::v1::controller_message::Kind as ControllerKind;
use multinic_proto::v1::fleet_service_client::FleetServiceClient;
use multinic_proto::v1::{self, GetSummaryRequest};
use multinic_testkit::certs::{CertFiles, TestPki, channel, error_chain, expired};
use multinic_testkit::eventually;
use multinic_testkit::fleet::{TestController, sqlite_database};
use multinic_testkit::hello_message;
use multinic_testkit::rows::NewRow;
use multinic_tls::{ClientTls, Identity, TrustDomain, Validity};
use sqlx::SqlitePool;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const POLL: Duration = Duration::from_millis(100);
const WAIT: Duration = Duration::from_secs(10);

/// An mTLS controller that has read rows for node-a and node-b (and the
/// folder of its database, kept while it runs).
async fn two_nodes_over_tls() -> (tempfile::TempDir, TestPki, TestController) {
    let dir = tempfile::tempdir().unwrap();
    let (db, pool) = sqlite_database(dir.path()).await;
    two_nodes(&pool).await;
    let pki = TestPki::new();
    let controller = TestController::start_tls(&db, POLL, &pki).await;
    eventually(WAIT, "first poll", || async { controller.fleet.db().status().synced.then_some(()) }).await;
    (dir, pki, controller)
}

/// Rows for node-a and node-b.
async fn two_nodes(pool: &SqlitePool) {
    for (port, node, mac) in [("pa", "node-a", "fa:16:3e:00:0a:01"), ("pb", "node-b", "fa:16:3e:00:0b:01")] {
        NewRow::new(port, node, mac).insert_sqlite(pool).await;
    }
}

async fn fleet_summary(url: &str, tls: &ClientTls) -> Result<v1::FleetSummary, String> {
    let channel = channel(url, tls).await?;
    FleetServiceClient::new(channel)
        .get_summary(GetSummaryRequest {})
        .await
        .map(|r| r.into_inner())
        .map_err(|s| format!("{:?}: {}: {}", s.code(), s.message(), error_chain(&s)))
}

/// Opens an agent stream presenting `tls` and saying Hello as `node`; the
/// status of the refusal or the first message.
async fn first_answer(url: &str, tls: &ClientTls, node: &str) -> Result<v1::ControllerMessage, tonic::Status> {
    let channel = channel(url, tls).await.map_err(tonic::Status::unavailable)?;
    let (tx, rx) = mpsc::channel(4);
    tx.send(hello_message(node)).await.unwrap();
    let mut inbound = AgentServiceClient::new(channel).sync(ReceiverStream::new(rx)).await?.into_inner();
    let first = tokio::time::timeout(WAIT, inbound.message()).await.expect("an answer");
    drop(tx);
    first?.ok_or_else(|| tonic::Status::aborted("stream closed without a message"))
}

/// Waits for the controller to refuse one more handshake; its reason.
async fn next_refusal(controller: &TestController, before: u64) -> String {
    eventually(WAIT, "a refused handshake", || async {
        (controller.handshakes.refused() > before).then(|| controller.handshakes.last_refusal().unwrap_or_default())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_unknown_ca_expired_and_certificateless_clients_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _pool) = sqlite_database(dir.path()).await;
    let pki = TestPki::new();
    let mut tls = pki.controller_tls();
    tls.handshake_timeout = Duration::from_secs(1);
    let controller = TestController::start_mutual(&db, POLL, tls).await;
    let url = controller.url();

    // A good operator gets in.
    let operator = pki.client_tls(&pki.operator("alice"));
    fleet_summary(&url, &operator).await.expect("operator with a valid certificate");
    let served = operator.last_server_certificate().expect("the controller's certificate");
    assert_eq!(served.ips, ["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]);

    // Plaintext.
    let before = controller.handshakes.refused();
    let plain = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", controller.grpc))?
            .timeout(Duration::from_secs(5))
            .connect()
            .await?;
        Ok::<_, Box<dyn std::error::Error>>(FleetServiceClient::new(channel).get_summary(GetSummaryRequest {}).await?)
    };
    assert!(plain.await.is_err(), "plaintext must be refused");
    let reason = next_refusal(&controller, before).await;
    assert!(reason.starts_with("plaintext HTTP/2 (gRPC without TLS)"), "{reason}");

    // A certificate from a CA the controller does not trust.
    let stranger = TestPki::new();
    let files = stranger.operator("mallory");
    let foreign_ca = ClientTls::from_files(&pki.ca_file(), &files.cert, &files.key, Duration::from_secs(1)).unwrap();
    let before = controller.handshakes.refused();
    let err = fleet_summary(&url, &foreign_ca).await.unwrap_err();
    let reason = next_refusal(&controller, before).await;
    assert!(reason.contains("UnknownIssuer"), "{reason} (client saw: {err})");
    // The refusal names who was refused.
    let mallory = "spiffe://multinic.test/multinic/operator/mallory";
    assert!(reason.contains("client certificate: subject") && reason.contains(mallory), "{reason}");
    assert!(err.contains("refused the TLS connection: received fatal alert: UnknownCA"), "{err}");

    // An expired certificate of the right CA.
    let operator = Identity::Operator("bob".parse().unwrap());
    let old = pki.client("operator-expired", &operator, pki.trust_domain(), expired());
    let before = controller.handshakes.refused();
    let err = fleet_summary(&url, &pki.client_tls(&old)).await.unwrap_err();
    let reason = next_refusal(&controller, before).await;
    assert!(reason.contains("expired"), "{reason} (client saw: {err})");
    assert!(reason.contains("spiffe://multinic.test/multinic/operator/bob"), "{reason}");
    assert!(err.contains("CertificateExpired"), "{err}");

    // No certificate at all.
    let anonymous = ClientTls::server_auth_only(&pki.ca_file(), Duration::from_secs(1)).unwrap();
    let before = controller.handshakes.refused();
    let err = fleet_summary(&url, &anonymous).await.unwrap_err();
    let reason = next_refusal(&controller, before).await;
    assert!(reason.contains("no certificates"), "{reason} (client saw: {err})");
    assert!(err.contains("CertificateRequired"), "{err}");

    // A connection that never speaks is dropped at the handshake timeout
    // (1 s here) and counted.
    let timed_out = controller.handshakes.timed_out();
    let silent = tokio::net::TcpStream::connect(controller.grpc).await.unwrap();
    eventually(WAIT, "the silent connection timed out", || async {
        (controller.handshakes.timed_out() > timed_out).then_some(())
    })
    .await;
    drop(silent);

    // An agent with an expired certificate never gets a stream.
    let agent = pki.agent_with("node-a", expired());
    let err = first_answer(&url, &pki.client_tls(&agent), "node-a").await.unwrap_err();
    assert!(controller.fleet.view().node(&"node-a".parse().unwrap()).is_none_or(|n| n.session.is_none()), "{err:?}");

    // The refusals are in the metrics.
    let (_, metrics) = multinic_testkit::http_get(controller.http, "/metrics").await;
    let refused = metrics
        .lines()
        .find_map(|l| l.strip_prefix("multinic_controller_tls_handshakes_total{result=\"refused\"} "))
        .map(|v| v.trim().parse::<f64>().unwrap())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(refused >= 4.0, "{refused}");
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_certificate_speaks_only_for_its_own_node() {
    let (_dir, pki, controller) = two_nodes_over_tls().await;
    let node_a = pki.client_tls(&pki.agent("node-a"));

    // node-a's certificate saying Hello as node-b: refused, nothing pushed.
    let status = first_answer(&controller.url(), &node_a, "node-b").await.expect_err("no desired state for node-b");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("certificate is for node node-a but Hello names node node-b"), "{status:?}");
    let node_b = controller.fleet.view().node(&"node-b".parse().unwrap()).unwrap();
    assert!(node_b.session.is_none(), "node-b has no agent");

    // As itself, node-a gets exactly its own set.
    let answer = first_answer(&controller.url(), &node_a, "node-a").await.unwrap();
    let Some(ControllerKind::Desired(desired)) = answer.kind else { panic!("expected a push: {answer:?}") };
    let macs: Vec<_> = desired.interfaces.iter().map(|i| i.mac_address.as_str()).collect();
    assert_eq!(macs, ["fa:16:3e:00:0a:01"]);
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_may_only_sync_and_operators_may_only_read_the_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _pool) = sqlite_database(dir.path()).await;
    let pki = TestPki::new();
    let controller = TestController::start_tls(&db, POLL, &pki).await;
    let url = controller.url();
    let agent = pki.client_tls(&pki.agent("node-a"));
    let operator = pki.client_tls(&pki.operator("alice"));

    let err = fleet_summary(&url, &agent).await.unwrap_err();
    assert!(err.starts_with("PermissionDenied") && err.contains("needs an operator certificate"), "{err}");
    let status = first_answer(&url, &operator, "node-a").await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("needs an agent certificate"), "{status:?}");

    // Our CA, but a foreign trust domain: recognized by nobody.
    let evil: TrustDomain = "evil.test".parse().unwrap();
    let validity = Validity::starting_now(Duration::from_secs(600));
    let foreign: CertFiles = pki.client("foreign", &Identity::Node("node-a".parse().unwrap()), &evil, validity);
    let foreign = pki.client_tls(&foreign);
    let err = fleet_summary(&url, &foreign).await.unwrap_err();
    assert!(err.starts_with("PermissionDenied") && err.contains("evil.test"), "{err}");
    let status = first_answer(&url, &foreign, "node-a").await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    fleet_summary(&url, &operator).await.expect("the operator reads the fleet");
    controller.stop().await;
}

/// `Diff` shows rows and what nodes have: operators only. An agent's
/// certificate is refused, for the fleet and for its own node alike, by a
/// client speaking the wire protocol directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_operator_reads_the_diff() {
    let (_dir, pki, controller) = two_nodes_over_tls().await;
    let diff = |tls: ClientTls, node: &'static str| {
        let url = controller.url();
        async move {
            let channel = channel(&url, &tls).await.map_err(tonic::Status::unavailable)?;
            let request = v1::DiffRequest { node: node.into(), ..Default::default() };
            FleetServiceClient::new(channel).diff(request).await.map(|r| r.into_inner())
        }
    };
    for node in ["", "node-a"] {
        let status = diff(pki.client_tls(&pki.agent("node-a")), node).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{node:?}: {status:?}");
        assert!(status.message().contains("needs an operator certificate"), "{status:?}");
    }
    let page = diff(pki.client_tls(&pki.operator("alice")), "").await.expect("the operator reads the diff");
    let names: Vec<&str> = page.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["node-a", "node-b"], "no agent ever reported: both unknown");
    assert!(page.nodes.iter().all(|n| !n.applied_known && n.interfaces_desired == 1));
    controller.stop().await;
}

/// One node certificate may hold a few streams at once (an agent needs one,
/// two while it reconnects): more are refused, other nodes are not affected,
/// and a stream that closes makes room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_certificate_holds_a_few_streams_at_most() {
    let (_dir, pki, controller) = two_nodes_over_tls().await;
    let node_a = channel(&controller.url(), &pki.client_tls(&pki.agent("node-a"))).await.unwrap();

    // Streams that have not said Hello yet count too.
    let mut open = Vec::new();
    for _ in 0..multinic_controller::grpc::limits::AGENT_STREAMS_PER_NODE {
        let (tx, rx) = mpsc::channel::<v1::AgentMessage>(1);
        let inbound = AgentServiceClient::new(node_a.clone()).sync(ReceiverStream::new(rx)).await.unwrap();
        open.push((tx, inbound));
    }
    let (_tx, rx) = mpsc::channel::<v1::AgentMessage>(1);
    let refused = AgentServiceClient::new(node_a.clone()).sync(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("node node-a already has 4 open agent streams"), "{}", refused.message());

    // Another node is not affected.
    let answer = first_answer(&controller.url(), &pki.client_tls(&pki.agent("node-b")), "node-b").await.unwrap();
    assert!(matches!(answer.kind, Some(ControllerKind::Desired(_))), "{answer:?}");

    // Once one closes (or gives up waiting for its Hello), there is room.
    drop(open.pop());
    eventually(WAIT, "room for another stream", || {
        let node_a = node_a.clone();
        async move {
            let (tx, rx) = mpsc::channel(1);
            tx.send(hello_message("node-a")).await.unwrap();
            let mut inbound = AgentServiceClient::new(node_a).sync(ReceiverStream::new(rx)).await.ok()?.into_inner();
            let first = inbound.message().await.ok()??;
            matches!(first.kind, Some(ControllerKind::Desired(_))).then_some(())
        }
    })
    .await;
    controller.stop().await;
}
