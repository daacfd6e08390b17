//! Metrics and health endpoints of both binaries, scraped over HTTP and
//! parsed with a Prometheus text parser: each metric moves when its event
//! happens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use multinic_controller::fleet::Convergence;
use multinic_proto::NodeName;
use multinic_testkit::fleet::{TestAgent, TestController};
use multinic_testkit::mariadb::{MariaDb, execute};
use multinic_testkit::scrape::{Metrics, WAIT, wait_metric};
use multinic_testkit::{eventually, free_addr, http_get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_moves_with_its_event() {
    let Some(mut db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    execute(
        &mut db.connection().await,
        "INSERT INTO multi_interface (port_id, subnet_id, macaddress, attached_node_name, address, cidr, mtu) VALUES \
         ('p1', 's', 'fa:16:3e:00:0f:01', 'node-m', '10.5.0.5', '10.5.0.0/24', 1500), \
         ('p2', 's', 'fa:16:3e:00:0f:02', 'node-m', NULL, NULL, 0)",
    )
    .await;
    let controller = TestController::start(&db.url(), Duration::from_millis(200)).await;
    let c = controller.http;
    let m = Metrics::scrape(c).await;
    for name in [
        "multinic_controller_agents_connected",
        "multinic_controller_db_up",
        "multinic_controller_pushes_total",
        "multinic_controller_db_poll_errors_total",
    ] {
        assert!(m.has(name), "{name} missing");
    }
    assert_eq!(m.get("multinic_controller_agents_connected", &[]), 0.0);

    // An agent connects: connected agents, pushes, reports, rows, latency move.
    let agent_http = free_addr();
    let root = tempfile::tempdir().unwrap();
    let agent =
        TestAgent::start_adjusted(root, &controller.url(), "node-m", |c| c.http_listen = Some(agent_http)).await;
    let name: NodeName = "node-m".parse().unwrap();
    eventually(WAIT, "node-m converged", || async {
        controller.fleet.view().node(&name).filter(|n| n.convergence == Convergence::Converged).map(|_| ())
    })
    .await;
    wait_metric(c, "multinic_controller_agents_connected", &[], |v| v == 1.0).await;
    wait_metric(c, "multinic_controller_rows_recorded_total", &[("value", "1")], |v| v >= 1.0).await;
    let m = Metrics::scrape(c).await;
    assert_eq!(m.get("multinic_controller_nodes", &[("state", "converged")]), 1.0);
    assert!(m.get("multinic_controller_pushes_total", &[]) >= 1.0);
    assert!(m.get("multinic_controller_reports_total", &[("outcome", "applied")]) >= 1.0);
    assert!(m.get("multinic_controller_db_poll_duration_seconds", &[]) >= 1.0);
    assert_eq!(m.get("multinic_controller_invalid_rows", &[]), 1.0, "the MTU 0 row");
    let latency_before = m.get("multinic_controller_convergence_seconds", &[]);
    let pushes_before = m.get("multinic_controller_pushes_total", &[]);
    let changes_before = m.get("multinic_controller_desired_changes_total", &[]);
    assert!(latency_before >= 1.0);

    let a = Metrics::scrape(agent_http).await;
    assert_eq!(a.get("multinic_agent_connected", &[]), 1.0);
    assert!(a.get("multinic_agent_applies_total", &[("outcome", "applied")]) >= 1.0);
    assert!(a.get("multinic_agent_apply_duration_seconds", &[]) >= 1.0);
    assert_eq!(a.get("multinic_agent_interfaces", &[("state", "applied")]), 1.0);
    assert_eq!(a.get("multinic_agent_file_changes_total", &[]), 1.0);
    assert_eq!(a.get("multinic_agent_reconnects_total", &[]), 0.0);
    let (code, body) = http_get(agent_http, "/").await;
    assert_eq!(code, 200);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["database_connected"], true);
    assert_eq!(health["processed_vms"], 1);
    assert!(health["last_sync"].as_u64().is_some() && health["uptime"].as_str().is_some());

    // A change: desired changes, pushes and convergence latency move again.
    sqlx::query("UPDATE multi_interface SET mtu = 1400 WHERE port_id = 'p1'").execute(&pool).await.unwrap();
    wait_metric(c, "multinic_controller_convergence_seconds", &[], |v| v > latency_before).await;
    let m = Metrics::scrape(c).await;
    assert!(m.get("multinic_controller_pushes_total", &[]) > pushes_before);
    assert!(m.get("multinic_controller_desired_changes_total", &[]) > changes_before);
    wait_metric(agent_http, "multinic_agent_file_changes_total", &[], |v| v == 2.0).await;

    // The database goes away: poll errors and db_up move; the controller's
    // liveness stays 200 while readiness turns 503, and back.
    db.stop();
    wait_metric(c, "multinic_controller_db_poll_errors_total", &[], |v| v >= 1.0).await;
    wait_metric(c, "multinic_controller_db_up", &[], |v| v == 0.0).await;
    assert_eq!(http_get(c, "/healthz").await.0, 200);
    assert_eq!(http_get(c, "/readyz").await.0, 503);
    db.restart().await;
    wait_metric(c, "multinic_controller_db_up", &[], |v| v == 1.0).await;
    eventually(WAIT, "controller ready again", || async { (http_get(c, "/readyz").await.0 == 200).then_some(()) })
        .await;

    // The controller restarts: the agent reconnects; its readiness and the
    // predecessor's health document follow the link, liveness does not.
    let url = db.url();
    let grpc = controller.grpc;
    controller.stop().await;
    eventually(WAIT, "agent sees the link down", || async {
        (http_get(agent_http, "/readyz").await.0 == 503).then_some(())
    })
    .await;
    assert_eq!(http_get(agent_http, "/healthz").await.0, 200);
    let (code, body) = http_get(agent_http, "/").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"database_connected\":false"), "{body}");
    let again = TestController::start_on(&url, Duration::from_millis(200), grpc).await;
    wait_metric(agent_http, "multinic_agent_reconnects_total", &[], |v| v >= 1.0).await;
    wait_metric(agent_http, "multinic_agent_connected", &[], |v| v == 1.0).await;
    assert_eq!(http_get(agent_http, "/readyz").await.0, 200);
    again.stop().await;
    agent.stop().await;
}
