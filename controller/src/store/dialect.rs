//! The SQL text of every statement the controller runs, per dialect.
//!
//! MySQL/MariaDB and SQLite agree on almost everything; they differ on Unix
//! timestamps, null-safe equality (`<=>` against `IS`), how to ask whether
//! a table exists, and whether the engine knows when a table was last
//! written (`information_schema.TABLES.UPDATE_TIME`; SQLite has nothing of
//! the kind). Keeping the text here, pure, lets tests check it and keeps
//! dialect branches out of the I/O code. Nothing here is DDL, and the only
//! column any statement writes is `netplan_success`.
//!
//! Every statement starts with a `/* multinic <what> */` comment, so a DBA
//! (processlist, slow log, performance_schema) and the benchmark can tell
//! what each one is for.

/// Rows per conditional UPDATE statement (6 placeholders each: far below
/// MySQL's 65,535 and SQLite's 32,766).
pub const RECORD_CHUNK: usize = 500;

/// Run on every new MySQL/MariaDB connection of the pool. On MySQL 8 (and
/// only there: the executable comment is skipped by MariaDB and MySQL 5.7)
/// it turns off the cache of `information_schema.TABLES` statistics, which
/// would otherwise show an `UPDATE_TIME` up to a day old.
/// It also lets `GROUP_CONCAT` return up to 4 MiB (half a million ids) for
/// the changed-rows scan; a longer list is detected and read otherwise.
pub const MYSQL_SESSION_SETUP: &str = "SET SESSION group_concat_max_len = 4194304 \
     /*!80000 , SESSION information_schema_stats_expiry = 0 */";

/// Ids per `id IN (…)` statement of the changed rows.
pub const IDS_CHUNK: usize = 5000;

/// Which SQL to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    MySql,
    Sqlite,
}

// A soft-deleted multi_subnet row supplies no cidr (every join skips it).
const SELECT_WITH_SUBNET: &str = "/* multinic full */ \
    SELECT i.id, i.macaddress, i.attached_node_name, i.address, i.cidr, s.cidr AS subnet_cidr, \
           i.mtu, i.netplan_success \
    FROM multi_interface i LEFT JOIN multi_subnet s ON s.subnet_id = i.subnet_id AND s.deleted_at IS NULL \
    WHERE i.deleted_at IS NULL ORDER BY i.id";

const SELECT_WITHOUT_SUBNET: &str = "/* multinic full */ \
    SELECT id, macaddress, attached_node_name, address, cidr, NULL AS subnet_cidr, mtu, netplan_success \
    FROM multi_interface WHERE deleted_at IS NULL ORDER BY id";

// The probe: the primary key's last entry and the tables' metadata; never
// a scan of multi_interface. multi_subnet is counted only when the engine
// does not know its last write (CASE evaluates the subqueries lazily).
const PROBE_MYSQL_WITH_SUBNET: &str = "/* multinic probe */ \
    SELECT (SELECT COALESCE(MAX(id), 0) FROM multi_interface) AS max_id, \
           (SELECT CAST(UNIX_TIMESTAMP(UPDATE_TIME) AS SIGNED) FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'multi_interface') AS updated, \
           s.updated AS subnet_updated, \
           CASE WHEN s.updated IS NULL THEN (SELECT COUNT(*) FROM multi_subnet) END AS subnet_rows, \
           CASE WHEN s.updated IS NULL \
                THEN (SELECT CAST(UNIX_TIMESTAMP(MAX(modified_at)) AS SIGNED) FROM multi_subnet) END \
             AS subnet_modified, \
           CAST(UNIX_TIMESTAMP() AS SIGNED) AS now \
    FROM (SELECT (SELECT CAST(UNIX_TIMESTAMP(UPDATE_TIME) AS SIGNED) FROM information_schema.TABLES \
                   WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'multi_subnet') AS updated) s";

const PROBE_MYSQL_WITHOUT_SUBNET: &str = "/* multinic probe */ \
    SELECT (SELECT COALESCE(MAX(id), 0) FROM multi_interface) AS max_id, \
           (SELECT CAST(UNIX_TIMESTAMP(UPDATE_TIME) AS SIGNED) FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'multi_interface') AS updated, \
           CAST(NULL AS SIGNED) AS subnet_updated, CAST(NULL AS SIGNED) AS subnet_rows, \
           CAST(NULL AS SIGNED) AS subnet_modified, CAST(UNIX_TIMESTAMP() AS SIGNED) AS now";

// SQLite cannot say when a table was written: multi_interface is read for
// changes every tick (the demo's tables are tiny), multi_subnet counted.
const PROBE_SQLITE_WITH_SUBNET: &str = "/* multinic probe */ \
    SELECT (SELECT COALESCE(MAX(id), 0) FROM multi_interface) AS max_id, NULL AS updated, \
           NULL AS subnet_updated, (SELECT COUNT(*) FROM multi_subnet) AS subnet_rows, \
           (SELECT CAST(strftime('%s', MAX(modified_at)) AS INTEGER) FROM multi_subnet) AS subnet_modified, \
           CAST(strftime('%s', 'now') AS INTEGER) AS now";

const PROBE_SQLITE_WITHOUT_SUBNET: &str = "/* multinic probe */ \
    SELECT (SELECT COALESCE(MAX(id), 0) FROM multi_interface) AS max_id, NULL AS updated, \
           NULL AS subnet_updated, NULL AS subnet_rows, NULL AS subnet_modified, \
           CAST(strftime('%s', 'now') AS INTEGER) AS now";

// Soft-deleted subnets supply no cidr, so they are left out here too: a soft
// delete changes the pairs and makes the whole fleet read.
const SUBNETS: &str = "/* multinic subnets */ SELECT subnet_id, cidr FROM multi_subnet WHERE deleted_at IS NULL";

// Every row counted (the smallest index serves it) and the newest id (the
// primary key's last entry). Both dialects.
const TALLY: &str = "/* multinic tally */ \
    SELECT (SELECT COUNT(*) FROM multi_interface) AS total_rows, \
           (SELECT COALESCE(MAX(id), 0) FROM multi_interface) AS max_id";

// Without an index on modified_at, one scan of the table counts it and
// lists the ids of the rows modified at or after a Unix time or inserted
// after an id (UNIX_TIMESTAMP of a TIMESTAMP column reads its stored value:
// measured twice as fast as the count and the rows read apart); the rows
// are then read by id. The condition is given twice: `?, ?, ?, ?`.
const SCAN_CHANGED_MYSQL: &str = "/* multinic scan */ \
    SELECT COUNT(*) AS total_rows, COALESCE(MAX(id), 0) AS max_id, \
           CAST(COALESCE(SUM(UNIX_TIMESTAMP(modified_at) >= ? OR id > ?), 0) AS SIGNED) AS changed, \
           GROUP_CONCAT(IF(UNIX_TIMESTAMP(modified_at) >= ? OR id > ?, id, NULL)) AS ids \
    FROM multi_interface";

// With an index on modified_at (an operator may add one): the rows modified
// at or after a Unix time, or inserted after an id, soft-deleted ones
// included. `modified_at >= FROM_UNIXTIME(?)` (UTC: the pool's sessions
// run at +00:00) lets MariaDB read two ranges (an index-merge union with the
// primary key). Also the fallback when the scan's id list is cut short.
const CHANGED_MYSQL_WITH_SUBNET: &str = "/* multinic changed */ \
    SELECT i.id, i.macaddress, i.attached_node_name, i.address, i.cidr, s.cidr AS subnet_cidr, \
           i.mtu, i.netplan_success, CAST(i.deleted_at IS NOT NULL AS SIGNED) AS deleted \
    FROM multi_interface i LEFT JOIN multi_subnet s ON s.subnet_id = i.subnet_id AND s.deleted_at IS NULL \
    WHERE i.modified_at >= FROM_UNIXTIME(?) OR i.id > ?";

const CHANGED_MYSQL_WITHOUT_SUBNET: &str = "/* multinic changed */ \
    SELECT id, macaddress, attached_node_name, address, cidr, NULL AS subnet_cidr, mtu, netplan_success, \
           CAST(deleted_at IS NOT NULL AS SIGNED) AS deleted \
    FROM multi_interface WHERE modified_at >= FROM_UNIXTIME(?) OR id > ?";

const CHANGED_SQLITE_WITH_SUBNET: &str = "/* multinic changed */ \
    SELECT i.id, i.macaddress, i.attached_node_name, i.address, i.cidr, s.cidr AS subnet_cidr, \
           i.mtu, i.netplan_success, (i.deleted_at IS NOT NULL) AS deleted \
    FROM multi_interface i LEFT JOIN multi_subnet s ON s.subnet_id = i.subnet_id AND s.deleted_at IS NULL \
    WHERE CAST(strftime('%s', i.modified_at) AS INTEGER) >= ? OR i.id > ?";

const CHANGED_SQLITE_WITHOUT_SUBNET: &str = "/* multinic changed */ \
    SELECT id, macaddress, attached_node_name, address, cidr, NULL AS subnet_cidr, mtu, netplan_success, \
           (deleted_at IS NOT NULL) AS deleted \
    FROM multi_interface WHERE CAST(strftime('%s', modified_at) AS INTEGER) >= ? OR id > ?";

impl Dialect {
    /// `"sqlite"` or anything else (MySQL/MariaDB).
    pub fn of(kind: &str) -> Self {
        if kind == "sqlite" { Self::Sqlite } else { Self::MySql }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Self::MySql => "mysql",
            Self::Sqlite => "sqlite",
        }
    }

    /// Whether `multi_subnet` exists, and whether an index of
    /// `multi_interface` begins with `modified_at`: one row, two counts.
    /// (SQLite is never asked for an index: it always reads the plain way.)
    pub fn layout(self) -> &'static str {
        match self {
            Self::Sqlite => {
                "/* multinic tables */ \
                 SELECT (SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'multi_subnet'), 0"
            }
            Self::MySql => {
                "/* multinic tables */ \
                 SELECT (SELECT COUNT(*) FROM information_schema.TABLES \
                          WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'multi_subnet'), \
                        (SELECT COUNT(*) FROM information_schema.STATISTICS \
                          WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'multi_interface' \
                            AND COLUMN_NAME = 'modified_at' AND SEQ_IN_INDEX = 1)"
            }
        }
    }

    /// The one-scan count and changed-id list (MySQL/MariaDB without an
    /// index on `modified_at`; `None` otherwise).
    pub fn scan_changed(self, indexed: bool) -> Option<&'static str> {
        (self == Self::MySql && !indexed).then_some(SCAN_CHANGED_MYSQL)
    }

    /// The rows with the given ids (`n` placeholders).
    pub fn select_ids(self, subnet: bool, n: usize) -> String {
        let ids = vec!["?"; n].join(", ");
        const JOIN: &str = "LEFT JOIN multi_subnet s ON s.subnet_id = i.subnet_id AND s.deleted_at IS NULL";
        let (deleted, join, prefix) = match (self, subnet) {
            (Self::MySql, true) => ("CAST(i.deleted_at IS NOT NULL AS SIGNED)", JOIN, "s.cidr"),
            (Self::Sqlite, true) => ("(i.deleted_at IS NOT NULL)", JOIN, "s.cidr"),
            (Self::MySql, false) => ("CAST(i.deleted_at IS NOT NULL AS SIGNED)", "", "NULL"),
            (Self::Sqlite, false) => ("(i.deleted_at IS NOT NULL)", "", "NULL"),
        };
        format!(
            "/* multinic changed */ SELECT i.id, i.macaddress, i.attached_node_name, i.address, i.cidr, \
             {prefix} AS subnet_cidr, i.mtu, i.netplan_success, {deleted} AS deleted \
             FROM multi_interface i {join} WHERE i.id IN ({ids})"
        )
    }

    /// Every active row.
    pub fn select_fleet(self, subnet: bool) -> &'static str {
        if subnet { SELECT_WITH_SUBNET } else { SELECT_WITHOUT_SUBNET }
    }

    /// The cheap signals: newest id, when each table was last written, the
    /// clock.
    pub fn probe(self, subnet: bool) -> &'static str {
        match (self, subnet) {
            (Self::MySql, true) => PROBE_MYSQL_WITH_SUBNET,
            (Self::MySql, false) => PROBE_MYSQL_WITHOUT_SUBNET,
            (Self::Sqlite, true) => PROBE_SQLITE_WITH_SUBNET,
            (Self::Sqlite, false) => PROBE_SQLITE_WITHOUT_SUBNET,
        }
    }

    /// `multi_subnet`'s `subnet_id` and `cidr`, every active row.
    pub fn select_subnets(self) -> &'static str {
        SUBNETS
    }

    /// Every row counted, and the newest id.
    pub fn tally(self) -> &'static str {
        TALLY
    }

    /// Rows modified at or after `?` (Unix seconds) or with an id above
    /// `?`, deleted ones too.
    pub fn select_changed(self, subnet: bool) -> &'static str {
        match (self, subnet) {
            (Self::MySql, true) => CHANGED_MYSQL_WITH_SUBNET,
            (Self::MySql, false) => CHANGED_MYSQL_WITHOUT_SUBNET,
            (Self::Sqlite, true) => CHANGED_SQLITE_WITH_SUBNET,
            (Self::Sqlite, false) => CHANGED_SQLITE_WITHOUT_SUBNET,
        }
    }

    /// Sets `netplan_success` to `?` on `rows` rows at once, each only if it
    /// is still active, differs, and holds exactly the content reported on.
    ///
    /// Placeholders: the value twice, the `rows` ids (the primary-key range
    /// the statement may touch), then per row: id, macaddress, address,
    /// cidr, mtu. `modified_at` keeps its value so that our writes never
    /// look like changes to anyone watching it (our own change reads
    /// included).
    pub fn record(self, rows: usize) -> String {
        let same = match self {
            Self::MySql => "<=>",
            Self::Sqlite => "IS",
        };
        let ids = vec!["?"; rows].join(", ");
        let one = format!("(id = ? AND macaddress = ? AND address {same} ? AND cidr {same} ? AND mtu {same} ?)");
        let contents = vec![one.as_str(); rows].join(" OR ");
        format!(
            "/* multinic record */ UPDATE multi_interface SET netplan_success = ?, modified_at = modified_at \
             WHERE deleted_at IS NULL AND netplan_success <> ? AND id IN ({ids}) AND ({contents})"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_has_six_placeholders_per_row_plus_two() {
        for dialect in [Dialect::MySql, Dialect::Sqlite] {
            for rows in [1, 3, RECORD_CHUNK] {
                let sql = dialect.record(rows);
                assert_eq!(sql.matches('?').count(), 2 + 6 * rows, "{dialect:?} {rows}");
                assert!(sql.contains("modified_at = modified_at"));
                assert!(!sql.to_ascii_uppercase().contains("CREATE"), "never DDL");
            }
        }
        assert!(Dialect::MySql.record(1).contains("address <=> ?"));
        assert!(Dialect::Sqlite.record(1).contains("address IS ?"));
    }

    #[test]
    fn dialects_by_kind() {
        assert_eq!(Dialect::of("sqlite"), Dialect::Sqlite);
        assert_eq!(Dialect::of("mysql"), Dialect::MySql);
        assert_eq!(Dialect::of("mysql").kind(), "mysql");
        for subnet in [true, false] {
            assert_eq!(Dialect::MySql.select_changed(subnet).matches('?').count(), 2);
            assert_eq!(Dialect::Sqlite.select_changed(subnet).matches('?').count(), 2);
            assert_eq!(Dialect::MySql.select_ids(subnet, 3).matches('?').count(), 3);
            assert!(Dialect::Sqlite.select_ids(subnet, 1).contains("WHERE i.id IN (?)"));
            assert!(Dialect::Sqlite.probe(subnet).contains("strftime"));
            assert!(Dialect::MySql.probe(subnet).contains("UPDATE_TIME"));
        }
        for dialect in [Dialect::MySql, Dialect::Sqlite] {
            for sql in [dialect.select_fleet(true), dialect.select_changed(true), &dialect.select_ids(true, 2)] {
                assert!(sql.contains("s.subnet_id = i.subnet_id AND s.deleted_at IS NULL"), "{sql}");
            }
        }
    }

    #[test]
    fn the_mysql_probe_never_aggregates_multi_interface() {
        for subnet in [true, false] {
            let probe = Dialect::MySql.probe(subnet);
            assert!(!probe.contains("COUNT(*) FROM multi_interface"), "{probe}");
            assert!(!probe.contains("MAX(modified_at)) AS SIGNED) FROM multi_interface"), "{probe}");
            assert!(probe.contains("MAX(id), 0) FROM multi_interface"), "{probe}");
        }
    }

    #[test]
    fn one_scan_only_without_an_index_on_mysql() {
        let scan = Dialect::MySql.scan_changed(false).unwrap();
        assert_eq!(scan.matches('?').count(), 4);
        assert!(scan.contains("UNIX_TIMESTAMP(modified_at) >= ?"), "reads the stored value");
        assert_eq!(Dialect::MySql.scan_changed(true), None);
        assert_eq!(Dialect::Sqlite.scan_changed(false), None);
    }

    #[test]
    fn every_statement_says_what_it_is() {
        let d = Dialect::MySql;
        for sql in
            [d.select_fleet(true), d.probe(true), d.tally(), d.select_changed(true), d.select_subnets(), &d.record(1)]
        {
            assert!(sql.starts_with("/* multinic "), "{sql}");
        }
        assert!(MYSQL_SESSION_SETUP.contains("/*!80000"), "MySQL 8 only");
    }
}
