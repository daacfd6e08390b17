//! Rows of `multi_interface` for tests, written the way the OpenStack side
//! writes them.

use sqlx::{MySqlPool, SqlitePool};

const INSERT: &str = "INSERT INTO multi_interface (port_id, subnet_id, macaddress, attached_node_name, address, cidr, mtu) \
                      VALUES (?, 's', ?, ?, ?, ?, ?)";

/// One row to insert: a port of a node with a MAC, MTU 1500 and no address
/// unless set.
#[derive(Debug, Clone)]
pub struct NewRow<'a> {
    port: &'a str,
    node: Option<&'a str>,
    mac: &'a str,
    address: Option<&'a str>,
    cidr: Option<&'a str>,
    mtu: Option<i64>,
}

impl<'a> NewRow<'a> {
    pub fn new(port: &'a str, node: &'a str, mac: &'a str) -> Self {
        Self { port, node: Some(node), mac, address: None, cidr: None, mtu: Some(1500) }
    }

    /// `attached_node_name`, NULL included.
    pub fn node(mut self, node: Option<&'a str>) -> Self {
        self.node = node;
        self
    }

    pub fn address(mut self, address: Option<&'a str>, cidr: Option<&'a str>) -> Self {
        self.address = address;
        self.cidr = cidr;
        self
    }

    /// `mtu`, NULL included.
    pub fn mtu(mut self, mtu: impl Into<Option<i64>>) -> Self {
        self.mtu = mtu.into();
        self
    }

    /// Inserts into MariaDB; the new row's id.
    pub async fn insert(&self, pool: &MySqlPool) -> i64 {
        let result = sqlx::query(INSERT)
            .bind(self.port)
            .bind(self.mac)
            .bind(self.node)
            .bind(self.address)
            .bind(self.cidr)
            .bind(self.mtu)
            .execute(pool)
            .await
            .unwrap_or_else(|e| panic!("insert {self:?}: {e}"));
        i64::try_from(result.last_insert_id()).unwrap()
    }

    /// Inserts into SQLite; the new row's id.
    pub async fn insert_sqlite(&self, pool: &SqlitePool) -> i64 {
        sqlx::query(INSERT)
            .bind(self.port)
            .bind(self.mac)
            .bind(self.node)
            .bind(self.address)
            .bind(self.cidr)
            .bind(self.mtu)
            .execute(pool)
            .await
            .unwrap_or_else(|e| panic!("insert {self:?}: {e}"))
            .last_insert_rowid()
    }
}

/// Inserts `count` rows of `node` with MTU 0, each rejected and its MAC
/// held, in multi-row INSERTs: ports `bad-<node>-<i>`, MACs
/// `02:<tag>:..:..:..:01` (distinct for up to 16 million rows).
pub async fn insert_rejected_rows(pool: &MySqlPool, node: &str, tag: u8, count: usize) -> Result<(), sqlx::Error> {
    for chunk in (0..count).collect::<Vec<_>>().chunks(500) {
        let mut sql = String::from(
            "INSERT INTO multi_interface (port_id, subnet_id, macaddress, attached_node_name, mtu) VALUES ",
        );
        sql.push_str(&vec!["(?, 's', ?, ?, 0)"; chunk.len()].join(", "));
        let mut query = sqlx::query(&sql);
        for i in chunk {
            let mac = format!("02:{tag:02x}:{:02x}:{:02x}:{:02x}:01", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff);
            query = query.bind(format!("bad-{node}-{i}")).bind(mac).bind(node);
        }
        query.execute(pool).await?;
    }
    Ok(())
}

/// Waits (up to 30 s) until the row with this id reads `want`.
pub async fn wait_netplan_success(pool: &MySqlPool, id: i64, want: i64) {
    crate::eventually(
        std::time::Duration::from_secs(30),
        &format!("row {id} netplan_success = {want}"),
        || async move { (netplan_success(pool, id).await == want).then_some(()) },
    )
    .await;
}

/// `netplan_success` of the row with this id.
pub async fn netplan_success(pool: &MySqlPool, id: i64) -> i64 {
    sqlx::query_scalar("SELECT netplan_success FROM multi_interface WHERE id = ?")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// `netplan_success` of the row of this `port_id`.
pub async fn netplan_success_of_port(pool: &MySqlPool, port: &str) -> i64 {
    sqlx::query_scalar("SELECT netplan_success FROM multi_interface WHERE port_id = ?")
        .bind(port)
        .fetch_one(pool)
        .await
        .unwrap()
}
