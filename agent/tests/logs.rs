//! The agent binary's JSON logs: one object per line, and the apply's line
//! carries the node (stream span), the generation (apply span) and, per
//! interface, the interface name.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

use multinic_testkit::fleet::TestController;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_node_generation_and_interface() {
    let dir = tempfile::tempdir().unwrap();
    let (url, pool) = multinic_testkit::sqlite_db(dir.path()).await;
    multinic_testkit::sqlx::query(
        "INSERT INTO multi_interface (port_id, subnet_id, macaddress, attached_node_name, address, cidr, mtu) \
         VALUES ('p', 's', 'fa:16:3e:00:10:01', 'node-l', '10.4.0.4', '10.4.0.0/24', 1500)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let controller = TestController::start(&url, Duration::from_millis(100)).await;
    let root = dir.path().join("root");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_multinic-agent"))
        .args(["--insecure", "--controller", &controller.grpc.to_string(), "--node-name", "node-l"])
        .args(["--apply", "none", "--backend", "netplan", "--log-format", "json", "--log-level", "info"])
        .arg("--host-root")
        .arg(&root)
        .arg("--http-listen")
        .arg(multinic_testkit::free_addr().to_string())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        let (mut applied, mut wrote) = (None, None);
        while let Some(line) = lines.next_line().await.unwrap() {
            let log: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
            assert!(log["timestamp"].is_string() && log["level"].is_string(), "{line}");
            match log["message"].as_str() {
                Some("applied desired state") => applied = Some(log),
                Some("applied and verified" | "configuring") => wrote = Some(log),
                _ => {}
            }
            if let (Some(a), Some(w)) = (&applied, &wrote) {
                return (a.clone(), w.clone());
            }
        }
        panic!("agent exited before applying");
    })
    .await
    .expect("agent logged an apply");
    let (applied, wrote) = found;
    let spans = applied["spans"].as_array().unwrap();
    assert!(spans.iter().any(|s| s["name"] == "stream" && s["node"] == "node-l"), "{applied}");
    assert!(spans.iter().any(|s| s["name"] == "apply" && s["generation"] == 1), "{applied}");
    let spans = wrote["spans"].as_array().unwrap();
    let interface = spans.iter().find(|s| s["name"] == "interface").unwrap_or_else(|| panic!("{wrote}"));
    assert_eq!(interface["interface"], "multinic0", "{wrote}");
    assert_eq!(interface["mac"], "fa:16:3e:00:10:01", "{wrote}");
    assert!(spans.iter().any(|s| s["name"] == "stream" && s["node"] == "node-l"), "{wrote}");
    child.kill().await.unwrap();
    controller.stop().await;
}
