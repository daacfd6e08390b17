//! The SQL implementation of [`Store`], shared by MySQL/MariaDB and SQLite.
//!
//! Both speak `?` placeholders and nearly the same SQL, so one generic
//! implementation serves both; the statements that differ by dialect
//! (timestamps, null-safe equality, the tables' layout, how changed rows
//! are found) come from [`super::dialect`]. Every write is conditional on
//! the exact content it reports on and keeps `modified_at` as it was.

use std::sync::atomic::{AtomicU8, Ordering};

use async_trait::async_trait;
use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Pool, Transaction, Type};

use super::dialect::{Dialect, IDS_CHUNK, RECORD_CHUNK};
use super::{
    ActiveRows, ChangedRows, FullRead, InterfaceRow, RowChange, RowUpdate, Store, StoreError, SubnetCidrs,
    SubnetSignal, TableProbe, Tally,
};

/// [`Layout`] as bits: not known yet, known, with `multi_subnet`, with an
/// index on `modified_at`.
const LAYOUT_UNKNOWN: u8 = 0;
const LAYOUT_KNOWN: u8 = 1;
const LAYOUT_SUBNET: u8 = 2;
const LAYOUT_INDEXED: u8 = 4;

/// What the controller needs to know of the tables' layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    /// `multi_subnet` exists.
    subnet: bool,
    /// An index of `multi_interface` begins with `modified_at`.
    indexed: bool,
}

/// A [`Store`] over an sqlx pool of MySQL/MariaDB or SQLite.
#[derive(Debug)]
pub struct SqlStore<DB: Database> {
    pool: Pool<DB>,
    dialect: Dialect,
    /// The tables' [`Layout`]: asked at every full read and after a read
    /// error (an operator may add an index, the table may appear).
    layout: AtomicU8,
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

/// One row of the changed-rows scan.
#[derive(Debug, sqlx::FromRow)]
pub struct ScanRow {
    total_rows: i64,
    max_id: i64,
    changed: i64,
    ids: Option<String>,
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
        Self { pool, dialect: Dialect::of(kind), layout: AtomicU8::new(LAYOUT_UNKNOWN) }
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
    for<'r> ScanRow: FromRow<'r, DB::Row>,
    for<'r> ChangedRow: FromRow<'r, DB::Row>,
    for<'r> (i64, i64): FromRow<'r, DB::Row>,
    for<'r> (String, Option<String>): FromRow<'r, DB::Row>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
    DB::QueryResult: RowsAffected,
{
    async fn read_fleet(&self) -> Result<FullRead, StoreError> {
        self.layout.store(LAYOUT_UNKNOWN, Ordering::Relaxed);
        let subnet = self.layout().await?.subnet;
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
        Ok(FullRead { snapshot: ActiveRows { rows }, tally: tally.into(), subnets })
    }

    async fn read_subnets(&self) -> Result<Option<SubnetCidrs>, StoreError> {
        if !self.layout().await?.subnet {
            return Ok(None);
        }
        match sqlx::query_as::<_, (String, Option<String>)>(self.dialect.select_subnets()).fetch_all(&self.pool).await {
            Ok(rows) => Ok(Some(rows.into_iter().collect())),
            Err(source) => Err(self.read_failed(source)),
        }
    }

    async fn probe(&self) -> Result<TableProbe, StoreError> {
        let subnet = self.layout().await?.subnet;
        match sqlx::query_as::<_, ProbeRow>(self.dialect.probe(subnet)).fetch_one(&self.pool).await {
            Ok(row) => Ok(row.probe(subnet)),
            Err(source) => Err(self.read_failed(source)),
        }
    }

    async fn read_changed(&self, since: i64, after_id: i64) -> Result<ChangedRows, StoreError> {
        let layout = self.layout().await?;
        let read = |source| StoreError::Read { source };
        // One transaction: the count and the rows describe the same view
        // (InnoDB's consistent snapshot; SQLite's read transaction).
        let mut tx = self.pool.begin().await.map_err(read)?;
        let result = match self.dialect.scan_changed(layout.indexed) {
            Some(scan) => self.scan_changed(&mut tx, scan, layout.subnet, since, after_id).await,
            None => self.select_changed(&mut tx, layout.subnet, since, after_id).await,
        };
        let changed = result.map_err(|source| self.read_failed(source))?;
        tx.commit().await.map_err(read)?;
        Ok(changed)
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
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'r> (i64, i64): FromRow<'r, DB::Row>,
    for<'r> TallyRow: FromRow<'r, DB::Row>,
    for<'r> ScanRow: FromRow<'r, DB::Row>,
    for<'r> ChangedRow: FromRow<'r, DB::Row>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    /// The tables' layout (asked once, and again after a full read or an
    /// error).
    async fn layout(&self) -> Result<Layout, StoreError> {
        let mut bits = self.layout.load(Ordering::Relaxed);
        if bits == LAYOUT_UNKNOWN {
            let (subnet, indexed): (i64, i64) = sqlx::query_as(self.dialect.layout())
                .fetch_one(&self.pool)
                .await
                .map_err(|source| StoreError::Read { source })?;
            bits = LAYOUT_KNOWN
                | if subnet > 0 { LAYOUT_SUBNET } else { 0 }
                | if indexed > 0 { LAYOUT_INDEXED } else { 0 };
            self.layout.store(bits, Ordering::Relaxed);
        }
        Ok(Layout { subnet: bits & LAYOUT_SUBNET != 0, indexed: bits & LAYOUT_INDEXED != 0 })
    }

    /// The tables may have changed (multi_subnet created or dropped, an
    /// index added): ask again next time.
    fn read_failed(&self, source: sqlx::Error) -> StoreError {
        self.layout.store(LAYOUT_UNKNOWN, Ordering::Relaxed);
        StoreError::Read { source }
    }

    /// The count, then the changed rows (with an index on `modified_at`,
    /// and on SQLite).
    async fn select_changed(
        &self,
        tx: &mut Transaction<'_, DB>,
        subnet: bool,
        since: i64,
        after_id: i64,
    ) -> Result<ChangedRows, sqlx::Error> {
        let tally = sqlx::query_as::<_, TallyRow>(self.dialect.tally()).fetch_one(&mut **tx).await?;
        let rows = sqlx::query_as::<_, ChangedRow>(self.dialect.select_changed(subnet))
            .bind(since)
            .bind(after_id)
            .fetch_all(&mut **tx)
            .await?;
        Ok(ChangedRows { tally: tally.into(), rows: rows.into_iter().map(ChangedRow::change).collect() })
    }

    /// One scan for the count and the changed ids, then those rows by id
    /// (without an index on `modified_at`). A list cut short (longer than
    /// the session's `group_concat_max_len`) is read the plain way.
    async fn scan_changed(
        &self,
        tx: &mut Transaction<'_, DB>,
        scan: &str,
        subnet: bool,
        since: i64,
        after_id: i64,
    ) -> Result<ChangedRows, sqlx::Error> {
        let found = sqlx::query_as::<_, ScanRow>(scan)
            .bind(since)
            .bind(after_id)
            .bind(since)
            .bind(after_id)
            .fetch_one(&mut **tx)
            .await?;
        let Some(ids) = complete_ids(found.ids.as_deref(), found.changed) else {
            return self.select_changed(tx, subnet, since, after_id).await;
        };
        let mut rows = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(IDS_CHUNK) {
            let sql = self.dialect.select_ids(subnet, chunk.len());
            let mut query = sqlx::query_as::<_, ChangedRow>(&sql);
            for id in chunk {
                query = query.bind(*id);
            }
            rows.extend(query.fetch_all(&mut **tx).await?.into_iter().map(ChangedRow::change));
        }
        Ok(ChangedRows { tally: Tally { rows: found.total_rows, max_id: found.max_id }, rows })
    }
}

/// The ids of a `GROUP_CONCAT` list, if it holds all `count` of them (a
/// list longer than `group_concat_max_len` is cut, with a warning only).
fn complete_ids(list: Option<&str>, count: i64) -> Option<Vec<i64>> {
    let ids: Vec<i64> = match list {
        None | Some("") => Vec::new(),
        Some(list) => list.split(',').map(str::parse).collect::<Result<_, _>>().ok()?,
    };
    (i64::try_from(ids.len()).ok() == Some(count)).then_some(ids)
}

impl ChangedRow {
    fn change(self) -> RowChange {
        RowChange { row: self.row, deleted: self.deleted != 0 }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_id_list_is_not_trusted() {
        assert_eq!(complete_ids(Some("3,17,9"), 3), Some(vec![3, 17, 9]));
        assert_eq!(complete_ids(None, 0), Some(vec![]));
        // Cut after "17,9" (the last id may be cut in half, or not at all).
        assert_eq!(complete_ids(Some("3,17,9"), 4), None);
        assert_eq!(complete_ids(Some("3,17,"), 3), None);
        assert_eq!(complete_ids(None, 2), None);
    }
}
