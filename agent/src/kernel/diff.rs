//! Kernel state vs wanted state: the steps between them, and the check that
//! there are none left ([`verify`] names each difference as a [`Mismatch`]).
//!
//! Pure: values in, values out. The same functions drive an apply (towards
//! the desired spec), a rollback (towards a journaled state) and a cleanup
//! (towards "no addresses of ours, down"), so all three change exactly what
//! differs and nothing else.

use std::collections::BTreeSet;
use std::fmt;

use multinic_proto::{InterfaceName, InterfaceSpec};

use super::{KernelAddr, LinkState};

/// What a link should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkTarget {
    pub name: String,
    pub mtu: u32,
    pub up: bool,
    /// Exactly these addresses (IPv6 link-local addresses are never counted).
    pub addresses: BTreeSet<KernelAddr>,
}

impl LinkTarget {
    /// The runtime state `spec` asks for on interface `name`.
    pub fn desired(name: InterfaceName, spec: &InterfaceSpec) -> Self {
        Self {
            name: name.to_string(),
            mtu: u32::from(spec.mtu.get()),
            up: true,
            addresses: spec.address.map(KernelAddr::from).into_iter().collect(),
        }
    }

    /// The state of `link` as it is now (what a journal records).
    pub fn of(link: &LinkState) -> Self {
        Self { name: link.name.clone(), mtu: link.mtu, up: link.up, addresses: link.managed_addresses() }
    }
}

/// One mutating netlink request (or the read before one, for error reports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Read,
    Down,
    Rename(String),
    Mtu(u32),
    Up,
    AddAddress(KernelAddr),
    RemoveAddress(KernelAddr),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read => f.write_str("read kernel state"),
            Self::Down => f.write_str("set link down"),
            Self::Rename(name) => write!(f, "rename to {name}"),
            Self::Mtu(mtu) => write!(f, "set MTU {mtu}"),
            Self::Up => f.write_str("set link up"),
            Self::AddAddress(a) => write!(f, "add address {a}"),
            Self::RemoveAddress(a) => write!(f, "remove address {a}"),
        }
    }
}

/// Link-level steps from `link` to `target`, in the order the kernel needs:
/// a rename needs the link down (older kernels refuse to rename a live
/// link), so a rename is wrapped in down … up; then the MTU; then the
/// wanted admin state. Empty when nothing differs.
pub fn link_steps(link: &LinkState, target: &LinkTarget) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut up = link.up;
    if link.name != target.name {
        if up {
            steps.push(Step::Down);
            up = false;
        }
        steps.push(Step::Rename(target.name.clone()));
    }
    if link.mtu != target.mtu {
        steps.push(Step::Mtu(target.mtu));
    }
    if up != target.up {
        steps.push(if target.up { Step::Up } else { Step::Down });
    }
    steps
}

/// Only the rename part of [`link_steps`], leaving the admin state as it was
/// (host mode: the backend does the rest).
pub fn rename_steps(link: &LinkState, name: &str) -> Vec<Step> {
    if link.name == name {
        return Vec::new();
    }
    if link.up {
        vec![Step::Down, Step::Rename(name.to_owned()), Step::Up]
    } else {
        vec![Step::Rename(name.to_owned())]
    }
}

/// Address steps: remove what is extra first, then add what is missing
/// (IPv6 link-local addresses are neither added nor removed). Removing
/// first matters: an address added next to another in the same subnet is a
/// secondary, and the kernel deletes secondaries with their primary.
pub fn address_steps(current: &BTreeSet<KernelAddr>, wanted: &BTreeSet<KernelAddr>) -> Vec<Step> {
    let keep = |a: &&KernelAddr| !a.is_ipv6_link_local();
    let remove = current.difference(wanted).filter(keep).map(|a| Step::RemoveAddress(*a));
    let add = wanted.difference(current).filter(keep).map(|a| Step::AddAddress(*a));
    remove.chain(add).collect()
}

/// One way a link differs from what it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    Name {
        have: String,
        want: String,
    },
    Mtu {
        have: u32,
        want: u32,
    },
    /// The admin state: `want` is whether it should be up.
    AdminState {
        want: bool,
    },
    /// The addresses we manage (IPv6 link-local left out).
    Addresses {
        have: BTreeSet<KernelAddr>,
        want: BTreeSet<KernelAddr>,
    },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name { have, want } => write!(f, "named {have}, want {want}"),
            Self::Mtu { have, want } => write!(f, "MTU {have}, want {want}"),
            Self::AdminState { want: true } => f.write_str("down, want up"),
            Self::AdminState { want: false } => f.write_str("up, want down"),
            Self::Addresses { have, want } => write!(f, "addresses [{}], want [{}]", join(have), join(want)),
        }
    }
}

/// Every way a link differs from its target (never empty), in the order
/// name, MTU, admin state, addresses; said as one sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct Mismatches(pub Vec<Mismatch>);

/// Whether `link` is exactly `target`; otherwise every difference.
pub fn verify(link: &LinkState, target: &LinkTarget) -> Result<(), Mismatches> {
    let mut found = Vec::new();
    if link.name != target.name {
        found.push(Mismatch::Name { have: link.name.clone(), want: target.name.clone() });
    }
    if link.mtu != target.mtu {
        found.push(Mismatch::Mtu { have: link.mtu, want: target.mtu });
    }
    if link.up != target.up {
        found.push(Mismatch::AdminState { want: target.up });
    }
    let have = link.managed_addresses();
    if have != target.addresses {
        found.push(Mismatch::Addresses { have, want: target.addresses.clone() });
    }
    if found.is_empty() { Ok(()) } else { Err(Mismatches(found)) }
}

fn join(addresses: &BTreeSet<KernelAddr>) -> String {
    addresses.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// An MTU outside the limits the device reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{link} accepts MTU {}..{}, not {mtu}", .min.unwrap_or(0), .max.unwrap_or(0))]
pub struct MtuOutOfRange {
    pub link: String,
    pub mtu: u32,
    pub min: Option<u32>,
    pub max: Option<u32>,
}

/// Whether `mtu` is inside the device's limits, when it reports them.
pub fn mtu_allowed(link: &LinkState, mtu: u32) -> Result<(), MtuOutOfRange> {
    let min = link.min_mtu.filter(|m| *m > 0);
    let max = link.max_mtu.filter(|m| *m > 0);
    let outside = min.is_some_and(|min| mtu < min) || max.is_some_and(|max| mtu > max);
    if outside { Err(MtuOutOfRange { link: link.name.clone(), mtu, min, max }) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use multinic_proto::{MacAddress, Mtu};

    fn link(name: &str, mtu: u32, up: bool, addrs: &[&str]) -> LinkState {
        LinkState {
            index: 7,
            name: name.into(),
            mac: MacAddress::from_octets([2, 0, 0, 0, 0, 1]).ok(),
            perm_mac: None,
            mtu,
            min_mtu: Some(68),
            max_mtu: Some(1500),
            up,
            master: None,
            lower: None,
            kind: Some("veth".into()),
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn target(name: &str, mtu: u32, up: bool, addrs: &[&str]) -> LinkTarget {
        LinkTarget { name: name.into(), mtu, up, addresses: addrs.iter().map(|a| a.parse().unwrap()).collect() }
    }

    #[test]
    fn a_fresh_nic_is_renamed_sized_raised_then_addressed() {
        let l = link("eth1", 1500, false, &["fe80::1/64"]);
        let t = target("multinic0", 1400, true, &["10.0.0.5/24"]);
        assert_eq!(link_steps(&l, &t), vec![Step::Rename("multinic0".into()), Step::Mtu(1400), Step::Up]);
        assert_eq!(
            address_steps(&l.managed_addresses(), &t.addresses),
            vec![Step::AddAddress("10.0.0.5/24".parse().unwrap())]
        );
    }

    #[test]
    fn a_live_rename_goes_down_and_up_again() {
        let l = link("eth1", 1500, true, &[]);
        let t = target("multinic0", 1500, true, &[]);
        assert_eq!(link_steps(&l, &t), vec![Step::Down, Step::Rename("multinic0".into()), Step::Up]);
        assert_eq!(rename_steps(&l, "multinic0"), vec![Step::Down, Step::Rename("multinic0".into()), Step::Up]);
        assert_eq!(rename_steps(&link("eth1", 1500, false, &[]), "multinic0"), vec![Step::Rename("multinic0".into())]);
        assert!(rename_steps(&l, "eth1").is_empty());
    }

    #[test]
    fn a_converged_link_needs_nothing_and_verifies() {
        let l = link("multinic0", 9000, true, &["10.0.0.5/24", "fe80::1/64"]);
        let t = target("multinic0", 9000, true, &["10.0.0.5/24"]);
        assert!(link_steps(&l, &t).is_empty());
        assert!(address_steps(&l.managed_addresses(), &t.addresses).is_empty());
        assert_eq!(verify(&l, &t), Ok(()));
    }

    #[test]
    fn extra_addresses_are_removed_before_the_wanted_one_is_added() {
        let l = link("multinic0", 1500, true, &["10.0.0.5/24", "10.0.0.5/16"]);
        let t = target("multinic0", 1500, true, &["10.0.0.9/24"]);
        assert_eq!(
            address_steps(&l.managed_addresses(), &t.addresses),
            vec![
                Step::RemoveAddress("10.0.0.5/16".parse().unwrap()),
                Step::RemoveAddress("10.0.0.5/24".parse().unwrap()),
                Step::AddAddress("10.0.0.9/24".parse().unwrap()),
            ]
        );
    }

    #[test]
    fn verify_names_every_difference() {
        let l = link("eth1", 1500, false, &["10.0.0.5/24"]);
        let err = verify(&l, &target("multinic0", 9000, true, &[])).unwrap_err().to_string();
        for needle in ["named eth1, want multinic0", "MTU 1500, want 9000", "down, want up", "[10.0.0.5/24], want []"] {
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn verify_lists_each_difference_as_a_value() {
        let l = link("eth1", 1500, true, &["10.0.0.5/24", "fe80::1/64"]);
        let Mismatches(found) = verify(&l, &target("multinic0", 1500, false, &["10.0.0.6/24"])).unwrap_err();
        assert_eq!(
            found,
            vec![
                Mismatch::Name { have: "eth1".into(), want: "multinic0".into() },
                Mismatch::AdminState { want: false },
                Mismatch::Addresses {
                    have: ["10.0.0.5/24".parse().unwrap()].into(),
                    want: ["10.0.0.6/24".parse().unwrap()].into()
                },
            ],
            "the link-local address is not a difference"
        );
        assert_eq!(
            Mismatches(found).to_string(),
            "named eth1, want multinic0; up, want down; addresses [10.0.0.5/24], want [10.0.0.6/24]"
        );
    }

    #[test]
    fn rollback_target_can_be_down() {
        let l = link("multinic0", 9000, true, &["10.0.0.5/24"]);
        let t = target("eth1", 1500, false, &[]);
        assert_eq!(link_steps(&l, &t), vec![Step::Down, Step::Rename("eth1".into()), Step::Mtu(1500)]);
    }

    #[test]
    fn mtu_limits_come_from_the_device() {
        let l = link("eth1", 1500, false, &[]);
        assert!(mtu_allowed(&l, 1500).is_ok());
        assert!(mtu_allowed(&l, 9000).unwrap_err().to_string().contains("68..1500"));
        let unlimited = LinkState { min_mtu: None, max_mtu: Some(0), ..l };
        assert!(mtu_allowed(&unlimited, 9216).is_ok());
    }

    #[test]
    fn desired_target_follows_the_spec() {
        let name = InterfaceName::new(2, 10).unwrap();
        let spec = InterfaceSpec::new(
            MacAddress::from_octets([2, 0, 0, 0, 0, 1]).unwrap(),
            Some("10.0.0.5/24".parse().unwrap()),
            Mtu::new(9000).unwrap(),
        )
        .unwrap();
        assert_eq!(LinkTarget::desired(name, &spec), target("multinic2", 9000, true, &["10.0.0.5/24"]));
    }
}
