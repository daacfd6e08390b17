//! Bad messages on the agent stream: each gets a clear status or is ignored
//! with a reason, and none affects another node or row.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use multinic_proto::v1::agent_message::Kind as AgentKind;
use multinic_proto::v1::agent_service_client::AgentServiceClient;
use multinic_proto::v1::controller_message::Kind as ControllerKind;
use multinic_proto::v1::{self, AgentMessage, ControllerMessage};
use multinic_testkit::fleet::{TestAgent, TestController};
use multinic_testkit::hello_message;
use multinic_testkit::mariadb::MariaDb;
use multinic_testkit::rows::{NewRow, netplan_success_of_port};
use multinic_testkit::{eventually, http_get};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const WAIT: Duration = Duration::from_secs(20);

/// Opens a stream, sends `first`, returns the sender and the response stream
/// (or the status the call itself failed with).
async fn open(
    url: &str,
    first: Option<AgentMessage>,
) -> (mpsc::Sender<AgentMessage>, Result<Streaming<ControllerMessage>, tonic::Status>) {
    let mut client = AgentServiceClient::connect(url.to_owned()).await.unwrap();
    let (tx, rx) = mpsc::channel(8);
    if let Some(first) = first {
        tx.send(first).await.unwrap();
    }
    let response = client.sync(ReceiverStream::new(rx)).await.map(tonic::Response::into_inner);
    (tx, response)
}

/// The status that ends the stream.
async fn ending(stream: &mut Streaming<ControllerMessage>) -> tonic::Status {
    loop {
        match tokio::time::timeout(WAIT, stream.message()).await.expect("the stream ends") {
            Ok(Some(_)) => {}
            Ok(None) => panic!("stream ended without a status"),
            Err(status) => return status,
        }
    }
}

async fn rejected(controller: &TestController, reason: &str) -> f64 {
    let (_, metrics) = http_get(controller.http, "/metrics").await;
    let prefix = format!("multinic_controller_rejected_messages_total{{reason=\"{reason}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_streams_get_clear_statuses_and_hurt_nobody() {
    let Some(db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    for (port, node, mac) in [("good", "node-good", "fa:16:3e:00:40:01"), ("evil", "node-evil", "fa:16:3e:00:40:02")] {
        NewRow::new(port, node, mac).insert(&pool).await;
    }
    let controller = TestController::start(&db.url(), Duration::from_millis(150)).await;
    controller.wait_active().await;
    let url = controller.url();
    let good = TestAgent::start(&url, "node-good").await;

    // The first message must be Hello.
    let report = AgentMessage { kind: Some(AgentKind::Report(v1::Report::default())) };
    let (_tx, stream) = open(&url, Some(report)).await;
    let status = ending(&mut stream.unwrap()).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("must be Hello"), "{}", status.message());

    // A Hello naming an impossible node.
    let (_tx, stream) = open(&url, Some(hello_message("bad_node!"))).await;
    let status = ending(&mut stream.unwrap()).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("bad_node!"), "{}", status.message());

    // A message over the size limit.
    let mut huge = hello_message("node-evil");
    if let Some(AgentKind::Hello(h)) = &mut huge.kind {
        h.agent_version = "x".repeat(400 * 1024);
    }
    let (_tx, stream) = open(&url, Some(huge)).await;
    let status = match stream {
        Err(status) => status,
        Ok(mut stream) => ending(&mut stream).await,
    };
    assert!(
        matches!(status.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted | tonic::Code::Internal),
        "{status:?}"
    );

    // Not gRPC at all: garbage on the port is dropped.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut raw = tokio::net::TcpStream::connect(controller.grpc).await.unwrap();
        raw.write_all(b"\x00\xff garbage that is not HTTP/2 \r\n\r\n").await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(WAIT, raw.read_to_end(&mut buf)).await.expect("the connection is closed");
    }

    // A well-formed Hello, then reports the controller must not believe.
    let (tx, stream) = open(&url, Some(hello_message("node-evil"))).await;
    let mut stream = stream.unwrap();
    let push = match stream.message().await.unwrap().unwrap().kind {
        Some(ControllerKind::Desired(push)) => push,
        other => panic!("expected a push, got {other:?}"),
    };
    let applied = |nonce: u64, digest: &str, mac: &str| AgentMessage {
        kind: Some(AgentKind::Report(v1::Report {
            generation: push.generation,
            nonce,
            digest: digest.to_owned(),
            outcome: v1::Outcome::Applied.into(),
            interfaces: vec![v1::InterfaceStatus {
                mac_address: mac.into(),
                name: "multinic0".into(),
                state: v1::InterfaceState::Applied.into(),
                error_code: 0,
                message: String::new(),
            }],
            error: String::new(),
            drift: Vec::new(),
        })),
    };
    let mac = push.interfaces[0].mac_address.clone();
    let stale_before = rejected(&controller, "stale").await;
    tx.send(applied(push.nonce.wrapping_add(1), &push.digest, &mac)).await.unwrap();
    eventually(WAIT, "stale nonce counted", || async {
        (rejected(&controller, "stale").await > stale_before).then_some(())
    })
    .await;
    tx.send(applied(push.nonce, "0000", &mac)).await.unwrap();
    eventually(WAIT, "digest mismatch counted", || async {
        (rejected(&controller, "digest_mismatch").await >= 1.0).then_some(())
    })
    .await;
    tx.send(applied(push.nonce, &push.digest, "fa-16-3e-00-40-02")).await.unwrap();
    eventually(WAIT, "malformed report counted", || async {
        (rejected(&controller, "malformed").await >= 1.0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(netplan_success_of_port(&pool, "evil").await, 0, "no believable report yet");

    // The right report is recorded; the good node was never disturbed.
    tx.send(applied(push.nonce, &push.digest, &mac)).await.unwrap();
    eventually(WAIT, "the evil node's row recorded", || async {
        (netplan_success_of_port(&pool, "evil").await == 1).then_some(())
    })
    .await;
    assert_eq!(netplan_success_of_port(&pool, "good").await, 1);
    assert_eq!(good.writes(), 1);
    drop(tx);

    controller.stop().await;
    good.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_never_says_hello_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _pool) = multinic_testkit::sqlite_db(dir.path()).await;
    let controller = TestController::start(&url, Duration::from_millis(150)).await;
    controller.wait_active().await;
    let (_tx, stream) = open(&controller.url(), None).await;
    let status = ending(&mut stream.unwrap()).await;
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    assert!(status.message().contains("no Hello"), "{}", status.message());
    controller.stop().await;
}

/// A report must answer exactly the push it names; anything else is refused
/// whole (nothing of it recorded), counted by reason, and the right report
/// still goes through. Meanwhile the unanswered push shows in `get node`,
/// and a newer stream of the node ends this one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_that_do_not_fit_their_push_are_refused_whole() {
    use multinic_proto::v1::fleet_service_client::FleetServiceClient;

    let Some(db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    NewRow::new("e1", "node-evil", "fa:16:3e:00:41:01").insert(&pool).await;
    NewRow::new("e2", "node-evil", "fa:16:3e:00:41:02").insert(&pool).await;
    let controller = TestController::start_adjusted(&db.url(), Duration::from_millis(150), |c| {
        c.push_answer_timeout = Duration::from_secs(1);
    })
    .await;
    controller.wait_active().await;
    let url = controller.url();
    let (tx, stream) = open(&url, Some(hello_message("node-evil"))).await;
    let mut stream = stream.unwrap();
    let push = match stream.message().await.unwrap().unwrap().kind {
        Some(ControllerKind::Desired(push)) => push,
        other => panic!("expected a push, got {other:?}"),
    };
    let status = |mac: &str, name: &str, state: v1::InterfaceState| v1::InterfaceStatus {
        mac_address: mac.into(),
        name: name.into(),
        state: state.into(),
        error_code: 0,
        message: String::new(),
    };
    let (m1, m2) = ("fa:16:3e:00:41:01", "fa:16:3e:00:41:02");
    let applied = || {
        vec![status(m1, "multinic0", v1::InterfaceState::Applied), status(m2, "multinic1", v1::InterfaceState::Applied)]
    };
    let report = |outcome: v1::Outcome, interfaces: Vec<v1::InterfaceStatus>| v1::Report {
        generation: push.generation,
        nonce: push.nonce,
        digest: push.digest.clone(),
        outcome: outcome.into(),
        interfaces,
        error: String::new(),
        drift: Vec::new(),
    };
    let send = |r: v1::Report| AgentMessage { kind: Some(AgentKind::Report(r)) };

    let mut rejected_with_statuses = report(v1::Outcome::Rejected, applied());
    rejected_with_statuses.error = "it was malformed, but here are applied interfaces".into();
    let mut twice = applied();
    twice.push(status(m1, "", v1::InterfaceState::Failed));
    let mut other_generation = report(v1::Outcome::Applied, applied());
    other_generation.generation += 1;
    let mut not_pushed = applied();
    not_pushed.push(status("fa:16:3e:00:99:99", "multinic2", v1::InterfaceState::Applied));
    let mut one_failed = applied();
    one_failed[1].state = v1::InterfaceState::Failed.into();
    let cases = [
        ("inconsistent", rejected_with_statuses),
        ("duplicate", report(v1::Outcome::Partial, twice)),
        ("generation_mismatch", other_generation),
        ("controller_state", report(v1::Outcome::Partial, vec![status(m1, "", v1::InterfaceState::Pending)])),
        ("inconsistent", report(v1::Outcome::Applied, not_pushed)),
        ("inconsistent", report(v1::Outcome::Applied, one_failed)),
    ];
    for (reason, bad) in cases {
        let before = rejected(&controller, reason).await;
        tx.send(send(bad)).await.unwrap();
        eventually(WAIT, &format!("a report refused as {reason}"), || async {
            (rejected(&controller, reason).await > before).then_some(())
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for port in ["e1", "e2"] {
        assert_eq!(netplan_success_of_port(&pool, port).await, 0, "nothing of a refused report is recorded");
    }

    // The push is still unanswered: get node says so.
    let mut fleet = FleetServiceClient::connect(url.clone()).await.unwrap();
    let node = eventually(WAIT, "the unanswered push shows", || {
        let mut fleet = fleet.clone();
        async move {
            let node = fleet.get_node(v1::GetNodeRequest { name: "node-evil".into() }).await.unwrap().into_inner();
            node.problems.iter().any(|p| p.error_code == v1::ErrorCode::PushUnanswered as i32).then_some(node)
        }
    })
    .await;
    let message = &node.problems[0].message;
    assert!(message.starts_with(&format!("push of generation {} unanswered for ", push.generation)), "{message}");
    assert_eq!(node.convergence, v1::Convergence::Pending as i32);

    // The report that fits is recorded, and the problem goes.
    tx.send(send(report(v1::Outcome::Applied, applied()))).await.unwrap();
    eventually(WAIT, "both rows recorded", || async {
        (netplan_success_of_port(&pool, "e1").await == 1 && netplan_success_of_port(&pool, "e2").await == 1)
            .then_some(())
    })
    .await;
    let node = fleet.get_node(v1::GetNodeRequest { name: "node-evil".into() }).await.unwrap().into_inner();
    assert!(node.problems.is_empty(), "{:?}", node.problems);
    assert_eq!(node.convergence, v1::Convergence::Converged as i32);

    // A newer stream of the node ends this one at once (nothing changed in
    // the database that would wake it).
    let (_tx2, newer) = open(&url, Some(hello_message("node-evil"))).await;
    let _newer = newer.unwrap();
    let status = ending(&mut stream).await;
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    assert!(status.message().contains("replaced by a newer stream"), "{}", status.message());
    drop(tx);
    controller.stop().await;
}
