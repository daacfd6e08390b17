//! The reconciler against an in-memory kernel and a temporary host root
//! (its helpers serve the worker's tests too).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use multinic_proto::{DesiredSet, ErrorCode, InterfaceName, InterfaceSpec, InterfaceState, MacAddress, Mtu};

use super::*;
use crate::backend::{netplan::Netplan, wicked::Wicked};
use crate::files::HostFiles;
use crate::journal::{Entry, Journal, SavedFile};
use crate::kernel::memory::MemoryKernel;
use crate::kernel::{KernelState, LinkState};

pub(crate) fn mac(i: u8) -> MacAddress {
    MacAddress::from_octets([2, 0, 0, 0, 0, i]).unwrap()
}

pub(crate) fn spec(i: u8, address: Option<&str>, mtu: i64) -> InterfaceSpec {
    InterfaceSpec::new(mac(i), address.map(|a| a.parse().unwrap()), Mtu::new(mtu).unwrap()).unwrap()
}

pub(crate) fn link(index: u32, name: &str, i: u8) -> LinkState {
    LinkState {
        index,
        name: name.into(),
        mac: Some(mac(i)),
        perm_mac: None,
        mtu: 1500,
        min_mtu: Some(68),
        max_mtu: Some(65535),
        up: false,
        master: None,
        lower: None,
        kind: Some("veth".into()),
        addresses: ["fe80::1/64".parse().unwrap()].into(),
    }
}

/// A node whose `ens3` (MAC 99) carries the default route, plus `links`.
pub(crate) fn node(dir: &Path, apply: ApplyMode, links: Vec<LinkState>) -> (Reconciler, Arc<MemoryKernel>) {
    let mut primary = link(1, "ens3", 99);
    primary.up = true;
    primary.addresses.insert("192.168.77.2/24".parse().unwrap());
    let mut all = vec![primary];
    all.extend(links);
    let kernel = Arc::new(MemoryKernel::new(KernelState { links: all, default_route_links: [1].into() }));
    let reconciler =
        Reconciler::new(&Netplan, HostFiles::new(dir), 10, apply, Journal::new(&dir.join("var/lib/multinic")))
            .with_kernel(kernel.clone() as Arc<dyn LinkOps>);
    (reconciler, kernel)
}

fn by_name<'a>(state: &'a KernelState, name: &str) -> &'a LinkState {
    state.links.iter().find(|l| l.name == name).unwrap_or_else(|| panic!("no link {name} in {state:?}"))
}

fn addrs(link: &LinkState) -> Vec<String> {
    link.managed_addresses().iter().map(ToString::to_string).collect()
}

fn state_of(outcome: &Outcome, i: u8) -> (InterfaceState, ErrorCode, String) {
    let s = outcome.statuses.iter().find(|s| s.mac == mac(i)).unwrap_or_else(|| panic!("no status for {i}"));
    (s.state, s.code, s.message.clone())
}

#[test]
fn applies_two_interfaces_then_a_repeat_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (r, kernel) = node(dir.path(), ApplyMode::Netlink, vec![link(2, "eth1", 1), link(3, "eth2", 2)]);
    let set = DesiredSet::new([spec(1, Some("10.0.0.5/24"), 9000), spec(2, Some("2001:db8::5/64"), 1500)]).unwrap();
    let out = r.reconcile(&set);
    assert!(out.statuses.iter().all(|s| s.state == InterfaceState::Applied), "{out:?}");
    assert_eq!(out.file_writes, 2);
    assert!(out.netlink_changes >= 5, "{out:?}");
    let state = kernel.state();
    let m0 = by_name(&state, "multinic0");
    assert_eq!((m0.mtu, m0.up, addrs(m0)), (9000, true, vec!["10.0.0.5/24".to_owned()]));
    assert_eq!(addrs(by_name(&state, "multinic1")), vec!["2001:db8::5/64"]);
    assert!(r.journal.pending().unwrap().is_empty(), "verified changes leave no journal");

    let again = r.reconcile(&set);
    assert_eq!((again.file_writes, again.netlink_changes, again.rollbacks), (0, 0, 0));
    assert!(again.statuses.iter().all(|s| s.state == InterfaceState::Applied));
}

#[test]
fn drift_is_repaired_with_exactly_the_missing_steps() {
    let dir = tempfile::tempdir().unwrap();
    let (r, kernel) = node(dir.path(), ApplyMode::Netlink, vec![link(2, "eth1", 1)]);
    let set = DesiredSet::new([spec(1, Some("10.0.0.5/24"), 1500)]).unwrap();
    r.reconcile(&set);
    kernel.edit(|s| {
        let l = s.links.iter_mut().find(|l| l.index == 2).unwrap();
        l.addresses.insert("10.9.9.9/8".parse().unwrap());
        l.mtu = 1400;
    });
    let out = r.reconcile(&set);
    assert_eq!((out.file_writes, out.netlink_changes), (0, 2), "{out:?}");
    assert_eq!(addrs(by_name(&kernel.state(), "multinic0")), vec!["10.0.0.5/24"]);
}

#[test]
fn a_missing_mac_waits_and_only_it_is_applied_when_it_appears() {
    let dir = tempfile::tempdir().unwrap();
    let (r, kernel) = node(dir.path(), ApplyMode::Netlink, vec![link(2, "eth1", 1)]);
    let set = DesiredSet::new([spec(1, None, 1500), spec(2, Some("10.0.2.5/24"), 1500)]).unwrap();
    let out = r.reconcile(&set);
    assert_eq!(state_of(&out, 1).0, InterfaceState::Applied);
    assert_eq!(state_of(&out, 2).0, InterfaceState::Waiting);
    assert_eq!(state_of(&out, 2).1, ErrorCode::MacNotPresent);
    assert!(dir.path().join("etc/netplan/91-multinic1.yaml").exists(), "the waiting MAC keeps its name in a file");
    assert!(r.present(&[mac(2)].into()).unwrap().is_empty());

    // Someone breaks multinic0 meanwhile: a scoped pass must not repair it.
    kernel.edit(|s| s.links.iter_mut().find(|l| l.index == 2).unwrap().mtu = 1400);
    kernel.plug(link(3, "eth5", 2));
    let appeared = r.present(&[mac(2)].into()).unwrap();
    assert_eq!(appeared, BTreeSet::from([mac(2)]));
    let out = r.reconcile_in(&set, Scope::Only(&appeared));
    assert_eq!(out.statuses.len(), 1, "{out:?}");
    assert_eq!(state_of(&out, 2).0, InterfaceState::Applied);
    assert_eq!(out.file_writes, 0);
    assert_eq!(out.netlink_changes, 3, "rename, up, address: {out:?}");
    let state = kernel.state();
    assert_eq!(addrs(by_name(&state, "multinic1")), vec!["10.0.2.5/24"]);
    assert_eq!(by_name(&state, "multinic0").mtu, 1400, "nothing else touched");
}

#[test]
fn the_default_route_nic_is_refused_and_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let (r, kernel) = node(dir.path(), ApplyMode::Netlink, vec![]);
    let before = kernel.state();
    let out = r.reconcile(&DesiredSet::new([spec(99, None, 9000)]).unwrap());
    let (state, code, message) = state_of(&out, 99);
    assert_eq!((state, code), (InterfaceState::Refused, ErrorCode::ProtectedInterface));
    assert!(message.contains("ens3") && message.contains("default route"), "{message}");
    assert_eq!((out.file_writes, out.netlink_changes), (0, 0));
    assert_eq!(kernel.state(), before);
}

#[test]
fn an_mtu_outside_the_device_range_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut small = link(2, "eth1", 1);
    small.max_mtu = Some(1500);
    let (r, _kernel) = node(dir.path(), ApplyMode::Netlink, vec![small]);
    let out = r.reconcile(&DesiredSet::new([spec(1, None, 9000)]).unwrap());
    let (state, code, message) = state_of(&out, 1);
    assert_eq!((state, code), (InterfaceState::Failed, ErrorCode::MtuRejected));
    assert!(message.contains("68..1500"), "{message}");
    assert_eq!((out.file_writes, out.netlink_changes), (0, 0));
}

#[test]
fn a_kernel_refusal_rolls_back_that_interface_only() {
    let dir = tempfile::tempdir().unwrap();
    let (r, kernel) = node(dir.path(), ApplyMode::Netlink, vec![link(2, "mv0", 1), link(3, "eth2", 2)]);
    kernel.reject_mtu_above(2, 1500);
    let first = DesiredSet::new([spec(1, Some("10.0.1.5/24"), 1500), spec(2, None, 1500)]).unwrap();
    assert!(r.reconcile(&first).statuses.iter().all(|s| s.state == InterfaceState::Applied));
    let file = dir.path().join("etc/netplan/90-multinic0.yaml");
    let file_before = std::fs::read_to_string(&file).unwrap();

    let second = DesiredSet::new([spec(1, Some("10.0.1.9/24"), 9000), spec(2, None, 9000)]).unwrap();
    let out = r.reconcile(&second);
    let (state, code, message) = state_of(&out, 1);
    assert_eq!((state, code), (InterfaceState::Failed, ErrorCode::MtuRejected), "{message}");
    assert!(message.contains("greater than device maximum") && message.contains("rolled back"), "{message}");
    assert_eq!(state_of(&out, 2).0, InterfaceState::Applied);
    assert_eq!(out.rollbacks, 1);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), file_before, "previous file restored");
    let state = kernel.state();
    let m0 = by_name(&state, "multinic0");
    assert_eq!((m0.mtu, m0.up, addrs(m0)), (1500, true, vec!["10.0.1.5/24".to_owned()]));
    assert_eq!(by_name(&state, "multinic1").mtu, 9000);
    assert!(r.journal.pending().unwrap().is_empty());
}

#[test]
fn a_fresh_nic_refused_by_the_kernel_gets_its_name_back() {
    let dir = tempfile::tempdir().unwrap();
    let (r, kernel) = node(dir.path(), ApplyMode::Netlink, vec![link(2, "mv0", 1)]);
    kernel.reject_mtu_above(2, 1500);
    let out = r.reconcile(&DesiredSet::new([spec(1, None, 9000)]).unwrap());
    assert_eq!(state_of(&out, 1).1, ErrorCode::MtuRejected);
    let state = kernel.state();
    let mv0 = by_name(&state, "mv0");
    assert_eq!((mv0.mtu, mv0.up), (1500, false));
    assert!(!dir.path().join("etc/netplan/90-multinic0.yaml").exists(), "a file that did not exist is removed");
}

#[test]
fn a_failed_verification_is_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let (r, kernel) = node(dir.path(), ApplyMode::Netlink, vec![link(2, "eth1", 1)]);
    // Something else (a DHCP client, say) takes the address away again.
    kernel.drop_addresses_on(2);
    let out = r.reconcile(&DesiredSet::new([spec(1, Some("10.0.0.5/24"), 1500)]).unwrap());
    let (state, code, message) = state_of(&out, 1);
    assert_eq!((state, code), (InterfaceState::Failed, ErrorCode::VerifyFailed));
    assert!(message.contains("addresses [], want [10.0.0.5/24]"), "{message}");
    assert!(!by_name(&kernel.state(), "eth1").up, "back to its previous name and state");
    assert_eq!(out.rollbacks, 1);
}

#[test]
fn removal_drops_files_and_addresses_and_keeps_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let (r, kernel) = node(dir.path(), ApplyMode::Netlink, vec![link(2, "eth1", 1), link(3, "eth2", 2)]);
    let both = DesiredSet::new([spec(1, Some("10.0.0.5/24"), 9000), spec(2, None, 1500)]).unwrap();
    r.reconcile(&both);
    let out = r.reconcile(&DesiredSet::new([spec(2, None, 1500)]).unwrap());
    assert_eq!(state_of(&out, 1).0, InterfaceState::Removed);
    assert!(!dir.path().join("etc/netplan/90-multinic0.yaml").exists());
    let state = kernel.state();
    let gone = by_name(&state, "multinic0");
    assert_eq!((gone.up, addrs(gone), gone.mtu), (false, Vec::<String>::new(), 9000));
    assert!(by_name(&state, "multinic1").up);

    // A new MAC does not take the name the old NIC still carries.
    kernel.plug(link(4, "eth3", 3));
    let out = r.reconcile(&DesiredSet::new([spec(2, None, 1500), spec(3, None, 1500)]).unwrap());
    assert_eq!(out.statuses.iter().find(|s| s.mac == mac(3)).unwrap().name, InterfaceName::new(2, 10));
}

#[test]
fn an_interrupted_change_is_rolled_back_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (r, kernel) = node(dir.path(), ApplyMode::Netlink, vec![link(2, "eth1", 1)]);
    // The journal as a change writes it, then the change, then a crash.
    let before = kernel.state();
    let name = InterfaceName::new(0, 10).unwrap();
    let path = crate::backend::netplan::path(name);
    let entry =
        Entry::new(name, mac(1), vec![SavedFile { path: path.clone(), contents: None }], Some(&before.links[1]));
    assert!(r.journal.record(&entry).unwrap());
    r.files.write_atomic(&path, "half written").unwrap();
    kernel.rename(2, "multinic0").unwrap();
    kernel.set_mtu(2, 9000).unwrap();

    assert_eq!(r.recover(), 1);
    assert_eq!(kernel.state(), before);
    assert!(!r.files.exists(&path));
    assert!(r.journal.pending().unwrap().is_empty());
    assert_eq!(r.recover(), 0);
}

#[test]
fn a_dry_run_writes_files_and_never_touches_the_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let (r, kernel) = node(dir.path(), ApplyMode::None, vec![link(2, "eth1", 1)]);
    let set = DesiredSet::new([spec(1, None, 1500), spec(7, None, 1500), spec(99, None, 1500)]).unwrap();
    let out = r.reconcile(&set);
    assert_eq!(state_of(&out, 1).0, InterfaceState::Applied);
    assert_eq!(state_of(&out, 7).0, InterfaceState::Applied, "no waiting in a dry run");
    assert_eq!(state_of(&out, 99).1, ErrorCode::ProtectedInterface, "protection still applies");
    assert_eq!((out.file_writes, out.netlink_changes), (2, 0));

    kernel.set_unreadable(true);
    let out = r.reconcile(&DesiredSet::new([spec(3, None, 1500)]).unwrap());
    assert_eq!(state_of(&out, 3).0, InterfaceState::Applied, "a dry run degrades without netlink");
}

#[test]
fn without_kernel_access_nothing_changes_in_netlink_mode() {
    let dir = tempfile::tempdir().unwrap();
    let (r, kernel) = node(dir.path(), ApplyMode::Netlink, vec![link(2, "eth1", 1)]);
    kernel.set_unreadable(true);
    let out = r.reconcile(&DesiredSet::new([spec(1, None, 1500)]).unwrap());
    let (state, code, message) = state_of(&out, 1);
    assert_eq!((state, code), (InterfaceState::Failed, ErrorCode::ApplyFailed));
    assert!(message.contains("cannot read the kernel"), "{message}");
    assert_eq!(out.file_writes, 0);
}

#[test]
fn writes_then_noop_then_removes_in_a_dry_run() {
    let dir = tempfile::tempdir().unwrap();
    let r = Reconciler::new(
        &Netplan,
        HostFiles::new(dir.path()),
        10,
        ApplyMode::None,
        Journal::new(&dir.path().join("state")),
    );
    let set = DesiredSet::new([spec(1, None, 1500), spec(2, None, 1500)]).unwrap();
    let out = r.reconcile(&set);
    assert_eq!(out.changes, 2);
    assert!(out.statuses.iter().all(|s| s.state == InterfaceState::Applied));
    let again = r.reconcile(&set);
    assert_eq!(again.changes, 0);
    let out = r.reconcile(&DesiredSet::new([spec(2, None, 1500)]).unwrap());
    assert_eq!(state_of(&out, 1).0, InterfaceState::Removed);
    assert!(!dir.path().join("etc/netplan/90-multinic0.yaml").exists());
    assert!(dir.path().join("etc/netplan/91-multinic1.yaml").exists(), "the other interface keeps its name");
}

#[test]
fn foreign_files_are_never_touched() {
    let dir = tempfile::tempdir().unwrap();
    let netplan = dir.path().join("etc/netplan");
    std::fs::create_dir_all(&netplan).unwrap();
    for foreign in ["50-cloud-init.yaml", "91-multinic1.txt", "invalid.yaml"] {
        std::fs::write(netplan.join(foreign), "network: {version: 2}\n").unwrap();
    }
    let (r, _kernel) = node(dir.path(), ApplyMode::Netlink, vec![link(2, "eth1", 1)]);
    r.reconcile(&DesiredSet::new([spec(1, None, 1500)]).unwrap());
    r.reconcile(&DesiredSet::empty());
    let mut left: Vec<_> =
        std::fs::read_dir(&netplan).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    left.sort();
    assert_eq!(left, vec!["50-cloud-init.yaml", "91-multinic1.txt", "invalid.yaml"]);
}

#[test]
fn wicked_files_are_written_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = Arc::new(MemoryKernel::new(KernelState { links: vec![link(2, "eth1", 1)], ..Default::default() }));
    let r = Reconciler::new(
        &Wicked,
        HostFiles::new(dir.path()),
        10,
        ApplyMode::Netlink,
        Journal::new(&dir.path().join("state")),
    )
    .with_kernel(kernel.clone() as Arc<dyn LinkOps>);
    let set = DesiredSet::new([spec(1, Some("10.0.0.5/24"), 1500)]).unwrap();
    assert_eq!(r.reconcile(&set).file_writes, 2);
    assert!(dir.path().join("etc/sysconfig/network/ifcfg-multinic0").exists());
    assert!(dir.path().join("etc/udev/rules.d/70-multinic-multinic0.rules").exists());
    assert_eq!(r.reconcile(&set).changes, 0);
}

#[test]
fn a_damaged_file_of_ours_is_moved_aside_and_its_interface_rendered_anew() {
    let dir = tempfile::tempdir().unwrap();
    // The NIC is already named multinic0 by the kernel (from that file).
    let (r, _kernel) = node(dir.path(), ApplyMode::Netlink, vec![link(2, "multinic0", 1), link(3, "eth2", 2)]);
    let netplan = dir.path().join("etc/netplan");
    std::fs::create_dir_all(&netplan).unwrap();
    std::fs::write(netplan.join("90-multinic0.yaml"), "network:\n  version: 2\n  ethernets:\n    multin").unwrap();
    std::fs::write(netplan.join("50-cloud-init.yaml"), "network: {version: 2}\n").unwrap();

    let set = DesiredSet::new([spec(1, None, 1500), spec(2, None, 1500)]).unwrap();
    let out = r.reconcile(&set);
    assert!(out.statuses.iter().all(|s| s.state == InterfaceState::Applied), "{out:?}");
    let quarantine = dir.path().join("var/lib/multinic/quarantine");
    let kept: Vec<_> = std::fs::read_dir(&quarantine).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(kept[0].to_string_lossy().starts_with("90-multinic0.yaml."));
    // MAC 1 keeps the kernel's name; the file is ours again and parses.
    let file = std::fs::read_to_string(netplan.join("90-multinic0.yaml")).unwrap();
    assert!(file.contains("02:00:00:00:00:01"), "{file}");
    assert!(netplan.join("91-multinic1.yaml").exists());
    assert!(netplan.join("50-cloud-init.yaml").exists(), "foreign files stay");
}

#[test]
fn held_macs_keep_their_files_and_are_reported_held() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _kernel) = node(dir.path(), ApplyMode::Netlink, vec![link(2, "eth1", 1), link(3, "eth2", 2)]);
    r.reconcile(&DesiredSet::new([spec(1, None, 1500), spec(2, None, 9000)]).unwrap());
    let file = dir.path().join("etc/netplan/91-multinic1.yaml");
    let before = std::fs::read_to_string(&file).unwrap();

    let out = r.reconcile(&DesiredSet::with_held([spec(1, None, 1500)], [mac(2)]).unwrap());
    assert_eq!(state_of(&out, 2).0, InterfaceState::Held);
    assert_eq!(out.file_writes, 0);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before, "a held MAC's file is left as it is");
    assert_eq!(multinic_proto::Outcome::of(&out.statuses), multinic_proto::Outcome::Applied, "{out:?}");
}

#[test]
fn something_other_than_a_file_at_our_path_is_left_alone_and_only_its_nic_is_refused() {
    use std::os::unix::fs::FileTypeExt;
    for kind in ["fifo", "link to /dev/zero", "2 GiB file"] {
        let dir = tempfile::tempdir().unwrap();
        let (r, kernel) = node(dir.path(), ApplyMode::Netlink, vec![link(2, "eth1", 1), link(3, "eth2", 2)]);
        let first = DesiredSet::new([spec(1, None, 1500), spec(2, None, 1500)]).unwrap();
        assert!(r.reconcile(&first).statuses.iter().all(|s| s.state == InterfaceState::Applied));
        let ours = dir.path().join("etc/netplan/90-multinic0.yaml");
        std::fs::remove_file(&ours).unwrap();
        match kind {
            "fifo" => assert!(std::process::Command::new("mkfifo").arg(&ours).status().unwrap().success()),
            "link to /dev/zero" => std::os::unix::fs::symlink("/dev/zero", &ours).unwrap(),
            _ => std::fs::File::create(&ours).unwrap().set_len(2 << 30).unwrap(),
        }
        let before = std::fs::symlink_metadata(&ours).unwrap();

        let out = r.reconcile(&DesiredSet::new([spec(1, None, 9000), spec(2, None, 9000)]).unwrap());
        let (state, code, message) = state_of(&out, 1);
        assert_eq!((state, code), (InterfaceState::Refused, ErrorCode::CorruptFile), "{kind}: {message}");
        assert!(message.contains("90-multinic0.yaml") && message.contains("not read"), "{kind}: {message}");
        assert_eq!(state_of(&out, 2).0, InterfaceState::Applied, "{kind}: the others go on");
        let state = kernel.state();
        assert_eq!(by_name(&state, "multinic0").mtu, 1500, "{kind}: its NIC is not touched");
        assert_eq!(by_name(&state, "multinic1").mtu, 9000);
        let after = std::fs::symlink_metadata(&ours).unwrap();
        assert_eq!(
            (after.file_type().is_fifo(), after.len(), after.modified().unwrap()),
            (before.file_type().is_fifo(), before.len(), before.modified().unwrap()),
            "{kind}: left as it was"
        );
        assert!(r.journal.pending().unwrap().is_empty());
    }
}

#[test]
fn a_file_of_ours_with_the_wrong_mode_is_repaired_in_place_and_counted() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let (r, _kernel) = node(dir.path(), ApplyMode::Netlink, vec![link(2, "eth1", 1)]);
    let set = DesiredSet::new([spec(1, Some("10.0.0.5/24"), 1500)]).unwrap();
    r.reconcile(&set);
    let file = dir.path().join("etc/netplan/90-multinic0.yaml");
    let before = std::fs::metadata(&file).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();

    let out = r.reconcile(&set);
    assert_eq!((out.changes, out.file_writes, out.netlink_changes), (1, 1, 0), "{out:?}");
    assert_eq!(state_of(&out, 1).0, InterfaceState::Applied);
    let after = std::fs::metadata(&file).unwrap();
    assert_eq!(after.mode() & 0o7777, 0o600);
    assert_eq!((after.ino(), after.mtime_nsec()), (before.ino(), before.mtime_nsec()), "not rewritten");
    assert_eq!(r.reconcile(&set).changes, 0, "and then a no-op again");
}

#[test]
fn a_mac_another_netplan_file_defines_is_refused_and_nothing_of_it_touched() {
    let dir = tempfile::tempdir().unwrap();
    let (r, kernel) = node(dir.path(), ApplyMode::Netlink, vec![link(2, "eth1", 1), link(3, "eth2", 2)]);
    let set = DesiredSet::new([spec(1, Some("10.0.0.5/24"), 1500), spec(2, None, 1500)]).unwrap();
    r.reconcile(&set);
    let ours = std::fs::read_to_string(dir.path().join("etc/netplan/90-multinic0.yaml")).unwrap();
    let cloud_init = "network:\n  version: 2\n  ethernets:\n    ens4:\n      match:\n        macaddress: \
                      02:00:00:00:00:01\n      set-name: ens4\n      mtu: 1400\n";
    let foreign = dir.path().join("etc/netplan/50-cloud-init.yaml");
    std::fs::write(&foreign, cloud_init).unwrap();
    let before = kernel.state();

    let changed = DesiredSet::new([spec(1, Some("10.0.0.9/24"), 9000), spec(2, None, 9000)]).unwrap();
    let out = r.reconcile(&changed);
    let (state, code, message) = state_of(&out, 1);
    assert_eq!((state, code), (InterfaceState::Refused, ErrorCode::ForeignInterface), "{message}");
    assert!(
        message.contains("/etc/netplan/50-cloud-init.yaml as ethernets.ens4 (set-name ens4, mtu 1400)"),
        "{message}"
    );
    assert_eq!(state_of(&out, 2).0, InterfaceState::Applied, "the other MAC goes on");
    assert_eq!(by_name(&kernel.state(), "multinic0"), by_name(&before, "multinic0"), "its NIC untouched");
    assert_eq!(std::fs::read_to_string(dir.path().join("etc/netplan/90-multinic0.yaml")).unwrap(), ours);
    assert_eq!(std::fs::read_to_string(&foreign).unwrap(), cloud_init, "the other file is only read");
}

#[test]
fn a_write_that_fails_before_changing_anything_says_so_and_leaves_no_journal() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _kernel) = node(dir.path(), ApplyMode::Netlink, vec![link(2, "eth1", 1)]);
    // The folder cannot be made (a file sits where it belongs), as with a
    // read-only one: the write fails and there is nothing to restore.
    std::fs::create_dir_all(dir.path().join("etc")).unwrap();
    std::fs::write(dir.path().join("etc/netplan"), "").unwrap();
    let out = r.reconcile(&DesiredSet::new([spec(1, None, 1500)]).unwrap());
    let (state, code, message) = state_of(&out, 1);
    assert_eq!((state, code), (InterfaceState::Failed, ErrorCode::WriteFailed), "{message}");
    assert!(message.ends_with("; nothing had changed"), "{message}");
    assert!(r.journal.pending().unwrap().is_empty(), "no stale journal entry");
}

#[test]
fn a_rollback_that_cannot_restore_says_so_and_keeps_the_journal_until_a_verified_change() {
    let dir = tempfile::tempdir().unwrap();
    let mut jumbo = link(2, "eth1", 1);
    jumbo.mtu = 9000;
    let (r, kernel) = node(dir.path(), ApplyMode::Netlink, vec![jumbo]);
    // The MTU can be lowered but not raised back, and the address vanishes:
    // verification fails and the rollback cannot restore MTU 9000.
    kernel.reject_mtu_above(2, 1500);
    kernel.drop_addresses_on(2);
    let out = r.reconcile(&DesiredSet::new([spec(1, Some("10.0.0.5/24"), 1500)]).unwrap());
    let (state, code, message) = state_of(&out, 1);
    assert_eq!((state, code), (InterfaceState::Failed, ErrorCode::VerifyFailed), "{message}");
    assert!(message.contains("rollback incomplete (") && !message.contains("rolled back to the previous"), "{message}");
    let pending = r.journal.pending().unwrap();
    assert_eq!(pending.len(), 1, "the entry holds the last good state");
    assert_eq!(pending[0].1.as_ref().unwrap().link.as_ref().unwrap().mtu, 9000);

    // Once the interface is verified as desired, the entry has nothing left to restore.
    let out = r.reconcile(&DesiredSet::new([spec(1, None, 1500)]).unwrap());
    assert_eq!(state_of(&out, 1).0, InterfaceState::Applied, "{out:?}");
    assert!(r.journal.pending().unwrap().is_empty());
}

#[test]
fn a_rollback_never_replaces_something_it_did_not_write() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _kernel) = node(dir.path(), ApplyMode::Netlink, vec![link(2, "eth1", 1)]);
    let name = InterfaceName::new(0, 10).unwrap();
    let path = crate::backend::netplan::path(name);
    let entry = Entry::new(name, mac(1), vec![SavedFile { path: path.clone(), contents: None }], None);
    assert!(r.journal.record(&entry).unwrap());
    std::fs::create_dir_all(r.files.abs(&path).parent().unwrap()).unwrap();
    assert!(std::process::Command::new("mkfifo").arg(r.files.abs(&path)).status().unwrap().success());

    assert_eq!(r.recover(), 0, "not rolled back");
    assert!(std::fs::symlink_metadata(r.files.abs(&path)).is_ok(), "the FIFO is left where it is");
    assert_eq!(r.journal.pending().unwrap().len(), 1, "the entry is kept");
}

#[test]
fn the_predecessors_file_keeps_the_name_and_goes_only_once_ours_is_verified() {
    use crate::backend::networkmanager::NetworkManager;
    let dir = tempfile::tempdir().unwrap();
    // The predecessor named MAC 1 multinic2 and MAC 2 multinic5 (absent now);
    // MAC 3's NIC swallows addresses, so its verification fails.
    let scripts = dir.path().join("etc/sysconfig/network-scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    let old = |n: u8, i: u8| {
        format!(
            "DEVICE=multinic{n}\nNAME=multinic{n}\nTYPE=Ethernet\nONBOOT=yes\nBOOTPROTO=none\nIPADDR=10.0.{i}.5\nPREFIX=24\nMTU=1500\nHWADDR=02:00:00:00:00:0{i}"
        )
    };
    for (n, i) in [(2, 1), (5, 2), (7, 3)] {
        std::fs::write(scripts.join(format!("ifcfg-multinic{n}")), old(n, i)).unwrap();
    }
    std::fs::write(scripts.join("ifcfg-eth0"), "DEVICE=eth0\n").unwrap();
    let mode_before = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(scripts.join("ifcfg-multinic7")).unwrap().permissions(),
    ) & 0o777;
    let mut one = link(2, "multinic2", 1);
    one.up = true;
    one.addresses.insert("10.0.1.5/24".parse().unwrap());
    let kernel =
        Arc::new(MemoryKernel::new(KernelState { links: vec![one, link(3, "multinic7", 3)], ..Default::default() }));
    kernel.drop_addresses_on(3);
    let r = Reconciler::new(
        &NetworkManager,
        HostFiles::new(dir.path()),
        10,
        ApplyMode::Netlink,
        Journal::new(&dir.path().join("state")),
    )
    .with_kernel(kernel.clone() as Arc<dyn LinkOps>);
    let set = DesiredSet::new([
        spec(1, Some("10.0.1.5/24"), 1500),
        spec(2, Some("10.0.2.5/24"), 1500),
        spec(3, Some("10.0.3.5/24"), 1500),
    ])
    .unwrap();
    let out = r.reconcile(&set);
    assert_eq!(state_of(&out, 1).0, InterfaceState::Applied);
    assert_eq!(state_of(&out, 2).0, InterfaceState::Waiting);
    assert_eq!(state_of(&out, 3).1, ErrorCode::VerifyFailed);
    let names: Vec<_> = out.statuses.iter().map(|s| s.name.unwrap().to_string()).collect();
    assert_eq!(names, ["multinic2", "multinic5", "multinic7"], "every MAC keeps the predecessor's name");
    assert_eq!(out.netlink_changes, 3, "MAC 1 needed nothing; MAC 3: up, its address, then down again");
    assert!(!scripts.join("ifcfg-multinic2").exists(), "retired once ours is verified");
    assert_eq!(std::fs::read_to_string(scripts.join("ifcfg-multinic5")).unwrap(), old(5, 2), "not while waiting");
    assert_eq!(std::fs::read_to_string(scripts.join("ifcfg-multinic7")).unwrap(), old(7, 3), "not after a failure");
    let mode = |n: u8| {
        std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(scripts.join(format!("ifcfg-multinic{n}"))).unwrap().permissions(),
        ) & 0o777
    };
    assert_eq!((mode(5), mode(7)), (mode_before, mode_before), "the rollback left the predecessor's file as it was");
    assert!(dir.path().join("etc/NetworkManager/system-connections/multinic2.nmconnection").exists());
    assert!(!dir.path().join("etc/NetworkManager/system-connections/multinic7.nmconnection").exists());
    assert!(scripts.join("ifcfg-eth0").exists());
    let again = r.reconcile(&DesiredSet::new([spec(1, Some("10.0.1.5/24"), 1500)]).unwrap());
    assert_eq!(state_of(&again, 1).0, InterfaceState::Applied);
    assert_eq!(again.statuses.len(), 3, "the others are removed now: {again:?}");
}
