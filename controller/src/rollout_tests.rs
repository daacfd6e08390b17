use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;

use super::*;

fn names(n: usize) -> Vec<(NodeName, SystemTime)> {
    (0..n).map(|i| (format!("node-{i:02}").parse().unwrap(), SystemTime::UNIX_EPOCH)).collect()
}

fn name(i: usize) -> NodeName {
    format!("node-{i:02}").parse().unwrap()
}

fn config(threshold: usize, max: MaxUnavailable) -> RolloutConfig {
    RolloutConfig { threshold, max_unavailable: max }
}

fn at(s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(s)
}

fn released_names(r: &Released) -> Vec<String> {
    r.nodes.iter().map(|(n, _)| n.to_string()).collect()
}

#[test]
fn max_unavailable_parses_counts_and_percentages_and_refuses_the_rest() {
    assert_eq!("25%".parse::<MaxUnavailable>(), Ok(MaxUnavailable::Percent(25)));
    assert_eq!("7".parse::<MaxUnavailable>(), Ok(MaxUnavailable::Count(7)));
    for bad in ["0", "0%", "101%", "-1", "ten", "", "25 %%"] {
        let err = bad.parse::<MaxUnavailable>().unwrap_err();
        assert!(err.contains(&format!("{:?}", bad.trim())), "{bad}: {err}");
    }
    assert_eq!(MaxUnavailable::Percent(25).resolve(30), 8, "rounded up");
    assert_eq!(MaxUnavailable::Percent(1).resolve(3), 1, "at least one");
    assert_eq!(MaxUnavailable::Count(10).resolve(3), 10);
    assert!(!RolloutConfig::off().is_rollout(1000));
    assert!(!RolloutConfig::default().is_rollout(5) && RolloutConfig::default().is_rollout(6));
}

#[test]
fn waves_start_with_a_canary_and_double_up_to_the_cap() {
    assert_eq!(wave_sizes(30, 8), [1, 2, 4, 8, 8, 7]);
    assert_eq!(wave_sizes(6, 100), [1, 2, 3]);
    assert_eq!(wave_sizes(3, 1), [1, 1, 1]);
    assert!(wave_sizes(0, 5).is_empty());
}

#[test]
fn a_rollout_releases_a_wave_only_once_the_previous_one_reported() {
    let mut r = Rollout::plan(1, names(30), &config(5, MaxUnavailable::Percent(25)), at(0));
    assert_eq!(r.max_unavailable, 8);
    let canary = r.start(at(1));
    assert_eq!(released_names(&canary), ["node-00"]);
    assert_eq!(canary.wave, Some(0));
    assert_eq!(canary.nodes[0].1, Duration::from_secs(1), "waited from seen to released");
    assert_eq!(r.counts(), NodeCounts { pending: 29, released: 1, done: 0, failed: 0 });
    let wave1 = r.report(&name(0), Outcome::Done, at(2));
    assert_eq!(released_names(&wave1), ["node-01", "node-02"]);
    assert!(r.report(&name(1), Outcome::Done, at(3)).is_empty(), "node-02 has not reported");
    assert!(r.report(&name(1), Outcome::Done, at(3)).is_empty(), "a second report changes nothing");
    assert!(r.report(&name(9), Outcome::Done, at(3)).is_empty(), "a pending node's report is no report");
    let wave2 = r.report(&name(2), Outcome::Done, at(4));
    assert_eq!(wave2.nodes.len(), 4);
    let mut t = 5;
    let mut wave = wave2;
    while !wave.is_empty() {
        let nodes: Vec<NodeName> = wave.nodes.iter().map(|(n, _)| n.clone()).collect();
        wave = Released::default();
        for n in nodes {
            let next = r.report(&n, Outcome::Done, at(t));
            if !next.is_empty() {
                wave = next;
            }
        }
        t += 1;
    }
    assert_eq!(r.state, RolloutState::Completed);
    assert_eq!(r.counts().done, 30);
    let sizes: Vec<usize> = r.waves().map(|w| w.len()).collect();
    assert_eq!(sizes, [1, 2, 4, 8, 8, 7]);
    assert!(r.waves().all(|w| w.state() == NodeState::Done));
}

#[test]
fn a_failed_canary_stops_it_until_resumed_and_abort_leaves_the_rest() {
    let mut r = Rollout::plan(4, names(10), &config(5, MaxUnavailable::Count(3)), at(0));
    r.start(at(0));
    let none = r.report(&name(0), Outcome::Failed("multinic0 failed: MTU_REJECTED: mtu 9000 refused".into()), at(1));
    assert!(none.is_empty());
    assert_eq!(r.state, RolloutState::Stopped);
    assert_eq!(r.reason.as_deref(), Some("node-00 multinic0 failed: MTU_REJECTED: mtu 9000 refused"));
    let hold = r.hold_reason(&name(5));
    assert_eq!(
        hold,
        "rollout 4: wave 3 of 5 not released (stopped: node-00 multinic0 failed: MTU_REJECTED: mtu 9000 refused)"
    );
    assert_eq!(r.waves().next().unwrap().state(), NodeState::Failed);

    assert_eq!(r.resume(3, at(2)), Err(RolloutError::OtherRollout { given: 3, current: 4 }));
    let wave1 = r.resume(4, at(2)).unwrap();
    assert_eq!(released_names(&wave1), ["node-01", "node-02"], "the failed canary is left as it is");
    assert_eq!(r.resume(4, at(2)), Err(RolloutError::NotStopped { id: 4, state: "running" }));

    let pending = r.abort(4, at(3)).unwrap();
    assert_eq!(pending.len(), 7);
    assert_eq!(r.state, RolloutState::Aborted);
    assert!(r.report(&name(1), Outcome::Done, at(4)).is_empty(), "nothing is released after an abort");
    assert_eq!(r.counts().pending, 7);
    assert_eq!(r.abort(4, at(5)), Err(RolloutError::Ended { id: 4, state: "aborted" }));
    assert_eq!(r.resume(4, at(5)), Err(RolloutError::NotStopped { id: 4, state: "aborted" }));
}

#[test]
fn a_failure_in_a_wave_stops_it_while_the_wave_finishes_reporting() {
    let mut r = Rollout::plan(1, names(8), &config(5, MaxUnavailable::Count(4)), at(0));
    r.start(at(0));
    r.report(&name(0), Outcome::Done, at(1));
    assert!(r.report(&name(1), Outcome::Failed("multinic1 refused".into()), at(2)).is_empty());
    assert!(r.report(&name(2), Outcome::Done, at(3)).is_empty(), "stopped: the wave's last report releases nothing");
    assert_eq!(r.node(&name(2)).unwrap().state, NodeState::Done);
    let next = r.resume(1, at(4)).unwrap();
    assert_eq!(next.nodes.len(), 4, "the wave finished (its failed node stays failed): the next goes");
    // A failed node reporting success later counts as done.
    r.report(&name(1), Outcome::Done, at(5));
    assert_eq!(r.node(&name(1)).unwrap().state, NodeState::Done);
}

#[test]
fn supersede_hands_over_the_pending_nodes_and_a_rebuilt_rollout_waits_for_resume() {
    let mut r = Rollout::plan(1, names(10), &config(5, MaxUnavailable::Percent(50)), at(0));
    r.start(at(0));
    let pending = r.supersede(2, at(1));
    assert_eq!(pending.len(), 9);
    assert_eq!(r.state, RolloutState::Superseded);
    assert!(r.supersede(3, at(1)).is_empty(), "only once");

    let failed = vec![(name(0), "multinic0 failed: boom".to_owned())];
    let pending: Vec<_> = names(10).into_iter().skip(1).collect();
    let mut rebuilt =
        Rollout::rebuilt(7, pending, failed, &config(5, MaxUnavailable::Count(4)), "restarted".into(), at(2));
    assert_eq!(rebuilt.state, RolloutState::Stopped);
    assert_eq!(rebuilt.counts(), NodeCounts { pending: 9, released: 0, done: 0, failed: 1 });
    assert!(rebuilt.report(&name(1), Outcome::Done, at(3)).is_empty(), "nothing is released before resume");
    let first = rebuilt.resume(7, at(3)).unwrap();
    assert_eq!(released_names(&first), ["node-01"], "a canary first again");
    let sizes: Vec<usize> = rebuilt.waves().map(|w| w.len()).collect();
    assert_eq!(sizes, [1, 1, 2, 4, 2]);
}

#[test]
fn a_node_that_leaves_the_fleet_counts_as_done() {
    let mut r = Rollout::plan(1, names(6), &config(5, MaxUnavailable::Count(2)), at(0));
    r.start(at(0));
    let next = r.forget(&name(0), at(1));
    assert_eq!(released_names(&next), ["node-01", "node-02"]);
    assert!(r.forget(&name(5), at(1)).is_empty(), "a pending node is done, never released");
    r.report(&name(1), Outcome::Done, at(2));
    let third = r.report(&name(2), Outcome::Done, at(2));
    assert_eq!(released_names(&third), ["node-03", "node-04"]);
    r.report(&name(3), Outcome::Done, at(3));
    r.report(&name(4), Outcome::Done, at(3));
    assert_eq!(r.state, RolloutState::Completed, "node-05's wave had nothing left to release");
}

proptest! {
    /// Whatever the order and outcome of reports, resumes, nodes leaving
    /// and the sizes: every node is released exactly once (unless it left
    /// before), no wave is larger than max-unavailable, nothing is released
    /// while an earlier released node has not reported or the rollout is
    /// stopped, and it always completes.
    #[test]
    fn every_node_is_released_once_in_bounded_waves(
        nodes in 1usize..80,
        max in 1usize..20,
        fail_every in prop::option::of(2usize..15),
        forget_every in prop::option::of(2u64..10),
        seed in any::<u64>(),
    ) {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut r = Rollout::plan(1, names(nodes), &config(0, MaxUnavailable::Count(max)), at(0));
        prop_assert!(r.waves().all(|w| w.len() <= max && !w.is_empty()));
        prop_assert_eq!(r.waves().next().map(|w| w.len()), Some(1));
        let mut released: BTreeSet<NodeName> = BTreeSet::new();
        let mut outstanding: Vec<NodeName> = Vec::new();
        let mut forgotten: BTreeSet<NodeName> = BTreeSet::new();
        let take = |batch: Released, outstanding: &mut Vec<NodeName>, released: &mut BTreeSet<NodeName>| {
            for (n, _) in batch.nodes {
                assert!(released.insert(n.clone()), "{n} released twice");
                outstanding.push(n);
            }
        };
        let first = r.start(at(0));
        take(first, &mut outstanding, &mut released);
        let mut reports = 0usize;
        for step in 0..10_000u64 {
            if r.state == RolloutState::Completed {
                break;
            }
            if r.state == RolloutState::Stopped {
                let before = outstanding.len();
                // Stopped: even the wave's last reports release nothing.
                if let Some(n) = outstanding.pop() {
                    prop_assert!(r.report(&n, Outcome::Done, at(step)).is_empty());
                }
                prop_assert!(outstanding.len() < before || before == 0);
                let resumed = r.resume(1, at(step)).unwrap();
                take(resumed, &mut outstanding, &mut released);
                continue;
            }
            // Now and then a node leaves the fleet: done, or never released.
            if forget_every.is_some_and(|k| step.is_multiple_of(k)) {
                let gone = name(rng.usize(..nodes));
                outstanding.retain(|n| *n != gone);
                if !released.contains(&gone) && r.node(&gone).is_some_and(|n| n.state == NodeState::Pending) {
                    forgotten.insert(gone.clone());
                }
                let next = r.forget(&gone, at(step));
                if !next.is_empty() {
                    prop_assert!(outstanding.is_empty(), "a wave released while one of the previous was unreported");
                }
                take(next, &mut outstanding, &mut released);
                continue;
            }
            prop_assert!(!outstanding.is_empty(), "running with nothing outstanding: stuck");
            let n = outstanding.swap_remove(rng.usize(..outstanding.len()));
            reports += 1;
            let fail = fail_every.is_some_and(|k| reports.is_multiple_of(k));
            let outcome = if fail { Outcome::Failed("x failed".into()) } else { Outcome::Done };
            let next = r.report(&n, outcome, at(step));
            if !next.is_empty() {
                prop_assert!(outstanding.is_empty(), "a wave released while one of the previous was unreported");
                prop_assert!(next.nodes.len() <= max);
            }
            if fail {
                prop_assert_eq!(r.state, RolloutState::Stopped);
                prop_assert!(next.is_empty());
            }
            take(next, &mut outstanding, &mut released);
        }
        prop_assert_eq!(r.state, RolloutState::Completed);
        prop_assert!(released.is_disjoint(&forgotten), "a node that left was released");
        prop_assert_eq!(released.len() + forgotten.len(), nodes, "every node released, or gone before");
        let c = r.counts();
        prop_assert_eq!(c.pending + c.released, 0);
    }
}
