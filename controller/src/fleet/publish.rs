//! Publishing: a good read of the rows becomes each node's published set.
//!
//! Only the poll loop publishes (tests too); publishes are serialised. A
//! publish re-judges the mass-deletion guard with the new counts and wakes
//! the streams of the nodes whose set changed. It never publishes after a
//! failed read (the caller records that in [`super::DbHealth`] instead), and
//! its work is proportional to the nodes given unless the guard's verdict
//! flips or a rollout starts. A change of more nodes than the rollout
//! threshold is released in waves (see `rollouts.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use multinic_proto::NodeName;

use super::node::{NodeEntry, Refreshed};
use super::{Fleet, lock, write};
use crate::desired::{DesiredSets, NodeDesired, RowProblem};
use crate::guard::Counts;

impl Fleet {
    /// Where the poll loop publishes what it read.
    pub fn publisher(&self) -> Publisher<'_> {
        Publisher { fleet: self }
    }
}

/// Turns good reads into published sets; see the module docs.
#[derive(Debug, Clone, Copy)]
pub struct Publisher<'a> {
    fleet: &'a Fleet,
}

impl Publisher<'_> {
    /// Takes a new good read of the whole database: every node's rows. See
    /// [`Publisher::publish_nodes`]; nodes missing from `fleet` have no rows.
    pub fn publish(&self, fleet: DesiredSets) -> Vec<NodeName> {
        let DesiredSets { nodes, unattached } = fleet;
        let mut all: BTreeMap<NodeName, Option<NodeDesired>> =
            self.fleet.nodes.iter().map(|e| (e.key().clone(), None)).collect();
        all.extend(nodes.into_iter().map(|(name, desired)| (name, Some(desired))));
        self.publish_nodes(all, Some(unattached))
    }

    /// Takes a good read of some nodes' rows (`None`: the node has no rows
    /// now); every other node keeps what it has. Publishes the sets that
    /// changed and returns their nodes. `unattached`, when given, replaces
    /// the rows that name no valid node.
    ///
    /// A node that disappeared from the database gets the empty set (its
    /// agent removes our interfaces); a node with neither rows nor an agent
    /// is forgotten. The work is proportional to the nodes given, unless the
    /// mass-deletion guard's verdict flips (then every node is revisited).
    pub fn publish_nodes(
        &self,
        nodes: BTreeMap<NodeName, Option<NodeDesired>>,
        unattached: Option<Vec<RowProblem>>,
    ) -> Vec<NodeName> {
        let _serial = lock(&self.fleet.publish_lock);
        if let Some(unattached) = unattached {
            *write(&self.fleet.unattached) = Arc::new(unattached);
        }
        let first_sync = {
            let mut db = write(&self.fleet.db);
            db.up();
            !std::mem::replace(&mut db.synced, true)
        };
        let mut g = lock(&self.fleet.guard);
        let mut slot = lock(&self.fleet.rollout);
        let mut totals = g.totals;
        let mut touched = Vec::with_capacity(nodes.len());
        let mut rechanged = BTreeSet::new();
        let mut forget = Vec::new();
        for (name, desired) in nodes {
            let in_db = desired.is_some();
            let mut entry = match desired {
                Some(desired) => {
                    let mut entry = self.fleet.nodes.entry(name.clone()).or_insert_with(NodeEntry::new);
                    if take_desired(&mut entry, desired) {
                        rechanged.insert(name.clone());
                    }
                    entry
                }
                None => {
                    let Some(mut entry) = self.fleet.nodes.get_mut(&name) else { continue };
                    if take_desired(&mut entry, NodeDesired::empty()) {
                        rechanged.insert(name.clone());
                    }
                    if entry.session.is_none() {
                        forget.push(name.clone());
                    }
                    entry
                }
            };
            entry.in_db = in_db;
            totals = totals.replace(entry.counts, entry.guard_counts());
            // What the guard counted is now the node's share of the totals.
            entry.counts = entry.guard_counts();
            drop(entry);
            touched.push(name);
        }
        let mut released = Vec::new();
        for name in forget {
            if let Some((_, gone)) = self.fleet.nodes.remove_if(&name, |_, e| e.session.is_none() && !e.in_db) {
                totals = totals.replace(gone.counts, Counts::default());
                released.extend(self.fleet.rollout_forget(&mut slot, &name));
            }
        }
        let was = g.hold;
        let hold = self.fleet.judge(&mut g, totals);
        // Which changes go at once and which wait in a rollout; the first
        // sync after start only holds what a restart decision needs.
        if first_sync {
            self.fleet.gate_restart(&mut slot, hold);
        } else {
            released.extend(self.fleet.gate_changes(&mut slot, hold, &touched, &rechanged));
        }
        let mut changed = Vec::new();
        if hold != was || first_sync {
            self.fleet.refresh_all(&mut g, &mut changed);
        } else {
            g.totals = totals;
            for name in touched.into_iter().chain(released) {
                let Some(mut entry) = self.fleet.nodes.get_mut(&name) else { continue };
                match entry.refresh(hold, true) {
                    Refreshed::Published => changed.push(name),
                    Refreshed::ProblemChanged => {
                        let _ = self.fleet.changes.send(name);
                    }
                    Refreshed::Nothing => {}
                }
            }
        }
        drop(slot);
        drop(g);
        for name in &changed {
            let _ = self.fleet.changes.send(name.clone());
        }
        changed
    }
}

/// Sets the node's desired set from a good read; returns whether it changed
/// while a rollout held the node (a newer change of its rows).
fn take_desired(entry: &mut NodeEntry, desired: NodeDesired) -> bool {
    let held = entry.gate != super::rollouts::Gate::Open;
    let rechanged = held && entry.desired.set.digest() != desired.set.digest();
    entry.desired = Arc::new(desired);
    rechanged
}
