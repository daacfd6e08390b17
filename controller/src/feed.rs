//! The database half of a poll tick: probe the tables, decide what to read
//! ([`crate::change`]), read it, and keep the controller's copy of the rows
//! ([`RowCopy`]) in step.
//!
//! Exists apart from the poll loop so that change detection can be driven
//! one tick at a time: the poll loop does it on a timer, tests do it by
//! hand against a real database and check what each tick read. It never
//! publishes and never writes; what the rows mean for nodes is the poll
//! loop's business. A failed read leaves the copy as it was.
//!
//! The periodic full read (the safety net) runs beside the ticks, one at a
//! time, in a task of its own: at a million rows it takes seconds, and a
//! change must not wait for it. Ticks go on reading changes meanwhile and
//! note which rows they (and the recorder's writes) gave the copy. When the
//! full read lands ([`RowFeed::landed`]) its snapshot replaces the copy
//! except for those rows: for them the copy holds what a read that began
//! after the snapshot's found, or the snapshot's view may be the later one
//! and then the next change read brings it in, as without a full read (see
//! [`RowCopy::replace_except`]). Any other full read (start, hard delete,
//! `multi_subnet`, clock) is the tick's own and drops one in flight: it is
//! newer. Dropping the feed, or [`RowFeed::reset`], stops it.
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::task::AbortOnDropHandle;

use crate::change::{ChangeReason, ChangeTracker, FullReason, ReadPlan, RowWindow};
use crate::row_copy::{RowCopy, Touched};
use crate::store::{FullRead, RowUpdate, Store, StoreError, SubnetCidrs, TableProbe};

/// What one tick read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedRead {
    /// Nothing: the tables' signals say nothing was written.
    Nothing,
    /// What may have changed was checked: `multi_subnet`'s cidrs (found
    /// unchanged) when `subnets`, and the rows of `multi_interface`
    /// modified recently (or inserted since) when `rows` says why, merged
    /// into the copy.
    Changed { subnets: bool, rows: Option<ChangeReason>, touched: Touched },
    /// The whole fleet. `first` when this read made the copy (every node
    /// is new to the caller); otherwise `touched` holds what differed.
    Full { reason: FullReason, touched: Touched, first: bool },
}

impl FeedRead {
    /// `none`, `subnets`, `changed` or `full` (metrics and logs).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Nothing => "none",
            Self::Changed { rows: None, .. } => "subnets",
            Self::Changed { .. } => "changed",
            Self::Full { .. } => "full",
        }
    }
}

/// The change tracker, the copy of the rows, and the store they come from.
pub struct RowFeed {
    store: Arc<dyn Store>,
    tracker: ChangeTracker,
    /// `None` until the first full read.
    rows: Option<RowCopy>,
    /// `multi_subnet`'s cidrs as of the copy (`None`: no such table).
    subnets: Option<SubnetCidrs>,
    /// This tick's probe (`None` before the first, or when it failed).
    probe: Option<TableProbe>,
    /// The periodic full read, while it runs beside the ticks.
    in_flight: Option<InFlight>,
}

/// A periodic full read running beside the ticks.
struct InFlight {
    /// Aborted when dropped (the read's connection goes back to the pool,
    /// its transaction rolled back).
    task: AbortOnDropHandle<Result<FullRead, StoreError>>,
    /// The rows the copy was given since it began (change reads, the
    /// recorder's writes): the copy's state of them is kept when it lands.
    newer: HashSet<i64>,
}

impl std::fmt::Debug for RowFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowFeed")
            .field("store", &self.store.kind())
            .field("tracker", &self.tracker)
            .field("rows", &self.rows.as_ref().map(RowCopy::len))
            .field("full_read_in_flight", &self.in_flight.is_some())
            .finish()
    }
}

impl RowFeed {
    /// A feed that reads the whole fleet at least every `full_every`.
    pub fn new(store: Arc<dyn Store>, full_every: Duration) -> Self {
        Self { store, tracker: ChangeTracker::new(full_every), rows: None, subnets: None, probe: None, in_flight: None }
    }

    /// One tick: probe, then read what the probe calls for. `now` is the
    /// tick's time. When the periodic full read is due (and none runs), it
    /// is started beside the ticks once this tick's own read is done: see
    /// [`Self::landed`]. A tick never waits for it.
    pub async fn tick(&mut self, now: Instant) -> Result<FeedRead, StoreError> {
        let read = self.read(now).await?;
        let full = matches!(read, FeedRead::Full { .. });
        if !full && self.in_flight.is_none() && self.rows.is_some() && self.tracker.periodic_due(now) {
            let store = self.store.clone();
            let task = AbortOnDropHandle::new(tokio::spawn(async move { store.read_fleet().await }));
            self.in_flight = Some(InFlight { task, newer: HashSet::new() });
            self.tracker.periodic_started(now);
        }
        Ok(read)
    }

    async fn read(&mut self, now: Instant) -> Result<FeedRead, StoreError> {
        self.probe = None;
        let probe = self.store.probe().await?;
        self.probe = Some(probe);
        let (subnets, window) = match (self.tracker.plan(&probe), &self.rows) {
            (_, None) => return self.full(probe, FullReason::Start, now).await,
            (ReadPlan::Full(reason), _) => return self.full(probe, reason, now).await,
            (ReadPlan::Nothing, _) => {
                self.tracker.quiet(probe);
                return Ok(FeedRead::Nothing);
            }
            (ReadPlan::Changes { subnets, rows }, _) => (subnets, rows),
        };
        if subnets && self.store.read_subnets().await? != self.subnets {
            return self.full(probe, FullReason::Subnets, now).await;
        }
        let Some(RowWindow { since, after_id, why }) = window else {
            self.tracker.quiet(probe);
            return Ok(FeedRead::Changed { subnets, rows: None, touched: Touched::default() });
        };
        let changed = self.store.read_changed(since, after_id).await?;
        if !self.tracker.adds_up(&changed) {
            // Rows went away (hard delete): only a full read says which.
            return self.full(probe, FullReason::Mismatch, now).await;
        }
        let tally = changed.tally;
        if let Some(flight) = self.in_flight.as_mut() {
            flight.newer.extend(changed.rows.iter().map(|c| c.row.id));
        }
        let touched = self.rows.as_mut().map(|copy| copy.apply(changed.rows)).unwrap_or_default();
        self.tracker.read_changed(probe, tally);
        Ok(FeedRead::Changed { subnets, rows: Some(why), touched })
    }

    /// Reads the whole fleet as this tick's read: makes the copy the first
    /// time, else finds what differs from it. A full read in flight is
    /// dropped: this one is newer.
    async fn full(&mut self, probe: TableProbe, reason: FullReason, now: Instant) -> Result<FeedRead, StoreError> {
        self.in_flight = None;
        let read = self.store.read_fleet().await?;
        self.tracker.read_full(probe, read.tally, now);
        self.subnets = read.subnets;
        match self.rows.as_mut() {
            Some(copy) => Ok(FeedRead::Full { reason, touched: copy.replace(read.snapshot), first: false }),
            None => {
                self.rows = Some(RowCopy::from_snapshot(read.snapshot));
                Ok(FeedRead::Full { reason, touched: Touched::default(), first: true })
            }
        }
    }

    /// Whether a periodic full read is running beside the ticks.
    pub fn full_read_in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Waits for the periodic full read running beside the ticks (forever
    /// when none runs) and merges its snapshot into the copy: a
    /// [`FeedRead::Full`] with [`FullReason::Periodic`], or its error (the
    /// copy untouched; the caller resets the feed as after any failed
    /// read). Cancel-safe: dropped before the read ends, the read goes on.
    ///
    /// `multi_subnet`'s cidrs stay those the ticks compare against; if the
    /// snapshot's differ, the next tick reads the whole fleet again (rows
    /// the ticks read meanwhile kept their cidrs).
    pub async fn landed(&mut self) -> Result<FeedRead, StoreError> {
        let Some(flight) = self.in_flight.as_mut() else { return std::future::pending().await };
        let joined = (&mut flight.task).await;
        let newer = self.in_flight.take().map(|f| f.newer).unwrap_or_default();
        let read = match joined {
            Ok(read) => read?,
            // A panic in the read is a bug: the poll loop's, as if inline.
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            // Cancelled: only when the runtime shuts down.
            Err(_) => return Ok(FeedRead::Nothing),
        };
        // A full read starts only once the copy exists; a reset drops it.
        let Some(copy) = self.rows.as_mut() else { return Ok(FeedRead::Nothing) };
        let touched = copy.replace_except(read.snapshot, &newer);
        if read.subnets != self.subnets {
            self.tracker.owe_full(FullReason::Subnets);
        }
        Ok(FeedRead::Full { reason: FullReason::Periodic, touched, first: false })
    }

    /// Notes writes the recorder made (after the read that preceded them,
    /// so that an older read cannot bring an old value back).
    pub fn recorded(&mut self, updates: &[RowUpdate]) -> Touched {
        let mut touched = Touched::default();
        if let Some(flight) = self.in_flight.as_mut() {
            flight.newer.extend(updates.iter().map(|u| u.id));
        }
        if let Some(copy) = self.rows.as_mut() {
            for u in updates {
                touched.nodes.extend(copy.recorded(u.id, &u.content, u.success).nodes);
            }
        }
        touched
    }

    /// The copy of the active rows (`None` before the first full read).
    pub fn rows(&self) -> Option<&RowCopy> {
        self.rows.as_ref()
    }

    /// The last tick's probe, if it succeeded.
    pub fn probe(&self) -> Option<&TableProbe> {
        self.probe.as_ref()
    }

    /// A read failed or this replica stood by: the next tick reads the
    /// whole fleet (and diffs it against the copy, which is kept). A full
    /// read in flight is stopped.
    pub fn reset(&mut self) {
        self.in_flight = None;
        self.tracker.reset();
    }
}
