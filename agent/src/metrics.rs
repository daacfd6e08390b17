//! Prometheus metrics of the agent, served at `/metrics`.
//!
//! Counters move where their event happens (an apply, a reconnect); gauges
//! derived from the agent's status are set when scraped.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// Every metric the agent exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Pushes processed, by outcome (applied, partial, rejected).
    pub applies: Family<Labels, Counter>,
    /// Time to carry out one push (plan, write, apply, verify).
    pub apply_duration: Histogram,
    /// Time spent verifying kernel state after an apply.
    pub verify_duration: Histogram,
    /// Interfaces rolled back after a failed apply or verification.
    pub rollbacks: Counter,
    /// Interfaces of the last push, by state.
    pub interfaces: Family<Labels, Gauge>,
    /// Streams to the controller opened again after the first.
    pub reconnects: Counter,
    /// 1 while the stream to the controller is established.
    pub connected: Gauge,
    /// 1 while an apply runs past its deadline (`--apply-deadline`).
    pub apply_overdue: Gauge,
    /// Files written and removed, and files whose mode or owner was put right.
    pub file_changes: Counter,
    /// Mutating netlink requests applies sent.
    pub netlink_changes: Counter,
    // --- Drift (issue 16).
    /// Drift checks run.
    pub drift_checks: Counter,
    /// Drift findings, by kind (seen again at each check until repaired).
    pub drift_detected: Family<Labels, Counter>,
    /// Drift findings repaired (and verified), by kind.
    pub drift_repairs: Family<Labels, Counter>,
    /// Interfaces of the last set reported failed for drift: repairs given
    /// up (DRIFT_REPEATED) or not made (DRIFTED).
    pub drift_unrepaired: Gauge,
    // --- What the alerting rules need (issue 19).
    /// Always 1; its labels name the node (alerts about an agent name its
    /// node through this series) and the agent's version and settings.
    pub info: Family<Vec<(&'static str, String)>, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("multinic_agent");
        let m = Self {
            registry: Registry::default(),
            applies: Family::default(),
            apply_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            verify_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            rollbacks: Counter::default(),
            interfaces: Family::default(),
            reconnects: Counter::default(),
            connected: Gauge::default(),
            apply_overdue: Gauge::default(),
            file_changes: Counter::default(),
            netlink_changes: Counter::default(),
            drift_checks: Counter::default(),
            drift_detected: Family::default(),
            drift_repairs: Family::default(),
            drift_unrepaired: Gauge::default(),
            info: Family::default(),
        };
        registry.register("applies", "Desired states processed, by outcome", m.applies.clone());
        registry.register("apply_duration_seconds", "Time to carry out one desired state", m.apply_duration.clone());
        registry.register(
            "verify_duration_seconds",
            "Time to verify the kernel state after an apply",
            m.verify_duration.clone(),
        );
        registry.register(
            "rollbacks",
            "Interfaces rolled back after a failed apply or verification",
            m.rollbacks.clone(),
        );
        registry.register("interfaces", "Interfaces of the last desired state, by state", m.interfaces.clone());
        registry.register("reconnects", "Streams to the controller reopened", m.reconnects.clone());
        registry.register("connected", "1 while the stream to the controller is up", m.connected.clone());
        registry.register(
            "apply_overdue",
            "1 while an apply runs past its deadline (the agent is then not ready)",
            m.apply_overdue.clone(),
        );
        registry.register(
            "file_changes",
            "Files written or removed, and files whose mode or owner was put right",
            m.file_changes.clone(),
        );
        registry.register("netlink_changes", "Mutating netlink requests sent by applies", m.netlink_changes.clone());
        registry.register(
            "drift_checks",
            "Drift checks of the node against the last applied set",
            m.drift_checks.clone(),
        );
        registry.register(
            "drift_detected",
            "Drift found by checks, by kind (counted at each check until repaired)",
            m.drift_detected.clone(),
        );
        registry.register(
            "drift_repairs",
            "Drift repaired through the journal and verified, by kind",
            m.drift_repairs.clone(),
        );
        registry.register(
            "drift_unrepaired",
            "Interfaces reported failed for drift: repairs given up (DRIFT_REPEATED) or not made (DRIFTED)",
            m.drift_unrepaired.clone(),
        );
        registry.register(
            "info",
            "Always 1: the agent's node, version, backend and apply mode as labels",
            m.info.clone(),
        );
        Self { registry, ..m }
    }

    /// Sets the `info` series (once, at start: these never change while
    /// the agent runs).
    pub fn set_info(&self, node: &str, backend: &str, apply: &str) {
        self.info.clear();
        let labels = vec![
            ("node", node.to_owned()),
            ("version", env!("CARGO_PKG_VERSION").to_owned()),
            ("backend", backend.to_owned()),
            ("apply", apply.to_owned()),
        ];
        self.info.get_or_create(&labels).set(1);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
