//! What to do on a node: desired set + our files + kernel facts → actions.
//!
//! Pure: takes values, returns values, no I/O. Names are decided here, in one
//! serialised pass per node (the predecessor's parallel workers gave two MACs
//! the same name), and our files are the MAC → name map (so a NIC that is
//! missing for a while keeps its name).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use multinic_proto::{DesiredSet, ErrorCode, InterfaceName, InterfaceSpec, MacAddress};

use crate::backend::{Backend, RenderedFile};

/// The files of one of our interface names found on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Current {
    /// Files we can read back.
    Parsed { spec: InterfaceSpec, files: BTreeMap<PathBuf, String> },
    /// Files at our paths that do not parse: we cannot tell their MAC.
    Corrupt { files: BTreeMap<PathBuf, String>, error: String },
}

/// A network link as the kernel shows it: found by MAC, changed by ifindex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelLink {
    pub index: u32,
    pub name: String,
    pub mac: MacAddress,
}

/// What the agent knows about the node's kernel when planning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// Links present (empty when the agent does not look, e.g. `--apply none`).
    pub links: Vec<KernelLink>,
    /// The one link of each MAC that has exactly one (by permanent MAC
    /// first, see [`crate::kernel::facts::find_link`]).
    pub owners: BTreeMap<MacAddress, KernelLink>,
    /// MACs that must never be touched (default route, primary address),
    /// with the reason.
    pub protected: BTreeMap<MacAddress, String>,
    /// MACs whose link is not ours to configure (several links claim the
    /// MAC, or it is enslaved to a bridge or bond), with the reason.
    pub foreign: BTreeMap<MacAddress, String>,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Our files already say exactly this. `link` is the MAC's NIC, if
    /// present; `retired` are files of ours the rendering no longer has
    /// (the predecessor's), removed once the interface is verified.
    Keep { name: InterfaceName, spec: InterfaceSpec, link: Option<KernelLink>, retired: Vec<PathBuf> },
    /// Create or rewrite the files of `name`.
    Write {
        name: InterfaceName,
        spec: InterfaceSpec,
        files: Vec<RenderedFile>,
        previous: Option<InterfaceSpec>,
        link: Option<KernelLink>,
        retired: Vec<PathBuf>,
    },
    /// `mac` is no longer desired: remove the files of `name`. `link` is its
    /// NIC when that still carries our name and is not protected: only then
    /// is its runtime state undone.
    Remove { name: InterfaceName, mac: MacAddress, spec: InterfaceSpec, paths: Vec<PathBuf>, link: Option<KernelLink> },
    /// `spec` cannot be configured; nothing is touched.
    Refuse { spec: InterfaceSpec, name: Option<InterfaceName>, code: ErrorCode, message: String },
    /// The controller holds `mac`: whatever exists for it stays as it is.
    Hold { mac: MacAddress, name: Option<InterfaceName> },
    /// Damaged files of ours: left alone, their name stays reserved.
    Corrupt { name: InterfaceName, error: String },
}

/// Every action for one desired set, in a stable order: damaged files,
/// removals (so a name they free can be reused at once), desired MACs in MAC
/// order, held MACs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
}

impl Plan {
    /// Whether executing the plan changes nothing on the node.
    pub fn is_noop(&self) -> bool {
        self.actions.iter().all(|a| !matches!(a, Action::Write { .. } | Action::Remove { .. }))
    }
}

/// Plans the node's files for `desired`.
pub fn plan(
    desired: &DesiredSet,
    current: &BTreeMap<InterfaceName, Current>,
    facts: &NodeFacts,
    capacity: u8,
    backend: &dyn Backend,
) -> Plan {
    let mut actions = Vec::new();

    // Our files are the MAC → name map; with two files for one MAC the lowest
    // name wins and the other is removed (netplan would see two set-names).
    let mut name_of: BTreeMap<MacAddress, InterfaceName> = BTreeMap::new();
    let mut duplicates = Vec::new();
    for (name, cur) in current {
        match cur {
            Current::Parsed { spec, .. } => {
                if let std::collections::btree_map::Entry::Vacant(e) = name_of.entry(spec.mac) {
                    e.insert(*name);
                } else {
                    duplicates.push((*name, *spec));
                }
            }
            Current::Corrupt { error, .. } => actions.push(Action::Corrupt { name: *name, error: error.clone() }),
        }
    }

    // Names that stay taken: files of desired or held MACs, corrupt files,
    // and kernel links called multinicN that belong to another MAC.
    let keeps = |mac: &MacAddress| desired.get(mac).is_some() || desired.is_held(mac);
    let mut taken: BTreeSet<InterfaceName> = current
        .iter()
        .filter(|(_, cur)| match cur {
            Current::Parsed { spec, .. } => keeps(&spec.mac),
            Current::Corrupt { .. } => true,
        })
        .map(|(name, _)| *name)
        .collect();
    let kernel_names: BTreeMap<InterfaceName, MacAddress> =
        facts.links.iter().filter_map(|l| InterfaceName::parse(&l.name, capacity).map(|n| (n, l.mac))).collect();
    // A damaged name whose NIC is still called by it: that NIC's MAC is
    // refused rather than renamed away from a file nobody can read.
    let damaged: BTreeMap<MacAddress, (InterfaceName, &str)> = current
        .iter()
        .filter_map(|(name, cur)| match cur {
            Current::Corrupt { error, .. } => kernel_names.get(name).map(|mac| (*mac, (*name, error.as_str()))),
            Current::Parsed { .. } => None,
        })
        .collect();

    for (name, cur) in current {
        if let Current::Parsed { spec, .. } = cur {
            let duplicate = duplicates.iter().any(|(n, _)| n == name);
            if duplicate || !keeps(&spec.mac) {
                let link = facts
                    .owners
                    .get(&spec.mac)
                    .filter(|l| l.name == name.to_string() && !facts.protected.contains_key(&spec.mac))
                    .cloned();
                actions.push(Action::Remove {
                    name: *name,
                    mac: spec.mac,
                    spec: *spec,
                    paths: backend.paths(*name),
                    link,
                });
            }
        }
    }

    for spec in desired.iter() {
        if let Some(reason) = facts.protected.get(&spec.mac) {
            actions.push(Action::Refuse {
                spec: *spec,
                name: name_of.get(&spec.mac).copied(),
                code: ErrorCode::ProtectedInterface,
                message: format!("MAC {} is {reason}; it is never touched", spec.mac),
            });
            continue;
        }
        if let Some(reason) = facts.foreign.get(&spec.mac) {
            actions.push(Action::Refuse {
                spec: *spec,
                name: name_of.get(&spec.mac).copied(),
                code: ErrorCode::ForeignInterface,
                message: format!("MAC {} is {reason}; it is left alone", spec.mac),
            });
            continue;
        }
        if let (None, Some((name, error))) = (name_of.get(&spec.mac), damaged.get(&spec.mac)) {
            actions.push(Action::Refuse {
                spec: *spec,
                name: Some(*name),
                code: ErrorCode::CorruptFile,
                message: format!(
                    "{error}; {name} (this NIC's name) is left as it is until that path holds a file \
                     multinic can read, or nothing"
                ),
            });
            continue;
        }
        let name = match name_of.get(&spec.mac) {
            Some(name) => Some(*name),
            None => assign(spec.mac, &taken, &kernel_names, capacity),
        };
        let Some(name) = name else {
            actions.push(Action::Refuse {
                spec: *spec,
                name: None,
                code: ErrorCode::CapacityExceeded,
                message: format!(
                    "no free name for MAC {}: multinic0..multinic{} are all taken (capacity {capacity}; raise --capacity)",
                    spec.mac,
                    capacity.saturating_sub(1),
                ),
            });
            continue;
        };
        taken.insert(name);
        let files = backend.render(name, spec);
        let previous = match current.get(&name) {
            Some(Current::Parsed { spec: prev, .. }) if prev.mac == spec.mac => Some(*prev),
            _ => None,
        };
        let on_disk = match current.get(&name) {
            Some(Current::Parsed { files: on_disk, .. }) => Some(on_disk),
            _ => None,
        };
        let unchanged = on_disk.is_some_and(|d| files.iter().all(|f| d.get(&f.path) == Some(&f.contents)));
        let retired: Vec<PathBuf> = on_disk
            .into_iter()
            .flat_map(|d| d.keys())
            .filter(|path| !files.iter().any(|f| &f.path == *path))
            .cloned()
            .collect();
        let link = facts.owners.get(&spec.mac).cloned();
        if unchanged {
            actions.push(Action::Keep { name, spec: *spec, link, retired });
        } else {
            actions.push(Action::Write { name, spec: *spec, files, previous, link, retired });
        }
    }

    for mac in desired.held() {
        actions.push(Action::Hold { mac: *mac, name: name_of.get(mac).copied() });
    }

    Plan { actions }
}

/// The name for a MAC without a file: the kernel's `multinicN` name of that
/// MAC if free, else the lowest free index.
fn assign(
    mac: MacAddress,
    taken: &BTreeSet<InterfaceName>,
    kernel_names: &BTreeMap<InterfaceName, MacAddress>,
    capacity: u8,
) -> Option<InterfaceName> {
    let free = |name: &InterfaceName| !taken.contains(name);
    if let Some((name, _)) = kernel_names.iter().find(|(n, m)| **m == mac && free(n)) {
        return Some(*name);
    }
    (0..capacity)
        .filter_map(|i| InterfaceName::new(i, capacity))
        .find(|name| free(name) && !kernel_names.contains_key(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::netplan::Netplan;
    use multinic_proto::Mtu;

    fn spec(i: u8, mtu: i64) -> InterfaceSpec {
        InterfaceSpec::new(MacAddress::from_octets([2, 0, 0, 0, 0, i]).unwrap(), None, Mtu::new(mtu).unwrap()).unwrap()
    }

    fn name(i: u8) -> InterfaceName {
        InterfaceName::new(i, 10).unwrap()
    }

    fn on_disk(entries: &[(u8, InterfaceSpec)]) -> BTreeMap<InterfaceName, Current> {
        entries
            .iter()
            .map(|(i, spec)| {
                let files = Netplan.render(name(*i), spec).into_iter().map(|f| (f.path, f.contents)).collect();
                (name(*i), Current::Parsed { spec: *spec, files })
            })
            .collect()
    }

    fn names(plan: &Plan) -> Vec<(String, u8)> {
        plan.actions
            .iter()
            .filter_map(|a| match a {
                Action::Keep { name, spec, .. } | Action::Write { name, spec, .. } => {
                    Some((name.to_string(), spec.mac.octets()[5]))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn next_name_is_the_lowest_free_index() {
        let current = on_disk(&[(0, spec(10, 1500)), (2, spec(12, 1500)), (4, spec(14, 1500))]);
        let desired = DesiredSet::new([spec(10, 1500), spec(12, 1500), spec(14, 1500), spec(20, 1500)]).unwrap();
        let plan = plan(&desired, &current, &NodeFacts::default(), 10, &Netplan);
        assert!(names(&plan).contains(&("multinic1".into(), 20)), "{plan:?}");
    }

    #[test]
    fn unchanged_files_are_kept_and_a_repeat_is_a_noop() {
        let current = on_disk(&[(0, spec(1, 1500))]);
        let desired = DesiredSet::new([spec(1, 1500)]).unwrap();
        let p = plan(&desired, &current, &NodeFacts::default(), 10, &Netplan);
        assert!(p.is_noop());
        assert!(matches!(p.actions[0], Action::Keep { .. }));

        let changed = DesiredSet::new([spec(1, 9000)]).unwrap();
        let p = plan(&changed, &current, &NodeFacts::default(), 10, &Netplan);
        assert!(
            matches!(&p.actions[0], Action::Write { name: n, previous: Some(prev), .. } if *n == name(0) && prev.mtu.get() == 1500)
        );
    }

    #[test]
    fn removed_macs_free_their_files_and_held_macs_keep_theirs() {
        let current = on_disk(&[(0, spec(1, 1500)), (1, spec(2, 1500)), (2, spec(3, 1500))]);
        let held = spec(2, 1500).mac;
        let desired = DesiredSet::with_held([spec(1, 1500)], [held]).unwrap();
        let p = plan(&desired, &current, &NodeFacts::default(), 10, &Netplan);
        let removed: Vec<_> = p
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Remove { name, .. } => Some(name.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(removed, vec!["multinic2"]);
        assert!(p.actions.iter().any(|a| matches!(a, Action::Hold { name: Some(n), .. } if *n == name(1))));
    }

    #[test]
    fn eleventh_interface_is_refused_with_a_capacity_error() {
        let desired = DesiredSet::new((1..=11).map(|i| spec(i, 1500))).unwrap();
        let p = plan(&desired, &BTreeMap::new(), &NodeFacts::default(), 10, &Netplan);
        let refused: Vec<_> = p
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Refuse { spec, code, message, .. } => Some((spec.mac.octets()[5], *code, message.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, 11, "MAC order decides who is refused");
        assert_eq!(refused[0].1, ErrorCode::CapacityExceeded);
        assert!(refused[0].2.contains("--capacity"));
        assert_eq!(names(&p).len(), 10);
    }

    #[test]
    fn kernel_names_are_respected() {
        // multinic0 exists in the kernel for another MAC; our MAC already has multinic3.
        let facts = NodeFacts {
            links: vec![
                KernelLink { index: 2, name: "multinic0".into(), mac: spec(99, 1500).mac },
                KernelLink { index: 3, name: "multinic3".into(), mac: spec(1, 1500).mac },
            ],
            ..NodeFacts::default()
        };
        let desired = DesiredSet::new([spec(1, 1500), spec(2, 1500)]).unwrap();
        let p = plan(&desired, &BTreeMap::new(), &facts, 10, &Netplan);
        assert_eq!(names(&p), vec![("multinic3".into(), 1), ("multinic1".into(), 2)]);
    }

    #[test]
    fn protected_macs_are_refused() {
        let facts = NodeFacts {
            protected: [(spec(1, 1500).mac, "the NIC with the default route".to_owned())].into(),
            ..NodeFacts::default()
        };
        let desired = DesiredSet::new([spec(1, 1500)]).unwrap();
        let p = plan(&desired, &BTreeMap::new(), &facts, 10, &Netplan);
        assert!(
            matches!(&p.actions[0], Action::Refuse { code: ErrorCode::ProtectedInterface, message, .. } if message.contains("default route"))
        );
    }

    #[test]
    fn foreign_macs_are_refused() {
        let facts = NodeFacts {
            foreign: [(spec(1, 1500).mac, "on eth1, enslaved to bond0".to_owned())].into(),
            ..NodeFacts::default()
        };
        let p = plan(&DesiredSet::new([spec(1, 1500)]).unwrap(), &BTreeMap::new(), &facts, 10, &Netplan);
        assert!(
            matches!(&p.actions[0], Action::Refuse { code: ErrorCode::ForeignInterface, message, .. } if message.contains("bond0"))
        );
    }

    #[test]
    fn removals_come_first_so_a_freed_name_is_reused_at_once() {
        let full: Vec<(u8, InterfaceSpec)> = (0..10).map(|i| (i, spec(i + 1, 1500))).collect();
        let current = on_disk(&full);
        // MAC 1 (multinic0) leaves, MAC 50 arrives: capacity is not exceeded.
        let desired = DesiredSet::new((2..=10).map(|i| spec(i, 1500)).chain([spec(50, 1500)])).unwrap();
        let p = plan(&desired, &current, &NodeFacts::default(), 10, &Netplan);
        assert!(matches!(&p.actions[0], Action::Remove { name: n, .. } if *n == name(0)), "{:?}", p.actions[0]);
        assert!(names(&p).contains(&("multinic0".into(), 50)), "{p:?}");
        // ...unless the kernel still has a link called multinic0.
        let facts = NodeFacts {
            links: vec![KernelLink { index: 2, name: "multinic0".into(), mac: spec(1, 1500).mac }],
            ..NodeFacts::default()
        };
        let p = plan(&desired, &current, &facts, 10, &Netplan);
        assert!(p.actions.iter().any(|a| matches!(a, Action::Refuse { code: ErrorCode::CapacityExceeded, .. })));
    }

    #[test]
    fn corrupt_files_keep_their_name_and_are_not_removed() {
        let mut current = on_disk(&[]);
        current.insert(name(0), Current::Corrupt { files: BTreeMap::new(), error: "truncated".into() });
        let desired = DesiredSet::new([spec(1, 1500)]).unwrap();
        let p = plan(&desired, &current, &NodeFacts::default(), 10, &Netplan);
        assert!(p.actions.iter().any(|a| matches!(a, Action::Corrupt { .. })));
        assert_eq!(names(&p), vec![("multinic1".into(), 1)]);
        assert!(!p.actions.iter().any(|a| matches!(a, Action::Remove { .. })));
    }

    #[test]
    fn a_damaged_name_refuses_the_nic_that_carries_it_and_no_other() {
        let mut current = on_disk(&[(1, spec(2, 1500))]);
        let error = "etc/netplan/90-multinic0.yaml is a FIFO, not a regular file; not read".to_owned();
        current.insert(name(0), Current::Corrupt { files: BTreeMap::new(), error });
        let facts = NodeFacts {
            links: vec![
                KernelLink { index: 2, name: "multinic0".into(), mac: spec(1, 1500).mac },
                KernelLink { index: 3, name: "multinic1".into(), mac: spec(2, 1500).mac },
            ],
            ..NodeFacts::default()
        };
        let desired = DesiredSet::new([spec(1, 9000), spec(2, 9000), spec(3, 1500)]).unwrap();
        let p = plan(&desired, &current, &facts, 10, &Netplan);
        let refused: Vec<_> = p
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Refuse { spec, name, code, message } => Some((spec.mac, *name, *code, message.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(refused.len(), 1, "{p:?}");
        assert_eq!(
            (refused[0].0, refused[0].1, refused[0].2),
            (spec(1, 1500).mac, Some(name(0)), ErrorCode::CorruptFile)
        );
        assert!(refused[0].3.contains("is a FIFO") && refused[0].3.contains("multinic0"), "{}", refused[0].3);
        // The others go on; the damaged name is nobody's.
        assert_eq!(names(&p), vec![("multinic1".into(), 2), ("multinic2".into(), 3)]);
    }

    #[test]
    fn files_the_rendering_no_longer_has_are_retired_not_rewritten() {
        let spec = spec(1, 1500);
        let mut files: BTreeMap<PathBuf, String> =
            Netplan.render(name(0), &spec).into_iter().map(|f| (f.path, f.contents)).collect();
        files.insert(PathBuf::from("etc/old/ifcfg-multinic0"), "the predecessor's".into());
        let current = [(name(0), Current::Parsed { spec, files })].into();
        let p = plan(&DesiredSet::new([spec]).unwrap(), &current, &NodeFacts::default(), 10, &Netplan);
        assert!(p.is_noop(), "the rendered files are in place: {p:?}");
        assert!(
            matches!(&p.actions[0], Action::Keep { retired, .. } if retired == &[PathBuf::from("etc/old/ifcfg-multinic0")])
        );
    }

    #[test]
    fn two_files_for_one_mac_keep_the_lowest() {
        let current = on_disk(&[(0, spec(1, 1500)), (5, spec(1, 1500))]);
        let desired = DesiredSet::new([spec(1, 1500)]).unwrap();
        let p = plan(&desired, &current, &NodeFacts::default(), 10, &Netplan);
        assert_eq!(names(&p), vec![("multinic0".into(), 1)]);
        assert!(p.actions.iter().any(|a| matches!(a, Action::Remove { name: n, .. } if *n == name(5))));
    }
}
