//! The drift check against an in-memory kernel and a temporary host root:
//! each kind of drift is named from what to what, a node as applied is in
//! line, and the check itself changes nothing.

use std::collections::BTreeMap;
use std::path::Path;

use multinic_proto::{DesiredSet, DriftKind, InterfaceState, MacAddress};

use super::*;
use crate::backend::Backend;
use crate::kernel::memory::MemoryKernel;
use crate::reconcile::Scope;
use crate::reconcile::tests::{link, mac, node, spec};

/// A node with two NICs of ours applied (A: 10.0.0.5/24 MTU 9000 on
/// multinic0, B: no address on multinic1) and one NIC that is not ours.
fn applied_node(dir: &Path) -> (Reconciler, std::sync::Arc<MemoryKernel>, DesiredSet) {
    let mut foreign = link(9, "eth9", 9);
    foreign.up = true;
    let (r, kernel) = node(dir, ApplyMode::Netlink, vec![link(2, "eth1", 1), link(3, "eth2", 2), foreign]);
    let set = DesiredSet::new([spec(1, Some("10.0.0.5/24"), 9000), spec(2, None, 1500)]).unwrap();
    let out = r.reconcile(&set);
    assert!(out.statuses.iter().all(|s| s.state == InterfaceState::Applied), "{out:?}");
    (r, kernel, set)
}

fn applied(set: &DesiredSet) -> BTreeMap<MacAddress, InterfaceState> {
    set.iter().map(|s| (s.mac, InterfaceState::Applied)).collect()
}

/// The counters an apply moves: file writes/removals/repairs, netlink changes.
fn changes(r: &Reconciler) -> (u64, u64, u64, u64) {
    (r.files.writes(), r.files.removals(), r.files.repairs(), r.netlink_changes())
}

/// The kinds found for MAC `i`, with what was found and wanted.
fn drifts(check: &DriftCheck, i: u8) -> Vec<(DriftKind, String, String)> {
    check
        .interfaces
        .get(&mac(i))
        .map_or_else(Vec::new, |v| v.drifts.iter().map(|d| (d.kind, d.found.clone(), d.wanted.clone())).collect())
}

fn edit(kernel: &MemoryKernel, index: u32, f: impl FnOnce(&mut crate::kernel::LinkState)) {
    kernel.edit(|s| f(s.links.iter_mut().find(|l| l.index == index).unwrap()));
}

#[test]
fn a_node_as_applied_is_in_line_and_checking_it_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (r, kernel, set) = applied_node(dir.path());
    // A NIC that is not ours changes: not ours to check.
    edit(&kernel, 9, |l| {
        l.mtu = 1300;
        l.up = false;
        l.addresses.insert("10.99.0.1/24".parse().unwrap());
    });
    let before = (changes(&r), kernel.state());
    for _ in 0..10 {
        let check = r.check(&set, &applied(&set)).unwrap();
        assert!(check.in_line(), "{check:?}");
        assert_eq!(check.interfaces.len(), 2, "both interfaces checked: {check:?}");
    }
    assert_eq!((changes(&r), kernel.state()), before, "ten checks: no write, no netlink request");
}

#[test]
fn each_kind_of_kernel_drift_is_named_from_what_to_what() {
    let dir = tempfile::tempdir().unwrap();
    let (r, kernel, set) = applied_node(dir.path());
    edit(&kernel, 2, |l| {
        l.mtu = 1300;
        l.addresses.remove(&"10.0.0.5/24".parse().unwrap());
    });
    edit(&kernel, 3, |l| {
        l.name = "eth2".into();
        l.up = false;
        l.addresses.insert("192.0.2.7/24".parse().unwrap());
    });
    let before = changes(&r);
    let check = r.check(&set, &applied(&set)).unwrap();
    assert_eq!(
        drifts(&check, 1),
        vec![
            (DriftKind::Mtu, "MTU 1300".into(), "MTU 9000".into()),
            (DriftKind::AddressMissing, "no addresses".into(), "addresses 10.0.0.5/24".into()),
        ]
    );
    assert_eq!(
        drifts(&check, 2),
        vec![
            (DriftKind::NameLost, "named eth2".into(), "named multinic1".into()),
            (DriftKind::LinkDown, "down".into(), "up".into()),
            (DriftKind::AddressExtra, "addresses 192.0.2.7/24".into(), "no addresses".into()),
        ]
    );
    assert!(check.interfaces.values().all(|v| v.changed.is_none()));
    assert_eq!(changes(&r), before, "the check repaired nothing");

    // What the check calls drift, a reconcile of just those interfaces sets back.
    let macs = check.interfaces.keys().copied().collect();
    let out = r.reconcile_in(&set, Scope::Only(&macs));
    assert!(out.statuses.iter().all(|s| s.state == InterfaceState::Applied), "{out:?}");
    assert_eq!(out.file_writes, 0, "the files were right");
    assert!(r.check(&set, &applied(&set)).unwrap().in_line());
}

#[test]
fn deleted_edited_and_unwanted_files_are_drift_and_the_check_moves_none_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _kernel, set) = applied_node(dir.path());
    let netplan = dir.path().join("etc/netplan");
    std::fs::remove_file(netplan.join("90-multinic0.yaml")).unwrap();
    let edited = std::fs::read_to_string(netplan.join("91-multinic1.yaml")).unwrap().replace("1500", "1400");
    std::fs::write(netplan.join("91-multinic1.yaml"), edited).unwrap();
    // A file of ours for a MAC no longer desired (a backup put back).
    let stale = crate::backend::netplan::Netplan.render(InterfaceName::new(5, 10).unwrap(), &spec(7, None, 1500));
    std::fs::write(dir.path().join(&stale[0].path), &stale[0].contents).unwrap();
    let before = changes(&r);

    let check = r.check(&set, &applied(&set)).unwrap();
    assert_eq!(
        drifts(&check, 1),
        vec![(
            DriftKind::FileDeleted,
            "no /etc/netplan/90-multinic0.yaml".into(),
            "/etc/netplan/90-multinic0.yaml as rendered".into()
        )]
    );
    let (kind, found, _) = &drifts(&check, 2)[0];
    assert_eq!(*kind, DriftKind::FileEdited);
    assert!(found.contains("91-multinic1.yaml edited") && found.contains("MTU 1400"), "{found}");
    let (kind, found, wanted) = &drifts(&check, 7)[0];
    assert_eq!((*kind, wanted.as_str()), (DriftKind::FileUnwanted, "no file: not desired"));
    assert!(found.contains("95-multinic5.yaml for MAC 02:00:00:00:00:07"), "{found}");
    assert_eq!(changes(&r), before);

    // A file of ours that no longer parses is drift too, and stays where it is.
    std::fs::write(netplan.join("91-multinic1.yaml"), "network: [garbled").unwrap();
    let check = r.check(&set, &applied(&set)).unwrap();
    let (kind, found, _) = &drifts(&check, 2)[0];
    assert_eq!(*kind, DriftKind::FileEdited);
    assert!(found.contains("does not parse"), "{found}");
    assert_eq!(std::fs::read_to_string(netplan.join("91-multinic1.yaml")).unwrap(), "network: [garbled");
    assert!(!dir.path().join("var/lib/multinic/quarantine").exists(), "nothing moved aside by a check");
    assert_eq!(changes(&r), before);

    // A scoped reconcile of those MACs repairs all three, and nothing else.
    let macs = check.interfaces.iter().filter(|(_, v)| !v.in_line()).map(|(m, _)| *m).collect();
    let out = r.reconcile_in(&set, Scope::Only(&macs));
    assert_eq!(
        out.statuses.iter().map(|s| (s.mac, s.state)).collect::<Vec<_>>(),
        vec![(mac(1), InterfaceState::Applied), (mac(2), InterfaceState::Applied), (mac(7), InterfaceState::Removed),]
    );
    assert!(!dir.path().join(&stale[0].path).exists(), "the unwanted file is gone");
    assert!(r.check(&set, &applied(&set)).unwrap().in_line());
}

#[test]
fn a_nic_that_went_away_or_is_no_longer_ours_is_a_change_not_drift() {
    let dir = tempfile::tempdir().unwrap();
    let (r, kernel, set) = applied_node(dir.path());
    kernel.edit(|s| {
        s.links.retain(|l| l.index != 2);
        s.default_route_links.insert(3);
    });
    let check = r.check(&set, &applied(&set)).unwrap();
    let a = &check.interfaces[&mac(1)];
    assert!(a.drifts.is_empty() && a.changed.as_deref().unwrap().contains("no longer on the node"), "{a:?}");
    let b = &check.interfaces[&mac(2)];
    assert!(b.drifts.is_empty() && b.changed.as_deref().unwrap().contains("default route"), "{b:?}");

    // A waiting MAC without its NIC is in line; once the NIC is there it changed.
    let waiting: BTreeMap<_, _> = [(mac(1), InterfaceState::Waiting)].into();
    assert!(r.check(&set, &waiting).unwrap().in_line());
    kernel.plug(link(2, "eth1", 1));
    assert!(r.check(&set, &waiting).unwrap().interfaces[&mac(1)].changed.as_deref().unwrap().contains("appeared"));
}

#[test]
fn a_dry_run_checks_files_only() {
    let dir = tempfile::tempdir().unwrap();
    let (r, kernel) = node(dir.path(), ApplyMode::None, vec![link(2, "eth1", 1)]);
    let set = DesiredSet::new([spec(1, Some("10.0.0.5/24"), 1500)]).unwrap();
    r.reconcile(&set);
    edit(&kernel, 2, |l| l.mtu = 1300);
    assert!(r.check(&set, &applied(&set)).unwrap().in_line(), "the kernel is not ours in a dry run");
    std::fs::remove_file(dir.path().join("etc/netplan/90-multinic0.yaml")).unwrap();
    assert_eq!(drifts(&r.check(&set, &applied(&set)).unwrap(), 1)[0].0, DriftKind::FileDeleted);
}

#[test]
fn a_check_that_cannot_read_the_kernel_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let (r, kernel, set) = applied_node(dir.path());
    kernel.set_unreadable(true);
    let err = r.check(&set, &applied(&set)).unwrap_err();
    assert!(matches!(err, CheckError::ReadKernel(_)) && err.to_string().contains("Operation not permitted"), "{err}");
}
