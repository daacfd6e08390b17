//! The worker without any stream: commands in, reports out, against the
//! real reconciler on an in-memory kernel and a temporary host root.

use multinic_proto::ErrorCode;

use super::drift::DriftConfig;
use super::*;
use crate::kernel::LinkOps;
use crate::reconcile::ApplyMode;
use crate::reconcile::tests::{link, mac, node, spec};

fn worker(reconciler: Reconciler) -> (Worker, Arc<AgentStatus>) {
    let status = Arc::new(AgentStatus::new());
    let worker = Worker::new(Arc::new(reconciler), status.clone(), Duration::from_secs(60), CancellationToken::new());
    (worker, status)
}

fn push(generation: u64, nonce: u64, set: &DesiredSet) -> Command {
    Command::Push(DesiredPush { generation, nonce, set: set.clone() })
}

fn state(report: &AgentReport, i: u8) -> (InterfaceState, ErrorCode) {
    let status = report.interfaces.iter().find(|s| s.mac == mac(i)).unwrap_or_else(|| panic!("{i}: {report:?}"));
    (status.state, status.code)
}

#[tokio::test]
async fn a_push_is_answered_and_a_nic_that_appears_is_reported_on_the_same_push() {
    let dir = tempfile::tempdir().unwrap();
    let (reconciler, kernel) = node(dir.path(), ApplyMode::Netlink, vec![link(2, "eth1", 1)]);
    let (mut worker, status) = worker(reconciler);
    assert!(worker.due(0).is_none(), "nothing applied, nothing to look for");
    let set = DesiredSet::new([spec(1, Some("10.0.1.5/24"), 1500), spec(2, Some("10.0.2.5/24"), 1500)]).unwrap();

    let report = worker.handle(push(3, 11, &set)).await.unwrap().expect("a push is always answered");
    assert_eq!((report.generation, report.nonce, report.outcome), (3, 11, Outcome::Partial));
    assert_eq!(report.digest.as_ref(), Some(set.digest()));
    assert_eq!(state(&report, 1), (InterfaceState::Applied, ErrorCode::None));
    assert_eq!(state(&report, 2), (InterfaceState::Waiting, ErrorCode::MacNotPresent));
    assert_eq!(status.pushes(), 1);
    let hello = worker.hello(&"node-a".parse().unwrap());
    assert_eq!((hello.applied_digest.as_ref(), hello.interfaces.len()), (Some(set.digest()), 2));

    // The worker schedules its own rechecks while a NIC waits, for the
    // nonce the session gives it.
    let Some((after, Command::Recheck { nonce: 12 })) = worker.due(12) else { panic!("a recheck is due") };
    assert_eq!(after, WAITING_POLL);
    assert!(worker.handle(Command::Recheck { nonce: 12 }).await.unwrap().is_none(), "nothing appeared yet");

    kernel.plug(link(3, "eth7", 2));
    let report = worker.handle(Command::Recheck { nonce: 12 }).await.unwrap().expect("B appeared");
    assert_eq!((report.generation, report.nonce, report.outcome), (3, 12, Outcome::Applied));
    assert_eq!(report.digest.as_ref(), Some(set.digest()));
    assert_eq!(state(&report, 1), (InterfaceState::Applied, ErrorCode::None), "A is still reported");
    assert_eq!(state(&report, 2), (InterfaceState::Applied, ErrorCode::None));
    assert_eq!(status.pushes(), 1, "a recheck is not a push");
    assert_eq!(status.count_in(&[InterfaceState::Applied]), 2, "GET / and Hello see it");
    assert!(worker.due(12).is_none(), "nothing waits any more");
}

#[tokio::test]
async fn a_malformed_push_is_rejected_changes_nothing_and_ends_the_rechecks() {
    let dir = tempfile::tempdir().unwrap();
    let (reconciler, kernel) = node(dir.path(), ApplyMode::Netlink, vec![]);
    let (mut worker, status) = worker(reconciler);
    let set = DesiredSet::new([spec(1, None, 1500)]).unwrap();
    worker.handle(push(1, 5, &set)).await.unwrap();
    assert!(worker.due(5).is_some(), "MAC 1 waits");
    let (files, links) = (std::fs::read_dir(dir.path().join("etc/netplan")).unwrap().count(), kernel.state());

    let error = ParseError::DigestMismatch { claimed: "aa".into(), actual: "bb".into() };
    let digest = Digest::from_wire("aa");
    let rejected = RejectedPush { generation: 2, nonce: 6, digest: digest.clone(), error };
    let report = worker.handle(Command::Reject(rejected)).await.unwrap().expect("answered");
    assert_eq!((report.generation, report.nonce, report.outcome), (2, 6, Outcome::Rejected));
    assert_eq!(report.digest, digest);
    assert!(report.interfaces.is_empty() && report.error.contains("digest"), "{report:?}");
    assert!(worker.due(6).is_none(), "the controller moved on: no more reports on the old push");
    assert_eq!(std::fs::read_dir(dir.path().join("etc/netplan")).unwrap().count(), files);
    assert_eq!(kernel.state(), links);
    assert_eq!(status.processed().generation, 1, "Hello still names what was last applied");

    // A later push is applied as usual.
    let report = worker.handle(push(3, 7, &set)).await.unwrap().unwrap();
    assert_eq!((report.generation, report.nonce, state(&report, 1).0), (3, 7, InterfaceState::Waiting));
}

/// A worker that checks for drift every `interval` (`repair`: repairs it),
/// with A (MAC 1, 10.0.1.5/24, MTU 1500) and B (MAC 2) applied.
async fn drift_worker(
    dir: &std::path::Path,
    interval: Duration,
    repair: bool,
) -> (Worker, Arc<AgentStatus>, Arc<crate::kernel::memory::MemoryKernel>, DesiredSet) {
    let (reconciler, kernel) = node(dir, ApplyMode::Netlink, vec![link(2, "eth1", 1), link(3, "eth2", 2)]);
    let (worker, status) = worker(reconciler);
    let mut worker = worker.with_drift(DriftConfig { interval, repair });
    let set = DesiredSet::new([spec(1, Some("10.0.1.5/24"), 1500), spec(2, None, 1500)]).unwrap();
    let report = worker.handle(push(1, 5, &set)).await.unwrap().unwrap();
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    (worker, status, kernel, set)
}

fn set_mtu(kernel: &crate::kernel::memory::MemoryKernel, index: u32, mtu: u32) {
    kernel.edit(|s| s.links.iter_mut().find(|l| l.index == index).unwrap().mtu = mtu);
}

fn metric(status: &AgentStatus, series: &str) -> f64 {
    let text = status.render_metrics();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[tokio::test]
async fn a_steady_node_checked_ten_times_makes_no_write_no_netlink_request_and_no_report() {
    let dir = tempfile::tempdir().unwrap();
    let (mut worker, status, kernel, _) = drift_worker(dir.path(), Duration::from_secs(60), true).await;
    let Some((after, Command::Check { nonce: 5 })) = worker.due(5) else { panic!("a check is scheduled") };
    assert!(after > Duration::from_secs(59), "one interval after the push: {after:?}");
    let (files, requests) =
        (worker.reconciler.files().writes() + worker.reconciler.files().removals(), kernel.changes());
    for _ in 0..10 {
        assert!(worker.handle(Command::Check { nonce: 5 }).await.unwrap().is_none(), "nothing to say");
    }
    let files_after = worker.reconciler.files().writes() + worker.reconciler.files().removals();
    assert_eq!((files_after, kernel.changes()), (files, requests), "no write, no mutating netlink request");
    assert_eq!(metric(&status, "multinic_agent_drift_checks_total"), 10.0);
    assert_eq!(status.pushes(), 1);
}

#[tokio::test]
async fn drift_is_repaired_on_that_interface_only_and_reported_on_the_last_push() {
    let dir = tempfile::tempdir().unwrap();
    let (mut worker, status, kernel, set) = drift_worker(dir.path(), Duration::from_secs(60), true).await;
    set_mtu(&kernel, 2, 1300);
    kernel.edit(|s| s.links.iter_mut().find(|l| l.index == 2).unwrap().addresses.clear());
    std::fs::remove_file(dir.path().join("etc/netplan/90-multinic0.yaml")).unwrap();
    let b_before = kernel.state().links.into_iter().find(|l| l.index == 3).unwrap();

    let report = worker.handle(Command::Check { nonce: 8 }).await.unwrap().expect("drift is reported");
    assert_eq!((report.generation, report.nonce, report.outcome), (1, 8, Outcome::Applied));
    assert_eq!(report.digest.as_ref(), Some(set.digest()));
    assert_eq!(state(&report, 1), (InterfaceState::Applied, ErrorCode::None));
    let mut kinds: Vec<_> = report.drift.iter().map(|f| (f.mac, f.kind, f.action)).collect();
    kinds.sort();
    use multinic_proto::{DriftAction, DriftKind};
    assert_eq!(
        kinds,
        vec![
            (mac(1), DriftKind::Mtu, DriftAction::Repaired),
            (mac(1), DriftKind::AddressMissing, DriftAction::Repaired),
            (mac(1), DriftKind::FileDeleted, DriftAction::Repaired),
        ]
    );
    let a = kernel.state().links.into_iter().find(|l| l.index == 2).unwrap();
    assert_eq!((a.mtu, a.managed_addresses().len()), (1500, 1), "{a:?}");
    assert!(dir.path().join("etc/netplan/90-multinic0.yaml").exists());
    assert_eq!(kernel.state().links.into_iter().find(|l| l.index == 3).unwrap(), b_before, "B untouched");
    assert_eq!(metric(&status, "multinic_agent_drift_repairs_total{kind=\"mtu\"}"), 1.0);
    assert_eq!(metric(&status, "multinic_agent_drift_repairs_total{kind=\"file_deleted\"}"), 1.0);
    assert!(worker.handle(Command::Check { nonce: 8 }).await.unwrap().is_none(), "in line again");
}

#[tokio::test]
async fn a_fight_over_the_mtu_ends_in_a_failed_report_not_a_loop() {
    let dir = tempfile::tempdir().unwrap();
    let interval = Duration::from_millis(20);
    let (mut worker, status, kernel, _) = drift_worker(dir.path(), interval, true).await;
    let mut repairs = 0;
    let mut failed = None;
    for _ in 0..30 {
        set_mtu(&kernel, 2, 1300);
        tokio::time::sleep(interval).await;
        let Some(report) = worker.handle(Command::Check { nonce: 5 }).await.unwrap() else { continue };
        use multinic_proto::DriftAction;
        repairs += report.drift.iter().filter(|f| f.action == DriftAction::Repaired).count();
        if report.drift.iter().any(|f| f.action == DriftAction::GivenUp) {
            failed = Some(report);
            break;
        }
    }
    let report = failed.expect("given up after the bounded repairs");
    assert_eq!(repairs, super::drift::MAX_REPAIRS);
    assert_eq!(report.outcome, Outcome::Partial);
    assert_eq!(state(&report, 1), (InterfaceState::Failed, ErrorCode::DriftRepeated));
    assert_eq!(state(&report, 2), (InterfaceState::Applied, ErrorCode::None));
    let message = &report.interfaces.iter().find(|s| s.mac == mac(1)).unwrap().message;
    assert!(message.contains("MTU 1300 → MTU 1500") && message.contains("keeps changing it"), "{message}");
    // Left alone from now on: no repair, no netlink request, no report.
    let requests = kernel.changes();
    for _ in 0..10 {
        set_mtu(&kernel, 2, 1300);
        tokio::time::sleep(interval).await;
        assert!(worker.handle(Command::Check { nonce: 5 }).await.unwrap().is_none());
    }
    assert_eq!(kernel.changes(), requests, "no more repairs");
    assert_eq!(metric(&status, "multinic_agent_drift_unrepaired"), 1.0);
}

#[tokio::test]
async fn with_repair_off_drift_is_reported_failed_until_it_is_set_back() {
    let dir = tempfile::tempdir().unwrap();
    let (mut worker, status, kernel, _) = drift_worker(dir.path(), Duration::from_secs(60), false).await;
    set_mtu(&kernel, 2, 1300);
    let requests = kernel.changes();
    let report = worker.handle(Command::Check { nonce: 5 }).await.unwrap().expect("reported");
    assert_eq!(state(&report, 1), (InterfaceState::Failed, ErrorCode::Drifted));
    assert_eq!(report.drift.len(), 1);
    assert_eq!(report.drift[0].action, multinic_proto::DriftAction::NotRepaired);
    assert_eq!(kernel.changes(), requests, "nothing repaired");
    assert!(worker.handle(Command::Check { nonce: 5 }).await.unwrap().is_none(), "said once");
    assert_eq!(
        status.processed().interfaces.iter().filter(|s| s.code == ErrorCode::Drifted).count(),
        1,
        "Hello says so"
    );

    set_mtu(&kernel, 2, 1500);
    let report = worker.handle(Command::Check { nonce: 5 }).await.unwrap().expect("back in line is news");
    assert_eq!(state(&report, 1), (InterfaceState::Applied, ErrorCode::None));
    assert!(report.drift.is_empty());
}
