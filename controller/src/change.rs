//! Deciding, from cheap signals of the tables, how much of the fleet to read.
//!
//! Every poll tick probes the tables without scanning them: the newest id
//! (the primary key's last entry), when the engine says each table was last
//! written (`UPDATE_TIME`), and the database clock. When the signals say
//! nothing was written, nothing is read: an idle tick costs the same at a
//! thousand rows and at a million. Otherwise the rows modified shortly
//! before the last read, or inserted since, are read with a count of the
//! table; the whole fleet is read at the start, after any failed read, when
//! a cidr of `multi_subnet` changes (its cidrs are read and compared
//! whenever its signal moves), and when a read does not add up (a hard
//! delete): those full reads are the change's own read. Every `full_every`
//! the whole fleet is also read as a safety net for writers that keep
//! `modified_at`; that one runs beside the ticks ([`crate::feed`]), which
//! go on reading changes meanwhile, so the tracker only says when it is
//! due ([`ChangeTracker::periodic_due`]).
//!
//! MariaDB's `UPDATE_TIME` is the start, in whole seconds, of the last
//! transaction that committed a change to the table (ours included), kept
//! in memory only. So:
//! - a different value (earlier or later) means a commit: read;
//! - the same value is trusted only once [`RECENT`] seconds have passed
//!   since it: until then a transaction that started in that same second
//!   may still commit without changing it;
//! - no value (after a restart until the next write, or when InnoDB evicts
//!   the table's metadata; always on SQLite) means it cannot be trusted:
//!   read every tick until it is known again.
//!
//! Transactions open longer than [`RECENT`] seconds may be seen only at the
//! next full read. Pure: the caller passes the clock in; no I/O.

use std::time::{Duration, Instant};

use crate::store::{ChangedRows, SubnetSignal, TableProbe, Tally};

/// How far back changed reads reach before the last read, and how long a
/// table's last-write time must be past before "unchanged" is trusted, in
/// database seconds: the longest transaction (statement to commit) that is
/// always seen within a tick.
pub const RECENT: i64 = 5;

/// What to read this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPlan {
    Nothing,
    /// Check what may have changed: `multi_subnet`'s cidrs (a small read;
    /// the whole fleet is read only if one differs), `multi_interface`'s
    /// recently modified rows, or both.
    Changes {
        subnets: bool,
        rows: Option<RowWindow>,
    },
    Full(FullReason),
}

/// Which rows of `multi_interface` to read: modified at or after `since`
/// (Unix seconds) or with an id above `after_id`, with a count of the
/// table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowWindow {
    pub since: i64,
    pub after_id: i64,
    pub why: ChangeReason,
}

/// Why changed rows are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeReason {
    /// The engine says `multi_interface` was written.
    Written,
    /// Its last write began within [`RECENT`] seconds of the last look: a
    /// transaction of that same second may have committed since.
    Recent,
    /// The engine cannot say when it was last written.
    Unknown,
    /// Its newest id moved.
    Inserted,
}

impl ChangeReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Written => "written",
            Self::Recent => "recently written",
            Self::Unknown => "last write unknown",
            Self::Inserted => "new id",
        }
    }
}

/// Why the whole fleet is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullReason {
    /// First read, after a failed read, or after standing by.
    Start,
    /// The safety net, read beside the ticks.
    Periodic,
    /// A cidr of `multi_subnet` changed, or the table appeared or went.
    Subnets,
    /// The database clock went backwards.
    Clock,
    /// A changed read did not add up (rows hard-deleted, or inserted with
    /// an old `modified_at` and an old id).
    Mismatch,
}

impl FullReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Periodic => "periodic",
            Self::Subnets => "multi_subnet changed",
            Self::Clock => "database clock went backwards",
            Self::Mismatch => "changed read did not add up",
        }
    }
}

/// What the copy of the rows is known to reflect.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// The latest probe after which nothing is unaccounted for.
    probe: TableProbe,
    /// The table's count and newest id in the last read's snapshot.
    tally: Tally,
}

/// What the poll loop knows about its last read.
#[derive(Debug, Clone)]
pub struct ChangeTracker {
    full_every: Duration,
    seen: Option<Seen>,
    /// When the last full read began (inline, or beside the ticks).
    last_full: Option<Instant>,
    /// The next tick reads the whole fleet, whatever its probe says.
    owed: Option<FullReason>,
}

impl ChangeTracker {
    pub fn new(full_every: Duration) -> Self {
        Self { full_every, seen: None, last_full: None, owed: None }
    }

    /// What to read, given this tick's probe. Never the periodic full read:
    /// see [`Self::periodic_due`].
    pub fn plan(&self, probe: &TableProbe) -> ReadPlan {
        let Some(seen) = &self.seen else {
            return ReadPlan::Full(FullReason::Start);
        };
        let last = &seen.probe;
        if let Some(reason) = self.owed {
            return ReadPlan::Full(reason);
        }
        if probe.now < last.now {
            return ReadPlan::Full(FullReason::Clock);
        }
        if last.subnets.is_some() != probe.subnets.is_some() {
            return ReadPlan::Full(FullReason::Subnets);
        }
        let subnets = subnets_may_have_changed(last, probe);
        let reach = last.now.saturating_sub(RECENT);
        let (why, since) = match (last.updated, probe.updated) {
            (_, None) => (Some(ChangeReason::Unknown), reach),
            (Some(before), Some(after)) if before == after => {
                (recent(last.now, before).then_some(ChangeReason::Recent), reach)
            }
            // Written since: the rows of the transaction that did it were
            // modified no earlier than it began.
            (_, Some(after)) => (Some(ChangeReason::Written), reach.min(after)),
        };
        let why = why.or((probe.max_id != seen.tally.max_id).then_some(ChangeReason::Inserted));
        let rows = why.map(|why| RowWindow { since: since.max(0), after_id: seen.tally.max_id, why });
        match subnets || rows.is_some() {
            true => ReadPlan::Changes { subnets, rows },
            false => ReadPlan::Nothing,
        }
    }

    /// Whether the periodic full read is due at `now` (never before the
    /// first full read: that one is the tick's own).
    pub fn periodic_due(&self, now: Instant) -> bool {
        self.seen.is_some() && self.last_full.is_some_and(|at| now.saturating_duration_since(at) >= self.full_every)
    }

    /// The periodic full read began at `now`, beside the ticks. What it
    /// finds does not move what the tracker has seen: the ticks read on
    /// meanwhile, and their reads are newer than it may be.
    pub fn periodic_started(&mut self, now: Instant) {
        self.last_full = Some(now);
    }

    /// The next tick must read the whole fleet (a full read that ran
    /// beside the ticks found `multi_subnet`'s cidrs changed).
    pub fn owe_full(&mut self, reason: FullReason) {
        if self.seen.is_some() {
            self.owed = Some(reason);
        }
    }

    /// Nothing changed (or `multi_subnet` was checked and had not): the
    /// copy of the rows is current as of `probe`.
    pub fn quiet(&mut self, probe: TableProbe) {
        if let Some(seen) = self.seen.as_mut() {
            seen.probe = probe;
        }
    }

    /// A full read succeeded, read as the tick's own (at `now`); `probe`
    /// was taken before it.
    pub fn read_full(&mut self, probe: TableProbe, tally: Tally, now: Instant) {
        self.seen = Some(Seen { probe, tally });
        self.last_full = Some(now);
        self.owed = None;
    }

    /// Whether a changed read accounts for every row: the table's count
    /// moved by exactly the rows inserted since the last read (all of them
    /// are in the read, whatever their `modified_at`). When it does not,
    /// rows were hard-deleted (or inserted with an old id and an old
    /// `modified_at`): read the whole fleet.
    pub fn adds_up(&self, changed: &ChangedRows) -> bool {
        let Some(seen) = &self.seen else { return false };
        let inserted = changed.rows.iter().filter(|c| c.row.id > seen.tally.max_id).count();
        i64::try_from(inserted).is_ok_and(|n| seen.tally.rows.saturating_add(n) == changed.tally.rows)
    }

    /// A changed read that adds up succeeded; `probe` was taken before it.
    pub fn read_changed(&mut self, probe: TableProbe, tally: Tally) {
        self.seen = Some(Seen { probe, tally });
    }

    /// A read failed, or this replica stood by: start over with a full read.
    pub fn reset(&mut self) {
        self.seen = None;
        self.last_full = None;
        self.owed = None;
    }
}

/// Whether a last write at `written` was too recent, when looked at at
/// `looked`, for "unchanged since" to be trusted.
fn recent(looked: i64, written: i64) -> bool {
    looked.saturating_sub(written) <= RECENT
}

/// Whether `multi_subnet` may have changed between two probes (both of
/// which found the table).
fn subnets_may_have_changed(last: &TableProbe, probe: &TableProbe) -> bool {
    match (last.subnets, probe.subnets) {
        (None, _) | (_, None) => false,
        (Some(SubnetSignal::Written(before)), Some(SubnetSignal::Written(after))) => {
            before != after || recent(last.now, before)
        }
        (Some(before @ SubnetSignal::Counted { max_modified, .. }), Some(after @ SubnetSignal::Counted { .. })) => {
            before != after || max_modified.is_some_and(|m| recent(last.now, m))
        }
        // Restarted (the engine forgot its last write), written after a
        // restart, or unknown.
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{InterfaceRow, RowChange};

    const T: i64 = 1_000_000;

    fn probe(max_id: i64, updated: Option<i64>, now: i64) -> TableProbe {
        TableProbe { max_id, updated, subnets: None, now }
    }

    fn started(p: TableProbe, tally: Tally) -> (ChangeTracker, Instant) {
        let t0 = Instant::now();
        let mut tracker = ChangeTracker::new(Duration::from_secs(60));
        assert_eq!(tracker.plan(&p), ReadPlan::Full(FullReason::Start));
        tracker.read_full(p, tally, t0);
        (tracker, t0)
    }

    fn changed(plan: ReadPlan) -> (i64, ChangeReason) {
        match plan {
            ReadPlan::Changes { subnets: false, rows: Some(RowWindow { since, why, .. }) } => (since, why),
            other => panic!("expected a changed read, got {other:?}"),
        }
    }

    #[test]
    fn an_old_last_write_unchanged_reads_nothing() {
        let (mut tracker, _) = started(probe(10, Some(T - 100), T), Tally { rows: 10, max_id: 10 });
        for now in [T + 2, T + 4, T + 50] {
            let p = probe(10, Some(T - 100), now);
            assert_eq!(tracker.plan(&p), ReadPlan::Nothing);
            tracker.quiet(p);
        }
    }

    #[test]
    fn a_write_is_read_then_its_second_is_watched_for_recent_seconds() {
        let (mut tracker, _) = started(probe(10, Some(T - 100), T), Tally { rows: 10, max_id: 10 });
        // A commit whose transaction began at T + 1.
        let p = probe(10, Some(T + 1), T + 2);
        assert_eq!(changed(tracker.plan(&p)), (T - RECENT, ChangeReason::Written));
        tracker.read_changed(p, Tally { rows: 10, max_id: 10 });
        // Same last write, but another transaction of second T + 1 may
        // still commit without moving it: read until RECENT has passed.
        for now in [T + 4, T + 6, T + 8] {
            let p = probe(10, Some(T + 1), now);
            assert_eq!(changed(tracker.plan(&p)).1, ChangeReason::Recent, "at {now}");
            tracker.read_changed(p, Tally { rows: 10, max_id: 10 });
        }
        // Looked at T + 8, more than RECENT after T + 1: trusted.
        let p = probe(10, Some(T + 1), T + 10);
        assert_eq!(tracker.plan(&p), ReadPlan::Nothing);
    }

    #[test]
    fn a_long_transaction_is_read_back_to_its_start() {
        let (tracker, _) = started(probe(10, Some(T - 100), T), Tally { rows: 10, max_id: 10 });
        // Committed after the last look, begun 60 s before it.
        let p = probe(10, Some(T - 60), T + 2);
        assert_eq!(changed(tracker.plan(&p)), (T - 60, ChangeReason::Written));
    }

    #[test]
    fn an_unknown_last_write_is_read_every_tick() {
        let (mut tracker, _) = started(probe(10, Some(T - 100), T), Tally { rows: 10, max_id: 10 });
        for now in [T + 2, T + 4, T + 60] {
            let p = probe(10, None, now);
            assert_eq!(changed(tracker.plan(&p)).1, ChangeReason::Unknown);
            tracker.read_changed(p, Tally { rows: 10, max_id: 10 });
        }
        // Known again (a write): read once, then quiet once it is old.
        let p = probe(10, Some(T + 70), T + 71);
        assert_eq!(changed(tracker.plan(&p)), (T + 55, ChangeReason::Written));
        tracker.read_changed(p, Tally { rows: 10, max_id: 10 });
        let p = probe(10, Some(T + 70), T + 80);
        assert_eq!(changed(tracker.plan(&p)).1, ChangeReason::Recent, "last looked at within RECENT of it");
        tracker.read_changed(p, Tally { rows: 10, max_id: 10 });
        assert_eq!(tracker.plan(&probe(10, Some(T + 70), T + 82)), ReadPlan::Nothing);
    }

    #[test]
    fn a_new_id_alone_is_read() {
        let (tracker, _) = started(probe(10, Some(T - 100), T), Tally { rows: 10, max_id: 10 });
        let plan = tracker.plan(&probe(11, Some(T - 100), T + 2));
        let rows = Some(RowWindow { since: T - RECENT, after_id: 10, why: ChangeReason::Inserted });
        assert_eq!(plan, ReadPlan::Changes { subnets: false, rows });
    }

    #[test]
    fn full_reads_when_needed() {
        let (mut tracker, t0) = started(probe(10, Some(T - 100), T), Tally { rows: 10, max_id: 10 });
        let minute = t0 + Duration::from_secs(60);
        assert!(!tracker.periodic_due(t0 + Duration::from_secs(59)));
        assert!(tracker.periodic_due(minute));
        // The periodic full read is never the tick's plan: the tick reads
        // what changed (or nothing), and the full read runs beside it.
        let later = probe(10, Some(T - 100), T + 100);
        assert_eq!(tracker.plan(&later), ReadPlan::Nothing);
        tracker.periodic_started(minute);
        assert!(!tracker.periodic_due(minute + Duration::from_secs(59)), "one at a time, a minute apart");
        let written = probe(10, Some(T + 99), T + 100);
        assert_eq!(changed(tracker.plan(&written)).1, ChangeReason::Written, "changes are read meanwhile");
        tracker.read_changed(written, Tally { rows: 10, max_id: 10 });
        // A full read beside the ticks that found multi_subnet changed: the
        // next tick reads the whole fleet, whatever its probe says.
        tracker.owe_full(FullReason::Subnets);
        let quiet = probe(10, Some(T + 99), T + 120);
        assert_eq!(tracker.plan(&quiet), ReadPlan::Full(FullReason::Subnets));
        tracker.read_full(quiet, Tally { rows: 10, max_id: 10 }, minute);
        assert_eq!(tracker.plan(&quiet), ReadPlan::Nothing);
        assert_eq!(changed(tracker.plan(&probe(10, Some(T + 121), T + 122))).1, ChangeReason::Written);
        assert_eq!(tracker.plan(&probe(10, Some(T - 100), T - 1)), ReadPlan::Full(FullReason::Clock));
        tracker.reset();
        assert_eq!(tracker.plan(&later), ReadPlan::Full(FullReason::Start));
        assert!(!tracker.periodic_due(minute), "never before the first full read");
        tracker.owe_full(FullReason::Subnets);
        assert_eq!(tracker.plan(&later), ReadPlan::Full(FullReason::Start));
    }

    #[test]
    fn subnet_changes_and_doubts_are_checked() {
        use SubnetSignal::{Counted, Unknown, Written};
        let at = |subnets, now| TableProbe { subnets: Some(subnets), ..probe(10, Some(T - 100), now) };
        let tally = Tally { rows: 10, max_id: 10 };
        let counted = |rows, m| Counted { rows, max_modified: Some(m) };
        for (before, after, check) in [
            (Written(T - 50), Written(T - 50), false),
            (Written(T - 50), Written(T + 1), true),
            (Written(T - 2), Written(T - 2), true), // same second may still commit
            (Written(T - 50), counted(3, T - 50), true), // restarted
            (counted(3, T - 50), counted(3, T - 50), false),
            (counted(3, T - 50), counted(4, T - 50), true),
            (counted(3, T - 50), counted(3, T + 1), true),
            (counted(3, T - 1), counted(3, T - 1), true), // same second
            (counted(3, T - 50), Written(T + 1), true),   // written after a restart
            (Written(T - 50), Unknown, true),
        ] {
            let (tracker, _) = started(at(before, T), tally);
            let plan = tracker.plan(&at(after, T + 2));
            let checked = ReadPlan::Changes { subnets: true, rows: None };
            let want = if check { checked } else { ReadPlan::Nothing };
            assert_eq!(plan, want, "{before:?} -> {after:?}");
        }
        // The table appearing or going is a change in itself.
        let (tracker, _) = started(at(Written(T - 50), T), tally);
        assert_eq!(tracker.plan(&probe(10, Some(T - 100), T + 2)), ReadPlan::Full(FullReason::Subnets));
    }

    #[test]
    fn a_changed_read_adds_up_unless_rows_were_hard_deleted() {
        let (tracker, _) = started(probe(10, Some(T - 100), T), Tally { rows: 10, max_id: 10 });
        let row = |id| RowChange { row: InterfaceRow::plain(id, "a", "fa:16:3e:00:00:01", 1500, 0), deleted: false };
        let read = |rows: Vec<RowChange>, count| ChangedRows { tally: Tally { rows: count, max_id: 12 }, rows };
        // An update of row 3 and two inserts (one soft-deleted already).
        let mut deleted = row(12);
        deleted.deleted = true;
        assert!(tracker.adds_up(&read(vec![row(3), row(11), deleted.clone()], 12)));
        // The same, but a row went away.
        assert!(!tracker.adds_up(&read(vec![row(3), row(11), deleted], 11)));
        // A row that appeared with an old id (not among the inserts read).
        assert!(!tracker.adds_up(&read(vec![row(4)], 11)));
    }
}
