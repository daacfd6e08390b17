//! The measured scenarios against a running controller: idle, database
//! changes of three sizes, and restarts.
//!
//! A change round resets the write log, waits a random fraction of the poll
//! interval (so changes land anywhere in the controller's tick), commits an
//! MTU change for the chosen nodes' rows (with `netplan_success = 0`, as the
//! OpenStack side does), and waits until the log shows every changed row
//! written back to 1. A row written 0, or a round that never completes,
//! ends the run: the figures would be meaningless.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use multinic_controller::change::RECENT;

use crate::db::{self, UserStats};
use crate::dbtime::{self, DbTime};
use crate::report::{DbLoad, Restart, Scenario};
use crate::run::{Bench, SIM_PREFIX, wait};
use crate::server::{ControllerOptions, ServerProcess};
use crate::sim::{SimAgent, SimFleet};
use crate::stats::Latency;
use crate::{BenchError, procfs};

/// Idle: the controller's CPU, its database statements and MariaDB's time
/// on them over one window, once the controller has stopped reading rows
/// after the fleet's first convergence (its own writes included).
pub(crate) async fn idle(
    bench: &mut Bench<'_>,
    controller: &ServerProcess,
) -> Result<(DbLoad, f64, DbTime), BenchError> {
    let poll = bench.config.poll_interval;
    until_quiet(controller, poll, bench.config.timeout).await?;
    let window = bench.config.idle_window;
    let before = db::user_stats(&mut bench.root).await?;
    let prepared = dbtime::prepared(&mut bench.root).await?;
    let from = dbtime::clock(&mut bench.root).await?;
    let started = Instant::now();
    let cpu = procfs::cpu_over(controller.pid()?, window).await?;
    let elapsed = started.elapsed();
    let to = dbtime::clock(&mut bench.root).await?;
    let kinds = dbtime::kinds_between(&prepared, &dbtime::prepared(&mut bench.root).await?);
    let after = db::user_stats(&mut bench.root).await?;
    let connections = db::connections(&mut bench.root).await?;
    let statements = dbtime::statements(&mut bench.root, from, to).await?;
    let time = DbTime::of(&statements, kinds, elapsed, poll);
    Ok((load(after.since(&before), elapsed, poll, connections), cpu, time))
}

/// Waits until the controller has read nothing but its probe for longer
/// than it keeps re-reading after a write (`change::RECENT`) plus two
/// polls.
async fn until_quiet(controller: &ServerProcess, poll: Duration, timeout: Duration) -> Result<(), BenchError> {
    let quiet_for = Duration::from_secs(RECENT.unsigned_abs() + 1) + poll * 2;
    let deadline = Instant::now() + timeout;
    let mut reads = controller.metrics().await?.reads;
    let mut since = Instant::now();
    while since.elapsed() < quiet_for {
        if Instant::now() > deadline {
            return Err(BenchError::Timeout { what: "the controller to stop reading rows".into() });
        }
        tokio::time::sleep(poll / 2).await;
        let now = controller.metrics().await?.reads;
        if now != reads {
            (reads, since) = (now, Instant::now());
        }
    }
    Ok(())
}

/// Every change scenario; fills `db_change` from the 100% rounds.
pub(crate) async fn convergence(
    bench: &mut Bench<'_>,
    controller: &ServerProcess,
    db_change: &mut DbLoad,
) -> Result<Vec<Scenario>, BenchError> {
    let n = bench.agents.len();
    let rounds = bench.config.rounds;
    let mut rng = fastrand::Rng::with_seed(7);
    let mut mtu = 1000;
    let mut out = Vec::new();
    for (name, nodes, count) in [
        ("1 node", 1, rounds.one_node),
        ("1% of nodes", (n / 100).max(1), rounds.one_percent),
        ("every node", n, rounds.all),
    ] {
        if count == 0 {
            continue;
        }
        (bench.progress)(&format!("convergence: {name}, {count} rounds"));
        let mut scenario = Scenario { name: name.into(), nodes, rounds: count, ..Scenario::default() };
        let (mut writes, mut reports) = (Vec::new(), Vec::new());
        let pushes_before = controller.metrics().await?.pushes;
        for _ in 0..count {
            mtu += 1;
            let mut chosen: Vec<Arc<SimAgent>> = bench.agents.clone();
            rng.shuffle(&mut chosen);
            chosen.truncate(nodes);
            // A change of many nodes goes in waves: the rollout it started.
            let rollouts_before = match nodes > 1 {
                true => Some(crate::waves::current_id(&bench.pki, controller).await?),
                false => None,
            };
            let round = round(bench, &chosen, mtu, &mut rng).await?;
            if let Some(before) = rollouts_before
                && let Some(waves) =
                    crate::waves::completed(&bench.pki, controller, before, bench.config.timeout).await?
            {
                (bench.progress)(&format!("    {}", waves.summary()));
                scenario.waves.push(waves);
            }
            if nodes == n {
                let d = load(round.stats, round.elapsed, bench.config.poll_interval, round.connections);
                *db_change = DbLoad { connections: d.connections.max(db_change.connections), ..d };
            }
            scenario.rows = round.rows;
            writes.extend(round.writes);
            reports.extend(round.reports);
        }
        scenario.pushes_per_round = (controller.metrics().await?.pushes - pushes_before) as f64 / count as f64;
        scenario.write = Latency::of(&writes);
        scenario.report = Latency::of(&reports);
        out.push(scenario);
    }
    Ok(out)
}

/// One round's samples.
struct Round {
    rows: usize,
    /// The controller's statements from the change until every row was written.
    stats: UserStats,
    writes: Vec<Duration>,
    reports: Vec<Duration>,
    elapsed: Duration,
    connections: usize,
}

async fn round(
    bench: &mut Bench<'_>,
    chosen: &[Arc<SimAgent>],
    mtu: i64,
    rng: &mut fastrand::Rng,
) -> Result<Round, BenchError> {
    let poll = bench.config.poll_interval;
    db::clear_write_log(&mut bench.root).await?;
    tokio::time::sleep(poll.mul_f64(rng.f64())).await;
    let names: Vec<&str> = chosen.iter().map(|a| a.node.as_str()).collect();
    let stats_before = db::user_stats(&mut bench.root).await?;
    let (rows, t0) = db::change_nodes(&bench.pool, &names, mtu).await?;
    let started = Instant::now();
    let deadline = started + bench.config.timeout;
    let mut connections = 0;
    let logged = loop {
        let (ones, zeros) = db::write_counts(&mut bench.root).await?;
        if zeros > 0 {
            return Err(BenchError::Check(format!("{zeros} row(s) were recorded netplan_success = 0")));
        }
        if u64::try_from(ones).unwrap_or(0) >= rows {
            break ones + zeros;
        }
        connections = connections.max(db::connections(&mut bench.root).await?);
        if Instant::now() > deadline {
            return Err(BenchError::Timeout { what: format!("{rows} rows recorded after a change ({ones} so far)") });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let elapsed = started.elapsed();
    let mut stats = db::user_stats(&mut bench.root).await?.since(&stats_before);
    // MariaDB counts the write log's trigger INSERTs as the controller's
    // UPDATE commands: take them out.
    stats.updates -= logged;
    let writes: Vec<Duration> =
        db::writes_of_one(&mut bench.root).await?.iter().map(|(_, at)| db::since_us(t0, *at)).collect();
    let reports =
        chosen.iter().filter_map(|a| a.reported_at()).filter_map(|at| at.duration_since(t0).ok()).collect::<Vec<_>>();
    if reports.len() != chosen.len() {
        return Err(BenchError::Check(format!("{} of {} changed nodes reported", reports.len(), chosen.len())));
    }
    Ok(Round { rows: usize::try_from(rows).unwrap_or(0), stats, writes, reports, elapsed, connections })
}

/// Stops the controller with `signal`, starts the binary again on the same
/// port, and times the fleet back to connected and converged.
pub(crate) async fn restart(
    bench: &mut Bench<'_>,
    controller: ServerProcess,
    options: &ControllerOptions,
    fleet: &SimFleet,
    signal: Signal,
) -> Result<(ServerProcess, Restart), BenchError> {
    let n = bench.agents.len() as u64;
    (bench.progress)(&format!("restart with {signal}"));
    let grpc = controller.grpc;
    let stats_before = db::user_stats(&mut bench.root).await?;
    let started = Instant::now();
    controller.stop(signal, Duration::from_secs(30)).await?;
    let next = ServerProcess::controller(options, grpc)?;
    let timeout = bench.config.timeout;
    wait(timeout, "every agent back on the restarted controller", || async {
        Ok(next.metrics().await.is_ok_and(|m| m.agents_connected >= n) && fleet.connected() >= bench.agents.len())
    })
    .await?;
    let all_connected_s = started.elapsed().as_secs_f64();
    wait(timeout, "every node converged on the restarted controller", || async {
        Ok(next.metrics().await.is_ok_and(|m| m.converged >= n))
    })
    .await?;
    let all_converged_s = started.elapsed().as_secs_f64();
    // Let late writes land before counting them.
    tokio::time::sleep(bench.config.poll_interval * 2).await;
    let metrics = next.metrics().await?;
    let stats = db::user_stats(&mut bench.root).await?.since(&stats_before);
    if db::pending_rows(&bench.pool, SIM_PREFIX).await? != 0 {
        return Err(BenchError::Check("rows lost their netplan_success over a restart".into()));
    }
    let restart = Restart {
        signal: signal.as_str().to_owned(),
        all_connected_s,
        all_converged_s,
        pushes: metrics.pushes,
        rows_written: metrics.rows_recorded,
        db_statements: stats.statements(),
        db_updates: stats.updates,
        window_s: started.elapsed().as_secs_f64(),
    };
    Ok((next, restart))
}

fn load(stats: UserStats, window: Duration, poll: Duration, connections: usize) -> DbLoad {
    let ticks = (window.as_secs_f64() / poll.as_secs_f64()).max(1.0);
    let per = |v: i64| v as f64 / ticks;
    DbLoad {
        window_s: window.as_secs_f64(),
        ticks,
        statements_per_tick: per(stats.statements()),
        selects_per_tick: per(stats.selects),
        updates_per_tick: per(stats.updates),
        rows_read_per_tick: per(stats.rows_read),
        bytes_sent_per_tick: per(stats.bytes_sent),
        connections,
    }
}
