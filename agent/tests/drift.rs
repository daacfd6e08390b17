//! Drift, with the real agent binary in a network namespace (`--apply
//! netlink`, a scripted controller): each kind of drift on a NIC of ours
//! is repaired at the next check and reported; a NIC that is not ours is
//! never touched; a process that keeps undoing the MTU ends in a failed
//! report, not a loop; a steady node checked ten times changes nothing;
//! with `--drift-repair=false` drift is reported and left.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{HTTP, Node, WAIT, assert_state, set, spec, status};
use multinic_proto::{AgentReport, DesiredSet, DriftAction, DriftKind, ErrorCode, InterfaceState, Outcome};
use multinic_testkit::eventually;
use multinic_testkit::netns::{Link, PRIMARY};

const A: &str = "fa:16:3e:00:16:01";
const B: &str = "fa:16:3e:00:16:02";
/// A MAC no longer desired (a file of it put back is drift).
const GONE: &str = "fa:16:3e:00:16:09";
/// A NIC on the node that is not ours.
const FOREIGN: &str = "fa:16:3e:00:16:0f";

/// A node with A (10.16.0.5/24, MTU 1500) and B (MTU 1400) applied, an
/// agent checking every `interval`, and a NIC that is not ours.
async fn applied_node(interval: &str, repair: bool) -> Option<(Node, DesiredSet, u64)> {
    let mut node = Node::new()?;
    node.kernel.add_nic("eth1", A);
    node.kernel.add_nic("eth2", B);
    node.kernel.add_nic("eth9", FOREIGN);
    let mut options = node.options("netlink", "netplan");
    options.extra_args = ["--drift-check-interval", interval, "--http-listen", HTTP]
        .into_iter()
        .map(str::to_owned)
        .chain((!repair).then(|| "--drift-repair=false".to_owned()))
        .collect();
    node.start_with(&options);
    let desired = set(&[spec(A, Some("10.16.0.5/24"), 1500), spec(B, None, 1400)]);
    let nonce = node.controller.push(1, &desired).await;
    let report = node.controller.report(nonce, WAIT, "the first apply", |_| true).await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    node.kernel.settle();
    Some((node, desired, nonce))
}

/// Makes one kind of drift happen on the node.
type Drifts<'a> = dyn Fn() + 'a;

/// The next report on `nonce` that carries drift of `kind`.
async fn drift_report(node: &Node, nonce: u64, kind: DriftKind) -> AgentReport {
    let what = format!("a report of {kind} drift; agent log:\n{}", node.agent().log_text());
    node.controller.report(nonce, WAIT, &what, |r| r.drift.iter().any(|f| f.kind == kind)).await
}

fn state(link: &Link) -> (String, u64, bool, Vec<String>) {
    (link.name.clone(), link.mtu, link.up, link.addresses.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_drift_is_repaired_at_the_next_check_and_nothing_else_moves() {
    let Some((node, _, nonce)) = applied_node("1s", true).await else { return };
    let m0 = node.kernel.link("multinic0").unwrap();
    let m1 = node.kernel.link("multinic1").unwrap();
    let netplan = node.root.path().join("etc/netplan");
    let file0 = node.file("etc/netplan/90-multinic0.yaml").unwrap();
    let file1 = node.file("etc/netplan/91-multinic1.yaml").unwrap();
    let primary = node.kernel.link(PRIMARY).unwrap();
    let routes = node.kernel.default_routes();
    // Someone changes the NIC that is not ours: it is never "repaired".
    node.kernel.ip(&["link", "set", "eth9", "mtu", "1300", "up"]);
    node.kernel.ip(&["addr", "add", "10.99.0.1/24", "dev", "eth9"]);
    let foreign = node.kernel.link("eth9").unwrap();

    let ip = |args: &[&str]| {
        node.kernel.ip(args);
    };
    let write = |name: &str, text: &str| {
        let path = netplan.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    let cases: Vec<(DriftKind, &str, Box<Drifts>)> = vec![
        (DriftKind::Mtu, "MTU 1300", Box::new(|| ip(&["link", "set", "multinic0", "mtu", "1300"]))),
        (
            DriftKind::AddressMissing,
            "no addresses",
            Box::new(|| ip(&["addr", "del", "10.16.0.5/24", "dev", "multinic0"])),
        ),
        (
            DriftKind::AddressExtra,
            "addresses 10.16.0.5/24, 10.16.0.99/24",
            Box::new(|| ip(&["addr", "add", "10.16.0.99/24", "dev", "multinic0"])),
        ),
        (DriftKind::LinkDown, "down", Box::new(|| ip(&["link", "set", "multinic0", "down"]))),
        (
            DriftKind::NameLost,
            "named eth1",
            Box::new(|| {
                ip(&["link", "set", "multinic0", "down"]);
                ip(&["link", "set", "multinic0", "name", "eth1"]);
                ip(&["link", "set", "eth1", "up"]);
            }),
        ),
        (
            DriftKind::FileDeleted,
            "no /etc/netplan/90-multinic0.yaml",
            Box::new(|| std::fs::remove_file(netplan.join("90-multinic0.yaml")).unwrap()),
        ),
        (
            DriftKind::FileEdited,
            "/etc/netplan/90-multinic0.yaml edited (says MAC fa:16:3e:00:16:01, MTU 9000",
            Box::new(|| write("90-multinic0.yaml", &file0.replace("mtu: 1500", "mtu: 9000"))),
        ),
        (
            DriftKind::FileUnwanted,
            "/etc/netplan/92-multinic2.yaml for MAC fa:16:3e:00:16:09",
            Box::new(|| write("92-multinic2.yaml", &file0.replace(A, GONE).replace("multinic0", "multinic2"))),
        ),
    ];
    for (kind, found, drift) in cases {
        let before = node.controller.reports().len();
        drift();
        let report = drift_report(&node, nonce, kind).await;
        assert!(node.controller.reports().len() > before);
        let finding = report.drift.iter().find(|f| f.kind == kind).unwrap();
        assert!(finding.found.starts_with(found), "{kind}: {:?}", finding.found);
        assert_eq!(finding.action, DriftAction::Repaired, "{kind}: {finding:?}");
        assert_eq!(report.outcome, Outcome::Applied, "{kind}: {report:?}");
        // Back as applied; the other interface and everything else as they were.
        node.kernel.settle();
        assert_eq!(state(&node.kernel.link_by_mac(A).unwrap()), state(&m0), "{kind}");
        assert_eq!(node.kernel.link("multinic1").unwrap(), m1, "{kind}: the other interface moved");
        assert_eq!(node.file("etc/netplan/90-multinic0.yaml").unwrap(), file0, "{kind}");
        assert_eq!(node.file("etc/netplan/91-multinic1.yaml").unwrap(), file1, "{kind}");
        assert_eq!(node.netplan_files(), vec!["90-multinic0.yaml", "91-multinic1.yaml"], "{kind}");
        assert_eq!(node.kernel.link(PRIMARY).unwrap(), primary, "{kind}");
        assert_eq!(node.kernel.default_routes(), routes, "{kind}");
        assert_eq!(node.kernel.link("eth9").unwrap(), foreign, "{kind}: not ours, never repaired");
        let repaired = node.agent().events("repaired drift");
        let line = repaired.iter().find(|e| e["kind"] == kind.as_str()).unwrap_or_else(|| panic!("{repaired:?}"));
        assert!(line["from"].as_str().unwrap().starts_with(found) && line["to"].is_string(), "{line}");
    }
    let metrics = node.metrics().await;
    for kind in DriftKind::ALL {
        assert!(metrics.get("multinic_agent_drift_repairs_total", &[("kind", kind.as_str())]) >= 1.0, "{kind}");
    }
    assert!(node.file("etc/netplan/92-multinic2.yaml").is_none());
}

/// The scenario of the issue: MTU set by hand, the address deleted and our
/// file deleted, all at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mtu_set_by_hand_a_deleted_address_and_a_deleted_file_are_repaired_together() {
    let Some((node, _, nonce)) = applied_node("2s", true).await else { return };
    let applied = node.kernel.link("multinic0").unwrap();
    let file = node.file("etc/netplan/90-multinic0.yaml").unwrap();
    // Right after a check, so that the next one (2 s later) finds all three
    // changes at once, however loaded the machine.
    let checks = node.metrics().await.get("multinic_agent_drift_checks_total", &[]);
    eventually(WAIT, "a drift check", || async {
        (node.metrics().await.get("multinic_agent_drift_checks_total", &[]) > checks).then_some(())
    })
    .await;
    node.kernel.ip(&["link", "set", "multinic0", "mtu", "1300"]);
    node.kernel.ip(&["addr", "del", "10.16.0.5/24", "dev", "multinic0"]);
    std::fs::remove_file(node.root.path().join("etc/netplan/90-multinic0.yaml")).unwrap();

    let report = drift_report(&node, nonce, DriftKind::Mtu).await;
    let mut found: Vec<_> = report.drift.iter().map(|f| (f.name.to_string(), f.kind, f.action)).collect();
    found.sort();
    assert_eq!(
        found,
        vec![
            ("multinic0".into(), DriftKind::Mtu, DriftAction::Repaired),
            ("multinic0".into(), DriftKind::AddressMissing, DriftAction::Repaired),
            ("multinic0".into(), DriftKind::FileDeleted, DriftAction::Repaired),
        ]
    );
    assert_state(&report, A, InterfaceState::Applied, ErrorCode::None);
    assert_eq!(node.kernel.link("multinic0").unwrap(), applied);
    assert_eq!(node.file("etc/netplan/90-multinic0.yaml").unwrap(), file);
    let summary = node.agent().events("the drift check found the node out of line");
    assert_eq!(summary.len(), 1, "one check found it, one repair: {summary:?}");
    assert_eq!(summary[0]["rollbacks"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_node_checked_ten_times_writes_nothing_and_asks_nothing() {
    let Some((node, _, _)) = applied_node("200ms", true).await else { return };
    let files = |node: &Node| {
        ["90-multinic0.yaml", "91-multinic1.yaml"]
            .map(|f| node.root.path().join("etc/netplan").join(f).metadata().unwrap())
            .map(|m| (m.ino(), m.mtime_nsec(), m.mode()))
    };
    let before = (files(&node), node.kernel.links());
    let metrics = node.metrics().await;
    let counters = |m: &multinic_testkit::scrape::Metrics| {
        (
            m.get("multinic_agent_drift_checks_total", &[]),
            m.get("multinic_agent_file_changes_total", &[]),
            m.get("multinic_agent_netlink_changes_total", &[]),
            m.get("multinic_agent_applies_total", &[]),
        )
    };
    let (checks, file_changes, netlink_changes, applies) = counters(&metrics);
    let reports = node.controller.reports().len();
    let mut monitor = Command::new("ip")
        .args(["-n", node.kernel.name(), "monitor", "link", "address"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let after = eventually(WAIT, "ten more drift checks", || async {
        let m = node.metrics().await;
        (counters(&m).0 >= checks + 10.0).then_some(m)
    })
    .await;
    monitor.kill().unwrap();
    let events = String::from_utf8(monitor.wait_with_output().unwrap().stdout).unwrap();
    assert_eq!(events, "", "the kernel saw changes while the node was only checked");
    assert_eq!(
        (counters(&after).1, counters(&after).2, counters(&after).3),
        (file_changes, netlink_changes, applies),
        "no file change, no mutating netlink request, no apply"
    );
    assert_eq!((files(&node), node.kernel.links()), before);
    assert_eq!(node.controller.reports().len(), reports, "nothing to report");
    assert!(node.agent().events("repaired drift").is_empty());
}

/// Undoes the MTU of multinic0 every second, like a daemon with another
/// idea of it. Killed on drop.
struct Fighter(Child);

impl Fighter {
    fn start(namespace: &str) -> Self {
        let script = "while true; do ip link set multinic0 mtu 1300 2>/dev/null; sleep 1; done";
        // No pipe of ours: a `sleep` outliving the kill holds nothing open.
        let child = Command::new("ip")
            .args(["netns", "exec", namespace, "sh", "-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self(child)
    }
}

impl Drop for Fighter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_undoes_the_mtu_every_second_ends_in_a_failed_report_not_a_loop() {
    let Some((node, _, nonce)) = applied_node("1s", true).await else { return };
    let m1 = node.kernel.link("multinic1").unwrap();
    let fighter = Fighter::start(node.kernel.name());
    let what = format!("DRIFT_REPEATED reported; agent log:\n{}", node.agent().log_text());
    let report = node
        .controller
        .report(nonce, Duration::from_secs(60), &what, |r| {
            r.interfaces.iter().any(|s| s.code == ErrorCode::DriftRepeated)
        })
        .await;
    assert_eq!(report.outcome, Outcome::Partial);
    assert_state(&report, A, InterfaceState::Failed, ErrorCode::DriftRepeated);
    assert_state(&report, B, InterfaceState::Applied, ErrorCode::None);
    let message = &status(&report, A).message;
    for needle in ["after 3 repairs", "MTU 1300 → MTU 1500", "keeps changing it", "until a new push"] {
        assert!(message.contains(needle), "{needle:?} in {message}");
    }
    assert!(report.drift.iter().any(|f| f.kind == DriftKind::Mtu && f.action == DriftAction::GivenUp));
    let repairs = node.agent().events("repaired drift").len();
    assert_eq!(repairs, 3, "the bounded tries");

    // No loop: five more intervals, no repair, no netlink request.
    let netlink = node.metrics().await.get("multinic_agent_netlink_changes_total", &[]);
    let checks = node.metrics().await.get("multinic_agent_drift_checks_total", &[]);
    eventually(WAIT, "five more checks", || async {
        (node.metrics().await.get("multinic_agent_drift_checks_total", &[]) >= checks + 5.0).then_some(())
    })
    .await;
    let metrics = node.metrics().await;
    assert_eq!(metrics.get("multinic_agent_netlink_changes_total", &[]), netlink);
    assert_eq!(metrics.get("multinic_agent_drift_unrepaired", &[]), 1.0);
    assert_eq!(node.agent().events("repaired drift").len(), repairs);
    assert_eq!(node.kernel.link("multinic1").unwrap(), m1, "the other interface untouched throughout");
    drop(fighter);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_repair_off_drift_is_reported_and_left_until_it_is_set_back() {
    let Some((node, _, nonce)) = applied_node("1s", false).await else { return };
    node.kernel.ip(&["link", "set", "multinic0", "mtu", "1300"]);
    let report = drift_report(&node, nonce, DriftKind::Mtu).await;
    assert_state(&report, A, InterfaceState::Failed, ErrorCode::Drifted);
    assert!(status(&report, A).message.contains("--drift-repair=false"), "{report:?}");
    assert_eq!(report.drift[0].action, DriftAction::NotRepaired);
    let checks = node.metrics().await.get("multinic_agent_drift_checks_total", &[]);
    eventually(WAIT, "three more checks", || async {
        (node.metrics().await.get("multinic_agent_drift_checks_total", &[]) >= checks + 3.0).then_some(())
    })
    .await;
    assert_eq!(node.kernel.link("multinic0").unwrap().mtu, 1300, "left as found");

    node.kernel.ip(&["link", "set", "multinic0", "mtu", "1500"]);
    let what = "back as applied";
    let report = node
        .controller
        .report(nonce, WAIT, what, |r| r.interfaces.iter().all(|s| s.state == InterfaceState::Applied))
        .await;
    assert!(report.drift.is_empty());
}

/// End to end with the real controller binary and a private MariaDB: a
/// repair given up sets the row's `netplan_success` to 0, the controller
/// counts what the agent found and did, and a new push tries again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_given_up_sets_netplan_success_to_0_and_a_new_push_tries_again() {
    use multinic_testkit::agent_process::AgentProcess;
    use multinic_testkit::mariadb::MariaDb;
    use multinic_testkit::process::{ControllerProcess, controller_beside};
    use multinic_testkit::rows::{NewRow, wait_netplan_success};
    use multinic_testkit::scrape::Metrics;

    let Some(mut node) = Node::new() else { return };
    let Some(db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    let logs = tempfile::tempdir().unwrap();
    let binary = controller_beside(env!("CARGO_BIN_EXE_multinic-agent"));
    let controller = ControllerProcess::start(
        &binary,
        &db.url(),
        multinic_testkit::free_addr(),
        &logs.path().join("controller.log"),
        &[],
    )
    .await;
    controller.wait_ready().await;
    node.kernel.add_nic("eth1", A);
    node.kernel.add_nic("eth2", B);
    let port = node.kernel.forward_to(controller.grpc);
    let mut options = node.options("netlink", "netplan");
    options.controller = format!("127.0.0.1:{port}");
    options.extra_args = ["--drift-check-interval", "1s", "--http-listen", HTTP].map(str::to_owned).to_vec();
    let a = NewRow::new("a", "node-under-test", A).address(Some("10.16.1.5"), Some("10.16.1.0/24")).insert(&pool).await;
    let b = NewRow::new("b", "node-under-test", B).mtu(1400).insert(&pool).await;
    node.agent = Some(AgentProcess::start(&options));
    wait_netplan_success(&pool, a, 1).await;
    wait_netplan_success(&pool, b, 1).await;

    let fighter = Fighter::start(node.kernel.name());
    wait_netplan_success(&pool, a, 0).await;
    assert_eq!(multinic_testkit::rows::netplan_success(&pool, b).await, 1, "the other row stays 1");
    let metrics = Metrics::scrape(controller.http).await;
    let count =
        |action| metrics.get("multinic_controller_drift_findings_total", &[("kind", "mtu"), ("action", action)]);
    assert_eq!((count("repaired"), count("given_up")), (3.0, 1.0), "{}", controller.log());
    drop(fighter);

    // A new push (the row's MTU changes) applies the interface again.
    sqlx::query("UPDATE multi_interface SET mtu = 1450 WHERE port_id = 'a'").execute(&pool).await.unwrap();
    wait_netplan_success(&pool, a, 1).await;
    assert_eq!(node.kernel.link("multinic0").unwrap().mtu, 1450);
}
