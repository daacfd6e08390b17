//! Exactly one active controller per database.
//!
//! Replicas compete for a MariaDB named lock (`GET_LOCK`), held on a
//! connection of its own: when the holder dies its connection closes and the
//! server frees the lock, so a standby takes over at its next try. No table
//! is created and nothing is written. With SQLite (one process by nature)
//! the controller is always active.
//!
//! Only the active replica reads the fleet and serves agents; a standby
//! reports not-ready so the Service sends agents to the active one.

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::mysql::MySqlConnectOptions;
use sqlx::{ConnectOptions, MySqlConnection};
use tokio::sync::Mutex;

use crate::store::StoreError;

/// The lock's name; the database name is appended so that controllers of
/// different databases on one server do not compete.
const LOCK_PREFIX: &str = "multinic-controller/";

/// Who may act on the database.
#[async_trait]
pub trait Election: Send + Sync + std::fmt::Debug + 'static {
    /// Takes or keeps the lock: `Ok(true)` while this replica holds it,
    /// `Ok(false)` when another does, `Err` when the database cannot tell.
    async fn hold(&self) -> Result<bool, StoreError>;

    /// Gives the lock up (on shutdown), so a standby takes over at once.
    async fn release(&self);
}

/// A single controller (SQLite): always active.
#[derive(Debug, Default)]
pub struct Sole;

#[async_trait]
impl Election for Sole {
    async fn hold(&self) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn release(&self) {}
}

/// `GET_LOCK` on a dedicated MySQL/MariaDB connection.
#[derive(Debug)]
pub struct NamedLock {
    options: MySqlConnectOptions,
    held: Mutex<Option<MySqlConnection>>,
}

impl NamedLock {
    pub fn new(options: MySqlConnectOptions) -> Self {
        Self { options, held: Mutex::new(None) }
    }
}

fn lost(source: sqlx::Error) -> StoreError {
    StoreError::Lock { source }
}

#[async_trait]
impl Election for NamedLock {
    async fn hold(&self) -> Result<bool, StoreError> {
        let mut held = self.held.lock().await;
        if let Some(conn) = held.as_mut() {
            let mine: Result<Option<i64>, _> =
                sqlx::query_scalar("/* multinic lock */ SELECT IS_USED_LOCK(CONCAT(?, DATABASE())) = CONNECTION_ID()")
                    .bind(LOCK_PREFIX)
                    .fetch_one(&mut *conn)
                    .await;
            match mine {
                Ok(Some(1)) => return Ok(true),
                // The lock is gone from this connection (or the connection
                // is): start over on a fresh one below.
                Ok(_) | Err(_) => *held = None,
            }
        }
        let mut conn = self.options.connect().await.map_err(lost)?;
        let got: Option<i64> = sqlx::query_scalar("/* multinic lock */ SELECT GET_LOCK(CONCAT(?, DATABASE()), 0)")
            .bind(LOCK_PREFIX)
            .fetch_one(&mut conn)
            .await
            .map_err(lost)?;
        if got == Some(1) {
            *held = Some(conn);
            Ok(true)
        } else {
            Ok(false)
        }
    }

    async fn release(&self) {
        if let Some(mut conn) = self.held.lock().await.take() {
            let _ = sqlx::query("/* multinic lock */ SELECT RELEASE_LOCK(CONCAT(?, DATABASE()))")
                .bind(LOCK_PREFIX)
                .execute(&mut conn)
                .await;
        }
    }
}

/// The election matching a database configuration.
pub fn for_database(config: &crate::store::DatabaseConfig) -> Result<Arc<dyn Election>, StoreError> {
    match crate::store::mysql_options(config)? {
        Some(options) => Ok(Arc::new(NamedLock::new(options))),
        None => Ok(Arc::new(Sole)),
    }
}
