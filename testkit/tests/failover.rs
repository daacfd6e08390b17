//! Two controller replicas on one database: exactly one is active (a MariaDB
//! named lock), the other is not ready; when the active one goes, the other
//! takes over and the agents follow through the "Service".
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use multinic_testkit::fleet::{TestAgent, TestController};
use multinic_testkit::mariadb::MariaDb;
use multinic_testkit::proxy::{Backend, ServiceProxy};
use multinic_testkit::rows::NewRow;
use multinic_testkit::{eventually, http_get};
use sqlx::MySqlPool;

const WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);

async fn pending_rows(pool: &MySqlPool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM multi_interface WHERE deleted_at IS NULL AND netplan_success = 0")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn ready(c: &TestController) -> bool {
    http_get(c.http, "/readyz").await.0 == 200
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_is_active_and_the_other_takes_over() {
    let Some(db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    for n in 0..3 {
        NewRow::new(&format!("p{n}"), &format!("node-{n}"), &format!("fa:16:3e:00:20:{n:02x}")).insert(&pool).await;
    }
    let first = TestController::start(&db.url(), POLL).await;
    eventually(WAIT, "the first replica is ready", || async { ready(&first).await.then_some(()) }).await;
    let second = TestController::start(&db.url(), POLL).await;
    tokio::time::sleep(POLL * 5).await;
    assert!(ready(&first).await);
    assert!(!ready(&second).await, "a second replica stands by");
    let (code, body) = http_get(second.http, "/readyz").await;
    assert_eq!(code, 503);
    assert!(body.contains("standby"), "{body}");
    assert!(second.fleet.view().node_names().is_empty(), "the standby reads nothing");

    let proxy = ServiceProxy::start(vec![
        Backend { grpc: first.grpc, http: first.http },
        Backend { grpc: second.grpc, http: second.http },
    ])
    .await;
    let mut agents = Vec::new();
    for n in 0..3 {
        agents.push(TestAgent::start(&proxy.url(), &format!("node-{n}")).await);
    }
    eventually(WAIT, "every row recorded by the active replica", || async {
        (pending_rows(&pool).await == 0).then_some(())
    })
    .await;
    assert_eq!(first.fleet.view().counts().connected, 3);

    // The active replica goes away; the standby takes over and the agents
    // reconnect to it through the Service.
    let writes: u64 = agents.iter().map(TestAgent::writes).sum();
    let gone = Instant::now();
    first.stop().await;
    eventually(WAIT, "the second replica is ready", || async { ready(&second).await.then_some(()) }).await;
    let takeover = gone.elapsed();
    eventually(WAIT, "all agents on the second replica", || async {
        (second.fleet.view().counts().connected == 3).then_some(())
    })
    .await;
    let reconnected = gone.elapsed();
    eprintln!("failover: standby ready after {takeover:?}, all agents reconnected after {reconnected:?}");

    // It carries on: a change made now converges through the new replica,
    // and the reconnects themselves changed no file.
    assert_eq!(agents.iter().map(TestAgent::writes).sum::<u64>(), writes, "reconnecting rewrote files");
    sqlx::query("UPDATE multi_interface SET mtu = 9000, netplan_success = 0 WHERE port_id = 'p1'")
        .execute(&pool)
        .await
        .unwrap();
    eventually(WAIT, "node-1 gets the new MTU", || async {
        agents[1].netplan_file(0).filter(|f| f.contains("mtu: 9000")).map(|_| ())
    })
    .await;
    eventually(WAIT, "the change is recorded", || async { (pending_rows(&pool).await == 0).then_some(()) }).await;
    second.stop().await;
    for agent in agents {
        agent.stop().await;
    }
}
