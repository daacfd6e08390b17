//! SIGTERM while an apply is in flight: the agent finishes it (verifies,
//! commits, reports), then exits 0; nothing is left half-done.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use multinic_testkit::agent_process::{AgentOptions, AgentProcess};
use multinic_testkit::eventually;
use multinic_testkit::fleet::TestController;
use multinic_testkit::netns::{self, TestNode};
use multinic_testkit::rows::NewRow;

const MAC: &str = "fa:16:3e:00:08:01";
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_apply_finishes_the_apply_then_exits_zero() {
    if !netns::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (url, pool) = multinic_testkit::sqlite_db(dir.path()).await;
    NewRow::new("p", "node-under-test", MAC)
        .address(Some("10.80.0.5"), Some("10.80.0.0/24"))
        .mtu(9000)
        .insert_sqlite(&pool)
        .await;
    let controller = TestController::start(&url, Duration::from_millis(200)).await;
    let mut kernel = TestNode::new();
    kernel.add_nic("eth1", MAC);
    let port = kernel.forward_to(controller.grpc);
    let root = tempfile::Builder::new().prefix("multinic-host-").tempdir().unwrap();
    let state = tempfile::Builder::new().prefix("multinic-state-").tempdir().unwrap();
    let marker = dir.path().join("paused");
    let mut agent = AgentProcess::start(&AgentOptions {
        env: vec![
            ("MULTINIC_TEST_PAUSE_AFTER_WRITE".into(), marker.display().to_string()),
            ("MULTINIC_TEST_PAUSE_SECONDS".into(), "3".into()),
        ],
        ..AgentOptions::netlink(
            PathBuf::from(env!("CARGO_BIN_EXE_multinic-agent")),
            kernel.name(),
            format!("127.0.0.1:{port}"),
            root.path(),
            state.path(),
        )
    });
    eventually(WAIT, "the agent is mid-apply", || async { marker.exists().then_some(()) }).await;
    assert!(std::fs::read_dir(state.path().join("journal")).unwrap().count() > 0, "a change is in flight");
    agent.terminate();
    let asked = Instant::now();
    let status = agent.wait_exit(Duration::from_secs(20)).unwrap_or_else(|| panic!("no exit:\n{}", agent.log_text()));
    assert!(status.success(), "{status:?}\n{}", agent.log_text());
    eprintln!("exited {:?} after SIGTERM (the apply had ~3 s left)", asked.elapsed());

    // The apply was finished, not abandoned: verified state, empty journal.
    let link = kernel.link("multinic0").expect("renamed");
    assert_eq!((link.mtu, link.up, link.addresses.clone()), (9000, true, vec!["10.80.0.5/24".to_owned()]));
    assert_eq!(std::fs::read_dir(state.path().join("journal")).unwrap().count(), 0, "{}", agent.log_text());
    assert!(agent.events("applied desired state").len() == 1, "{}", agent.log_text());
    // And its report reached the controller before the agent went away.
    let success: i64 = sqlx::query_scalar("SELECT netplan_success FROM multi_interface WHERE port_id = 'p'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(success, 1, "the report was delivered and recorded before the agent exited");
    controller.stop().await;
}
