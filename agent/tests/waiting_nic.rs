//! A NIC plugged in after the agent started, end to end: rows in a real
//! MariaDB, the real controller, the agent binary in a network namespace.
//! The agent reports the MAC as waiting, notices the link when it appears,
//! applies only that interface and reports again on the same push; the
//! controller accepts the report and marks the row.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use multinic_proto::{ErrorCode, InterfaceState, MacAddress, NodeName};
use multinic_testkit::agent_process::{AgentOptions, AgentProcess};
use multinic_testkit::fleet::TestController;
use multinic_testkit::mariadb::MariaDb;
use multinic_testkit::netns::{self, TestNode};
use multinic_testkit::rows::{NewRow, netplan_success};
use multinic_testkit::{eventually, netplan_generate, require_netplan};
use serde_json::Value;
use sqlx::MySqlPool;

const NODE: &str = "node-under-test";
const A: &str = "fa:16:3e:00:03:01";
const B: &str = "fa:16:3e:00:03:02";
const WAIT: Duration = Duration::from_secs(20);

async fn wait_success(pool: &MySqlPool, id: i64, agent: &AgentProcess) {
    let what = format!("row {id} netplan_success = 1; agent log:\n{}", agent.log_text());
    eventually(WAIT, &what, || async move { (netplan_success(pool, id).await == 1).then_some(()) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nic_plugged_in_later_waits_then_is_applied_alone() {
    if !netns::available() {
        return;
    }
    let Some(db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    let row_a = NewRow::new("p-a", NODE, A).address(Some("10.40.0.5"), Some("10.40.0.0/24")).insert(&pool).await;
    let row_b = NewRow::new("p-b", NODE, B).address(Some("10.41.0.5"), Some("10.41.0.0/24")).insert(&pool).await;
    let controller = TestController::start(&db.url(), Duration::from_millis(200)).await;

    let mut kernel = TestNode::new();
    kernel.add_nic("eth1", A);
    let port = kernel.forward_to(controller.grpc);
    let root = tempfile::Builder::new().prefix("multinic-host-").tempdir().unwrap();
    let state = tempfile::Builder::new().prefix("multinic-state-").tempdir().unwrap();
    let agent = AgentProcess::start(&AgentOptions::netlink(
        PathBuf::from(env!("CARGO_BIN_EXE_multinic-agent")),
        kernel.name(),
        format!("127.0.0.1:{port}"),
        root.path(),
        state.path(),
    ));

    wait_success(&pool, row_a, &agent).await;
    let node: NodeName = NODE.parse().unwrap();
    let mac_b: MacAddress = B.parse().unwrap();
    let waiting = eventually(WAIT, "B reported waiting", || async {
        let view = controller.fleet.view().node(&node)?;
        let record = view.interfaces.get(&mac_b)?;
        (record.status.state == InterfaceState::Waiting).then(|| record.status.clone())
    })
    .await;
    assert_eq!(waiting.code, ErrorCode::MacNotPresent);
    assert!(root.path().join("etc/netplan/91-multinic1.yaml").exists(), "B keeps its name in a file while waiting");
    let a_before = kernel.link("multinic0").expect("A applied");
    assert_eq!(a_before.addresses, vec!["10.40.0.5/24"]);

    // The NIC appears: no push happens, the agent notices by itself.
    kernel.add_nic("eth7", B);
    wait_success(&pool, row_b, &agent).await;
    let b = kernel.link("multinic1").expect("B renamed");
    assert_eq!((b.mac.as_str(), b.up, b.addresses.clone()), (B, true, vec!["10.41.0.5/24".to_owned()]));
    assert_eq!(kernel.link("multinic0").unwrap(), a_before, "A untouched");
    let event = agent.events("applied NICs that appeared").pop().expect("the appear pass is logged");
    assert_eq!(event["appeared"], 1, "{event}");
    assert_eq!(event["file_writes"], 0, "{event}");
    // Rename, up, one address: B's steps and nothing else.
    assert_eq!(event["netlink_changes"], Value::from(3), "{event}");
    assert_eq!(agent.events("applied desired state").len(), 1, "no second push was needed");
    if require_netplan() {
        netplan_generate(root.path()).unwrap();
    }
    drop(agent);
    controller.stop().await;
}
