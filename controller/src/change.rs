//! Deciding, from a cheap probe of the tables, how much of the fleet to read.
//!
//! Every poll tick probes the tables (aggregates only). When they look as
//! they did at the last read, nothing is read. When they differ, only rows
//! modified since shortly before that read are read and merged. The whole
//! fleet is read at the start, after any failed read, when `multi_subnet`
//! changes, when an incremental read does not add up, and every
//! `full_every` as a safety net for writers that keep `modified_at`.
//!
//! `modified_at` has one-second resolution and a transaction's rows carry
//! the time of their statement, not of their commit: so every incremental
//! read reaches [`RECENT`] back, and for [`RECENT`] after a change the rows
//! of that window are re-read at every tick even when the probe looks
//! unchanged. Pure: the caller passes the clock in.

use std::time::{Duration, Instant};

use crate::store::TableProbe;

/// How far back incremental reads reach, and how long after a change the
/// recent rows keep being re-read, in database seconds.
pub const RECENT: i64 = 5;

/// What to read this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPlan {
    Nothing,
    /// Rows modified at or after this database time (Unix seconds).
    Changed {
        since: i64,
    },
    Full(FullReason),
}

/// Why the whole fleet is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullReason {
    /// First read, after a failed read, or after standing by.
    Start,
    /// The safety net.
    Periodic,
    /// `multi_subnet` changed: any row's cidr may have.
    Subnets,
    /// The database clock went backwards.
    Clock,
    /// An incremental read did not add up (rows hard-deleted, or inserted
    /// with an old `modified_at`).
    Mismatch,
}

impl FullReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Periodic => "periodic",
            Self::Subnets => "multi_subnet changed",
            Self::Clock => "database clock went backwards",
            Self::Mismatch => "incremental read did not add up",
        }
    }
}

/// What the poll loop knows about its last read.
#[derive(Debug, Clone)]
pub struct ChangeTracker {
    full_every: Duration,
    /// The probe taken with (or just before) the last successful read.
    last: Option<TableProbe>,
    last_full: Option<Instant>,
    /// Database time until which recently modified rows are re-read.
    recent_until: i64,
}

impl ChangeTracker {
    pub fn new(full_every: Duration) -> Self {
        Self { full_every, last: None, last_full: None, recent_until: i64::MIN }
    }

    /// What to read, given this tick's probe.
    pub fn plan(&self, probe: &TableProbe, now: Instant) -> ReadPlan {
        let (Some(last), Some(last_full)) = (&self.last, self.last_full) else {
            return ReadPlan::Full(FullReason::Start);
        };
        if now.saturating_duration_since(last_full) >= self.full_every {
            return ReadPlan::Full(FullReason::Periodic);
        }
        if probe.subnets != last.subnets {
            return ReadPlan::Full(FullReason::Subnets);
        }
        if probe.now < last.now {
            return ReadPlan::Full(FullReason::Clock);
        }
        if !probe.same_tables(last) || probe.now <= self.recent_until {
            return ReadPlan::Changed { since: last.now.saturating_sub(RECENT) };
        }
        ReadPlan::Nothing
    }

    /// A full read succeeded; `probe` was taken before it.
    pub fn read_full(&mut self, probe: TableProbe, now: Instant) {
        self.recent_until = probe.now.saturating_add(RECENT);
        self.last = Some(probe);
        self.last_full = Some(now);
    }

    /// An incremental read succeeded; `probe` is of the same view.
    pub fn read_changed(&mut self, probe: TableProbe) {
        if self.last.is_none_or(|last| !probe.same_tables(&last)) {
            self.recent_until = probe.now.saturating_add(RECENT);
        }
        self.last = Some(probe);
    }

    /// A read failed, or this replica stood by: start over with a full read.
    pub fn reset(&mut self) {
        self.last = None;
        self.last_full = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(rows: i64, max_modified: i64, now: i64) -> TableProbe {
        TableProbe { rows, active: rows, max_id: rows, max_modified: Some(max_modified), subnets: None, now }
    }

    #[test]
    fn reads_in_full_first_then_only_changes_then_nothing() {
        let t0 = Instant::now();
        let mut tracker = ChangeTracker::new(Duration::from_secs(60));
        let p = probe(10, 100, 1000);
        assert_eq!(tracker.plan(&p, t0), ReadPlan::Full(FullReason::Start));
        tracker.read_full(p, t0);
        // Within RECENT of the read: the recent rows are re-read.
        let same_soon = probe(10, 100, 1003);
        assert_eq!(tracker.plan(&same_soon, t0), ReadPlan::Changed { since: 995 });
        tracker.read_changed(same_soon);
        // Later, unchanged tables: nothing.
        let same_later = probe(10, 100, 1010);
        assert_eq!(tracker.plan(&same_later, t0), ReadPlan::Nothing);
        // A change: rows since shortly before the last read.
        let changed = probe(11, 1012, 1012);
        assert_eq!(tracker.plan(&changed, t0), ReadPlan::Changed { since: 998 });
        tracker.read_changed(changed);
        // ... and the recent rows for RECENT more seconds.
        assert_eq!(tracker.plan(&probe(11, 1012, 1016), t0), ReadPlan::Changed { since: 1007 });
        assert_eq!(tracker.plan(&probe(11, 1012, 1018), t0), ReadPlan::Nothing);
    }

    #[test]
    fn full_reads_when_needed() {
        let t0 = Instant::now();
        let mut tracker = ChangeTracker::new(Duration::from_secs(60));
        tracker.read_full(probe(10, 100, 1000), t0);
        let later = probe(10, 100, 1100);
        assert_eq!(tracker.plan(&later, t0 + Duration::from_secs(60)), ReadPlan::Full(FullReason::Periodic));
        let subnets = TableProbe { subnets: Some((1, Some(5))), ..later };
        assert_eq!(tracker.plan(&subnets, t0), ReadPlan::Full(FullReason::Subnets));
        assert_eq!(tracker.plan(&probe(10, 100, 900), t0), ReadPlan::Full(FullReason::Clock));
        tracker.reset();
        assert_eq!(tracker.plan(&later, t0), ReadPlan::Full(FullReason::Start));
    }

    #[test]
    fn the_clock_alone_is_not_a_change() {
        assert!(probe(1, 2, 3).same_tables(&probe(1, 2, 99)));
        assert!(!probe(1, 2, 3).same_tables(&probe(1, 4, 3)));
    }
}
