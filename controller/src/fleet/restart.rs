//! Rollouts across a restart or failover: the controller keeps no rollout
//! state outside its memory, so a newly active controller rebuilds it from
//! the database and the agents' Hellos.
//!
//! At the first sync it holds the nodes whose agents may be in the middle
//! of a rollout; when the removal warm-up has heard from every agent (or
//! ended) it decides: many agents behind the database's set form a rollout
//! rebuilt stopped, for an operator to resume; a change made since the
//! first sync is a new change; everything else goes at once. It never
//! holds a fresh agent or one already at its set, and never releases a
//! rebuilt rollout by itself.

use std::time::SystemTime;

use tracing::warn;

use super::node::{Hold, NodeEntry, Refreshed};
use super::rollouts::{Gate, HelloSaid, RolloutSlot};
use super::{Fleet, lock, read};
use crate::rollout::{Outcome, Rollout};

impl Fleet {
    /// At the first sync after start: holds the nodes whose agents may be
    /// in the middle of a rollout (they said they applied another set, or
    /// have not said anything yet) until the restart decision; fresh agents
    /// and agents already at their set are never held.
    pub(super) fn gate_restart(&self, slot: &mut RolloutSlot, hold: Hold) {
        if self.rollout_config.threshold == 0 {
            return;
        }
        for mut entry in self.nodes.iter_mut() {
            if !entry.in_db || entry.gate != Gate::Open {
                continue;
            }
            entry.set_guarded(hold);
            let at_set = match &entry.hello {
                HelloSaid::Fresh => true,
                HelloSaid::Applied(digest) => entry.set_to_push().is_ok_and(|set| set.digest() == digest),
                HelloSaid::Nothing => false,
            };
            if !at_set {
                entry.gate = Gate::Restart;
                entry.restart_digest = entry.set_to_push().ok().map(|set| set.digest().clone());
                slot.restart_pending = true;
            }
        }
    }

    /// This replica became active again after standing by: another replica
    /// may have released, stopped or aborted the rollout it remembers, so it
    /// forgets that and rebuilds as after a restart. Every node with rows is
    /// held with nothing published (a set it published before may be older
    /// than what the other replica released: pushing it would undo that)
    /// until its agent says Hello again (every stream ended at the standby)
    /// or the restart decision.
    pub(super) fn reactivated(&self) {
        if self.rollout_config.threshold == 0 {
            return;
        }
        let g = lock(&self.guard);
        let mut slot = lock(&self.rollout);
        if let Some(rollout) = slot.current.as_mut()
            && rollout.state.is_active()
        {
            let reason = "this replica stood by during the rollout and is active again: it rebuilds the rollout from \
                          what the agents report"
                .to_owned();
            warn!(rollout = rollout.id, "{reason}");
            rollout.interrupt(reason, SystemTime::now());
            self.rollout_metrics.event("superseded");
            self.rollout_metrics.set_current(rollout);
        }
        for mut entry in self.nodes.iter_mut() {
            entry.hello = HelloSaid::Nothing;
            if !entry.in_db {
                entry.gate = Gate::Open;
                continue;
            }
            entry.set_guarded(g.hold);
            entry.restart_digest = entry.set_to_push().ok().map(|set| set.digest().clone());
            entry.gate = Gate::Restart;
            entry.published.send_replace(None);
            slot.restart_pending = true;
        }
    }

    /// A node's agent said Hello: a node held for the restart decision goes
    /// at once if the agent is fresh or already has its set.
    pub(super) fn hello_said(&self, entry: &mut NodeEntry, said: HelloSaid) {
        if entry.gate == Gate::Restart {
            let open = match &said {
                HelloSaid::Fresh => true,
                HelloSaid::Applied(digest) => entry.set_to_push().is_ok_and(|set| set.digest() == digest),
                HelloSaid::Nothing => false,
            };
            if open {
                entry.gate = Gate::Open;
                entry.restart_digest = None;
            }
        }
        entry.hello = said;
    }

    /// At each poll tick: once the warm-up after start has heard from every
    /// agent (or ended), decides about the nodes held since the first sync.
    /// Agents that applied another set than the database's at the first
    /// sync are behind: more than the threshold of them form a rollout
    /// rebuilt stopped (an operator resumes it); fewer go at once. Nodes
    /// whose agents were in step at start but whose rows changed since are
    /// a new change (few at once, many in a running rollout); every other
    /// held node goes at once.
    pub(super) fn decide_restart(&self) {
        let mut g = lock(&self.guard);
        let mut slot = lock(&self.rollout);
        if !slot.restart_pending || self.warming(&mut g).is_some_and(|w| !w.all_reported) {
            return;
        }
        slot.restart_pending = false;
        let (hold, synced, now) = (g.hold, read(&self.db).synced, SystemTime::now());
        // Behind: the agent applied another set than the database's at the
        // first sync (a rollout was under way). Changed since: it was in
        // step at start, and the rows changed after (a new change).
        let (mut behind, mut changed_since, mut failed, mut open) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for mut entry in self.nodes.iter_mut() {
            entry.set_guarded(hold);
            match entry.gate {
                Gate::Restart if entry.behind() => {
                    let in_step =
                        matches!(&entry.hello, HelloSaid::Applied(d) if entry.restart_digest.as_ref() == Some(d));
                    entry.restart_digest = None;
                    match in_step {
                        true => changed_since.push((entry.key().clone(), Gate::Open)),
                        false => behind.push((entry.key().clone(), now)),
                    }
                }
                Gate::Restart => {
                    entry.restart_digest = None;
                    open.push(entry.key().clone());
                }
                Gate::Open => {
                    if let Some(Outcome::Failed(why)) = entry.rollout_outcome() {
                        failed.push((entry.key().clone(), why));
                    }
                }
                Gate::Rollout(_) => {}
            }
        }
        if self.rollout_config.is_rollout(behind.len()) {
            behind.sort();
            failed.sort();
            let id = slot.next_id();
            let reason = format!(
                "controller restarted during a rollout: {} nodes not yet released; resume to continue, abort to \
                 leave them",
                behind.len()
            );
            let rollout = Rollout::rebuilt(id, behind, failed, &self.rollout_config, reason, now);
            for name in rollout.pending() {
                if let Some(mut entry) = self.nodes.get_mut(&name) {
                    entry.gate = Gate::Rollout(id);
                }
            }
            warn!(
                rollout = id,
                pending = rollout.counts().pending,
                failed = rollout.counts().failed,
                "rollout rebuilt after a restart, stopped: agents applied other sets than the database's and they \
                 are more than the threshold; nothing is released until multinicctl rollout resume (or abort)"
            );
            self.rollout_metrics.event("started");
            self.rollout_metrics.event("stopped");
            self.rollout_metrics.set_current(&rollout);
            slot.current = Some(rollout);
        } else {
            open.extend(behind.into_iter().map(|(name, _)| name));
        }
        // What changed since the start is a change like any other: few go
        // at once, many in a rollout.
        for (name, _) in &changed_since {
            if let Some(mut entry) = self.nodes.get_mut(name) {
                entry.gate = Gate::Open;
            }
        }
        open.extend(changed_since.iter().map(|(name, _)| name.clone()));
        open.extend(self.start_or_pass(&mut slot, changed_since));
        let mut changed = Vec::new();
        for name in open {
            let Some(mut entry) = self.nodes.get_mut(&name) else { continue };
            if entry.gate == Gate::Restart {
                entry.gate = Gate::Open;
            }
            if entry.refresh(hold, synced) == Refreshed::Published {
                changed.push(name);
            }
        }
        drop(slot);
        drop(g);
        self.notify(changed);
    }
}
