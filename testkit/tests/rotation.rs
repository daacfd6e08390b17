//! Rotating every piece of TLS material of a running fleet (controller
//! certificate, client CA, agent certificate, the agent's CA) to a new CA,
//! through Kubernetes-style Secret updates: no restart, no refused
//! handshake, no lost result. Also: the connection age cap ends streams with
//! a planned reconnect.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use multinic_agent::tls::{AgentIdentity, AgentTls};
use multinic_controller::tls::TlsConfig;
use multinic_proto::v1::agent_message::Kind as AgentKind;
use multinic_proto::v1::agent_service_client::AgentServiceClient;
use multinic_proto::v1::controller_message::Kind as ControllerKind;
use multinic_proto::v1::{self, AgentMessage};
use multinic_testkit::certs::{RELOAD, SecretDir, TestPki, channel, pem};
use multinic_testkit::eventually;
use multinic_testkit::fleet::{TestAgent, TestController, sqlite_database};
use multinic_testkit::hello_message;
use multinic_testkit::mariadb::MariaDb;
use multinic_testkit::rows::{NewRow, netplan_success};
use multinic_tls::{Identity, ServerTls, Validity};
use sqlx::MySqlPool;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const POLL: Duration = Duration::from_millis(100);
const WAIT: Duration = Duration::from_secs(20);

async fn set_mtu(pool: &MySqlPool, id: i64, mtu: i64) {
    sqlx::query("UPDATE multi_interface SET mtu = ?, netplan_success = 0 WHERE id = ?")
        .bind(mtu)
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
}

async fn wait_applied(pool: &MySqlPool, ids: &[i64]) {
    for &id in ids {
        eventually(WAIT, &format!("row {id} netplan_success = 1"), || async move {
            (netplan_success(pool, id).await == 1).then_some(())
        })
        .await;
    }
}

/// Waits for `n` more accepted handshakes (i.e. agent reconnects).
async fn reconnects(controller: &TestController, n: u64) {
    let before = controller.handshakes.accepted();
    eventually(WAIT, &format!("{n} new TLS connections"), || async {
        (controller.handshakes.accepted() >= before + n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_every_certificate_and_ca_loses_nothing_and_needs_no_restart() {
    multinic_testkit::test_logging();
    let Some(db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    let (old, new) = (TestPki::new(), TestPki::new());
    let both = format!("{}{}", pem(&old.ca_file()), pem(&new.ca_file()));

    // The controller's and the agent's Secrets, both from the old CA.
    let controller_secret = SecretDir::new();
    let old_server = old.controller();
    controller_secret.update(&[
        ("tls.crt", &pem(&old_server.cert)),
        ("tls.key", &pem(&old_server.key)),
        ("client-ca.crt", &pem(&old.ca_file())),
    ]);
    let agent_secret = SecretDir::new();
    let old_agent = old.agent("node-r");
    agent_secret.update(&[
        ("tls.crt", &pem(&old_agent.cert)),
        ("tls.key", &pem(&old_agent.key)),
        ("ca.crt", &pem(&old.ca_file())),
    ]);
    let server = ServerTls::from_files(
        &controller_secret.path("tls.crt"),
        &controller_secret.path("tls.key"),
        &controller_secret.path("client-ca.crt"),
        RELOAD,
    )
    .unwrap();
    let mut tls = TlsConfig::new(server, old.trust_domain().clone());
    // Streams move to new connections every couple of seconds.
    tls.max_connection_age = Duration::from_secs(2);
    let controller = TestController::start_mutual(&db.url(), POLL, tls).await;
    let agent_tls = AgentTls {
        ca: agent_secret.path("ca.crt"),
        identity: AgentIdentity::Mounted { cert: agent_secret.path("tls.crt"), key: agent_secret.path("tls.key") },
        server_name: None,
        reload_interval: RELOAD,
    };
    let agent = TestAgent::start_tls(&controller.url(), "node-r", agent_tls).await;
    let r1 = NewRow::new("p1", "node-r", "fa:16:3e:00:0f:01").insert(&pool).await;
    wait_applied(&pool, &[r1]).await;

    // 1. Both sides trust old and new CA.
    let new_server = new.controller();
    let new_agent = new.agent("node-r");
    controller_secret.update(&[
        ("tls.crt", &pem(&old_server.cert)),
        ("tls.key", &pem(&old_server.key)),
        ("client-ca.crt", &both),
    ]);
    agent_secret.update(&[("tls.crt", &pem(&old_agent.cert)), ("tls.key", &pem(&old_agent.key)), ("ca.crt", &both)]);
    tokio::time::sleep(RELOAD * 4).await;

    // 2. Both present certificates of the new CA; a change made meanwhile arrives.
    set_mtu(&pool, r1, 9000).await;
    controller_secret.update(&[
        ("tls.crt", &pem(&new_server.cert)),
        ("tls.key", &pem(&new_server.key)),
        ("client-ca.crt", &both),
    ]);
    agent_secret.update(&[("tls.crt", &pem(&new_agent.cert)), ("tls.key", &pem(&new_agent.key)), ("ca.crt", &both)]);
    wait_applied(&pool, &[r1]).await;
    reconnects(&controller, 2).await;

    // 3. The old CA is gone from both sides: only new material can connect.
    controller_secret.update(&[
        ("tls.crt", &pem(&new_server.cert)),
        ("tls.key", &pem(&new_server.key)),
        ("client-ca.crt", &pem(&new.ca_file())),
    ]);
    agent_secret.update(&[
        ("tls.crt", &pem(&new_agent.cert)),
        ("tls.key", &pem(&new_agent.key)),
        ("ca.crt", &pem(&new.ca_file())),
    ]);
    tokio::time::sleep(RELOAD * 4).await;
    reconnects(&controller, 2).await;
    set_mtu(&pool, r1, 1400).await;
    let r2 = NewRow::new("p2", "node-r", "fa:16:3e:00:0f:02").insert(&pool).await;
    wait_applied(&pool, &[r1, r2]).await;
    assert!(agent.netplan_file(0).unwrap().contains("mtu: 1400"));
    assert!(agent.netplan_file(1).is_some());
    assert_eq!(controller.handshakes.refused(), 0, "{:?}", controller.handshakes.last_refusal());

    agent.stop().await;
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_end_with_a_planned_reconnect_before_their_certificate_does() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _pool) = sqlite_database(dir.path()).await;
    let pki = TestPki::new();
    let mut tls = pki.controller_tls();
    tls.max_connection_age = Duration::from_secs(1);
    let controller = TestController::start_mutual(&db, POLL, tls).await;
    eventually(WAIT, "first poll", || async { controller.fleet.db().status().synced.then_some(()) }).await;

    // The age cap: after about a second, Reconnect and then UNAVAILABLE.
    let files = pki.agent("node-a");
    let lived = stream_until_reconnect(&controller, &pki.client_tls(&files)).await;
    assert!(lived < Duration::from_secs(3), "{lived:?}");

    // An operator's watch ends at the cap too, with a retryable status.
    let operator = pki.client_tls(&pki.operator("alice"));
    let started = Instant::now();
    let channel = channel(&controller.url(), &operator).await.unwrap();
    let mut watch = multinic_proto::v1::fleet_service_client::FleetServiceClient::new(channel)
        .watch(v1::WatchRequest {})
        .await
        .unwrap()
        .into_inner();
    let end = loop {
        match tokio::time::timeout(WAIT, watch.message()).await.expect("the watch ends in time") {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the watch ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());

    // Half the remaining lifetime of the peer's certificate, whatever the cap.
    let mut tls = pki.controller_tls();
    tls.max_connection_age = Duration::from_secs(3600);
    let long = TestController::start_mutual(&db, POLL, tls).await;
    eventually(WAIT, "first poll", || async { long.fleet.db().status().synced.then_some(()) }).await;
    let short = pki.client(
        "agent-short",
        &Identity::Node("node-a".parse().unwrap()),
        pki.trust_domain(),
        Validity::starting_now(Duration::from_secs(4)),
    );
    let lived = stream_until_reconnect(&long, &pki.client_tls(&short)).await;
    assert!(lived < Duration::from_secs(3), "a 4 s certificate kept a stream for {lived:?}");
    long.stop().await;
    controller.stop().await;
}

/// Opens a stream as node-a, answers its push, and returns how long it lived
/// until the controller asked for a reconnect (and ended it with UNAVAILABLE).
async fn stream_until_reconnect(controller: &TestController, tls: &multinic_tls::ClientTls) -> Duration {
    let started = Instant::now();
    let channel = channel(&controller.url(), tls).await.unwrap();
    let (tx, rx) = mpsc::channel(4);
    tx.send(hello_message("node-a")).await.unwrap();
    let mut inbound = AgentServiceClient::new(channel).sync(ReceiverStream::new(rx)).await.unwrap().into_inner();
    loop {
        let message = tokio::time::timeout(WAIT, inbound.message()).await.expect("stream ends in time").unwrap();
        match message.and_then(|m| m.kind) {
            Some(ControllerKind::Desired(d)) => {
                let report = v1::Report {
                    generation: d.generation,
                    nonce: d.nonce,
                    digest: d.digest,
                    outcome: v1::Outcome::Applied.into(),
                    interfaces: Vec::new(),
                    error: String::new(),
                    drift: Vec::new(),
                };
                tx.send(AgentMessage { kind: Some(AgentKind::Report(report)) }).await.unwrap();
            }
            Some(ControllerKind::Reconnect(r)) => {
                assert_eq!(r.after_ms, 0, "{r:?}");
                let lived = started.elapsed();
                let end = inbound.message().await.unwrap_err();
                assert_eq!(end.code(), Code::Unavailable, "{end:?}");
                return lived;
            }
            None => panic!("stream closed without a reconnect request"),
        }
    }
}
