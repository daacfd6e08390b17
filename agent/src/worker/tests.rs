//! The worker without any stream: commands in, reports out, against the
//! real reconciler on an in-memory kernel and a temporary host root.

use multinic_proto::ErrorCode;

use super::*;
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
