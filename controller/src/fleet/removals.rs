//! The mass-deletion guard's side of the fleet: counting what the desired
//! sets would remove, judging it, and holding removals while the verdict
//! says so.
//!
//! The counts are kept per node and summed incrementally, so a change to a
//! few nodes costs work for those nodes; every node is revisited only when
//! the verdict flips. Lock order: the guard mutex, then map shards; never a
//! shard and then the mutex.

use std::collections::BTreeSet;
use std::time::Instant;

use multinic_proto::{MacAddress, NodeName};

use super::node::Refreshed;
use super::{Fleet, lock, read};
use crate::guard::{self, Counts, Verdict};

#[derive(Debug, Default)]
pub(super) struct GuardState {
    pub(super) totals: Counts,
    /// Why removals are held, while they are.
    pub(super) holding: Option<String>,
    /// The removals an operator confirmed (they, or any part of them, go).
    pub(super) confirmed: Option<BTreeSet<(NodeName, MacAddress)>>,
    /// When this replica became active (warm-up starts).
    pub(super) activated: Option<Instant>,
}

/// The mass-deletion guard as status shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuardStatus {
    pub removals_held: usize,
    pub reason: Option<String>,
    pub token: Option<String>,
}

/// Why a confirmation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfirmError {
    #[error("no removals are held")]
    NothingHeld,
    #[error("the held removals changed since token {given}; the token now is {current}: check again before confirming")]
    Changed { given: String, current: String },
}

impl Fleet {
    /// Re-judges the guard after one node's present set changed: only that
    /// node is republished unless the verdict flips.
    pub(super) fn node_changed(&self, name: &NodeName) {
        let synced = read(&self.db).synced;
        let mut g = lock(&self.guard);
        let Some((old, new)) = self.nodes.get(name).map(|e| (e.counts, e.guard_counts())) else { return };
        let totals = g.totals.replace(old, new);
        let was_holding = g.holding.is_some();
        let hold = self.judge(&mut g, totals);
        if hold != was_holding {
            let mut changed = Vec::new();
            self.refresh_all(&mut g, &mut changed);
            drop(g);
            for node in changed {
                let _ = self.changes.send(node);
            }
            return;
        }
        g.totals = totals;
        let refreshed = self.nodes.get_mut(name).map(|mut entry| entry.refresh(hold, synced));
        if refreshed == Some(Refreshed::ProblemChanged) {
            let _ = self.changes.send(name.clone());
        }
    }

    /// Whether the guard still warms up (this replica became active less
    /// than the warm-up ago), when agents report what they have.
    pub(super) fn warming_up(&self) -> bool {
        lock(&self.guard).activated.is_none_or(|t| t.elapsed() < self.guard_config.warmup)
    }

    /// Judges the guard again with unchanged counts (the warm-up may have
    /// ended): every node is revisited only if the verdict flips. Called
    /// every poll tick; costs nothing otherwise.
    pub fn rejudge_guard(&self) {
        let mut g = lock(&self.guard);
        let was_holding = g.holding.is_some();
        let totals = g.totals;
        if self.judge(&mut g, totals) != was_holding {
            let mut changed = Vec::new();
            self.refresh_all(&mut g, &mut changed);
            drop(g);
            for node in changed {
                let _ = self.changes.send(node);
            }
        }
    }

    /// Recomputes the guard over every node and republishes every set.
    pub(super) fn refresh_all(&self, g: &mut GuardState, changed: &mut Vec<NodeName>) {
        let synced = read(&self.db).synced;
        let totals = self.nodes.iter().fold(Counts::default(), |t, e| {
            let c = e.guard_counts();
            Counts { present: t.present + c.present, removals: t.removals + c.removals }
        });
        let hold = self.judge(g, totals);
        for mut entry in self.nodes.iter_mut() {
            match entry.refresh(hold, synced) {
                Refreshed::Published => changed.push(entry.key().clone()),
                Refreshed::ProblemChanged => {
                    let _ = self.changes.send(entry.key().clone());
                }
                Refreshed::Nothing => {}
            }
        }
        g.totals = totals;
    }

    /// The guard's verdict for `totals`; records it (and logs changes).
    pub(super) fn judge(&self, g: &mut GuardState, totals: Counts) -> bool {
        let warming =
            g.activated.and_then(|t| self.guard_config.warmup.checked_sub(t.elapsed())).filter(|left| !left.is_zero());
        let verdict = guard::verdict(&self.guard_config, totals, warming, false);
        let verdict = match verdict {
            Verdict::Hold(reason) => match &g.confirmed {
                Some(confirmed) if self.removals().is_subset(confirmed) => Verdict::Release,
                _ => Verdict::Hold(reason),
            },
            Verdict::Release => {
                if totals.removals == 0 {
                    g.confirmed = None;
                }
                Verdict::Release
            }
        };
        match verdict {
            Verdict::Hold(reason) => {
                if g.holding.as_deref() != Some(reason.as_str()) && warming.is_none() {
                    tracing::warn!(
                        removals = totals.removals,
                        present = totals.present,
                        token = %self.removal_token(),
                        "mass-deletion guard: holding removals ({reason}); nothing else is held. \
                         If they are intended: multinicctl confirm-removals TOKEN"
                    );
                }
                g.holding = Some(reason);
                true
            }
            Verdict::Release => {
                if let Some(reason) = g.holding.take() {
                    tracing::info!(was = %reason, "mass-deletion guard: removals released");
                }
                false
            }
        }
    }

    /// Every removal the database calls for now.
    fn removals(&self) -> BTreeSet<(NodeName, MacAddress)> {
        let mut all = BTreeSet::new();
        for entry in &self.nodes {
            for mac in guard::removals(entry.inventory(), &entry.desired.set) {
                all.insert((entry.key().clone(), mac));
            }
        }
        all
    }

    /// The token naming every removal the database calls for now.
    fn removal_token(&self) -> String {
        guard::token(self.removals().iter().map(|(n, m)| (n, m)))
    }

    /// The guard as status shows it.
    pub fn guard_status(&self) -> GuardStatus {
        let g = lock(&self.guard);
        let Some(reason) = g.holding.clone() else { return GuardStatus::default() };
        let removals_held = self.nodes.iter().map(|e| e.guarded.len()).sum();
        GuardStatus { removals_held, reason: Some(reason), token: Some(self.removal_token()) }
    }

    /// Lets the held removals go if `token` still names exactly them.
    /// Returns how many were released.
    pub fn confirm_removals(&self, token: &str) -> Result<usize, ConfirmError> {
        let mut g = lock(&self.guard);
        if g.holding.is_none() {
            return Err(ConfirmError::NothingHeld);
        }
        let removals = self.removals();
        let current = guard::token(removals.iter().map(|(n, m)| (n, m)));
        if current != token {
            return Err(ConfirmError::Changed { given: token.to_owned(), current });
        }
        let released = self.nodes.iter().map(|e| e.guarded.len()).sum();
        tracing::warn!(token, released, "mass-deletion guard: an operator confirmed the held removals");
        g.confirmed = Some(removals);
        let mut changed = Vec::new();
        self.refresh_all(&mut g, &mut changed);
        drop(g);
        for node in changed {
            let _ = self.changes.send(node);
        }
        Ok(released)
    }
}
