//! The real `multinicctl` binary against a real controller, real agents and a
//! real MariaDB: tables match golden files (times masked), JSON and YAML carry
//! every field, exit codes are as documented.
//!
//! `UPDATE_GOLDEN=1 cargo nextest run -p multinicctl` rewrites the golden files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use multinic_controller::fleet::Convergence;
use multinic_controller::guard::GuardConfig;
use multinic_proto::NodeName;
use multinic_testkit::eventually;
use multinic_testkit::fleet::{TestAgent, TestController};
use multinic_testkit::mariadb::MariaDb;
use serde_json::Value;
use sqlx::MySqlPool;

const WAIT: Duration = Duration::from_secs(20);

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn cli(controller: &TestController, args: &[&str]) -> Run {
    let addr = controller.grpc.to_string();
    let mut all = vec!["--insecure", "--controller", addr.as_str()];
    all.extend_from_slice(args);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_multinicctl"))
        .args(&all)
        .env_remove("NO_COLOR")
        .output()
        .await
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// Ages ("3s", "2m") and "last poll 1s ago" vary from run to run.
fn mask(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let masked: Vec<String> = line
            .split(' ')
            .map(|w| {
                let digits = w.trim_end_matches(['s', 'm', 'h', 'd']);
                let is_age = !w.is_empty()
                    && w.len() - digits.len() == 1
                    && !digits.is_empty()
                    && digits.bytes().all(|b| b.is_ascii_digit());
                let is_time = w.len() == 20 && w.ends_with('Z') && w.as_bytes().get(10) == Some(&b'T');
                if is_age {
                    "<age>".to_owned()
                } else if is_time {
                    "<time>".to_owned()
                } else {
                    mask_quoted_times(w)
                }
            })
            .collect();
        out.push_str(&masked.join(" "));
        out.push('\n');
    }
    out
}

/// RFC 3339 times inside a word (`"2026-12-01T02:58:02Z",` in JSON or YAML).
fn mask_quoted_times(word: &str) -> String {
    let is_time = |t: &[u8]| {
        t.len() == 20
            && t[19] == b'Z'
            && t[10] == b'T'
            && t.iter().enumerate().all(|(i, b)| matches!(i, 4 | 7 | 10 | 13 | 16 | 19) || b.is_ascii_digit())
    };
    let bytes = word.as_bytes();
    match (0..bytes.len().saturating_sub(19)).find(|&i| is_time(&bytes[i..i + 20])) {
        Some(i) => format!("{}<time>{}", &word[..i], mask_quoted_times(&word[i + 20..])),
        None => word.to_owned(),
    }
}

/// Compares a command's output, its times masked, with its golden file.
fn golden(name: &str, actual: &str) {
    multinic_testkit::assert_golden(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name),
        &mask(actual),
    );
}

async fn insert(pool: &MySqlPool, port: &str, node: Option<&str>, mac: &str, address: Option<&str>, mtu: i64) {
    sqlx::query(
        "INSERT INTO multi_interface (port_id, subnet_id, macaddress, attached_node_name, address, cidr, mtu) \
         VALUES (?, 's', ?, ?, ?, IF(? IS NULL, NULL, '10.7.0.0/24'), ?)",
    )
    .bind(port)
    .bind(mac)
    .bind(node)
    .bind(address)
    .bind(address)
    .bind(mtu)
    .execute(pool)
    .await
    .unwrap();
}

/// node-a: an interface with an address and one without (MTU 9000);
/// node-b: one with an address and a rejected row (MTU 0).
async fn insert_nodes_a_and_b(pool: &MySqlPool) {
    insert(pool, "a1", Some("node-a"), "fa:16:3e:0a:00:01", Some("10.7.0.11"), 1500).await;
    insert(pool, "a2", Some("node-a"), "fa:16:3e:0a:00:02", None, 9000).await;
    insert(pool, "b1", Some("node-b"), "fa:16:3e:0b:00:01", Some("10.7.0.21"), 1500).await;
    insert(pool, "b2", Some("node-b"), "fa:16:3e:0b:00:02", None, 0).await;
}

async fn wait_for(controller: &TestController, node: &str, state: Convergence) {
    let name: NodeName = node.parse().unwrap();
    eventually(WAIT, &format!("{node} {state:?}"), || async {
        controller.fleet.view().node(&name).filter(|n| n.convergence == state && n.session.is_some()).map(|_| ())
    })
    .await;
}

fn keys(value: &Value) -> BTreeSet<String> {
    value.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

const NODE_KEYS: &[&str] = &[
    "name",
    "convergence",
    "connected",
    "agent_version",
    "backend",
    "apply_mode",
    "last_seen",
    "desired_generation",
    "desired_digest",
    "applied_generation",
    "applied_digest",
    "interfaces",
    "interfaces_omitted",
    "row_problems",
    "row_problems_omitted",
    "row_warnings",
    "row_warnings_omitted",
    "problems",
    "last_drift",
    "drift",
    "drift_repairs",
];
const DRIFT_KEYS: &[&str] = &["mac_address", "name", "kind", "found", "wanted", "action"];
const INTERFACE_KEYS: &[&str] =
    &["node", "mac_address", "name", "address", "mtu", "state", "error_code", "message", "last_change", "row_ids"];
const PROBLEM_KEYS: &[&str] = &["row_id", "node", "mac_address", "error_code", "message"];
const SUMMARY_KEYS: &[&str] = &[
    "nodes_known",
    "agents_connected",
    "nodes_converged",
    "nodes_pending",
    "nodes_failed",
    "db_up",
    "db_error",
    "last_poll",
    "invalid_rows",
    "controller_version",
    "row_problems",
    "row_problems_omitted",
    "row_warnings",
    "row_warnings_omitted",
    "removals_held",
    "removal_guard",
    "removal_guard_token",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_with_problems_reads_clearly_and_exits_2() {
    let Some(db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    insert_nodes_a_and_b(&pool).await;
    insert(&pool, "c1", Some("node-c"), "fa:16:3e:0c:00:01", None, 1500).await;
    insert(&pool, "c2", Some("node-c"), "fa:16:3e:0c:00:02", None, 1500).await;
    insert(&pool, "d1", Some("node-d"), "fa:16:3e:0d:00:01", None, 1500).await;
    insert(&pool, "x1", None, "fa:16:3e:0e:00:01", None, 1500).await;

    let controller = TestController::start(&db.url(), Duration::from_millis(200)).await;
    let a = TestAgent::start(&controller.url(), "node-a").await;
    let b = TestAgent::start(&controller.url(), "node-b").await;
    let root = tempfile::tempdir().unwrap();
    let c = TestAgent::start_adjusted(root, &controller.url(), "node-c", |config| config.capacity = 1).await;
    wait_for(&controller, "node-a", Convergence::Converged).await;
    wait_for(&controller, "node-b", Convergence::Converged).await;
    wait_for(&controller, "node-c", Convergence::Failed).await;

    let status = cli(&controller, &["status"]).await;
    assert_eq!(status.code, 2, "not converged → exit 2\n{}{}", status.stdout, status.stderr);
    golden("status.txt", &status.stdout);
    golden("get-nodes.txt", &cli(&controller, &["get", "nodes"]).await.stdout);
    golden("get-nodes-wide.txt", &cli(&controller, &["get", "nodes", "-o", "wide"]).await.stdout);
    golden("get-node-c.txt", &cli(&controller, &["get", "node", "NODE-C.novalocal"]).await.stdout);
    golden("get-node-b.txt", &cli(&controller, &["get", "node", "node-b"]).await.stdout);
    golden("get-interfaces.txt", &cli(&controller, &["get", "interfaces"]).await.stdout);
    golden(
        "get-interfaces-b-wide.txt",
        &cli(&controller, &["get", "interfaces", "--node", "node-b", "-o", "wide"]).await.stdout,
    );

    // JSON and YAML parse and carry every field.
    let json: Value = serde_json::from_str(&cli(&controller, &["status", "-o", "json"]).await.stdout).unwrap();
    let yaml: Value = serde_yaml::from_str(&cli(&controller, &["status", "-o", "yaml"]).await.stdout).unwrap();
    for doc in [&json, &yaml] {
        assert_eq!(keys(doc), set(&["summary", "converged", "attention"]));
        assert_eq!(keys(&doc["summary"]), set(SUMMARY_KEYS));
        assert_eq!(doc["converged"], Value::Bool(false));
        assert_eq!(doc["summary"]["nodes_failed"], 1);
        assert_eq!(keys(&doc["summary"]["row_problems"][0]), set(PROBLEM_KEYS));
        let attention: Vec<&str> =
            doc["attention"].as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap()).collect();
        assert_eq!(attention, vec!["node-b", "node-c", "node-d"]);
    }
    for format in ["json", "yaml"] {
        let out = cli(&controller, &["get", "node", "node-c", "-o", format]).await.stdout;
        let node: Value =
            if format == "json" { serde_json::from_str(&out).unwrap() } else { serde_yaml::from_str(&out).unwrap() };
        assert_eq!(keys(&node), set(NODE_KEYS), "{format}");
        assert_eq!(node["convergence"], "failed");
        let refused = node["interfaces"].as_array().unwrap().iter().find(|i| i["state"] == "refused").unwrap();
        assert_eq!(keys(refused), set(INTERFACE_KEYS));
        assert_eq!(refused["error_code"], "CAPACITY_EXCEEDED");

        let out = cli(&controller, &["get", "nodes", "-o", format]).await.stdout;
        let nodes: Value =
            if format == "json" { serde_json::from_str(&out).unwrap() } else { serde_yaml::from_str(&out).unwrap() };
        assert_eq!(nodes.as_array().unwrap().len(), 4);
        let out = cli(&controller, &["get", "interfaces", "-o", format]).await.stdout;
        let ifaces: Value =
            if format == "json" { serde_json::from_str(&out).unwrap() } else { serde_yaml::from_str(&out).unwrap() };
        assert_eq!(ifaces.as_array().unwrap().len(), 7, "six interfaces and one held MAC: {out}");
    }

    let missing = cli(&controller, &["get", "node", "node-zz"]).await;
    assert_eq!(missing.code, 1);
    assert!(missing.stderr.contains("node-zz is unknown"), "{}", missing.stderr);

    controller.stop().await;
    for agent in [a, b, c] {
        agent.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_converged_fleet_exits_0_and_watch_streams_changes() {
    let Some(db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    insert(&pool, "a1", Some("node-a"), "fa:16:3e:0a:00:01", Some("10.7.0.11"), 1500).await;
    let controller = TestController::start(&db.url(), Duration::from_millis(200)).await;
    let a = TestAgent::start(&controller.url(), "node-a").await;
    wait_for(&controller, "node-a", Convergence::Converged).await;
    let status = cli(&controller, &["status"]).await;
    assert_eq!(status.code, 0, "{}{}", status.stdout, status.stderr);
    assert!(status.stdout.contains("All nodes converged."), "{}", status.stdout);

    // watch -o json: the snapshot first, then the change made meanwhile.
    let addr = controller.grpc.to_string();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_multinicctl"))
        .args(["--insecure", "--controller", &addr, "watch", "-o", "json"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let first: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(first["name"], "node-a");
    assert_eq!(keys(&first), set(NODE_KEYS));
    sqlx::query("UPDATE multi_interface SET mtu = 1400 WHERE port_id = 'a1'").execute(&pool).await.unwrap();
    let seen_mtu = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let node: Value = serde_json::from_str(&line).unwrap();
            if node["interfaces"][0]["mtu"] == 1400 && node["convergence"] == "converged" {
                return true;
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(seen_mtu);
    child.kill().await.unwrap();
    controller.stop().await;
    a.stop().await;
}

/// An agent repairs a file of its own that was deleted: `get node` shows
/// when and what (table and JSON), and the controller counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_a_node_repaired_shows_in_get_node_and_in_metrics() {
    let Some(db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    insert(&pool, "a1", Some("node-a"), "fa:16:3e:0a:00:01", Some("10.7.0.11"), 1500).await;
    let controller = TestController::start(&db.url(), Duration::from_millis(200)).await;
    let root = tempfile::tempdir().unwrap();
    let a = TestAgent::start_adjusted(root, &controller.url(), "node-a", |config| {
        config.drift.interval = Duration::from_millis(300);
    })
    .await;
    wait_for(&controller, "node-a", Convergence::Converged).await;
    let json: Value =
        serde_json::from_str(&cli(&controller, &["get", "node", "node-a", "-o", "json"]).await.stdout).unwrap();
    assert_eq!((&json["last_drift"], &json["drift_repairs"]), (&Value::Null, &Value::from(0)), "{json}");
    assert!(!cli(&controller, &["get", "node", "node-a"]).await.stdout.contains("Drift:"));

    std::fs::remove_file(a.netplan_path(0)).unwrap();
    eventually(WAIT, "the file put back", || async { a.netplan_file(0).map(|_| ()) }).await;
    let json = eventually(WAIT, "drift in get node -o json", || async {
        let out = cli(&controller, &["get", "node", "node-a", "-o", "json"]).await.stdout;
        let json: Value = serde_json::from_str(&out).unwrap();
        (!json["last_drift"].is_null()).then_some(json)
    })
    .await;
    assert_eq!(keys(&json), set(NODE_KEYS));
    assert_eq!(json["drift_repairs"], 1);
    let finding = &json["drift"][0];
    assert_eq!(keys(finding), set(DRIFT_KEYS));
    assert_eq!(
        (&finding["name"], &finding["kind"], &finding["action"]),
        (&Value::from("multinic0"), &Value::from("file_deleted"), &Value::from("repaired"))
    );
    assert_eq!(finding["found"], "no /etc/netplan/90-multinic0.yaml");
    assert_eq!(json["convergence"], "converged", "repaired: the node matches");

    let table = cli(&controller, &["get", "node", "node-a"]).await.stdout;
    for needle in [
        "Drift:       last found",
        "1 repaired since the controller became active",
        "Last drift found:",
        "file_deleted",
        "no /etc/netplan/90-multinic0.yaml",
        "repaired",
    ] {
        assert!(table.contains(needle), "{needle:?} in\n{table}");
    }
    let metrics = multinic_testkit::scrape::Metrics::scrape(controller.http).await;
    let labels = [("kind", "file_deleted"), ("action", "repaired")];
    assert_eq!(metrics.get("multinic_controller_drift_findings_total", &labels), 1.0);
    controller.stop().await;
    a.stop().await;
}

/// One node with thousands of bad rows, an address on two nodes, and a
/// reader that closes the pipe early: views stay bounded and say how much
/// they leave out, the duplicate address is a warning, and a closed stdout
/// ends the output quietly with the status's exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_views_warnings_and_a_closed_pipe() {
    let Some(db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    multinic_testkit::rows::insert_rejected_rows(&pool, "node-dirty", 0xd0, 3000).await.unwrap();
    insert(&pool, "w1", Some("node-a"), "fa:16:3e:0a:00:01", Some("10.7.0.11"), 1500).await;
    insert(&pool, "w2", Some("node-b"), "fa:16:3e:0b:00:01", Some("10.7.0.11"), 1500).await;
    let controller = TestController::start(&db.url(), Duration::from_millis(200)).await;
    let a = TestAgent::start(&controller.url(), "node-a").await;
    let b = TestAgent::start(&controller.url(), "node-b").await;
    wait_for(&controller, "node-a", Convergence::Converged).await;
    wait_for(&controller, "node-b", Convergence::Converged).await;

    let node = cli(&controller, &["get", "node", "node-dirty"]).await;
    assert_eq!(node.code, 0, "{}", node.stderr);
    assert!(node.stdout.contains("... and 2800 more held interfaces not listed"), "{}", node.stdout);
    assert!(node.stdout.contains("... and 2800 more rejected rows not listed"), "{}", node.stdout);
    let status = cli(&controller, &["status"]).await;
    assert_eq!(status.code, 2);
    assert!(status.stdout.contains("Bad rows:   3000\n"), "{}", status.stdout);
    assert!(status.stdout.contains("... and 2800 more rejected rows not listed"), "{}", status.stdout);
    assert!(status.stdout.contains("Warnings:   2 row(s) look wrong but are applied"), "{}", status.stdout);
    assert!(status.stdout.contains("address 10.7.0.11 is also desired for fa:16:3e:0b:00:01 on node node-b"));
    let json: Value = serde_json::from_str(&cli(&controller, &["status", "-o", "json"]).await.stdout).unwrap();
    assert_eq!(json["summary"]["row_problems_omitted"], 2800);
    assert_eq!(json["summary"]["row_warnings"][0]["error_code"], "DUPLICATE_ADDRESS");

    // `multinicctl status | head -0`: the reader is gone before anything is written.
    let addr = controller.grpc.to_string();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_multinicctl"))
        .args(["--insecure", "--controller", &addr, "status"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.is_empty(), "a closed pipe is not an error: {stderr}");
    assert_eq!(out.status.code(), Some(2), "the status's own exit code");

    controller.stop().await;
    a.stop().await;
    b.stop().await;
}

/// `multinicctl diff`: a row's MTU edited, a row added and one deleted while
/// the node's agent is away show as change / add / remove against what it
/// last reported (exit 2); a rejected row shows its reason; a node whose
/// agent never reported is unknown; once the agent is back and applied,
/// exit 0; a mass deletion the guard holds shows as held, with the guard's
/// reason. Golden files for every format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_shows_what_would_change_before_it_lands() {
    multinic_testkit::test_logging();
    let Some(db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    insert_nodes_a_and_b(&pool).await;
    for i in 1..=4 {
        insert(&pool, &format!("c{i}"), Some("node-c"), &format!("fa:16:3e:0c:00:0{i}"), None, 1500).await;
    }
    insert(&pool, "d1", Some("node-d"), "fa:16:3e:0d:00:01", None, 1500).await;
    let guard = GuardConfig { max_share: 0.5, min_removals: 3, warmup: Duration::ZERO };
    let controller =
        TestController::start_guarded(&db.url(), Duration::from_millis(200), "127.0.0.1:0".parse().unwrap(), guard)
            .await;
    let a = TestAgent::start(&controller.url(), "node-a").await;
    let b = TestAgent::start(&controller.url(), "node-b").await;
    let c = TestAgent::start(&controller.url(), "node-c").await;
    for node in ["node-a", "node-b", "node-c"] {
        wait_for(&controller, node, Convergence::Converged).await;
    }
    let quiet = cli(&controller, &["diff", "--node", "node-a"]).await;
    assert_eq!(quiet.code, 0, "converged: nothing would change\n{}{}", quiet.stdout, quiet.stderr);
    assert!(quiet.stdout.starts_with("Nothing would change.\n"), "{}", quiet.stdout);

    // The agent of node-a goes away; meanwhile an MTU is edited, a row added, one deleted.
    let root = a.stop().await;
    let node_a: NodeName = "node-a".parse().unwrap();
    eventually(WAIT, "node-a disconnected", || async {
        controller.fleet.view().node(&node_a).filter(|n| n.session.is_none()).map(|_| ())
    })
    .await;
    sqlx::query("UPDATE multi_interface SET mtu = 1400 WHERE port_id = 'a1'").execute(&pool).await.unwrap();
    sqlx::query("UPDATE multi_interface SET deleted_at = NOW() WHERE port_id = 'a2'").execute(&pool).await.unwrap();
    insert(&pool, "a3", Some("node-a"), "fa:16:3e:0a:00:03", Some("10.7.0.13"), 1500).await;
    let pending = eventually(WAIT, "the edits in diff", || async {
        let run = cli(&controller, &["diff", "--node", "node-a"]).await;
        (run.stdout.matches("fa:16:3e:0a:00:0").count() == 3).then_some(run)
    })
    .await;
    assert_eq!(pending.code, 2, "changes pending → exit 2\n{}{}", pending.stdout, pending.stderr);
    for needle in [
        "change   mtu 1500 → 1400",
        "remove   mtu 9000 → -",
        "add      mtu - → 1500, address - → 10.7.0.13/24",
        "node-a: agent not connected: compared with what it last reported",
    ] {
        assert!(pending.stdout.contains(needle), "{needle:?} in\n{}", pending.stdout);
    }

    let table = cli(&controller, &["diff"]).await;
    assert_eq!(table.code, 2, "{}{}", table.stdout, table.stderr);
    golden("diff.txt", &table.stdout);
    golden("diff-wide.txt", &cli(&controller, &["diff", "-o", "wide"]).await.stdout);
    let json = cli(&controller, &["diff", "-o", "json"]).await;
    assert_eq!(json.code, 2);
    golden("diff.json", &json.stdout);
    let yaml = cli(&controller, &["diff", "-o", "yaml"]).await;
    assert_eq!(yaml.code, 2);
    golden("diff.yaml", &yaml.stdout);
    let json: Value = serde_json::from_str(&json.stdout).unwrap();
    let yaml: Value = serde_yaml::from_str(&yaml.stdout).unwrap();
    for doc in [&json, &yaml] {
        assert_eq!(doc["pending"], true);
        let names: Vec<&str> = doc["nodes"].as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["node-a", "node-b", "node-d"], "node-c is unchanged");
        assert_eq!(doc["nodes_unchanged"], 1);
        let change = &doc["nodes"][0]["interfaces"][0];
        assert_eq!((&change["action"], &change["name"]), (&Value::from("change"), &Value::from("multinic0")));
        assert_eq!(change["changes"][0], serde_json::json!({"field": "mtu", "old": "1500", "new": "1400"}));
        assert_eq!(doc["nodes"][1]["rejected_rows"][0]["error_code"], "INVALID_ROW");
        assert_eq!(
            (&doc["nodes"][2]["applied_known"], &doc["nodes"][2]["interfaces_desired"]),
            (&Value::Bool(false), &Value::from(1))
        );
    }

    // The agent returns and applies: nothing left to change on node-a.
    let a = TestAgent::start_in(root, &controller.url(), "node-a").await;
    wait_for(&controller, "node-a", Convergence::Converged).await;
    let landed = cli(&controller, &["diff", "--node", "node-a"]).await;
    assert_eq!(landed.code, 0, "applied → exit 0\n{}{}", landed.stdout, landed.stderr);
    assert!(landed.stdout.starts_with("Nothing would change.\n"), "{}", landed.stdout);

    // Every row of node-c goes at once: 4 of 7 interfaces, over the guard.
    sqlx::query("UPDATE multi_interface SET deleted_at = NOW() WHERE port_id LIKE 'c%'").execute(&pool).await.unwrap();
    let held = eventually(WAIT, "the removals held in diff", || async {
        let run = cli(&controller, &["diff", "--node", "node-c"]).await;
        (run.stdout.matches("held").count() == 4).then_some(run)
    })
    .await;
    assert_eq!(held.code, 2, "a held removal is pending\n{}{}", held.stdout, held.stderr);
    golden("diff-held.txt", &held.stdout);
    assert!(c.netplan_file(3).is_some(), "held: the node keeps its interfaces");

    controller.stop().await;
    for agent in [a, b, c] {
        agent.stop().await;
    }
}

/// A change of seven nodes goes out in waves; the canary's agent is away, so
/// the rollout waits on it: `rollout status` shows where it stands in every
/// format, `status` heads with it, `diff` shows the held nodes and why, a
/// resume of a running rollout and an action naming another rollout are
/// refused, and `rollout abort` ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_status_resume_and_abort() {
    use multinic_controller::rollout::{MaxUnavailable, RolloutConfig};
    multinic_testkit::test_logging();
    let Some(db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    for i in 1..=7 {
        insert(&pool, &format!("r{i}"), Some(&format!("node-0{i}")), &format!("fa:16:3e:0e:00:0{i}"), None, 1500).await;
    }
    let controller = TestController::start_adjusted(&db.url(), Duration::from_millis(200), |c| {
        c.rollout = RolloutConfig { threshold: 2, max_unavailable: MaxUnavailable::Count(2) };
    })
    .await;
    // Every node but node-01 (the canary: the first by name) has its agent.
    let mut agents = Vec::new();
    for i in 2..=7 {
        agents.push(TestAgent::start(&controller.url(), &format!("node-0{i}")).await);
    }
    for i in 2..=7 {
        wait_for(&controller, &format!("node-0{i}"), Convergence::Converged).await;
    }
    let none = cli(&controller, &["rollout", "status"]).await;
    assert_eq!(none.code, 0, "no rollout → exit 0\n{}{}", none.stdout, none.stderr);
    assert!(none.stdout.starts_with("No rollout since the controller became active"), "{}", none.stdout);

    sqlx::query("UPDATE multi_interface SET mtu = 1400").execute(&pool).await.unwrap();
    let running = eventually(WAIT, "the rollout in status", || async {
        let run = cli(&controller, &["rollout", "status"]).await;
        run.stdout.starts_with("Rollout 1: running").then_some(run)
    })
    .await;
    assert_eq!(running.code, 2, "a running rollout → exit 2\n{}{}", running.stdout, running.stderr);
    golden("rollout-status.txt", &running.stdout);
    golden("rollout-status-wide.txt", &cli(&controller, &["rollout", "status", "-o", "wide"]).await.stdout);
    let json = cli(&controller, &["rollout", "status", "-o", "json"]).await;
    assert_eq!(json.code, 2);
    golden("rollout-status.json", &json.stdout);
    let yaml = cli(&controller, &["rollout", "status", "-o", "yaml"]).await;
    golden("rollout-status.yaml", &yaml.stdout);
    let json: Value = serde_json::from_str(&json.stdout).unwrap();
    let yaml: Value = serde_yaml::from_str(&yaml.stdout).unwrap();
    for doc in [&json, &yaml] {
        assert_eq!((&doc["id"], &doc["state"]), (&Value::from(1), &Value::from("running")));
        assert_eq!(
            (&doc["nodes_total"], &doc["nodes_released"], &doc["nodes_pending"]),
            (&7.into(), &1.into(), &6.into())
        );
        let sizes: Vec<u64> =
            doc["waves"].as_array().unwrap().iter().map(|w| w["nodes_total"].as_u64().unwrap()).collect();
        assert_eq!(sizes, [1, 2, 2, 2], "a canary, then waves of at most --max-unavailable");
        assert_eq!(
            doc["waves"][0]["nodes"][0],
            serde_json::json!({"name": "node-01", "state": "released", "reason": ""})
        );
    }

    // `status` heads with it: the held nodes still look converged on their previous set.
    let status = cli(&controller, &["status"]).await;
    assert_eq!(status.code, 2, "{}{}", status.stdout, status.stderr);
    assert!(
        status.stdout.starts_with("ROLLOUT 1 RUNNING: 0 of 7 node(s) done, 6 pending, 0 failed\n"),
        "{}",
        status.stdout
    );
    let status: Value = serde_json::from_str(&cli(&controller, &["status", "-o", "json"]).await.stdout).unwrap();
    assert_eq!(status["rollout"]["state"], "running");

    // diff: a held node's change is shown held, with the rollout's reason.
    let held = cli(&controller, &["diff", "--node", "node-03"]).await;
    assert_eq!(held.code, 2, "{}{}", held.stdout, held.stderr);
    assert!(held.stdout.contains("held"), "{}", held.stdout);
    assert!(held.stdout.contains("node-03: held by a rollout: rollout 1"), "{}", held.stdout);
    let held: Value =
        serde_json::from_str(&cli(&controller, &["diff", "--node", "node-03", "-o", "json"]).await.stdout).unwrap();
    assert!(held["nodes"][0]["rollout_hold"].as_str().unwrap().starts_with("rollout 1"), "{held}");
    assert!(agents[1].netplan_file(0).unwrap().contains("mtu: 1500"), "node-03 keeps its previous set");

    let resume = cli(&controller, &["rollout", "resume"]).await;
    assert_eq!(resume.code, 1, "only a stopped rollout resumes\n{}{}", resume.stdout, resume.stderr);
    assert!(resume.stderr.contains("FailedPrecondition"), "{}", resume.stderr);
    let other = cli(&controller, &["rollout", "abort", "9"]).await;
    assert_eq!(other.code, 1, "an action naming another rollout is refused\n{}{}", other.stdout, other.stderr);
    assert!(other.stderr.contains("FailedPrecondition"), "{}", other.stderr);

    let abort = cli(&controller, &["rollout", "abort", "1"]).await;
    assert_eq!(abort.code, 0, "an aborted rollout is not in progress\n{}{}", abort.stdout, abort.stderr);
    golden("rollout-abort.txt", &abort.stdout);
    // Aborted: the nodes not released never get the change (until their rows change again).
    tokio::time::sleep(Duration::from_secs(1)).await;
    for agent in &agents {
        assert!(agent.netplan_file(0).unwrap().contains("mtu: 1500"), "aborted: no push");
    }
    let after = cli(&controller, &["status"]).await;
    assert!(!after.stdout.contains("ROLLOUT"), "{}", after.stdout);

    controller.stop().await;
    for agent in agents {
        agent.stop().await;
    }
}
