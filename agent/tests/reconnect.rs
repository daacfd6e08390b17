//! Reconnect backoff with the real agent binary against a scripted
//! controller that restarts: a stream that was established resets the
//! backoff, so repeated restarts never stretch the agent's retry delay,
//! while a controller that refuses streams keeps the delay growing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Node, WAIT};
use multinic_testkit::eventually;

/// A `Duration`'s `Debug` text ("212.3ms", "1.5s", "950µs") in seconds.
fn seconds(debug: &str) -> f64 {
    let split = debug.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(debug.len());
    let (number, unit) = debug.split_at(split);
    let number: f64 = number.parse().unwrap_or_else(|e| panic!("{debug}: {e}"));
    match unit {
        "s" => number,
        "ms" => number / 1e3,
        "µs" => number / 1e6,
        "ns" => number / 1e9,
        other => panic!("unit {other:?} in {debug}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_restarts_do_not_stretch_the_reconnect_delay() {
    let Some(mut node) = Node::new() else { return };
    let options = node.options("none", "netplan");
    node.start_with(&options);
    node.controller.hello(1, WAIT).await;

    const RESTARTS: usize = 3;
    for restart in 1..=RESTARTS {
        // A stream that lived past ESTABLISHED_AFTER (5 s), then the
        // controller dies and takes 1.5 s to come back (refusing streams).
        tokio::time::sleep(Duration::from_secs(6)).await;
        node.controller.end_streams(true).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        node.controller.accept_streams();
        let what = format!("reconnected after restart {restart}; agent log:\n{}", node.agent().log_text());
        eventually(Duration::from_secs(40), &what, || async { (node.controller.hellos() > restart).then_some(()) })
            .await;
    }

    let losses: Vec<(String, f64)> = node
        .agent()
        .events("stream to the controller lost")
        .iter()
        .map(|e| {
            let reason = e["reason"].as_str().unwrap_or_default().to_owned();
            (reason, seconds(e["retry_in"].as_str().unwrap_or_else(|| panic!("{e}"))))
        })
        .collect();
    let log = node.agent().log_text();
    let after_restart: Vec<f64> =
        losses.iter().filter(|(r, _)| r.contains("went away")).map(|(_, delay)| *delay).collect();
    let refused: Vec<f64> = losses.iter().filter(|(r, _)| r.contains("refusing")).map(|(_, delay)| *delay).collect();
    eprintln!("first retry after each restart: {after_restart:?} s; retries while refused: {refused:?} s");
    assert_eq!(after_restart.len(), RESTARTS, "{losses:?}\n{log}");
    // Before the fix only a stream that lived 30 s reset the backoff: the
    // first retry after the second restart was already 1-2 s, then 2-4 s.
    for delay in &after_restart {
        assert!(*delay < 0.25, "an established stream resets the backoff (base 250 ms): {after_restart:?}\n{log}");
    }
    // A refused stream is not established: the delay keeps growing (the
    // first refusal after a restart already waits 250-500 ms).
    assert!(!refused.is_empty(), "{losses:?}");
    for delay in &refused {
        assert!(*delay >= 0.25, "refused streams do not reset the backoff: {refused:?}\n{log}");
    }
}
