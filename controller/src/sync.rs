//! The poll loop: once per tick, a cheap probe of the tables; a read only
//! of what changed; the desired state recomputed and republished only for
//! the nodes those rows touch.
//!
//! See [`crate::change`] for when it reads nothing, the recently modified
//! rows, or the whole fleet, and [`crate::feed`] for the reading itself. A
//! failed read changes nothing that was published: agents keep their last
//! good desired set, the controller reports the database as down, and the
//! next good tick reads the whole fleet again. It never publishes anything
//! from a read that failed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use multinic_proto::NodeName;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::change::{ChangeReason, FullReason};
use crate::feed::{FeedRead, RowFeed};
use crate::fleet::Fleet;
use crate::leader::Election;
use crate::metrics::Metrics;
use crate::recorder::RecorderHandle;
use crate::store::{RowUpdate, Store, StoreError};

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
        let mut feed = RowFeed::new(self.store.clone(), self.full_read_interval);
        let mut was_up = None;
        let mut write_time_known = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            match self.election.hold().await {
                Ok(true) => {
                    if self.fleet.leadership().set_active(true) {
                        info!("this replica holds the controller lock: active");
                    }
                }
                Ok(false) => {
                    if self.fleet.leadership().set_active(false) {
                        warn!("another replica holds the controller lock: standing by, agents are sent there");
                    }
                    // The database answered: a standby's db_up says so, so
                    // that "database unreachable" means no replica reaches it.
                    self.fleet.db().ok();
                    feed.reset();
                    continue;
                }
                Err(error) => {
                    // The database cannot say who leads; nothing can be read either.
                    if was_up != Some(false) {
                        warn!(error = %error, "cannot reach the database to check the controller lock");
                    }
                    was_up = Some(false);
                    self.metrics.db_poll_errors.inc();
                    self.fleet.db().failed(error.to_string());
                    feed.reset();
                    continue;
                }
            }
            let started = Instant::now();
            let result = self.tick(&mut feed).await;
            self.metrics.db_poll_duration.observe(started.elapsed().as_secs_f64());
            if let Some(probe) = feed.probe() {
                self.note_write_time(probe.updated.is_some(), &mut write_time_known);
            }
            match result {
                Ok(tick) => {
                    // The warm-up may have ended with nothing else changing;
                    // then the nodes held since start are decided.
                    self.fleet.guard().rejudge();
                    self.fleet.rollouts().tick();
                    if was_up != Some(true) {
                        info!(
                            rows = tick.rows,
                            nodes = self.fleet.view().node_names().len(),
                            "database read succeeded"
                        );
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
                    self.fleet.db().failed(error.to_string());
                    feed.reset();
                }
            }
        }
    }

    /// Probe, read what the plan says, and republish the touched nodes.
    async fn tick(&mut self, feed: &mut RowFeed) -> Result<Tick, StoreError> {
        let read = feed.tick(Instant::now()).await;
        if feed.probe().is_some() {
            self.metrics.db_reads.get_or_create(&vec![("kind", "probe")]).inc();
        }
        let read = read?;
        let kind = read.kind();
        for counted in read_kinds(&read) {
            self.metrics.db_reads.get_or_create(&vec![("kind", counted)]).inc();
        }
        let mut touched = match read {
            FeedRead::Nothing => Default::default(),
            FeedRead::Changed { rows, touched, .. } => {
                if !touched.is_empty() {
                    let why = rows.map_or("", ChangeReason::as_str);
                    debug!(why, nodes = touched.nodes.len(), "read the changed rows");
                }
                touched
            }
            FeedRead::Full { reason, touched, first } => {
                let rows = feed.rows().map_or(0, |r| r.len());
                match reason {
                    FullReason::Periodic | FullReason::Start => {
                        debug!(reason = reason.as_str(), rows, "read the whole fleet")
                    }
                    _ => info!(reason = reason.as_str(), rows, "read the whole fleet"),
                }
                if first {
                    self.publish_all(feed);
                }
                touched
            }
        };
        // Writes the recorder made, noted after the read: a read that began
        // before a write landed must not bring its old value back.
        while let Ok(updates) = self.recorded.try_recv() {
            touched.nodes.extend(feed.recorded(&updates).nodes);
        }
        let Some(copy) = feed.rows() else { return Ok(Tick::default()) };
        let tick = Tick { read: kind, touched: touched.nodes.len(), rows: copy.len() };
        if touched.is_empty() {
            self.fleet.db().ok();
            return Ok(tick);
        }
        let desired = copy.desired_of(&touched.nodes);
        let unattached = touched.unattached.then(|| copy.unattached());
        let changed = self.fleet.publisher().publish_nodes(desired, unattached);
        self.published(&changed, kind, touched.nodes.into_iter().collect());
        Ok(tick)
    }

    /// The first read since start: every node is published.
    fn publish_all(&self, feed: &RowFeed) {
        let Some(copy) = feed.rows() else { return };
        let desired = copy.desired_fleet();
        for problem in desired.problems() {
            debug!(row = problem.row_id, node = ?problem.node.as_ref().map(|n| n.as_str()), mac = %problem.mac, code = %problem.code, message = %problem.message, "row rejected");
        }
        let nodes: Vec<_> = desired.nodes.keys().cloned().collect();
        let changed = self.fleet.publisher().publish(desired);
        self.published(&changed, "full", nodes);
    }

    /// Says when the database starts or stops telling when `multi_interface`
    /// was last written (on MySQL/MariaDB: it forgets after a restart or
    /// when InnoDB evicts the table; SQLite never tells).
    fn note_write_time(&self, known: bool, was: &mut Option<bool>) {
        self.metrics.db_write_time_known.set(i64::from(known));
        if *was == Some(known) {
            return;
        }
        let reason = ChangeReason::Unknown.as_str();
        match (known, self.store.kind()) {
            (false, "sqlite") => {}
            (false, _) => warn!(
                reason,
                "the database cannot say when multi_interface was last written (restarted, or its metadata left \
                 InnoDB's cache): every tick reads the recently modified rows until the table's next write"
            ),
            (true, _) if was.is_some() => {
                info!("the database says when multi_interface was last written again: idle ticks read no rows")
            }
            (true, _) => {}
        }
        *was = Some(known);
    }

    /// After a publish: metrics and a log line for the sets that changed,
    /// and the recorder looks again at the nodes that were read.
    fn published(&self, changed: &[NodeName], read: &str, read_nodes: Vec<NodeName>) {
        self.metrics.record_poll_ok(self.fleet.view().invalid_rows());
        if !changed.is_empty() {
            info!(nodes = changed.len(), read, "desired sets changed");
            self.metrics.changes_seen(changed);
        }
        self.recorder.dirty_nodes(read_nodes);
    }
}

/// The reads a tick made beyond its probe, for `db_reads_total{kind}`. A
/// full read after a check that did not add up (or found a cidr changed)
/// counts the check too.
fn read_kinds(read: &FeedRead) -> Vec<&'static str> {
    match read {
        FeedRead::Nothing => vec![],
        FeedRead::Changed { subnets, rows, .. } => {
            let mut kinds = vec![];
            if *subnets {
                kinds.push("subnets");
            }
            if rows.is_some() {
                kinds.push("changed");
            }
            kinds
        }
        FeedRead::Full { reason: FullReason::Mismatch, .. } => vec!["changed", "full"],
        FeedRead::Full { reason: FullReason::Subnets, .. } => vec!["subnets", "full"],
        FeedRead::Full { .. } => vec!["full"],
    }
}
