//! The metrics the chart's alerting rules are written against, scraped from
//! running controllers and agents: certificate expiry follows a live
//! reload, only the active replica lists nodes, a standby still says whether
//! it reaches the database, and an agent names its node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, UNIX_EPOCH};

use multinic_testkit::certs::{TestPki, pem};
use multinic_testkit::fleet::{TestAgent, TestController, sqlite_database};
use multinic_testkit::mariadb::MariaDb;
use multinic_testkit::rows::NewRow;
use multinic_testkit::scrape::{Metrics, wait_metric};
use multinic_testkit::token_review::{FakeTokenReview, issuer_config};
use multinic_testkit::{eventually, free_addr, http_get_checked};
use multinic_tls::{CertificateAuthority, CertificateInfo, KeyedCertificate, Validity};

const POLL: Duration = Duration::from_millis(100);
const WAIT: Duration = Duration::from_secs(20);
const EXPIRY: &str = "multinic_controller_certificate_expiration_timestamp_seconds";
const NOT_CONVERGED: &str = "multinic_controller_node_not_converged";

fn unix(info: &CertificateInfo) -> f64 {
    info.not_after.duration_since(UNIX_EPOCH).unwrap().as_secs() as f64
}

fn not_after_of(path: &std::path::Path) -> f64 {
    unix(&CertificateInfo::from_pem(pem(path).as_bytes()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_expiry_follows_a_live_reload_and_ignores_a_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    let (db, _pool) = sqlite_database(dir.path()).await;
    let pki = TestPki::new();
    let fake = FakeTokenReview::start().await;
    let mut tls = pki.controller_tls();
    tls.issuer = Some(issuer_config(&fake, &pki, Duration::from_secs(3600)));
    let controller = TestController::start_mutual(&db, POLL, tls).await;
    let server = pki.controller();

    // What the files say now (the test PKI makes both valid for a day).
    let m = Metrics::scrape(controller.http).await;
    assert_eq!(m.get(EXPIRY, &[("certificate", "server")]), not_after_of(&server.cert));
    assert_eq!(m.get(EXPIRY, &[("certificate", "issuer_ca")]), not_after_of(&pki.ca_file()));
    assert_eq!(m.label_values(EXPIRY, "certificate"), ["issuer_ca", "server"]);

    // A renewed server certificate (ten days) and a new issuer CA (thirty)
    // replace the files: the gauges follow without a restart.
    let renewed = pki
        .ca()
        .server_certificate(
            &["localhost".into()],
            &["127.0.0.1".parse().unwrap()],
            Validity::starting_now(Duration::from_secs(10 * 86_400)),
        )
        .unwrap();
    pki.write("controller", &renewed);
    let new_ca = CertificateAuthority::generate("multinic rotated CA", Duration::from_secs(30 * 86_400)).unwrap();
    KeyedCertificate { cert_pem: new_ca.cert_pem().to_owned(), key_pem: new_ca.key_pem() }
        .write(&pki.ca_file(), &pki.dir().join("ca.key"))
        .unwrap();
    let server_after = unix(&renewed.info().unwrap());
    let ca_after = unix(new_ca.info());
    assert!(server_after > m.get(EXPIRY, &[("certificate", "server")]) + 8.0 * 86_400.0, "ten days, not one");
    wait_metric(controller.http, EXPIRY, &[("certificate", "server")], |v| v == server_after).await;
    wait_metric(controller.http, EXPIRY, &[("certificate", "issuer_ca")], |v| v == ca_after).await;

    // A half-written rotation (a certificate that is not one) keeps the
    // material in use, and so the value.
    std::fs::write(&server.cert, "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(Metrics::scrape(controller.http).await.get(EXPIRY, &[("certificate", "server")]), server_after);
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_active_replica_lists_unconverged_nodes_and_a_standby_reports_the_database() {
    let Some(mut db) = MariaDb::start().await else { return };
    let pool = db.pool().await;
    NewRow::new("p-a", "node-a", "fa:16:3e:00:19:01").insert(&pool).await;
    NewRow::new("p-b", "node-b", "fa:16:3e:00:19:02").insert(&pool).await;
    let active = TestController::start(&db.url(), POLL).await;
    active.wait_active().await;
    let standby = TestController::start(&db.url(), POLL).await;

    // node-a's agent is up and names its node; node-b has rows and no agent.
    let agent_http = free_addr();
    let root = tempfile::tempdir().unwrap();
    let agent = TestAgent::start_adjusted(root, &active.url(), "node-a", |c| c.http_listen = Some(agent_http)).await;
    eventually(WAIT, "the agent serves HTTP", || async {
        (http_get_checked(agent_http, "/healthz").await == Some(200)).then_some(())
    })
    .await;
    let a = Metrics::scrape(agent_http).await;
    let info = a.samples("multinic_agent_info", &[]).collect::<Vec<_>>();
    assert_eq!(info.len(), 1, "{info:?}");
    for (label, value) in [("node", "node-a"), ("backend", "netplan"), ("apply", "none")] {
        assert_eq!(info[0].labels.get(label), Some(value), "{info:?}");
    }
    assert_eq!(a.get("multinic_agent_info", &[]), 1.0);
    eventually(WAIT, "node-a converged, node-b listed as disconnected", || async {
        let m = Metrics::scrape(active.http).await;
        (m.label_values(NOT_CONVERGED, "node") == ["node-b"]
            && m.get(NOT_CONVERGED, &[("node", "node-b"), ("state", "disconnected")]) == 1.0)
            .then_some(())
    })
    .await;
    let m = Metrics::scrape(active.http).await;
    assert_eq!((m.get("multinic_controller_active", &[]), m.get("multinic_controller_db_up", &[])), (1.0, 1.0));

    // The standby knows no fleet, lists nothing, and still says the
    // database answers it (its lock check).
    wait_metric(standby.http, "multinic_controller_db_up", &[], |v| v == 1.0).await;
    let s = Metrics::scrape(standby.http).await;
    assert_eq!(s.get("multinic_controller_active", &[]), 0.0);
    assert!(s.has("multinic_controller_active") && !s.has(NOT_CONVERGED), "{:?}", s.0.samples);

    // node-a's agent goes away: node-a is listed too, node-b still.
    agent.stop().await;
    eventually(WAIT, "node-a listed as disconnected", || async {
        let m = Metrics::scrape(active.http).await;
        (m.label_values(NOT_CONVERGED, "node") == ["node-a", "node-b"]).then_some(())
    })
    .await;

    // The database goes away: both replicas say so; the active one stays
    // active (it keeps the last good state) and keeps its list.
    db.stop();
    wait_metric(active.http, "multinic_controller_db_up", &[], |v| v == 0.0).await;
    wait_metric(standby.http, "multinic_controller_db_up", &[], |v| v == 0.0).await;
    let m = Metrics::scrape(active.http).await;
    assert_eq!(m.get("multinic_controller_active", &[]), 1.0);
    assert_eq!(m.label_values(NOT_CONVERGED, "node"), ["node-a", "node-b"]);
    db.restart().await;
    wait_metric(standby.http, "multinic_controller_db_up", &[], |v| v == 1.0).await;
    standby.stop().await;
    active.stop().await;
}
