//! The SQL implementation of [`Store`], shared by MySQL/MariaDB and SQLite.
//!
//! Both speak `?` placeholders and the same SELECT/UPDATE text, so one
//! generic implementation serves both; only the table-existence probe
//! differs by dialect.

use std::sync::atomic::{AtomicU8, Ordering};

use async_trait::async_trait;
use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Pool, Type};

use super::{FleetSnapshot, InterfaceRow, RowUpdate, Store, StoreError};

const SELECT_WITH_SUBNET: &str = "\
    SELECT i.id, i.macaddress, i.attached_node_name, i.address, i.cidr, s.cidr AS subnet_cidr, \
           i.mtu, i.netplan_success \
    FROM multi_interface i LEFT JOIN multi_subnet s ON s.subnet_id = i.subnet_id \
    WHERE i.deleted_at IS NULL ORDER BY i.id";

const SELECT_WITHOUT_SUBNET: &str = "\
    SELECT id, macaddress, attached_node_name, address, cidr, NULL AS subnet_cidr, mtu, netplan_success \
    FROM multi_interface WHERE deleted_at IS NULL ORDER BY id";

/// Writes only `netplan_success`, keeps `modified_at` as it was (so our writes
/// are not mistaken for changes by anyone watching it), and lands only if the
/// row is still active and still holds the content the outcome is about.
const UPDATE_SUCCESS: &str = "\
    UPDATE multi_interface SET netplan_success = ?, modified_at = modified_at \
    WHERE id = ? AND deleted_at IS NULL AND netplan_success <> ? AND macaddress = ? \
      AND ((address IS NULL AND ? IS NULL) OR address = ?) \
      AND ((cidr IS NULL AND ? IS NULL) OR cidr = ?) \
      AND ((mtu IS NULL AND ? IS NULL) OR mtu = ?)";

const SUBNET_UNKNOWN: u8 = 0;
const SUBNET_PRESENT: u8 = 1;
const SUBNET_ABSENT: u8 = 2;

/// A [`Store`] over an sqlx pool of MySQL/MariaDB or SQLite.
#[derive(Debug)]
pub struct SqlStore<DB: Database> {
    pool: Pool<DB>,
    kind: &'static str,
    /// Whether `multi_subnet` exists; probed once, again after a read error.
    subnet_table: AtomicU8,
}

impl<DB: Database> SqlStore<DB> {
    pub fn new(pool: Pool<DB>, kind: &'static str) -> Self {
        Self { pool, kind, subnet_table: AtomicU8::new(SUBNET_UNKNOWN) }
    }

    /// The pool, for tests and the demo that need to run their own SQL.
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    fn subnet_probe(&self) -> &'static str {
        if self.kind == "sqlite" {
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'multi_subnet'"
        } else {
            "SELECT COUNT(*) FROM information_schema.tables \
             WHERE table_schema = DATABASE() AND table_name = 'multi_subnet'"
        }
    }
}

#[async_trait]
impl<DB> Store for SqlStore<DB>
where
    DB: Database,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'r> InterfaceRow: FromRow<'r, DB::Row>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
    DB::QueryResult: RowsAffected,
{
    async fn read_fleet(&self) -> Result<FleetSnapshot, StoreError> {
        let mut subnet = self.subnet_table.load(Ordering::Relaxed);
        if subnet == SUBNET_UNKNOWN {
            let (count,): (i64,) = sqlx::query_as(self.subnet_probe())
                .fetch_one(&self.pool)
                .await
                .map_err(|source| StoreError::Read { source })?;
            subnet = if count > 0 { SUBNET_PRESENT } else { SUBNET_ABSENT };
            self.subnet_table.store(subnet, Ordering::Relaxed);
        }
        let query = if subnet == SUBNET_PRESENT { SELECT_WITH_SUBNET } else { SELECT_WITHOUT_SUBNET };
        match sqlx::query_as::<_, InterfaceRow>(query).fetch_all(&self.pool).await {
            Ok(rows) => Ok(FleetSnapshot { rows }),
            Err(source) => {
                // The table layout may have changed (multi_subnet created or
                // dropped): probe again next time.
                self.subnet_table.store(SUBNET_UNKNOWN, Ordering::Relaxed);
                Err(StoreError::Read { source })
            }
        }
    }

    async fn record(&self, updates: &[RowUpdate]) -> Result<u64, StoreError> {
        if updates.is_empty() {
            return Ok(0);
        }
        let fail = |source| StoreError::Record { rows: updates.len(), source };
        let mut tx = self.pool.begin().await.map_err(fail)?;
        let mut changed = 0;
        for update in updates {
            let success = i64::from(update.success);
            let c = &update.content;
            let result = sqlx::query(UPDATE_SUCCESS)
                .bind(success)
                .bind(update.id)
                .bind(success)
                .bind(c.macaddress.clone())
                .bind(c.address.clone())
                .bind(c.address.clone())
                .bind(c.cidr.clone())
                .bind(c.cidr.clone())
                .bind(c.mtu)
                .bind(c.mtu)
                .execute(&mut *tx)
                .await
                .map_err(fail)?;
            changed += result.rows_affected();
        }
        tx.commit().await.map_err(fail)?;
        Ok(changed)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(|source| StoreError::Ping { source })?;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        self.kind
    }
}

/// `rows_affected` is an inherent method on each driver's result type; this
/// names it for the generic code above.
pub trait RowsAffected {
    fn rows_affected(&self) -> u64;
}

impl RowsAffected for sqlx::mysql::MySqlQueryResult {
    fn rows_affected(&self) -> u64 {
        sqlx::mysql::MySqlQueryResult::rows_affected(self)
    }
}

impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows_affected(&self) -> u64 {
        sqlx::sqlite::SqliteQueryResult::rows_affected(self)
    }
}
