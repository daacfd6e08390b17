//! The SQL implementation of [`Store`], shared by MySQL/MariaDB and SQLite.
//!
//! Both speak `?` placeholders and nearly the same SQL, so one generic
//! implementation serves both; the statements that differ by dialect
//! (timestamps, null-safe equality, the table-existence probe) come from
//! [`super::dialect`]. Every write is conditional on the exact content it
//! reports on and keeps `modified_at` as it was.

use std::sync::atomic::{AtomicU8, Ordering};

use async_trait::async_trait;
use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Pool, Type};

use super::dialect::{Dialect, RECORD_CHUNK};
use super::{
    ChangedRows, FleetRead, FleetSnapshot, InterfaceRow, RowChange, RowUpdate, Store, StoreError, SubnetCidrs,
    SubnetSignal, TableProbe, Tally,
};

const SUBNET_UNKNOWN: u8 = 0;
const SUBNET_PRESENT: u8 = 1;
const SUBNET_ABSENT: u8 = 2;

/// A [`Store`] over an sqlx pool of MySQL/MariaDB or SQLite.
#[derive(Debug)]
pub struct SqlStore<DB: Database> {
    pool: Pool<DB>,
    dialect: Dialect,
    /// Whether `multi_subnet` exists; probed once, again after a read error.
    subnet_table: AtomicU8,
}

/// One row of the probe statement.
#[derive(Debug, sqlx::FromRow)]
pub struct ProbeRow {
    max_id: i64,
    updated: Option<i64>,
    subnet_updated: Option<i64>,
    subnet_rows: Option<i64>,
    subnet_modified: Option<i64>,
    now: i64,
}

/// One row of the tally statement.
#[derive(Debug, sqlx::FromRow)]
pub struct TallyRow {
    total_rows: i64,
    max_id: i64,
}

/// One row of the changed-rows statement.
#[derive(Debug, sqlx::FromRow)]
pub struct ChangedRow {
    #[sqlx(flatten)]
    row: InterfaceRow,
    deleted: i64,
}

impl<DB: Database> SqlStore<DB> {
    pub fn new(pool: Pool<DB>, kind: &'static str) -> Self {
        Self { pool, dialect: Dialect::of(kind), subnet_table: AtomicU8::new(SUBNET_UNKNOWN) }
    }

    /// The pool, for tests and the demo that need to run their own SQL.
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
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
    for<'r> ProbeRow: FromRow<'r, DB::Row>,
    for<'r> TallyRow: FromRow<'r, DB::Row>,
    for<'r> ChangedRow: FromRow<'r, DB::Row>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'r> (String, Option<String>): FromRow<'r, DB::Row>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
    DB::QueryResult: RowsAffected,
{
    async fn read_fleet(&self) -> Result<FleetRead, StoreError> {
        let subnet = self.subnet_table().await?;
        let read = |source| StoreError::Read { source };
        // One transaction: the tally and the rows describe the same view.
        let mut tx = self.pool.begin().await.map_err(read)?;
        let tally = sqlx::query_as::<_, TallyRow>(self.dialect.tally()).fetch_one(&mut *tx).await;
        let rows = sqlx::query_as::<_, InterfaceRow>(self.dialect.select_fleet(subnet)).fetch_all(&mut *tx).await;
        let subnets = match subnet {
            true => sqlx::query_as(self.dialect.select_subnets()).fetch_all(&mut *tx).await.map(Some),
            false => Ok(None),
        };
        let (tally, rows, subnets) = match (tally, rows, subnets) {
            (Ok(tally), Ok(rows), Ok(subnets)) => (tally, rows, subnets),
            (Err(source), _, _) | (_, Err(source), _) | (_, _, Err(source)) => return Err(self.read_failed(source)),
        };
        tx.commit().await.map_err(read)?;
        let subnets = subnets.map(|s: Vec<(String, Option<String>)>| s.into_iter().collect());
        Ok(FleetRead { snapshot: FleetSnapshot { rows }, tally: tally.into(), subnets })
    }

    async fn read_subnets(&self) -> Result<Option<SubnetCidrs>, StoreError> {
        if !self.subnet_table().await? {
            return Ok(None);
        }
        match sqlx::query_as::<_, (String, Option<String>)>(self.dialect.select_subnets()).fetch_all(&self.pool).await {
            Ok(rows) => Ok(Some(rows.into_iter().collect())),
            Err(source) => Err(self.read_failed(source)),
        }
    }

    async fn probe(&self) -> Result<TableProbe, StoreError> {
        let subnet = self.subnet_table().await?;
        match sqlx::query_as::<_, ProbeRow>(self.dialect.probe(subnet)).fetch_one(&self.pool).await {
            Ok(row) => Ok(row.probe(subnet)),
            Err(source) => Err(self.read_failed(source)),
        }
    }

    async fn read_changed(&self, since: i64, after_id: i64) -> Result<ChangedRows, StoreError> {
        let subnet = self.subnet_table().await?;
        let read = |source| StoreError::Read { source };
        // One transaction: the tally and the rows describe the same view
        // (InnoDB's consistent snapshot; SQLite's read transaction).
        let mut tx = self.pool.begin().await.map_err(read)?;
        let tally = sqlx::query_as::<_, TallyRow>(self.dialect.tally()).fetch_one(&mut *tx).await;
        let rows = sqlx::query_as::<_, ChangedRow>(self.dialect.select_changed(subnet))
            .bind(since)
            .bind(after_id)
            .fetch_all(&mut *tx)
            .await;
        let (tally, rows) = match (tally, rows) {
            (Ok(tally), Ok(rows)) => (tally, rows),
            (Err(source), _) | (_, Err(source)) => return Err(self.read_failed(source)),
        };
        tx.commit().await.map_err(read)?;
        let rows = rows.into_iter().map(|c| RowChange { row: c.row, deleted: c.deleted != 0 }).collect();
        Ok(ChangedRows { tally: tally.into(), rows })
    }

    async fn record(&self, updates: &[RowUpdate]) -> Result<u64, StoreError> {
        if updates.is_empty() {
            return Ok(0);
        }
        let fail = |source| StoreError::Record { rows: updates.len(), source };
        let mut tx = self.pool.begin().await.map_err(fail)?;
        let mut changed = 0;
        for success in [true, false] {
            let same: Vec<&RowUpdate> = updates.iter().filter(|u| u.success == success).collect();
            for chunk in same.chunks(RECORD_CHUNK) {
                let value = i64::from(success);
                let sql = self.dialect.record(chunk.len());
                let mut query = sqlx::query(&sql).bind(value).bind(value);
                for update in chunk {
                    query = query.bind(update.id);
                }
                for update in chunk {
                    let c = &update.content;
                    query = query
                        .bind(update.id)
                        .bind(c.macaddress.clone())
                        .bind(c.address.clone())
                        .bind(c.cidr.clone())
                        .bind(c.mtu);
                }
                changed += query.execute(&mut *tx).await.map_err(fail)?.rows_affected();
            }
        }
        tx.commit().await.map_err(fail)?;
        Ok(changed)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(|source| StoreError::Ping { source })?;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        self.dialect.kind()
    }
}

impl<DB> SqlStore<DB>
where
    DB: Database,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
{
    /// Whether `multi_subnet` exists (asked once, and again after an error).
    async fn subnet_table(&self) -> Result<bool, StoreError> {
        let mut subnet = self.subnet_table.load(Ordering::Relaxed);
        if subnet == SUBNET_UNKNOWN {
            let (count,): (i64,) = sqlx::query_as(self.dialect.subnet_table_exists())
                .fetch_one(&self.pool)
                .await
                .map_err(|source| StoreError::Read { source })?;
            subnet = if count > 0 { SUBNET_PRESENT } else { SUBNET_ABSENT };
            self.subnet_table.store(subnet, Ordering::Relaxed);
        }
        Ok(subnet == SUBNET_PRESENT)
    }

    /// The table layout may have changed (multi_subnet created or dropped):
    /// ask again next time.
    fn read_failed(&self, source: sqlx::Error) -> StoreError {
        self.subnet_table.store(SUBNET_UNKNOWN, Ordering::Relaxed);
        StoreError::Read { source }
    }
}

impl ProbeRow {
    /// The probe, knowing whether `multi_subnet` exists.
    fn probe(self, subnet_table: bool) -> TableProbe {
        let subnets = subnet_table.then_some(match (self.subnet_updated, self.subnet_rows) {
            (Some(at), _) => SubnetSignal::Written(at),
            (None, Some(rows)) => SubnetSignal::Counted { rows, max_modified: self.subnet_modified },
            (None, None) => SubnetSignal::Unknown,
        });
        TableProbe { max_id: self.max_id, updated: self.updated, subnets, now: self.now }
    }
}

impl From<TallyRow> for Tally {
    fn from(t: TallyRow) -> Self {
        Self { rows: t.total_rows, max_id: t.max_id }
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
