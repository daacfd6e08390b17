//! The mass-deletion guard with a real database and real agents: a read that
//! would remove most interfaces at once is held (files stay), everything else
//! goes on, and only an operator's confirmation of that exact set, or the
//! rows coming back, ends it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use multinic_controller::guard::GuardConfig;
use multinic_proto::v1::fleet_service_client::FleetServiceClient;
use multinic_proto::v1::{ConfirmRemovalsRequest, GetSummaryRequest};
use multinic_testkit::fleet::{TestAgent, TestController};
use multinic_testkit::mariadb::{MariaDb, execute};
use multinic_testkit::rows::NewRow;
use multinic_testkit::{eventually, http_get};
use sqlx::MySqlPool;

const WAIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(150);

fn guard() -> GuardConfig {
    GuardConfig { max_share: 0.5, min_removals: 3, warmup: Duration::ZERO }
}

async fn seed(pool: &MySqlPool) {
    for node in 0..4 {
        for i in 0..2 {
            NewRow::new(&format!("p{node}{i}"), &format!("node-{node}"), &format!("fa:16:3e:00:3{node}:0{i}"))
                .insert(pool)
                .await;
        }
    }
}

async fn files(agents: &[TestAgent]) -> usize {
    agents.iter().map(|a| (0..10).filter(|i| a.netplan_file(*i).is_some()).count()).sum()
}

async fn converge(pool: &MySqlPool) {
    eventually(WAIT, "every row applied", || async {
        let pending: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM multi_interface WHERE deleted_at IS NULL AND netplan_success = 0")
                .fetch_one(pool)
                .await
                .unwrap();
        (pending == 0).then_some(())
    })
    .await;
}

async fn start_fleet(db: &MariaDb) -> (TestController, Vec<TestAgent>) {
    let controller = TestController::start_guarded(&db.url(), POLL, "127.0.0.1:0".parse().unwrap(), guard()).await;
    let mut agents = Vec::new();
    for node in 0..4 {
        agents.push(TestAgent::start(&controller.url(), &format!("node-{node}")).await);
    }
    (controller, agents)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mass_removal_is_held_until_confirmed_and_nothing_else_waits() {
    let Some(db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    seed(&pool).await;
    let (controller, agents) = start_fleet(&db).await;
    converge(&pool).await;
    assert_eq!(files(&agents).await, 8);

    // Six of eight interfaces vanish in one read (75% > 50%): held.
    execute(
        &mut db.connection().await,
        "UPDATE multi_interface SET deleted_at = NOW() WHERE port_id NOT IN ('p00', 'p30')",
    )
    .await;
    let mut client = FleetServiceClient::connect(controller.url()).await.unwrap();
    let summary = eventually(WAIT, "the guard holds six removals", || {
        let mut client = client.clone();
        async move {
            let s = client.get_summary(GetSummaryRequest {}).await.unwrap().into_inner();
            (s.removals_held == 6).then_some(s)
        }
    })
    .await;
    assert!(summary.removal_guard.contains("6 of 8"), "{}", summary.removal_guard);
    let (_, metrics) = http_get(controller.http, "/metrics").await;
    assert!(metrics.contains("multinic_controller_removals_held 6"), "{metrics}");

    // Everything else still flows: a change to a kept row is applied.
    execute(&mut db.connection().await, "UPDATE multi_interface SET mtu = 9000 WHERE port_id = 'p30'").await;
    eventually(WAIT, "node-3 gets mtu 9000 during the hold", || async {
        agents[3].netplan_file(0).filter(|f| f.contains("mtu: 9000")).map(|_| ())
    })
    .await;
    tokio::time::sleep(POLL * 4).await;
    assert_eq!(files(&agents).await, 8, "held removals leave the files in place");

    // A wrong or stale token releases nothing.
    let err = client.confirm_removals(ConfirmRemovalsRequest { token: "000000000000".into() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Aborted);
    assert!(err.message().contains(&summary.removal_guard_token), "{}", err.message());
    assert_eq!(files(&agents).await, 8);

    // The exact token: the removals go.
    let released = client
        .confirm_removals(ConfirmRemovalsRequest { token: summary.removal_guard_token.clone() })
        .await
        .unwrap()
        .into_inner()
        .released;
    assert_eq!(released, 6);
    eventually(WAIT, "six files removed", || async { (files(&agents).await == 2).then_some(()) }).await;
    let after = client.get_summary(GetSummaryRequest {}).await.unwrap().into_inner();
    assert_eq!(after.removals_held, 0);
    let err = client.confirm_removals(ConfirmRemovalsRequest { token: summary.removal_guard_token }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "nothing is held any more");

    controller.stop().await;
    for agent in agents {
        agent.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_mass_removal_clears_when_the_rows_come_back() {
    let Some(db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    seed(&pool).await;
    let (controller, agents) = start_fleet(&db).await;
    converge(&pool).await;
    let writes: u64 = agents.iter().map(TestAgent::writes).sum();

    execute(&mut db.connection().await, "UPDATE multi_interface SET deleted_at = NOW()").await;
    eventually(WAIT, "the guard holds", || async {
        (controller.fleet.guard().status().removals_held == 8).then_some(())
    })
    .await;
    execute(&mut db.connection().await, "UPDATE multi_interface SET deleted_at = NULL").await;
    eventually(WAIT, "the guard clears", || async {
        (controller.fleet.guard().status().removals_held == 0).then_some(())
    })
    .await;
    tokio::time::sleep(POLL * 4).await;
    assert_eq!(files(&agents).await, 8);
    assert_eq!(agents.iter().map(TestAgent::writes).sum::<u64>(), writes, "nothing was rewritten");

    // Small removals are never held.
    execute(&mut db.connection().await, "UPDATE multi_interface SET deleted_at = NOW() WHERE port_id = 'p11'").await;
    eventually(WAIT, "node-1's second file removed", || async { (files(&agents).await == 7).then_some(()) }).await;
    controller.stop().await;
    for agent in agents {
        agent.stop().await;
    }
}

/// A controller restarted onto an emptied table knows nothing to compare
/// with; it holds removals while agents report what they have, and then the
/// guard sees the mass removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_onto_an_empty_table_removes_nothing() {
    let Some(db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    seed(&pool).await;
    let (controller, agents) = start_fleet(&db).await;
    converge(&pool).await;
    let grpc = controller.grpc;
    controller.stop().await;

    execute(&mut db.connection().await, "DELETE FROM multi_interface").await;
    let warm = GuardConfig { warmup: Duration::from_secs(2), ..guard() };
    let again = TestController::start_guarded(&db.url(), POLL, grpc, warm).await;
    eventually(WAIT, "all agents back", || async { (again.fleet.view().counts().connected == 4).then_some(()) }).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = again.fleet.guard().status();
    assert_eq!(status.removals_held, 8, "{status:?}");
    assert!(status.reason.unwrap().contains("8 of 8"));
    assert_eq!(files(&agents).await, 8, "nothing removed");
    again.stop().await;
    for agent in agents {
        agent.stop().await;
    }
}
