//! How the controller notices database changes without reading the whole
//! fleet every tick: a probe per tick, the changed rows when it differs, and
//! the whole fleet when an incremental read cannot be trusted (hard deletes,
//! `multi_subnet` changes) or now and then (writers that keep `modified_at`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use multinic_testkit::fleet::{TestAgent, TestController};
use multinic_testkit::mariadb::{MariaDb, execute};
use multinic_testkit::{eventually, http_get};

const POLL: Duration = Duration::from_millis(200);
const WAIT: Duration = Duration::from_secs(20);

/// `multinic_controller_db_reads_total{kind}`.
async fn reads(controller: &TestController, kind: &str) -> u64 {
    let (_, body) = http_get(controller.http, "/metrics").await;
    let prefix = format!("multinic_controller_db_reads_total{{kind=\"{kind}\"}} ");
    body.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

async fn wait_file(agent: &TestAgent, index: u8, needle: &str) {
    eventually(WAIT, &format!("multinic{index} file containing {needle:?}"), || async move {
        agent.netplan_file(index).filter(|f| f.contains(needle)).map(|_| ())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_of_every_kind_reach_the_node() {
    let Some(db) = MariaDb::start().await else { return };
    let mut conn = db.connection().await;
    execute(&mut conn, "INSERT INTO multi_subnet (subnet_id, cidr) VALUES ('sub-1', '10.5.0.0/16')").await;
    execute(
        &mut conn,
        "INSERT INTO multi_interface (port_id, subnet_id, macaddress, attached_node_name, address, cidr, mtu) VALUES \
         ('p1', 'sub-1', 'fa:16:3e:00:30:01', 'node-c', '10.5.0.7', NULL, 1500), \
         ('p2', 'sub-1', 'fa:16:3e:00:30:02', 'node-c', NULL, NULL, 1500), \
         ('p3', 'sub-1', 'fa:16:3e:00:30:03', 'node-c', NULL, NULL, 1500)",
    )
    .await;
    let controller = TestController::start_reading(&db.url(), POLL, Duration::from_secs(3)).await;
    let node = TestAgent::start(&controller.url(), "node-c").await;
    wait_file(&node, 2, "fa:16:3e:00:30:03").await;
    wait_file(&node, 0, "10.5.0.7/16").await;

    // An ordinary update (modified_at moves): read as a changed row.
    let changed_before = reads(&controller, "changed").await;
    execute(&mut conn, "UPDATE multi_interface SET mtu = 1400, netplan_success = 0 WHERE port_id = 'p1'").await;
    wait_file(&node, 0, "mtu: 1400").await;
    assert!(reads(&controller, "changed").await > changed_before, "read incrementally");

    // Two updates within the same second: the second is not lost.
    execute(&mut conn, "UPDATE multi_interface SET mtu = 1401 WHERE port_id = 'p2'").await;
    execute(&mut conn, "UPDATE multi_interface SET mtu = 1402 WHERE port_id = 'p2'").await;
    wait_file(&node, 1, "mtu: 1402").await;

    // A writer that keeps modified_at, once the row is no longer recently
    // modified: only the periodic full read sees it.
    tokio::time::sleep(Duration::from_secs(multinic_controller::change::RECENT as u64 + 1)).await;
    let full_before = reads(&controller, "full").await;
    execute(&mut conn, "UPDATE multi_interface SET mtu = 1300, modified_at = modified_at WHERE port_id = 'p1'").await;
    wait_file(&node, 0, "mtu: 1300").await;
    assert!(reads(&controller, "full").await > full_before);

    // multi_subnet changes: every row's cidr may have changed.
    execute(&mut conn, "UPDATE multi_subnet SET cidr = '10.5.0.0/24' WHERE subnet_id = 'sub-1'").await;
    wait_file(&node, 0, "10.5.0.7/24").await;

    // A soft delete and a hard delete.
    execute(&mut conn, "UPDATE multi_interface SET deleted_at = NOW() WHERE port_id = 'p2'").await;
    eventually(WAIT, "multinic1 removed", || async { node.netplan_file(1).is_none().then_some(()) }).await;
    execute(&mut conn, "DELETE FROM multi_interface WHERE port_id = 'p3'").await;
    eventually(WAIT, "multinic2 removed", || async { node.netplan_file(2).is_none().then_some(()) }).await;
    assert!(node.netplan_file(0).is_some());

    controller.stop().await;
    node.stop().await;
}

/// A `multi_subnet` row that is soft-deleted no longer supplies the cidr of
/// rows whose own cidr is NULL: such a row is rejected (its MAC held, the
/// node keeps what it has) and says why; rows with their own cidr go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_deleted_subnet_supplies_no_cidr() {
    use multinic_testkit::rows::netplan_success_of_port;
    let Some(db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    let mut conn = db.connection().await;
    execute(&mut conn, "INSERT INTO multi_subnet (subnet_id, cidr) VALUES ('sub-9', '10.9.0.0/16')").await;
    execute(
        &mut conn,
        "INSERT INTO multi_interface (port_id, subnet_id, macaddress, attached_node_name, address, cidr, mtu) VALUES \
         ('s1', 'sub-9', 'fa:16:3e:00:39:01', 'node-s', '10.9.0.7', NULL, 1500), \
         ('s2', 'sub-9', 'fa:16:3e:00:39:02', 'node-s', '10.8.0.7', '10.8.0.0/24', 1500)",
    )
    .await;
    let controller = TestController::start(&db.url(), POLL).await;
    let node = TestAgent::start(&controller.url(), "node-s").await;
    wait_file(&node, 0, "10.9.0.7/16").await;
    eventually(WAIT, "both rows applied", || async {
        (netplan_success_of_port(&pool, "s1").await == 1 && netplan_success_of_port(&pool, "s2").await == 1)
            .then_some(())
    })
    .await;

    execute(&mut conn, "UPDATE multi_subnet SET deleted_at = NOW() WHERE subnet_id = 'sub-9'").await;
    let name = "node-s".parse().unwrap();
    let problem = eventually(WAIT, "s1 rejected for want of a cidr", || async {
        let node = controller.fleet.node(&name)?;
        node.desired.problems.iter().find(|p| p.mac == "fa:16:3e:00:39:01").map(|p| p.message.clone())
    })
    .await;
    assert!(problem.contains("no cidr"), "{problem}");
    eventually(WAIT, "s1 reads 0", || async { (netplan_success_of_port(&pool, "s1").await == 0).then_some(()) }).await;
    tokio::time::sleep(POLL * 4).await;
    assert!(node.netplan_file(0).unwrap().contains("10.9.0.7/16"), "held: left as it is");
    assert_eq!(netplan_success_of_port(&pool, "s2").await, 1, "a row with its own cidr is untouched");
    controller.stop().await;
    node.stop().await;
}
