//! The benchmark, small: 200 simulated agents against the real controller
//! binary, a private MariaDB and a few real agent binaries. It asserts what
//! must hold at any scale (every change reaches every row, a restart pushes
//! and writes nothing to agents that are up to date, agents never touch the
//! database), never a timing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use multinic_bench::{BenchConfig, Binaries, Rounds, binaries, run};

const AGENTS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_fleet_converges_and_restarts_without_pushes() {
    if !multinic_testkit::require(multinic_testkit::have("mariadbd"), "mariadbd", "apt-get install -y mariadb-server") {
        return;
    }
    let bench = Path::new(env!("CARGO_BIN_EXE_multinic-bench"));
    let dir = bench.parent().unwrap();
    let found = binaries::in_dir(dir);
    let how = "cargo build --workspace (cargo nextest run --workspace builds them)";
    if !multinic_testkit::require(found.is_ok(), "the controller and agent binaries beside the benchmark", how) {
        return;
    }
    let (controller, agent) = found.unwrap();
    let mut config = BenchConfig::new(AGENTS, Binaries { controller, agent, bench: Some(bench.to_owned()) });
    config.poll_interval = Duration::from_millis(500);
    config.rounds = Rounds { one_node: 2, one_percent: 1, all: 1 };
    config.real_agents = 2;
    config.idle_window = Duration::from_secs(1);
    config.settle = Duration::from_millis(500);
    config.timeout = Duration::from_secs(60);
    // No periodic full read falls in the idle window.
    config.full_read_interval = Some(Duration::from_secs(600));
    config.history_rows = 3000;

    let report = run::run(&config, &|line| eprintln!("[bench] {line}")).await.unwrap();

    assert_eq!(report.setup.rows, AGENTS * config.interfaces_per_node);
    assert_eq!(report.setup.history_rows, 3000);
    assert_eq!(report.initial.pushes, AGENTS as u64, "one push per node to converge a fresh fleet");
    let rounds = [config.rounds.one_node, config.rounds.one_percent, config.rounds.all];
    assert_eq!(report.convergence.len(), 3);
    for (scenario, rounds) in report.convergence.iter().zip(rounds) {
        assert_eq!(scenario.write.n, scenario.rows * rounds, "every changed row recorded: {scenario:?}");
        assert_eq!(scenario.report.n, scenario.nodes * rounds, "every changed node reported: {scenario:?}");
        assert_eq!(scenario.rows, scenario.nodes * config.interfaces_per_node);
        assert_eq!(scenario.pushes_per_round, scenario.nodes as f64, "one push per changed node: {scenario:?}");
    }
    assert_eq!(report.convergence[2].nodes, AGENTS);
    // Every node changed at once: released in waves (the controller's
    // defaults: more than 5 nodes; a canary, then doubling up to 25%).
    let waves = &report.convergence[2].waves;
    assert_eq!(waves.len(), config.rounds.all, "{waves:?}");
    assert_eq!(waves[0].sizes, [1, 2, 4, 8, 16, 32, 50, 50, 37], "{waves:?}");
    assert!(report.convergence[0].waves.is_empty(), "one node goes at once");
    assert!(report.table().contains("in waves (last round)"));
    assert_eq!(report.restarts.len(), 2);
    for restart in &report.restarts {
        assert_eq!(restart.pushes, 0, "agents already up to date get nothing: {restart:?}");
        assert_eq!(restart.rows_written, 0, "{restart:?}");
        assert_eq!(restart.db_updates, 0, "{restart:?}");
    }
    // MariaDB's accounting saw the idle controller run only its lock check
    // and its probe, a little of each, whatever the table's history.
    let idle = &report.db_time_idle;
    assert!(idle.tick.n > 0, "{idle:?}");
    assert_eq!(idle.reading_ticks.n, 0, "{idle:?}");
    let kinds: Vec<&str> = idle.kinds.iter().map(|k| k.kind.as_str()).collect();
    assert_eq!(kinds, ["lock", "probe"], "{idle:?}");
    assert!(report.db_time_changes.iter().any(|k| k.kind == "changed"), "{:?}", report.db_time_changes);
    let real = report.real_agents.as_ref().unwrap();
    assert_eq!(real.count, 2);
    assert_eq!(real.db_connections, 0, "agents never connect to the database");
    assert!(real.db_settings.is_empty(), "{:?}", real.db_settings);
    assert!(report.controller.rss_with_agents_mb > 0.0 && report.baseline.is_some());
    assert!(report.table().contains("convergence every node"));
    assert!(serde_json::to_value(&report).unwrap()["restarts"][0]["pushes"] == 0);
}
