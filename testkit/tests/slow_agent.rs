//! One agent that stops reading its stream must not delay any other: its
//! pushes wait in its own stream (the node's watch channel keeps only the
//! newest set, the stream's queue holds two messages, HTTP/2 flow control
//! does the rest), never in a path the other nodes share.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use multinic_proto::v1::agent_message::Kind;
use multinic_proto::v1::agent_service_client::AgentServiceClient;
use multinic_proto::v1::{AgentMessage, Hello};
use multinic_testkit::fleet::{TestAgent, TestController};
use multinic_testkit::mariadb::{MariaDb, execute};
use multinic_testkit::{eventually, http_get};
use sqlx::MySqlPool;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

const POLL: Duration = Duration::from_millis(200);
const WAIT: Duration = Duration::from_secs(30);
const NODES: usize = 10;
/// Interfaces of the stuck node: its set is a few KB, more than the window
/// the stuck client grants.
const STUCK_INTERFACES: usize = 40;

async fn count(pool: &MySqlPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_agent_delays_nobody() {
    multinic_testkit::test_logging();
    let Some(db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    let mut conn = db.connection().await;
    let insert = "INSERT INTO multi_interface (port_id, subnet_id, macaddress, attached_node_name, mtu) VALUES";
    let stuck: Vec<String> =
        (0..STUCK_INTERFACES).map(|i| format!("('s{i}', 's', 'fa:16:3e:00:50:{i:02x}', 'stuck', 1500)")).collect();
    let others: Vec<String> =
        (0..NODES).map(|n| format!("('o{n}', 's', 'fa:16:3e:00:51:{n:02x}', 'node-{n}', 1500)")).collect();
    execute(&mut conn, &format!("{insert} {}, {}", stuck.join(", "), others.join(", "))).await;

    let controller = TestController::start(&db.url(), POLL).await;
    controller.wait_active().await;
    // The stuck agent: says Hello, then never reads, and grants the
    // controller 1 KB of stream window.
    let channel = Endpoint::from_shared(controller.url())
        .unwrap()
        .initial_stream_window_size(Some(1024))
        .connect()
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let hello = Hello { node_name: "stuck".into(), agent_version: "t".into(), ..Hello::default() };
    tx.send(AgentMessage { kind: Some(Kind::Hello(hello)) }).await.unwrap();
    let stuck_stream = AgentServiceClient::new(channel).sync(ReceiverStream::new(rx)).await.unwrap().into_inner();

    let mut agents = Vec::new();
    for n in 0..NODES {
        agents.push(TestAgent::start(&controller.url(), &format!("node-{n}")).await);
    }
    let pending_others =
        "SELECT COUNT(*) FROM multi_interface WHERE attached_node_name LIKE 'node-%' AND netplan_success = 0";
    eventually(WAIT, "the other nodes converged", || async { (count(&pool, pending_others).await == 0).then_some(()) })
        .await;

    // New sets for the stuck node, one per poll: its stream backs up.
    for mtu in 1400..1406 {
        execute(&mut conn, &format!("UPDATE multi_interface SET mtu = {mtu} WHERE attached_node_name = 'stuck'")).await;
        tokio::time::sleep(POLL * 2).await;
    }
    // Everyone else changes too, and converges while the stuck stream is full.
    execute(
        &mut conn,
        "UPDATE multi_interface SET mtu = 9000, netplan_success = 0 WHERE attached_node_name LIKE 'node-%'",
    )
    .await;
    eventually(WAIT, "the other nodes converged again", || async {
        (count(&pool, pending_others).await == 0).then_some(())
    })
    .await;
    for agent in &agents {
        assert!(agent.netplan_file(0).unwrap().contains("mtu: 9000"));
    }
    let stuck_applied =
        "SELECT COUNT(*) FROM multi_interface WHERE attached_node_name = 'stuck' AND netplan_success = 1";
    assert_eq!(count(&pool, stuck_applied).await, 0, "the stuck node never reported");
    assert_eq!(http_get(controller.http, "/readyz").await.0, 200, "the controller still answers");
    // Seven sets were published for the stuck node; its stream stopped
    // taking them (the other nodes had two pushes each).
    let (_, metrics) = http_get(controller.http, "/metrics").await;
    let pushes: usize = metrics
        .lines()
        .find_map(|l| l.strip_prefix("multinic_controller_pushes_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(pushes - 2 * NODES < 7, "{pushes} pushes: the stuck stream never backed up");
    assert_eq!(controller.fleet.view().counts().connected, NODES + 1);

    // Closing the stuck stream ends its session.
    drop(stuck_stream);
    drop(tx);
    eventually(WAIT, "the stuck session ended", || async {
        (controller.fleet.view().counts().connected == NODES).then_some(())
    })
    .await;
    controller.stop().await;
    for agent in agents {
        agent.stop().await;
    }
}
