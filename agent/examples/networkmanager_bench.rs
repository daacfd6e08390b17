//! Per-interface apply latency on a RHEL-like node whose networking is done
//! by the real NetworkManager, in the mode `--apply auto` picks there (host:
//! checkpoint, load, activate or reapply, verify), measured side by side
//! with NetworkManager's own `nmcli connection load` + `nmcli connection up`
//! of the same profile on the same NIC. Needs root, NetworkManager, dbus,
//! python3-gi (the harness's checks).
//!
//! ```sh
//! cargo run --release -p multinic-agent --example networkmanager_bench -- 50
//! ```
//!
//! It starts NetworkManager confined to a test node
//! (`multinic_testkit::networkmanager`, the tests' harness) with a CNI's
//! routes, a VIP, a blackhole route and a policy rule on it, moves itself
//! into the node's network namespace and runs the real reconciler on one
//! NIC, N rounds of: a fresh NIC plugged in (NetworkManager's automatic
//! profile active on it, as on RHEL); first apply (rename, checkpoint,
//! load, activate, verify, automatic profile deleted), then NetworkManager's
//! own load + up of that profile; a change (MTU and address: reapply), then
//! NetworkManager's own load + up of the changed profile; an identical push
//! (no-op); removal. It prints p50/p95/p99/max per step, the ratio to
//! NetworkManager's own time, what a no-op cost (file writes, netlink
//! changes, calls to NetworkManager) and whether anything else on the node
//! changed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant};

use multinic_agent::backend::networkmanager::{NetworkManager, keyfile};
use multinic_agent::files::HostFiles;
use multinic_agent::hostns::HostNamespaces;
use multinic_agent::journal::Journal;
use multinic_agent::kernel::LinkOps;
use multinic_agent::kernel::rtnl::Rtnetlink;
use multinic_agent::reconcile::{ApplyMode, Reconciler};
use multinic_proto::{DesiredSet, InterfaceName, InterfaceSpec, MacAddress, Mtu};
use multinic_testkit::bystanders::{Bystanders, Snapshot};
use multinic_testkit::latency::{report, timed};
use multinic_testkit::networkmanager::NmNode;
use nix::sched::{CloneFlags, setns};

const MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0x0f, 0x00, 0x01];
const MAC_TEXT: &str = "fa:16:3e:0f:00:01";

fn set(address: &str, mtu: i64) -> DesiredSet {
    let mac = MacAddress::from_octets(MAC).unwrap();
    let spec = InterfaceSpec::new(mac, Some(address.parse().unwrap()), Mtu::new(mtu).unwrap()).unwrap();
    DesiredSet::new([spec]).unwrap()
}

/// NetworkManager's own load + up of our profile: nmcli run in the host's
/// namespaces (`setns`, as the agent runs host tools).
fn nm_load_and_up(host: &HostNamespaces) -> Duration {
    let uuid = keyfile::uuid(MacAddress::from_octets(MAC).unwrap());
    let path = format!("/{}", keyfile::path(InterfaceName::new(0, 10).unwrap()).display());
    let started = Instant::now();
    host.run("nmcli", &["connection".into(), "load".into(), path]).unwrap();
    host.run("nmcli", &["connection".into(), "up".into(), "uuid".into(), uuid]).unwrap();
    started.elapsed()
}

fn main() {
    let rounds: usize = std::env::args().nth(1).map_or(30, |a| a.parse().expect("N: number of rounds"));
    if let Ok(filter) = std::env::var("BENCH_LOG") {
        // e.g. BENCH_LOG=multinic_agent::backend::networkmanager=debug: every
        // D-Bus call to NetworkManager and its time.
        multinic_runtime::init_logging(multinic_runtime::LogFormat::Text, &filter).expect("logging");
    }
    let node = NmNode::start().expect("this machine cannot run the real NetworkManager (root, network-manager, dbus)");
    Bystanders::install(&node.kernel);
    // Before the NIC (its veth peer is new in every round).
    let before = Snapshot::take(&node.kernel, &[MAC_TEXT]);
    let host = HostNamespaces { pid: node.host.pid(), timeout: Duration::from_secs(120) };

    // Still single-threaded: every thread created from here on is in the namespace.
    let ns = File::open(format!("/run/netns/{}", node.kernel.name())).expect("namespace file");
    setns(&ns, CloneFlags::CLONE_NEWNET).expect("enter the namespace");
    let state = tempfile::tempdir().unwrap();
    let kernel: Arc<dyn LinkOps> = Arc::new(Rtnetlink::open().expect("netlink"));
    let reconciler =
        Reconciler::new(&NetworkManager, HostFiles::new(node.root()), 10, ApplyMode::Host, Journal::new(state.path()))
            .with_kernel(kernel)
            .with_host(host);

    let mut samples: [Vec<Duration>; 6] = Default::default();
    let (mut noop_writes, mut noop_netlink, mut noop_calls) = (0, 0, 0);
    for round in 0..rounds {
        // A fresh NIC, as plugged in: its kernel name, NetworkManager's
        // automatic DHCP profile activated on it.
        if round > 0 {
            node.kernel.ip(&["link", "del", "multinic0"]);
        }
        node.kernel.add_nic("ens4", MAC_TEXT);
        node.wait_for_device("ens4", "NetworkManager's automatic profile", |state, profile| {
            state.starts_with("connecting") && profile.starts_with("Wired connection")
        });
        let (took, _) = timed(&reconciler, &set("10.64.0.5/24", 1450), "first apply");
        samples[0].push(took);
        samples[1].push(nm_load_and_up(&host));

        let address = if round % 2 == 0 { "10.64.0.9/24" } else { "10.64.0.7/24" };
        let (took, _) = timed(&reconciler, &set(address, 1400), "change");
        samples[2].push(took);
        samples[3].push(nm_load_and_up(&host));

        std::thread::sleep(Duration::from_millis(300));
        let calls = node.calls();
        let (took, outcome) = timed(&reconciler, &set(address, 1400), "no-op");
        samples[4].push(took);
        std::thread::sleep(Duration::from_millis(300));
        noop_calls += node.calls() - calls;
        noop_writes += outcome.file_writes;
        noop_netlink += outcome.netlink_changes;

        let (took, _) = timed(&reconciler, &DesiredSet::empty(), "removal");
        samples[5].push(took);
    }
    node.kernel.ip(&["link", "del", "multinic0"]);
    let after = Snapshot::take(&node.kernel, &[MAC_TEXT]);
    node.assert_primary_active("benchmark");

    println!(
        "one NIC on a node run by the real NetworkManager, --apply auto (host), verified; \
         NetworkManager's own nmcli load + up of the same profile measured in the same rounds:"
    );
    let [first, nm_first, change, nm_change, noop, removal] = samples;
    let first = report("first apply (agent)", first);
    let nm_first = report("  NetworkManager load + up", nm_first);
    let change = report("change: MTU + address (agent)", change);
    let nm_change = report("  NetworkManager load + up", nm_change);
    report("no-op push", noop);
    report("removal", removal);
    println!(
        "agent / NetworkManager's own load + up, p50: first apply {:.2}x, change {:.2}x (target: within 1.5x)",
        first / nm_first,
        change / nm_change
    );
    println!(
        "no-op pushes: {noop_writes} file writes, {noop_netlink} netlink changes, {noop_calls} calls to \
         NetworkManager in all; the rest of the node (CNI routes, VIP, blackhole, rule, ens3 carrier and profile): {}",
        if after == before { "unchanged" } else { "CHANGED" }
    );
    before.assert_same(&after, "benchmark");
}
