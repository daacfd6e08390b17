//! The database edge on both databases it speaks: the probe, the read of
//! changed rows, and batched conditional writes, on a private MariaDB and
//! on SQLite (the demo's database).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::Arc;

use multinic_controller::store::{self, DatabaseConfig, Dialect, RECORD_CHUNK, RowUpdate, Store, SubnetSignal};
use multinic_testkit::mariadb::{MariaDb, execute};
use multinic_testkit::sqlite_db;
use sqlx::Row;

/// Runs SQL as the OpenStack side; returns the single integer a query gives, if any.
trait Writer {
    fn exec(&self, sql: &str) -> impl Future<Output = ()>;
    fn int(&self, sql: &str) -> impl Future<Output = i64>;
}

struct MySqlWriter(sqlx::MySqlPool);
struct SqliteWriter(sqlx::SqlitePool);

impl Writer for MySqlWriter {
    async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sql).execute(&self.0).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    async fn int(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.0).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

impl Writer for SqliteWriter {
    async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sql).execute(&self.0).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    async fn int(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.0).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_probe_changes_and_batched_writes() {
    let Some(db) = MariaDb::start().await else { return };
    let store = store::connect(&DatabaseConfig::Url(db.url())).unwrap();
    exercise(store, MySqlWriter(db.pool().await), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_probe_changes_and_batched_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (url, pool) = sqlite_db(dir.path()).await;
    let store = store::connect(&DatabaseConfig::Url(url)).unwrap();
    exercise(store, SqliteWriter(pool), false).await;
}

/// `knows_writes`: the database says when a table was last written
/// (MariaDB's `UPDATE_TIME`; SQLite has nothing of the kind).
async fn exercise(store: Arc<dyn Store>, db: impl Writer, knows_writes: bool) {
    let insert =
        "INSERT INTO multi_interface (port_id, subnet_id, macaddress, attached_node_name, address, cidr, mtu) VALUES";
    db.exec(&format!(
        "{insert} ('p1', 's', 'fa:16:3e:00:00:01', 'a', NULL, NULL, NULL), \
                  ('p2', 's', 'fa:16:3e:00:00:02', 'a', '10.0.0.5', '10.0.0.0/24', 1500), \
                  ('p3', 's', 'fa:16:3e:00:00:03', 'b', NULL, NULL, 9000)"
    ))
    .await;
    // More rows than one statement writes, on node c.
    let bulk: Vec<String> = (0..RECORD_CHUNK * 2 + 7)
        .map(|i| format!("('c{i}', 's', 'fa:16:3e:01:{:02x}:{:02x}', 'c', NULL, NULL, 1500)", i / 256, i % 256))
        .collect();
    db.exec(&format!("{insert} {}", bulk.join(", "))).await;
    let total = 3 + bulk.len() as i64;

    let probe = store.probe().await.unwrap();
    assert_eq!(probe.max_id, db.int("SELECT MAX(id) FROM multi_interface").await);
    assert!(probe.now > 0);
    assert_eq!(probe.updated.is_some(), knows_writes, "{probe:?}");
    assert!(probe.updated.is_none_or(|at| at <= probe.now), "{probe:?}");
    // multi_subnet exists but was never written: counted instead.
    assert_eq!(probe.subnets, Some(SubnetSignal::Counted { rows: 0, max_modified: None }));

    let read = store.read_fleet().await.unwrap();
    assert_eq!((read.tally.rows, read.tally.max_id), (total, probe.max_id));
    let rows = read.snapshot.rows;
    assert_eq!(rows.len() as i64, total);
    let by_port = |mac: &str| rows.iter().find(|r| r.macaddress == mac).cloned().unwrap();
    let (r1, r2, r3) = (by_port("fa:16:3e:00:00:01"), by_port("fa:16:3e:00:00:02"), by_port("fa:16:3e:00:00:03"));

    // One batch: NULLs compare equal to NULLs; other content, or a value
    // already there, changes nothing.
    let wrong = multinic_controller::store::RowContent { mtu: Some(9000), ..r2.content() };
    let mut updates = vec![
        RowUpdate { id: r1.id, success: true, content: r1.content() },
        RowUpdate { id: r2.id, success: true, content: wrong },
        RowUpdate { id: r3.id, success: false, content: r3.content() },
    ];
    updates.extend(rows.iter().filter(|r| r.attached_node_name.as_deref() == Some("c")).map(|r| RowUpdate {
        id: r.id,
        success: true,
        content: r.content(),
    }));
    let before_write = db.int("SELECT COUNT(DISTINCT modified_at) FROM multi_interface").await;
    let changed = store.record(&updates).await.unwrap();
    assert_eq!(changed as usize, 1 + bulk.len());
    let success = |id: i64| format!("SELECT netplan_success FROM multi_interface WHERE id = {id}");
    assert_eq!(db.int(&success(r1.id)).await, 1);
    assert_eq!(db.int(&success(r2.id)).await, 0, "written for other content: not applied");
    assert_eq!(db.int("SELECT COUNT(*) FROM multi_interface WHERE netplan_success = 1").await, 1 + bulk.len() as i64);
    // Our writes keep modified_at, so a changed read does not return them;
    // the engine's last-write time does move with them.
    assert_eq!(db.int("SELECT COUNT(DISTINCT modified_at) FROM multi_interface").await, before_write);
    let after = store.probe().await.unwrap();
    assert_eq!(after.max_id, probe.max_id);
    assert_eq!(after.updated.is_some(), knows_writes);
    assert!(after.updated >= probe.updated, "{after:?} vs {probe:?}");
    assert_eq!(store.record(&updates).await.unwrap(), 0, "a repeated batch changes nothing");

    // Changed rows: soft-deleted ones included, flagged; a hard delete
    // shows in the count; rows above an id whatever their modified_at.
    assert!(store.read_changed(after.now + 3600, probe.max_id).await.unwrap().rows.is_empty());
    db.exec(&format!("UPDATE multi_interface SET deleted_at = CURRENT_TIMESTAMP WHERE id = {}", r2.id)).await;
    db.exec(&format!("DELETE FROM multi_interface WHERE id = {}", r3.id)).await;
    let changed = store.read_changed(0, probe.max_id).await.unwrap();
    assert_eq!(changed.tally.rows, total - 1);
    assert_eq!(changed.tally.max_id, probe.max_id);
    let r2_now = changed.rows.iter().find(|c| c.row.id == r2.id).unwrap();
    assert!(r2_now.deleted);
    assert!(changed.rows.iter().filter(|c| c.row.id != r2.id).all(|c| !c.deleted));
    assert!(!changed.rows.iter().any(|c| c.row.id == r3.id));
    let now = store.probe().await.unwrap().now;
    let recent = store.read_changed(now - 5, probe.max_id).await.unwrap();
    assert!(recent.rows.iter().any(|c| c.row.id == r2.id), "the soft delete is a recent change");
    assert!(store.read_changed(now + 2, probe.max_id).await.unwrap().rows.is_empty());
    // Inserted with an old modified_at: found by its id.
    db.exec(
        "INSERT INTO multi_interface (port_id, subnet_id, macaddress, attached_node_name, modified_at) \
         VALUES ('old', 's', 'fa:16:3e:00:00:09', 'a', '2001-01-01 00:00:00')",
    )
    .await;
    let inserted = store.read_changed(now + 2, probe.max_id).await.unwrap();
    assert_eq!(inserted.rows.len(), 1, "{:?}", inserted.rows);
    assert_eq!(inserted.rows[0].row.macaddress, "fa:16:3e:00:00:09");
    assert_eq!(inserted.tally, store::Tally { rows: total, max_id: probe.max_id + 1 });

    // A soft-deleted row is never written.
    let again = [RowUpdate { id: r2.id, success: true, content: r2.content() }];
    assert_eq!(store.record(&again).await.unwrap(), 0);
}

/// We never run DDL against the real database, but an operator may add an
/// index on `modified_at`: the changed-rows read then uses it (a range read
/// instead of a scan) and returns the same rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_changed_reads_use_an_index_on_modified_at_once_an_operator_adds_one() {
    let Some(db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    let writer = MySqlWriter(pool.clone());
    writer
        .exec(
            "INSERT INTO multi_interface (port_id, subnet_id, macaddress, attached_node_name, modified_at, deleted_at) \
             SELECT CONCAT('old-', seq), 's', '02:00:00:00:00:01', 'gone', '2020-01-01 00:00:00', NOW() \
             FROM seq_1_to_5000",
        )
        .await;
    let store = store::connect(&DatabaseConfig::Url(db.url())).unwrap();
    let max_id = store.probe().await.unwrap().max_id;
    writer.exec("UPDATE multi_interface SET mtu = 9000 WHERE port_id = 'old-17'").await;
    let now = store.probe().await.unwrap().now;
    let sql = Dialect::MySql.select_changed(true);
    let key = || async {
        let plan = sqlx::query(&format!("EXPLAIN {sql}"))
            .bind(now - 5)
            .bind(max_id)
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.get::<Option<String>, _>("table").as_deref() == Some("i"))
            .unwrap();
        (plan.get::<Option<String>, _>("type"), plan.get::<Option<String>, _>("key"))
    };
    let read = store.read_changed(now - 5, max_id).await.unwrap();
    let updated = writer.int("SELECT id FROM multi_interface WHERE port_id = 'old-17'").await;
    assert_eq!(read.rows.iter().map(|c| c.row.id).collect::<Vec<_>>(), vec![updated]);
    assert_eq!(key().await, (Some("ALL".into()), None), "without an index: one scan");

    execute(&mut db.root().await, "ALTER TABLE multinic.multi_interface ADD INDEX idx_modified (modified_at)").await;
    let (kind, key) = key().await;
    assert!(key.as_deref().is_some_and(|k| k.contains("idx_modified")), "{kind:?} {key:?}");
    let again = store.read_changed(now - 5, max_id).await.unwrap();
    assert_eq!(again.rows, read.rows);
    assert_eq!(again.tally, read.tally);
}
