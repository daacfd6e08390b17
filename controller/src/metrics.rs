//! Prometheus metrics of the controller, served at `/metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use multinic_proto::NodeName;

use crate::alert_metrics::AlertMetrics;
use crate::fleet::NodeCounts;
use crate::store::RowUpdate;

type Labels = Vec<(&'static str, &'static str)>;

/// Every metric the controller exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub db_poll_duration: Histogram,
    pub db_poll_errors: Counter,
    pub db_reads: Family<Labels, Counter>,
    pub db_write_errors: Counter,
    pub db_up: Gauge,
    pub db_write_time_known: Gauge,
    pub invalid_rows: Gauge,
    pub desired_changes: Counter,
    pub pushes: Counter,
    pub reports: Family<Labels, Counter>,
    pub rows_recorded: Family<Labels, Counter>,
    pub agents_connected: Gauge,
    pub nodes: Family<Labels, Gauge>,
    pub convergence_seconds: Histogram,
    pub rejected_messages: Family<Labels, Counter>,
    pub removals_held: Gauge,
    pub tls_handshakes: Family<Labels, Counter>,
    /// Drift agents reported, by kind and what they did about it.
    pub drift_findings: Family<Labels, Counter>,
    // --- What the alerting rules need (issue 19), kept in its own module.
    pub alerts: AlertMetrics,
    /// Rollouts (the fleet counts them as they happen).
    pub rollouts: RolloutMetrics,
}

/// Rollouts' metrics; the fleet holds a copy (they share their values).
#[derive(Debug, Clone)]
pub struct RolloutMetrics {
    /// By event: started, stopped, resumed, aborted, completed, superseded.
    pub events: Family<Labels, Counter>,
    pub waves_released: Counter,
    /// The current rollout's nodes by state.
    pub nodes: Family<Labels, Gauge>,
    /// The current rollout's state: 1 for the state it is in, 0 for the others.
    pub state: Family<Labels, Gauge>,
    /// Per node: from its change seen to its release.
    pub wait_seconds: Histogram,
}

impl Default for RolloutMetrics {
    fn default() -> Self {
        Self {
            events: Family::default(),
            waves_released: Counter::default(),
            nodes: Family::default(),
            state: Family::default(),
            wait_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 20)),
        }
    }
}

impl RolloutMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "rollouts",
            "Rollouts (changes of more nodes than --rollout-threshold, released in waves) by event: started, \
             stopped, resumed, aborted, completed, superseded",
            self.events.clone(),
        );
        registry.register("rollout_waves_released", "Rollout waves released", self.waves_released.clone());
        registry.register(
            "rollout_nodes",
            "Nodes of the current rollout by state: pending (held), released, done, failed",
            self.nodes.clone(),
        );
        // Every state is exported from the start (all 0 before the first
        // rollout), so the alert on it has a series to watch.
        for state in crate::rollout::RolloutState::ALL {
            self.state.get_or_create(&vec![("state", state.as_str())]).set(0);
        }
        registry.register(
            "rollout_state",
            "The current (or last) rollout's state: 1 for the one it is in (running, stopped, aborted, completed, \
             superseded), 0 for the others (all 0 before the first rollout)",
            self.state.clone(),
        );
        registry.register(
            "rollout_wait_seconds",
            "Per node of a rollout: time from its change seen in the database to its release",
            self.wait_seconds.clone(),
        );
    }

    /// Counts a rollout event.
    pub fn event(&self, event: &'static str) {
        self.events.get_or_create(&vec![("event", event)]).inc();
    }

    /// The current rollout's nodes by state, and its state.
    pub fn set_current(&self, rollout: &crate::rollout::Rollout) {
        let counts = rollout.counts();
        for (state, n) in [
            ("pending", counts.pending),
            ("released", counts.released),
            ("done", counts.done),
            ("failed", counts.failed),
        ] {
            self.nodes.get_or_create(&vec![("state", state)]).set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        for state in crate::rollout::RolloutState::ALL {
            self.state.get_or_create(&vec![("state", state.as_str())]).set(i64::from(rollout.state == state));
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("multinic_controller");
        let db_poll_duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let convergence_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        let m = Self {
            db_poll_duration: db_poll_duration.clone(),
            db_poll_errors: Counter::default(),
            db_reads: Family::default(),
            db_write_errors: Counter::default(),
            db_up: Gauge::default(),
            db_write_time_known: Gauge::default(),
            invalid_rows: Gauge::default(),
            desired_changes: Counter::default(),
            pushes: Counter::default(),
            reports: Family::default(),
            rows_recorded: Family::default(),
            agents_connected: Gauge::default(),
            nodes: Family::default(),
            convergence_seconds: convergence_seconds.clone(),
            rejected_messages: Family::default(),
            removals_held: Gauge::default(),
            tls_handshakes: Family::default(),
            drift_findings: Family::default(),
            alerts: AlertMetrics::default(),
            rollouts: RolloutMetrics::default(),
            registry: Registry::default(),
        };
        m.rollouts.register(&mut registry);
        registry.register(
            "db_poll_duration_seconds",
            "Time of one poll: the probe and whatever it decided to read (not the periodic full read, \
             which runs beside the polls)",
            db_poll_duration,
        );
        registry.register("db_poll_errors", "Database reads that failed", m.db_poll_errors.clone());
        registry.register(
            "db_reads",
            "Database reads by kind: probe (every tick), changed (recently modified or inserted rows), \
             subnets (multi_subnet's cidrs), full (the whole fleet)",
            m.db_reads.clone(),
        );
        registry.register("db_write_errors", "netplan_success writes that failed", m.db_write_errors.clone());
        registry.register(
            "db_up",
            "1 when the database answered the last poll (a standby: its lock check)",
            m.db_up.clone(),
        );
        registry.register(
            "db_write_time_known",
            "1 when the database says when multi_interface was last written (an idle tick then reads no rows); \
             0 when every tick reads the recently modified rows (after a database restart until the table's \
             next write, when InnoDB evicted its metadata, or on SQLite)",
            m.db_write_time_known.clone(),
        );
        registry.register("invalid_rows", "Active rows rejected by validation", m.invalid_rows.clone());
        registry.register("desired_changes", "Node desired sets that changed", m.desired_changes.clone());
        registry.register("pushes", "Desired states pushed to agents", m.pushes.clone());
        registry.register("reports", "Agent reports by outcome", m.reports.clone());
        registry.register("rows_recorded", "netplan_success writes by value", m.rows_recorded.clone());
        registry.register("agents_connected", "Agents with an open stream", m.agents_connected.clone());
        registry.register("nodes", "Nodes by convergence state", m.nodes.clone());
        registry.register(
            "convergence_seconds",
            "Time from a desired-set change seen in the database to the agent's report",
            convergence_seconds,
        );
        registry.register("rejected_messages", "Agent messages refused, by reason", m.rejected_messages.clone());
        registry.register(
            "tls_handshakes",
            "TLS handshakes on the gRPC port, by result (accepted, refused, timed_out)",
            m.tls_handshakes.clone(),
        );
        registry.register(
            "removals_held",
            "Interface removals held back by the mass-deletion guard",
            m.removals_held.clone(),
        );
        registry.register(
            "drift_findings",
            "Drift agents reported (their node no longer as applied), by kind and action (repaired, repair_failed, not_repaired, given_up)",
            m.drift_findings.clone(),
        );
        // --- What the alerting rules need (issue 19).
        let alerts = AlertMetrics::register(&mut registry);
        Self { registry, alerts, ..m }
    }

    pub fn record_poll_ok(&self, invalid_rows: usize) {
        self.db_up.set(1);
        self.invalid_rows.set(i64::try_from(invalid_rows).unwrap_or(i64::MAX));
    }

    pub fn changes_seen(&self, changed: &[NodeName]) {
        self.desired_changes.inc_by(changed.len() as u64);
    }

    pub fn rows_recorded(&self, updates: &[RowUpdate]) {
        for u in updates {
            self.rows_recorded.get_or_create(&vec![("value", if u.success { "1" } else { "0" })]).inc();
        }
    }

    /// Updates the gauges derived from the fleet's state.
    pub fn set_counts(&self, counts: &NodeCounts, db_up: bool) {
        let set = |state: &'static str, v: usize| {
            self.nodes.get_or_create(&vec![("state", state)]).set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        set("converged", counts.converged);
        set("pending", counts.pending);
        set("failed", counts.failed);
        set("waiting", counts.waiting);
        self.agents_connected.set(i64::try_from(counts.connected).unwrap_or(i64::MAX));
        self.db_up.set(i64::from(db_up));
    }

    /// Copies the accept loop's handshake counts into the metrics.
    pub fn set_handshakes(&self, stats: &crate::tls::HandshakeStats) {
        use std::sync::atomic::Ordering;
        for (result, value) in
            [("accepted", stats.accepted()), ("refused", stats.refused()), ("timed_out", stats.timed_out())]
        {
            self.tls_handshakes.get_or_create(&vec![("result", result)]).inner().store(value, Ordering::Relaxed);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
