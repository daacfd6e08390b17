//! Node certificates for ServiceAccount tokens: the issuer against a fake
//! TokenReview endpoint, and an agent that bootstraps, renews and uses its
//! certificate, over real TLS sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use multinic_agent::tls::{AgentIdentity, AgentTls, AgentTransport};
use multinic_proto::v1::agent_service_client::AgentServiceClient;
use multinic_proto::v1::controller_message::Kind as ControllerKind;
use multinic_proto::v1::issuer_service_client::IssuerServiceClient;
use multinic_proto::v1::{self, IssueNodeCertificateRequest};
use multinic_testkit::certs::{CertFiles, RELOAD, TestPki, channel};
use multinic_testkit::eventually;
use multinic_testkit::fleet::{TestAgent, TestController, sqlite_database};
use multinic_testkit::hello_message;
use multinic_testkit::token_review::{AUDIENCE, CONTROLLER_TOKEN, FakeTokenReview, TokenIdentity, issuer_config};
use multinic_tls::{CertificateInfo, ClientTls, Identity, KeyedCertificate};
use rcgen::{CertificateParams, KeyPair, SanType};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const POLL: Duration = Duration::from_millis(100);
const WAIT: Duration = Duration::from_secs(15);

/// A controller issuing certificates of `lifetime`, and its fake API server.
async fn issuing_controller(pki: &TestPki, db: &str, lifetime: Duration) -> (TestController, FakeTokenReview) {
    let fake = FakeTokenReview::start().await;
    let mut tls = pki.controller_tls();
    tls.issuer = Some(issuer_config(&fake, pki, lifetime));
    (TestController::start_mutual(db, POLL, tls).await, fake)
}

/// A key and a CSR asking for node-b, an admin DNS name and an IP.
fn greedy_csr() -> (KeyPair, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["admin.multinic.test".to_owned(), "10.0.0.1".to_owned()]).unwrap();
    params.subject_alt_names.push(SanType::URI("spiffe://multinic.test/multinic/node/node-b".try_into().unwrap()));
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    (key, csr)
}

async fn issue(
    controller: &TestController,
    pki: &TestPki,
    token: &str,
    csr: &str,
) -> Result<v1::IssueNodeCertificateResponse, tonic::Status> {
    let tls = ClientTls::server_auth_only(&pki.ca_file(), RELOAD).unwrap();
    let url = format!("https://{}", controller.issuer.expect("issuer enabled"));
    let channel = channel(&url, &tls).await.map_err(tonic::Status::unavailable)?;
    let request = IssueNodeCertificateRequest { token: token.into(), csr_pem: csr.into() };
    IssuerServiceClient::new(channel).issue_node_certificate(request).await.map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_buys_a_certificate_for_its_own_node_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _pool) = sqlite_database(dir.path()).await;
    let pki = TestPki::new();
    let (controller, fake) = issuing_controller(&pki, &db, Duration::from_secs(3600)).await;
    fake.add("token-a", TokenIdentity::agent("node-a.cluster.local"));
    fake.add(
        "token-kube",
        TokenIdentity { audiences: vec!["https://kubernetes.default.svc".into()], ..TokenIdentity::agent("node-a") },
    );
    fake.add(
        "token-other-sa",
        TokenIdentity { username: "system:serviceaccount:default:default".into(), ..TokenIdentity::agent("node-a") },
    );
    fake.add("token-no-node", TokenIdentity { node: None, ..TokenIdentity::agent("node-a") });

    // A valid token: the certificate names the token's node, never the CSR's names.
    let (key, csr) = greedy_csr();
    let issued = issue(&controller, &pki, "token-a", &csr).await.expect("issued");
    assert_eq!(issued.spiffe_id, "spiffe://multinic.test/multinic/node/node-a");
    let info = CertificateInfo::from_pem(issued.certificate_chain_pem.as_bytes()).unwrap();
    assert_eq!(info.uris, ["spiffe://multinic.test/multinic/node/node-a"]);
    assert!(info.dns_names.is_empty() && info.ips.is_empty() && !info.is_ca, "{info:?}");
    assert!(info.lifetime() <= Duration::from_secs(3600 + 60), "{info:?}");
    let review = fake.reviews().pop().unwrap();
    assert_eq!(review.authorization, format!("Bearer {CONTROLLER_TOKEN}"));
    assert_eq!((review.token.as_str(), review.audiences.as_slice()), ("token-a", [AUDIENCE.to_owned()].as_slice()));

    // It works on the gRPC port, as node-a and only as node-a.
    let files = pki
        .write("issued-a", &KeyedCertificate { cert_pem: issued.certificate_chain_pem, key_pem: key.serialize_pem() });
    let answer = first_answer(&controller, &pki, &files, "node-a").await.expect("node-a syncs");
    assert!(matches!(answer.kind, Some(ControllerKind::Desired(_))), "{answer:?}");
    let status = first_answer(&controller, &pki, &files, "node-b").await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // Every other token is refused, and nothing is issued.
    for (token, code, needle) in [
        ("token-kube", Code::Unauthenticated, "audience"),
        ("token-other-sa", Code::PermissionDenied, "not the agents' ServiceAccount"),
        ("token-no-node", Code::PermissionDenied, "names no node"),
        ("token-unknown", Code::Unauthenticated, "not authenticated"),
        ("", Code::InvalidArgument, "token"),
    ] {
        let status = issue(&controller, &pki, token, &csr).await.expect_err(token);
        assert_eq!(status.code(), code, "{token}: {status:?}");
        assert!(status.message().contains(needle), "{token}: {}", status.message());
    }
    let status = issue(&controller, &pki, "token-a", "not a CSR").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // The gRPC port still wants a client certificate: the issuer's openness
    // is its own port's.
    let anonymous = ClientTls::server_auth_only(&pki.ca_file(), RELOAD).unwrap();
    let before = controller.handshakes.refused();
    let err = channel(&controller.url(), &anonymous).await.unwrap_err();
    assert!(err.contains("refused the TLS connection") && err.contains("CertificateRequired"), "{err}");
    eventually(WAIT, "gRPC port refuses certificateless handshakes", || async {
        (controller.handshakes.refused() > before).then_some(())
    })
    .await;
    controller.stop().await;
}

async fn first_answer(
    controller: &TestController,
    pki: &TestPki,
    files: &CertFiles,
    node: &str,
) -> Result<v1::ControllerMessage, tonic::Status> {
    let channel = channel(&controller.url(), &pki.client_tls(files)).await.map_err(tonic::Status::unavailable)?;
    let (tx, rx) = mpsc::channel(2);
    tx.send(hello_message(node)).await.unwrap();
    let mut inbound = AgentServiceClient::new(channel).sync(ReceiverStream::new(rx)).await?.into_inner();
    let first = tokio::time::timeout(WAIT, inbound.message()).await.expect("an answer")?;
    first.ok_or_else(|| tonic::Status::aborted("closed"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrapping_agent_obtains_renews_and_uses_its_certificate() {
    multinic_testkit::test_logging();
    let dir = tempfile::tempdir().unwrap();
    let (db, pool) = sqlite_database(dir.path()).await;
    sqlx::query(
        "INSERT INTO multi_interface (port_id, subnet_id, macaddress, attached_node_name, address, cidr, mtu) \
         VALUES ('p1', 's', 'fa:16:3e:00:0a:01', 'node-a', '10.1.0.5', '10.1.0.0/24', 1500)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let pki = TestPki::new();
    // Six seconds: renewed after about three, expired after six.
    let lifetime = Duration::from_secs(6);
    let (controller, fake) = issuing_controller(&pki, &db, lifetime).await;
    fake.add("token-a", TokenIdentity::agent("node-a"));
    let token = dir.path().join("token");
    std::fs::write(&token, "token-a\n").unwrap();

    let root = tempfile::Builder::new().prefix("multinic-node-").tempdir().unwrap();
    let tls = AgentTls {
        ca: pki.ca_file(),
        identity: AgentIdentity::Bootstrap {
            token_file: token,
            issuer: format!("https://{}", controller.issuer.unwrap()),
            state_dir: root.path().join("var/lib/multinic"),
        },
        server_name: None,
        reload_interval: RELOAD,
    };
    let agent = TestAgent::start_with(root, &controller.url(), "node-a", AgentTransport::Tls(tls)).await;
    let success = |pool: sqlx::SqlitePool| async move {
        sqlx::query_scalar::<_, i64>("SELECT netplan_success FROM multi_interface WHERE port_id = 'p1'")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    eventually(WAIT, "row applied over the issued certificate", || async {
        (success(pool.clone()).await == 1).then_some(())
    })
    .await;

    let cert_path = agent.state_dir().join("tls/node.crt");
    let key_path = agent.state_dir().join("tls/node.key");
    let first = CertificateInfo::from_pem(&std::fs::read(&cert_path).unwrap()).unwrap();
    assert_eq!(first.identity(pki.trust_domain()).unwrap(), Identity::Node("node-a".parse().unwrap()));
    assert_eq!(std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777, 0o600);

    // Renewed at half-life; the first certificate then expires, and changes
    // made afterwards still arrive (new connections use the new certificate).
    let renewed = eventually(WAIT, "a renewed certificate", || async {
        let info = CertificateInfo::from_pem(&std::fs::read(&cert_path).ok()?).ok()?;
        (info.serial != first.serial).then_some(info)
    })
    .await;
    assert!(renewed.not_after > first.not_after);
    let expired_at = first.not_after + Duration::from_secs(1);
    while std::time::SystemTime::now() < expired_at {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sqlx::query("UPDATE multi_interface SET mtu = 9000, netplan_success = 0 WHERE port_id = 'p1'")
        .execute(&pool)
        .await
        .unwrap();
    eventually(WAIT, "change applied after the first certificate expired", || async {
        (success(pool.clone()).await == 1 && agent.netplan_file(0).is_some_and(|f| f.contains("mtu: 9000")))
            .then_some(())
    })
    .await;
    assert!(fake.reviews().len() >= 2, "one review per certificate");
    assert_eq!(controller.handshakes.refused(), 0, "never presented an expired certificate");
    agent.stop().await;
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_asks_anew_and_falls_back_to_its_saved_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (db, pool) = sqlite_database(dir.path()).await;
    let pki = TestPki::new();
    let (controller, fake) = issuing_controller(&pki, &db, Duration::from_secs(3600)).await;
    fake.add("token-a", TokenIdentity::agent("node-a"));
    let token = dir.path().join("token");
    std::fs::write(&token, "token-a").unwrap();
    let transport = |root: &std::path::Path| {
        AgentTransport::Tls(AgentTls {
            ca: pki.ca_file(),
            identity: AgentIdentity::Bootstrap {
                token_file: token.clone(),
                issuer: format!("https://{}", controller.issuer.unwrap()),
                state_dir: root.join("var/lib/multinic"),
            },
            server_name: None,
            reload_interval: RELOAD,
        })
    };
    let root = tempfile::Builder::new().prefix("multinic-node-").tempdir().unwrap();
    let t = transport(root.path());
    let agent = TestAgent::start_with(root, &controller.url(), "node-a", t).await;
    let cert_path = agent.state_dir().join("tls/node.crt");
    let saved = eventually(WAIT, "a saved certificate", || async {
        CertificateInfo::from_pem(&std::fs::read(&cert_path).ok()?).ok()
    })
    .await;
    let root = agent.stop().await;

    // The token is no longer accepted: the restarted agent asks, is refused,
    // and connects with its saved certificate meanwhile.
    std::fs::write(&token, "token-revoked").unwrap();
    let reviews = fake.reviews().len();
    let t = transport(root.path());
    let agent = TestAgent::start_with(root, &controller.url(), "node-a", t).await;
    sqlx::query(
        "INSERT INTO multi_interface (port_id, subnet_id, macaddress, attached_node_name, address, cidr, mtu) \
         VALUES ('p1', 's', 'fa:16:3e:00:0a:01', 'node-a', NULL, NULL, 1500)",
    )
    .execute(&pool)
    .await
    .unwrap();
    eventually(WAIT, "row applied with the saved certificate", || async {
        let v: i64 = sqlx::query_scalar("SELECT netplan_success FROM multi_interface WHERE port_id = 'p1'")
            .fetch_one(&pool)
            .await
            .unwrap();
        (v == 1).then_some(())
    })
    .await;
    assert!(fake.reviews().len() > reviews, "asked for a new certificate first");
    let still = CertificateInfo::from_pem(&std::fs::read(&cert_path).unwrap()).unwrap();
    assert_eq!(still.serial, saved.serial);
    agent.stop().await;
    controller.stop().await;
}
