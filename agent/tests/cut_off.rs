//! A node cut off from the controller for a while: the agent keeps its
//! state (nothing removed, nothing re-applied), reconnects by itself when the
//! link returns, and catches up with the change made meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use multinic_testkit::agent_process::{AgentOptions, AgentProcess};
use multinic_testkit::eventually;
use multinic_testkit::fleet::TestController;
use multinic_testkit::mariadb::MariaDb;
use multinic_testkit::netns::{self, TestNode};
use multinic_testkit::rows::{NewRow, netplan_success_of_port};

const MAC: &str = "fa:16:3e:00:07:01";
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_keeps_its_state_and_catches_up() {
    if !netns::available() {
        return;
    }
    let Some(db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    NewRow::new("p", "node-under-test", MAC).address(Some("10.70.0.5"), Some("10.70.0.0/24")).insert(&pool).await;
    let controller = TestController::start(&db.url(), Duration::from_millis(200)).await;
    let mut kernel = TestNode::new();
    kernel.add_nic("eth1", MAC);
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
    eventually(WAIT, "the row applied", || async { (netplan_success_of_port(&pool, "p").await == 1).then_some(()) })
        .await;
    let applied = kernel.link("multinic0").expect("applied");
    assert_eq!((applied.mtu, applied.addresses.clone()), (1500, vec!["10.70.0.5/24".to_owned()]));
    let file = root.path().join("etc/netplan/90-multinic0.yaml");
    let file_before = std::fs::read_to_string(&file).unwrap();

    // Cut the node off: the namespace's only path to the controller goes down.
    kernel.ip(&["link", "set", "lo", "down"]);
    let cut = Instant::now();
    sqlx::query("UPDATE multi_interface SET mtu = 1400, netplan_success = 0 WHERE port_id = 'p'")
        .execute(&pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Meanwhile the node keeps exactly what it had.
    assert_eq!(kernel.link("multinic0").unwrap(), applied, "the node's state is kept while cut off");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), file_before);
    assert_eq!(netplan_success_of_port(&pool, "p").await, 0);

    kernel.ip(&["link", "set", "lo", "up"]);
    let restored = Instant::now();
    let what = format!("the change arrives after the link returns; agent log:\n{}", agent.log_text());
    eventually(WAIT, &what, || async { (netplan_success_of_port(&pool, "p").await == 1).then_some(()) }).await;
    eprintln!("cut off for {:?}; caught up {:?} after the link returned", restored - cut, restored.elapsed());
    let now = kernel.link("multinic0").unwrap();
    assert_eq!((now.mtu, now.addresses.clone(), now.up), (1400, vec!["10.70.0.5/24".to_owned()], true));
    assert!(std::fs::read_to_string(&file).unwrap().contains("mtu: 1400"));
    drop(agent);
    controller.stop().await;
}
