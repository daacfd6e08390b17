//! A node whose rows make a desired set larger than one gRPC message
//! (thousands of held MACs): the push carries only the held MACs the node
//! has, so its valid rows are still applied; when that cannot be known, the
//! set is not pushed and the node shows why. A real MariaDB, the controller
//! and an agent over gRPC.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use multinic_proto::v1::fleet_service_client::FleetServiceClient;
use multinic_proto::v1::{self, GetNodeRequest};
use multinic_testkit::eventually;
use multinic_testkit::fleet::{TestAgent, TestController};
use multinic_testkit::mariadb::{MariaDb, execute};
use multinic_testkit::rows::{NewRow, insert_rejected_rows, wait_netplan_success as wait_success};
use sqlx::MySqlPool;

const POLL: Duration = Duration::from_millis(200);
const WAIT: Duration = Duration::from_secs(30);
/// Held MACs on one node: about 270 KiB of push, over the 256 KiB limit.
const BAD_ROWS: usize = 14_000;

/// `count` rows with MTU 0 (invalid: their MACs are held) on `node`.
async fn insert_bad_rows(pool: &MySqlPool, node: &str, prefix: u8, count: usize) {
    insert_rejected_rows(pool, node, prefix, count).await.unwrap();
}

/// The node's status; `None` while the controller does not know it yet.
async fn node(url: &str, name: &str) -> Option<v1::NodeStatus> {
    let mut client = FleetServiceClient::connect(url.to_owned()).await.unwrap();
    match client.get_node(GetNodeRequest { name: name.into() }).await {
        Ok(node) => Some(node.into_inner()),
        // Not read yet, or not active yet.
        Err(status) if matches!(status.code(), tonic::Code::NotFound | tonic::Code::Unavailable) => None,
        Err(status) => panic!("{status:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_over_the_message_limit_still_delivers_the_valid_rows() {
    let Some(db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    let first = NewRow::new("a1", "node-a", "fa:16:3e:00:6a:01").insert(&pool).await;
    let controller = TestController::start(&db.url(), POLL).await;
    let agent = TestAgent::start(&controller.url(), "node-a").await;
    wait_success(&pool, first, 1).await;

    // Thousands of bad rows, then a new valid row and an edit of the first.
    insert_bad_rows(&pool, "node-a", 0xa0, BAD_ROWS).await;
    let second = NewRow::new("a2", "node-a", "fa:16:3e:00:6a:02").mtu(9000).insert(&pool).await;
    let mut conn = db.connection().await;
    execute(&mut conn, &format!("UPDATE multi_interface SET mtu = 1400 WHERE id = {first}")).await;
    wait_success(&pool, second, 1).await;
    wait_success(&pool, first, 1).await;
    assert!(agent.netplan_file(0).unwrap().contains("mtu: 1400"));
    assert!(agent.netplan_file(1).unwrap().contains("mtu: 9000"));

    let view = node(&controller.url(), "node-a").await.unwrap();
    assert!(view.problems.is_empty(), "{:?}", view.problems);
    assert_eq!(view.convergence, v1::Convergence::Converged as i32);
    assert_eq!(view.row_problems.len() + view.row_problems_omitted as usize, BAD_ROWS, "every bad row is counted");
    assert!(view.row_problems.len() <= 200, "and the list is bounded");
    controller.stop().await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_that_cannot_be_pushed_is_a_node_problem_until_the_rows_are_fixed() {
    let Some(db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    let good = NewRow::new("b1", "node-b", "fa:16:3e:00:6b:01").insert(&pool).await;
    insert_bad_rows(&pool, "node-b", 0xb0, BAD_ROWS).await;
    let controller = TestController::start(&db.url(), POLL).await;
    controller.wait_active().await;
    // A fresh agent has not said what it has: the held MACs cannot be
    // trimmed to it, and all of them do not fit.
    let agent = TestAgent::start(&controller.url(), "node-b").await;
    let view = eventually(WAIT, "node-b shows the problem", || async {
        let view = node(&controller.url(), "node-b").await?;
        (view.connected && !view.problems.is_empty()).then_some(view)
    })
    .await;
    assert_eq!(view.problems[0].error_code, v1::ErrorCode::PushTooLarge as i32);
    let message = &view.problems[0].message;
    assert!(message.contains(&format!("{BAD_ROWS} held MACs")) && message.contains("256 KiB"), "{message}");
    assert_eq!(view.convergence, v1::Convergence::Failed as i32);
    assert!(agent.netplan_file(0).is_none(), "nothing was pushed");

    // The bad rows are fixed: the set goes out and the problem is gone.
    let mut conn = db.connection().await;
    execute(&mut conn, "UPDATE multi_interface SET mtu = 1500 WHERE port_id LIKE 'bad-%'").await;
    execute(&mut conn, "UPDATE multi_interface SET deleted_at = NOW() WHERE port_id LIKE 'bad-%'").await;
    wait_success(&pool, good, 1).await;
    let view = node(&controller.url(), "node-b").await.unwrap();
    assert!(view.problems.is_empty(), "{:?}", view.problems);
    controller.stop().await;
    agent.stop().await;
}
