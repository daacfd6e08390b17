//! The drift policy with a clock the tests move: when checks are due,
//! repairs with backoff, giving up on a fight, detect-only, and forgiving
//! on a push.

use multinic_proto::InterfaceName;

use super::*;
use crate::reconcile::Verdict;
use crate::reconcile::tests::mac;

const I: Duration = Duration::from_secs(60);

fn policy(repair: bool) -> DriftPolicy {
    DriftPolicy::new(DriftConfig { interval: I, repair })
}

fn mtu_drift() -> Drift {
    Drift {
        name: InterfaceName::new(0, 10).unwrap(),
        kind: DriftKind::Mtu,
        found: "MTU 1300".into(),
        wanted: "MTU 1500".into(),
    }
}

/// MAC 1 drifted (MTU), MAC 2 in line.
fn drifted() -> DriftCheck {
    let mut check = DriftCheck::default();
    check.interfaces.insert(mac(1), Verdict { drifts: vec![mtu_drift()], changed: None });
    check.interfaces.insert(mac(2), Verdict::default());
    check
}

fn statuses() -> Vec<InterfaceStatus> {
    (1..=2).map(|i| InterfaceStatus::applied(mac(i), InterfaceName::new(i - 1, 10).unwrap())).collect()
}

#[test]
fn checks_are_due_an_interval_after_the_last_push_or_check_and_never_when_off() {
    let t0 = Instant::now();
    let mut p = policy(true);
    assert_eq!(p.due_in(t0), None, "nothing applied yet");
    p.pushed(t0);
    assert_eq!(p.due_in(t0), Some(I));
    assert_eq!(p.due_in(t0 + I + I), Some(Duration::ZERO), "overdue is due now");
    p.checked(t0 + I);
    assert_eq!(p.due_in(t0 + I), Some(I));
    p.forget();
    assert_eq!(p.due_in(t0), None, "the controller moved on from the last set");

    let mut off = DriftPolicy::new(DriftConfig::OFF);
    off.pushed(t0);
    assert_eq!(off.due_in(t0 + I), None);
}

#[test]
fn candidates_are_applied_waiting_and_drifted_interfaces() {
    let name = InterfaceName::new(0, 10);
    let statuses = vec![
        InterfaceStatus::applied(mac(1), InterfaceName::new(0, 10).unwrap()),
        InterfaceStatus::problem(mac(2), name, InterfaceState::Waiting, ErrorCode::MacNotPresent, ""),
        InterfaceStatus::problem(mac(3), name, InterfaceState::Failed, ErrorCode::MtuRejected, ""),
        InterfaceStatus::problem(mac(4), name, InterfaceState::Failed, ErrorCode::DriftRepeated, ""),
        InterfaceStatus::problem(mac(5), name, InterfaceState::Refused, ErrorCode::ProtectedInterface, ""),
        InterfaceStatus::problem(mac(6), name, InterfaceState::Failed, ErrorCode::Drifted, ""),
        InterfaceStatus::problem(mac(7), name, InterfaceState::Held, ErrorCode::None, ""),
    ];
    let want: BTreeMap<_, _> = [
        (mac(1), InterfaceState::Applied),
        (mac(2), InterfaceState::Waiting),
        (mac(4), InterfaceState::Applied),
        (mac(6), InterfaceState::Applied),
    ]
    .into();
    assert_eq!(
        DriftPolicy::candidates(&statuses),
        want,
        "failed applies wait for a push; refused and held are not ours"
    );
}

#[test]
fn a_fight_is_repaired_three_times_with_backoff_then_given_up_until_a_push() {
    let t0 = Instant::now();
    let mut p = policy(true);
    p.pushed(t0);
    let mut repaired_at = Vec::new();
    let mut given_up = None;
    // Something undoes the MTU before every check.
    for n in 1..=10u32 {
        let now = t0 + I * n;
        let d = p.decide(&drifted(), &statuses(), now);
        assert!(!d.reconcile.contains(&mac(2)), "the interface in line is never touched");
        if d.repairs.contains_key(&mac(1)) {
            assert_eq!(d.reconcile, BTreeSet::from([mac(1)]));
            repaired_at.push(n);
        }
        if let Some((drifts, message)) = d.given_up.get(&mac(1)) {
            assert_eq!(drifts, &vec![mtu_drift()]);
            given_up.get_or_insert((n, message.clone()));
        }
    }
    assert_eq!(repaired_at, vec![1, 2, 4], "waits 1, 2, then 4 intervals between repairs");
    let (n, message) = given_up.expect("given up");
    assert_eq!(n, 5, "the drift seen after the third repair ends the fight");
    for needle in ["after 3 repairs in 4m00s", "MTU 1300 → MTU 1500", "mtu 5×", "until a new push, or in 1h00m"] {
        assert!(message.contains(needle), "{needle:?} in {message}");
    }
    // Once given up it is reported once (the statuses now say so), then left alone.
    let mut reported = statuses();
    reported[0] =
        InterfaceStatus::problem(mac(1), reported[0].name, InterfaceState::Failed, ErrorCode::DriftRepeated, message);
    for n in 6..=20u32 {
        assert!(p.decide(&drifted(), &reported, t0 + I * n).is_quiet(), "interval {n}");
    }
    // After the long interval: one more round.
    let mut later = p.clone();
    let d = later.decide(&drifted(), &reported, t0 + I * (5 + RETRY_INTERVALS));
    assert!(d.repairs.contains_key(&mac(1)), "{d:?}");
    // A push forgives at once.
    p.pushed(t0 + I * 21);
    let d = p.decide(&drifted(), &statuses(), t0 + I * 22);
    assert!(d.repairs.contains_key(&mac(1)), "{d:?}");
}

#[test]
fn drift_now_and_then_is_repaired_every_time() {
    let t0 = Instant::now();
    let mut p = policy(true);
    p.pushed(t0);
    // An admin changes it once an hour: never a fight (the window is 30 intervals).
    for hour in 1..=5u32 {
        let d = p.decide(&drifted(), &statuses(), t0 + I * 60 * hour);
        assert!(d.repairs.contains_key(&mac(1)) && d.given_up.is_empty(), "hour {hour}: {d:?}");
    }
}

#[test]
fn detect_only_reports_once_then_stays_quiet_and_clears_when_in_line() {
    let t0 = Instant::now();
    let mut p = policy(false);
    p.pushed(t0);
    let d = p.decide(&drifted(), &statuses(), t0 + I);
    assert!(d.reconcile.is_empty() && d.repairs.is_empty(), "nothing repaired: {d:?}");
    let (_, message) = &d.not_repaired[&mac(1)];
    assert!(message.contains("MTU 1300 → MTU 1500") && message.contains("--drift-repair=false"), "{message}");

    let mut reported = statuses();
    reported[0] =
        InterfaceStatus::problem(mac(1), reported[0].name, InterfaceState::Failed, ErrorCode::Drifted, message.clone());
    assert!(p.decide(&drifted(), &reported, t0 + I * 2).is_quiet(), "the same drift is not reported again");
    // Nor a file of a MAC no longer desired, which has no status to say it.
    let mut unwanted = DriftCheck::default();
    let file = Drift { kind: DriftKind::FileUnwanted, ..mtu_drift() };
    unwanted.interfaces.insert(mac(9), Verdict { drifts: vec![file], changed: None });
    assert_eq!(p.decide(&unwanted, &reported, t0 + I * 2).not_repaired.len(), 1);
    assert!(p.decide(&unwanted, &reported, t0 + I * 3).is_quiet());

    let mut in_line = DriftCheck::default();
    in_line.interfaces.insert(mac(1), Verdict::default());
    let d = p.decide(&in_line, &reported, t0 + I * 3);
    assert_eq!(d.back_in_line, BTreeSet::from([mac(1)]));
}

#[test]
fn a_change_that_is_not_drift_is_reconciled_without_a_repair() {
    let t0 = Instant::now();
    let mut p = policy(true);
    let mut check = DriftCheck::default();
    check.interfaces.insert(mac(1), Verdict { drifts: Vec::new(), changed: Some("MAC gone".into()) });
    let d = p.decide(&check, &statuses(), t0);
    assert_eq!(d.reconcile, BTreeSet::from([mac(1)]));
    assert!(d.repairs.is_empty());

    // A failed removal's file is left for the next push.
    let mut check = DriftCheck::default();
    let mut drift = mtu_drift();
    drift.kind = DriftKind::FileUnwanted;
    check.interfaces.insert(mac(9), Verdict { drifts: vec![drift], changed: None });
    let failed = vec![InterfaceStatus::problem(mac(9), None, InterfaceState::Failed, ErrorCode::WriteFailed, "")];
    assert!(p.decide(&check, &failed, t0).is_quiet());
    assert!(p.decide(&check, &[], t0).repairs.contains_key(&mac(9)), "else it is removed");
}

#[test]
fn different_changes_one_after_another_are_no_fight() {
    let t0 = Instant::now();
    let mut p = policy(true);
    p.pushed(t0);
    // An admin at work: a different change on the same interface each minute.
    for (n, kind) in (1..).zip(DriftKind::ALL) {
        let mut check = DriftCheck::default();
        let drift = Drift { kind, ..mtu_drift() };
        check.interfaces.insert(mac(1), Verdict { drifts: vec![drift], changed: None });
        let d = p.decide(&check, &statuses(), t0 + I * n);
        assert!(d.repairs.contains_key(&mac(1)) && d.given_up.is_empty(), "{kind}: {d:?}");
    }
}
