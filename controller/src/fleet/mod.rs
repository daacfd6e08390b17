//! The controller's memory of the fleet: per node, the desired set published
//! to its agent, the agent's session, and what the agent last reported.
//!
//! [`Fleet`] owns the shared state (the node map, the guard, the database
//! link's state) and hands it out to its tenants, one small type each, in a
//! file of its own:
//!
//! - [`Fleet::leadership`] ([`Leadership`], `leadership.rs`): whether this
//!   replica may act; the election sets it, the streams watch it.
//! - [`Fleet::db`] ([`DbHealth`], `db.rs`): the poll loop's last word on the
//!   database, for readiness and status.
//! - [`Fleet::publisher`] ([`Publisher`], `publish.rs`): the poll loop turns a
//!   good read into published sets.
//! - [`Fleet::sessions`] ([`Sessions`], `sessions.rs`): the agent streams'
//!   Hello, pushes, reports and end.
//! - [`Fleet::write_back`] ([`WriteBack`], `write_back.rs`): the
//!   `netplan_success` values the recorder writes.
//! - [`Fleet::guard`] ([`RemovalGuard`], `removals.rs`): the mass-deletion
//!   guard's status and an operator's confirmation.
//! - [`Fleet::view`] ([`View`], `views.rs`): copies and counts for status,
//!   metrics and watchers.
//! - [`Fleet::rollouts`] ([`Rollouts`], `rollouts.rs`): changes of many
//!   nodes released in waves, the gate that holds the rest, an operator's
//!   resume and abort, and the rebuild after a restart.
//!
//! `node.rs` holds the per-node rules all of them share; `diff.rs` compares a
//! node's rows with what its agent reported. Nothing here does I/O, and no
//! lock is held across an await. A tenant never reaches into another's
//! state except through the shared helpers here and in `removals.rs`.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use dashmap::DashMap;
use multinic_proto::NodeName;
use tokio::sync::{broadcast, watch};

use crate::desired::RowProblem;
use crate::guard::GuardConfig;
use crate::metrics::RolloutMetrics;
use crate::rollout::RolloutConfig;

mod db;
pub mod diff;
mod leadership;
#[cfg(test)]
mod limits_tests;
mod node;
mod publish;
mod removals;
#[cfg(test)]
mod rollout_tests;
mod rollouts;
mod sessions;
#[cfg(test)]
mod tests;
mod views;
mod write_back;

pub use db::{DbHealth, DbStatus};
pub use leadership::Leadership;
use node::NodeEntry;
pub use node::{
    Applied, Convergence, InterfaceRecord, MAX_PUSH_BYTES, NodeDrift, NodeProblem, Published, SessionInfo,
    UNANSWERED_AFTER, Unanswered, human, wire_bound,
};
pub use publish::Publisher;
use removals::GuardState;
pub use removals::{ConfirmError, GuardStatus, RemovalGuard};
use rollouts::RolloutSlot;
pub use rollouts::Rollouts;
pub use sessions::{RecordError, Sessions};
pub use views::{Bounded, NodeCounts, NodeSnapshot, View};
pub use write_back::WriteBack;

/// The fleet's shared state; its tenants (see the module docs) read and
/// change it.
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
    /// The current rollout. Lock order: the guard mutex, then this, then
    /// map shards.
    rollout: Mutex<RolloutSlot>,
    rollout_config: RolloutConfig,
    rollout_metrics: RolloutMetrics,
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
            rollout: Mutex::new(RolloutSlot::default()),
            rollout_config: RolloutConfig::off(),
            rollout_metrics: RolloutMetrics::default(),
        }
    }

    /// A fleet whose mass-deletion guard uses `config`.
    pub fn with_guard(config: GuardConfig) -> Self {
        Self { guard_config: config, ..Self::new() }
    }

    /// Releases changes of more than `config.threshold` nodes in waves,
    /// counted in `metrics` (a new fleet publishes every change at once).
    pub fn with_rollouts(mut self, config: RolloutConfig, metrics: RolloutMetrics) -> Self {
        self.rollout_config = config;
        self.rollout_metrics = metrics;
        self
    }

    /// Shows a push unanswered for `answer_within` as a node problem.
    pub fn answer_within(mut self, answer_within: Duration) -> Self {
        self.answer_within = answer_within;
        self
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
