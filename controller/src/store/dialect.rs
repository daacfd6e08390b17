//! The SQL text of every statement the controller runs, per dialect.
//!
//! MySQL/MariaDB and SQLite agree on almost everything; they differ on Unix
//! timestamps, null-safe equality (`<=>` against `IS`) and how to ask
//! whether a table exists. Keeping the text here, pure, lets tests check it
//! and keeps dialect branches out of the I/O code. Nothing here is DDL, and
//! the only column any statement writes is `netplan_success`.

/// Rows per conditional UPDATE statement (6 placeholders each: far below
/// MySQL's 65,535 and SQLite's 32,766).
pub const RECORD_CHUNK: usize = 500;

/// Which SQL to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    MySql,
    Sqlite,
}

// A soft-deleted multi_subnet row supplies no cidr (the join skips it).
const SELECT_WITH_SUBNET: &str = "\
    SELECT i.id, i.macaddress, i.attached_node_name, i.address, i.cidr, s.cidr AS subnet_cidr, \
           i.mtu, i.netplan_success \
    FROM multi_interface i LEFT JOIN multi_subnet s ON s.subnet_id = i.subnet_id AND s.deleted_at IS NULL \
    WHERE i.deleted_at IS NULL ORDER BY i.id";

const SELECT_WITHOUT_SUBNET: &str = "\
    SELECT id, macaddress, attached_node_name, address, cidr, NULL AS subnet_cidr, mtu, netplan_success \
    FROM multi_interface WHERE deleted_at IS NULL ORDER BY id";

// The probe: one scan of multi_interface (and of multi_subnet), aggregates only.
const PROBE_MYSQL_WITH_SUBNET: &str = "\
    SELECT COUNT(*) AS total_rows, COUNT(*) - COUNT(deleted_at) AS active, COALESCE(MAX(id), 0) AS max_id, \
           CAST(UNIX_TIMESTAMP(MAX(modified_at)) AS SIGNED) AS max_modified, \
           (SELECT COUNT(*) FROM multi_subnet) AS subnet_rows, \
           (SELECT CAST(UNIX_TIMESTAMP(MAX(modified_at)) AS SIGNED) FROM multi_subnet) AS subnet_modified, \
           CAST(UNIX_TIMESTAMP() AS SIGNED) AS now \
    FROM multi_interface";

const PROBE_MYSQL_WITHOUT_SUBNET: &str = "\
    SELECT COUNT(*) AS total_rows, COUNT(*) - COUNT(deleted_at) AS active, COALESCE(MAX(id), 0) AS max_id, \
           CAST(UNIX_TIMESTAMP(MAX(modified_at)) AS SIGNED) AS max_modified, \
           CAST(NULL AS SIGNED) AS subnet_rows, CAST(NULL AS SIGNED) AS subnet_modified, \
           CAST(UNIX_TIMESTAMP() AS SIGNED) AS now \
    FROM multi_interface";

const PROBE_SQLITE_WITH_SUBNET: &str = "\
    SELECT COUNT(*) AS total_rows, COUNT(*) - COUNT(deleted_at) AS active, COALESCE(MAX(id), 0) AS max_id, \
           CAST(strftime('%s', MAX(modified_at)) AS INTEGER) AS max_modified, \
           (SELECT COUNT(*) FROM multi_subnet) AS subnet_rows, \
           (SELECT CAST(strftime('%s', MAX(modified_at)) AS INTEGER) FROM multi_subnet) AS subnet_modified, \
           CAST(strftime('%s', 'now') AS INTEGER) AS now \
    FROM multi_interface";

const PROBE_SQLITE_WITHOUT_SUBNET: &str = "\
    SELECT COUNT(*) AS total_rows, COUNT(*) - COUNT(deleted_at) AS active, COALESCE(MAX(id), 0) AS max_id, \
           CAST(strftime('%s', MAX(modified_at)) AS INTEGER) AS max_modified, \
           NULL AS subnet_rows, NULL AS subnet_modified, CAST(strftime('%s', 'now') AS INTEGER) AS now \
    FROM multi_interface";

// Rows modified at or after a Unix time, soft-deleted ones included.
const CHANGED_MYSQL_WITH_SUBNET: &str = "\
    SELECT i.id, i.macaddress, i.attached_node_name, i.address, i.cidr, s.cidr AS subnet_cidr, \
           i.mtu, i.netplan_success, CAST(i.deleted_at IS NOT NULL AS SIGNED) AS deleted \
    FROM multi_interface i LEFT JOIN multi_subnet s ON s.subnet_id = i.subnet_id AND s.deleted_at IS NULL \
    WHERE UNIX_TIMESTAMP(i.modified_at) >= ?";

const CHANGED_MYSQL_WITHOUT_SUBNET: &str = "\
    SELECT id, macaddress, attached_node_name, address, cidr, NULL AS subnet_cidr, mtu, netplan_success, \
           CAST(deleted_at IS NOT NULL AS SIGNED) AS deleted \
    FROM multi_interface WHERE UNIX_TIMESTAMP(modified_at) >= ?";

const CHANGED_SQLITE_WITH_SUBNET: &str = "\
    SELECT i.id, i.macaddress, i.attached_node_name, i.address, i.cidr, s.cidr AS subnet_cidr, \
           i.mtu, i.netplan_success, (i.deleted_at IS NOT NULL) AS deleted \
    FROM multi_interface i LEFT JOIN multi_subnet s ON s.subnet_id = i.subnet_id AND s.deleted_at IS NULL \
    WHERE CAST(strftime('%s', i.modified_at) AS INTEGER) >= ?";

const CHANGED_SQLITE_WITHOUT_SUBNET: &str = "\
    SELECT id, macaddress, attached_node_name, address, cidr, NULL AS subnet_cidr, mtu, netplan_success, \
           (deleted_at IS NOT NULL) AS deleted \
    FROM multi_interface WHERE CAST(strftime('%s', modified_at) AS INTEGER) >= ?";

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

    /// Whether `multi_subnet` exists: one row, a count.
    pub fn subnet_table_exists(self) -> &'static str {
        match self {
            Self::Sqlite => "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'multi_subnet'",
            Self::MySql => {
                "SELECT COUNT(*) FROM information_schema.tables \
                 WHERE table_schema = DATABASE() AND table_name = 'multi_subnet'"
            }
        }
    }

    /// Every active row.
    pub fn select_fleet(self, subnet: bool) -> &'static str {
        if subnet { SELECT_WITH_SUBNET } else { SELECT_WITHOUT_SUBNET }
    }

    /// The tables' aggregates.
    pub fn probe(self, subnet: bool) -> &'static str {
        match (self, subnet) {
            (Self::MySql, true) => PROBE_MYSQL_WITH_SUBNET,
            (Self::MySql, false) => PROBE_MYSQL_WITHOUT_SUBNET,
            (Self::Sqlite, true) => PROBE_SQLITE_WITH_SUBNET,
            (Self::Sqlite, false) => PROBE_SQLITE_WITHOUT_SUBNET,
        }
    }

    /// Rows modified at or after `?` (Unix seconds), deleted ones too.
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
    /// look like changes to anyone watching it (our own change probe included).
    pub fn record(self, rows: usize) -> String {
        let same = match self {
            Self::MySql => "<=>",
            Self::Sqlite => "IS",
        };
        let ids = vec!["?"; rows].join(", ");
        let one = format!("(id = ? AND macaddress = ? AND address {same} ? AND cidr {same} ? AND mtu {same} ?)");
        let contents = vec![one.as_str(); rows].join(" OR ");
        format!(
            "UPDATE multi_interface SET netplan_success = ?, modified_at = modified_at \
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
            assert_eq!(Dialect::MySql.select_changed(subnet).matches('?').count(), 1);
            assert_eq!(Dialect::Sqlite.select_changed(subnet).matches('?').count(), 1);
            assert!(Dialect::Sqlite.probe(subnet).contains("strftime"));
            assert!(Dialect::MySql.probe(subnet).contains("UNIX_TIMESTAMP"));
        }
        for dialect in [Dialect::MySql, Dialect::Sqlite] {
            for sql in [dialect.select_fleet(true), dialect.select_changed(true)] {
                assert!(sql.contains("s.subnet_id = i.subnet_id AND s.deleted_at IS NULL"), "{sql}");
            }
        }
    }
}
