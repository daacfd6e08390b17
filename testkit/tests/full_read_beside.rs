//! The periodic full read runs beside the poll ticks, on a private MariaDB.
//!
//! A change committed while it runs is read at the next tick (and reaches
//! the node) without waiting for it; its snapshot, landing later, undoes
//! nothing the ticks read since it began, and what only it can see (a
//! writer that keeps `modified_at`) still lands. A full read a tick needs
//! (a hard delete, a `multi_subnet` change) replaces the one in flight;
//! a reset (a failed read, leadership lost) and shutdown stop it; a failed
//! one changes nothing. At a million rows the full read takes seconds; here
//! the test holds it back instead ([`HeldReads`]: every statement is real),
//! so that each change falls exactly where the test means it to.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use multinic_controller::change::FullReason;
use multinic_controller::feed::{FeedRead, RowFeed};
use multinic_controller::row_copy::Touched;
use multinic_controller::store::InterfaceRow;
use multinic_testkit::eventually;
use multinic_testkit::feed::{HeldReads, Hold, next_tick, started_feed, until_quiet};
use multinic_testkit::fleet::{TestAgent, TestController};
use multinic_testkit::mariadb::{MariaDb, execute};
use multinic_testkit::rows::{NewRow, netplan_success, wait_netplan_success};

const POLL: Duration = Duration::from_millis(200);
const WAIT: Duration = Duration::from_secs(20);
/// The feeds here read the whole fleet every hour: only at [`due`] ticks.
const HOUR: Duration = Duration::from_secs(3600);

/// A tick's time at which the periodic full read is due.
fn due() -> Instant {
    Instant::now() + HOUR
}

fn row(feed: &RowFeed, id: i64) -> Option<&InterfaceRow> {
    feed.rows().unwrap().row(id)
}

fn names(touched: &Touched) -> Vec<&str> {
    touched.nodes.iter().map(|n| n.as_str()).collect()
}

/// A feed over a store of `db` whose full reads the test holds, after its
/// first read, once the tables are idle.
async fn idle_feed(db: &MariaDb) -> (Arc<HeldReads>, RowFeed) {
    let reads = HeldReads::connect(&db.url());
    let mut feed = started_feed(reads.clone(), HOUR).await;
    until_quiet(&mut feed).await;
    (reads, feed)
}

/// A tick at which the periodic full read is due: it starts beside the
/// tick, and is held as `hold` says.
async fn start_held(feed: &mut RowFeed, reads: &HeldReads, hold: Hold) {
    reads.hold(hold);
    feed.tick(due()).await.unwrap();
    assert!(feed.full_read_in_flight(), "due: started beside the tick");
    reads.until("the full read held", |s| s.waiting == 1).await;
}

/// Row `id`'s MTU once the tables are idle again.
async fn settled_mtu(feed: &mut RowFeed, id: i64) -> Option<i64> {
    until_quiet(feed).await;
    row(feed, id).unwrap().mtu
}

/// Waits for the full read in flight to land.
async fn landed(feed: &mut RowFeed) -> Touched {
    let read = tokio::time::timeout(WAIT, feed.landed()).await.expect("the full read landed").unwrap();
    match read {
        FeedRead::Full { reason: FullReason::Periodic, touched, first: false } => touched,
        other => panic!("expected the periodic full read, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_during_the_full_read_is_read_at_once_and_its_snapshot_undoes_nothing() {
    let Some(db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    let mut conn = db.connection().await;
    let a = NewRow::new("p1", "node-a", "fa:16:3e:00:50:01").insert(&pool).await;
    let b = NewRow::new("p2", "node-b", "fa:16:3e:00:50:02").insert(&pool).await;
    let (reads, mut feed) = idle_feed(&db).await;

    // A writer that keeps modified_at: only a full read sees it.
    execute(&mut conn, &format!("UPDATE multi_interface SET mtu = 9000, modified_at = modified_at WHERE id = {b}"))
        .await;
    start_held(&mut feed, &reads, Hold::AfterSnapshot).await;
    assert_eq!(row(&feed, b).unwrap().mtu, Some(1500), "not a change the ticks see");

    // Committed after the snapshot was taken: the next tick reads it.
    execute(&mut conn, &format!("UPDATE multi_interface SET mtu = 1400, netplan_success = 0 WHERE id = {a}")).await;
    let read = next_tick(&mut feed, "a change during the full read").await;
    let FeedRead::Changed { touched, .. } = read else { panic!("expected a changed read, got {read:?}") };
    assert_eq!(names(&touched), vec!["node-a"]);
    assert_eq!(row(&feed, a).unwrap().mtu, Some(1400));
    assert!(feed.full_read_in_flight(), "read while the full read is still running");
    assert_eq!(reads.state().returned, 1, "only the first full read has returned");

    // The snapshot lands: row b as only it saw it, row a as the tick read it.
    reads.release();
    assert_eq!(names(&landed(&mut feed).await), vec!["node-b"]);
    assert!(!feed.full_read_in_flight());
    assert_eq!(row(&feed, a).unwrap().mtu, Some(1400), "not undone by the older snapshot");
    assert_eq!(row(&feed, b).unwrap().mtu, Some(9000));
    assert_eq!(settled_mtu(&mut feed, a).await, Some(1400));
}

/// The other order: the tick reads a change, then a newer one is committed
/// before the full read takes its snapshot. The row keeps what the tick
/// read when the snapshot lands, and the next tick reads the newer one: no
/// row ends older than the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_newer_than_the_ticks_read_is_not_lost() {
    let Some(db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    let mut conn = db.connection().await;
    let a = NewRow::new("p1", "node-a", "fa:16:3e:00:51:01").insert(&pool).await;
    let (reads, mut feed) = idle_feed(&db).await;

    start_held(&mut feed, &reads, Hold::BeforeSnapshot).await;
    execute(&mut conn, &format!("UPDATE multi_interface SET mtu = 1400 WHERE id = {a}")).await;
    next_tick(&mut feed, "the first change").await;
    assert_eq!(row(&feed, a).unwrap().mtu, Some(1400));
    execute(&mut conn, &format!("UPDATE multi_interface SET mtu = 1300 WHERE id = {a}")).await;
    reads.release();
    assert!(landed(&mut feed).await.is_empty(), "the row the tick read keeps its state");
    next_tick(&mut feed, "the second change").await;
    assert_eq!(row(&feed, a).unwrap().mtu, Some(1300));
    assert_eq!(settled_mtu(&mut feed, a).await, Some(1300));
}

/// A hard delete or a `multi_subnet` change found while the periodic full
/// read runs is read with a full read at once (the tick's own, newer than
/// the one in flight, which is stopped); a reset stops it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_read_the_tick_needs_replaces_the_one_in_flight_and_a_reset_stops_it() {
    let Some(db) = MariaDb::start().await else { return };
    let mut conn = db.connection().await;
    execute(&mut conn, "INSERT INTO multi_subnet (subnet_id, cidr) VALUES ('sub-1', '10.5.0.0/16')").await;
    execute(
        &mut conn,
        "INSERT INTO multi_interface (port_id, subnet_id, macaddress, attached_node_name, address) VALUES \
         ('p1', 'sub-1', 'fa:16:3e:00:52:01', 'node-a', '10.5.0.7'), \
         ('p2', 'sub-1', 'fa:16:3e:00:52:02', 'node-b', '10.5.0.8')",
    )
    .await;
    let ids: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM multi_interface ORDER BY id").fetch_all(&mut conn).await.unwrap();
    let (a, b) = (ids[0], ids[1]);
    let (reads, mut feed) = idle_feed(&db).await;

    // Hard delete.
    start_held(&mut feed, &reads, Hold::AfterSnapshot).await;
    execute(&mut conn, &format!("DELETE FROM multi_interface WHERE id = {b}")).await;
    let read = next_tick(&mut feed, "hard delete").await;
    assert!(matches!(read, FeedRead::Full { reason: FullReason::Mismatch, .. }), "{read:?}");
    assert!(row(&feed, b).is_none());
    assert!(!feed.full_read_in_flight());
    reads.until("the held full read stopped", |s| s.dropped == 1 && s.waiting == 0).await;

    // A multi_subnet cidr change.
    start_held(&mut feed, &reads, Hold::AfterSnapshot).await;
    execute(&mut conn, "UPDATE multi_subnet SET cidr = '10.5.0.0/24' WHERE subnet_id = 'sub-1'").await;
    let read = next_tick(&mut feed, "multi_subnet").await;
    assert!(matches!(read, FeedRead::Full { reason: FullReason::Subnets, .. }), "{read:?}");
    assert_eq!(row(&feed, a).unwrap().subnet_cidr.as_deref(), Some("10.5.0.0/24"));
    reads.until("the held full read stopped", |s| s.dropped == 2 && s.waiting == 0).await;

    // A reset (a failed read, the controller lock lost) stops it too.
    start_held(&mut feed, &reads, Hold::AfterSnapshot).await;
    feed.reset();
    assert!(!feed.full_read_in_flight());
    reads.until("the held full read stopped", |s| s.dropped == 3 && s.waiting == 0).await;
    let read = next_tick(&mut feed, "after the reset").await;
    assert!(matches!(read, FeedRead::Full { reason: FullReason::Start, first: false, .. }), "{read:?}");
}

/// A full read that fails (the database went away while it ran) changes
/// nothing in the copy and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_full_read_changes_nothing() {
    let Some(mut db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    let a = NewRow::new("p1", "node-a", "fa:16:3e:00:53:01").insert(&pool).await;
    drop(pool);
    let (reads, mut feed) = idle_feed(&db).await;
    start_held(&mut feed, &reads, Hold::BeforeSnapshot).await;
    db.stop();
    reads.release();
    let landed = tokio::time::timeout(WAIT, feed.landed()).await.expect("the full read ended");
    let error = landed.unwrap_err().to_string();
    assert!(error.contains("database"), "{error}");
    assert!(!feed.full_read_in_flight());
    assert_eq!(feed.rows().unwrap().len(), 1);
    assert_eq!(row(&feed, a).unwrap().mtu, Some(1500));
}

/// The whole controller and an agent: a change committed while the full
/// read runs reaches the node and its row reads 1 before that read ends;
/// when it lands the node's file is not touched again. Shutdown does not
/// wait for a full read in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reaches_the_node_while_the_full_read_runs_and_stays() {
    let Some(db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    let a = NewRow::new("p1", "node-a", "fa:16:3e:00:54:01").insert(&pool).await;
    NewRow::new("p2", "node-b", "fa:16:3e:00:54:02").insert(&pool).await;
    let reads = HeldReads::connect(&db.url());
    let store = reads.clone();
    let controller = TestController::start_adjusted(&db.url(), POLL, |config| {
        config.store = store;
        config.full_read_interval = Duration::from_secs(1);
    })
    .await;
    let node = TestAgent::start(&controller.url(), "node-a").await;
    wait_netplan_success(&pool, a, 1).await;

    reads.hold(Hold::AfterSnapshot);
    reads.until("a periodic full read's snapshot", |s| s.waiting == 1).await;
    let writes = node.writes();
    execute(
        &mut db.connection().await,
        &format!("UPDATE multi_interface SET mtu = 1400, netplan_success = 0 WHERE id = {a}"),
    )
    .await;
    eventually(WAIT, "multinic0 with MTU 1400", || async {
        node.netplan_file(0).filter(|f| f.contains("mtu: 1400")).map(|_| ())
    })
    .await;
    wait_netplan_success(&pool, a, 1).await;
    assert_eq!(reads.state().waiting, 1, "published and recorded while the full read still runs");

    let returned = reads.state().returned;
    reads.release();
    reads.until("the held full read landed", |s| s.returned > returned).await;
    // Later full reads land too (one a second).
    reads.until("two more full reads", |s| s.returned > returned + 2).await;
    tokio::time::sleep(POLL * 5).await;
    assert!(node.netplan_file(0).unwrap().contains("mtu: 1400"));
    assert_eq!(node.writes() - writes, 1, "the change written once, never undone");
    assert_eq!(netplan_success(&pool, a).await, 1);

    reads.hold(Hold::AfterSnapshot);
    reads.until("a periodic full read's snapshot", |s| s.waiting == 1).await;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(30), controller.stop()).await.expect("shutdown waited for the full read");
    eprintln!("shutdown with a full read in flight took {:?}", started.elapsed());
    reads.until("the held full read stopped", |s| s.dropped == 1).await;
    node.stop().await;
}
