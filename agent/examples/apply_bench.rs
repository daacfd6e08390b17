//! Measures how long the agent takes to apply interfaces through netlink on
//! a real kernel, what a repeated push costs, and what a drift check of a
//! node in line costs (CPU per check, writes, netlink changes). Needs root.
//!
//! ```sh
//! cargo run -p multinic-agent --example apply_bench -- 10
//! ```
//!
//! It creates a network namespace with N veth NICs, moves itself into it,
//! and runs the real reconciler (`--apply netlink`, netplan files in a
//! temporary host root): first apply, identical push, MTU change on every
//! interface, 1,000 drift checks of the node as applied (CPU time of the
//! process, from /proc/self/schedstat: user and system, the netlink dump's
//! included), removal of every interface. The namespace is deleted at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use multinic_agent::backend::netplan::Netplan;
use multinic_agent::files::HostFiles;
use multinic_agent::journal::Journal;
use multinic_agent::kernel::LinkOps;
use multinic_agent::kernel::rtnl::Rtnetlink;
use multinic_agent::reconcile::{ApplyMode, Outcome, Reconciler};
use multinic_proto::{DesiredSet, InterfaceSpec, InterfaceState, MacAddress, Mtu};
use nix::sched::{CloneFlags, setns};
use std::collections::BTreeMap;

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {args:?} failed");
}

fn set(n: u8, mtu: i64) -> DesiredSet {
    DesiredSet::new((0..n).map(|i| {
        let mac = MacAddress::from_octets([0xfa, 0x16, 0x3e, 0x0b, 0x00, i]).unwrap();
        let address = format!("10.60.{i}.5/24").parse().unwrap();
        InterfaceSpec::new(mac, Some(address), Mtu::new(mtu).unwrap()).unwrap()
    }))
    .unwrap()
}

fn print(what: &str, n: u8, wall: std::time::Duration, outcome: &Outcome) {
    let applied = outcome.statuses.iter().filter(|s| s.state != InterfaceState::Failed).count();
    println!(
        "{what:<22} {n:>2} interfaces: wall {:>7.2} ms ({:>6.2} ms/interface), apply {:>7.2} ms, verify {:>6.2} ms, \
         {:>3} netlink changes, {:>2} file writes, {applied} ok",
        wall.as_secs_f64() * 1e3,
        wall.as_secs_f64() * 1e3 / f64::from(n.max(1)),
        outcome.apply_duration.as_secs_f64() * 1e3,
        outcome.verify_duration.as_secs_f64() * 1e3,
        outcome.netlink_changes,
        outcome.file_writes,
    );
}

/// CPU time this process has run so far (all threads), in nanoseconds.
fn cpu_ns() -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let path = task.expect("task").path().join("schedstat");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        total += text.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
    }
    total
}

/// 1,000 checks of the node as `desired` left it: CPU per check, and
/// what they changed (nothing, or the check is broken).
fn checks(reconciler: &Reconciler, desired: &DesiredSet, n: u8) {
    const CHECKS: u32 = 1000;
    let applied: BTreeMap<_, _> = desired.iter().map(|s| (s.mac, InterfaceState::Applied)).collect();
    let (writes, netlink) = (reconciler.files().writes() + reconciler.files().removals(), reconciler.netlink_changes());
    let (cpu, wall) = (cpu_ns(), Instant::now());
    for _ in 0..CHECKS {
        let check = reconciler.check(desired, &applied).expect("check");
        assert!(check.in_line(), "the node drifted during the benchmark: {check:?}");
    }
    let (cpu, wall) = (cpu_ns() - cpu, wall.elapsed());
    let writes = reconciler.files().writes() + reconciler.files().removals() - writes;
    let netlink = reconciler.netlink_changes() - netlink;
    println!(
        "{:<22} {n:>2} interfaces: CPU {:>6.3} ms/check, wall {:>6.3} ms/check ({CHECKS} checks), \
         {netlink} netlink changes, {writes} file writes",
        "drift check (in line)",
        cpu as f64 / 1e6 / f64::from(CHECKS),
        wall.as_secs_f64() * 1e3 / f64::from(CHECKS),
    );
}

fn main() {
    let n: u8 = std::env::args().nth(1).map_or(10, |a| a.parse().expect("N: number of interfaces (1..=100)"));
    let namespace = format!("mnbench-{}", std::process::id());
    ip(&["netns", "add", &namespace]);
    for i in 0..n {
        let mac = format!("fa:16:3e:0b:00:{i:02x}");
        let (name, peer) = (format!("eth{}", i + 1), format!("peer{}", i + 1));
        ip(&["-n", &namespace, "link", "add", &name, "address", &mac, "type", "veth", "peer", "name", &peer]);
        ip(&["-n", &namespace, "link", "set", &peer, "up"]);
    }
    // Still single-threaded: every thread created from here on is in the namespace.
    let ns = File::open(format!("/run/netns/{namespace}")).expect("namespace file");
    setns(&ns, CloneFlags::CLONE_NEWNET).expect("enter the namespace");

    let root = tempfile::tempdir().unwrap();
    let kernel: Arc<dyn LinkOps> = Arc::new(Rtnetlink::open().expect("netlink"));
    let reconciler = Reconciler::new(
        &Netplan,
        HostFiles::new(root.path()),
        n.max(10),
        ApplyMode::Netlink,
        Journal::new(&root.path().join("state")),
    )
    .with_kernel(kernel);

    for (what, desired) in [
        ("first apply", set(n, 1500)),
        ("identical push", set(n, 1500)),
        ("MTU change", set(n, 9000)),
        ("remove all", DesiredSet::empty()),
    ] {
        if what == "remove all" {
            checks(&reconciler, &set(n, 9000), n);
        }
        let started = Instant::now();
        let outcome = reconciler.reconcile(&desired);
        print(what, n, started.elapsed(), &outcome);
    }
    let _ = Command::new("ip").args(["netns", "del", &namespace]).status();
}
