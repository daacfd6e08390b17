//! What one `/metrics` scrape costs the controller when many nodes are not
//! converged (each one is a series of `multinic_controller_node_not_converged`):
//! the fleet's gauges and the alerting metrics refreshed, then the text
//! encoded, as the HTTP handler does.
//!
//! ```sh
//! cargo run --release -p multinic-controller --example scrape_cost -- 10000
//! ```
//!
//! Prints, for the fleet size given (default 10,000 nodes, one row each),
//! the time and size of a scrape with no node listed (every node converged
//! or a standby) and with every node not converged (the worst case: all
//! agents away, e.g. right after a controller start; at most
//! `MAX_LISTED_NODES` of them are listed).

use std::time::{Duration, Instant};

use multinic_controller::alert_metrics::{MAX_LISTED_NODES, WatchedCertificates};
use multinic_controller::fleet::Fleet;
use multinic_controller::metrics::Metrics;
use multinic_controller::row_copy::RowCopy;
use multinic_controller::store::{ActiveRows, InterfaceRow};

const ROUNDS: u32 = 20;

fn main() {
    let nodes: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(10_000);
    let rows = (0..nodes)
        .map(|i| InterfaceRow {
            id: i64::try_from(i).unwrap_or(i64::MAX),
            macaddress: format!("fa:16:3e:{:02x}:{:02x}:{:02x}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff),
            attached_node_name: Some(format!("node-{i:05}")),
            address: None,
            cidr: None,
            subnet_cidr: None,
            mtu: Some(1500),
            netplan_success: 0,
        })
        .collect();
    let fleet = Fleet::new();
    fleet.publisher().publish(RowCopy::from_snapshot(ActiveRows { rows }).desired_fleet());
    let metrics = Metrics::new();
    let certificates = WatchedCertificates::default();

    let scrape = || {
        metrics.set_counts(&fleet.view().counts(), true);
        metrics.alerts.refresh(&fleet, &certificates);
        metrics.render()
    };
    fleet.leadership().set_active(false);
    let (none, none_bytes) = timed(&scrape);
    fleet.leadership().set_active(true);
    let (all, all_bytes) = timed(&scrape);
    let listed = fleet.view().unconverged_nodes(usize::MAX).len();
    println!("nodes in the fleet: {nodes} (one row each), {ROUNDS} scrapes each, median");
    println!("  no node listed:        {:>8.2} ms, {:>9} bytes", ms(none), none_bytes);
    println!(
        "  {listed:>5} nodes not converged, {} listed: {:>8.2} ms, {:>9} bytes",
        listed.min(MAX_LISTED_NODES),
        ms(all),
        all_bytes
    );
}

/// The median time of `ROUNDS` scrapes, and the size of the last.
fn timed(scrape: &dyn Fn() -> String) -> (Duration, usize) {
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        bytes = scrape().len();
        times.push(started.elapsed());
    }
    times.sort();
    (times[times.len() / 2], bytes)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
