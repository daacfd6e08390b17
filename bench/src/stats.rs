//! Percentiles and rates from raw samples. Pure: values in, values out.
//!
//! Exists so that every figure the benchmark prints is computed one way
//! (nearest-rank percentiles over all samples, never averaged percentiles).
//! It never measures anything itself.

use std::time::Duration;

use serde::Serialize;

/// The distribution of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// How many samples.
    pub n: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// Nearest-rank percentiles of `samples` (all zero when empty).
    pub fn of(samples: &[Duration]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        let mut sorted = samples.to_vec();
        sorted.sort();
        let at = |q: f64| {
            // Nearest rank: the smallest sample with at least q of all samples at or below it.
            let rank = (q * sorted.len() as f64).ceil() as usize;
            ms(sorted[rank.clamp(1, sorted.len()) - 1])
        };
        Self {
            n: sorted.len(),
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
            max_ms: ms(sorted[sorted.len() - 1]),
        }
    }
}

/// A duration in milliseconds, with microsecond precision.
pub fn ms(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

/// CPU use as a percentage of one core, from clock ticks over a wall-clock window.
pub fn cpu_percent(ticks: u64, ticks_per_second: u64, window: Duration) -> f64 {
    if window.is_zero() || ticks_per_second == 0 {
        return 0.0;
    }
    100.0 * ticks as f64 / ticks_per_second as f64 / window.as_secs_f64()
}

/// Bytes per item of `count`, from a total difference that may be negative
/// (memory given back); 0 for no items.
pub fn per_item(total_delta: i64, count: usize) -> f64 {
    if count == 0 {
        return 0.0;
    }
    total_delta as f64 / count as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|m| Duration::from_millis(*m)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let samples = millis(&(1..=100).collect::<Vec<_>>());
        let l = Latency::of(&samples);
        assert_eq!((l.n, l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms), (100, 50.0, 95.0, 99.0, 100.0));
        let one = Latency::of(&millis(&[7]));
        assert_eq!((one.p50_ms, one.p99_ms, one.max_ms), (7.0, 7.0, 7.0));
        assert_eq!(Latency::of(&[]), Latency::default());
        let unsorted = Latency::of(&millis(&[30, 10, 20]));
        assert_eq!((unsorted.p50_ms, unsorted.max_ms), (20.0, 30.0));
    }

    #[test]
    fn rates() {
        assert_eq!(cpu_percent(50, 100, Duration::from_secs(1)), 50.0);
        assert_eq!(cpu_percent(10, 100, Duration::ZERO), 0.0);
        assert_eq!(per_item(4200, 100), 42.0);
        assert_eq!(per_item(-100, 0), 0.0);
    }
}
