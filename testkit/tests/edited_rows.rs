//! Rows edited in place (the writer leaves `netplan_success` at 1): the
//! row must read 0 until the node confirms the new content, whether the
//! node's agent is away or the row is held; rows that did not change keep
//! their 1. A real MariaDB, the controller and agents over gRPC.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use multinic_testkit::eventually;
use multinic_testkit::fleet::{TestAgent, TestController};
use multinic_testkit::mariadb::{MariaDb, execute};
use multinic_testkit::rows::{NewRow, netplan_success, wait_netplan_success};
use sqlx::MySqlPool;

const POLL: Duration = Duration::from_millis(150);
const WAIT: Duration = Duration::from_secs(20);

/// Waits for row `id` to read `want`; `_why` says what that means, for the reader.
async fn wait_success(pool: &MySqlPool, id: i64, want: i64, _why: &str) {
    wait_netplan_success(pool, id, want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_row_reads_0_until_its_node_confirms_the_new_content() {
    let Some(db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    let edited = NewRow::new("a1", "node-a", "fa:16:3e:00:5a:01").insert(&pool).await;
    let kept = NewRow::new("a2", "node-a", "fa:16:3e:00:5a:02").insert(&pool).await;
    let controller = TestController::start(&db.url(), POLL).await;
    let agent = TestAgent::start(&controller.url(), "node-a").await;
    wait_success(&pool, edited, 1, "applied").await;
    wait_success(&pool, kept, 1, "applied").await;

    // The agent goes away; the MTU is edited in place, the flag left at 1.
    let root = agent.stop().await;
    let mut conn = db.connection().await;
    execute(&mut conn, &format!("UPDATE multi_interface SET mtu = 1400 WHERE id = {edited}")).await;
    wait_success(&pool, edited, 0, "no node has mtu 1400 yet").await;
    tokio::time::sleep(POLL * 4).await;
    assert_eq!(netplan_success(&pool, kept).await, 1, "an unchanged row keeps its 1");

    // The agent is back: it applies the new content, and the row says so.
    let agent = TestAgent::start_in(root, &controller.url(), "node-a").await;
    wait_success(&pool, edited, 1, "mtu 1400 applied").await;
    let file = agent.netplan_file(0).unwrap();
    assert!(file.contains("mtu: 1400"), "{file}");
    assert_eq!(netplan_success(&pool, kept).await, 1);
    controller.stop().await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_row_edited_in_place_reads_0_while_the_node_keeps_the_old_content() {
    let Some(db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    let row = NewRow::new("a1", "node-a", "fa:16:3e:00:5b:01").insert(&pool).await;
    let controller = TestController::start(&db.url(), POLL).await;
    let agent = TestAgent::start(&controller.url(), "node-a").await;
    wait_success(&pool, row, 1, "applied").await;

    // The MAC also appears on node-b: held on both, node-a keeps mtu 1500.
    // Row `row` itself did not change: its 1 still holds.
    let other = NewRow::new("b1", "node-b", "fa:16:3e:00:5b:01").insert(&pool).await;
    eventually(WAIT, "the MAC held on node-a", || async {
        let node = controller.fleet.view().node(&"node-a".parse().unwrap())?;
        node.published.filter(|p| !p.set.held().is_empty()).map(|_| ())
    })
    .await;
    tokio::time::sleep(POLL * 4).await;
    assert_eq!(netplan_success(&pool, row).await, 1, "node-a still has exactly this row's content");

    // Edited while held: node-a does not get it (held), so the row reads 0.
    let mut conn = db.connection().await;
    execute(&mut conn, &format!("UPDATE multi_interface SET mtu = 9000 WHERE id = {row}")).await;
    wait_success(&pool, row, 0, "held: mtu 9000 is on no node").await;
    assert!(agent.netplan_file(0).unwrap().contains("mtu: 1500"), "the held interface is left as it is");

    // The conflict ends: the new content is applied and confirmed.
    execute(&mut conn, &format!("UPDATE multi_interface SET deleted_at = NOW() WHERE id = {other}")).await;
    wait_success(&pool, row, 1, "mtu 9000 applied").await;
    assert!(agent.netplan_file(0).unwrap().contains("mtu: 9000"));
    controller.stop().await;
    agent.stop().await;
}
