//! The controller's memory of the fleet: per node, the desired set published
//! to its agent, the agent's session, and what the agent last reported.
//!
//! The poll loop publishes; agent sessions subscribe, push and record; the
//! recorder turns reports into row updates; the fleet service reads. Nothing
//! here does I/O, and no lock is held across an await.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};

use dashmap::DashMap;
use multinic_proto::{
    AgentHello, AgentReport, DesiredSet, Digest, InterfaceSpec, InterfaceState, InterfaceStatus, MacAddress, NodeName,
};
use tokio::sync::{broadcast, watch};

use crate::desired::{DesiredFleet, NodeDesired, RowProblem};
use crate::guard::{self, Counts, GuardConfig, Verdict};
use crate::store::RowUpdate;

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
struct NodeEntry {
    /// The node's rows from the last good read (empty if it has none).
    desired: Arc<NodeDesired>,
    /// Whether the last good read had rows for this node.
    in_db: bool,
    generation: u64,
    published: watch::Sender<Option<Arc<Published>>>,
    session: Option<SessionInfo>,
    last_seen: Option<SystemTime>,
    applied: Option<Applied>,
    interfaces: BTreeMap<MacAddress, InterfaceRecord>,
    /// MACs the agent says it has (from Hello and reports).
    present: BTreeSet<MacAddress>,
    /// Removals the mass-deletion guard holds back on this node now.
    guarded: BTreeSet<MacAddress>,
    /// This node's share of the guard's counts, as last computed.
    counts: Counts,
}

impl NodeEntry {
    fn new() -> Self {
        let (published, _) = watch::channel(None);
        Self {
            desired: Arc::new(NodeDesired::empty()),
            in_db: false,
            generation: 0,
            published,
            session: None,
            last_seen: None,
            applied: None,
            interfaces: BTreeMap::new(),
            present: BTreeSet::new(),
            guarded: BTreeSet::new(),
            counts: Counts::default(),
        }
    }

    /// What the guard sees of this node.
    fn guard_counts(&self) -> Counts {
        Counts { present: self.present.len(), removals: guard::removals(&self.present, &self.desired.set).len() }
    }

    /// Recomputes the set to push (the database's set, plus the removals the
    /// guard holds) and publishes it if it changed and the fleet was read.
    fn refresh(&mut self, hold: bool, synced: bool) -> bool {
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

    fn convergence(&self) -> Convergence {
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

/// The state of the database link, for readiness and status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbStatus {
    /// Whether the last poll succeeded.
    pub up: bool,
    /// The last poll's error, if it failed.
    pub error: Option<String>,
    /// When the last successful poll finished.
    pub last_success: Option<SystemTime>,
    /// Whether any poll has ever succeeded (until then nothing is pushed).
    pub synced: bool,
}

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
}

/// Counts over the fleet, for status and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetCounts {
    pub nodes: usize,
    pub connected: usize,
    pub converged: usize,
    pub pending: usize,
    pub failed: usize,
    pub waiting: usize,
}

/// Why a report was not recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("session {session} of node {node} was replaced by a newer connection")]
    SessionReplaced { node: NodeName, session: u64 },
    #[error("node {node} is unknown")]
    UnknownNode { node: NodeName },
}

/// The fleet's state.
#[derive(Debug)]
pub struct Fleet {
    nodes: DashMap<NodeName, NodeEntry>,
    db: RwLock<DbStatus>,
    unattached: RwLock<Arc<Vec<RowProblem>>>,
    session_seq: AtomicU64,
    /// Names of nodes whose state changed, for watchers.
    changes: broadcast::Sender<NodeName>,
    /// Serialises publishes (one poll loop, but tests may publish too).
    publish_lock: Mutex<()>,
    /// Whether this replica holds the controller lock and may act.
    active: watch::Sender<bool>,
    guard_config: GuardConfig,
    /// The mass-deletion guard. Lock order: this mutex, then map shards;
    /// never a shard and then this mutex.
    guard: Mutex<GuardState>,
}

#[derive(Debug, Default)]
struct GuardState {
    totals: Counts,
    /// Why removals are held, while they are.
    holding: Option<String>,
    /// The removals an operator confirmed (they, or any part of them, go).
    confirmed: Option<BTreeSet<(NodeName, MacAddress)>>,
    /// When this replica became active (warm-up starts).
    activated: Option<Instant>,
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

impl Default for Fleet {
    fn default() -> Self {
        Self::new()
    }
}

impl Fleet {
    pub fn new() -> Self {
        Self {
            nodes: DashMap::new(),
            db: RwLock::new(DbStatus::default()),
            unattached: RwLock::new(Arc::new(Vec::new())),
            session_seq: AtomicU64::new(0),
            changes: broadcast::channel(1024).0,
            publish_lock: Mutex::new(()),
            active: watch::channel(false).0,
            guard_config: GuardConfig::default(),
            guard: Mutex::new(GuardState::default()),
        }
    }

    /// A fleet whose mass-deletion guard uses `config`.
    pub fn with_guard(config: GuardConfig) -> Self {
        Self { guard_config: config, ..Self::new() }
    }

    /// Marks this replica active (holding the controller lock) or standby;
    /// returns whether that changed. Agent sessions end when it turns false.
    pub fn set_active(&self, active: bool) -> bool {
        let changed = self.active.send_if_modified(|current| std::mem::replace(current, active) != active);
        if changed && active {
            lock(&self.guard).activated = Some(Instant::now());
        }
        changed
    }

    /// Whether this replica may act (read, push, record).
    pub fn is_active(&self) -> bool {
        *self.active.borrow()
    }

    /// Changes of [`Fleet::is_active`].
    pub fn subscribe_active(&self) -> watch::Receiver<bool> {
        self.active.subscribe()
    }

    /// Takes a new good read of the database: updates every node's rows and
    /// publishes the sets that changed. Returns the nodes whose set changed.
    ///
    /// A node that disappeared from the database gets the empty set (its
    /// agent removes our interfaces); a node with neither rows nor an agent
    /// is forgotten.
    pub fn publish(&self, fleet: DesiredFleet) -> Vec<NodeName> {
        let _serial = lock(&self.publish_lock);
        let mut changed = Vec::new();
        let DesiredFleet { mut nodes, unattached } = fleet;
        *write(&self.unattached) = Arc::new(unattached);

        let mut forget = Vec::new();
        for mut entry in self.nodes.iter_mut() {
            if let Some(desired) = nodes.remove(entry.key()) {
                entry.in_db = true;
                entry.desired = Arc::new(desired);
            } else {
                entry.in_db = false;
                entry.desired = Arc::new(NodeDesired::empty());
                if entry.session.is_none() {
                    forget.push(entry.key().clone());
                }
            }
        }
        for name in forget {
            self.nodes.remove_if(&name, |_, e| e.session.is_none() && !e.in_db);
        }
        for (name, desired) in nodes {
            let mut entry = self.nodes.entry(name).or_insert_with(NodeEntry::new);
            entry.in_db = true;
            entry.desired = Arc::new(desired);
        }
        {
            let mut db = write(&self.db);
            db.up = true;
            db.error = None;
            db.last_success = Some(SystemTime::now());
            db.synced = true;
        }
        self.refresh_all(&mut lock(&self.guard), &mut changed);
        for name in &changed {
            let _ = self.changes.send(name.clone());
        }
        changed
    }

    /// Records a failed poll. The published sets stay as they are.
    pub fn db_failed(&self, error: String) {
        let mut db = write(&self.db);
        db.up = false;
        db.error = Some(error);
    }

    pub fn db_status(&self) -> DbStatus {
        read(&self.db).clone()
    }

    /// Registers an agent's new stream; a previous session of the node is
    /// replaced. Returns the session id and the node's published set.
    pub fn connect(&self, hello: &AgentHello) -> (u64, watch::Receiver<Option<Arc<Published>>>) {
        let id = self.session_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let mut entry = self.nodes.entry(hello.node.clone()).or_insert_with(NodeEntry::new);
        entry.present = present_in(&hello.interfaces);
        let now = SystemTime::now();
        entry.session = Some(SessionInfo {
            id,
            agent_version: hello.agent_version.clone(),
            backend: hello.backend.clone(),
            apply_mode: hello.apply_mode.clone(),
            since: now,
        });
        entry.last_seen = Some(now);
        let rx = entry.published.subscribe();
        drop(entry);
        // What the agent has may change what the guard holds, and a node the
        // database does not know gets the empty set.
        self.node_changed(&hello.node);
        let _ = self.changes.send(hello.node.clone());
        (id, rx)
    }

    /// Takes the agent's Hello as its report when it already processed the
    /// published set (e.g. after a controller restart): nothing is pushed.
    /// Returns the published set it adopted.
    pub fn adopt(&self, session: u64, hello: &AgentHello) -> Option<Arc<Published>> {
        let mut entry = self.nodes.get_mut(&hello.node)?;
        if entry.session.as_ref().map(|s| s.id) != Some(session) {
            return None;
        }
        let published = entry.published.borrow().clone()?;
        if hello.applied_digest.as_ref() != Some(published.set.digest()) {
            return None;
        }
        let generation = published.generation;
        apply_report(&mut entry, &published, generation, &hello.interfaces);
        drop(entry);
        self.node_changed(&hello.node);
        let _ = self.changes.send(hello.node.clone());
        Some(published)
    }

    /// Records an agent's report on `pushed` (the set its nonce names).
    pub fn record(
        &self,
        node: &NodeName,
        session: u64,
        pushed: &Published,
        report: &AgentReport,
    ) -> Result<(), RecordError> {
        let mut entry = self.nodes.get_mut(node).ok_or_else(|| RecordError::UnknownNode { node: node.clone() })?;
        if entry.session.as_ref().map(|s| s.id) != Some(session) {
            return Err(RecordError::SessionReplaced { node: node.clone(), session });
        }
        apply_report(&mut entry, pushed, pushed.generation, &report.interfaces);
        drop(entry);
        self.node_changed(node);
        let _ = self.changes.send(node.clone());
        Ok(())
    }

    /// Re-judges the guard after one node's present set changed: only that
    /// node is republished unless the verdict flips.
    fn node_changed(&self, name: &NodeName) {
        let synced = read(&self.db).synced;
        let mut g = lock(&self.guard);
        let Some((old, new)) = self.nodes.get(name).map(|e| (e.counts, e.guard_counts())) else { return };
        let totals = Counts {
            present: g.totals.present - old.present.min(g.totals.present) + new.present,
            removals: g.totals.removals - old.removals.min(g.totals.removals) + new.removals,
        };
        let was_holding = g.holding.is_some();
        let hold = self.judge(&mut g, totals);
        if hold != was_holding || hold {
            // The verdict flipped, or holds (its token may have changed): all nodes.
            let mut changed = Vec::new();
            self.refresh_all(&mut g, &mut changed);
            drop(g);
            for node in changed {
                let _ = self.changes.send(node);
            }
            return;
        }
        g.totals = totals;
        if let Some(mut entry) = self.nodes.get_mut(name) {
            entry.refresh(false, synced);
        }
    }

    /// Recomputes the guard over every node and republishes every set.
    fn refresh_all(&self, g: &mut GuardState, changed: &mut Vec<NodeName>) {
        let synced = read(&self.db).synced;
        let totals = self.nodes.iter().fold(Counts::default(), |t, e| {
            let c = e.guard_counts();
            Counts { present: t.present + c.present, removals: t.removals + c.removals }
        });
        let hold = self.judge(g, totals);
        for mut entry in self.nodes.iter_mut() {
            if entry.refresh(hold, synced) {
                changed.push(entry.key().clone());
            }
        }
        g.totals = totals;
    }

    /// The guard's verdict for `totals`; records it (and logs changes).
    fn judge(&self, g: &mut GuardState, totals: Counts) -> bool {
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
            for mac in guard::removals(&entry.present, &entry.desired.set) {
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

    /// Marks the session's stream as gone (unless a newer one replaced it).
    pub fn disconnect(&self, node: &NodeName, session: u64) {
        if let Some(mut entry) = self.nodes.get_mut(node)
            && entry.session.as_ref().map(|s| s.id) == Some(session)
        {
            entry.session = None;
            entry.last_seen = Some(SystemTime::now());
        }
        let _ = self.changes.send(node.clone());
    }

    /// Whether `session` is still the node's current session.
    pub fn is_current(&self, node: &NodeName, session: u64) -> bool {
        self.nodes.get(node).is_some_and(|e| e.session.as_ref().map(|s| s.id) == Some(session))
    }

    /// Notes traffic from the node's agent.
    pub fn seen(&self, node: &NodeName) {
        if let Some(mut entry) = self.nodes.get_mut(node) {
            entry.last_seen = Some(SystemTime::now());
        }
    }

    /// The `netplan_success` writes that the node's reports call for: 1 for
    /// rows whose exact content the agent applied, 0 for rows it failed,
    /// refused or waits for, and 0 for invalid rows. Only rows whose stored
    /// value differs are returned.
    pub fn row_updates(&self, node: &NodeName) -> Vec<RowUpdate> {
        let Some(entry) = self.nodes.get(node) else { return Vec::new() };
        let mut updates = Vec::new();
        for (mac, rows) in &entry.desired.rows {
            let held = entry.desired.set.is_held(mac);
            let record = entry.interfaces.get(mac);
            for row in rows {
                let wanted = match (row.spec, record) {
                    (None, _) => Some(false),
                    (Some(_), _) if held => None,
                    (Some(spec), Some(record)) if record.spec == Some(spec) => record.status.state.netplan_success(),
                    _ => None,
                };
                if let Some(success) = wanted
                    && success != row.netplan_success
                {
                    updates.push(RowUpdate { id: row.id, success, content: row.content.clone() });
                }
            }
        }
        updates
    }

    /// Every node's name, in order.
    pub fn node_names(&self) -> Vec<NodeName> {
        let mut names: Vec<NodeName> = self.nodes.iter().map(|e| e.key().clone()).collect();
        names.sort();
        names
    }

    /// A copy of one node's state.
    pub fn node(&self, name: &NodeName) -> Option<NodeSnapshot> {
        let entry = self.nodes.get(name)?;
        Some(NodeSnapshot {
            name: name.clone(),
            convergence: entry.convergence(),
            in_db: entry.in_db,
            published: entry.published.borrow().clone(),
            desired: entry.desired.clone(),
            session: entry.session.clone(),
            last_seen: entry.last_seen,
            applied: entry.applied.clone(),
            interfaces: entry.interfaces.clone(),
            guarded: entry.guarded.clone(),
        })
    }

    /// Counts by convergence state.
    pub fn counts(&self) -> FleetCounts {
        let mut counts = FleetCounts::default();
        for entry in &self.nodes {
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

    /// Rows that name no valid node.
    pub fn unattached(&self) -> Arc<Vec<RowProblem>> {
        read(&self.unattached).clone()
    }

    /// Node names as their state changes.
    pub fn subscribe_changes(&self) -> broadcast::Receiver<NodeName> {
        self.changes.subscribe()
    }
}

/// Stores per-interface statuses for `pushed`, keeping `since` for unchanged states.
fn apply_report(entry: &mut NodeEntry, pushed: &Published, generation: u64, statuses: &[InterfaceStatus]) {
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
    entry.interfaces = interfaces;
    // Held MACs the agent did not mention stay present: it keeps them.
    let kept: BTreeSet<MacAddress> = entry.present.intersection(pushed.set.held()).copied().collect();
    entry.present = present_in(statuses).union(&kept).copied().collect();
    entry.applied = Some(Applied { generation, digest: pushed.set.digest().clone(), at: now });
    entry.last_seen = Some(now);
}

/// The MACs a node's agent has configured (or keeps), from its statuses.
fn present_in(statuses: &[InterfaceStatus]) -> BTreeSet<MacAddress> {
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

// A poisoned lock only means another thread panicked while holding it; the
// data (plain status values) is still consistent, so keep going.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::desired_fleet;
    use crate::store::{FleetSnapshot, InterfaceRow};
    use multinic_proto::{ErrorCode, InterfaceName, Outcome};

    fn row(id: i64, node: &str, mac: &str, mtu: i64, success: i64) -> InterfaceRow {
        InterfaceRow {
            id,
            macaddress: mac.into(),
            attached_node_name: Some(node.into()),
            address: None,
            cidr: None,
            subnet_cidr: None,
            mtu: Some(mtu),
            netplan_success: success,
        }
    }

    fn hello(node: &str, digest: Option<Digest>) -> AgentHello {
        AgentHello {
            node: node.parse().unwrap(),
            agent_version: "t".into(),
            backend: "netplan".into(),
            apply_mode: "none".into(),
            applied_digest: digest,
            interfaces: vec![],
        }
    }

    fn applied_report(p: &Published) -> AgentReport {
        AgentReport {
            generation: p.generation,
            nonce: 1,
            digest: Some(p.set.digest().clone()),
            outcome: Outcome::Applied,
            interfaces: p
                .set
                .iter()
                .enumerate()
                .map(|(i, s)| InterfaceStatus::applied(s.mac, InterfaceName::new(i as u8, 10).unwrap()))
                .collect(),
            error: String::new(),
        }
    }

    #[test]
    fn publish_only_changes_and_bumps_generation() {
        let fleet = Fleet::new();
        let snap = FleetSnapshot { rows: vec![row(1, "a", "fa:16:3e:00:00:01", 1500, 0)] };
        assert_eq!(fleet.publish(desired_fleet(&snap)).len(), 1);
        assert!(fleet.publish(desired_fleet(&snap)).is_empty(), "same content, no publish");
        let snap2 = FleetSnapshot { rows: vec![row(1, "a", "fa:16:3e:00:00:01", 9000, 0)] };
        assert_eq!(fleet.publish(desired_fleet(&snap2)).len(), 1);
        let node = fleet.node(&"a".parse().unwrap()).unwrap();
        assert_eq!(node.published.unwrap().generation, 2);
    }

    #[test]
    fn report_drives_row_updates_for_exact_content_only() {
        let fleet = Fleet::new();
        let a: NodeName = "a".parse().unwrap();
        let snap = FleetSnapshot { rows: vec![row(1, "a", "fa:16:3e:00:00:01", 1500, 0)] };
        fleet.publish(desired_fleet(&snap));
        let (session, rx) = fleet.connect(&hello("a", None));
        let pushed = rx.borrow().clone().unwrap();
        fleet.record(&a, session, &pushed, &applied_report(&pushed)).unwrap();
        let updates = fleet.row_updates(&a);
        assert_eq!(updates.len(), 1);
        assert!(updates[0].success);
        assert_eq!(fleet.node(&a).unwrap().convergence, Convergence::Converged);

        // The row changes: the old report must not mark the new content.
        let snap2 = FleetSnapshot { rows: vec![row(1, "a", "fa:16:3e:00:00:01", 9000, 1)] };
        fleet.publish(desired_fleet(&snap2));
        assert!(fleet.row_updates(&a).is_empty());
        assert_eq!(fleet.node(&a).unwrap().convergence, Convergence::Pending);

        // A re-inserted row (new id) with already-applied content gets 1.
        let snap3 = FleetSnapshot { rows: vec![row(7, "a", "fa:16:3e:00:00:01", 1500, 0)] };
        fleet.publish(desired_fleet(&snap3));
        let updates = fleet.row_updates(&a);
        assert_eq!(updates.iter().map(|u| (u.id, u.success)).collect::<Vec<_>>(), vec![(7, true)]);
    }

    #[test]
    fn failed_interfaces_and_invalid_rows_read_zero() {
        let fleet = Fleet::new();
        let a: NodeName = "a".parse().unwrap();
        let snap = FleetSnapshot {
            rows: vec![row(1, "a", "fa:16:3e:00:00:01", 1500, 1), row(2, "a", "fa:16:3e:00:00:02", 0, 1)],
        };
        fleet.publish(desired_fleet(&snap));
        let (session, rx) = fleet.connect(&hello("a", None));
        let pushed = rx.borrow().clone().unwrap();
        let mac: MacAddress = "fa:16:3e:00:00:01".parse().unwrap();
        let report = AgentReport {
            generation: pushed.generation,
            nonce: 1,
            digest: Some(pushed.set.digest().clone()),
            outcome: Outcome::Partial,
            interfaces: vec![InterfaceStatus::problem(
                mac,
                None,
                InterfaceState::Refused,
                ErrorCode::CapacityExceeded,
                "full",
            )],
            error: String::new(),
        };
        fleet.record(&a, session, &pushed, &report).unwrap();
        let mut updates: Vec<_> = fleet.row_updates(&a).into_iter().map(|u| (u.id, u.success)).collect();
        updates.sort();
        assert_eq!(updates, vec![(1, false), (2, false)]);
        assert_eq!(fleet.node(&a).unwrap().convergence, Convergence::Failed);
    }

    #[test]
    fn replaced_sessions_cannot_record() {
        let fleet = Fleet::new();
        let a: NodeName = "a".parse().unwrap();
        fleet.publish(desired_fleet(&FleetSnapshot { rows: vec![row(1, "a", "fa:16:3e:00:00:01", 1500, 0)] }));
        let (old, rx) = fleet.connect(&hello("a", None));
        let (_new, _) = fleet.connect(&hello("a", None));
        let pushed = rx.borrow().clone().unwrap();
        assert!(matches!(
            fleet.record(&a, old, &pushed, &applied_report(&pushed)),
            Err(RecordError::SessionReplaced { .. })
        ));
        fleet.disconnect(&a, old);
        assert!(fleet.node(&a).unwrap().session.is_some(), "the old stream's end keeps the new session");
    }

    #[test]
    fn nodes_leaving_the_db_get_the_empty_set_or_are_forgotten() {
        let fleet = Fleet::new();
        let snap = FleetSnapshot {
            rows: vec![row(1, "a", "fa:16:3e:00:00:01", 1500, 0), row(2, "b", "fa:16:3e:00:00:02", 1500, 0)],
        };
        fleet.publish(desired_fleet(&snap));
        let _ = fleet.connect(&hello("a", None));
        let changed = fleet.publish(desired_fleet(&FleetSnapshot::default()));
        assert_eq!(changed, vec!["a".parse::<NodeName>().unwrap()]);
        let a = fleet.node(&"a".parse().unwrap()).unwrap();
        assert!(a.published.unwrap().set.is_empty());
        assert!(fleet.node(&"b".parse().unwrap()).is_none());
    }

    #[test]
    fn adopt_takes_hello_when_digest_matches() {
        let fleet = Fleet::new();
        let snap = FleetSnapshot { rows: vec![row(1, "a", "fa:16:3e:00:00:01", 1500, 0)] };
        fleet.publish(desired_fleet(&snap));
        let digest = fleet.node(&"a".parse().unwrap()).unwrap().published.unwrap().set.digest().clone();
        let mut h = hello("a", Some(digest));
        h.interfaces =
            vec![InterfaceStatus::applied("fa:16:3e:00:00:01".parse().unwrap(), InterfaceName::new(0, 10).unwrap())];
        let (session, _) = fleet.connect(&h);
        assert!(fleet.adopt(session, &h).is_some());
        assert_eq!(fleet.node(&"a".parse().unwrap()).unwrap().convergence, Convergence::Converged);
        let other = hello("a", None);
        let (session, _) = fleet.connect(&other);
        assert!(fleet.adopt(session, &other).is_none());
    }
}
