//! What the apply-latency examples (`agent/examples/*_bench.rs`) share:
//! one timed reconcile, and percentiles printed as a line.
//!
//! It measures and prints; it never asserts a timing.

use std::time::{Duration, Instant};

use multinic_agent::reconcile::{Outcome, Reconciler};
use multinic_proto::{DesiredSet, InterfaceState};

/// Runs one reconcile; its wall time. Panics (naming `what`) unless every
/// interface was applied or removed.
pub fn timed(reconciler: &Reconciler, desired: &DesiredSet, what: &str) -> (Duration, Outcome) {
    let started = Instant::now();
    let outcome = reconciler.reconcile(desired);
    let took = started.elapsed();
    for status in &outcome.statuses {
        let ok = matches!(status.state, InterfaceState::Applied | InterfaceState::Removed);
        assert!(ok, "{what}: {status:?}");
    }
    (took, outcome)
}

/// The `p` quantile (0..=1, nearest rank) of `sorted`, in milliseconds.
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

/// Prints p50, p95, p99 and max of `samples` on one line; returns the p50.
pub fn report(what: &str, mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    println!(
        "{what:<30} p50 {:>7.2} ms  p95 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  ({} rounds)",
        percentile_ms(&samples, 0.5),
        percentile_ms(&samples, 0.95),
        percentile_ms(&samples, 0.99),
        percentile_ms(&samples, 1.0),
        samples.len()
    );
    percentile_ms(&samples, 0.5)
}
