//! Rollouts end to end: the real controller binary with mTLS, a private
//! MariaDB, and simulated agents speaking the wire protocol (each with its
//! own node certificate) that record every push they receive and every
//! report they send, with when. The operator's RPCs go through the
//! generated `FleetService` client with an operator certificate.
//!
//! A change of 30 nodes goes out in waves, a failed canary stops it (the
//! other 29 get nothing and their rows read 0), resume finishes it, abort
//! leaves the rest until their rows change again, a one-node change
//! elsewhere goes at once while it is stopped, few changes go at once, and
//! a controller killed mid-rollout comes back with it stopped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use multinic_bench::db;
use multinic_bench::identities::make_agents;
use multinic_bench::server::{ControllerOptions, ServerProcess, free_addr};
use multinic_bench::sim::{Answer, SimAgent, SimFleet};
use multinic_proto::NodeName;
use multinic_proto::v1::fleet_service_client::FleetServiceClient;
use multinic_proto::v1::{self, RolloutNodeState, RolloutState};
use multinic_testkit::certs::TestPki;
use multinic_testkit::eventually;
use multinic_testkit::mariadb::MariaDb;
use multinic_testkit::scrape::Metrics;
use sqlx::MySqlPool;
use tempfile::TempDir;
use tonic::transport::{Channel, Endpoint};

const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);

/// MariaDB, the controller, and one simulated agent per node `node-00…`.
struct Rig {
    _db: MariaDb,
    pool: MySqlPool,
    pki: TestPki,
    _dir: TempDir,
    options: ControllerOptions,
    controller: Option<ServerProcess>,
    agents: Vec<Arc<SimAgent>>,
    fleet: Option<SimFleet>,
}

fn name(i: usize) -> String {
    format!("node-{i:02}")
}

fn controller_binary() -> Option<PathBuf> {
    if !multinic_testkit::require(multinic_testkit::have("mariadbd"), "mariadbd", "apt-get install -y mariadb-server") {
        return None;
    }
    let path = Path::new(env!("CARGO_BIN_EXE_multinic-bench")).with_file_name("multinic-controller");
    let how = "cargo build -p multinic-controller (cargo nextest run --workspace builds it)";
    multinic_testkit::require(path.is_file(), "the controller binary beside the benchmark", how).then_some(path)
}

impl Rig {
    /// `nodes` nodes with one row each, converged.
    async fn start(nodes: usize) -> Option<Self> {
        let binary = controller_binary()?;
        let db = MariaDb::start().await?;
        let pool = db.pool().await;
        let named: Vec<(usize, String)> = (0..nodes).map(|i| (i, name(i))).collect();
        db::seed(&pool, &named, 1).await.unwrap();
        let pki = TestPki::new();
        let names: Vec<NodeName> = named.iter().map(|(_, n)| n.parse().unwrap()).collect();
        let agents = make_agents(pki.ca(), pki.trust_domain(), &names).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let options = ControllerOptions {
            binary,
            database_url: db.url(),
            cert: pki.controller().cert,
            key: pki.controller().key,
            ca: pki.ca_file(),
            trust_domain: pki.trust_domain().to_string(),
            poll_interval: POLL,
            full_read_interval: None,
            log: dir.path().join("controller.log"),
            extra: ["--rollout-threshold", "5", "--max-unavailable", "25%", "--removal-warmup", "3s"]
                .map(String::from)
                .to_vec(),
        };
        let controller = ServerProcess::controller(&options, free_addr().unwrap()).unwrap();
        controller.wait_ready(WAIT).await.unwrap();
        let fleet = SimFleet::start(&agents, &controller.url(), 64).unwrap();
        let rig =
            Self { _db: db, pool, pki, _dir: dir, options, controller: Some(controller), agents, fleet: Some(fleet) };
        rig.wait_rows_applied("every row applied at start", 0..nodes).await;
        Some(rig)
    }

    fn controller(&self) -> &ServerProcess {
        self.controller.as_ref().unwrap()
    }

    async fn ops(&self) -> FleetServiceClient<Channel> {
        let tls = self.pki.client_tls(&self.pki.operator("ops"));
        let endpoint = Endpoint::from_shared(self.controller().url()).unwrap();
        FleetServiceClient::new(tls.connect(&endpoint).await.unwrap())
    }

    async fn rollout(&self) -> v1::RolloutStatus {
        self.ops().await.get_rollout(v1::GetRolloutRequest {}).await.unwrap().into_inner()
    }

    async fn wait_rollout(&self, what: &str, state: RolloutState) -> v1::RolloutStatus {
        eventually(WAIT, what, || async {
            let r = self.rollout().await;
            (r.present && r.state() == state).then_some(r)
        })
        .await
    }

    async fn sql(&self, statement: &str) {
        sqlx::query(statement).execute(&self.pool).await.unwrap();
    }

    async fn success_of(&self, i: usize) -> i64 {
        sqlx::query_scalar("SELECT netplan_success FROM multi_interface WHERE attached_node_name = ?")
            .bind(name(i))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    async fn wait_rows_applied(&self, what: &str, nodes: impl Iterator<Item = usize> + Clone) {
        eventually(WAIT, what, || {
            let nodes = nodes.clone();
            async move {
                for i in nodes {
                    if self.success_of(i).await != 1 {
                        return None;
                    }
                }
                Some(())
            }
        })
        .await;
    }

    /// Pushes node `i`'s agent received since `since`.
    fn pushes_since(&self, i: usize, since: Instant) -> Vec<Instant> {
        self.agents[i].events().into_iter().filter(|e| e.push && e.at >= since).map(|e| e.at).collect()
    }

    /// When node `i`'s agent first received a push since `since`, and when
    /// it answered it.
    fn first_push_and_report(&self, i: usize, since: Instant) -> (Instant, Option<Instant>) {
        let events = self.agents[i].events();
        let push = events.iter().find(|e| e.push && e.at >= since).expect("a push");
        let report = events.iter().find(|e| !e.push && e.at >= push.at && e.digest == push.digest);
        (push.at, report.map(|r| r.at))
    }
}

/// The node names of each wave, in order.
fn wave_names(r: &v1::RolloutStatus) -> Vec<Vec<usize>> {
    r.waves.iter().map(|w| w.nodes.iter().map(|n| n.name[5..].parse().unwrap()).collect()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_wide_change_goes_in_waves_stops_at_a_failed_canary_and_resumes() {
    // node-30 is outside the change; node-31..33 change few at once.
    let Some(mut rig) = Rig::start(34).await else { return };
    let mut ops = rig.ops().await;

    // Three nodes changed: at or under the threshold, pushed at once.
    let small = Instant::now();
    rig.sql("UPDATE multi_interface SET mtu = 1400 WHERE attached_node_name IN ('node-31', 'node-32', 'node-33')")
        .await;
    eventually(WAIT, "the three changed nodes pushed", || async {
        (31..34).all(|i| rig.pushes_since(i, small).len() == 1).then_some(())
    })
    .await;
    rig.wait_rows_applied("the three changed rows applied", 31..34).await;
    assert!(!rig.rollout().await.present, "few changes start no rollout");

    // The canary will fail; the 30 nodes' MTU changes in one statement.
    rig.agents[0].set_answer(Answer::Fail);
    let changed = Instant::now();
    rig.sql("UPDATE multi_interface SET mtu = 9000 WHERE attached_node_name < 'node-30'").await;
    let stopped = rig.wait_rollout("the rollout stops at its failed canary", RolloutState::Stopped).await;
    assert_eq!((stopped.id, stopped.nodes_total, stopped.nodes_pending, stopped.nodes_failed), (1, 30, 29, 1));
    assert_eq!((stopped.threshold, stopped.max_unavailable), (5, 8));
    assert!(
        stopped.reason.starts_with("node-00 multinic0 failed: APPLY_FAILED: simulated"),
        "the reason names node, interface and error: {}",
        stopped.reason
    );
    let canary = &stopped.waves[0];
    assert_eq!((canary.nodes[0].name.as_str(), canary.nodes[0].state()), ("node-00", RolloutNodeState::Failed));
    assert_eq!(canary.state(), RolloutNodeState::Failed);
    assert!(stopped.waves[1..].iter().all(|w| w.state() == RolloutNodeState::Pending && w.released_unix_ms == 0));
    // What the MultinicRolloutStopped alert reads.
    let (_, body) = multinic_testkit::http_get(rig.controller().http.unwrap(), "/metrics").await;
    let metrics = Metrics::parse(&body);
    assert_eq!(metrics.get("multinic_controller_rollout_state", &[("state", "stopped")]), 1.0);
    assert_eq!(metrics.get("multinic_controller_rollout_state", &[("state", "running")]), 0.0);

    // The other 29 got nothing, and their changed rows read 0 (the
    // controller marks changed rows 0 until their node confirms them).
    for i in 1..30 {
        eventually(WAIT, "a held node's changed row reads 0", || async {
            (rig.success_of(i).await == 0).then_some(())
        })
        .await;
    }
    tokio::time::sleep(POLL * 5).await;
    assert!((1..30).all(|i| rig.pushes_since(i, changed).is_empty()), "held nodes were pushed something");
    let diff = ops.diff(v1::DiffRequest { node: name(5), ..Default::default() }).await.unwrap().into_inner();
    let node = &diff.nodes[0];
    assert!(
        node.rollout_hold.starts_with("rollout 1: wave 3 of 6 not released (stopped: node-00 multinic0 failed"),
        "{}",
        node.rollout_hold
    );
    assert_eq!(node.interfaces[0].action(), v1::DiffAction::Held);
    assert_eq!(node.interfaces[0].reason, node.rollout_hold);

    // A one-node change elsewhere goes at once while it is stopped.
    let other = Instant::now();
    rig.sql("UPDATE multi_interface SET mtu = 1450 WHERE attached_node_name = 'node-30'").await;
    eventually(WAIT, "node-30 pushed during the stop", || async {
        (rig.pushes_since(30, other).len() == 1).then_some(())
    })
    .await;
    assert_eq!(rig.rollout().await.state(), RolloutState::Stopped);

    // Resume: a wrong id is refused; the right one completes it.
    let err = ops.resume_rollout(v1::RolloutActionRequest { id: 7 }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("rollout 7 is not the current rollout"), "{}", err.message());
    let err = ops.abort_rollout(v1::RolloutActionRequest { id: 2 }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    rig.agents[0].set_answer(Answer::Apply);
    let resumed = Instant::now();
    let status = ops.resume_rollout(v1::RolloutActionRequest { id: 1 }).await.unwrap().into_inner();
    assert_eq!(status.state(), RolloutState::Running);
    let done = rig.wait_rollout("the resumed rollout completes", RolloutState::Completed).await;
    assert_eq!((done.nodes_done, done.nodes_failed, done.nodes_pending), (29, 1, 0));
    let waves = wave_names(&done);
    let sizes: Vec<usize> = waves.iter().map(Vec::len).collect();
    assert_eq!(sizes, [1, 2, 4, 8, 8, 7], "a canary, then doubling up to 25% of 30 (8)");
    assert!(done.waves.iter().all(|w| w.nodes_omitted == 0 && w.nodes_total as usize == w.nodes.len()));

    // Order: no node of a wave was pushed before every node of the wave
    // before it had reported (wave 1 went at the resume).
    let mut previous_reports: Option<Instant> = None;
    for (number, wave) in waves.iter().enumerate().skip(1) {
        let mut last_report = resumed;
        for &i in wave {
            let (push, report) = rig.first_push_and_report(i, changed);
            assert!(push >= resumed, "wave {number}: node-{i:02} pushed before the resume");
            if let Some(before) = previous_reports {
                assert!(push >= before, "wave {number}: node-{i:02} pushed before the previous wave reported");
            }
            last_report = last_report.max(report.expect("every released node reported"));
        }
        previous_reports = Some(last_report);
    }
    assert!((1..30).all(|i| rig.pushes_since(i, changed).len() == 1), "each node pushed once");
    rig.wait_rows_applied("the released rows applied", 1..30).await;

    let (_, body) = multinic_testkit::http_get(rig.controller().http.unwrap(), "/metrics").await;
    let metrics = Metrics::parse(&body);
    for (event, want) in [("started", 1.0), ("stopped", 1.0), ("resumed", 1.0), ("completed", 1.0)] {
        assert_eq!(metrics.get("multinic_controller_rollouts_total", &[("event", event)]), want, "{event}");
    }
    assert_eq!(metrics.get("multinic_controller_rollout_waves_released_total", &[]), 6.0);
    assert_eq!(metrics.get("multinic_controller_rollout_wait_seconds_count", &[]), 30.0);
    assert_eq!(metrics.get("multinic_controller_rollout_nodes", &[("state", "done")]), 29.0);
    assert_eq!(metrics.get("multinic_controller_rollout_state", &[("state", "completed")]), 1.0);
    assert_eq!(metrics.get("multinic_controller_rollout_state", &[("state", "stopped")]), 0.0);
    rig.fleet.take().unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_leaves_the_rest_until_their_rows_change_again() {
    let Some(rig) = Rig::start(30).await else { return };
    let mut ops = rig.ops().await;
    rig.agents[0].set_answer(Answer::Fail);
    let changed = Instant::now();
    rig.sql("UPDATE multi_interface SET mtu = 9000").await;
    let stopped = rig.wait_rollout("the rollout stops", RolloutState::Stopped).await;
    let aborted = ops.abort_rollout(v1::RolloutActionRequest { id: stopped.id }).await.unwrap().into_inner();
    assert_eq!(aborted.state(), RolloutState::Aborted);
    assert!(aborted.reason.contains("29 nodes not released keep their previous set"), "{}", aborted.reason);
    let err = ops.resume_rollout(v1::RolloutActionRequest { id: stopped.id }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("is aborted, not stopped"), "{}", err.message());

    // Polls and full reads go by: the 29 keep what they had.
    tokio::time::sleep(POLL * 10).await;
    assert!((1..30).all(|i| rig.pushes_since(i, changed).is_empty()));
    assert_eq!(rig.rollout().await.state(), RolloutState::Aborted, "kept for status until the next one");
    let diff = ops.diff(v1::DiffRequest { node: name(9), ..Default::default() }).await.unwrap().into_inner();
    assert!(diff.nodes[0].rollout_hold.contains("rollout 1 was aborted"), "{}", diff.nodes[0].rollout_hold);

    // Their rows change again: a new rollout, which completes.
    rig.agents[0].set_answer(Answer::Apply);
    let again = Instant::now();
    rig.sql("UPDATE multi_interface SET mtu = 7000").await;
    let second = rig.wait_rollout("a new rollout completes", RolloutState::Completed).await;
    assert_eq!((second.id, second.nodes_total), (2, 30));
    assert!((1..30).all(|i| rig.pushes_since(i, changed).len() == 1), "the 29 never got the aborted change");
    assert!((0..30).all(|i| rig.pushes_since(i, again).len() == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_killed_mid_rollout_comes_back_with_it_stopped() {
    let Some(mut rig) = Rig::start(30).await else { return };
    // node-03 (wave 2) never answers: the rollout waits for it.
    rig.agents[3].set_answer(Answer::Silent);
    rig.sql("UPDATE multi_interface SET mtu = 9000").await;
    eventually(WAIT, "waves 0-2 released, node-03 outstanding", || async {
        let r = rig.rollout().await;
        (r.state() == RolloutState::Running && r.nodes_done == 6 && r.nodes_released == 1).then_some(())
    })
    .await;

    let controller = rig.controller.take().unwrap();
    let grpc = controller.grpc;
    controller.stop(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5)).await.unwrap();
    rig.agents[3].set_answer(Answer::Apply);
    let restarted = Instant::now();
    let controller = ServerProcess::controller(&rig.options, grpc).unwrap();
    controller.wait_ready(WAIT).await.unwrap();
    rig.controller = Some(controller);

    let rebuilt = rig.wait_rollout("the rollout is rebuilt stopped", RolloutState::Stopped).await;
    assert_eq!(
        rebuilt.reason,
        "controller restarted during a rollout: 24 nodes not yet released; resume to continue, abort to leave them"
    );
    assert_eq!((rebuilt.nodes_pending, rebuilt.nodes_total), (24, 24), "node-03 and waves 3-5");
    tokio::time::sleep(POLL * 10).await;
    let held = [3].into_iter().chain(7..30);
    assert!(held.clone().all(|i| rig.pushes_since(i, restarted).is_empty()), "nothing released by itself");
    assert!((0..30).all(|i| rig.pushes_since(i, restarted).is_empty()), "done nodes are not pushed again");

    let mut ops = rig.ops().await;
    ops.resume_rollout(v1::RolloutActionRequest { id: rebuilt.id }).await.unwrap();
    rig.wait_rollout("the rebuilt rollout completes", RolloutState::Completed).await;
    assert!(held.clone().all(|i| rig.pushes_since(i, restarted).len() == 1));
    assert!((0..3).chain(4..7).all(|i| rig.pushes_since(i, restarted).is_empty()), "done nodes never re-pushed");
    rig.wait_rows_applied("every row applied", 0..30).await;
    rig.fleet.take().unwrap().stop().await;
}
