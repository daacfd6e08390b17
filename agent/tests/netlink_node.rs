//! The agent binary on a real kernel: each test node is a network namespace
//! with veth NICs of chosen MACs, the agent runs inside it with
//! `--apply netlink`, a scripted controller pushes, and the tests check the
//! kernel with `ip -j`, the files with the real `netplan generate`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Node, WAIT, assert_state, set, spec, status};
use multinic_proto::{ErrorCode, InterfaceState, Outcome};
use multinic_testkit::netns::{PRIMARY, PRIMARY_MAC, PRIMARY_V4, PRIMARY_V6};
use multinic_testkit::{eventually, netplan_generate, require_netplan};
use serde_json::Value;

const A: &str = "fa:16:3e:00:01:01";
const B: &str = "fa:16:3e:00:01:02";

fn check_netplan(node: &Node) {
    if require_netplan() {
        netplan_generate(node.root.path()).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adds_two_interfaces_then_an_identical_push_changes_nothing() {
    let Some(mut node) = Node::new() else { return };
    node.kernel.add_nic("eth1", A);
    node.kernel.add_nic("eth2", B);
    // A NIC and a file that are not ours.
    node.kernel.add_nic("eth9", "fa:16:3e:00:09:09");
    node.kernel.ip(&["link", "set", "eth9", "mtu", "1400", "up"]);
    node.kernel.ip(&["addr", "add", "10.99.0.1/24", "dev", "eth9"]);
    let cloud_init = "network:\n  version: 2\n  ethernets:\n    ens3:\n      dhcp4: true\n";
    std::fs::create_dir_all(node.root.path().join("etc/netplan")).unwrap();
    let cloud_init_path = node.root.path().join("etc/netplan/50-cloud-init.yaml");
    std::fs::write(&cloud_init_path, cloud_init).unwrap();
    std::fs::set_permissions(&cloud_init_path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let foreign_before = node.kernel.link("eth9").unwrap();
    let primary_before = node.kernel.link(PRIMARY).unwrap();
    node.start_agent();

    let desired = set(&[spec(A, Some("10.10.0.5/24"), 9000), spec(B, Some("2001:db8:2::5/64"), 1500)]);
    let report = node.push(1, &desired).await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    assert_eq!(status(&report, A).name.unwrap().to_string(), "multinic0");
    assert_eq!(status(&report, B).name.unwrap().to_string(), "multinic1");
    let m0 = node.kernel.link("multinic0").expect("eth1 renamed");
    assert_eq!((m0.mac.as_str(), m0.mtu, m0.up), (A, 9000, true));
    assert_eq!(m0.addresses, vec!["10.10.0.5/24"]);
    let m1 = node.kernel.link("multinic1").expect("eth2 renamed");
    assert_eq!((m1.mtu, m1.up, m1.addresses.clone()), (1500, true, vec!["2001:db8:2::5/64".to_owned()]));
    assert_eq!(node.netplan_files(), vec!["50-cloud-init.yaml", "90-multinic0.yaml", "91-multinic1.yaml"]);
    // cloud-init's file and ours pass netplan together.
    check_netplan(&node);
    let first = node.applied_event(1);
    assert_eq!(first["file_writes"], 2, "{first}");

    // The same set again: the kernel sees no change at all.
    let inodes = |node: &Node| {
        ["90-multinic0.yaml", "91-multinic1.yaml"]
            .map(|f| node.root.path().join("etc/netplan").join(f).metadata().unwrap())
            .map(|m| (m.ino(), m.mtime_nsec()))
    };
    let files_before = inodes(&node);
    node.kernel.settle();
    let mut monitor = Command::new("ip")
        .args(["-n", node.kernel.name(), "monitor", "link", "address"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let report = node.push(2, &desired).await;
    assert_eq!(report.outcome, Outcome::Applied);
    tokio::time::sleep(Duration::from_millis(300)).await;
    monitor.kill().unwrap();
    let events = String::from_utf8(monitor.wait_with_output().unwrap().stdout).unwrap();
    assert_eq!(events, "", "the kernel saw changes on an identical push");
    assert_eq!(inodes(&node), files_before, "files rewritten on an identical push");
    let second = node.applied_event(2);
    assert_eq!((&second["file_writes"], &second["netlink_changes"]), (&Value::from(0), &Value::from(0)), "{second}");

    // Nothing that is not ours moved.
    assert_eq!(node.kernel.link("eth9").unwrap(), foreign_before);
    assert_eq!(node.kernel.link(PRIMARY).unwrap(), primary_before);
    assert_eq!(node.file("etc/netplan/50-cloud-init.yaml").unwrap(), cloud_init);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_mtu_then_address_then_removes_one() {
    let Some(mut node) = Node::new() else { return };
    node.kernel.add_nic("eth1", A);
    node.kernel.add_nic("eth2", B);
    node.start_agent();
    let report = node.push(1, &set(&[spec(A, Some("10.10.0.5/24"), 1500), spec(B, Some("10.20.0.5/24"), 1500)])).await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");

    let report = node.push(2, &set(&[spec(A, Some("10.10.0.5/24"), 9000), spec(B, Some("10.20.0.5/24"), 1500)])).await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    assert_eq!(node.kernel.link("multinic0").unwrap().mtu, 9000);
    assert!(node.file("etc/netplan/90-multinic0.yaml").unwrap().contains("mtu: 9000"));
    check_netplan(&node);

    let report = node.push(3, &set(&[spec(A, Some("10.10.0.9/24"), 9000), spec(B, Some("10.20.0.5/24"), 1500)])).await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    assert_eq!(node.kernel.link("multinic0").unwrap().addresses, vec!["10.10.0.9/24"], "exactly the new address");
    check_netplan(&node);
    let m1_before = node.kernel.link("multinic1").unwrap();

    let report = node.push(4, &set(&[spec(B, Some("10.20.0.5/24"), 1500)])).await;
    assert_state(&report, A, InterfaceState::Removed, ErrorCode::None);
    assert_state(&report, B, InterfaceState::Applied, ErrorCode::None);
    assert_eq!(node.netplan_files(), vec!["91-multinic1.yaml"]);
    let gone = node.kernel.link_by_mac(A).unwrap();
    // The name stays until reboot; addresses are gone and the link is down.
    assert_eq!((gone.name.as_str(), gone.up, gone.addresses.len()), ("multinic0", false, 0), "{gone:?}");
    assert_eq!(node.kernel.link("multinic1").unwrap(), m1_before, "the other interface is untouched");
    check_netplan(&node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_nic_and_the_node_address_are_refused_and_untouched() {
    let Some(mut node) = Node::new() else { return };
    node.kernel.add_nic("eth1", A);
    // A second NIC with the node's address but no default route.
    node.kernel.add_nic("ens4", "fa:16:3e:88:88:02");
    node.kernel.ip(&["link", "set", "ens4", "up"]);
    node.kernel.ip(&["addr", "add", "192.168.88.2/24", "dev", "ens4"]);
    let mut options = node.options("netlink", "netplan");
    options.extra_args = vec!["--node-ip".into(), "192.168.88.2".into()];
    node.start_with(&options);
    let primary_before = node.kernel.link(PRIMARY).unwrap();
    let ens4_before = node.kernel.link("ens4").unwrap();
    let routes_before = node.kernel.default_routes();

    let desired = set(&[
        spec(PRIMARY_MAC, Some("10.30.0.5/24"), 9000),
        spec("fa:16:3e:88:88:02", None, 9000),
        spec(A, None, 1500),
    ]);
    let report = node.push(1, &desired).await;
    assert_eq!(report.outcome, Outcome::Partial);
    assert_state(&report, PRIMARY_MAC, InterfaceState::Refused, ErrorCode::ProtectedInterface);
    assert!(status(&report, PRIMARY_MAC).message.contains("default route"), "{report:?}");
    assert_state(&report, "fa:16:3e:88:88:02", InterfaceState::Refused, ErrorCode::ProtectedInterface);
    assert!(status(&report, "fa:16:3e:88:88:02").message.contains("192.168.88.2"), "{report:?}");
    assert_state(&report, A, InterfaceState::Applied, ErrorCode::None);

    let primary = node.kernel.link(PRIMARY).expect("ens3 keeps its name");
    assert_eq!(primary, primary_before);
    assert_eq!(primary.addresses, vec![PRIMARY_V4.to_owned(), PRIMARY_V6.to_owned()]);
    assert_eq!(node.kernel.link("ens4").unwrap(), ens4_before);
    assert_eq!(node.kernel.default_routes(), routes_before);
    assert_eq!(node.netplan_files(), vec!["90-multinic0.yaml"], "no file for a refused NIC");
    check_netplan(&node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mtu_the_kernel_rejects_rolls_back_that_interface_only() {
    let Some(mut node) = Node::new() else { return };
    // A macvlan on a 1500-byte lower device: its advertised maximum is 65535,
    // but the kernel refuses anything above the lower device's MTU.
    node.kernel.add_macvlan("mv0", A, "low0", "fa:16:3e:00:0f:0f");
    node.kernel.add_nic("eth2", B);
    node.start_agent();
    let first = set(&[spec(A, Some("10.10.0.5/24"), 1500), spec(B, None, 1500)]);
    let report = node.push(1, &first).await;
    assert_eq!(report.outcome, Outcome::Applied, "{report:?}");
    let file_before = node.file("etc/netplan/90-multinic0.yaml").unwrap();
    let link_before = node.kernel.link("multinic0").unwrap();

    let second = set(&[spec(A, Some("10.10.0.9/24"), 9000), spec(B, None, 9000)]);
    let report = node.push(2, &second).await;
    assert_state(&report, A, InterfaceState::Failed, ErrorCode::MtuRejected);
    let message = &status(&report, A).message;
    assert!(message.contains("Invalid argument") && message.contains("rolled back"), "{message}");
    assert_state(&report, B, InterfaceState::Applied, ErrorCode::None);
    assert_eq!(node.kernel.link("multinic0").unwrap(), link_before, "kernel state rolled back");
    assert_eq!(node.file("etc/netplan/90-multinic0.yaml").unwrap(), file_before, "file rolled back");
    assert_eq!(node.kernel.link("multinic1").unwrap().mtu, 9000);
    assert_eq!(node.applied_event(2)["rollbacks"], 1);
    assert!(std::fs::read_dir(node.state.path().join("journal")).unwrap().next().is_none(), "journal cleared");
    check_netplan(&node);

    // A NIC seen for the first time and refused gets its own name back.
    node.kernel.add_macvlan("mv1", "fa:16:3e:00:01:03", "low1", "fa:16:3e:00:0f:1f");
    let third = set(&[spec(A, Some("10.10.0.5/24"), 1500), spec(B, None, 9000), spec("fa:16:3e:00:01:03", None, 9000)]);
    let report = node.push(3, &third).await;
    assert_state(&report, "fa:16:3e:00:01:03", InterfaceState::Failed, ErrorCode::MtuRejected);
    let mv1 = node.kernel.link_by_mac("fa:16:3e:00:01:03").unwrap();
    assert_eq!((mv1.name.as_str(), mv1.mtu), ("mv1", 1500));
    assert!(node.file("etc/netplan/92-multinic2.yaml").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_between_write_and_verify_is_rolled_back_on_restart() {
    let Some(mut node) = Node::new() else { return };
    node.kernel.add_nic("eth1", A);
    node.start_agent();
    let before = set(&[spec(A, Some("10.10.0.5/24"), 1500)]);
    assert_eq!(node.push(1, &before).await.outcome, Outcome::Applied);
    let file_before = node.file("etc/netplan/90-multinic0.yaml").unwrap();
    let link_before = node.kernel.link("multinic0").unwrap();
    node.agent.as_mut().unwrap().kill();

    // Second agent: stops after writing and applying, before verifying.
    let marker = node.state.path().join("paused");
    let mut options = node.options("netlink", "netplan");
    options.env = vec![("MULTINIC_TEST_PAUSE_AFTER_WRITE".into(), marker.display().to_string())];
    node.start_with(&options);
    node.controller.hello(2, WAIT).await;
    node.controller.push(2, &set(&[spec(A, Some("10.10.0.9/24"), 9000)])).await;
    eventually(WAIT, "the agent paused after writing", || async { marker.exists().then_some(()) }).await;
    let changed = node.kernel.link("multinic0").unwrap();
    assert_eq!((changed.mtu, changed.addresses.clone()), (9000, vec!["10.10.0.9/24".to_owned()]), "change made");
    assert!(node.file("etc/netplan/90-multinic0.yaml").unwrap().contains("mtu: 9000"));
    node.agent.as_mut().unwrap().kill();
    assert!(std::fs::read_dir(node.state.path().join("journal")).unwrap().next().is_some(), "journal left behind");

    // Third agent: rolls back before it even says Hello.
    node.start_agent();
    node.controller.hello(3, WAIT).await;
    assert_eq!(node.kernel.link("multinic0").unwrap(), link_before);
    assert_eq!(node.file("etc/netplan/90-multinic0.yaml").unwrap(), file_before);
    assert!(std::fs::read_dir(node.state.path().join("journal")).unwrap().next().is_none());
    let recovered = node.agent().events("rolled back a change interrupted by a crash");
    assert_eq!(recovered.len(), 1, "{}", node.agent().log_text());
    check_netplan(&node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eleven_interfaces_the_eleventh_is_refused_for_capacity() {
    let Some(mut node) = Node::new() else { return };
    let macs: Vec<String> = (1..=11).map(|i| format!("fa:16:3e:00:02:{i:02x}")).collect();
    for (i, mac) in macs.iter().enumerate() {
        node.kernel.add_nic(&format!("eth{}", i + 1), mac);
    }
    node.start_with(&node.options("netlink", "wicked"));
    let desired = set(&macs.iter().map(|m| spec(m, None, 1500)).collect::<Vec<_>>());
    let report = node.push(1, &desired).await;
    assert_eq!(report.outcome, Outcome::Partial);
    for (i, mac) in macs.iter().take(10).enumerate() {
        assert_state(&report, mac, InterfaceState::Applied, ErrorCode::None);
        let link = node.kernel.link(&format!("multinic{i}")).unwrap();
        assert_eq!((link.mac.as_str(), link.up), (mac.as_str(), true));
        let rule = node.file(&format!("etc/udev/rules.d/70-multinic-multinic{i}.rules")).unwrap();
        assert!(
            rule.contains(&format!("ATTR{{address}}==\"{mac}\"")) && rule.contains(&format!("NAME=\"multinic{i}\""))
        );
        let ifcfg = node.file(&format!("etc/sysconfig/network/ifcfg-multinic{i}")).unwrap();
        assert!(ifcfg.contains("STARTMODE='auto'") && ifcfg.contains("MTU='1500'") && !ifcfg.contains("LLADDR"));
    }
    assert_state(&report, &macs[10], InterfaceState::Refused, ErrorCode::CapacityExceeded);
    assert!(status(&report, &macs[10]).message.contains("--capacity"));
    assert_eq!(node.kernel.link_by_mac(&macs[10]).unwrap().name, "eth11", "the eleventh NIC is untouched");
}
