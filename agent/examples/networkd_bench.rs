//! Per-interface apply latency on a node whose networking is done by the
//! real systemd-networkd (netplan's renderer), in the mode `--apply auto`
//! picks there (netlink). Needs root, systemd-networkd, netplan, dbus.
//!
//! ```sh
//! cargo run --release -p multinic-agent --example networkd_bench -- 200
//! ```
//!
//! It starts networkd confined to a test node (`multinic_testkit::networkd`,
//! the same harness as the tests) with a CNI's routes, a VIP, a blackhole
//! route and a policy rule on it, moves itself into the node's network
//! namespace and runs the real reconciler on one NIC, N rounds of: first
//! apply (a fresh NIC: rename, MTU, address, up, verified), change (MTU and
//! address), identical push (no-op), removal. It prints p50/p95/p99/max per
//! step, what a no-op cost (file writes, netlink changes, networkd calls)
//! and whether anything else on the node changed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::sync::Arc;

use multinic_agent::backend::Backend;
use multinic_agent::backend::netplan::Netplan;
use multinic_agent::files::HostFiles;
use multinic_agent::journal::Journal;
use multinic_agent::kernel::LinkOps;
use multinic_agent::kernel::rtnl::Rtnetlink;
use multinic_agent::reconcile::{ApplyMode, Reconciler};
use multinic_proto::{DesiredSet, InterfaceSpec, MacAddress, Mtu};
use multinic_testkit::bystanders::{Bystanders, Snapshot};
use multinic_testkit::latency::{report, timed};
use multinic_testkit::networkd::NetworkdNode;
use nix::sched::{CloneFlags, setns};

const MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0x0e, 0x00, 0x01];
const MAC_TEXT: &str = "fa:16:3e:0e:00:01";

fn set(address: &str, mtu: i64) -> DesiredSet {
    let mac = MacAddress::from_octets(MAC).unwrap();
    let spec = InterfaceSpec::new(mac, Some(address.parse().unwrap()), Mtu::new(mtu).unwrap()).unwrap();
    DesiredSet::new([spec]).unwrap()
}

fn main() {
    let rounds: usize = std::env::args().nth(1).map_or(100, |a| a.parse().expect("N: number of rounds"));
    let node = NetworkdNode::start().expect("this machine cannot run the real networkd (root, systemd, netplan, dbus)");
    Bystanders::install(&node.kernel);
    node.kernel.add_nic("ens4", MAC_TEXT);
    let before = Snapshot::take(&node.kernel, &[MAC_TEXT]);
    let calls_before = node.daemon_activity().len();

    // Still single-threaded: every thread created from here on is in the namespace.
    let ns = File::open(format!("/run/netns/{}", node.kernel.name())).expect("namespace file");
    setns(&ns, CloneFlags::CLONE_NEWNET).expect("enter the namespace");
    let state = tempfile::tempdir().unwrap();
    let kernel: Arc<dyn LinkOps> = Arc::new(Rtnetlink::open().expect("netlink"));
    let reconciler =
        Reconciler::new(&Netplan, HostFiles::new(node.root()), 10, Netplan.default_apply(), Journal::new(state.path()))
            .with_kernel(kernel);
    assert_eq!(reconciler.apply_mode(), ApplyMode::Netlink);

    let (mut first, mut change, mut noop, mut remove) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut noop_cost = (0, 0);
    for round in 0..rounds {
        // A fresh NIC, as plugged in: its kernel name, down, MTU 1500.
        if node.kernel.link("multinic0").is_some() {
            node.kernel.ip(&["link", "set", "multinic0", "name", "ens4"]);
            node.kernel.ip(&["link", "set", "ens4", "mtu", "1500"]);
        }
        let (took, _) = timed(&reconciler, &set("10.63.0.5/24", 1450), "first apply");
        first.push(took);
        let address = if round % 2 == 0 { "10.63.0.9/24" } else { "10.63.0.7/24" };
        let (took, _) = timed(&reconciler, &set(address, 1400), "change");
        change.push(took);
        let (took, outcome) = timed(&reconciler, &set(address, 1400), "no-op");
        noop.push(took);
        noop_cost = (noop_cost.0 + outcome.file_writes, noop_cost.1 + outcome.netlink_changes);
        let (took, _) = timed(&reconciler, &DesiredSet::empty(), "removal");
        remove.push(took);
    }
    let calls = node.daemon_activity().len() - calls_before;
    let after = Snapshot::take(&node.kernel, &[MAC_TEXT]);

    println!("one NIC on a node run by the real systemd-networkd, --apply auto (netlink), verified:");
    report("first apply", first);
    report("change", change);
    report("no-op push", noop);
    report("removal", remove);
    println!(
        "no-op pushes: {} file writes, {} netlink changes in all; networkd calls during the run: {calls}; \
         the rest of the node (CNI routes, VIP, blackhole, rule, ens3 carrier): {}",
        noop_cost.0,
        noop_cost.1,
        if after == before { "unchanged" } else { "CHANGED" }
    );
    before.assert_same(&after, "benchmark");
}
