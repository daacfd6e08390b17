//! The fleet's side of rollouts ([`crate::rollout`]): which nodes a change
//! goes to at once and which wait, the gate that keeps a waiting node on
//! what it was last pushed, the reports that release the next wave, the
//! restart rebuild (`restart.rs`), and an operator's resume and abort.
//!
//! The gate is a per-node flag that [`super::node::NodeEntry::refresh`]
//! obeys: a held node's new set is not published (nothing is sent, it keeps
//! its previous set), so sessions, views, convergence, `diff` and the
//! write-back all see the hold. Lock order: the guard mutex, then the
//! rollout mutex, then map shards. It never publishes to a node a running
//! or stopped rollout holds, and never releases anything by itself after a
//! restart: a rebuilt rollout waits stopped for an operator.

use std::collections::BTreeSet;
use std::time::SystemTime;

use multinic_proto::{Digest, NodeName};
use tracing::{info, warn};

use super::node::{Hold, Refreshed};
use super::{Fleet, lock, read};
use crate::rollout::{NodeState, Released, Rollout, RolloutError, RolloutState};

/// Whether a node's new set may be published.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum Gate {
    #[default]
    Open,
    /// Held until the restart decision (the controller just started and its
    /// agent has said it applied another set, or nothing yet).
    Restart,
    /// Held by this rollout: pending in it (running or stopped), or left
    /// out by its abort until the node's rows change again.
    Rollout(u64),
}

/// What the node's agent said it had applied when it last connected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) enum HelloSaid {
    /// No Hello since this controller started.
    #[default]
    Nothing,
    /// A fresh agent: it applied nothing.
    Fresh,
    Applied(Digest),
}

/// The current (or last) rollout and what the restart decision waits for.
#[derive(Debug, Default)]
pub(super) struct RolloutSlot {
    pub(super) current: Option<Rollout>,
    last_id: u64,
    /// The first sync held nodes until the restart decision.
    pub(super) restart_pending: bool,
}

impl RolloutSlot {
    /// Whether rollout `id` still holds its pending nodes.
    fn holds(&self, id: u64) -> bool {
        self.current.as_ref().is_some_and(|r| r.id == id && r.state.is_active())
    }

    pub(super) fn next_id(&mut self) -> u64 {
        self.last_id += 1;
        self.last_id
    }

    /// Why a node with `gate` is held, if it is.
    pub(super) fn hold_reason(&self, name: &NodeName, gate: Gate) -> Option<String> {
        match gate {
            Gate::Open => None,
            Gate::Restart => Some(
                "the controller just started: changes to nodes whose agents applied another set wait until every \
                 agent has said what it has (or the removal warm-up ends), to rebuild a rollout that was under way"
                    .to_owned(),
            ),
            Gate::Rollout(id) => Some(match &self.current {
                Some(r) if r.id == id && r.state.is_active() => r.hold_reason(name),
                Some(r) if r.id == id => format!(
                    "rollout {id} was {}: the node keeps its previous set until its rows change again",
                    r.state.as_str()
                ),
                _ => format!("rollout {id} ended: the node keeps its previous set until its rows change again"),
            }),
        }
    }
}

impl Fleet {
    /// Rollouts as operators see and act on them.
    pub fn rollouts(&self) -> Rollouts<'_> {
        Rollouts { fleet: self }
    }

    /// In a publish, after the guard's verdict and before the refresh: the
    /// `touched` nodes whose published set would change (and held nodes
    /// whose rows changed again, `rechanged`) go at once when they are few;
    /// more than the threshold start a rollout (superseding the current
    /// one, whose pending nodes it takes over). Returns the nodes released
    /// now that `touched` may not name. Work: the nodes touched, plus the
    /// rollout's nodes when one starts.
    pub(super) fn gate_changes(
        &self,
        slot: &mut RolloutSlot,
        hold: Hold,
        touched: &[NodeName],
        rechanged: &BTreeSet<NodeName>,
    ) -> Vec<NodeName> {
        if self.rollout_config.threshold == 0 {
            return Vec::new();
        }
        let mut changing = Vec::new();
        for name in touched {
            let Some(mut entry) = self.nodes.get_mut(name) else { continue };
            let counts = match entry.gate {
                Gate::Open => entry.pending_change(hold),
                Gate::Rollout(_) => rechanged.contains(name),
                Gate::Restart => false,
            };
            if counts {
                changing.push((name.clone(), entry.gate));
            }
        }
        self.start_or_pass(slot, changing)
    }

    /// `changing` nodes (with their gates) changed in one read: few go at
    /// once, except nodes the current rollout holds; more than the
    /// threshold start a rollout (superseding the current one, whose
    /// pending nodes it takes over). Returns the nodes released now.
    pub(super) fn start_or_pass(&self, slot: &mut RolloutSlot, changing: Vec<(NodeName, Gate)>) -> Vec<NodeName> {
        if !self.rollout_config.is_rollout(changing.len()) {
            // Few: they go at once, except nodes the current rollout holds.
            for (name, gate) in changing {
                if let Gate::Rollout(id) = gate
                    && !slot.holds(id)
                    && let Some(mut entry) = self.nodes.get_mut(&name)
                {
                    entry.gate = Gate::Open;
                }
            }
            return Vec::new();
        }
        let now = SystemTime::now();
        let id = slot.next_id();
        let mut nodes: Vec<(NodeName, SystemTime)> = changing.into_iter().map(|(n, _)| (n, now)).collect();
        let new = nodes.len();
        if let Some(old) = slot.current.as_mut()
            && old.state.is_active()
        {
            let taken = old.supersede(id, now);
            info!(
                rollout = old.id,
                by = id,
                pending = taken.len(),
                "rollout superseded by a newer change of its nodes"
            );
            self.rollout_metrics.event("superseded");
            self.rollout_metrics.set_current(old);
            nodes.extend(taken);
        }
        nodes.sort();
        nodes.dedup_by(|later, earlier| later.0 == earlier.0);
        let mut rollout = Rollout::plan(id, nodes, &self.rollout_config, now);
        for name in rollout.pending() {
            if let Some(mut entry) = self.nodes.get_mut(&name) {
                entry.gate = Gate::Rollout(id);
            }
        }
        info!(
            rollout = id,
            nodes = rollout.len(),
            changed = new,
            waves = rollout.waves().count(),
            max_unavailable = rollout.max_unavailable,
            threshold = self.rollout_config.threshold,
            "rollout started: one poll changed the sets of more nodes than the threshold; releasing a canary, then \
             waves, each once the previous has reported"
        );
        self.rollout_metrics.event("started");
        let released = rollout.start(now);
        let names = self.open(&rollout, released);
        self.rollout_metrics.set_current(&rollout);
        slot.current = Some(rollout);
        names
    }

    /// A node's agent reported (or was adopted): if the node is released in
    /// the current rollout and the report is on its current set, it is done
    /// or failed, and the next wave may go.
    pub(super) fn rollout_reported(&self, name: &NodeName) {
        let g = lock(&self.guard);
        let mut slot = lock(&self.rollout);
        let Some(rollout) = slot.current.as_mut().filter(|r| r.state.is_active()) else { return };
        if !rollout.node(name).is_some_and(|n| matches!(n.state, NodeState::Released | NodeState::Failed)) {
            return;
        }
        let Some(outcome) = self.nodes.get(name).and_then(|entry| entry.rollout_outcome()) else { return };
        let was = rollout.state;
        let released = rollout.report(name, outcome, SystemTime::now());
        self.note_transition(rollout, was);
        let names = self.open_and_publish(rollout, released, g.hold);
        self.rollout_metrics.set_current(rollout);
        drop(slot);
        drop(g);
        self.notify(names);
    }

    /// A node left the fleet (no rows, no agent): the rollout stops waiting
    /// for it. Returns the nodes released (to refresh).
    pub(super) fn rollout_forget(&self, slot: &mut RolloutSlot, name: &NodeName) -> Vec<NodeName> {
        let Some(rollout) = slot.current.as_mut().filter(|r| r.state.is_active()) else { return Vec::new() };
        let was = rollout.state;
        let released = rollout.forget(name, SystemTime::now());
        self.note_transition(rollout, was);
        let names = self.open(rollout, released);
        self.rollout_metrics.set_current(rollout);
        names
    }

    /// Logs and counts a stop or a completion.
    fn note_transition(&self, rollout: &Rollout, was: RolloutState) {
        if rollout.state == was {
            return;
        }
        match rollout.state {
            RolloutState::Stopped => {
                warn!(
                    rollout = rollout.id,
                    reason = rollout.reason.as_deref().unwrap_or(""),
                    pending = rollout.counts().pending,
                    "rollout stopped: a node failed; nothing more is released until multinicctl rollout resume \
                     (or abort)"
                );
                self.rollout_metrics.event("stopped");
            }
            RolloutState::Completed => {
                let c = rollout.counts();
                info!(rollout = rollout.id, nodes = rollout.len(), failed = c.failed, "rollout completed");
                self.rollout_metrics.event("completed");
            }
            _ => {}
        }
    }

    /// Opens the gates of `released` nodes (their sets are published by the
    /// caller's refresh); logs and counts the wave. Returns their names.
    pub(super) fn open(&self, rollout: &Rollout, released: Released) -> Vec<NodeName> {
        let Some(wave) = released.wave else { return Vec::new() };
        if released.is_empty() {
            return Vec::new();
        }
        info!(
            rollout = rollout.id,
            wave = wave + 1,
            of = rollout.waves().count(),
            nodes = released.nodes.len(),
            "rollout: wave released"
        );
        self.rollout_metrics.waves_released.inc();
        let mut names = Vec::with_capacity(released.nodes.len());
        for (name, waited) in released.nodes {
            self.rollout_metrics.wait_seconds.observe(waited.as_secs_f64());
            if let Some(mut entry) = self.nodes.get_mut(&name) {
                entry.gate = Gate::Open;
            }
            names.push(name);
        }
        names
    }

    /// [`Fleet::open`], then publishes their sets; returns the nodes whose
    /// set was published.
    fn open_and_publish(&self, rollout: &Rollout, released: Released, hold: Hold) -> Vec<NodeName> {
        let synced = read(&self.db).synced;
        let mut changed = Vec::new();
        for name in self.open(rollout, released) {
            let Some(mut entry) = self.nodes.get_mut(&name) else { continue };
            match entry.refresh(hold, synced) {
                Refreshed::Published => changed.push(name),
                Refreshed::ProblemChanged => {
                    let _ = self.changes.send(name);
                }
                Refreshed::Nothing => {}
            }
        }
        changed
    }

    pub(super) fn notify(&self, names: Vec<NodeName>) {
        for name in names {
            let _ = self.changes.send(name);
        }
    }
}

/// The current rollout as operators see it, its resume and abort, and the
/// restart decision at each poll tick.
#[derive(Debug, Clone, Copy)]
pub struct Rollouts<'a> {
    fleet: &'a Fleet,
}

impl Rollouts<'_> {
    /// A copy of the current (or last) rollout.
    pub fn status(&self) -> Option<Rollout> {
        lock(&self.fleet.rollout).current.clone()
    }

    /// Resumes stopped rollout `id`; returns it as it is then.
    pub fn resume(&self, id: u64) -> Result<Rollout, RolloutError> {
        let g = lock(&self.fleet.guard);
        let mut slot = lock(&self.fleet.rollout);
        let rollout = slot.current.as_mut().ok_or(RolloutError::NoRollout)?;
        let released = rollout.resume(id, SystemTime::now())?;
        info!(rollout = id, pending = rollout.counts().pending, "rollout resumed by an operator");
        self.fleet.rollout_metrics.event("resumed");
        let was = RolloutState::Running;
        let names = self.fleet.open_and_publish(rollout, released, g.hold);
        self.fleet.note_transition(rollout, was);
        self.fleet.rollout_metrics.set_current(rollout);
        let copy = rollout.clone();
        drop(slot);
        drop(g);
        self.fleet.notify(names);
        Ok(copy)
    }

    /// Aborts rollout `id`: its nodes not released keep their previous set
    /// until their rows change again.
    pub fn abort(&self, id: u64) -> Result<Rollout, RolloutError> {
        let mut slot = lock(&self.fleet.rollout);
        let rollout = slot.current.as_mut().ok_or(RolloutError::NoRollout)?;
        let pending = rollout.abort(id, SystemTime::now())?;
        warn!(
            rollout = id,
            left = pending.len(),
            "rollout aborted by an operator: its nodes not released keep their previous set until their rows change"
        );
        self.fleet.rollout_metrics.event("aborted");
        self.fleet.rollout_metrics.set_current(rollout);
        let copy = rollout.clone();
        drop(slot);
        self.fleet.notify(pending);
        Ok(copy)
    }

    /// At each poll tick: once the warm-up after start has heard from every
    /// agent (or ended), decides about the nodes held since the first sync
    /// (see `restart.rs`).
    pub fn tick(&self) {
        self.fleet.decide_restart();
    }
}
