//! The mass-deletion guard's side of the fleet: counting what the desired
//! sets would remove, judging it, and holding removals while the verdict
//! says so.
//!
//! The counts are kept per node and summed incrementally, so a change to a
//! few nodes costs work for those nodes; every node is revisited only when
//! the verdict flips. Lock order: the guard mutex, then map shards; never a
//! shard and then the mutex.
//!
//! The warm-up after this replica became active holds every removal until
//! every node with rows, and every agent connected, has said what it has
//! (looked up at most every [`WARMUP_LOOK_EVERY`] while it lasts, and at
//! every poll tick); then only removals on nodes with no rows left wait,
//! until `--removal-warmup` has passed (claims made until then count).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use multinic_proto::{MacAddress, NodeName};

use super::node::{Hold, Refreshed};
use super::{Fleet, lock, read};
use crate::guard::{self, Counts, Verdict, Warming};

/// How often, at most, the warm-up looks whether every node has reported.
pub const WARMUP_LOOK_EVERY: Duration = Duration::from_millis(100);
/// Nodes a warm-up reason names at most.
const WARMUP_NAMES: usize = 3;

#[derive(Debug, Default)]
pub(super) struct GuardState {
    pub(super) totals: Counts,
    /// Why removals are held, while they are.
    pub(super) holding: Option<String>,
    /// Which removals are held.
    pub(super) hold: Hold,
    /// The removals an operator confirmed (they, or any part of them, go).
    pub(super) confirmed: Option<BTreeSet<(NodeName, MacAddress)>>,
    /// When this replica became active (warm-up starts).
    pub(super) activated: Option<Instant>,
    /// Who the warm-up still waits for.
    pub(super) warmup: WarmupState,
}

/// The warm-up's last look at the fleet.
#[derive(Debug, Default)]
pub(super) struct WarmupState {
    looked: Option<Instant>,
    all_reported: bool,
    waiting: usize,
    first: Vec<NodeName>,
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
        let was = g.hold;
        let hold = self.judge(&mut g, totals);
        if hold != was {
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
    /// than the warm-up ago), when agents report what they have: their
    /// claims count until then, also once the nodes with rows reported.
    pub(super) fn warming_up(&self) -> bool {
        lock(&self.guard).activated.is_none_or(|t| t.elapsed() < self.guard_config.warmup)
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

    /// The warm-up as it stands, if it still runs: how long at most, and
    /// who has not reported yet (looked up again when the last look is
    /// older than [`WARMUP_LOOK_EVERY`]; once everyone has, that stays).
    pub(super) fn warming(&self, g: &mut GuardState) -> Option<Warming> {
        let left =
            g.activated.and_then(|t| self.guard_config.warmup.checked_sub(t.elapsed())).filter(|l| !l.is_zero())?;
        let look = g.warmup.looked.is_none_or(|t| t.elapsed() >= WARMUP_LOOK_EVERY);
        if !g.warmup.all_reported && look && read(&self.db).synced {
            g.warmup.looked = Some(Instant::now());
            let current = self.activation.load(Ordering::Relaxed);
            let (mut rows, mut first) = (0usize, std::collections::BinaryHeap::new());
            let mut waiting = 0;
            for entry in &self.nodes {
                if !entry.in_db && entry.session.is_none() {
                    continue;
                }
                rows += usize::from(entry.in_db);
                if entry.reported_in != current {
                    waiting += 1;
                    first.push(entry.key().clone());
                    if first.len() > WARMUP_NAMES {
                        first.pop();
                    }
                }
            }
            let all_reported = rows > 0 && waiting == 0;
            if all_reported && !g.warmup.all_reported {
                let after = g.activated.map(|t| t.elapsed()).unwrap_or_default();
                tracing::info!(
                    after = ?after,
                    left = ?left,
                    "every node with rows and every connected agent has said what it has: removals are judged now; \
                     removals on nodes with no rows left wait until the warm-up's end"
                );
            }
            g.warmup = WarmupState { looked: g.warmup.looked, all_reported, waiting, first: first.into_sorted_vec() };
        }
        Some(Warming {
            left,
            all_reported: g.warmup.all_reported,
            waiting: g.warmup.waiting,
            first: g.warmup.first.clone(),
        })
    }

    /// The guard's verdict for `totals`; records it (and logs changes).
    pub(super) fn judge(&self, g: &mut GuardState, totals: Counts) -> Hold {
        let warming = self.warming(g);
        let verdict = guard::verdict(&self.guard_config, totals, warming.as_ref(), false);
        let verdict = match verdict {
            Verdict::Hold(_) | Verdict::HoldRowless(_)
                if g.confirmed.as_ref().is_some_and(|confirmed| self.removals().is_subset(confirmed)) =>
            {
                Verdict::Release
            }
            Verdict::Release => {
                if totals.removals == 0 {
                    g.confirmed = None;
                }
                Verdict::Release
            }
            held => held,
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
                g.hold = Hold::All;
            }
            Verdict::HoldRowless(reason) => {
                g.holding = Some(reason);
                g.hold = Hold::Rowless;
            }
            Verdict::Release => {
                if let Some(reason) = g.holding.take() {
                    tracing::info!(was = %reason, "mass-deletion guard: removals released");
                }
                g.hold = Hold::Nothing;
            }
        }
        g.hold
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
}

impl Fleet {
    /// The mass-deletion guard as operators see and answer it.
    pub fn guard(&self) -> RemovalGuard<'_> {
        RemovalGuard { fleet: self }
    }
}

/// The mass-deletion guard's status, its re-judging at each tick, and an
/// operator's confirmation; the counting and holding stay with [`Fleet`].
#[derive(Debug, Clone, Copy)]
pub struct RemovalGuard<'a> {
    fleet: &'a Fleet,
}

impl RemovalGuard<'_> {
    /// Judges the guard again with unchanged counts (the warm-up may have
    /// ended): every node is revisited only if the verdict flips. Called
    /// every poll tick; costs nothing otherwise.
    pub fn rejudge(&self) {
        let mut g = lock(&self.fleet.guard);
        g.warmup.looked = None;
        let was = g.hold;
        let totals = g.totals;
        if self.fleet.judge(&mut g, totals) != was {
            let mut changed = Vec::new();
            self.fleet.refresh_all(&mut g, &mut changed);
            drop(g);
            for node in changed {
                let _ = self.fleet.changes.send(node);
            }
        }
    }

    /// The guard as status shows it (nothing while it holds nothing: the
    /// end of the warm-up may hold removals on nodes without rows, and there
    /// may be none).
    pub fn status(&self) -> GuardStatus {
        let g = lock(&self.fleet.guard);
        let Some(reason) = g.holding.clone() else { return GuardStatus::default() };
        let removals_held = self.fleet.nodes.iter().map(|e| e.guarded.len()).sum();
        if removals_held == 0 && g.hold == Hold::Rowless {
            return GuardStatus::default();
        }
        GuardStatus { removals_held, reason: Some(reason), token: Some(self.fleet.removal_token()) }
    }

    /// Lets the held removals go if `token` still names exactly them.
    /// Returns how many were released.
    pub fn confirm(&self, token: &str) -> Result<usize, ConfirmError> {
        let mut g = lock(&self.fleet.guard);
        if g.holding.is_none() {
            return Err(ConfirmError::NothingHeld);
        }
        let removals = self.fleet.removals();
        let current = guard::token(removals.iter().map(|(n, m)| (n, m)));
        if current != token {
            return Err(ConfirmError::Changed { given: token.to_owned(), current });
        }
        let released = self.fleet.nodes.iter().map(|e| e.guarded.len()).sum();
        tracing::warn!(token, released, "mass-deletion guard: an operator confirmed the held removals");
        g.confirmed = Some(removals);
        let mut changed = Vec::new();
        self.fleet.refresh_all(&mut g, &mut changed);
        drop(g);
        for node in changed {
            let _ = self.fleet.changes.send(node);
        }
        Ok(released)
    }
}
