//! One node as the controller sees it: the set published to its agent, the
//! agent's session, and what the agent last reported about each interface.
//!
//! Exists to keep the per-node rules in one place: a set is published only
//! when its digest changes, and a node is converged only when the agent
//! processed exactly the published set and every interface is applied.
//! Nothing here does I/O or takes a lock.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use multinic_proto::{DesiredSet, Digest, InterfaceSpec, InterfaceState, InterfaceStatus, MacAddress};
use tokio::sync::watch;

use crate::desired::NodeDesired;
use crate::guard::{self, Counts};

/// A desired set as pushed to a node's agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Increases by one each time the node's set changes (per controller run).
    pub generation: u64,
    pub set: DesiredSet,
    /// When the change was seen in the database.
    pub at: Instant,
}

impl Published {
    /// Time since the change was seen.
    pub fn age(&self) -> std::time::Duration {
        self.at.elapsed()
    }
}

/// Where a node stands, from the controller's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Convergence {
    /// The agent processed the current set and every interface is applied.
    Converged,
    /// Not connected, not reported yet, or a push is outstanding.
    Pending,
    /// The agent reported failed or refused interfaces for the current set.
    Failed,
    /// The agent reported interfaces waiting for their MAC to appear.
    Waiting,
}

impl Convergence {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Converged => "converged",
            Self::Pending => "pending",
            Self::Failed => "failed",
            Self::Waiting => "waiting",
        }
    }
}

/// One interface as last reported, with the spec the report was about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceRecord {
    pub status: InterfaceStatus,
    /// The spec of the push the status answers; `None` for a held MAC.
    pub spec: Option<InterfaceSpec>,
    /// When the state (or its error) last changed.
    pub since: SystemTime,
}

/// The agent connected for a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub id: u64,
    pub agent_version: String,
    pub backend: String,
    pub apply_mode: String,
    pub since: SystemTime,
}

/// What the agent last acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub generation: u64,
    pub digest: Digest,
    pub at: SystemTime,
}

#[derive(Debug)]
pub(super) struct NodeEntry {
    /// The node's rows from the last good read (empty if it has none).
    pub(super) desired: Arc<NodeDesired>,
    /// Whether the last good read had rows for this node.
    pub(super) in_db: bool,
    pub(super) generation: u64,
    pub(super) published: watch::Sender<Option<Arc<Published>>>,
    pub(super) session: Option<SessionInfo>,
    pub(super) last_seen: Option<SystemTime>,
    pub(super) applied: Option<Applied>,
    pub(super) interfaces: Records,
    /// MACs the agent says it has (from Hello and reports).
    pub(super) present: BTreeSet<MacAddress>,
    /// Removals the mass-deletion guard holds back on this node now.
    pub(super) guarded: BTreeSet<MacAddress>,
    /// This node's share of the guard's counts, as last computed.
    pub(super) counts: Counts,
}

impl NodeEntry {
    pub(super) fn new() -> Self {
        let (published, _) = watch::channel(None);
        Self {
            desired: Arc::new(NodeDesired::empty()),
            in_db: false,
            generation: 0,
            published,
            session: None,
            last_seen: None,
            applied: None,
            interfaces: Records::default(),
            present: BTreeSet::new(),
            guarded: BTreeSet::new(),
            counts: Counts::default(),
        }
    }

    /// What the guard sees of this node.
    pub(super) fn guard_counts(&self) -> Counts {
        Counts { present: self.present.len(), removals: guard::removals(&self.present, &self.desired.set).len() }
    }

    /// Recomputes the set to push (the database's set, plus the removals the
    /// guard holds) and publishes it if it changed and the fleet was read.
    pub(super) fn refresh(&mut self, hold: bool, synced: bool) -> bool {
        self.counts = self.guard_counts();
        self.guarded = if hold { guard::removals(&self.present, &self.desired.set) } else { BTreeSet::new() };
        if !synced {
            return false;
        }
        if self.guarded.is_empty() {
            let set = self.desired.set.clone();
            return self.publish(&set);
        }
        let specs = self.desired.set.iter().map(|s| (s.mac, *s)).collect();
        let held = self.desired.set.held().union(&self.guarded).copied().collect();
        self.publish(&DesiredSet::from_parts(specs, held))
    }

    /// Publishes `set` if it differs from what is published; returns whether it did.
    fn publish(&mut self, set: &DesiredSet) -> bool {
        let current = self.published.borrow().as_ref().map(|p| p.set.digest().clone());
        if current.as_ref() == Some(set.digest()) {
            return false;
        }
        self.generation += 1;
        self.published.send_replace(Some(Arc::new(Published {
            generation: self.generation,
            set: set.clone(),
            at: Instant::now(),
        })));
        true
    }

    pub(super) fn convergence(&self) -> Convergence {
        let published = self.published.borrow();
        let Some(published) = published.as_ref() else { return Convergence::Pending };
        match &self.applied {
            Some(applied) if applied.digest == *published.set.digest() => {}
            _ => return Convergence::Pending,
        }
        let mut verdict = Convergence::Converged;
        for spec in published.set.iter() {
            match self.interfaces.get(&spec.mac).map(|r| r.status.state) {
                Some(InterfaceState::Failed | InterfaceState::Refused) => return Convergence::Failed,
                Some(InterfaceState::Waiting) => verdict = Convergence::Waiting,
                Some(InterfaceState::Applied) => {}
                _ => return Convergence::Pending,
            }
        }
        verdict
    }
}

/// What an agent reported, by MAC: a short sorted list. A node has a
/// handful of interfaces, and a map's node would reserve room for eleven
/// records (about 1 KB) for each of ten thousand nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Records(Vec<(MacAddress, InterfaceRecord)>);

impl Records {
    pub(super) fn get(&self, mac: &MacAddress) -> Option<&InterfaceRecord> {
        self.0.binary_search_by(|(m, _)| m.cmp(mac)).ok().map(|i| &self.0[i].1)
    }

    /// A copy for status views.
    pub(super) fn to_map(&self) -> BTreeMap<MacAddress, InterfaceRecord> {
        self.0.iter().cloned().collect()
    }
}

/// Stores per-interface statuses for `pushed`, keeping `since` for unchanged states.
pub(super) fn apply_report(entry: &mut NodeEntry, pushed: &Published, generation: u64, statuses: &[InterfaceStatus]) {
    let now = SystemTime::now();
    let mut interfaces = BTreeMap::new();
    for status in statuses {
        let spec = pushed.set.get(&status.mac).copied();
        if spec.is_none() && !pushed.set.is_held(&status.mac) {
            continue; // removed, or not part of this set
        }
        let since = match entry.interfaces.get(&status.mac) {
            Some(old) if old.status.state == status.state && old.status.code == status.code && old.spec == spec => {
                old.since
            }
            _ => now,
        };
        interfaces.insert(status.mac, InterfaceRecord { status: status.clone(), spec, since });
    }
    entry.interfaces = Records(interfaces.into_iter().collect());
    // Held MACs the agent did not mention stay present: it keeps them.
    let kept: BTreeSet<MacAddress> = entry.present.intersection(pushed.set.held()).copied().collect();
    entry.present = present_in(statuses).union(&kept).copied().collect();
    entry.applied = Some(Applied { generation, digest: pushed.set.digest().clone(), at: now });
    entry.last_seen = Some(now);
}

/// The MACs a node's agent has configured (or keeps), from its statuses.
pub(super) fn present_in(statuses: &[InterfaceStatus]) -> BTreeSet<MacAddress> {
    statuses
        .iter()
        .filter(|s| {
            matches!(
                s.state,
                InterfaceState::Applied | InterfaceState::Waiting | InterfaceState::Failed | InterfaceState::Held
            )
        })
        .map(|s| s.mac)
        .collect()
}
