//! Faults with the real controller binary: SIGKILL while pushing, SIGKILL of
//! the active replica, SIGTERM. Nothing is lost and nothing is done twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use multinic_testkit::fleet::TestAgent;
use multinic_testkit::mariadb::{MariaDb, execute};
use multinic_testkit::process::ControllerProcess;
use multinic_testkit::proxy::{Backend, ServiceProxy};
use multinic_testkit::{eventually, free_addr};
use sqlx::MySqlPool;

const WAIT: Duration = Duration::from_secs(60);
const BINARY: &str = env!("CARGO_BIN_EXE_multinic-controller");

async fn seed(pool: &MySqlPool, nodes: usize) {
    for n in 0..nodes {
        sqlx::query(
            "INSERT INTO multi_interface (port_id, subnet_id, macaddress, attached_node_name, address, cidr, mtu) \
             VALUES (?, 's', ?, ?, ?, '10.60.0.0/16', 1500)",
        )
        .bind(format!("p{n}"))
        .bind(format!("fa:16:3e:00:{:02x}:{:02x}", n / 256, n % 256))
        .bind(format!("node-{n}"))
        .bind(format!("10.60.{}.{}", n / 200, n % 200 + 1))
        .execute(pool)
        .await
        .unwrap();
    }
}

async fn pending(pool: &MySqlPool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM multi_interface WHERE deleted_at IS NULL AND netplan_success = 0")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn all_recorded(pool: &MySqlPool, what: &str) {
    eventually(WAIT, what, || async { (pending(pool).await == 0).then_some(()) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_pushing_then_restart_loses_nothing_and_repeats_nothing() {
    let Some(db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    const NODES: usize = 30;
    seed(&pool, NODES).await;
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("controller.log");
    let grpc = free_addr();
    // Every node's change at once, interrupted (waves: bench/tests/rollout.rs).
    let flags = ["--rollout-threshold", "0"];
    let mut controller = ControllerProcess::start(Path::new(BINARY), &db.url(), grpc, &log, &flags).await;
    controller.wait_ready().await;
    let mut agents = Vec::new();
    for n in 0..NODES {
        agents.push(TestAgent::start(&controller.url(), &format!("node-{n}")).await);
    }
    all_recorded(&pool, "first convergence").await;
    let writes: u64 = agents.iter().map(TestAgent::writes).sum();
    assert_eq!(writes, NODES as u64);

    // Change every node, and kill the controller while it is pushing.
    execute(&mut db.connection().await, "UPDATE multi_interface SET mtu = 9000, netplan_success = 0").await;
    eventually(WAIT, "some agent got the new MTU", || async {
        agents.iter().any(|a| a.netplan_file(0).is_some_and(|f| f.contains("mtu: 9000"))).then_some(())
    })
    .await;
    controller.kill().await;
    let killed = Instant::now();

    let mut restarted = ControllerProcess::start(Path::new(BINARY), &db.url(), grpc, &log, &flags).await;
    restarted.wait_ready().await;
    all_recorded(&pool, "every change recorded after the restart").await;
    eprintln!("recovered {NODES} nodes {:?} after SIGKILL", killed.elapsed());
    for (n, agent) in agents.iter().enumerate() {
        assert!(agent.netplan_file(0).unwrap().contains("mtu: 9000"), "node-{n}");
    }
    // Exactly one write per node for the change: agents that applied before
    // the kill were not pushed to again.
    let after: u64 = agents.iter().map(TestAgent::writes).sum();
    assert_eq!(after - writes, NODES as u64, "duplicate applies\n{}", restarted.log());

    // SIGTERM: agents are told to reconnect, the process exits 0 in time.
    let status = restarted.terminate(Duration::from_secs(15)).await.expect("exits within the deadline");
    assert!(status.success(), "{status:?}\n{}", restarted.log());
    assert!(restarted.log().contains("shutting down"), "{}", restarted.log());
    for agent in agents {
        agent.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_active_replica_hands_over_to_the_standby() {
    let Some(db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    const NODES: usize = 10;
    seed(&pool, NODES).await;
    let logs = tempfile::tempdir().unwrap();
    // The change below may land before the standby's first read: then it is
    // indistinguishable from a rollout the dead replica left unfinished and
    // waits stopped for an operator (bench/tests/rollout.rs). This test is
    // about the handover, so every change goes at once.
    let flags = ["--rollout-threshold", "0"];
    let mut a =
        ControllerProcess::start(Path::new(BINARY), &db.url(), free_addr(), &logs.path().join("a.log"), &flags).await;
    a.wait_ready().await;
    let b =
        ControllerProcess::start(Path::new(BINARY), &db.url(), free_addr(), &logs.path().join("b.log"), &flags).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!b.ready().await, "the second replica stands by");
    let proxy =
        ServiceProxy::start(vec![Backend { grpc: a.grpc, http: a.http }, Backend { grpc: b.grpc, http: b.http }]).await;
    let mut agents = Vec::new();
    for n in 0..NODES {
        agents.push(TestAgent::start(&proxy.url(), &format!("node-{n}")).await);
    }
    all_recorded(&pool, "first convergence").await;
    let writes: u64 = agents.iter().map(TestAgent::writes).sum();

    a.kill().await;
    let killed = Instant::now();
    b.wait_ready().await;
    let takeover = killed.elapsed();
    execute(&mut db.connection().await, "UPDATE multi_interface SET mtu = 1450, netplan_success = 0").await;
    all_recorded(&pool, "the standby converges the fleet").await;
    eprintln!("SIGKILL failover: standby ready after {takeover:?}, fleet converged after {:?}", killed.elapsed());
    let after: u64 = agents.iter().map(TestAgent::writes).sum();
    assert_eq!(after - writes, NODES as u64, "one write per node for the change, none for the takeover\n{}", b.log());
    for agent in agents {
        agent.stop().await;
    }
}

/// The predecessor exited when the database was not there at start-up. The
/// controller starts anyway, stays alive (liveness 200, readiness 503), and
/// becomes ready by itself when the database appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_while_the_database_is_down_and_becomes_ready_when_it_appears() {
    let Some(mut db) = MariaDb::start().await else { return };
    db.stop();
    let logs = tempfile::tempdir().unwrap();
    let controller =
        ControllerProcess::start(Path::new(BINARY), &db.url(), free_addr(), &logs.path().join("c.log"), &[]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        multinic_testkit::http_get_checked(controller.http, "/healthz").await,
        Some(200),
        "{}",
        controller.log()
    );
    assert_eq!(multinic_testkit::http_get_checked(controller.http, "/readyz").await, Some(503));
    db.restart().await;
    controller.wait_ready().await;
    assert!(controller.log().contains("cannot reach the database"), "{}", controller.log());
}
