//! The controller's memory of the fleet: per node, the desired set published
//! to its agent, the agent's session, and what the agent last reported.
//!
//! The poll loop publishes; agent sessions subscribe, push and record; the
//! recorder turns reports into row updates; the fleet service reads. Nothing
//! here does I/O, and no lock is held across an await.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use dashmap::DashMap;
use multinic_proto::{AgentHello, AgentReport, MacAddress, NodeName, Outcome};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::desired::{DesiredFleet, NodeDesired, RowProblem};
use crate::guard::{Counts, GuardConfig};
use crate::store::RowUpdate;

pub mod diff;
#[cfg(test)]
mod limits_tests;
mod node;
mod removals;
#[cfg(test)]
mod tests;

pub use node::{
    Applied, Convergence, InterfaceRecord, MAX_PUSH_BYTES, NodeDrift, NodeProblem, Published, SessionInfo,
    UNANSWERED_AFTER, Unanswered, human, wire_bound,
};
use node::{NodeEntry, Refreshed, apply_report, present_in};
use removals::GuardState;
pub use removals::{ConfirmError, GuardStatus};

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
    /// What is wrong with the node as a whole now.
    pub problems: Vec<NodeProblem>,
    /// The last drift its agent reported, if any.
    pub drift: Option<NodeDrift>,
    /// Why the guard holds removals (its holds are in `guarded`), if it does.
    pub guard_reason: Option<String>,
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
    /// A push unanswered for longer is a node problem.
    answer_within: Duration,
    /// The mass-deletion guard. Lock order: this mutex, then map shards;
    /// never a shard and then this mutex.
    guard: Mutex<GuardState>,
    /// Counts the times this replica became active (what a node reported
    /// in is compared with it).
    activation: AtomicU64,
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
            answer_within: UNANSWERED_AFTER,
            guard: Mutex::new(GuardState::default()),
            activation: AtomicU64::new(0),
        }
    }

    /// A fleet whose mass-deletion guard uses `config`.
    pub fn with_guard(config: GuardConfig) -> Self {
        Self { guard_config: config, ..Self::new() }
    }

    /// Shows a push unanswered for `answer_within` as a node problem.
    pub fn answer_within(mut self, answer_within: Duration) -> Self {
        self.answer_within = answer_within;
        self
    }

    /// Marks this replica active (holding the controller lock) or standby;
    /// returns whether that changed. Agent sessions end when it turns false.
    pub fn set_active(&self, active: bool) -> bool {
        let changed = self.active.send_if_modified(|current| std::mem::replace(current, active) != active);
        if changed && active {
            self.activation.fetch_add(1, Ordering::Relaxed);
            let mut g = lock(&self.guard);
            g.activated = Some(Instant::now());
            g.warmup = Default::default();
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

    /// Takes a new good read of the whole database: every node's rows. See
    /// [`Fleet::publish_nodes`]; nodes missing from `fleet` have no rows.
    pub fn publish(&self, fleet: DesiredFleet) -> Vec<NodeName> {
        let DesiredFleet { nodes, unattached } = fleet;
        let mut all: BTreeMap<NodeName, Option<NodeDesired>> =
            self.nodes.iter().map(|e| (e.key().clone(), None)).collect();
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
        let _serial = lock(&self.publish_lock);
        if let Some(unattached) = unattached {
            *write(&self.unattached) = Arc::new(unattached);
        }
        let first_sync = {
            let mut db = write(&self.db);
            db.up = true;
            db.error = None;
            db.last_success = Some(SystemTime::now());
            !std::mem::replace(&mut db.synced, true)
        };
        let mut g = lock(&self.guard);
        let mut totals = g.totals;
        let mut touched = Vec::with_capacity(nodes.len());
        let mut forget = Vec::new();
        for (name, desired) in nodes {
            let mut entry = match desired {
                Some(desired) => {
                    let mut entry = self.nodes.entry(name.clone()).or_insert_with(NodeEntry::new);
                    entry.in_db = true;
                    entry.desired = Arc::new(desired);
                    entry
                }
                None => {
                    let Some(mut entry) = self.nodes.get_mut(&name) else { continue };
                    entry.in_db = false;
                    entry.desired = Arc::new(NodeDesired::empty());
                    if entry.session.is_none() {
                        forget.push(name.clone());
                    }
                    entry
                }
            };
            totals = totals.replace(entry.counts, entry.guard_counts());
            // What the guard counted is now the node's share of the totals.
            entry.counts = entry.guard_counts();
            drop(entry);
            touched.push(name);
        }
        for name in forget {
            if let Some((_, gone)) = self.nodes.remove_if(&name, |_, e| e.session.is_none() && !e.in_db) {
                totals = totals.replace(gone.counts, Counts::default());
            }
        }
        let was = g.hold;
        let hold = self.judge(&mut g, totals);
        let mut changed = Vec::new();
        if hold != was || first_sync {
            self.refresh_all(&mut g, &mut changed);
        } else {
            g.totals = totals;
            for name in touched {
                let Some(mut entry) = self.nodes.get_mut(&name) else { continue };
                match entry.refresh(hold, true) {
                    Refreshed::Published => changed.push(name),
                    Refreshed::ProblemChanged => {
                        let _ = self.changes.send(name);
                    }
                    Refreshed::Nothing => {}
                }
            }
        }
        drop(g);
        for name in &changed {
            let _ = self.changes.send(name.clone());
        }
        changed
    }

    /// Records a good poll that changed nothing.
    pub fn db_ok(&self) {
        let mut db = write(&self.db);
        db.up = true;
        db.error = None;
        db.last_success = Some(SystemTime::now());
    }

    /// Rows rejected by validation, across the fleet.
    pub fn invalid_rows(&self) -> usize {
        let attached: usize = self.nodes.iter().map(|e| e.desired.problems.len()).sum();
        attached + read(&self.unattached).len()
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

    /// Registers an agent's new stream (its Hello was checked by
    /// [`crate::claims::check_hello`]); a previous session of the node is
    /// replaced and its stream told to end. Returns the session id, the
    /// node's published set, and the token cancelled when a newer stream
    /// replaces this one.
    pub fn connect(&self, hello: &AgentHello) -> (u64, watch::Receiver<Option<Arc<Published>>>, CancellationToken) {
        let id = self.session_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let warming_up = self.warming_up();
        let mut entry = self.nodes.entry(hello.node.clone()).or_insert_with(NodeEntry::new);
        // Once made in the warm-up, a node's claims keep counting (its agent
        // reconnects at every connection age cap).
        entry.claims_count |= warming_up;
        // Hello lists what the agent has; a fresh agent (no digest, no
        // statuses) says nothing, and what was believed before still holds.
        if hello.applied_digest.is_some() || !hello.interfaces.is_empty() {
            entry.take_inventory(present_in(&hello.interfaces), None);
            entry.inventory_known = true;
            entry.reported_in = self.activation.load(Ordering::Relaxed);
        } else {
            entry.claimed.clear();
            entry.inventory_known = false;
        }
        let end = CancellationToken::new();
        if let Some(previous) = entry.session_end.replace(end.clone()) {
            previous.cancel();
        }
        entry.unanswered = None;
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
        (id, rx, end)
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
        // Statuses that do not fit the set are no report on it: push instead.
        if crate::claims::check_against_set(&published.set, &hello.interfaces).is_err() {
            return None;
        }
        let generation = published.generation;
        apply_report(&mut entry, &published, generation, &hello.interfaces);
        entry.reported_in = self.activation.load(Ordering::Relaxed);
        drop(entry);
        self.node_changed(&hello.node);
        let _ = self.changes.send(hello.node.clone());
        Some(published)
    }

    /// Records an agent's report on `pushed` (the set its nonce names; the
    /// report was checked against it by [`crate::claims::check_report`]). A
    /// rejected push changed nothing on the node: only the reason is kept.
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
        if report.outcome == Outcome::Rejected {
            entry.rejected = Some(format!("generation {}: {}", pushed.generation, report.error));
            entry.unanswered = None;
            entry.last_seen = Some(SystemTime::now());
            drop(entry);
            let _ = self.changes.send(node.clone());
            return Ok(());
        }
        apply_report(&mut entry, pushed, pushed.generation, &report.interfaces);
        entry.reported_in = self.activation.load(Ordering::Relaxed);
        entry.record_drift(&report.drift, SystemTime::now());
        drop(entry);
        self.node_changed(node);
        let _ = self.changes.send(node.clone());
        Ok(())
    }

    /// Marks the session's stream as gone (unless a newer one replaced it).
    /// What only the agent vouched for is forgotten, unless it was said in
    /// the guard's warm-up (then it counts until the agent says otherwise).
    pub fn disconnect(&self, node: &NodeName, session: u64) {
        let mut claims_dropped = false;
        if let Some(mut entry) = self.nodes.get_mut(node)
            && entry.session.as_ref().map(|s| s.id) == Some(session)
        {
            entry.session = None;
            entry.session_end = None;
            entry.unanswered = None;
            entry.last_seen = Some(SystemTime::now());
            if !entry.claims_count {
                claims_dropped = !entry.claimed.is_empty();
                entry.claimed.clear();
            }
        }
        if claims_dropped {
            self.node_changed(node);
        }
        let _ = self.changes.send(node.clone());
    }

    /// Notes that the session's stream pushed `generation` and waits for a report.
    pub fn pushed(&self, node: &NodeName, session: u64, generation: u64) {
        if let Some(mut entry) = self.nodes.get_mut(node)
            && entry.session.as_ref().map(|s| s.id) == Some(session)
        {
            entry.unanswered = Some(Unanswered { generation, since: SystemTime::now() });
        }
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
    /// refused or waits for, 0 for invalid rows, and 0 for rows whose
    /// content changed in this run until the node confirms the new content.
    /// Only rows whose stored value differs are returned.
    pub fn row_updates(&self, node: &NodeName) -> Vec<RowUpdate> {
        let Some(entry) = self.nodes.get(node) else { return Vec::new() };
        let mut updates = Vec::new();
        for (mac, rows) in &entry.desired.rows {
            let held = entry.desired.set.is_held(mac);
            let record = entry.interfaces.get(mac);
            for row in rows {
                let unconfirmed = row.stale.then_some(false);
                let wanted = match (row.spec, record) {
                    (None, _) => Some(false),
                    (Some(_), _) if held => unconfirmed,
                    (Some(spec), Some(record)) if record.spec == Some(spec) => {
                        record.status.state.netplan_success().or(unconfirmed)
                    }
                    _ => unconfirmed,
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
        // Before the node's shard: lock order is the guard, then shards.
        let guard_reason = lock(&self.guard).holding.clone();
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
            interfaces: entry.interfaces.to_map(),
            guarded: entry.guarded.clone(),
            problems: entry.problems(SystemTime::now(), self.answer_within),
            drift: entry.drift.clone(),
            guard_reason: (!entry.guarded.is_empty()).then_some(guard_reason).flatten(),
        })
    }

    /// Rejected rows across the fleet (node by node in name order, then the
    /// rows naming no node), at most `limit` of them.
    pub fn row_problems(&self, limit: usize) -> Bounded<RowProblem> {
        let mut out = Bounded::new();
        for name in self.node_names() {
            if let Some(entry) = self.nodes.get(&name) {
                out.extend(&entry.desired.problems, limit);
            }
        }
        out.extend(&read(&self.unattached), limit);
        out
    }

    /// Accepted rows that look wrong, across the fleet, at most `limit`.
    pub fn row_warnings(&self, limit: usize) -> Bounded<RowProblem> {
        let mut out = Bounded::new();
        for name in self.node_names() {
            if let Some(entry) = self.nodes.get(&name) {
                out.extend(&entry.desired.warnings, limit);
            }
        }
        out
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

    /// The first `limit` nodes by name that are not converged, with why: a
    /// node with rows whose agent has no stream is `disconnected` (whatever
    /// it last reported), any other its [`Convergence`] when that is not
    /// converged. For the per-node alerting metric; a name is copied only
    /// while it is among the first `limit`.
    pub fn unconverged_nodes(&self, limit: usize) -> Vec<(NodeName, &'static str)> {
        let mut first: std::collections::BinaryHeap<(NodeName, &'static str)> = std::collections::BinaryHeap::new();
        for entry in &self.nodes {
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
        read(&self.unattached).clone()
    }

    /// Node names as their state changes.
    pub fn subscribe_changes(&self) -> broadcast::Receiver<NodeName> {
        self.changes.subscribe()
    }
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
