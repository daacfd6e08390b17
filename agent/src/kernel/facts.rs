//! Which link is which MAC, and which links must never be touched.
//!
//! Pure. A link is protected when it carries a default route of the main
//! table (IPv4 or IPv6) or one of the node's own addresses, and so is every
//! link under it (the slaves of a protected bridge or bond, the lower device
//! of a protected VLAN or macvlan): changing any of them can cut the node
//! off. A MAC is foreign when no single link owns it unambiguously, or when
//! its link is enslaved to a bridge or bond we do not manage.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use multinic_proto::MacAddress;

use super::{KernelState, LinkState};
use crate::plan::{KernelLink, NodeFacts};

/// The link that owns a MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkMatch<'a> {
    Absent,
    One(&'a LinkState),
    /// Several links claim the MAC and none does so by its permanent MAC alone.
    Ambiguous(Vec<&'a str>),
}

/// Finds the link of `mac`: by permanent MAC first (the NIC itself rather
/// than a VLAN or bond that copies its MAC), else by current MAC among links
/// without a permanent MAC.
pub fn find_link(kernel: &KernelState, mac: MacAddress) -> LinkMatch<'_> {
    let by_perm: Vec<&LinkState> = kernel.links.iter().filter(|l| l.perm_mac == Some(mac)).collect();
    let candidates = if by_perm.is_empty() {
        kernel.links.iter().filter(|l| l.perm_mac.is_none() && l.mac == Some(mac)).collect()
    } else {
        by_perm
    };
    match candidates.as_slice() {
        [] => LinkMatch::Absent,
        [one] => LinkMatch::One(one),
        many => LinkMatch::Ambiguous(many.iter().map(|l| l.name.as_str()).collect()),
    }
}

/// The planner's view of the kernel: links by name and MAC, protected and
/// foreign MACs with the reason.
pub fn node_facts(kernel: &KernelState, node_ips: &[IpAddr]) -> NodeFacts {
    let kernel_link = |l: &LinkState| l.identity().map(|mac| KernelLink { index: l.index, name: l.name.clone(), mac });
    let links = kernel.links.iter().filter_map(kernel_link).collect();
    let mut owners = BTreeMap::new();
    let reasons = protected_links(kernel, node_ips);
    let mut protected = BTreeMap::new();
    for (index, reason) in &reasons {
        if let Some(mac) = kernel.link(*index).and_then(LinkState::identity) {
            protected.entry(mac).or_insert_with(|| reason.clone());
        }
    }
    let mut foreign = BTreeMap::new();
    let macs: BTreeSet<MacAddress> = kernel.links.iter().filter_map(LinkState::identity).collect();
    for mac in macs {
        match find_link(kernel, mac) {
            LinkMatch::One(link) => {
                owners.insert(mac, KernelLink { index: link.index, name: link.name.clone(), mac });
                if let Some(master) = link.master.filter(|m| !reasons.contains_key(m)) {
                    let master = kernel.link(master).map_or_else(|| format!("ifindex {master}"), |m| m.name.clone());
                    foreign
                        .insert(mac, format!("on {}, enslaved to {master}, which multinic does not manage", link.name));
                }
            }
            LinkMatch::Ambiguous(names) => {
                foreign.insert(mac, format!("claimed by several links ({})", names.join(", ")));
            }
            LinkMatch::Absent => {}
        }
    }
    NodeFacts { links, owners, protected, foreign }
}

/// Protected links by ifindex, with the reason.
fn protected_links(kernel: &KernelState, node_ips: &[IpAddr]) -> BTreeMap<u32, String> {
    let mut reasons: BTreeMap<u32, String> = BTreeMap::new();
    for index in &kernel.default_route_links {
        if let Some(link) = kernel.link(*index) {
            reasons.insert(*index, format!("the NIC {} that carries a default route", link.name));
        }
    }
    for link in &kernel.links {
        if let Some(ip) = node_ips.iter().find(|ip| link.addresses.iter().any(|a| a.ip == **ip)) {
            reasons
                .entry(link.index)
                .or_insert_with(|| format!("the NIC {} that holds the node address {ip}", link.name));
        }
    }
    // Everything under a protected link is protected too.
    loop {
        let mut added = Vec::new();
        for link in &kernel.links {
            if reasons.contains_key(&link.index) {
                if let Some(lower) = link.lower.filter(|l| !reasons.contains_key(l) && kernel.link(*l).is_some()) {
                    added.push((lower, format!("under {}", reasons[&link.index])));
                }
            } else if let Some(master) = link.master.filter(|m| reasons.contains_key(m)) {
                added.push((link.index, format!("enslaved to {}", reasons[&master])));
            }
        }
        if added.is_empty() {
            return reasons;
        }
        for (index, reason) in added {
            let name = kernel.link(index).map_or_else(String::new, |l| l.name.clone());
            reasons.entry(index).or_insert_with(|| format!("the NIC {name}, {reason}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(last: u8) -> MacAddress {
        MacAddress::from_octets([2, 0, 0, 0, 0, last]).unwrap()
    }

    fn link(index: u32, name: &str, mac_last: u8) -> LinkState {
        LinkState {
            index,
            name: name.into(),
            mac: Some(mac(mac_last)),
            perm_mac: None,
            mtu: 1500,
            min_mtu: None,
            max_mtu: None,
            up: true,
            master: None,
            lower: None,
            kind: None,
            addresses: BTreeSet::new(),
        }
    }

    #[test]
    fn default_route_and_node_address_protect_their_nics_and_what_is_under_them() {
        let mut eth0 = link(2, "eth0", 1);
        eth0.master = Some(5);
        let mut eth1 = link(3, "eth1", 2);
        eth1.addresses.insert("192.0.2.10/24".parse().unwrap());
        let mut vlan = link(4, "eth3.10", 4);
        vlan.lower = Some(6);
        let br0 = link(5, "br0", 3);
        let eth3 = link(6, "eth3", 5);
        let free = link(7, "eth4", 6);
        let kernel = KernelState { links: vec![eth0, eth1, vlan, br0, eth3, free], default_route_links: [5, 4].into() };
        let facts = node_facts(&kernel, &["192.0.2.10".parse().unwrap()]);
        assert!(facts.protected[&mac(3)].contains("br0 that carries a default route"));
        assert!(facts.protected[&mac(1)].contains("eth0, enslaved to the NIC br0"), "{:?}", facts.protected);
        assert!(facts.protected[&mac(2)].contains("node address 192.0.2.10"));
        assert!(facts.protected[&mac(5)].contains("eth3, under the NIC eth3.10"), "{:?}", facts.protected);
        assert!(!facts.protected.contains_key(&mac(6)));
        assert!(facts.foreign.is_empty(), "{:?}", facts.foreign);
    }

    #[test]
    fn permanent_mac_wins_and_copies_are_ambiguous() {
        let mut nic = link(2, "ens4", 9);
        nic.perm_mac = Some(mac(1));
        nic.mac = Some(mac(1));
        let vlan = link(3, "ens4.10", 1);
        let kernel = KernelState { links: vec![nic, vlan], default_route_links: BTreeSet::new() };
        assert!(matches!(find_link(&kernel, mac(1)), LinkMatch::One(l) if l.name == "ens4"));
        assert_eq!(node_facts(&kernel, &[]).owners[&mac(1)].index, 2, "the planner gets the NIC, not the VLAN");

        let kernel = KernelState { links: vec![link(2, "a", 7), link(3, "b", 7)], ..KernelState::default() };
        assert_eq!(find_link(&kernel, mac(7)), LinkMatch::Ambiguous(vec!["a", "b"]));
        assert!(node_facts(&kernel, &[]).foreign[&mac(7)].contains("several links (a, b)"));
        assert_eq!(find_link(&kernel, mac(8)), LinkMatch::Absent);
    }

    #[test]
    fn slaves_of_unmanaged_bonds_are_foreign() {
        let mut slave = link(2, "eth1", 1);
        slave.master = Some(3);
        let bond = link(3, "bond0", 2);
        let facts = node_facts(&KernelState { links: vec![slave, bond], ..KernelState::default() }, &[]);
        assert!(facts.foreign[&mac(1)].contains("enslaved to bond0"));
        assert_eq!(facts.links.len(), 2);
    }
}
