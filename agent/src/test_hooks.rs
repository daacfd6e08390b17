//! Hooks for the agent's own end-to-end tests, compiled only with the
//! `test-hooks` cargo feature (off by default; the agent's tests turn it on
//! through its dev-dependency on itself). Release builds do not contain
//! this module, its environment variables or its log lines.
//!
//! One hook: [`PauseAfterWrite`] stops an apply after its writes and
//! netlink changes, before verification, so a test can kill or stop the
//! agent mid-change and check that the journal puts everything back. It is
//! configured only by the environment of the agent process, so no flag or
//! config field of the production path carries it. This module must never
//! change what an apply does; it can only make one wait.

use std::path::PathBuf;
use std::time::Duration;

use tracing::warn;

/// Where the hook writes its marker (it is off when unset).
pub const PAUSE_AFTER_WRITE_ENV: &str = "MULTINIC_TEST_PAUSE_AFTER_WRITE";
/// How long the pause lasts, in seconds; unset: until the process is killed.
pub const PAUSE_SECONDS_ENV: &str = "MULTINIC_TEST_PAUSE_SECONDS";

/// Stop after writing and applying, before verifying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PauseAfterWrite {
    /// Created (holding the agent's PID) when the pause starts.
    pub marker: PathBuf,
    /// `None`: forever (the test kills the agent there).
    pub seconds: Option<u64>,
}

impl PauseAfterWrite {
    /// The hook as the environment sets it, if it does.
    pub fn from_env() -> Option<Self> {
        let marker = std::env::var_os(PAUSE_AFTER_WRITE_ENV)?;
        let seconds = std::env::var(PAUSE_SECONDS_ENV).ok().and_then(|s| s.parse().ok());
        Some(Self { marker: marker.into(), seconds })
    }

    /// Marks the spot, then waits (see [`Self::seconds`]).
    pub fn pause(&self) {
        warn!(marker = %self.marker.display(), "test hook: paused after writing, before verifying");
        if let Err(e) = std::fs::write(&self.marker, std::process::id().to_string()) {
            warn!(error = %e, "test hook: cannot create the marker");
        }
        match self.seconds {
            Some(seconds) => std::thread::sleep(Duration::from_secs(seconds)),
            None => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
        }
    }
}
