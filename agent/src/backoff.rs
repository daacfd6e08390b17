//! Jittered exponential backoff for reconnecting to the controller.
//!
//! Every agent of a fleet loses its stream at the same moment when the
//! controller restarts; jitter spreads their reconnects out.

use std::time::Duration;

/// Delays of `base * 2^n`, capped, each scaled by a random factor in [0.5, 1).
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap, attempt: 0 }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(16));
        self.attempt = self.attempt.saturating_add(1);
        jitter(exp.min(self.cap))
    }

    /// Starts over after a connection that worked.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// `d` scaled by a random factor in [0.5, 1).
pub fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + fastrand::f64() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_jitters_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first < Duration::from_millis(100), "{first:?}");
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d < Duration::from_secs(2), "{d:?}");
        }
        assert!(b.next_delay() >= Duration::from_secs(1), "capped delays stay near the cap");
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(100));
    }
}
