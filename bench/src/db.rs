//! The benchmark's side of MariaDB: the OpenStack side's rows and changes,
//! and MariaDB's own accounting of what the controller asked of it.
//!
//! Write times are taken inside the database: a trigger (bench database
//! only) logs `UNIX_TIMESTAMP(SYSDATE(6))` whenever `netplan_success`
//! changes, so a latency is "change committed" (the benchmark's clock, read
//! when COMMIT returns) to "row written" (MariaDB's clock, microseconds, the
//! same machine clock) with no polling in between. Statistics are read as
//! root from `USER_STATISTICS` and `PROCESSLIST` for the controller's user.
//! Nothing here ever runs as the controller's user.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use multinic_testkit::mariadb::USER;
use sqlx::{MySqlConnection, MySqlPool};

use crate::BenchError;

/// Rows per multi-row INSERT when seeding.
const INSERT_CHUNK: usize = 500;

/// The MAC of interface `iface` of node number `node` (locally administered).
pub fn mac(node: usize, iface: usize) -> String {
    format!("02:{:02x}:{:02x}:{:02x}:{:02x}:01", iface, (node >> 16) & 0xff, (node >> 8) & 0xff, node & 0xff)
}

/// Inserts `per_node` interface rows for each node (address and cidr set).
pub async fn seed(pool: &MySqlPool, nodes: &[(usize, String)], per_node: usize) -> Result<usize, BenchError> {
    let rows: Vec<(String, String, String, String)> = nodes
        .iter()
        .flat_map(|(n, name)| {
            (0..per_node).map(move |i| {
                // Host part n + 1: never the /16's network or broadcast address.
                let host = n + 1;
                let address = format!("10.{}.{}.{}", 100 + i, (host >> 8) & 0xff, host & 0xff);
                (mac(*n, i), name.clone(), address, format!("10.{}.0.0/16", 100 + i))
            })
        })
        .collect();
    for chunk in rows.chunks(INSERT_CHUNK) {
        let mut sql = String::from(
            "INSERT INTO multi_interface (port_id, subnet_id, macaddress, attached_node_name, address, cidr, mtu) VALUES ",
        );
        sql.push_str(&vec!["(?, 'bench-subnet', ?, ?, ?, ?, 1500)"; chunk.len()].join(", "));
        let mut query = sqlx::query(&sql);
        for (mac, node, address, cidr) in chunk {
            query = query.bind(format!("port-{mac}")).bind(mac).bind(node).bind(address).bind(cidr);
        }
        query.execute(pool).await.map_err(sql_error("seed rows"))?;
    }
    Ok(rows.len())
}

/// Rows per history INSERT (MariaDB's SEQUENCE engine makes them in the
/// server).
const HISTORY_CHUNK: usize = 100_000;

/// Inserts `rows` rows of history, all modified a day ago:
/// `deleted_percent` of them soft-deleted rows of the benchmark's own
/// `nodes` nodes (ports removed long ago), the rest active rows of nodes
/// that have no agent here (another cluster sharing the table), ten per
/// node. Their MACs (`06:…`) never collide with the nodes' own.
pub async fn seed_history(pool: &MySqlPool, rows: usize, deleted_percent: u8, nodes: usize) -> Result<(), BenchError> {
    let deleted = i64::from(deleted_percent.min(100));
    let nodes = i64::try_from(nodes.max(1)).unwrap_or(i64::MAX);
    let mut from = 1;
    while from <= rows {
        let to = (from + HISTORY_CHUNK - 1).min(rows);
        let sql = format!(
            "INSERT INTO multi_interface (port_id, subnet_id, macaddress, attached_node_name, mtu, netplan_success, \
                                          created_at, modified_at, deleted_at) \
             SELECT CONCAT('history-', seq), 'bench-subnet', \
                    CONCAT('06:', LPAD(HEX((seq >> 24) & 255), 2, '0'), ':', LPAD(HEX((seq >> 16) & 255), 2, '0'), \
                           ':', LPAD(HEX((seq >> 8) & 255), 2, '0'), ':', LPAD(HEX(seq & 255), 2, '0'), ':01'), \
                    IF(seq % 100 < ?, CONCAT('{prefix}', LPAD(seq % ?, 5, '0')), CONCAT('other-', LPAD(seq DIV 10, 6, '0'))), \
                    1500, 1, NOW() - INTERVAL 1 DAY, NOW() - INTERVAL 1 DAY, IF(seq % 100 < ?, NOW() - INTERVAL 1 DAY, NULL) \
             FROM seq_{from}_to_{to}",
            prefix = crate::run::SIM_PREFIX,
        );
        sqlx::query(&sql)
            .bind(deleted)
            .bind(nodes)
            .bind(deleted)
            .execute(pool)
            .await
            .map_err(sql_error("seed history rows"))?;
        from = to + 1;
    }
    Ok(())
}

/// Adds an index on `modified_at` (the benchmark's database only: what an
/// operator may do; the controller never runs DDL).
pub async fn index_modified_at(root: &mut MySqlConnection) -> Result<(), BenchError> {
    sqlx::raw_sql("ALTER TABLE multinic.multi_interface ADD INDEX bench_modified_at (modified_at)")
        .execute(&mut *root)
        .await
        .map_err(sql_error("add an index on modified_at"))?;
    Ok(())
}

/// Creates the write log and its trigger (the benchmark's database only):
/// the controller's writes only (`USER()` is the client, not the definer).
pub async fn install_write_log(root: &mut MySqlConnection) -> Result<(), BenchError> {
    for sql in [
        "CREATE TABLE multinic.bench_write_log (row_id INT NOT NULL, value TINYINT NOT NULL, at_us BIGINT NOT NULL) \
         ENGINE=MEMORY",
        "CREATE TRIGGER multinic.bench_write_log AFTER UPDATE ON multinic.multi_interface FOR EACH ROW \
         IF NEW.netplan_success <> OLD.netplan_success AND SUBSTRING_INDEX(USER(), '@', 1) = 'multinic' THEN \
           INSERT INTO multinic.bench_write_log VALUES \
             (NEW.id, NEW.netplan_success, CAST(UNIX_TIMESTAMP(SYSDATE(6)) * 1000000 AS SIGNED)); \
         END IF",
        "SET GLOBAL userstat = 1",
    ] {
        sqlx::raw_sql(sql).execute(&mut *root).await.map_err(sql_error("install the write log"))?;
    }
    Ok(())
}

/// Empties the write log (before a round).
pub async fn clear_write_log(root: &mut MySqlConnection) -> Result<(), BenchError> {
    sqlx::raw_sql("DELETE FROM multinic.bench_write_log").execute(&mut *root).await.map_err(sql_error("clear"))?;
    Ok(())
}

/// Rows written to 1 since the log was cleared, with when (µs since the epoch).
pub async fn writes_of_one(root: &mut MySqlConnection) -> Result<Vec<(i64, i64)>, BenchError> {
    sqlx::query_as("SELECT row_id, MIN(at_us) FROM multinic.bench_write_log WHERE value = 1 GROUP BY row_id")
        .fetch_all(&mut *root)
        .await
        .map_err(sql_error("read the write log"))
}

/// How many rows were written to 1, and to 0, since the log was cleared.
pub async fn write_counts(root: &mut MySqlConnection) -> Result<(i64, i64), BenchError> {
    sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(value = 1), 0) AS SIGNED), CAST(COALESCE(SUM(value = 0), 0) AS SIGNED) \
         FROM multinic.bench_write_log",
    )
    .fetch_one(&mut *root)
    .await
    .map_err(sql_error("count the write log"))
}

/// Changes the MTU of every row of `nodes` (and resets `netplan_success`, as
/// the OpenStack side does); returns the rows changed and when COMMIT returned.
pub async fn change_nodes(pool: &MySqlPool, nodes: &[&str], mtu: i64) -> Result<(u64, SystemTime), BenchError> {
    let mut changed = 0;
    let mut tx = pool.begin().await.map_err(sql_error("begin a change"))?;
    for chunk in nodes.chunks(INSERT_CHUNK) {
        let sql = format!(
            "UPDATE multi_interface SET mtu = ?, netplan_success = 0 WHERE deleted_at IS NULL \
             AND attached_node_name IN ({})",
            vec!["?"; chunk.len()].join(", ")
        );
        let mut query = sqlx::query(&sql).bind(mtu);
        for node in chunk {
            query = query.bind(*node);
        }
        changed += query.execute(&mut *tx).await.map_err(sql_error("change rows"))?.rows_affected();
    }
    tx.commit().await.map_err(sql_error("commit a change"))?;
    Ok((changed, SystemTime::now()))
}

/// Active rows of nodes named `prefix…` not yet marked applied.
pub async fn pending_rows(pool: &MySqlPool, prefix: &str) -> Result<i64, BenchError> {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM multi_interface WHERE deleted_at IS NULL AND netplan_success = 0 \
         AND attached_node_name LIKE CONCAT(?, '%')",
    )
    .bind(prefix)
    .fetch_one(pool)
    .await
    .map_err(sql_error("count pending rows"))
}

/// MariaDB's counters for the controller's user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserStats {
    pub selects: i64,
    pub updates: i64,
    pub other: i64,
    pub rows_read: i64,
    pub bytes_sent: i64,
}

impl UserStats {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            selects: self.selects - earlier.selects,
            updates: self.updates - earlier.updates,
            other: self.other - earlier.other,
            rows_read: self.rows_read - earlier.rows_read,
            bytes_sent: self.bytes_sent - earlier.bytes_sent,
        }
    }

    pub fn statements(&self) -> i64 {
        self.selects + self.updates + self.other
    }
}

/// The controller user's counters (zero before its first statement).
pub async fn user_stats(root: &mut MySqlConnection) -> Result<UserStats, BenchError> {
    let row: Option<(i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT CAST(SELECT_COMMANDS AS SIGNED), CAST(UPDATE_COMMANDS AS SIGNED), CAST(OTHER_COMMANDS AS SIGNED), \
                CAST(ROWS_READ AS SIGNED), CAST(BYTES_SENT AS SIGNED) \
         FROM information_schema.USER_STATISTICS WHERE USER = ?",
    )
    .bind(USER)
    .fetch_optional(&mut *root)
    .await
    .map_err(sql_error("read USER_STATISTICS"))?;
    Ok(row
        .map(|(selects, updates, other, rows_read, bytes_sent)| UserStats {
            selects,
            updates,
            other,
            rows_read,
            bytes_sent,
        })
        .unwrap_or_default())
}

/// Connections the controller's user holds now.
pub async fn connections(root: &mut MySqlConnection) -> Result<usize, BenchError> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = ?")
        .bind(USER)
        .fetch_one(&mut *root)
        .await
        .map_err(sql_error("read PROCESSLIST"))?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Microseconds since the epoch (the write log's clock).
pub fn epoch_us(t: SystemTime) -> i64 {
    i64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_micros()).unwrap_or(i64::MAX)
}

/// The latency from `t0` to a write logged at `at_us` (never negative).
pub fn since_us(t0: SystemTime, at_us: i64) -> Duration {
    Duration::from_micros(u64::try_from(at_us - epoch_us(t0)).unwrap_or(0))
}

fn sql_error(what: &'static str) -> impl Fn(sqlx::Error) -> BenchError {
    move |source| BenchError::Sql { what, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_distinct_and_valid() {
        let a = mac(0x01_02_03, 1);
        assert_eq!(a, "02:01:01:02:03:01");
        assert!(a.parse::<multinic_proto::MacAddress>().is_ok());
        assert_ne!(mac(1, 0), mac(256, 0));
    }

    #[test]
    fn latencies_from_the_epoch() {
        let t0 = UNIX_EPOCH + Duration::from_secs(10);
        assert_eq!(since_us(t0, 10_250_000), Duration::from_millis(250));
        assert_eq!(since_us(t0, 9_000_000), Duration::ZERO);
    }
}
