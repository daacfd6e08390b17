//! Rollouts: a change that touches many nodes at once, released in waves.
//!
//! Exists so that a bad fleet-wide value (an MTU on a shared subnet, a
//! renumbered network) breaks one node, not all of them: the controller
//! releases a canary, then waves that grow but never past
//! `--max-unavailable`, each only once every node of the previous wave has
//! reported, and stops at the first failed node until an operator resumes
//! or aborts. This module is the plan and its state machine only: pure (the
//! caller passes the time), no I/O, no locks, no knowledge of sets or
//! agents. It must never release a node twice, release a wave while the
//! current one is unfinished, or release anything while stopped.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use multinic_proto::NodeName;

mod config;
#[cfg(test)]
mod tests;
mod wave_view;

pub use config::{MaxUnavailable, RolloutConfig, wave_sizes};
pub use wave_view::WaveView;

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutState {
    /// Waves are being released.
    Running,
    /// A node failed (or the controller restarted in the middle): nothing
    /// more is released until resume or abort.
    Stopped,
    /// An operator ended it; the nodes not released keep their previous set.
    Aborted,
    /// Every node reported its set.
    Completed,
    /// A newer change of the same nodes replaced it.
    Superseded,
}

impl RolloutState {
    /// Every state, for metrics.
    pub const ALL: [Self; 5] = [Self::Running, Self::Stopped, Self::Aborted, Self::Completed, Self::Superseded];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::Aborted => "aborted",
            Self::Completed => "completed",
            Self::Superseded => "superseded",
        }
    }

    /// Running or stopped: it still holds its pending nodes.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Running | Self::Stopped)
    }
}

/// Where one node of a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeState {
    /// Held: keeps its previous set.
    Pending,
    /// Released; its agent has not reported the new set yet.
    Released,
    /// Its agent reported the new set (waiting interfaces count as done).
    Done,
    /// Its agent reported a failed interface for the new set.
    Failed,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Released => "released",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }
}

/// One node of a rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutNode {
    pub name: NodeName,
    pub state: NodeState,
    /// For a failed node: what failed.
    pub reason: Option<String>,
    /// When the change was seen (the wait metric counts from here).
    pub seen: SystemTime,
}

/// A wave: nodes released together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wave {
    /// Indices into the rollout's nodes, in release order.
    nodes: Vec<usize>,
    pub released_at: Option<SystemTime>,
}

/// What an agent's report on the released set says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every interface applied or waiting for its MAC.
    Done,
    /// An interface failed or was refused (or the push was rejected): why.
    Failed(String),
}

/// Nodes released by one transition, with how long each waited since its
/// change was seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Released {
    pub nodes: Vec<(NodeName, Duration)>,
    /// The wave released (its number), when one was.
    pub wave: Option<usize>,
}

impl Released {
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// Why an operator's action was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RolloutError {
    #[error("there is no rollout")]
    NoRollout,
    #[error("rollout {given} is not the current rollout (that is rollout {current}): check its status again")]
    OtherRollout { given: u64, current: u64 },
    #[error("rollout {id} is {state}, not stopped: only a stopped rollout can be resumed")]
    NotStopped { id: u64, state: &'static str },
    #[error("rollout {id} is already {state}: only a running or stopped rollout can be aborted")]
    Ended { id: u64, state: &'static str },
}

/// Counts of a rollout's nodes by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeCounts {
    pub pending: usize,
    pub released: usize,
    pub done: usize,
    pub failed: usize,
}

/// A rollout: its nodes in release order, its waves, and where it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    pub id: u64,
    pub state: RolloutState,
    /// Why it stopped, was aborted or superseded.
    pub reason: Option<String>,
    pub started: SystemTime,
    pub updated: SystemTime,
    pub threshold: usize,
    /// The resolved largest wave.
    pub max_unavailable: usize,
    nodes: Vec<RolloutNode>,
    index: HashMap<NodeName, usize>,
    waves: Vec<Wave>,
    /// The wave being released (the last one released, or the next).
    current: usize,
}

impl Rollout {
    /// Plans a rollout over `nodes` (each with when its change was seen),
    /// released in this order; nothing is released until [`Rollout::start`].
    pub fn plan(id: u64, nodes: Vec<(NodeName, SystemTime)>, config: &RolloutConfig, now: SystemTime) -> Self {
        let max = config.max_unavailable.resolve(nodes.len());
        let mut rollout = Self::empty(id, config.threshold, max, now);
        let sizes = wave_sizes(nodes.len(), max);
        rollout.push_nodes(nodes, NodeState::Pending);
        let mut start = 0;
        for size in sizes {
            rollout.waves.push(Wave { nodes: (start..start + size).collect(), released_at: None });
            start += size;
        }
        rollout
    }

    /// A rollout rebuilt after a restart: `failed` nodes (already at the new
    /// set, with failures: wave 0, released) and `pending` nodes in waves,
    /// stopped with `reason` so that nothing is released before an operator
    /// resumes it.
    pub fn rebuilt(
        id: u64,
        pending: Vec<(NodeName, SystemTime)>,
        failed: Vec<(NodeName, String)>,
        config: &RolloutConfig,
        reason: String,
        now: SystemTime,
    ) -> Self {
        let mut rollout = Self::plan(id, pending, config, now);
        if !failed.is_empty() {
            let shift = failed.len();
            for wave in &mut rollout.waves {
                wave.nodes.iter_mut().for_each(|i| *i += shift);
            }
            let mut nodes: Vec<RolloutNode> = failed
                .into_iter()
                .map(|(name, why)| RolloutNode { name, state: NodeState::Failed, reason: Some(why), seen: now })
                .collect();
            nodes.append(&mut rollout.nodes);
            rollout.nodes = nodes;
            rollout.index = rollout.nodes.iter().enumerate().map(|(i, n)| (n.name.clone(), i)).collect();
            rollout.waves.insert(0, Wave { nodes: (0..shift).collect(), released_at: Some(now) });
        }
        rollout.state = RolloutState::Stopped;
        rollout.reason = Some(reason);
        rollout
    }

    fn empty(id: u64, threshold: usize, max: usize, now: SystemTime) -> Self {
        Self {
            id,
            state: RolloutState::Running,
            reason: None,
            started: now,
            updated: now,
            threshold,
            max_unavailable: max,
            nodes: Vec::new(),
            index: HashMap::new(),
            waves: Vec::new(),
            current: 0,
        }
    }

    fn push_nodes(&mut self, nodes: Vec<(NodeName, SystemTime)>, state: NodeState) {
        for (name, seen) in nodes {
            if self.index.contains_key(&name) {
                continue;
            }
            self.index.insert(name.clone(), self.nodes.len());
            self.nodes.push(RolloutNode { name, state, reason: None, seen });
        }
    }

    /// Releases the canary.
    pub fn start(&mut self, now: SystemTime) -> Released {
        self.advance(now)
    }

    /// Takes a node's report on the set it was released. A failure stops
    /// the rollout; a finished wave releases the next (while running).
    pub fn report(&mut self, name: &NodeName, outcome: Outcome, now: SystemTime) -> Released {
        let Some(&i) = self.index.get(name) else { return Released::default() };
        let node = &mut self.nodes[i];
        if !matches!(node.state, NodeState::Released | NodeState::Failed) || !self.state.is_active() {
            return Released::default();
        }
        match outcome {
            Outcome::Done => {
                node.state = NodeState::Done;
                node.reason = None;
            }
            Outcome::Failed(why) => {
                node.state = NodeState::Failed;
                let reason = format!("{name} {why}");
                node.reason = Some(why);
                if self.state == RolloutState::Running {
                    self.state = RolloutState::Stopped;
                    self.reason = Some(reason);
                }
            }
        }
        self.updated = now;
        self.advance(now)
    }

    /// Releases a stopped rollout again: the current wave's unreleased
    /// nodes, or the next wave once the current one has finished.
    pub fn resume(&mut self, id: u64, now: SystemTime) -> Result<Released, RolloutError> {
        self.check_id(id)?;
        if self.state != RolloutState::Stopped {
            return Err(RolloutError::NotStopped { id, state: self.state.as_str() });
        }
        self.state = RolloutState::Running;
        self.reason = None;
        self.updated = now;
        Ok(self.advance(now))
    }

    /// Ends a running or stopped rollout; returns its nodes not released
    /// (they keep their previous set).
    pub fn abort(&mut self, id: u64, now: SystemTime) -> Result<Vec<NodeName>, RolloutError> {
        self.check_id(id)?;
        if !self.state.is_active() {
            return Err(RolloutError::Ended { id, state: self.state.as_str() });
        }
        let pending = self.pending();
        self.state = RolloutState::Aborted;
        self.reason = Some(format!(
            "aborted by an operator: {} nodes not released keep their previous set until their rows change again",
            pending.len()
        ));
        self.updated = now;
        Ok(pending)
    }

    /// Marks it replaced by rollout `by`; returns its nodes still pending
    /// with when their change was seen (the new rollout takes them over).
    pub fn supersede(&mut self, by: u64, now: SystemTime) -> Vec<(NodeName, SystemTime)> {
        if !self.state.is_active() {
            return Vec::new();
        }
        let pending =
            self.nodes.iter().filter(|n| n.state == NodeState::Pending).map(|n| (n.name.clone(), n.seen)).collect();
        self.state = RolloutState::Superseded;
        self.reason = Some(format!("superseded by rollout {by}: a newer change of its nodes"));
        self.updated = now;
        pending
    }

    /// Ends a running or stopped rollout whose state this replica can no
    /// longer vouch for (it stood by while another replica acted): it is
    /// superseded by the rebuild from the agents' reports, for `reason`.
    pub fn interrupt(&mut self, reason: String, now: SystemTime) {
        if self.state.is_active() {
            self.state = RolloutState::Superseded;
            self.reason = Some(reason);
            self.updated = now;
        }
    }

    /// A node left the fleet (no rows, no agent): it counts as done, and a
    /// pending one is never released.
    pub fn forget(&mut self, name: &NodeName, now: SystemTime) -> Released {
        let Some(&i) = self.index.get(name) else { return Released::default() };
        match self.nodes[i].state {
            NodeState::Released => self.report(name, Outcome::Done, now),
            NodeState::Pending if self.state.is_active() => {
                self.nodes[i].state = NodeState::Done;
                self.updated = now;
                self.advance(now)
            }
            _ => Released::default(),
        }
    }

    fn check_id(&self, id: u64) -> Result<(), RolloutError> {
        if id != self.id {
            return Err(RolloutError::OtherRollout { given: id, current: self.id });
        }
        Ok(())
    }

    /// While running: releases the current wave if it is not yet, else
    /// moves on once it has finished (no node released and unreported);
    /// completes after the last.
    fn advance(&mut self, now: SystemTime) -> Released {
        while self.state == RolloutState::Running {
            let Some(wave) = self.waves.get(self.current) else {
                self.complete(now);
                break;
            };
            if wave.released_at.is_none() {
                let released = self.release_current(now);
                if !released.is_empty() {
                    return released;
                }
                // Nothing left in it to release (its nodes left the fleet).
                continue;
            }
            if wave.nodes.iter().any(|&i| matches!(self.nodes[i].state, NodeState::Released | NodeState::Pending)) {
                break;
            }
            self.current += 1;
        }
        Released::default()
    }

    fn release_current(&mut self, now: SystemTime) -> Released {
        let wave = &mut self.waves[self.current];
        wave.released_at = Some(now);
        let mut released = Released { nodes: Vec::with_capacity(wave.nodes.len()), wave: Some(self.current) };
        for &i in &wave.nodes {
            let node = &mut self.nodes[i];
            if node.state == NodeState::Pending {
                node.state = NodeState::Released;
                released.nodes.push((node.name.clone(), now.duration_since(node.seen).unwrap_or_default()));
            }
        }
        self.updated = now;
        released
    }

    fn complete(&mut self, now: SystemTime) {
        self.state = RolloutState::Completed;
        self.reason = None;
        self.updated = now;
    }

    /// The node, if it is part of this rollout.
    pub fn node(&self, name: &NodeName) -> Option<&RolloutNode> {
        self.index.get(name).map(|&i| &self.nodes[i])
    }

    /// Its nodes not released yet.
    pub fn pending(&self) -> Vec<NodeName> {
        self.nodes.iter().filter(|n| n.state == NodeState::Pending).map(|n| n.name.clone()).collect()
    }

    /// Its nodes by state.
    pub fn counts(&self) -> NodeCounts {
        let mut c = NodeCounts::default();
        for node in &self.nodes {
            match node.state {
                NodeState::Pending => c.pending += 1,
                NodeState::Released => c.released += 1,
                NodeState::Done => c.done += 1,
                NodeState::Failed => c.failed += 1,
            }
        }
        c
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The waves in release order.
    pub fn waves(&self) -> impl Iterator<Item = WaveView<'_>> {
        self.waves.iter().enumerate().map(|(number, wave)| WaveView { rollout: self, number, wave })
    }

    /// The number of the wave a node belongs to.
    fn wave_of(&self, i: usize) -> Option<usize> {
        self.waves.iter().position(|w| w.nodes.contains(&i))
    }

    /// Why a pending node's change is held, for `diff` and status.
    pub fn hold_reason(&self, name: &NodeName) -> String {
        let wave = self.index.get(name).and_then(|&i| self.wave_of(i)).map_or(0, |w| w + 1);
        let why = match (self.state, &self.reason) {
            (RolloutState::Running, _) => "waiting for the waves before it".to_owned(),
            (state, Some(reason)) => format!("{}: {reason}", state.as_str()),
            (state, None) => state.as_str().to_owned(),
        };
        format!("rollout {}: wave {wave} of {} not released ({why})", self.id, self.waves.len())
    }
}
