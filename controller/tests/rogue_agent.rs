//! A rogue node against the real controller binary, through a client that
//! speaks the wire protocol by hand: what it claims to have must not hold
//! back removals on other nodes, and what it reports about MACs it was
//! never pushed is not believed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use multinic_proto::v1::agent_message::Kind as AgentKind;
use multinic_proto::v1::agent_service_client::AgentServiceClient;
use multinic_proto::v1::controller_message::Kind as ControllerKind;
use multinic_proto::v1::fleet_service_client::FleetServiceClient;
use multinic_proto::v1::{self, AgentMessage, ControllerMessage, GetSummaryRequest};
use multinic_testkit::fleet::TestAgent;
use multinic_testkit::mariadb::{MariaDb, execute};
use multinic_testkit::process::ControllerProcess;
use multinic_testkit::rows::NewRow;
use multinic_testkit::{eventually, free_addr, hello_message, http_get};
use sqlx::MySqlPool;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const WAIT: Duration = Duration::from_secs(30);
const BINARY: &str = env!("CARGO_BIN_EXE_multinic-controller");

/// Two rows for each of four honest nodes.
async fn seed(pool: &MySqlPool) {
    for n in 0..4 {
        for i in 0..2 {
            let mac = format!("fa:16:3e:00:7{n}:0{i}");
            NewRow::new(&format!("p{n}{i}"), &format!("node-{n}"), &mac).insert(pool).await;
        }
    }
}

/// A Hello of `node` saying it has applied `count` made-up MACs.
fn claiming(node: &str, count: usize, named: bool) -> AgentMessage {
    let mut hello = hello_message(node);
    if let Some(AgentKind::Hello(h)) = &mut hello.kind {
        h.applied_digest = "0".repeat(64);
        h.interfaces = (0..count)
            .map(|i| v1::InterfaceStatus {
                mac_address: format!("02:66:{:02x}:{:02x}:00:01", i / 256, i % 256),
                name: if named { format!("multinic{i}") } else { String::new() },
                state: v1::InterfaceState::Applied.into(),
                error_code: 0,
                message: String::new(),
            })
            .collect();
    }
    hello
}

async fn open(url: &str, first: AgentMessage) -> (mpsc::Sender<AgentMessage>, Streaming<ControllerMessage>) {
    let mut client = AgentServiceClient::connect(url.to_owned()).await.unwrap();
    let (tx, rx) = mpsc::channel(8);
    tx.send(first).await.unwrap();
    (tx, client.sync(ReceiverStream::new(rx)).await.unwrap().into_inner())
}

async fn rejected(http: std::net::SocketAddr, reason: &str) -> f64 {
    let (_, metrics) = http_get(http, "/metrics").await;
    let prefix = format!("multinic_controller_rejected_messages_total{{reason=\"{reason}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0.0, |v| v.trim().parse().unwrap())
}

fn files(agent: &TestAgent) -> usize {
    (0..10).filter(|i| agent.netplan_file(*i).is_some()).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rogue_nodes_claims_hold_back_no_removal_elsewhere() {
    let Some(db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    seed(&pool).await;
    let logs = tempfile::tempdir().unwrap();
    let guard = ["--max-removal-share", "0.5", "--min-guarded-removals", "3"];
    let controller =
        ControllerProcess::start(Path::new(BINARY), &db.url(), free_addr(), &logs.path().join("c.log"), &guard).await;
    controller.wait_ready().await;
    let url = controller.url();
    let mut agents = Vec::new();
    for n in 0..4 {
        agents.push(TestAgent::start(&url, &format!("node-{n}")).await);
    }
    eventually(WAIT, "every node has its two files", || async { agents.iter().all(|a| files(a) == 2).then_some(()) })
        .await;
    // Past the controller's removal warm-up (1 s): the guard judges counts.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // 3,000 made-up MACs in one Hello (about 100 KB): refused whole.
    let (_tx, mut stream) = open(&url, claiming("node-rogue", 3000, false)).await;
    let status = stream.message().await.expect_err("the Hello is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("3000 interfaces reported present; a node has at most 100"), "{status:?}");
    assert!(rejected(controller.http, "too_many_interfaces").await >= 1.0);

    // As many as a node may have: taken as its own node's claims only.
    let (rogue, mut stream) = open(&url, claiming("node-rogue", 100, true)).await;
    let push = match stream.message().await.unwrap().unwrap().kind {
        Some(ControllerKind::Desired(push)) => push,
        other => panic!("expected a push, got {other:?}"),
    };
    assert!(push.interfaces.is_empty(), "the database knows no rows of node-rogue");

    // A real removal on node-0 (two of eight interfaces) goes ahead while
    // the rogue is connected.
    execute(&mut db.connection().await, "UPDATE multi_interface SET deleted_at = NOW() WHERE port_id LIKE 'p0%'").await;
    eventually(WAIT, "node-0's files removed", || async { (files(&agents[0]) == 0).then_some(()) }).await;
    let mut fleet = FleetServiceClient::connect(url.clone()).await.unwrap();
    let summary = fleet.get_summary(GetSummaryRequest {}).await.unwrap().into_inner();
    assert_eq!(summary.removals_held, 0, "{}", summary.removal_guard);

    // Its report on MACs it was never pushed is not believed.
    let before = rejected(controller.http, "inconsistent").await;
    let Some(AgentKind::Hello(hello)) = claiming("node-rogue", 100, true).kind else { unreachable!() };
    let report = v1::Report {
        generation: push.generation,
        nonce: push.nonce,
        digest: push.digest.clone(),
        outcome: v1::Outcome::Applied.into(),
        interfaces: hello.interfaces,
        error: String::new(),
        drift: Vec::new(),
    };
    rogue.send(AgentMessage { kind: Some(AgentKind::Report(report)) }).await.unwrap();
    eventually(WAIT, "the report refused", || async {
        (rejected(controller.http, "inconsistent").await > before).then_some(())
    })
    .await;

    // It leaves; nothing is held, and nothing else changed.
    drop((rogue, stream));
    execute(&mut db.connection().await, "UPDATE multi_interface SET deleted_at = NOW() WHERE port_id = 'p10'").await;
    eventually(WAIT, "node-1's first file removed", || async { (files(&agents[1]) == 1).then_some(()) }).await;
    let summary = fleet.get_summary(GetSummaryRequest {}).await.unwrap().into_inner();
    assert_eq!(summary.removals_held, 0, "{}", summary.removal_guard);
    assert_eq!(files(&agents[2]) + files(&agents[3]), 4, "the other nodes are untouched");
    for agent in agents {
        agent.stop().await;
    }
}
