//! The poll loop: one read of the whole fleet per tick, then publish.
//!
//! A failed read changes nothing that was published: agents keep their last
//! good desired set, and the controller reports the database as down until
//! a read succeeds again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::desired::desired_fleet;
use crate::fleet::Fleet;
use crate::leader::Election;
use crate::metrics::Metrics;
use crate::recorder::RecorderHandle;
use crate::store::Store;

/// Polls the database every `interval` until `shutdown` is cancelled, while
/// this replica holds the controller lock.
pub async fn poll_loop(
    store: Arc<dyn Store>,
    election: Arc<dyn Election>,
    fleet: Arc<Fleet>,
    recorder: RecorderHandle,
    metrics: Arc<Metrics>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_up = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match election.hold().await {
            Ok(true) => {
                if fleet.set_active(true) {
                    info!("this replica holds the controller lock: active");
                }
            }
            Ok(false) => {
                if fleet.set_active(false) {
                    warn!("another replica holds the controller lock: standing by, agents are sent there");
                }
                continue;
            }
            Err(error) => {
                // The database cannot say who leads; nothing can be read either.
                if was_up != Some(false) {
                    warn!(error = %error, "cannot reach the database to check the controller lock");
                }
                was_up = Some(false);
                metrics.db_poll_errors.inc();
                fleet.db_failed(error.to_string());
                continue;
            }
        }
        let started = Instant::now();
        let result = store.read_fleet().await;
        metrics.db_poll_duration.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(snapshot) => {
                let rows = snapshot.rows.len();
                let desired = desired_fleet(&snapshot);
                for problem in desired.problems() {
                    debug!(row = problem.row_id, node = ?problem.node.as_ref().map(|n| n.as_str()), mac = %problem.mac, code = %problem.code, message = %problem.message, "row rejected");
                }
                let invalid = desired.problems().count();
                let changed = fleet.publish(desired);
                metrics.record_poll_ok(invalid);
                if was_up != Some(true) {
                    info!(rows, invalid_rows = invalid, nodes = fleet.node_names().len(), "database read succeeded");
                }
                if !changed.is_empty() {
                    info!(nodes = changed.len(), "desired sets changed");
                    metrics.changes_seen(&changed);
                }
                was_up = Some(true);
                recorder.all_dirty();
            }
            Err(error) => {
                metrics.db_poll_errors.inc();
                if was_up != Some(false) {
                    warn!(error = %error, "database read failed; keeping the last good desired state, no pushes until it recovers");
                }
                was_up = Some(false);
                fleet.db_failed(error.to_string());
            }
        }
    }
}
