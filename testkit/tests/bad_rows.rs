//! The bad-row catalogue against a real MariaDB: every kind of bad row gets a
//! problem that names the row and what is wrong, stays at netplan_success 0,
//! and affects no other row, interface or node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use multinic_controller::fleet::Convergence;
use multinic_proto::{ErrorCode, NodeName};
use multinic_testkit::fleet::{TestAgent, TestController};
use multinic_testkit::mariadb::MariaDb;
use multinic_testkit::rows::{NewRow, netplan_success_of_port};
use multinic_testkit::{eventually, netplan_generate, require_netplan};
use sqlx::MySqlPool;

const WAIT: Duration = Duration::from_secs(20);

/// (port, node, mac, address, cidr, mtu)
type Row = (&'static str, Option<String>, &'static str, Option<&'static str>, Option<&'static str>, Option<i64>);

async fn insert(pool: &MySqlPool, rows: &[Row]) -> BTreeMap<&'static str, i64> {
    let mut ids = BTreeMap::new();
    for (port, node, mac, address, cidr, mtu) in rows {
        let id = NewRow::new(port, "", mac).node(node.as_deref()).address(*address, *cidr).mtu(*mtu).insert(pool).await;
        ids.insert(*port, id);
    }
    ids
}

fn n(name: &str) -> Option<String> {
    Some(name.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_bad_row_is_named_and_contained() {
    let Some(db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    // 255 bytes (fits the column), four valid 63-byte labels: over 253 bytes.
    let long_name = vec!["a".repeat(63); 4].join(".");
    let rows: Vec<Row> = vec![
        // Good rows, one of them IPv6, next to every bad one.
        ("good-a", n("node-a"), "fa:16:3e:00:50:01", Some("10.50.0.5"), Some("10.50.0.0/24"), Some(1500)),
        ("good-v6", n("node-a"), "fa:16:3e:00:50:02", Some("2001:db8:50::5"), Some("2001:db8:50::/64"), Some(1500)),
        ("good-b", n("node-b"), "fa:16:3e:00:50:03", None, None, None),
        // Bad MACs.
        ("mac-dashes", n("node-a"), "fa-16-3e-00-50-10", None, None, Some(1500)),
        ("mac-multicast", n("node-a"), "01:00:5e:00:50:11", None, None, Some(1500)),
        ("mac-zero", n("node-a"), "00:00:00:00:00:00", None, None, Some(1500)),
        ("mac-short", n("node-a"), "fa:16:3e:00:50", None, None, Some(1500)),
        // The same MAC twice on a node, with different settings.
        ("dup-1", n("node-b"), "fa:16:3e:00:50:20", None, None, Some(1500)),
        ("dup-2", n("node-b"), "fa:16:3e:00:50:20", None, None, Some(9000)),
        // The same MAC on two nodes.
        ("two-nodes-a", n("node-a"), "fa:16:3e:00:50:21", None, None, Some(1500)),
        ("two-nodes-b", n("node-b"), "fa:16:3e:00:50:21", None, None, Some(1500)),
        // Addresses and cidrs.
        ("no-cidr", n("node-a"), "fa:16:3e:00:50:30", Some("10.50.0.6"), None, Some(1500)),
        ("outside", n("node-a"), "fa:16:3e:00:50:31", Some("10.51.0.6"), Some("10.50.0.0/24"), Some(1500)),
        ("bad-cidr", n("node-a"), "fa:16:3e:00:50:32", Some("10.50.0.7"), Some("10.50.0.0/40"), Some(1500)),
        ("mixed-family", n("node-a"), "fa:16:3e:00:50:33", Some("2001:db8::7"), Some("10.50.0.0/24"), Some(1500)),
        (
            "v6-small-mtu",
            n("node-a"),
            "fa:16:3e:00:50:34",
            Some("2001:db8:50::8"),
            Some("2001:db8:50::/64"),
            Some(1200),
        ),
        // MTUs.
        ("mtu-zero", n("node-b"), "fa:16:3e:00:50:40", None, None, Some(0)),
        ("mtu-negative", n("node-b"), "fa:16:3e:00:50:41", None, None, Some(-1500)),
        ("mtu-huge", n("node-b"), "fa:16:3e:00:50:42", None, None, Some(9217)),
        // Node names.
        ("node-odd", n("node_under;score"), "fa:16:3e:00:50:50", None, None, Some(1500)),
        ("node-long", Some(long_name.clone()), "fa:16:3e:00:50:51", None, None, Some(1500)),
        ("node-empty", n(""), "fa:16:3e:00:50:52", None, None, Some(1500)),
        ("node-null", None, "fa:16:3e:00:50:53", None, None, Some(1500)),
    ];
    let ids = insert(&pool, &rows).await;
    let controller = TestController::start(&db.url(), Duration::from_millis(150)).await;
    let a = TestAgent::start(&controller.url(), "node-a").await;
    let b = TestAgent::start(&controller.url(), "node-b").await;
    for node in ["node-a", "node-b"] {
        let name: NodeName = node.parse().unwrap();
        eventually(WAIT, &format!("{node} converged"), || async {
            controller.fleet.view().node(&name).filter(|n| n.convergence == Convergence::Converged).map(|_| ())
        })
        .await;
    }

    // Every bad row has one problem naming it and saying what is wrong.
    let mut problems: BTreeMap<i64, (ErrorCode, String)> = BTreeMap::new();
    for node in ["node-a", "node-b"] {
        for p in &controller.fleet.view().node(&node.parse().unwrap()).unwrap().desired.problems {
            problems.insert(p.row_id, (p.code, p.message.clone()));
        }
    }
    for p in controller.fleet.view().unattached().iter() {
        problems.insert(p.row_id, (p.code, p.message.clone()));
    }
    let expect = [
        ("mac-dashes", ErrorCode::InvalidRow, "dashes"),
        ("mac-multicast", ErrorCode::InvalidRow, "multicast"),
        ("mac-zero", ErrorCode::InvalidRow, "all-zero"),
        ("mac-short", ErrorCode::InvalidRow, "six octets"),
        ("dup-1", ErrorCode::DuplicateMac, "different settings"),
        ("dup-2", ErrorCode::DuplicateMac, "different settings"),
        ("two-nodes-a", ErrorCode::DuplicateMac, "node-b"),
        ("two-nodes-b", ErrorCode::DuplicateMac, "node-a"),
        ("no-cidr", ErrorCode::InvalidRow, "no cidr"),
        ("outside", ErrorCode::InvalidRow, "outside its cidr"),
        ("bad-cidr", ErrorCode::InvalidRow, "out of range"),
        ("mixed-family", ErrorCode::InvalidRow, "family"),
        ("v6-small-mtu", ErrorCode::InvalidRow, "1280"),
        ("mtu-zero", ErrorCode::InvalidRow, "MTU 0"),
        ("mtu-negative", ErrorCode::InvalidRow, "MTU -1500"),
        ("mtu-huge", ErrorCode::InvalidRow, "9216"),
        ("node-odd", ErrorCode::InvalidRow, "only letters"),
        ("node-long", ErrorCode::InvalidRow, "253 bytes"),
        ("node-empty", ErrorCode::InvalidRow, "empty"),
        ("node-null", ErrorCode::InvalidRow, "NULL"),
    ];
    for (port, code, needle) in expect {
        let id = ids[port];
        let (got, message) =
            problems.get(&id).unwrap_or_else(|| panic!("no problem for {port} (row {id}): {problems:?}"));
        assert_eq!(*got, code, "{port}: {message}");
        assert!(message.contains(needle), "{port}: {message:?} lacks {needle:?}");
    }
    assert_eq!(problems.len(), expect.len(), "{problems:?}");

    // Bad rows stay 0; good rows on the same nodes reach 1.
    for port in ["good-a", "good-v6", "good-b"] {
        eventually(WAIT, port, || async { (netplan_success_of_port(&pool, port).await == 1).then_some(()) }).await;
    }
    for (port, _, _) in expect {
        assert_eq!(netplan_success_of_port(&pool, port).await, 0, "{port}");
    }
    let files_a: Vec<String> = (0..10).filter_map(|i| a.netplan_file(i)).collect();
    assert_eq!(files_a.len(), 2, "node-a renders its two good rows only");
    assert!(files_a.iter().any(|f| f.contains("2001:db8:50::5/64")));
    assert_eq!((0..10).filter_map(|i| b.netplan_file(i)).count(), 1);
    if require_netplan() {
        netplan_generate(a.root()).unwrap();
        netplan_generate(b.root()).unwrap();
    }
    controller.stop().await;
    a.stop().await;
    b.stop().await;
}
