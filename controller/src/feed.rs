//! The database half of a poll tick: probe the tables, decide what to read
//! ([`crate::change`]), read it, and keep the controller's copy of the rows
//! ([`RowCopy`]) in step.
//!
//! Exists apart from the poll loop so that change detection can be driven
//! one tick at a time: the poll loop does it on a timer, tests do it by
//! hand against a real database and check what each tick read. It never
//! publishes and never writes; what the rows mean for nodes is the poll
//! loop's business. A failed read leaves the copy as it was.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::change::{ChangeReason, ChangeTracker, FullReason, ReadPlan, RowWindow};
use crate::row_copy::{RowCopy, Touched};
use crate::store::{RowUpdate, Store, StoreError, SubnetCidrs, TableProbe};

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
}

impl std::fmt::Debug for RowFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowFeed")
            .field("store", &self.store.kind())
            .field("tracker", &self.tracker)
            .field("rows", &self.rows.as_ref().map(RowCopy::len))
            .finish()
    }
}

impl RowFeed {
    /// A feed that reads the whole fleet at least every `full_every`.
    pub fn new(store: Arc<dyn Store>, full_every: Duration) -> Self {
        Self { store, tracker: ChangeTracker::new(full_every), rows: None, subnets: None, probe: None }
    }

    /// One tick: probe, then read what the probe calls for. `now` is the
    /// tick's time (for the periodic full read).
    pub async fn tick(&mut self, now: Instant) -> Result<FeedRead, StoreError> {
        self.probe = None;
        let probe = self.store.probe().await?;
        self.probe = Some(probe);
        let (subnets, window) = match (self.tracker.plan(&probe, now), &self.rows) {
            (_, None) => return self.full(probe, FullReason::Start, now).await,
            (ReadPlan::Full(reason), _) => return self.full(probe, reason, now).await,
            (ReadPlan::Nothing, _) => {
                self.tracker.quiet(probe, now);
                return Ok(FeedRead::Nothing);
            }
            (ReadPlan::Changes { subnets, rows }, _) => (subnets, rows),
        };
        if subnets && self.store.read_subnets().await? != self.subnets {
            return self.full(probe, FullReason::Subnets, now).await;
        }
        let Some(RowWindow { since, after_id, why }) = window else {
            self.tracker.quiet(probe, now);
            return Ok(FeedRead::Changed { subnets, rows: None, touched: Touched::default() });
        };
        let changed = self.store.read_changed(since, after_id).await?;
        if !self.tracker.adds_up(&changed) {
            // Rows went away (hard delete): only a full read says which.
            return self.full(probe, FullReason::Mismatch, now).await;
        }
        let tally = changed.tally;
        let touched = self.rows.as_mut().map(|copy| copy.apply(changed.rows)).unwrap_or_default();
        self.tracker.read_changed(probe, tally, now);
        Ok(FeedRead::Changed { subnets, rows: Some(why), touched })
    }

    /// Reads the whole fleet: makes the copy the first time, else finds
    /// what differs from it.
    async fn full(&mut self, probe: TableProbe, reason: FullReason, now: Instant) -> Result<FeedRead, StoreError> {
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

    /// Notes writes the recorder made (after the read that preceded them,
    /// so that an older read cannot bring an old value back).
    pub fn recorded(&mut self, updates: &[RowUpdate]) -> Touched {
        let mut touched = Touched::default();
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
    /// whole fleet (and diffs it against the copy, which is kept).
    pub fn reset(&mut self) {
        self.tracker.reset();
    }
}
