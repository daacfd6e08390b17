//! What the worker does about drift: when the node is checked, which
//! interfaces are, and whether a drifted interface is repaired, reported
//! only, or no longer repaired because something keeps undoing it.
//!
//! Pure: instants in, decisions out (the worker supplies the clock and runs
//! the check and the repair). The rules:
//!
//! - a check every `--drift-check-interval` after the last push or check;
//! - checked: interfaces last reported applied or waiting, and those this
//!   module reported drifted; any file of ours that should not be there;
//! - with `--drift-repair=false` a drifted interface is reported failed
//!   (`DRIFTED`) until it is in line again;
//! - otherwise it is repaired; the same kind of drift on one interface at
//!   most [`MAX_REPAIRS`] times per [`WINDOW_INTERVALS`] intervals, waiting
//!   1, 2, 4… intervals between repairs of it; that kind seen again after
//!   that is a fight with something on the node (a daemon, an admin, a
//!   script): the interface is reported failed (`DRIFT_REPEATED`, what
//!   changed and how often) and left alone until a new push or
//!   [`RETRY_INTERVALS`] intervals later. Never a loop. (Different changes
//!   one after another, an admin at work, are no fight.)
//!
//! It never touches the node and never decides what drifted (the
//! reconciler's check does).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use multinic_proto::{DriftKind, ErrorCode, InterfaceState, InterfaceStatus, MacAddress};

use crate::reconcile::{Drift, DriftCheck};

/// Repairs of one kind of drift on one interface within the window before
/// the agent stops.
pub const MAX_REPAIRS: usize = 3;
/// The window repairs are counted in, in check intervals (30 min at 60 s).
pub const WINDOW_INTERVALS: u32 = 30;
/// How long an interface given up stays alone, in check intervals (1 h at
/// 60 s), unless a push comes first.
pub const RETRY_INTERVALS: u32 = 60;

/// `--drift-check-interval` and `--drift-repair`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriftConfig {
    /// Between checks; zero turns checks off.
    pub interval: Duration,
    /// Whether drift is repaired (else only reported).
    pub repair: bool,
}

impl DriftConfig {
    /// No checks at all.
    pub const OFF: Self = Self { interval: Duration::ZERO, repair: false };
}

/// One interface's history of drift, per kind.
#[derive(Debug, Clone, Default)]
struct Tracker {
    /// When each kind was repaired, within the window.
    repairs: BTreeMap<DriftKind, Vec<Instant>>,
    /// Each kind is not repaired again before this.
    next_repair: BTreeMap<DriftKind, Instant>,
    /// Given up until then.
    given_up_until: Option<Instant>,
    /// How often each kind was seen since its first repair in the window.
    seen: BTreeMap<DriftKind, u32>,
    /// What was last reported of it without a repair (`--drift-repair=false`).
    reported: Option<String>,
}

/// What to do after a check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// MACs a scoped reconcile runs for: repairs, and interfaces whose
    /// state changed (it touches nothing of those).
    pub reconcile: BTreeSet<MacAddress>,
    /// Drift being repaired now (by that reconcile), per MAC.
    pub repairs: BTreeMap<MacAddress, Vec<Drift>>,
    /// Drift no longer repaired, per MAC, with the status to report.
    pub given_up: BTreeMap<MacAddress, (Vec<Drift>, String)>,
    /// Drift reported only (`--drift-repair=false`), with the status message.
    pub not_repaired: BTreeMap<MacAddress, (Vec<Drift>, String)>,
    /// Drift seen while its interface waits for its next repair (backoff).
    pub deferred: BTreeMap<MacAddress, Vec<Drift>>,
    /// Interfaces reported drifted that are in line again.
    pub back_in_line: BTreeSet<MacAddress>,
}

impl Decision {
    /// Whether the check calls for nothing (no reconcile, no report).
    pub fn is_quiet(&self) -> bool {
        self.reconcile.is_empty()
            && self.given_up.is_empty()
            && self.not_repaired.is_empty()
            && self.back_in_line.is_empty()
    }
}

/// The drift schedule and every interface's history.
#[derive(Debug, Clone)]
pub struct DriftPolicy {
    config: DriftConfig,
    next_check: Option<Instant>,
    trackers: BTreeMap<MacAddress, Tracker>,
}

impl DriftPolicy {
    pub fn new(config: DriftConfig) -> Self {
        Self { config, next_check: None, trackers: BTreeMap::new() }
    }

    pub fn config(&self) -> DriftConfig {
        self.config
    }

    /// How long until the next check from `now` (zero: due), `None` when
    /// checks are off or nothing was applied yet.
    pub fn due_in(&self, now: Instant) -> Option<Duration> {
        if self.config.interval.is_zero() {
            return None;
        }
        self.next_check.map(|at| at.saturating_duration_since(now))
    }

    /// A push was applied at `now`: its own reconcile set everything as
    /// desired, so every interface's history is forgotten and the next
    /// check is one interval away.
    pub fn pushed(&mut self, now: Instant) {
        self.trackers.clear();
        self.next_check = Some(now + self.config.interval);
    }

    /// The controller moved on from the last set: nothing to check.
    pub fn forget(&mut self) {
        self.trackers.clear();
        self.next_check = None;
    }

    /// A check ran at `now`; the next one is one interval later.
    pub fn checked(&mut self, now: Instant) {
        self.next_check = Some(now + self.config.interval);
    }

    /// The interfaces to check among `statuses` (the last push's), with
    /// the state they should be in: applied or waiting ones, and those
    /// reported drifted (which should be applied).
    pub fn candidates(statuses: &[InterfaceStatus]) -> BTreeMap<MacAddress, InterfaceState> {
        statuses
            .iter()
            .filter_map(|s| match (s.state, s.code) {
                (InterfaceState::Applied | InterfaceState::Waiting, _) => Some((s.mac, s.state)),
                (InterfaceState::Failed, ErrorCode::DriftRepeated | ErrorCode::Drifted) => {
                    Some((s.mac, InterfaceState::Applied))
                }
                _ => None,
            })
            .collect()
    }

    /// Decides, at `now`, what to do about `check` of the interfaces whose
    /// last statuses are `statuses`.
    pub fn decide(&mut self, check: &DriftCheck, statuses: &[InterfaceStatus], now: Instant) -> Decision {
        let mut decision = Decision::default();
        let interval = self.config.interval;
        let window = interval.saturating_mul(WINDOW_INTERVALS);
        for (mac, verdict) in &check.interfaces {
            let status = statuses.iter().find(|s| s.mac == *mac);
            // A removal that failed waits for the next push, like any failed apply.
            if status.is_some_and(|s| s.state == InterfaceState::Failed && !is_drift(s.code)) {
                continue;
            }
            let reported = status.map(|s| s.code);
            if verdict.in_line() {
                if reported.is_some_and(is_drift) {
                    decision.back_in_line.insert(*mac);
                    self.trackers.remove(mac);
                }
                continue;
            }
            if verdict.drifts.is_empty() {
                decision.reconcile.insert(*mac);
                continue;
            }
            let drifts = verdict.drifts.clone();
            if !self.config.repair {
                let message =
                    format!("drifted from what was applied: {}; not repaired (--drift-repair=false)", said(&drifts));
                let tracker = self.trackers.entry(*mac).or_default();
                if tracker.reported.as_deref() != Some(message.as_str()) {
                    tracker.reported = Some(message.clone());
                    decision.not_repaired.insert(*mac, (drifts, message));
                }
                continue;
            }
            let tracker = self.trackers.entry(*mac).or_default();
            if let Some(until) = tracker.given_up_until {
                if now < until {
                    continue;
                }
                // The long interval passed: one more round of repairs.
                *tracker = Tracker::default();
            }
            for (kind, at) in &mut tracker.repairs {
                at.retain(|t| now.saturating_duration_since(*t) < window);
                if at.is_empty() {
                    tracker.seen.remove(kind);
                }
            }
            tracker.repairs.retain(|_, at| !at.is_empty());
            for drift in &drifts {
                *tracker.seen.entry(drift.kind).or_default() += 1;
            }
            let kinds: BTreeSet<DriftKind> = drifts.iter().map(|d| d.kind).collect();
            let repaired = |kind: &DriftKind| tracker.repairs.get(kind).map_or(0, Vec::len);
            if let Some(fought) = kinds.iter().copied().filter(|k| repaired(k) >= MAX_REPAIRS).min() {
                let retry = interval.saturating_mul(RETRY_INTERVALS);
                let first = tracker.repairs[&fought].first().copied().unwrap_or(now);
                let message = format!(
                    "drifted again after {} repairs in {}: {} (seen: {}); something on the node keeps changing it \
                     (a daemon, an admin, a script): not repaired again until a new push, or in {}",
                    repaired(&fought),
                    human(now.saturating_duration_since(first)),
                    said(&drifts),
                    kinds
                        .iter()
                        .map(|k| format!("{k} {}×", tracker.seen.get(k).copied().unwrap_or(0)))
                        .collect::<Vec<_>>()
                        .join(", "),
                    human(retry),
                );
                tracker.given_up_until = Some(now + retry);
                decision.given_up.insert(*mac, (drifts, message));
                continue;
            }
            if kinds.iter().any(|k| tracker.next_repair.get(k).is_some_and(|at| now < *at)) {
                decision.deferred.insert(*mac, drifts);
                continue;
            }
            for kind in kinds {
                let at = tracker.repairs.entry(kind).or_default();
                at.push(now);
                let backoff = interval.saturating_mul(1 << (at.len() - 1).min(16));
                tracker.next_repair.insert(kind, now + backoff);
            }
            decision.reconcile.insert(*mac);
            decision.repairs.insert(*mac, drifts);
        }
        // What is in line now is reported again when it drifts again.
        for (mac, tracker) in &mut self.trackers {
            if check.interfaces.get(mac).is_none_or(|v| v.in_line()) {
                tracker.reported = None;
            }
        }
        decision
    }
}

/// Whether `code` is one this module reports.
pub fn is_drift(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::DriftRepeated | ErrorCode::Drifted)
}

/// `MTU 1300 → MTU 1500; down → up`.
fn said(drifts: &[Drift]) -> String {
    drifts.iter().map(|d| format!("{} → {}", d.found, d.wanted)).collect::<Vec<_>>().join("; ")
}

/// `45s`, `3m05s`, `1h00m`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests;
