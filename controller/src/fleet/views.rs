//! Views of the fleet for status, metrics and watchers: copies and counts,
//! never references into the fleet's state.
//!
//! Every view copies what it shows while holding a map shard briefly, so a
//! status call never holds a lock its caller could await on. Lists are
//! bounded ([`Bounded`]) where the fleet can be large. It never changes the
//! fleet's state.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

use multinic_proto::{MacAddress, NodeName};
use tokio::sync::broadcast;

use super::node::{Applied, Convergence, InterfaceRecord, NodeDrift, NodeProblem, Published, SessionInfo};
use super::{Fleet, lock, read};
use crate::desired::{NodeDesired, RowProblem};

/// A consistent copy of one node's state, for status views.
#[derive(Debug, Clone)]
pub struct NodeSnapshot {
    pub name: NodeName,
    pub convergence: Convergence,
    pub in_db: bool,
    pub published: Option<Arc<Published>>,
    pub desired: Arc<NodeDesired>,
    pub session: Option<SessionInfo>,
    pub last_seen: Option<SystemTime>,
    pub applied: Option<Applied>,
    pub interfaces: BTreeMap<MacAddress, InterfaceRecord>,
    /// Removals the mass-deletion guard holds on this node.
    pub guarded: BTreeSet<MacAddress>,
    /// What is wrong with the node as a whole now.
    pub problems: Vec<NodeProblem>,
    /// The last drift its agent reported, if any.
    pub drift: Option<NodeDrift>,
    /// Why the guard holds removals (its holds are in `guarded`), if it does.
    pub guard_reason: Option<String>,
    /// Why a rollout holds the node's new set back, if one does.
    pub rollout_hold: Option<String>,
}

/// A bounded list and how many were left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounded<T> {
    pub items: Vec<T>,
    pub omitted: usize,
}

impl<T: Clone> Bounded<T> {
    pub fn new() -> Self {
        Self { items: Vec::new(), omitted: 0 }
    }

    /// Lists `item` while fewer than `limit` are listed; counts it otherwise.
    pub fn push(&mut self, item: T, limit: usize) {
        if self.items.len() < limit {
            self.items.push(item);
        } else {
            self.omitted += 1;
        }
    }

    /// Listed and omitted together.
    pub fn total(&self) -> usize {
        self.items.len() + self.omitted
    }

    /// Lists `items` until `limit` are listed; counts the rest.
    pub fn extend(&mut self, items: &[T], limit: usize) {
        let room = limit.saturating_sub(self.items.len()).min(items.len());
        self.items.extend_from_slice(&items[..room]);
        self.omitted += items.len() - room;
    }
}

impl<T: Clone> Default for Bounded<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts over the fleet, for status and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeCounts {
    pub nodes: usize,
    pub connected: usize,
    pub converged: usize,
    pub pending: usize,
    pub failed: usize,
    pub waiting: usize,
}

impl Fleet {
    /// Copies and counts of the fleet, for status and metrics.
    pub fn view(&self) -> View<'_> {
        View { fleet: self }
    }
}

/// Read-only views of the fleet; see the module docs.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    fleet: &'a Fleet,
}

impl View<'_> {
    /// Every node's name, in order.
    pub fn node_names(&self) -> Vec<NodeName> {
        let mut names: Vec<NodeName> = self.fleet.nodes.iter().map(|e| e.key().clone()).collect();
        names.sort();
        names
    }

    /// A copy of one node's state.
    pub fn node(&self, name: &NodeName) -> Option<NodeSnapshot> {
        // Before the node's shard: lock order is the guard, then shards.
        let guard_reason = lock(&self.fleet.guard).holding.clone();
        // Then the rollout, then the shard.
        let slot = lock(&self.fleet.rollout);
        let entry = self.fleet.nodes.get(name)?;
        let rollout_hold = slot.hold_reason(name, entry.gate);
        Some(NodeSnapshot {
            name: name.clone(),
            convergence: entry.convergence(),
            in_db: entry.in_db,
            published: entry.published.borrow().clone(),
            desired: entry.desired.clone(),
            session: entry.session.clone(),
            last_seen: entry.last_seen,
            applied: entry.applied.clone(),
            interfaces: entry.interfaces.to_map(),
            guarded: entry.guarded.clone(),
            problems: entry.problems(SystemTime::now(), self.fleet.answer_within),
            drift: entry.drift.clone(),
            guard_reason: (!entry.guarded.is_empty()).then_some(guard_reason).flatten(),
            rollout_hold,
        })
    }

    /// Rejected rows across the fleet (node by node in name order, then the
    /// rows naming no node), at most `limit` of them.
    pub fn row_problems(&self, limit: usize) -> Bounded<RowProblem> {
        let mut out = Bounded::new();
        for name in self.node_names() {
            if let Some(entry) = self.fleet.nodes.get(&name) {
                out.extend(&entry.desired.problems, limit);
            }
        }
        out.extend(&read(&self.fleet.unattached), limit);
        out
    }

    /// Accepted rows that look wrong, across the fleet, at most `limit`.
    pub fn row_warnings(&self, limit: usize) -> Bounded<RowProblem> {
        let mut out = Bounded::new();
        for name in self.node_names() {
            if let Some(entry) = self.fleet.nodes.get(&name) {
                out.extend(&entry.desired.warnings, limit);
            }
        }
        out
    }

    /// Counts by convergence state.
    pub fn counts(&self) -> NodeCounts {
        let mut counts = NodeCounts::default();
        for entry in &self.fleet.nodes {
            counts.nodes += 1;
            counts.connected += usize::from(entry.session.is_some());
            match entry.convergence() {
                Convergence::Converged => counts.converged += 1,
                Convergence::Pending => counts.pending += 1,
                Convergence::Failed => counts.failed += 1,
                Convergence::Waiting => counts.waiting += 1,
            }
        }
        counts
    }

    /// The first `limit` nodes by name that are not converged, with why: a
    /// node with rows whose agent has no stream is `disconnected` (whatever
    /// it last reported), any other its [`Convergence`] when that is not
    /// converged. For the per-node alerting metric; a name is copied only
    /// while it is among the first `limit`.
    pub fn unconverged_nodes(&self, limit: usize) -> Vec<(NodeName, &'static str)> {
        let mut first: std::collections::BinaryHeap<(NodeName, &'static str)> = std::collections::BinaryHeap::new();
        for entry in &self.fleet.nodes {
            let state = if entry.in_db && entry.session.is_none() {
                "disconnected"
            } else {
                match entry.convergence() {
                    Convergence::Converged => continue,
                    other => other.as_str(),
                }
            };
            if first.len() < limit {
                first.push((entry.key().clone(), state));
            } else if first.peek().is_some_and(|(last, _)| entry.key() < last) {
                first.pop();
                first.push((entry.key().clone(), state));
            }
        }
        first.into_sorted_vec()
    }

    /// Rows that name no valid node.
    pub fn unattached(&self) -> Arc<Vec<RowProblem>> {
        read(&self.fleet.unattached).clone()
    }

    /// Rows rejected by validation, across the fleet.
    pub fn invalid_rows(&self) -> usize {
        let attached: usize = self.fleet.nodes.iter().map(|e| e.desired.problems.len()).sum();
        attached + read(&self.fleet.unattached).len()
    }

    /// Node names as their state changes.
    pub fn subscribe_changes(&self) -> broadcast::Receiver<NodeName> {
        self.fleet.changes.subscribe()
    }
}
