//! The agent on a RHEL 9.4 node whose networking is done by the real
//! NetworkManager (confined to the test's namespaces, see
//! `multinic_testkit::networkmanager`), end to end with the real
//! controller binary and a private MariaDB, with `--backend auto --apply
//! auto` (NetworkManager, host mode).
//!
//! The node is what a RHEL node gives us: `ens3` activated by
//! NetworkManager from its own profile, NetworkManager's automatic DHCP
//! profile on every NIC without one, and besides our NICs a CNI's route
//! through `ens3`, a VIP on it, a CNI veth with its own address and route, a
//! blackhole route and a policy rule. Every step asserts that none of that
//! changes (`Snapshot`), nor `ens3`'s carrier, and that `ens3` stays active
//! from its own profile. Every keyfile the agent writes is read by libnm's
//! own keyfile reader.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::time::Duration;

use multinic_testkit::bystanders::{Bystanders, Snapshot};
use multinic_testkit::e2e::{AGENT_HTTP, Stack, WAIT};
use multinic_testkit::eventually;
use multinic_testkit::netns::Link;
use multinic_testkit::networkmanager::{NmNode, UNMANAGED_MAC, UNMANAGED_NIC, libnm_read};
use multinic_testkit::rows::{NewRow, netplan_success_of_port};

const AGENT: &str = env!("CARGO_BIN_EXE_multinic-agent");
const NODE: &str = "node-under-test";
const A: &str = "fa:16:3e:00:0e:01";
const B: &str = "fa:16:3e:00:0e:02";
const C: &str = "fa:16:3e:00:0e:03";
const D: &str = "fa:16:3e:00:0e:04";
const ALL: [&str; 5] = [A, B, C, D, UNMANAGED_MAC];
const RHEL: &str = "NAME=\"Red Hat Enterprise Linux\"\nVERSION=\"9.4 (Plow)\"\nID=\"rhel\"\nID_LIKE=\"fedora\"\n\
                    VERSION_ID=\"9.4\"\nPRETTY_NAME=\"Red Hat Enterprise Linux 9.4 (Plow)\"\n";

/// A NetworkManager node with bystanders and the stack (database, the real
/// controller and, once started, the real agent with `--backend auto
/// --apply auto`, entering the confined host's namespaces). The stack
/// stops first.
struct Setup {
    stack: Stack,
    node: NmNode,
}

impl Deref for Setup {
    type Target = Stack;
    fn deref(&self) -> &Stack {
        &self.stack
    }
}

impl DerefMut for Setup {
    fn deref_mut(&mut self) -> &mut Stack {
        &mut self.stack
    }
}

impl Setup {
    async fn start() -> Option<Self> {
        let mut node = NmNode::start()?;
        Bystanders::install(&node.kernel);
        let (root, pid) = (node.root().to_path_buf(), node.host.pid().to_string());
        let stack = Stack::start(AGENT, &mut node.kernel, &root, RHEL, vec!["--host-pid".into(), pid]).await?;
        Some(Self { stack, node })
    }

    /// Waits until the row of `port` says `value`.
    async fn row_is(&self, port: &str, value: i64) {
        self.stack.row_is(port, value, &format!("NetworkManager's log:\n{}", self.node.log())).await;
    }

    fn link(&self, name: &str) -> Link {
        self.node.kernel.link(name).unwrap_or_else(|| panic!("no link {name}: {:?}", self.node.kernel.links()))
    }

    fn profile(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.node.path(&format!("etc/NetworkManager/system-connections/{name}.nmconnection")))
            .ok()
    }

    /// What libnm's own keyfile reader makes of our profile of `name`.
    fn libnm(&self, name: &str) -> serde_json::Value {
        libnm_read(&self.node.path(&format!("etc/NetworkManager/system-connections/{name}.nmconnection")))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Asserts that the bystanders, ens3's carrier and ens3's profile are
    /// as they were.
    fn assert_untouched(&self, before: &Snapshot, when: &str) {
        before.assert_same(&Snapshot::take(&self.node.kernel, &ALL), when);
        self.node.assert_primary_active(when);
    }

    /// NetworkManager's view of `name`: (state, active profile).
    fn device(&self, name: &str) -> (String, String) {
        self.node.device(name).unwrap_or_else(|| panic!("NetworkManager has no device {name}"))
    }

    /// The profiles NetworkManager generated for a NIC ("Wired connection N").
    fn automatic_profiles(&self) -> Vec<(String, String)> {
        self.node
            .profiles()
            .into_iter()
            .filter(|(name, ..)| name.starts_with("Wired connection"))
            .map(|(name, _, device, _)| (name, device))
            .collect()
    }
}

fn state_of(link: &Link) -> (u64, bool, Vec<String>) {
    (link.mtu, link.up, link.addresses.clone())
}

const CONNECTED: &str = "connected";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_networkmanager_every_change_of_one_nic_leaves_the_rest_of_the_node_alone() {
    let Some(mut s) = Setup::start().await else { return };
    // Two NICs as a RHEL node has them before we act: NetworkManager's
    // automatic DHCP profile active on each (no DHCP server answers).
    s.node.kernel.add_nic("ens4", A);
    s.node.kernel.add_nic("ens5", B);
    for nic in ["ens4", "ens5"] {
        s.node.wait_for_device(nic, "NetworkManager's automatic profile on the NIC", |state, profile| {
            state.starts_with("connecting") && profile.starts_with("Wired connection")
        });
    }
    let before = Snapshot::take(&s.node.kernel, &ALL);
    assert!(before.has_cni_route(), "{before:#?}");

    // First apply: an address and an MTU on A; rename and MTU only on B.
    NewRow::new("a", NODE, A).address(Some("10.60.0.5"), Some("10.60.0.0/24")).mtu(1450).insert(&s.pool).await;
    NewRow::new("b", NODE, B).mtu(1400).insert(&s.pool).await;
    s.start_agent();
    s.row_is("a", 1).await;
    s.row_is("b", 1).await;
    let starting = s.agent().events("agent starting");
    assert_eq!(starting[0]["backend"], "networkmanager", "{starting:?}");
    assert_eq!(starting[0]["apply"], "host", "auto is host mode on NetworkManager: {starting:?}");
    assert_eq!(state_of(&s.link("multinic0")), (1450, true, vec!["10.60.0.5/24".to_owned()]));
    assert_eq!(state_of(&s.link("multinic1")), (1400, true, vec![]));
    assert_eq!(s.device("multinic0"), (CONNECTED.to_owned(), "multinic0".to_owned()));
    assert_eq!(s.device("multinic1"), (CONNECTED.to_owned(), "multinic1".to_owned()));
    let read = s.libnm("multinic0");
    assert_eq!(read["mac-address"], A.to_uppercase(), "{read}");
    assert_eq!((read["mtu"].as_u64(), read["interface-name"].as_str()), (Some(1450), Some("multinic0")));
    assert_eq!(read["ipv4"]["addresses"], serde_json::json!(["10.60.0.5/24"]));
    assert_eq!(read["ipv6"]["method"], "disabled");
    assert_eq!(s.libnm("multinic1")["ipv4"]["method"], "disabled");
    assert!(std::fs::read_to_string(s.node.path("etc/systemd/network/10-multinic0.link")).unwrap().contains(A));
    assert_eq!(s.automatic_profiles(), vec![], "NetworkManager's automatic profiles of our NICs are deleted");
    assert!(s.node.no_auto_default().contains("multinic0"), "and not created again: {}", s.node.no_auto_default());
    s.assert_untouched(&before, "first apply");

    // MTU change, address change, address removed: reapplied in place.
    s.sql("UPDATE multi_interface SET mtu = 1500, netplan_success = 0 WHERE port_id = 'a'").await;
    s.row_is("a", 1).await;
    assert_eq!(state_of(&s.link("multinic0")), (1500, true, vec!["10.60.0.5/24".to_owned()]));
    s.assert_untouched(&before, "MTU change");
    s.sql("UPDATE multi_interface SET address = '10.60.0.9', netplan_success = 0 WHERE port_id = 'a'").await;
    s.row_is("a", 1).await;
    assert_eq!(state_of(&s.link("multinic0")), (1500, true, vec!["10.60.0.9/24".to_owned()]));
    assert_eq!(s.libnm("multinic0")["ipv4"]["addresses"], serde_json::json!(["10.60.0.9/24"]));
    s.assert_untouched(&before, "address change");
    s.sql("UPDATE multi_interface SET address = NULL, cidr = NULL, netplan_success = 0 WHERE port_id = 'a'").await;
    s.row_is("a", 1).await;
    assert_eq!(state_of(&s.link("multinic0")), (1500, true, vec![]));
    assert_eq!(s.libnm("multinic0")["ipv4"]["method"], "disabled");
    assert_eq!(s.device("multinic0"), (CONNECTED.to_owned(), "multinic0".to_owned()));
    s.assert_untouched(&before, "address removed");

    // Agent restart: adopted from its Hello; zero writes, zero netlink
    // changes, not one call to NetworkManager.
    let calls = s.node.calls();
    let ours = (s.link("multinic0"), s.link("multinic1"));
    let profiles = (s.profile("multinic0"), s.profile("multinic1"));
    s.restart_agent_expecting_no_change().await;
    assert_eq!(s.node.calls(), calls, "a restart asks NetworkManager nothing");
    assert_eq!((s.profile("multinic0"), s.profile("multinic1")), profiles);
    assert_eq!((s.link("multinic0"), s.link("multinic1")), ours);
    s.assert_untouched(&before, "agent restart");

    // Interface removed: NetworkManager lets go of its profile, its files
    // go, its runtime state is undone, its name stays; A untouched.
    s.sql("UPDATE multi_interface SET deleted_at = NOW() WHERE port_id = 'b'").await;
    eventually(WAIT, "B's profile removed", || async { s.profile("multinic1").is_none().then_some(()) }).await;
    eventually(WAIT, "B set down", || async { (!s.link("multinic1").up).then_some(()) }).await;
    assert!(!s.node.path("etc/systemd/network/10-multinic1.link").exists());
    assert!(!s.node.profiles().iter().any(|(name, ..)| name == "multinic1"), "{:?}", s.node.profiles());
    assert_eq!(s.link("multinic1").addresses, Vec::<String>::new());
    assert_ne!(s.device("multinic1").1, "multinic1");
    assert_eq!(s.link("multinic0"), ours.0);
    assert_eq!(s.automatic_profiles(), vec![], "no automatic profile comes back for the NIC we let go");
    s.assert_untouched(&before, "interface removed");

    // A boot: the NIC appears under its kernel name and udev's own code
    // renames it by our .link file before NetworkManager starts; then
    // NetworkManager activates our profile by itself (the agent is asked
    // nothing, and no automatic profile is made for the NIC).
    s.node.reboot_networkmanager(|node| {
        node.kernel.ip(&["link", "del", "multinic0"]);
        node.kernel.add_nic("ens9", A);
        let udev = node.udev_add("ens9");
        assert!(udev.contains("10-multinic0.link"), "{udev}");
        assert!(node.kernel.link("multinic0").is_some(), "renamed by udev from our .link file:\n{udev}");
    });
    s.node.wait_for_device("multinic0", "NetworkManager to activate our profile at boot", |state, profile| {
        state == CONNECTED && profile == "multinic0"
    });
    assert_eq!(state_of(&s.link("multinic0")), (1500, true, vec![]));
    assert_eq!(s.automatic_profiles(), vec![], "no automatic profile for a NIC our profile matches");
    s.node.assert_primary_active("boot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_networkmanager_a_hot_plugged_nic_is_taken_over_a_refused_profile_rolls_back_and_unmanaged_is_refused() {
    let Some(mut s) = Setup::start().await else { return };
    // D's link already holds D's address: NetworkManager's duplicate
    // address detection refuses to activate a profile with it. The
    // unmanaged NIC is one NetworkManager's configuration excludes.
    s.node.kernel.add_nic("ens7", D);
    s.node.kernel.ip(&["-6", "addr", "add", "fd64::5/64", "dev", "ens7p", "nodad"]);
    s.node.add_unmanaged_nic();
    s.node.wait_for_device("ens7", "NetworkManager's automatic profile on D", |state, profile| {
        state.starts_with("connecting") && profile.starts_with("Wired connection")
    });
    let d_before = s.device("ens7");
    assert_eq!(s.device(UNMANAGED_NIC).0, "unmanaged");
    NewRow::new("a", NODE, A).address(Some("10.61.0.5"), Some("10.61.0.0/24")).mtu(1450).insert(&s.pool).await;
    NewRow::new("d", NODE, D).address(Some("fd64::5"), Some("fd64::/64")).insert(&s.pool).await;
    NewRow::new("u", NODE, UNMANAGED_MAC).mtu(1400).insert(&s.pool).await;
    let before = Snapshot::take(&s.node.kernel, &ALL);
    s.start_agent();

    // D: NetworkManager refuses to activate the profile; rolled back to
    // exactly what it had (its automatic profile on ens7), reported failed.
    eventually(WAIT, "D's failure reported", || async {
        s.applies().iter().any(|e| e["rollbacks"] == 1).then_some(())
    })
    .await;
    let failure = &s.agent().events("host apply failed; rolling back")[0];
    // In NetworkManager's words: the device's reason when it reports one
    // before the activation ends (the usual order), else the activation's.
    let error = failure["error"].as_str().unwrap();
    assert!(
        error.starts_with("NetworkManager did not activate multinic1: ")
            && (error.contains("IP configuration could not be reserved")
                || error.contains("the device was disconnected (activation state reason 3)")),
        "{failure}"
    );
    assert_eq!(failure["span"]["mac"], D, "{failure}");
    assert_eq!(netplan_success_of_port(&s.pool, "d").await, 0);
    assert!(s.node.kernel.link("ens7").is_some(), "D has its kernel name back");
    assert_eq!(s.device("ens7"), d_before, "NetworkManager is back to what it had on D");
    assert!(!s.node.profiles().iter().any(|(_, uuid, ..)| uuid.ends_with("fa163e000e04")), "{:?}", s.node.profiles());
    assert!(s.profile("multinic1").is_none(), "D's profile (multinic1) removed again");
    assert!(!s.node.path("etc/systemd/network/10-multinic1.link").exists());
    assert!(s.profile("multinic0").is_some(), "A's profile waits for its NIC");
    assert_eq!(s.node.checkpoints(), 0, "no checkpoint left behind");

    // The unmanaged NIC: refused, never renamed, no file for it.
    let refused = s.agent().events("the node's network daemon is told to leave this NIC alone; nothing changed");
    assert_eq!(refused.len(), 1, "{}", s.agent().log_text());
    assert!(refused[0]["reason"].as_str().unwrap().contains("NetworkManager does not manage ens8"), "{refused:?}");
    assert!(s.node.kernel.link(UNMANAGED_NIC).is_some(), "never renamed");
    assert_eq!(netplan_success_of_port(&s.pool, "u").await, 0);
    s.assert_untouched(&before, "a refused profile and an unmanaged NIC");

    // A hot-plugged later: it waits, then NetworkManager's automatic
    // profile (activated at once on the new NIC) gives way to ours.
    s.node.kernel.add_nic("ens6", A);
    let before = Snapshot::take(&s.node.kernel, &ALL);
    s.row_is("a", 1).await;
    assert_eq!(state_of(&s.link("multinic0")), (1450, true, vec!["10.61.0.5/24".to_owned()]));
    assert_eq!(s.device("multinic0"), (CONNECTED.to_owned(), "multinic0".to_owned()));
    assert_eq!(s.automatic_profiles().len(), 1, "only D's is left: {:?}", s.automatic_profiles());
    assert_eq!(s.libnm("multinic0")["mtu"], 1450);
    assert_eq!(netplan_success_of_port(&s.pool, "d").await, 0, "D stays failed");
    assert_eq!(s.device("ens7"), d_before, "and as it was");
    s.assert_untouched(&before, "hot-plugged NIC applied");
}

/// Drift on NetworkManager: checks of a steady node read our keyfiles,
/// `.link` files and the kernel, and ask NetworkManager nothing and write
/// nothing; an MTU set by hand and a deleted keyfile are repaired through
/// the apply's own road (our profile loaded and reapplied on that one
/// device, under a checkpoint), never a reload or restart, and the other
/// NIC of ours and the rest of the node stay as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_networkmanager_a_steady_node_is_checked_without_a_call_and_drift_is_repaired_on_that_profile_alone() {
    use std::os::unix::fs::MetadataExt;
    let Some(mut s) = Setup::start().await else { return };
    s.node.kernel.add_nic("ens4", A);
    s.node.kernel.add_nic("ens5", B);
    NewRow::new("a", NODE, A).address(Some("10.64.0.5"), Some("10.64.0.0/24")).mtu(1450).insert(&s.pool).await;
    NewRow::new("b", NODE, B).mtu(1400).insert(&s.pool).await;
    s.start_agent_with(&["--drift-check-interval", "300ms", "--http-listen", AGENT_HTTP]);
    s.row_is("a", 1).await;
    s.row_is("b", 1).await;
    let applied_a = (1450, true, vec!["10.64.0.5/24".to_owned()]);
    assert_eq!(state_of(&s.link("multinic0")), applied_a);
    let before = Snapshot::take(&s.node.kernel, &ALL);
    let ours: Vec<_> = [
        "etc/NetworkManager/system-connections/multinic0.nmconnection",
        "etc/NetworkManager/system-connections/multinic1.nmconnection",
        "etc/systemd/network/10-multinic0.link",
        "etc/systemd/network/10-multinic1.link",
    ]
    .iter()
    .map(|p| s.node.path(p))
    .collect();
    let files = || -> Vec<_> {
        ours.iter()
            .map(|p| p.metadata().map(|m| (m.ino(), m.mtime_nsec(), std::fs::read_to_string(p).unwrap())).ok())
            .collect()
    };
    let counters = |m: &multinic_testkit::scrape::Metrics| {
        ["multinic_agent_file_changes_total", "multinic_agent_netlink_changes_total", "multinic_agent_applies_total"]
            .map(|name| m.get(name, &[]))
    };

    // Ten checks of a node as applied: no call to NetworkManager, no write,
    // no netlink change, no apply.
    let (files_before, b_before) = (files(), s.link("multinic1"));
    let metrics = s.agent_metrics(&s.node.kernel).await;
    let (checks, counted) = (metrics.get("multinic_agent_drift_checks_total", &[]), counters(&metrics));
    let calls = s.node.calls();
    eventually(WAIT, "ten drift checks", || async {
        (s.drift_checks(&s.node.kernel).await >= checks + 10.0).then_some(())
    })
    .await;
    assert_eq!(s.node.calls_since(calls), Vec::<String>::new(), "a check asks NetworkManager nothing");
    assert_eq!(counters(&s.agent_metrics(&s.node.kernel).await), counted, "file changes, netlink changes, applies");
    assert!(files() == files_before, "our files untouched by the checks");
    assert_eq!(s.link("multinic1"), b_before);
    assert!(s.agent().events("repaired drift").is_empty(), "{}", s.agent().log_text());
    s.assert_untouched(&before, "ten drift checks");

    // The MTU set by hand: our profile reapplied on that device alone.
    let b = (s.link("multinic1"), s.device("multinic1"), s.profile("multinic1"));
    let calls = s.node.calls();
    s.node.kernel.ip(&["link", "set", "multinic0", "mtu", "1300"]);
    let repaired = repair_of(&s, "mtu").await;
    assert_eq!((repaired["from"].as_str(), repaired["to"].as_str()), (Some("MTU 1300"), Some("MTU 1450")));
    assert_eq!(state_of(&s.link("multinic0")), applied_a);
    assert_repaired_alone(&s.node.calls_since(calls), "the MTU set by hand");
    assert_eq!(s.device("multinic0"), (CONNECTED.to_owned(), "multinic0".to_owned()));
    assert_eq!((s.link("multinic1"), s.device("multinic1"), s.profile("multinic1")), b, "B as it was");
    assert_eq!(s.node.checkpoints(), 0, "no checkpoint left behind");
    assert_eq!(netplan_success_of_port(&s.pool, "a").await, 1, "repaired: the row stays 1");
    s.assert_untouched(&before, "MTU repaired");

    // Our keyfile deleted by hand: written again as it was, loaded and
    // reapplied.
    let profile = s.profile("multinic0").unwrap();
    let calls = s.node.calls();
    std::fs::remove_file(&ours[0]).unwrap();
    let repaired = repair_of(&s, "file_deleted").await;
    assert_eq!(repaired["to"], "/etc/NetworkManager/system-connections/multinic0.nmconnection as rendered");
    assert_eq!(s.profile("multinic0").as_deref(), Some(profile.as_str()), "written again as it was");
    assert_eq!(ours[0].metadata().unwrap().mode() & 0o777, 0o600);
    let made = s.node.calls_since(calls);
    assert_repaired_alone(&made, "our keyfile deleted");
    assert!(made.iter().any(|c| c.ends_with(".LoadConnections")), "the keyfile is loaded again: {made:#?}");
    assert_eq!(s.libnm("multinic0")["mtu"], 1450);
    assert_eq!(state_of(&s.link("multinic0")), applied_a);
    assert_eq!(s.device("multinic0"), (CONNECTED.to_owned(), "multinic0".to_owned()));
    assert_eq!((s.link("multinic1"), s.device("multinic1"), s.profile("multinic1")), b, "B as it was");
    assert_eq!(s.automatic_profiles(), vec![], "no automatic profile came back");
    assert_eq!(netplan_success_of_port(&s.pool, "a").await, 1);
    s.assert_untouched(&before, "keyfile repaired");
}

/// The agent's D-Bus connection to the host's bus: opened on the first
/// call and kept; NetworkManager restarting, or the bus itself restarting,
/// costs no failed apply (the broken connection is replaced); a bus that is
/// gone, or frozen (it accepts connections and answers nothing), is a clear
/// failure of the interface being applied, within a bound, with nothing
/// changed; once the bus is back the next push applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_networkmanager_a_restarted_bus_is_reconnected_and_a_broken_one_fails_that_interface_in_time() {
    let Some(mut s) = Setup::start().await else { return };
    s.node.kernel.add_nic("ens4", A);
    NewRow::new("a", NODE, A).address(Some("10.62.0.5"), Some("10.62.0.0/24")).mtu(1450).insert(&s.pool).await;
    s.start_agent();
    s.row_is("a", 1).await;
    let before = Snapshot::take(&s.node.kernel, &ALL);
    let applied = |mtu: u64| (mtu, true, vec!["10.62.0.5/24".to_owned()]);
    assert_eq!(state_of(&s.link("multinic0")), applied(1450));
    let set_mtu = |mtu: u32| format!("UPDATE multi_interface SET mtu = {mtu}, netplan_success = 0 WHERE port_id = 'a'");

    // NetworkManager restarts, the bus stays: the same connection serves.
    s.node.reboot_networkmanager(|_| {});
    s.node.wait_for_device("multinic0", "our profile active again", |state, profile| {
        state == CONNECTED && profile == "multinic0"
    });
    s.sql(&set_mtu(1400)).await;
    s.row_is("a", 1).await;
    assert_eq!(state_of(&s.link("multinic0")), applied(1400));

    // The bus restarts (NetworkManager with it): the agent's connection
    // broke; the next apply opens a new one and succeeds.
    s.node.stop_bus();
    s.node.host.start_bus();
    s.node.start_networkmanager();
    s.node.wait_for_device("multinic0", "our profile active again", |state, profile| {
        state == CONNECTED && profile == "multinic0"
    });
    s.sql(&set_mtu(1300)).await;
    s.row_is("a", 1).await;
    assert_eq!(state_of(&s.link("multinic0")), applied(1300));
    s.assert_untouched(&before, "NetworkManager and the bus restarted");

    // No bus: that interface fails, saying which socket; nothing changed.
    let unavailable = "cannot ask the node's network daemon; nothing changed";
    let profile = s.profile("multinic0");
    s.node.stop_bus();
    s.sql(&set_mtu(1280)).await;
    let failure =
        eventually(WAIT, "the failure without a bus", || async { s.agent().events(unavailable).into_iter().next() })
            .await;
    let socket = s.node.host.bus_socket();
    let reason = failure["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!(
            "cannot ask NetworkManager about multinic0: cannot connect to the host's system bus at {}:",
            socket.display()
        )),
        "{failure}"
    );
    assert_eq!(failure["span"]["mac"], A, "{failure}");
    assert_eq!(state_of(&s.link("multinic0")), applied(1300), "nothing changed");
    assert_eq!(s.profile("multinic0"), profile, "our profile as it was");
    assert_eq!(netplan_success_of_port(&s.pool, "a").await, 0);

    // A frozen bus (connections accepted, nothing answered): the same
    // failure after the connect bound, not a hang.
    s.node.host.start_bus();
    s.node.host.signal("dbus", "STOP");
    let started = std::time::Instant::now();
    s.sql(&set_mtu(1200)).await;
    let frozen = eventually(WAIT, "the failure with a frozen bus", || async {
        s.agent().events(unavailable).into_iter().nth(1)
    })
    .await;
    assert!(
        frozen["reason"]
            .as_str()
            .unwrap()
            .ends_with(&format!("the host's system bus at {} did not accept a connection within 5s", socket.display())),
        "{frozen}"
    );
    assert!(started.elapsed() < Duration::from_secs(30), "bounded: {:?}", started.elapsed());
    assert_eq!(state_of(&s.link("multinic0")), applied(1300), "nothing changed");
    assert_eq!(s.profile("multinic0"), profile, "our profile as it was");

    // The bus answers again and NetworkManager is back: the next push applies.
    s.node.host.signal("dbus", "CONT");
    s.node.start_networkmanager();
    s.sql(&set_mtu(1380)).await;
    s.row_is("a", 1).await;
    assert_eq!(state_of(&s.link("multinic0")), applied(1380));
    assert_eq!(s.device("multinic0"), (CONNECTED.to_owned(), "multinic0".to_owned()));
    assert_eq!(s.node.checkpoints(), 0, "no checkpoint left behind");
    s.assert_untouched(&before, "the bus back");
}

/// Waits for the agent's log of a repair of `kind`; the event.
async fn repair_of(s: &Setup, kind: &str) -> serde_json::Value {
    let what = format!("{kind} drift repaired; NetworkManager's log:\n{}", s.node.log());
    let event = eventually(WAIT, &what, || async {
        s.agent().events("repaired drift").into_iter().find(|e| e["kind"] == kind)
    })
    .await;
    assert_eq!(event["interface"], "multinic0", "{event}");
    event
}

/// Asserts that the calls a repair made to NetworkManager (`calls`) are
/// those of an apply of one profile on its device: reapplied in place
/// under a checkpoint, never a reload, a restart or an activation.
fn assert_repaired_alone(calls: &[String], when: &str) {
    let count = |member: &str| calls.iter().filter(|c| c.ends_with(&format!(".{member}"))).count();
    assert_eq!(
        ["CheckpointCreate", "Reapply", "CheckpointDestroy"].map(count),
        [1, 1, 1],
        "{when}: one checkpoint, one reapply: {calls:#?}"
    );
    for never in ["ReloadConnections", "Reload", "ActivateConnection", "Disconnect", "Delete", "CheckpointRollback"] {
        assert_eq!(count(never), 0, "{when}: {never} called: {calls:#?}");
    }
}

/// The predecessor's file as it wrote it on RHEL: mode 0644, no trailing newline.
fn predecessor_file(name: &str, mac: &str, address: &str, prefix: u8, mtu: u32) -> String {
    format!(
        "DEVICE={name}\nNAME={name}\nTYPE=Ethernet\nONBOOT=yes\nBOOTPROTO=none\nIPADDR={address}\nPREFIX={prefix}\n\
         MTU={mtu}\nHWADDR={}",
        mac.to_uppercase()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_the_predecessor_configured_is_taken_over_without_renaming_its_nics() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Some(mut s) = Setup::start().await else { return };
    // What the predecessor left: NICs renamed by `ip link set` and
    // configured (NetworkManager, restarted by it, sees them configured
    // from outside), its ifcfg files, and the node's own files in the
    // same folder. C's address is taken on its link already, so ours
    // cannot be activated there.
    let nics = [("multinic2", A, "10.66.0.5", 24, 1450), ("multinic3", B, "10.67.0.5", 24, 1500)];
    s.node.reboot_networkmanager(|node| {
        for (name, mac, address, prefix, mtu) in nics {
            node.kernel.add_nic(name, mac);
            node.kernel.ip(&["link", "set", name, "mtu", &mtu.to_string(), "up"]);
            node.kernel.ip(&["addr", "add", &format!("{address}/{prefix}"), "dev", name]);
        }
        node.kernel.add_nic("multinic4", C);
        node.kernel.ip(&["-6", "addr", "add", "fd68::5/64", "dev", "multinic4p", "nodad"]);
        node.kernel.ip(&["link", "set", "multinic4", "up"]);
        node.kernel.ip(&["-6", "addr", "add", "fd68::5/64", "dev", "multinic4", "nodad"]);
    });
    Bystanders::install(&s.node.kernel);
    s.node.wait_for_device("multinic2", "NetworkManager to see the predecessor's NIC", |state, _| {
        state == "connected (externally)"
    });
    let scripts = s.node.path("etc/sysconfig/network-scripts");
    let mut files = vec![
        ("ifcfg-multinic2".to_owned(), predecessor_file("multinic2", A, "10.66.0.5", 24, 1450)),
        ("ifcfg-multinic3".to_owned(), predecessor_file("multinic3", B, "10.67.0.5", 24, 1500)),
        ("ifcfg-multinic4".to_owned(), predecessor_file("multinic4", C, "fd68::5", 64, 1500)),
    ];
    files.push(("ifcfg-ens3".to_owned(), "DEVICE=ens3\nBOOTPROTO=dhcp\nONBOOT=yes\n".to_owned()));
    files.push(("readme-ifcfg.txt".to_owned(), "the admin's notes\n".to_owned()));
    for (file, text) in &files {
        std::fs::write(scripts.join(file), text).unwrap();
        std::fs::set_permissions(scripts.join(file), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let stat = |file: &str| {
        let m = std::fs::metadata(scripts.join(file)).unwrap();
        (std::fs::read_to_string(scripts.join(file)).unwrap(), m.mode(), m.mtime_nsec())
    };
    let kept: Vec<_> = ["ifcfg-multinic4", "ifcfg-ens3", "readme-ifcfg.txt"].iter().map(|f| stat(f)).collect();
    let indexes = |s: &Setup| -> Vec<String> {
        ["multinic2", "multinic3", "multinic4"]
            .iter()
            .map(|n| s.node.kernel.ip(&["-o", "link", "show", n]).split(':').next().unwrap().to_owned())
            .collect()
    };
    let before_indexes = indexes(&s);
    let c_before = s.device("multinic4");
    let before = Snapshot::take(&s.node.kernel, &ALL);

    // The operator installs us with rows saying what the predecessor had
    // (B's MTU changed meanwhile); A, B and C keep their names.
    NewRow::new("a", NODE, A).address(Some("10.66.0.5"), Some("10.66.0.0/24")).mtu(1450).insert(&s.pool).await;
    NewRow::new("b", NODE, B).address(Some("10.67.0.5"), Some("10.67.0.0/24")).mtu(1400).insert(&s.pool).await;
    NewRow::new("c", NODE, C).address(Some("fd68::5"), Some("fd68::/64")).insert(&s.pool).await;
    // Before the agent connects: a node without rows (or with some of them)
    // is told it has no (other) interfaces, and the predecessor's would
    // then be removed.
    s.wait_desired(NODE, 3).await;
    s.start_agent();
    s.row_is("a", 1).await;
    s.row_is("b", 1).await;
    eventually(WAIT, "C's failure reported", || async {
        s.applies().iter().any(|e| e["rollbacks"] == 1).then_some(())
    })
    .await;
    assert_eq!(netplan_success_of_port(&s.pool, "c").await, 0);
    assert_eq!(indexes(&s), before_indexes, "no NIC renamed or replaced");
    assert_eq!(state_of(&s.link("multinic2")), (1450, true, vec!["10.66.0.5/24".to_owned()]));
    assert_eq!(state_of(&s.link("multinic3")), (1400, true, vec!["10.67.0.5/24".to_owned()]));
    assert_eq!(s.device("multinic2"), (CONNECTED.to_owned(), "multinic2".to_owned()));
    assert_eq!(s.device("multinic3"), (CONNECTED.to_owned(), "multinic3".to_owned()));
    assert_eq!(s.libnm("multinic3")["mtu"], 1400);
    // Retired once ours is active; C's stays (ours never became active),
    // as do the node's own files.
    assert!(!scripts.join("ifcfg-multinic2").exists() && !scripts.join("ifcfg-multinic3").exists());
    let now: Vec<_> = ["ifcfg-multinic4", "ifcfg-ens3", "readme-ifcfg.txt"].iter().map(|f| stat(f)).collect();
    assert_eq!(now, kept, "nothing else in network-scripts/ is touched");
    assert!(s.profile("multinic4").is_none());
    // NetworkManager cannot restore a NIC configured from outside it: the
    // agent disconnects it there (no DHCP, no copy of the old settings
    // retried) and the journal restores it; NetworkManager sees it
    // configured from outside again.
    eventually(WAIT, "C restored", || async {
        (state_of(&s.link("multinic4")) == (1500, true, vec!["fd68::5/64".to_owned()])).then_some(())
    })
    .await;
    assert_eq!(s.device("multinic4"), c_before, "NetworkManager is back to what it had on C");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(state_of(&s.link("multinic4")), (1500, true, vec!["fd68::5/64".to_owned()]), "and it stays");
    let left: Vec<_> = s.automatic_profiles().into_iter().map(|(name, _)| name).collect();
    assert_eq!(left.len(), 1, "only C's automatic profile is left: {left:?}");
    s.assert_untouched(&before, "taking over the predecessor's node");
}

/// libnm's own keyfile reader reads every kind of profile we render as we
/// mean it: address family, method, MTU, MAC, name, our owner key.
#[test]
fn every_kind_of_rendered_keyfile_is_read_by_libnm_as_meant() {
    use multinic_agent::backend::Backend;
    use multinic_agent::backend::networkmanager::NetworkManager;
    use multinic_proto::{InterfaceName, InterfaceSpec, Mtu};
    if !multinic_testkit::networkmanager::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (0, "fa:16:3e:00:00:01", Some("192.168.10.5/24"), 1500),
        (1, "02:00:5e:10:00:01", Some("10.0.0.1/8"), 9000),
        (2, "fa:16:3e:00:00:02", Some("2001:db8::5/64"), 1280),
        (3, "fa:16:3e:00:00:03", Some("fd00:1:2:3::ffff/128"), 9216),
        (9, "fa:16:3e:00:00:04", None, 68),
    ];
    for (index, mac, address, mtu) in cases {
        let name = InterfaceName::new(index, 10).unwrap();
        let spec =
            InterfaceSpec::new(mac.parse().unwrap(), address.map(|a: &str| a.parse().unwrap()), Mtu::new(mtu).unwrap())
                .unwrap();
        let file = &NetworkManager.render(name, &spec)[0];
        let path = dir.path().join(file.path.file_name().unwrap());
        multinic_testkit::write_0600(&path, &file.contents);
        let read = libnm_read(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read["id"], name.to_string());
        assert_eq!(read["interface-name"], name.to_string());
        assert_eq!(read["type"], "802-3-ethernet");
        assert_eq!(read["autoconnect"], true);
        assert_eq!(read["mac-address"], mac.to_uppercase());
        assert_eq!(read["mtu"], mtu);
        assert_eq!(read["user"]["multinic.managed-by"], "multinic-agent");
        let (v4, v6) = match address {
            Some(a) if a.contains(':') => (("disabled", vec![]), ("manual", vec![a])),
            Some(a) => (("manual", vec![a]), ("disabled", vec![])),
            None => (("disabled", vec![]), ("disabled", vec![])),
        };
        assert_eq!(
            (read["ipv4"]["method"].as_str().unwrap(), &read["ipv4"]["addresses"]),
            (v4.0, &serde_json::json!(v4.1))
        );
        assert_eq!(
            (read["ipv6"]["method"].as_str().unwrap(), &read["ipv6"]["addresses"]),
            (v6.0, &serde_json::json!(v6.1))
        );
    }
    // And the reader is strict: what NetworkManager would only warn about fails here.
    let bad = dir.path().join("bad.nmconnection");
    let good = NetworkManager.render(
        InterfaceName::new(0, 10).unwrap(),
        &InterfaceSpec::new("fa:16:3e:00:00:01".parse().unwrap(), None, Mtu::new(1500).unwrap()).unwrap(),
    )[0]
    .contents
    .clone();
    multinic_testkit::write_0600(&bad, &good.replace("mtu=1500", "mtu=abc"));
    assert!(libnm_read(&bad).unwrap_err().contains("libnm warned"), "an invalid value is caught");
}

/// What NetworkManager answers when it refuses a profile, read the way the
/// agent reads it: `nmcli connection load` exits 0 and says so only in
/// words; `LoadConnections` names the file, and the agent's session turns
/// that into a failure (and rolls its checkpoint back).
#[test]
fn a_profile_networkmanager_refuses_is_a_failure_of_that_interface() {
    use multinic_agent::backend::networkmanager::host::{NmError, NmHost};
    use multinic_agent::backend::{ChangeKind, HostApply, HostApplyError, HostChange};
    use multinic_agent::hostns::HostNamespaces;
    use multinic_proto::InterfaceName;
    let Some(node) = NmNode::start() else { return };
    node.kernel.add_nic("multinic0", A);
    let profile = node.path("etc/NetworkManager/system-connections/multinic0.nmconnection");
    std::fs::write(&profile, "[connection]\nid=multinic0\ntype=ethernet\ninterface-name=multinic0\n").unwrap();
    // 0644: NetworkManager refuses keyfiles others can read.
    let out = node
        .host
        .command("nmcli", &["connection", "load", "/etc/NetworkManager/system-connections/multinic0.nmconnection"])
        .output()
        .unwrap();
    assert!(out.status.success(), "nmcli exits 0: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Could not load file"), "{out:?}");

    let host = HostNamespaces { pid: node.host.pid(), timeout: Duration::from_secs(60) };
    let mut session = NmHost.session(host);
    let change = HostChange {
        name: InterfaceName::new(0, 10).unwrap(),
        mac: A.parse().unwrap(),
        link: "multinic0".into(),
        kind: ChangeKind::Configure,
        retired: Vec::new(),
    };
    session.admit(&change).unwrap();
    let verdict = session.apply(std::slice::from_ref(&change)).pop().unwrap();
    let error = verdict.unwrap_err();
    let HostApplyError::Daemon(daemon) = &*error else { panic!("not NetworkManager's answer: {error}") };
    let refused = Path::new("etc/NetworkManager/system-connections/multinic0.nmconnection");
    assert!(matches!(daemon.downcast_ref(), Some(NmError::Refused(path)) if path == refused), "{error}");
    assert!(
        error
            .to_string()
            .starts_with("NetworkManager refused /etc/NetworkManager/system-connections/multinic0.nmconnection"),
        "{error}"
    );
    assert_eq!(node.checkpoints(), 1, "taken before the load");
    session.undo(&change);
    assert_eq!(node.checkpoints(), 0, "rolled back");
    node.assert_primary_active("a refused profile");
}
