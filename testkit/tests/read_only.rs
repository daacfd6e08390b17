//! A node whose configuration folder is read-only: its interfaces fail with
//! an error naming the path and saying that nothing had changed (no stale
//! journal entry), nothing else on any node is affected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use multinic_proto::{InterfaceState, NodeName};
use multinic_testkit::fleet::{TestAgent, TestController};
use multinic_testkit::rows::NewRow;
use multinic_testkit::{eventually, is_root, require};

const WAIT: Duration = Duration::from_secs(20);

/// A read-only tmpfs over a folder, unmounted on drop.
struct ReadOnly(std::path::PathBuf);

impl ReadOnly {
    fn mount(dir: &std::path::Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"]).arg(dir).status().unwrap();
        assert!(ok.success(), "mount a read-only tmpfs on {}", dir.display());
        Self(dir.to_path_buf())
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_folder_fails_its_node_clearly_and_no_other() {
    if !require(is_root(), "root", "mounting a read-only folder needs root") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (url, pool) = multinic_testkit::sqlite_db(dir.path()).await;
    for (port, node, mac) in [("ro", "node-ro", "fa:16:3e:00:60:01"), ("ok", "node-ok", "fa:16:3e:00:60:02")] {
        NewRow::new(port, node, mac).insert_sqlite(&pool).await;
    }
    let ro_root = tempfile::tempdir().unwrap();
    let _read_only = ReadOnly::mount(&ro_root.path().join("etc/netplan"));
    let controller = TestController::start(&url, Duration::from_millis(150)).await;
    let ro = TestAgent::start_in(ro_root, &controller.url(), "node-ro").await;
    let ok = TestAgent::start(&controller.url(), "node-ok").await;

    let name: NodeName = "node-ro".parse().unwrap();
    let record = eventually(WAIT, "node-ro reports its interface failed", || async {
        let node = controller.fleet.view().node(&name)?;
        node.interfaces.values().find(|r| r.status.state == InterfaceState::Failed).cloned()
    })
    .await;
    assert_eq!(record.status.code, multinic_proto::ErrorCode::WriteFailed);
    assert!(record.status.message.contains("etc/netplan/90-multinic0.yaml"), "{}", record.status.message);
    assert!(record.status.message.contains("Read-only"), "{}", record.status.message);
    // Nothing was written, so nothing was restored, and the journal agrees.
    assert!(record.status.message.ends_with("; nothing had changed"), "{}", record.status.message);
    let journal = ro.state_dir().join("journal");
    let left: Vec<_> =
        std::fs::read_dir(&journal).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "no stale journal entry: {left:?}");

    let success = |port: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT netplan_success FROM multi_interface WHERE port_id = ?")
                .bind(port)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    eventually(WAIT, "node-ok's row recorded", || async { (success("ok").await == 1).then_some(()) }).await;
    assert_eq!(success("ro").await, 0);
    assert!(ok.netplan_file(0).is_some());
    assert!(ro.netplan_file(0).is_none());
    controller.stop().await;
    ro.stop().await;
    ok.stop().await;
}
