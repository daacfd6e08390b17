//! Driving the controller's change detection ([`RowFeed`]) by hand against
//! a real database, and a store whose full reads the test holds back.
//!
//! [`HeldReads`] wraps a real [`Store`]: every statement still runs against
//! the real database; only when a full read's result reaches the caller is
//! up to the test. That stands in for a full read of a large table (seconds
//! at a million rows) without the table, so that a test can commit a change
//! at a chosen point of the read: after its snapshot was taken, or before.
//! It never changes what a read returns.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use multinic_controller::change::{FullReason, RECENT};
use multinic_controller::feed::{FeedRead, RowFeed};
use multinic_controller::store::{
    self, ChangedRows, DatabaseConfig, FullRead, RowUpdate, Store, StoreError, SubnetCidrs, TableProbe,
};
use tokio::sync::watch;

/// Where a held full read waits for the test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Its snapshot is taken, then it waits: what it returns is older than
    /// anything committed while it waits.
    AfterSnapshot,
    /// It waits, then reads: its snapshot is newer than anything committed
    /// while it waited.
    BeforeSnapshot,
}

/// What the test sees of the full reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeldState {
    /// The next full read is held so.
    next: Option<Hold>,
    /// Full reads waiting now.
    pub waiting: usize,
    /// Full reads dropped by their caller while they waited.
    pub dropped: usize,
    /// Full reads that returned to their caller (held or not, ok or not).
    pub returned: usize,
    /// How many times [`HeldReads::release`] was called.
    released: u64,
}

/// A real store whose next full read waits until the test releases it.
pub struct HeldReads {
    inner: Arc<dyn Store>,
    state: watch::Sender<HeldState>,
}

impl std::fmt::Debug for HeldReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldReads").field("store", &self.inner.kind()).field("state", &self.state()).finish()
    }
}

impl HeldReads {
    /// Over a store of the database at `url`.
    pub fn connect(url: &str) -> Arc<Self> {
        let inner = store::connect(&DatabaseConfig::Url(url.to_owned())).expect("store");
        Arc::new(Self { inner, state: watch::Sender::new(HeldState::default()) })
    }

    /// Holds the next full read (only that one).
    pub fn hold(&self, hold: Hold) {
        self.state.send_modify(|s| s.next = Some(hold));
    }

    /// Lets every waiting full read go on.
    pub fn release(&self) {
        self.state.send_modify(|s| s.released += 1);
    }

    pub fn state(&self) -> HeldState {
        *self.state.borrow()
    }

    /// Waits (up to 30 s) until the state satisfies `what`.
    pub async fn until(&self, why: &str, what: impl Fn(&HeldState) -> bool) -> HeldState {
        let mut rx = self.state.subscribe();
        match tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|s| what(s))).await {
            Ok(Ok(state)) => *state,
            _ => panic!("timed out waiting for {why}: {:?}", self.state()),
        }
    }
}

/// Counts a held read that its caller dropped before it was released.
struct Waiting<'a>(&'a watch::Sender<HeldState>, bool);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let released = self.1;
        self.0.send_modify(|s| {
            s.waiting -= 1;
            if !released {
                s.dropped += 1;
            }
        });
    }
}

#[async_trait]
impl Store for HeldReads {
    async fn read_fleet(&self) -> Result<FullRead, StoreError> {
        let mut hold = None;
        self.state.send_modify(|s| hold = s.next.take().map(|h| (h, s.released)));
        let read = match hold {
            None => self.inner.read_fleet().await,
            Some((how, released)) => {
                let early = match how {
                    Hold::AfterSnapshot => Some(self.inner.read_fleet().await),
                    Hold::BeforeSnapshot => None,
                };
                self.state.send_modify(|s| s.waiting += 1);
                let mut waiting = Waiting(&self.state, false);
                let mut rx = self.state.subscribe();
                let _ = rx.wait_for(|s| s.released > released).await;
                waiting.1 = true;
                drop(waiting);
                match early {
                    Some(read) => read,
                    None => self.inner.read_fleet().await,
                }
            }
        };
        self.state.send_modify(|s| s.returned += 1);
        read
    }

    async fn probe(&self) -> Result<TableProbe, StoreError> {
        self.inner.probe().await
    }

    async fn read_changed(&self, since: i64, after_id: i64) -> Result<ChangedRows, StoreError> {
        self.inner.read_changed(since, after_id).await
    }

    async fn read_subnets(&self) -> Result<Option<SubnetCidrs>, StoreError> {
        self.inner.read_subnets().await
    }

    async fn record(&self, updates: &[RowUpdate]) -> Result<u64, StoreError> {
        self.inner.record(updates).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
}

/// A feed over `store` that reads the whole fleet every `full_every`,
/// after its first (full) read.
pub async fn started_feed(store: Arc<dyn Store>, full_every: Duration) -> RowFeed {
    let mut feed = RowFeed::new(store, full_every);
    let read = feed.tick(Instant::now()).await.unwrap();
    assert!(matches!(read, FeedRead::Full { reason: FullReason::Start, first: true, .. }), "{read:?}");
    feed
}

/// Ticks until one reads nothing (the tables look idle and the last write
/// is old enough to be trusted); returns how many ticks read something.
pub async fn until_quiet(feed: &mut RowFeed) -> usize {
    let deadline = Instant::now() + Duration::from_secs(RECENT as u64 * 3 + 5);
    let mut reads = 0;
    loop {
        match feed.tick(Instant::now()).await.unwrap() {
            FeedRead::Nothing => return reads,
            _ => reads += 1,
        }
        assert!(Instant::now() < deadline, "still reading after {reads} ticks: {:?}", feed.probe());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The next tick, which must read something.
pub async fn next_tick(feed: &mut RowFeed, what: &str) -> FeedRead {
    let read = feed.tick(Instant::now()).await.unwrap();
    assert_ne!(read, FeedRead::Nothing, "{what}: the next tick read nothing ({:?})", feed.probe());
    read
}
