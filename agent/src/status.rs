//! What the agent knows about itself, for Hello, `/readyz` and `GET /`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use multinic_proto::{Digest, InterfaceState, InterfaceStatus, Outcome};

use crate::metrics::Metrics;

/// The last desired set the agent processed and how it went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Processed {
    pub digest: Option<Digest>,
    pub generation: u64,
    /// Per-interface states of that set (removed interfaces excluded).
    pub interfaces: Vec<InterfaceStatus>,
}

/// An apply in progress, watched against its deadline.
#[derive(Debug, Clone, Copy)]
struct Running {
    generation: u64,
    started: Instant,
    deadline: Duration,
}

/// Shared, cheap to read.
#[derive(Debug)]
pub struct AgentStatus {
    started: Instant,
    connected: AtomicBool,
    running: Mutex<Option<Running>>,
    pushes: AtomicU64,
    reconnects: AtomicU64,
    last_sync: Mutex<Option<SystemTime>>,
    processed: Mutex<Processed>,
    metrics: Metrics,
}

impl Default for AgentStatus {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentStatus {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            connected: AtomicBool::new(false),
            running: Mutex::new(None),
            pushes: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            last_sync: Mutex::new(None),
            processed: Mutex::new(Processed::default()),
            metrics: Metrics::new(),
        }
    }

    /// The agent's Prometheus metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Counts one processed push in the metrics (`work` is `None` for a push
    /// rejected before anything was done).
    pub fn record_apply(&self, outcome: Outcome, took: Duration, work: Option<&crate::reconcile::Outcome>) {
        self.metrics.applies.get_or_create(&vec![("outcome", outcome.as_str())]).inc();
        self.metrics.apply_duration.observe(took.as_secs_f64());
        if let Some(work) = work {
            self.metrics.verify_duration.observe(work.verify_duration.as_secs_f64());
            self.metrics.rollbacks.inc_by(u64::from(work.rollbacks));
            self.metrics.file_changes.inc_by(work.file_writes);
            self.metrics.netlink_changes.inc_by(work.netlink_changes);
        }
    }

    /// The metrics text, with the gauges derived from the current status.
    pub fn render_metrics(&self) -> String {
        let processed = lock(&self.processed).clone();
        for state in [InterfaceState::Applied, InterfaceState::Waiting, InterfaceState::Failed, InterfaceState::Refused]
        {
            let count = processed.interfaces.iter().filter(|s| s.state == state).count();
            self.metrics.interfaces.get_or_create(&vec![("state", state.as_str())]).set(count as i64);
        }
        let unrepaired = processed.interfaces.iter().filter(|s| crate::worker::drift::is_drift(s.code)).count();
        self.metrics.drift_unrepaired.set(unrepaired as i64);
        self.metrics.connected.set(i64::from(self.connected()));
        self.metrics.apply_overdue.set(i64::from(self.overdue().is_some()));
        self.metrics.render()
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
    }

    /// Whether the stream to the controller is established.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// An apply of `generation` starts; it should end within `deadline`.
    pub fn apply_started(&self, generation: u64, deadline: Duration) {
        *lock(&self.running) = Some(Running { generation, started: Instant::now(), deadline });
    }

    /// The apply in progress ended (or was given up).
    pub fn apply_finished(&self) {
        *lock(&self.running) = None;
    }

    /// Why the agent cannot do its work: an apply still running past its
    /// deadline (the agent is then not ready), or `None`.
    pub fn overdue(&self) -> Option<String> {
        let running = (*lock(&self.running))?;
        let elapsed = running.started.elapsed();
        (elapsed > running.deadline).then(|| {
            format!(
                "the apply of generation {} has been running for {}s, past its {}s deadline",
                running.generation,
                elapsed.as_secs(),
                running.deadline.as_secs_f64()
            )
        })
    }

    pub fn count_reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
        self.metrics.reconnects.inc();
    }

    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Records a processed push.
    pub fn processed_push(&self, processed: Processed) {
        self.pushes.fetch_add(1, Ordering::Relaxed);
        *lock(&self.last_sync) = Some(SystemTime::now());
        *lock(&self.processed) = processed;
    }

    /// Replaces the per-interface states of the last push (a waiting NIC
    /// appeared) without counting a push.
    pub fn refresh_processed(&self, processed: Processed) {
        *lock(&self.last_sync) = Some(SystemTime::now());
        *lock(&self.processed) = processed;
    }

    /// Pushes processed since start.
    pub fn pushes(&self) -> u64 {
        self.pushes.load(Ordering::Relaxed)
    }

    pub fn last_sync(&self) -> Option<SystemTime> {
        *lock(&self.last_sync)
    }

    pub fn processed(&self) -> Processed {
        lock(&self.processed).clone()
    }

    /// Interfaces of the last set in the given states.
    pub fn count_in(&self, states: &[InterfaceState]) -> usize {
        lock(&self.processed).interfaces.iter().filter(|s| states.contains(&s.state)).count()
    }
}

// A poisoned lock means a panic elsewhere; the plain values are still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_apply_past_its_deadline_is_overdue_until_it_ends() {
        let status = AgentStatus::new();
        assert_eq!(status.overdue(), None);
        status.apply_started(7, Duration::from_secs(60));
        assert_eq!(status.overdue(), None, "within its deadline");
        status.apply_started(7, Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
        let why = status.overdue().expect("overdue");
        assert!(why.starts_with("the apply of generation 7 has been running for 0s, past its 0s deadline"), "{why}");
        assert!(status.render_metrics().contains("multinic_agent_apply_overdue 1"));
        status.apply_finished();
        assert_eq!(status.overdue(), None);
        assert!(status.render_metrics().contains("multinic_agent_apply_overdue 0"));
    }
}
