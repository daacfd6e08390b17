//! The whole pipeline with real parts: a private MariaDB, the controller, and
//! agents over gRPC on loopback sockets, checked on rendered files and rows.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use multinic_controller::fleet::Convergence;
use multinic_proto::{ErrorCode, NodeName};
use multinic_testkit::certs::TestPki;
use multinic_testkit::fleet::{TestAgent, TestController};
use multinic_testkit::mariadb::{MariaDb, execute};
use multinic_testkit::rows::{NewRow, netplan_success};
use multinic_testkit::{eventually, netplan_generate, require_netplan};
use sqlx::MySqlPool;

const POLL: Duration = Duration::from_millis(200);
const WAIT: Duration = Duration::from_secs(15);

async fn wait_success(pool: &MySqlPool, id: i64, want: i64) {
    eventually(WAIT, &format!("row {id} netplan_success = {want}"), || async move {
        (netplan_success(pool, id).await == want).then_some(())
    })
    .await;
}

async fn wait_file(agent: &TestAgent, index: u8, needle: &str) -> String {
    eventually(WAIT, &format!("multinic{index} file containing {needle:?}"), || async move {
        agent.netplan_file(index).filter(|f| f.contains(needle))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_become_files_and_outcomes_become_rows() {
    let Some(db) = MariaDb::start().await else { return };
    let check_netplan = require_netplan();
    let pool = db.pool().await;
    let a1 = NewRow::new("p1", "node-a.novalocal", "FA:16:3E:00:0A:01")
        .address(Some("192.168.10.5"), Some("192.168.10.0/24"))
        .insert(&pool)
        .await;
    let a2 = NewRow::new("p2", "node-a", "fa:16:3e:00:0a:02").mtu(9000).insert(&pool).await;
    let b1 = NewRow::new("p3", "node-b", "fa:16:3e:00:0b:01")
        .address(Some("10.20.0.7"), Some("10.20.0.0/16"))
        .mtu(1450)
        .insert(&pool)
        .await;

    // Over mTLS, as in production (the other tests here run plaintext).
    let pki = TestPki::new();
    let controller = TestController::start_tls(&db.url(), POLL, &pki).await;
    let node_a = TestAgent::start_tls(&controller.url(), "node-a", pki.agent_tls("node-a")).await;
    let node_b = TestAgent::start_tls(&controller.url(), "node-b", pki.agent_tls("node-b")).await;

    // Rows for two nodes: files appear and every row reads 1.
    for id in [a1, a2, b1] {
        wait_success(&pool, id, 1).await;
    }
    let file = node_a.netplan_file(0).expect("multinic0 on node-a");
    assert!(file.contains("macaddress: \"fa:16:3e:00:0a:01\"") && file.contains("\"192.168.10.5/24\""), "{file}");
    assert!(node_a.netplan_file(1).unwrap().contains("mtu: 9000"));
    assert!(node_b.netplan_file(0).unwrap().contains("\"10.20.0.7/16\""));
    assert!(node_b.netplan_file(1).is_none());
    if check_netplan {
        netplan_generate(node_a.root()).unwrap();
        netplan_generate(node_b.root()).unwrap();
    }

    // A changed MTU and address: rewritten, and the row returns to 1.
    execute(
        &mut db.connection().await,
        &format!("UPDATE multi_interface SET mtu = 1400, netplan_success = 0 WHERE id = {a1}"),
    )
    .await;
    wait_file(&node_a, 0, "mtu: 1400").await;
    wait_success(&pool, a1, 1).await;
    execute(
        &mut db.connection().await,
        &format!("UPDATE multi_interface SET address = '192.168.10.9', netplan_success = 0 WHERE id = {a1}"),
    )
    .await;
    wait_file(&node_a, 0, "192.168.10.9/24").await;
    wait_success(&pool, a1, 1).await;
    if check_netplan {
        netplan_generate(node_a.root()).unwrap();
    }

    // Deleted (soft): the file goes; the other interface keeps its name.
    execute(&mut db.connection().await, &format!("UPDATE multi_interface SET deleted_at = NOW() WHERE id = {a2}"))
        .await;
    eventually(WAIT, "multinic1 removed on node-a", || async { node_a.netplan_file(1).is_none().then_some(()) }).await;
    assert!(node_a.netplan_file(0).is_some());

    // Delete and re-insert with a new id and identical content: 1, no write.
    let writes = node_b.writes();
    execute(&mut db.connection().await, &format!("UPDATE multi_interface SET deleted_at = NOW() WHERE id = {b1}"))
        .await;
    let b1_new = NewRow::new("p3-new", "node-b", "fa:16:3e:00:0b:01")
        .address(Some("10.20.0.7"), Some("10.20.0.0/16"))
        .mtu(1450)
        .insert(&pool)
        .await;
    // The delete and the insert may land in different polls; either way the
    // new row must be marked without the node's file being rewritten.
    wait_success(&pool, b1_new, 1).await;
    let file_b = node_b.netplan_file(0);
    assert!(file_b.is_some(), "file of a re-inserted row is present");
    // If the two writes straddled a poll, the file was removed and written
    // back; otherwise nothing was written at all.
    let rewritten = node_b.writes() - writes;
    assert!(rewritten <= 1, "re-insert rewrote {rewritten} files");

    controller.stop().await;
    node_a.stop().await;
    node_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinsert_in_one_transaction_writes_nothing() {
    let Some(db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    let id = NewRow::new("p1", "node-r", "fa:16:3e:00:0c:01")
        .address(Some("10.1.0.5"), Some("10.1.0.0/24"))
        .insert(&pool)
        .await;
    let controller = TestController::start(&db.url(), POLL).await;
    let node = TestAgent::start(&controller.url(), "node-r").await;
    wait_success(&pool, id, 1).await;
    let writes = node.writes();
    assert_eq!(writes, 1);

    let mut conn = db.connection().await;
    execute(
        &mut conn,
        &format!(
            "START TRANSACTION; UPDATE multi_interface SET deleted_at = NOW() WHERE id = {id}; \
             INSERT INTO multi_interface (port_id, subnet_id, macaddress, attached_node_name, address, cidr, mtu) \
             VALUES ('p1-again', 'subnet-1', 'fa:16:3e:00:0c:01', 'node-r', '10.1.0.5', '10.1.0.0/24', 1500); COMMIT"
        ),
    )
    .await;
    let new_id: i64 = sqlx::query_scalar("SELECT MAX(id) FROM multi_interface").fetch_one(&pool).await.unwrap();
    assert_ne!(new_id, id);
    wait_success(&pool, new_id, 1).await;
    assert_eq!(node.writes(), writes, "identical content re-inserted: nothing written");
    controller.stop().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_rows_stay_zero_with_a_reason_and_hurt_nobody() {
    let Some(db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    let good = NewRow::new("g", "node-x", "fa:16:3e:00:0d:01")
        .address(Some("10.9.0.5"), Some("10.9.0.0/24"))
        .insert(&pool)
        .await;
    let bad_mac = NewRow::new("b1", "node-x", "fa-16-3e-00-0d-02").insert(&pool).await;
    let mtu_zero = NewRow::new("b2", "node-x", "fa:16:3e:00:0d:03").mtu(0).insert(&pool).await;
    let no_cidr = NewRow::new("b3", "node-x", "fa:16:3e:00:0d:04").address(Some("10.9.0.6"), None).insert(&pool).await;
    let no_node = NewRow::new("b4", "", "fa:16:3e:00:0d:05").insert(&pool).await;

    let pki = TestPki::new();
    let controller = TestController::start_tls(&db.url(), POLL, &pki).await;
    let node = TestAgent::start_tls(&controller.url(), "node-x", pki.agent_tls("node-x")).await;
    wait_success(&pool, good, 1).await;
    let name: NodeName = "node-x".parse().unwrap();
    let snapshot = eventually(WAIT, "node-x converged", || async {
        controller.fleet.view().node(&name).filter(|n| n.convergence == Convergence::Converged)
    })
    .await;
    let problems: Vec<(i64, ErrorCode, String)> =
        snapshot.desired.problems.iter().map(|p| (p.row_id, p.code, p.message.clone())).collect();
    assert_eq!(problems.iter().map(|p| p.0).collect::<Vec<_>>(), vec![bad_mac, mtu_zero, no_cidr], "{problems:?}");
    assert!(problems[0].2.contains("dashes"), "{problems:?}");
    assert!(problems[1].2.contains("MTU 0"), "{problems:?}");
    assert!(problems[2].2.contains("no cidr"), "{problems:?}");
    let unattached = controller.fleet.view().unattached();
    assert_eq!(unattached.iter().map(|p| p.row_id).collect::<Vec<_>>(), vec![no_node]);
    for id in [bad_mac, mtu_zero, no_cidr, no_node] {
        assert_eq!(netplan_success(&pool, id).await, 0, "row {id}");
    }
    assert!(node.netplan_file(0).is_some());
    assert!(node.netplan_file(1).is_none(), "invalid rows render nothing");
    controller.stop().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_deletes_nothing_and_heals_itself() {
    let Some(mut db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    let id = NewRow::new("p1", "node-d", "fa:16:3e:00:0e:01")
        .address(Some("10.3.0.5"), Some("10.3.0.0/24"))
        .insert(&pool)
        .await;
    let controller = TestController::start(&db.url(), POLL).await;
    let node = TestAgent::start(&controller.url(), "node-d").await;
    wait_success(&pool, id, 1).await;
    drop(pool);
    let writes = node.writes();

    db.stop();
    eventually(WAIT, "controller reports the database down", || async {
        (!controller.fleet.db().status().up).then_some(())
    })
    .await;
    let readyz = http_status(controller.http, "/readyz").await;
    assert_eq!(readyz, 503);
    assert_eq!(http_status(controller.http, "/healthz").await, 200, "liveness never follows the database");
    tokio::time::sleep(POLL * 5).await;
    assert!(node.netplan_file(0).is_some(), "nothing is deleted while the database is down");
    assert_eq!(node.writes(), writes);
    let status = controller.fleet.db().status();
    let error = status.error.unwrap_or_default();
    assert!(error.contains("database"), "{error}");

    db.restart().await;
    eventually(WAIT, "controller reports the database up", || async {
        controller.fleet.db().status().up.then_some(())
    })
    .await;
    assert_eq!(http_status(controller.http, "/readyz").await, 200);
    let pool = db.pool().await;
    execute(
        &mut db.connection().await,
        &format!("UPDATE multi_interface SET mtu = 1300, netplan_success = 0 WHERE id = {id}"),
    )
    .await;
    wait_file(&node, 0, "mtu: 1300").await;
    wait_success(&pool, id, 1).await;
    controller.stop().await;
    node.stop().await;
}

/// An idle poll costs a constant number of statements, bytes and rows
/// read per tick, whatever the number of nodes and however many rows the
/// table has ever held: the controller probes the newest id and the
/// tables' metadata, and reads rows only when they changed. MariaDB's own
/// per-user statistics count them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_per_poll_do_not_grow_with_the_fleet_or_its_history() {
    let Some(db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    execute(&mut db.root().await, "SET GLOBAL userstat = 1").await;
    let mut per_tick = Vec::new();
    for (nodes, history) in [(2usize, 0), (60, 20_000)] {
        execute(&mut db.connection().await, "DELETE FROM multi_interface").await;
        // Soft-deleted rows of other nodes: the table's history.
        execute(
            &mut db.connection().await,
            &format!(
                "INSERT INTO multi_interface (port_id, subnet_id, macaddress, attached_node_name, deleted_at) \
                 SELECT CONCAT('old-', seq), 's', '02:00:00:00:00:01', CONCAT('gone-', seq), NOW() \
                 FROM seq_1_to_{history} WHERE {history} > 0"
            ),
        )
        .await;
        for n in 0..nodes {
            NewRow::new(&format!("p{nodes}-{n}"), &format!("node-{n}"), &format!("fa:16:3e:00:{:02x}:01", n))
                .insert(&pool)
                .await;
        }
        let controller = TestController::start(&db.url(), Duration::from_millis(100)).await;
        // Let the first poll (the whole fleet) pass, and the last write
        // become old enough for "unchanged" to be trusted.
        eventually(WAIT, "first poll", || async { controller.fleet.db().status().synced.then_some(()) }).await;
        tokio::time::sleep(Duration::from_secs(multinic_controller::change::RECENT as u64 + 2)).await;
        let before = user_stats(&db).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = user_stats(&db).await;
        controller.stop().await;
        let per = |i: usize| (after[i] - before[i]) as f64 / 20.0;
        per_tick.push((per(0), per(1), per(2)));
    }
    eprintln!("per idle tick (statements, bytes sent, rows read) at 2 and 60 nodes: {per_tick:?}");
    // 20 ticks of 100 ms in 2 s: two statements per tick (the controller-lock
    // check and the probe), the same bytes, and a handful of rows read,
    // whatever the fleet and its history.
    for (nodes, (statements, bytes, rows)) in [2, 60].iter().zip(&per_tick) {
        assert!((1.6..=2.3).contains(statements), "{nodes} nodes: {statements} statements per tick");
        assert!(*bytes < 1000.0, "{nodes} nodes: {bytes} bytes sent per tick");
        assert!(*rows <= 10.0, "{nodes} nodes: {rows} rows read per tick");
    }
    assert!((per_tick[0].0 - per_tick[1].0).abs() <= 0.3, "{per_tick:?}");
    assert!((per_tick[0].1 - per_tick[1].1).abs() <= 40.0, "bytes per tick grew with the fleet: {per_tick:?}");
    assert!((per_tick[0].2 - per_tick[1].2).abs() <= 2.0, "rows read per tick grew with the table: {per_tick:?}");
}

/// The controller user's statements (SELECT, UPDATE and the rest), bytes
/// sent and rows read.
async fn user_stats(db: &MariaDb) -> [i64; 3] {
    let mut conn = db.root().await;
    let row: Option<(i64, i64, i64)> = sqlx::query_as(
        "SELECT CAST(SELECT_COMMANDS + UPDATE_COMMANDS + OTHER_COMMANDS AS SIGNED), CAST(BYTES_SENT AS SIGNED), \
                CAST(ROWS_READ AS SIGNED) \
         FROM information_schema.USER_STATISTICS WHERE USER = 'multinic'",
    )
    .fetch_optional(&mut conn)
    .await
    .unwrap();
    let (statements, bytes, rows) = row.unwrap_or_default();
    [statements, bytes, rows]
}

async fn http_status(addr: std::net::SocketAddr, path: &str) -> u16 {
    multinic_testkit::http_get(addr, path).await.0
}
