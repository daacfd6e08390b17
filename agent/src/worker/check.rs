//! The drift check as a worker command ([`Command::Check`]): the
//! reconciler's read-only check of the last applied set, the policy's
//! decision ([`DriftPolicy`]), a repair of exactly the drifted interfaces
//! (a scoped reconcile: the same journal, verification and rollback as any
//! apply, others untouched), and a report on the last push when there is
//! anything to say.
//!
//! A node in line costs one netlink dump and a few bounded file reads:
//! nothing is written, no mutating netlink request is sent, no host tool
//! runs, nothing is logged above debug and nothing is sent.
//!
//! [`Command::Check`]: super::Command::Check

use std::time::Instant;

use multinic_proto::{AgentReport, DriftAction, DriftFinding, ErrorCode, InterfaceState, InterfaceStatus, MacAddress};
use tracing::{debug, info, info_span, warn};

use super::drift::{Decision, DriftPolicy};
use super::watch::Unfinished;
use super::{Applied, ApplyAbandoned, Trigger, Worker, merge, read_node, report};
use crate::reconcile::{Drift, Scope};

impl Worker {
    /// Checks the node against the last push and acts on what drifted;
    /// the report to send (on the push `nonce` names), if any.
    pub(super) async fn drift_check(&mut self, nonce: u64) -> Result<Option<AgentReport>, ApplyAbandoned> {
        let Some(last) = &self.last else { return Ok(None) };
        let started = Instant::now();
        let (reconciler, set) = (self.reconciler.clone(), last.set.clone());
        let candidates = DriftPolicy::candidates(&last.statuses);
        let checked = read_node("the drift check", move || reconciler.check(&set, &candidates)).await;
        self.drift.checked(Instant::now());
        let metrics = self.status.metrics();
        metrics.drift_checks.inc();
        let check = match checked {
            Some(Ok(check)) => check,
            Some(Err(e)) => {
                warn!(error = %e, "the drift check could not look at the node; it tries again in one interval");
                return Ok(None);
            }
            None => return Ok(None),
        };
        for drift in check.interfaces.values().flat_map(|v| &v.drifts) {
            metrics.drift_detected.get_or_create(&vec![("kind", drift.kind.as_str())]).inc();
        }
        let Some(last) = &self.last else { return Ok(None) };
        let decision = self.drift.decide(&check, &last.statuses, Instant::now());
        for (mac, drifts) in &decision.deferred {
            debug!(mac = %mac, drift = %said(drifts), "drifted again; the next repair waits for its backoff");
        }
        if decision.is_quiet() {
            debug!(interfaces = check.interfaces.len(), "drift check: the node is as applied");
            return Ok(None);
        }
        let (generation, digest) = (last.generation, last.set.digest().short().to_owned());
        let span = info_span!("apply", generation, digest = %digest, trigger = "drift");
        let work = if decision.reconcile.is_empty() {
            None
        } else {
            let (set, only) = (last.set.clone(), decision.reconcile.clone());
            match self.apply(&span, generation, move |r| r.reconcile_in(&set, Scope::Only(&only))).await {
                Ok(work) => Some(work),
                Err(Unfinished::Abandoned(abandoned)) => return Err(abandoned),
                Err(Unfinished::Panicked(e)) => {
                    warn!(error = %e, "repairing drift panicked");
                    return Ok(None);
                }
            }
        };
        let Some(last) = self.last.as_mut() else { return Ok(None) };
        if let Some(work) = &work {
            merge(last, &work.statuses);
        }
        let findings = span.in_scope(|| conclude(last, &decision, self.status.metrics()));
        let trigger = Trigger::Drift { findings: findings.len(), reconciled: work.is_some() };
        let work = work.unwrap_or_default();
        let mut report = report(&self.status, last, nonce, &work, started.elapsed(), trigger, &span);
        report.drift = findings;
        Ok(Some(report))
    }
}

/// Sets the statuses `decision` calls for in `last` (the repair's are
/// merged already), logs one line per finding and counts the repairs;
/// returns the findings to report.
fn conclude(last: &mut Applied, decision: &Decision, metrics: &crate::metrics::Metrics) -> Vec<DriftFinding> {
    let mut findings = Vec::new();
    for (mac, drifts) in &decision.repairs {
        let status = last.statuses.iter().find(|s| s.mac == *mac);
        let repaired = status.is_none_or(|s| {
            matches!(s.state, InterfaceState::Applied | InterfaceState::Waiting | InterfaceState::Removed)
        });
        for drift in drifts {
            if repaired {
                metrics.drift_repairs.get_or_create(&vec![("kind", drift.kind.as_str())]).inc();
                info!(interface = %drift.name, mac = %mac, kind = %drift.kind, from = %drift.found, to = %drift.wanted, "repaired drift");
            } else {
                let reason = status.map(|s| s.message.as_str()).unwrap_or_default();
                warn!(interface = %drift.name, mac = %mac, kind = %drift.kind, from = %drift.found, to = %drift.wanted, reason, "repairing drift failed; rolled back");
            }
            let action = if repaired { DriftAction::Repaired } else { DriftAction::RepairFailed };
            findings.push(finding(*mac, drift, action));
        }
    }
    for (mac, (drifts, message)) in &decision.given_up {
        warn!(mac = %mac, drift = %said(drifts), "{message}");
        set_failed(last, *mac, drifts, ErrorCode::DriftRepeated, message);
        findings.extend(drifts.iter().map(|d| finding(*mac, d, DriftAction::GivenUp)));
    }
    for (mac, (drifts, message)) in &decision.not_repaired {
        warn!(mac = %mac, drift = %said(drifts), "drift found; not repaired (--drift-repair=false)");
        set_failed(last, *mac, drifts, ErrorCode::Drifted, message);
        findings.extend(drifts.iter().map(|d| finding(*mac, d, DriftAction::NotRepaired)));
    }
    for mac in &decision.back_in_line {
        if let Some(status) = last.statuses.iter_mut().find(|s| s.mac == *mac)
            && let Some(name) = status.name
        {
            info!(interface = %name, mac = %mac, "an interface reported drifted is as applied again");
            *status = InterfaceStatus::applied(*mac, name);
        }
    }
    findings
}

/// Reports `mac` failed for drift, when it is an interface of the set (a
/// file for a MAC no longer desired has no status to fail).
fn set_failed(last: &mut Applied, mac: MacAddress, drifts: &[Drift], code: ErrorCode, message: &str) {
    if last.set.get(&mac).is_none() {
        return;
    }
    let name = drifts.first().map(|d| d.name);
    let failed = InterfaceStatus::problem(mac, name, InterfaceState::Failed, code, message);
    match last.statuses.iter_mut().find(|s| s.mac == mac) {
        Some(status) => *status = failed,
        None => last.statuses.push(failed),
    }
}

fn finding(mac: MacAddress, drift: &Drift, action: DriftAction) -> DriftFinding {
    DriftFinding {
        mac,
        name: drift.name,
        kind: drift.kind,
        found: drift.found.clone(),
        wanted: drift.wanted.clone(),
        action,
    }
}

/// `mtu: MTU 1300 → MTU 1500; link_down: down → up`.
fn said(drifts: &[Drift]) -> String {
    drifts.iter().map(|d| format!("{}: {} → {}", d.kind, d.found, d.wanted)).collect::<Vec<_>>().join("; ")
}
