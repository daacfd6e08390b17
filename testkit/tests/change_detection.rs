//! How the controller notices database changes without reading the whole
//! fleet every tick, on a private MariaDB.
//!
//! The feed tests drive the controller's change detection ([`RowFeed`]) one
//! tick at a time and check that the very next tick after each kind of
//! change (insert, update, soft delete, hard delete, re-insert with a new
//! id, a `multi_subnet` change (a soft delete too), a change in the same second as the last
//! look, a database restart) reads it, and that once the tables are idle
//! again a tick reads nothing: not after the OpenStack side's writes, and
//! not after our own. The last test runs the whole controller and an agent
//! through the same changes and a restart of `mariadbd`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use multinic_controller::change::{ChangeReason, FullReason, RECENT};
use multinic_controller::feed::{FeedRead, RowFeed};
use multinic_controller::store::{self, DatabaseConfig, InterfaceRow, RowUpdate, Store};
use multinic_testkit::feed::{self, next_tick, until_quiet};
use multinic_testkit::fleet::{TestAgent, TestController};
use multinic_testkit::mariadb::{MariaDb, execute};
use multinic_testkit::rows::NewRow;
use multinic_testkit::{eventually, http_get};
use sqlx::MySqlPool;

const POLL: Duration = Duration::from_millis(200);
const WAIT: Duration = Duration::from_secs(20);
/// A feed's full read is never periodic in these tests.
const NEVER: Duration = Duration::from_secs(3600);

/// A feed over a fresh store of `db`, after its first (full) read.
async fn started_feed(db: &MariaDb) -> (RowFeed, Arc<dyn Store>) {
    let store = store::connect(&DatabaseConfig::Url(db.url())).unwrap();
    (feed::started_feed(store.clone(), NEVER).await, store)
}

fn row(feed: &RowFeed, id: i64) -> Option<&InterfaceRow> {
    feed.rows().unwrap().row(id)
}

async fn exec(pool: &MySqlPool, sql: &str) {
    sqlx::raw_sql(sql).execute(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn scalar(pool: &MySqlPool, sql: &str) -> Option<i64> {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_change_is_read_at_the_next_tick_and_idle_ticks_read_nothing() {
    let Some(db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    exec(&pool, "INSERT INTO multi_subnet (subnet_id, cidr) VALUES ('sub-1', '10.5.0.0/16')").await;
    exec(
        &pool,
        "INSERT INTO multi_interface (port_id, subnet_id, macaddress, attached_node_name, address, cidr) \
         VALUES ('p0', 'sub-1', 'fa:16:3e:00:40:00', 'node-a', '10.5.0.7', NULL)",
    )
    .await;
    let by_subnet = scalar(&pool, "SELECT MAX(id) FROM multi_interface").await.unwrap();
    let a = NewRow::new("p1", "node-a", "fa:16:3e:00:40:01").insert(&pool).await;
    let b = NewRow::new("p2", "node-b", "fa:16:3e:00:40:02").insert(&pool).await;
    let (mut feed, store) = started_feed(&db).await;
    assert_eq!(row(&feed, by_subnet).unwrap().subnet_cidr.as_deref(), Some("10.5.0.0/16"));
    until_quiet(&mut feed).await;
    assert_eq!(feed.tick(Instant::now()).await.unwrap(), FeedRead::Nothing, "idle: nothing read");

    // Insert.
    let c = NewRow::new("p3", "node-c", "fa:16:3e:00:40:03").insert(&pool).await;
    next_tick(&mut feed, "insert").await;
    assert!(row(&feed, c).is_some());
    until_quiet(&mut feed).await;

    // Update in place.
    exec(&pool, &format!("UPDATE multi_interface SET mtu = 9000, netplan_success = 0 WHERE id = {a}")).await;
    let read = next_tick(&mut feed, "update").await;
    assert!(matches!(read, FeedRead::Changed { rows: Some(ChangeReason::Written), .. }), "{read:?}");
    assert_eq!(row(&feed, a).unwrap().mtu, Some(9000));
    until_quiet(&mut feed).await;

    // Soft delete.
    exec(&pool, &format!("UPDATE multi_interface SET deleted_at = NOW() WHERE id = {c}")).await;
    next_tick(&mut feed, "soft delete").await;
    assert!(row(&feed, c).is_none());
    until_quiet(&mut feed).await;

    // Hard delete: the count does not add up, so the whole fleet is read.
    exec(&pool, &format!("DELETE FROM multi_interface WHERE id = {b}")).await;
    let read = next_tick(&mut feed, "hard delete").await;
    assert!(matches!(read, FeedRead::Full { reason: FullReason::Mismatch, .. }), "{read:?}");
    assert!(row(&feed, b).is_none());
    until_quiet(&mut feed).await;

    // Deleted and re-inserted with a new id, in one transaction.
    exec(
        &pool,
        &format!(
            "START TRANSACTION; UPDATE multi_interface SET deleted_at = NOW() WHERE id = {a}; \
             INSERT INTO multi_interface (port_id, subnet_id, macaddress, attached_node_name, mtu) \
             VALUES ('p1-again', 's', 'fa:16:3e:00:40:01', 'node-a', 9000); COMMIT"
        ),
    )
    .await;
    let a_again = scalar(&pool, "SELECT MAX(id) FROM multi_interface").await.unwrap();
    next_tick(&mut feed, "re-insert").await;
    assert!(row(&feed, a).is_none());
    assert_eq!(row(&feed, a_again).unwrap().macaddress, "fa:16:3e:00:40:01");
    until_quiet(&mut feed).await;

    // A multi_subnet write that changes no cidr: its cidrs are read and
    // compared, the fleet is not.
    exec(&pool, "UPDATE multi_subnet SET status = 'ACTIVE' WHERE subnet_id = 'sub-1'").await;
    let read = next_tick(&mut feed, "multi_subnet status").await;
    assert!(matches!(read, FeedRead::Changed { subnets: true, .. }), "{read:?}");
    until_quiet(&mut feed).await;

    // A multi_subnet cidr change: the rows that take their cidr from it
    // change too.
    exec(&pool, "UPDATE multi_subnet SET cidr = '10.5.0.0/24' WHERE subnet_id = 'sub-1'").await;
    let read = next_tick(&mut feed, "multi_subnet").await;
    assert!(matches!(read, FeedRead::Full { reason: FullReason::Subnets, .. }), "{read:?}");
    assert_eq!(row(&feed, by_subnet).unwrap().subnet_cidr.as_deref(), Some("10.5.0.0/24"));
    until_quiet(&mut feed).await;

    // A soft-deleted multi_subnet supplies no cidr: the next tick reads the
    // whole fleet and the row loses it.
    exec(&pool, "UPDATE multi_subnet SET deleted_at = NOW() WHERE subnet_id = 'sub-1'").await;
    let read = next_tick(&mut feed, "multi_subnet soft delete").await;
    assert!(matches!(read, FeedRead::Full { reason: FullReason::Subnets, .. }), "{read:?}");
    assert_eq!(row(&feed, by_subnet).unwrap().subnet_cidr, None);
    until_quiet(&mut feed).await;
    exec(&pool, "UPDATE multi_subnet SET deleted_at = NULL WHERE subnet_id = 'sub-1'").await;
    let read = next_tick(&mut feed, "multi_subnet undeleted").await;
    assert!(matches!(read, FeedRead::Full { reason: FullReason::Subnets, .. }), "{read:?}");
    assert_eq!(row(&feed, by_subnet).unwrap().subnet_cidr.as_deref(), Some("10.5.0.0/24"));
    until_quiet(&mut feed).await;

    // Our own netplan_success write moves the table's last-write time:
    // read for a few ticks (someone else may have written in that same
    // second), then idle again.
    let r = row(&feed, a_again).unwrap().clone();
    assert_eq!(store.record(&[RowUpdate { id: r.id, success: true, content: r.content() }]).await.unwrap(), 1);
    let read = next_tick(&mut feed, "our write").await;
    assert!(matches!(read, FeedRead::Changed { rows: Some(ChangeReason::Written), .. }), "{read:?}");
    // Ticks every 500 ms: reading stops once RECENT seconds have passed.
    let reads = until_quiet(&mut feed).await;
    assert!(reads <= 2 * (RECENT as usize + 2), "our write cost {reads} reads");
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(feed.tick(Instant::now()).await.unwrap(), FeedRead::Nothing);
    }
}

/// The last write's time has a one-second resolution (and is the start of
/// its transaction): a write in the same second as the previous look, after
/// it, leaves it unchanged. The next tick still reads that write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_in_the_same_second_as_the_last_look_is_read() {
    let Some(db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    let id = NewRow::new("p1", "node-s", "fa:16:3e:00:41:01").insert(&pool).await;
    let other = NewRow::new("p2", "node-s", "fa:16:3e:00:41:02").insert(&pool).await;
    let (mut feed, _store) = started_feed(&db).await;
    until_quiet(&mut feed).await;
    let updated = "SELECT CAST(UNIX_TIMESTAMP(UPDATE_TIME) AS SIGNED) FROM information_schema.TABLES \
                   WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'multi_interface'";
    for attempt in 1..=10 {
        // Start right after the database clock turns a second.
        let start = scalar(&pool, "SELECT CAST(UNIX_TIMESTAMP() AS SIGNED)").await;
        while scalar(&pool, "SELECT CAST(UNIX_TIMESTAMP() AS SIGNED)").await == start {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        exec(&pool, &format!("UPDATE multi_interface SET mtu = {} WHERE id = {other}", 1000 + attempt)).await;
        let first = scalar(&pool, updated).await;
        next_tick(&mut feed, "the first write").await;
        let looked = feed.probe().unwrap().now;
        exec(&pool, &format!("UPDATE multi_interface SET mtu = {} WHERE id = {id}", 2000 + attempt)).await;
        let second = scalar(&pool, updated).await;
        if first != Some(looked) || second != Some(looked) {
            until_quiet(&mut feed).await;
            continue; // the second turned in between: try again
        }
        // Both writes and the look in one second: the signal did not move.
        next_tick(&mut feed, "the write in the same second").await;
        assert_eq!(feed.probe().unwrap().updated, Some(looked));
        assert_eq!(row(&feed, id).unwrap().mtu, Some(2000 + attempt));
        return;
    }
    panic!("could not fit two writes and a look into one second in 10 attempts");
}

/// After a restart the engine no longer knows when the table was last
/// written: a change committed just before the restart is read at the next
/// tick, and so is every tick after it until the table's next write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_loses_no_change() {
    let Some(mut db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    let id = NewRow::new("p1", "node-r", "fa:16:3e:00:42:01").insert(&pool).await;
    let (mut feed, _store) = started_feed(&db).await;
    until_quiet(&mut feed).await;
    exec(&pool, &format!("UPDATE multi_interface SET mtu = 1400 WHERE id = {id}")).await;
    drop(pool);
    db.restart().await;

    let read = next_tick(&mut feed, "after the restart").await;
    assert!(matches!(read, FeedRead::Changed { rows: Some(ChangeReason::Unknown), .. }), "{read:?}");
    assert_eq!(feed.probe().unwrap().updated, None);
    assert_eq!(row(&feed, id).unwrap().mtu, Some(1400));
    // Unknown until the next write: every tick reads.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let read = next_tick(&mut feed, "still unknown").await;
    assert!(matches!(read, FeedRead::Changed { rows: Some(ChangeReason::Unknown), .. }), "{read:?}");
    // The next write makes it known again, and idle ticks cheap.
    let pool = db.pool().await;
    exec(&pool, &format!("UPDATE multi_interface SET mtu = 1300 WHERE id = {id}")).await;
    next_tick(&mut feed, "the first write after the restart").await;
    assert_eq!(row(&feed, id).unwrap().mtu, Some(1300));
    until_quiet(&mut feed).await;
}

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
    let Some(mut db) = MariaDb::start().await else { return };
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
    tokio::time::sleep(Duration::from_secs(RECENT as u64 + 1)).await;
    let full_before = reads(&controller, "full").await;
    execute(&mut conn, "UPDATE multi_interface SET mtu = 1300, modified_at = modified_at WHERE port_id = 'p1'").await;
    wait_file(&node, 0, "mtu: 1300").await;
    assert!(reads(&controller, "full").await > full_before);

    // multi_subnet changes: every row's cidr may have changed.
    execute(&mut conn, "UPDATE multi_subnet SET cidr = '10.5.0.0/24' WHERE subnet_id = 'sub-1'").await;
    wait_file(&node, 0, "10.5.0.7/24").await;

    // A soft delete, a hard delete, an insert.
    execute(&mut conn, "UPDATE multi_interface SET deleted_at = NOW() WHERE port_id = 'p2'").await;
    eventually(WAIT, "multinic1 removed", || async { node.netplan_file(1).is_none().then_some(()) }).await;
    execute(&mut conn, "DELETE FROM multi_interface WHERE port_id = 'p3'").await;
    eventually(WAIT, "multinic2 removed", || async { node.netplan_file(2).is_none().then_some(()) }).await;
    execute(
        &mut conn,
        "INSERT INTO multi_interface (port_id, subnet_id, macaddress, attached_node_name, mtu) \
         VALUES ('p4', 's', 'fa:16:3e:00:30:04', 'node-c', 1450)",
    )
    .await;
    wait_file(&node, 1, "fa:16:3e:00:30:04").await;
    assert!(node.netplan_file(0).is_some());

    // A change committed right before mariadbd restarts, with the
    // controller running: the engine forgets the table's last write, the
    // controller reads the change all the same, and the next one too.
    execute(&mut conn, "UPDATE multi_interface SET mtu = 1280 WHERE port_id = 'p4'").await;
    drop(conn);
    db.restart().await;
    wait_file(&node, 1, "mtu: 1280").await;
    let mut conn = db.connection().await;
    execute(&mut conn, "UPDATE multi_interface SET mtu = 1290 WHERE port_id = 'p4'").await;
    wait_file(&node, 1, "mtu: 1290").await;
    assert!(node.netplan_file(0).unwrap().contains("mtu: 1300"), "the other interface is untouched");

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
        let node = controller.fleet.view().node(&name)?;
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
