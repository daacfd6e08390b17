//! What the agent knows about itself, for Hello, `/readyz` and `GET /`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use multinic_proto::{Digest, InterfaceState, InterfaceStatus};

/// The last desired set the agent processed and how it went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Processed {
    pub digest: Option<Digest>,
    pub generation: u64,
    /// Per-interface states of that set (removed interfaces excluded).
    pub interfaces: Vec<InterfaceStatus>,
}

/// Shared, cheap to read.
#[derive(Debug)]
pub struct AgentStatus {
    started: Instant,
    connected: AtomicBool,
    pushes: AtomicU64,
    reconnects: AtomicU64,
    last_sync: Mutex<Option<SystemTime>>,
    processed: Mutex<Processed>,
}

impl Default for AgentStatus {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentStatus {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            connected: AtomicBool::new(false),
            pushes: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            last_sync: Mutex::new(None),
            processed: Mutex::new(Processed::default()),
        }
    }

    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    pub fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
    }

    /// Whether the stream to the controller is established.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn count_reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Records a processed push.
    pub fn processed_push(&self, processed: Processed) {
        self.pushes.fetch_add(1, Ordering::Relaxed);
        *lock(&self.last_sync) = Some(SystemTime::now());
        *lock(&self.processed) = processed;
    }

    /// Replaces the per-interface states of the last push (a waiting NIC
    /// appeared) without counting a push.
    pub fn refresh_processed(&self, processed: Processed) {
        *lock(&self.last_sync) = Some(SystemTime::now());
        *lock(&self.processed) = processed;
    }

    /// Pushes processed since start.
    pub fn pushes(&self) -> u64 {
        self.pushes.load(Ordering::Relaxed)
    }

    pub fn last_sync(&self) -> Option<SystemTime> {
        *lock(&self.last_sync)
    }

    pub fn processed(&self) -> Processed {
        lock(&self.processed).clone()
    }

    /// Interfaces of the last set in the given states.
    pub fn count_in(&self, states: &[InterfaceState]) -> usize {
        lock(&self.processed).interfaces.iter().filter(|s| states.contains(&s.state)).count()
    }
}

// A poisoned lock means a panic elsewhere; the plain values are still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
