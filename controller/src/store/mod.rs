//! The database edge: reading the fleet's rows and writing `netplan_success`.
//!
//! This is the only module that talks to the database. It never runs DDL
//! against a production database (schema creation is a separate function used
//! by the embedded demo and tests) and the only column it ever writes is
//! `netplan_success`, conditionally on the content it reports.

mod dialect;
mod sql;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

pub use dialect::{Dialect, MYSQL_SESSION_SETUP, RECORD_CHUNK};
pub use sql::SqlStore;

/// One active row of `multi_interface`, exactly as stored (no normalisation:
/// the conditional UPDATE compares against these raw values).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct InterfaceRow {
    pub id: i64,
    pub macaddress: String,
    pub attached_node_name: Option<String>,
    pub address: Option<String>,
    pub cidr: Option<String>,
    /// `multi_subnet.cidr` for this row's `subnet_id`, when that table exists.
    pub subnet_cidr: Option<String>,
    pub mtu: Option<i64>,
    pub netplan_success: i64,
}

impl InterfaceRow {
    /// A row of `node` with only a MAC and an MTU (no address): the shape
    /// most unit tests need.
    #[cfg(test)]
    pub(crate) fn plain(id: i64, node: &str, mac: &str, mtu: i64, netplan_success: i64) -> Self {
        Self {
            id,
            macaddress: mac.into(),
            attached_node_name: Some(node.into()),
            address: None,
            cidr: None,
            subnet_cidr: None,
            mtu: Some(mtu),
            netplan_success,
        }
    }

    /// The content a `netplan_success` write is conditional on.
    pub fn content(&self) -> RowContent {
        RowContent {
            macaddress: self.macaddress.clone(),
            address: self.address.clone(),
            cidr: self.cidr.clone(),
            mtu: self.mtu,
        }
    }
}

/// A row's content as read; a write only lands if the row still holds it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RowContent {
    pub macaddress: String,
    pub address: Option<String>,
    pub cidr: Option<String>,
    pub mtu: Option<i64>,
}

/// Every active row of the fleet, read in one go.
#[derive(Debug, Clone, Default)]
pub struct ActiveRows {
    pub rows: Vec<InterfaceRow>,
}

/// A full read: every active row, the table's tally and `multi_subnet`'s
/// cidrs (`None` without the table), from one snapshot.
#[derive(Debug, Clone, Default)]
pub struct FullRead {
    pub snapshot: ActiveRows,
    pub tally: Tally,
    pub subnets: Option<SubnetCidrs>,
}

/// `multi_subnet`'s cidr of each `subnet_id`: what the rows' cidrs fall
/// back to.
pub type SubnetCidrs = BTreeMap<String, Option<String>>;

/// Every row of `multi_interface` counted (soft-deleted ones included) and
/// the newest id, from the same snapshot as the rows read with it.
///
/// Compared from one read to the next, it reveals hard deletes: a read that
/// finds every row inserted since the last one must leave the count at the
/// last count plus those rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub rows: i64,
    pub max_id: i64,
}

/// What a poll tick asks of the database before deciding what to read:
/// index lookups and table metadata only, whatever the tables hold.
///
/// `updated` is the engine's own record of the table's last write
/// (`information_schema.TABLES.UPDATE_TIME`): in MariaDB it is the start
/// time, in seconds, of the last transaction that committed a change, kept
/// in memory only. So it is unknown (`None`) after a restart until the next
/// write, and when InnoDB evicts the table's metadata; SQLite has none. It
/// also moves with our own `netplan_success` writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableProbe {
    /// Newest id of `multi_interface` (the primary key's last entry).
    pub max_id: i64,
    /// When `multi_interface` was last written (Unix seconds), if known.
    pub updated: Option<i64>,
    /// What is known of `multi_subnet`'s last write; `None` when the table
    /// does not exist.
    pub subnets: Option<SubnetSignal>,
    /// The database's clock when probed, Unix seconds.
    pub now: i64,
}

/// How a probe saw `multi_subnet`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubnetSignal {
    /// Its last write, from the engine (Unix seconds).
    Written(i64),
    /// The engine does not know: its row count and newest `modified_at`
    /// (a scan, asked for only in that case; the table is small).
    Counted { rows: i64, max_modified: Option<i64> },
    /// Neither (the engine lost it during the probe itself).
    Unknown,
}

/// A row modified recently, as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowChange {
    pub row: InterfaceRow,
    /// Soft-deleted (`deleted_at` set): the row is no longer active.
    pub deleted: bool,
}

/// The rows modified since a point in time or inserted after an id, and
/// the table's tally, both read in one transaction (one consistent view).
#[derive(Debug, Clone, Default)]
pub struct ChangedRows {
    pub tally: Tally,
    pub rows: Vec<RowChange>,
}

/// Set `netplan_success` of row `id` to `success`, if it still holds `content`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowUpdate {
    pub id: i64,
    pub success: bool,
    pub content: RowContent,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read the fleet from the database: {source}")]
    Read {
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot record netplan_success for {rows} row(s): {source}")]
    Record {
        rows: usize,
        #[source]
        source: sqlx::Error,
    },
    #[error("database is not reachable: {source}")]
    Ping {
        #[source]
        source: sqlx::Error,
    },
    #[error("invalid database URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot create the schema: {source}")]
    Schema {
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot reach the database to take or check the controller lock: {source}")]
    Lock {
        #[source]
        source: sqlx::Error,
    },
}

/// Reads the fleet and records outcomes. A real implementation per database,
/// so the rest of the controller never sees SQL.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Every active row of `multi_interface` (with `multi_subnet.cidr`),
    /// and the table's tally from the same snapshot.
    async fn read_fleet(&self) -> Result<FullRead, StoreError>;

    /// The cheap signals of the tables: one statement, one row, no scan of
    /// `multi_interface` (a scan of `multi_subnet` only when the engine
    /// cannot say when it was last written).
    async fn probe(&self) -> Result<TableProbe, StoreError>;

    /// Every row (soft-deleted ones included) whose `modified_at` is at or
    /// after `since` (Unix seconds) or whose id is above `after_id`, with
    /// the table's tally from the same snapshot.
    async fn read_changed(&self, since: i64, after_id: i64) -> Result<ChangedRows, StoreError>;

    /// `multi_subnet`'s cidrs (`None` when the table does not exist).
    async fn read_subnets(&self) -> Result<Option<SubnetCidrs>, StoreError>;

    /// Applies the updates in one transaction, a few hundred rows per
    /// statement; returns how many rows changed.
    async fn record(&self, updates: &[RowUpdate]) -> Result<u64, StoreError>;

    /// Checks the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Which database this is, for logs and status ("mysql", "sqlite").
    fn kind(&self) -> &'static str;
}

/// How the controller reaches its database.
#[derive(Clone)]
pub enum DatabaseConfig {
    /// `mysql://user:pass@host:port/db` or `sqlite://path` (`sqlite::memory:`).
    Url(String),
    /// The predecessor's `DB_HOST DB_PORT DB_USER DB_PASSWORD DB_NAME`.
    Parts { host: String, port: u16, user: String, password: String, name: String },
}

impl std::fmt::Debug for DatabaseConfig {
    /// Never prints the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl DatabaseConfig {
    /// A description safe for logs.
    pub fn redacted(&self) -> String {
        match self {
            Self::Url(url) => redact_url(url),
            Self::Parts { host, port, user, name, .. } => format!("mysql://{user}:***@{host}:{port}/{name}"),
        }
    }
}

fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let creds = &url[scheme_end + 3..at];
            let user = creds.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// The MySQL/MariaDB connection options of a configuration; `None` for SQLite.
pub fn mysql_options(config: &DatabaseConfig) -> Result<Option<MySqlConnectOptions>, StoreError> {
    match config {
        DatabaseConfig::Url(url) if url.starts_with("sqlite:") => Ok(None),
        DatabaseConfig::Url(url) if url.starts_with("mysql:") || url.starts_with("mariadb:") => {
            let url = url.replacen("mariadb:", "mysql:", 1);
            let options: MySqlConnectOptions = url
                .parse()
                .map_err(|e: sqlx::Error| StoreError::Url { url: redact_url(&url), reason: e.to_string() })?;
            Ok(Some(options))
        }
        DatabaseConfig::Url(url) => Err(StoreError::Url {
            url: redact_url(url),
            reason: "expected a mysql://, mariadb:// or sqlite: URL".to_owned(),
        }),
        DatabaseConfig::Parts { host, port, user, password, name } => {
            Ok(Some(MySqlConnectOptions::new().host(host).port(*port).username(user).password(password).database(name)))
        }
    }
}

/// Opens a pool without connecting: the controller starts (and stays alive,
/// not ready) while the database is down, and connects when it comes back.
pub fn connect(config: &DatabaseConfig) -> Result<Arc<dyn Store>, StoreError> {
    // One connection reads each tick's changes, one the whole fleet beside
    // the ticks (the periodic full read), one writes, one spare; fleet size
    // never changes this. (SQLite, the demo, has one: they take turns.)
    const MAX_CONNECTIONS: u32 = 4;
    const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
    if let DatabaseConfig::Url(url) = config
        && url.starts_with("sqlite:")
    {
        let options: SqliteConnectOptions =
            url.parse().map_err(|e: sqlx::Error| StoreError::Url { url: redact_url(url), reason: e.to_string() })?;
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options.create_if_missing(true));
        return Ok(Arc::new(SqlStore::new(pool, "sqlite")));
    }
    let options = mysql_options(config)?.ok_or_else(|| StoreError::Url {
        url: config.redacted(),
        reason: "not a MySQL/MariaDB configuration".to_owned(),
    })?;
    Ok(Arc::new(SqlStore::new(mysql_pool(options, MAX_CONNECTIONS, ACQUIRE_TIMEOUT), "mysql")))
}

fn mysql_pool(options: MySqlConnectOptions, max: u32, acquire: Duration) -> sqlx::MySqlPool {
    MySqlPoolOptions::new()
        .max_connections(max)
        .min_connections(0)
        .acquire_timeout(acquire)
        .idle_timeout(Some(Duration::from_secs(300)))
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::Executor::execute(&mut *conn, dialect::MYSQL_SESSION_SETUP).await?;
                Ok(())
            })
        })
        .connect_lazy_with(options)
}

/// The SQLite form of `fixtures/schema-mysql.sql`, for the embedded demo and
/// tests only. Never run against a production database.
pub const SQLITE_SCHEMA: &str = include_str!("schema-sqlite.sql");

/// Creates the SQLite schema (demo and tests only).
pub async fn create_sqlite_schema(url: &str) -> Result<(), StoreError> {
    use sqlx::Connection;
    let options: SqliteConnectOptions =
        url.parse().map_err(|e: sqlx::Error| StoreError::Url { url: url.to_owned(), reason: e.to_string() })?;
    let mut conn = sqlx::SqliteConnection::connect_with(&options.create_if_missing(true))
        .await
        .map_err(|source| StoreError::Schema { source })?;
    sqlx::raw_sql(SQLITE_SCHEMA).execute(&mut conn).await.map_err(|source| StoreError::Schema { source })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("mysql://root:secret@db:3306/multinic"), "mysql://root:***@db:3306/multinic");
        assert_eq!(redact_url("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
        let parts = DatabaseConfig::Parts {
            host: "db".into(),
            port: 3306,
            user: "u".into(),
            password: "hunter2".into(),
            name: "n".into(),
        };
        assert!(!format!("{parts:?}").contains("hunter2"));
    }
}
