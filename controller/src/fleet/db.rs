//! Database health as the poll loop last saw it, for readiness and status.
//!
//! A good read is also recorded by [`super::Publisher`] (publishing a read
//! is a good poll). A failed poll only changes what is shown here: the
//! published sets stay as they are. It never reads the database itself.

use std::time::SystemTime;

use super::{Fleet, read, write};

/// The state of the database link, for readiness and status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbStatus {
    /// Whether the last poll succeeded.
    pub up: bool,
    /// The last poll's error, if it failed.
    pub error: Option<String>,
    /// When the last successful poll finished.
    pub last_success: Option<SystemTime>,
    /// Whether any poll has ever succeeded (until then nothing is pushed).
    pub synced: bool,
}

impl DbStatus {
    /// Records a good poll now.
    pub(super) fn up(&mut self) {
        self.up = true;
        self.error = None;
        self.last_success = Some(SystemTime::now());
    }
}

impl Fleet {
    /// The state of the database link as the poll loop reports it.
    pub fn db(&self) -> DbHealth<'_> {
        DbHealth { fleet: self }
    }
}

/// The database link's state; see the module docs.
#[derive(Debug, Clone, Copy)]
pub struct DbHealth<'a> {
    fleet: &'a Fleet,
}

impl DbHealth<'_> {
    /// Records a good poll that changed nothing.
    pub fn ok(&self) {
        write(&self.fleet.db).up();
    }

    /// Records a failed poll. The published sets stay as they are.
    pub fn failed(&self, error: String) {
        let mut db = write(&self.fleet.db);
        db.up = false;
        db.error = Some(error);
    }

    /// A copy of the link's state now.
    pub fn status(&self) -> DbStatus {
        read(&self.fleet.db).clone()
    }
}
