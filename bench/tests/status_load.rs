//! The status-load measurement, small: a node with a thousand rejected
//! rows, the real controller and multinicctl binaries. It checks that every
//! command ran and that `status` stays bounded in size; it asserts no
//! timing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use multinic_bench::status_load::{self, StatusLoadConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_load_runs_every_command_on_a_dirty_node() {
    if !multinic_testkit::require(multinic_testkit::have("mariadbd"), "mariadbd", "apt-get install -y mariadb-server") {
        return;
    }
    let dir = Path::new(env!("CARGO_BIN_EXE_multinic-bench")).parent().unwrap();
    let (controller, multinicctl) = (dir.join("multinic-controller"), dir.join("multinicctl"));
    let how = "cargo build --workspace (cargo nextest run --workspace builds them)";
    if !multinic_testkit::require(
        controller.is_file() && multinicctl.is_file(),
        "the controller and multinicctl binaries beside the benchmark",
        how,
    ) {
        return;
    }
    let config = StatusLoadConfig {
        controller,
        multinicctl,
        bad_rows: 1000,
        good_nodes: 3,
        rounds: 2,
        timeout: Duration::from_secs(60),
    };
    let report = status_load::run(&config, &|line| eprintln!("[status-load] {line}")).await.unwrap();
    assert_eq!((report.status.n, report.get_node.n, report.get_nodes.n), (2, 2, 2));
    assert_eq!((report.diff_node.n, report.diff.n), (2, 2));
    assert!(report.healthz_idle.n > 0 && report.healthz_busy.n > 0);
    // 200 of the 1000 rejected rows are listed, and a count of the rest.
    assert!(report.status_bytes < 60_000, "{} bytes", report.status_bytes);
    assert!(report.diff_bytes < 60_000, "diff is bounded too: {} bytes", report.diff_bytes);
    assert!(report.table().contains("multinicctl get node dirty-node"));
}
