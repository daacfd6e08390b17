//! Leadership: whether this replica holds the controller lock and may act
//! (read the database, push, record).
//!
//! The election (`crate::leader`) decides; this only remembers the answer
//! and tells who waits on it. Becoming active restarts the mass-deletion
//! guard's warm-up and counts an activation (what a node reported before it
//! is not believed as of now); becoming active again rebuilds rollouts as
//! after a restart. It never ends a session itself: the streams
//! watch [`Leadership::subscribe`] and end on their own.

use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::watch;

use super::{Fleet, lock, read};

impl Fleet {
    /// Whether this replica may act, and changes of it.
    pub fn leadership(&self) -> Leadership<'_> {
        Leadership { fleet: self }
    }
}

/// Whether this replica may act; see the module docs.
#[derive(Debug, Clone, Copy)]
pub struct Leadership<'a> {
    fleet: &'a Fleet,
}

impl Leadership<'_> {
    /// Marks this replica active (holding the controller lock) or standby;
    /// returns whether that changed. Agent sessions end when it turns false.
    pub fn set_active(&self, active: bool) -> bool {
        let changed = self.fleet.active.send_if_modified(|current| std::mem::replace(current, active) != active);
        if changed && active {
            let before = self.fleet.activation.fetch_add(1, Ordering::Relaxed);
            let mut g = lock(&self.fleet.guard);
            g.activated = Some(Instant::now());
            g.warmup = Default::default();
            drop(g);
            // Active again after a standby: rollouts are rebuilt as after a restart.
            if before > 0 && read(&self.fleet.db).synced {
                self.fleet.reactivated();
            }
        }
        changed
    }

    /// Whether this replica may act (read, push, record).
    pub fn is_active(&self) -> bool {
        *self.fleet.active.borrow()
    }

    /// Changes of [`Leadership::is_active`].
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.fleet.active.subscribe()
    }
}
