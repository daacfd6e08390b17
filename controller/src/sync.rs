//! The poll loop: once per tick, a cheap probe of the tables; a read only
//! of what changed; the desired state recomputed and republished only for
//! the nodes those rows touch.
//!
//! See [`crate::change`] for when it reads nothing, the recently modified
//! rows, or the whole fleet. A failed read changes nothing that was
//! published: agents keep their last good desired set, the controller
//! reports the database as down, and the next good tick reads the whole
//! fleet again. It never publishes anything from a read that failed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use multinic_proto::NodeName;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::change::{ChangeTracker, FullReason, ReadPlan};
use crate::desired::desired_fleet;
use crate::fleet::Fleet;
use crate::fleet_rows::{FleetRows, Touched};
use crate::leader::Election;
use crate::metrics::Metrics;
use crate::recorder::RecorderHandle;
use crate::store::{RowUpdate, Store, StoreError, TableProbe};

/// Everything the poll loop works with.
pub struct PollLoop {
    pub store: Arc<dyn Store>,
    pub election: Arc<dyn Election>,
    pub fleet: Arc<Fleet>,
    pub recorder: RecorderHandle,
    /// The recorder's writes, noted in the copy of the rows.
    pub recorded: mpsc::UnboundedReceiver<Vec<RowUpdate>>,
    pub metrics: Arc<Metrics>,
    pub interval: Duration,
    /// The whole fleet is read at least this often (the safety net).
    pub full_read_interval: Duration,
}

impl std::fmt::Debug for PollLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollLoop")
            .field("store", &self.store.kind())
            .field("interval", &self.interval)
            .field("full_read_interval", &self.full_read_interval)
            .finish_non_exhaustive()
    }
}

/// What one tick did.
#[derive(Debug, Default)]
struct Tick {
    read: &'static str,
    touched: usize,
    rows: usize,
}

impl PollLoop {
    /// Polls every `interval` until `shutdown` is cancelled, while this
    /// replica holds the controller lock.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tracker = ChangeTracker::new(self.full_read_interval);
        // The copy of the rows; `None` until the first full read.
        let mut rows: Option<FleetRows> = None;
        let mut was_up = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            match self.election.hold().await {
                Ok(true) => {
                    if self.fleet.set_active(true) {
                        info!("this replica holds the controller lock: active");
                    }
                }
                Ok(false) => {
                    if self.fleet.set_active(false) {
                        warn!("another replica holds the controller lock: standing by, agents are sent there");
                    }
                    // The database answered: a standby's db_up says so, so
                    // that "database unreachable" means no replica reaches it.
                    self.fleet.db_ok();
                    tracker.reset();
                    continue;
                }
                Err(error) => {
                    // The database cannot say who leads; nothing can be read either.
                    if was_up != Some(false) {
                        warn!(error = %error, "cannot reach the database to check the controller lock");
                    }
                    was_up = Some(false);
                    self.metrics.db_poll_errors.inc();
                    self.fleet.db_failed(error.to_string());
                    tracker.reset();
                    continue;
                }
            }
            let started = Instant::now();
            let result = self.tick(&mut tracker, &mut rows).await;
            self.metrics.db_poll_duration.observe(started.elapsed().as_secs_f64());
            match result {
                Ok(tick) => {
                    // The warm-up may have ended with nothing else changing.
                    self.fleet.rejudge_guard();
                    if was_up != Some(true) {
                        info!(rows = tick.rows, nodes = self.fleet.node_names().len(), "database read succeeded");
                    }
                    if tick.touched > 0 {
                        debug!(read = tick.read, nodes = tick.touched, "rows changed");
                    }
                    was_up = Some(true);
                }
                Err(error) => {
                    self.metrics.db_poll_errors.inc();
                    if was_up != Some(false) {
                        warn!(error = %error, "database read failed; keeping the last good desired state, no pushes until it recovers");
                    }
                    was_up = Some(false);
                    self.fleet.db_failed(error.to_string());
                    tracker.reset();
                }
            }
        }
    }

    /// Probe, read what the plan says, and republish the touched nodes.
    async fn tick(&mut self, tracker: &mut ChangeTracker, rows: &mut Option<FleetRows>) -> Result<Tick, StoreError> {
        let probe = self.store.probe().await?;
        self.metrics.db_reads.get_or_create(&vec![("kind", "probe")]).inc();
        let (read, mut touched) = match (tracker.plan(&probe, Instant::now()), rows.as_mut()) {
            (ReadPlan::Nothing, _) => ("none", Touched::default()),
            (ReadPlan::Changed { since }, Some(copy)) => {
                let changed = self.store.read_changed(since).await?;
                self.metrics.db_reads.get_or_create(&vec![("kind", "changed")]).inc();
                let touched = copy.apply(changed.rows);
                if i64::try_from(copy.len()).ok() == Some(changed.probe.active) {
                    tracker.read_changed(changed.probe);
                    ("changed", touched)
                } else {
                    let mut more = self.read_full(tracker, rows, changed.probe, FullReason::Mismatch).await?;
                    more.nodes.extend(touched.nodes);
                    more.unattached |= touched.unattached;
                    ("full", more)
                }
            }
            (ReadPlan::Changed { .. }, None) => {
                ("full", self.read_full(tracker, rows, probe, FullReason::Start).await?)
            }
            (ReadPlan::Full(reason), _) => ("full", self.read_full(tracker, rows, probe, reason).await?),
        };
        // Writes the recorder made, noted after the read: a read that began
        // before a write landed must not bring its old value back.
        if let Some(copy) = rows.as_mut() {
            while let Ok(updates) = self.recorded.try_recv() {
                for u in updates {
                    let t = copy.recorded(u.id, &u.content, u.success);
                    touched.nodes.extend(t.nodes);
                }
            }
        }
        let Some(copy) = rows.as_ref() else { return Ok(Tick::default()) };
        let tick = Tick { read, touched: touched.nodes.len(), rows: copy.len() };
        if touched.is_empty() {
            self.fleet.db_ok();
            return Ok(tick);
        }
        let desired = copy.desired_of(&touched.nodes);
        let unattached = touched.unattached.then(|| copy.unattached());
        let changed = self.fleet.publish_nodes(desired, unattached);
        self.published(&changed, read, touched.nodes.into_iter().collect());
        Ok(tick)
    }

    /// After a publish: metrics and a log line for the sets that changed,
    /// and the recorder looks again at the nodes that were read.
    fn published(&self, changed: &[NodeName], read: &str, read_nodes: Vec<NodeName>) {
        self.metrics.record_poll_ok(self.fleet.invalid_rows());
        if !changed.is_empty() {
            info!(nodes = changed.len(), read, "desired sets changed");
            self.metrics.changes_seen(changed);
        }
        self.recorder.dirty_nodes(read_nodes);
    }

    /// Reads the whole fleet. The first time, every node is published;
    /// later, only the nodes whose rows differ from the copy.
    async fn read_full(
        &mut self,
        tracker: &mut ChangeTracker,
        rows: &mut Option<FleetRows>,
        probe: TableProbe,
        reason: FullReason,
    ) -> Result<Touched, StoreError> {
        let snapshot = self.store.read_fleet().await?;
        self.metrics.db_reads.get_or_create(&vec![("kind", "full")]).inc();
        tracker.read_full(probe, Instant::now());
        match reason {
            FullReason::Periodic | FullReason::Start => {
                debug!(reason = reason.as_str(), rows = snapshot.rows.len(), "read the whole fleet")
            }
            _ => info!(reason = reason.as_str(), rows = snapshot.rows.len(), "read the whole fleet"),
        }
        if let Some(copy) = rows.as_mut() {
            return Ok(copy.replace(snapshot));
        }
        let desired = desired_fleet(&snapshot);
        for problem in desired.problems() {
            debug!(row = problem.row_id, node = ?problem.node.as_ref().map(|n| n.as_str()), mac = %problem.mac, code = %problem.code, message = %problem.message, "row rejected");
        }
        let nodes: Vec<_> = desired.nodes.keys().cloned().collect();
        let changed = self.fleet.publish(desired);
        self.published(&changed, "full", nodes);
        *rows = Some(FleetRows::from_snapshot(snapshot));
        // Already published: nothing more is touched.
        Ok(Touched::default())
    }
}
