//! What an apply must never change on a node, and the check that it did not.
//!
//! [`Bystanders::install`] gives a test node what a real Kubernetes node
//! carries besides our NICs: a route a CNI added through the primary NIC
//! (`proto bird`, what Calico's BIRD installs), a keepalived-style VIP on
//! the primary NIC, a CNI veth with its own address and route, a blackhole
//! route and a policy rule (Calico adds both). [`Snapshot::take`] reads every
//! link, address, route (all tables) and rule that is not on one of our
//! `multinicN` links, plus the primary NIC's carrier changes; a test takes
//! one before and one after each apply and calls [`Snapshot::assert_same`].
//! Routes and addresses on the NICs that become ours are left out (by name
//! and MAC); routes through them are the apply's own business.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::netns::{PRIMARY, TestNode};

/// The CNI's route through the primary NIC.
pub const CNI_ROUTE: &str = "10.250.0.0/16";
/// The VIP on the primary NIC.
pub const VIP: &str = "192.168.77.100/32";
/// The CNI's veth, its address and the route to a pod behind it.
pub const CNI_VETH: &str = "cali5f1e2d3c";
pub const CNI_VETH_ADDRESS: &str = "169.254.1.1/32";
pub const POD_ROUTE: &str = "10.250.7.5";
/// The CNI's blackhole route and the source of its policy rule.
pub const BLACKHOLE: &str = "10.251.0.0/16";
pub const RULE_FROM: &str = "10.252.0.0/16";

/// The state a CNI, keepalived and the admin put on a node.
#[derive(Debug)]
pub struct Bystanders;

impl Bystanders {
    /// Adds it all to `node`, whose primary NIC must be up with
    /// 192.168.77.2/24 and its gateway 192.168.77.1. Puts back whatever is
    /// missing when called again (e.g. after a test's boot-like reload).
    pub fn install(node: &TestNode) {
        node.ip(&["route", "replace", CNI_ROUTE, "via", "192.168.77.1", "dev", PRIMARY, "proto", "bird"]);
        node.ip(&["addr", "replace", VIP, "dev", PRIMARY]);
        if node.link(CNI_VETH).is_none() {
            let peer = format!("{CNI_VETH}p");
            node.ip(&["link", "add", CNI_VETH, "type", "veth", "peer", "name", &peer]);
            node.ip(&["link", "set", &peer, "up"]);
            node.ip(&["link", "set", CNI_VETH, "up"]);
        }
        node.ip(&["addr", "replace", CNI_VETH_ADDRESS, "dev", CNI_VETH]);
        node.ip(&["route", "replace", POD_ROUTE, "dev", CNI_VETH, "scope", "link", "proto", "bird"]);
        node.ip(&["route", "replace", "blackhole", BLACKHOLE, "proto", "bird"]);
        if !node.ip(&["rule", "show"]).contains(&format!("from {RULE_FROM} lookup 100")) {
            node.ip(&["rule", "add", "from", RULE_FROM, "lookup", "100", "priority", "100"]);
        }
        node.settle();
    }
}

/// Everything on a node that is not ours, as text lines, sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub links: BTreeSet<String>,
    pub routes: BTreeSet<String>,
    pub rules: BTreeSet<String>,
    /// The primary NIC's `carrier_changes`: any bounce of it counts.
    pub primary_carrier_changes: u64,
}

impl Snapshot {
    /// Reads `node` (after letting IPv6 duplicate address detection settle),
    /// leaving out the links that are or will be ours: those called
    /// `multinicN` and those with one of the MACs in `ours`.
    pub fn take(node: &TestNode, ours: &[&str]) -> Self {
        node.settle();
        let links = node
            .links()
            .into_iter()
            .filter(|l| !is_ours(&l.name) && !ours.iter().any(|mac| mac.eq_ignore_ascii_case(&l.mac)))
            .map(|l| format!("{} {} mtu {} up {} {:?}", l.name, l.mac, l.mtu, l.up, l.addresses))
            .collect();
        let mut routes = BTreeSet::new();
        for family in ["-4", "-6"] {
            let json = node.ip(&[family, "-j", "route", "show", "table", "all"]);
            let parsed: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("ip -j route: {e}: {json}"));
            routes.extend(parsed.as_array().into_iter().flatten().filter_map(route_line));
        }
        let json = node.ip(&["-j", "rule", "show"]);
        let parsed: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("ip -j rule: {e}: {json}"));
        let rules = parsed.as_array().into_iter().flatten().map(|r| canonical(r, &[])).collect();
        let counter = crate::netns::run(
            "ip",
            &["netns", "exec", node.name(), "cat", &format!("/sys/class/net/{PRIMARY}/carrier_changes")],
        );
        let primary_carrier_changes =
            counter.trim().parse().unwrap_or_else(|e| panic!("carrier_changes {counter:?}: {e}"));
        Self { links, routes, rules, primary_carrier_changes }
    }

    /// Panics, naming every difference, unless `now` equals `self`.
    pub fn assert_same(&self, now: &Self, when: &str) {
        if self == now {
            return;
        }
        let mut diff = String::new();
        for (what, before, after) in
            [("link", &self.links, &now.links), ("route", &self.routes, &now.routes), ("rule", &self.rules, &now.rules)]
        {
            for gone in before.difference(after) {
                diff.push_str(&format!("  - {what} {gone}\n"));
            }
            for new in after.difference(before) {
                diff.push_str(&format!("  + {what} {new}\n"));
            }
        }
        if self.primary_carrier_changes != now.primary_carrier_changes {
            diff.push_str(&format!(
                "  {PRIMARY} carrier_changes {} -> {}\n",
                self.primary_carrier_changes, now.primary_carrier_changes
            ));
        }
        panic!("{when}: the node's other state changed:\n{diff}");
    }

    /// Whether the CNI's route through the primary NIC is there.
    pub fn has_cni_route(&self) -> bool {
        self.routes.iter().any(|r| r.contains(&format!("dst={CNI_ROUTE} ")))
    }
}

/// Our links: `multinicN`.
fn is_ours(name: &str) -> bool {
    name.strip_prefix("multinic").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// A route as one line of its stable fields; `None` for routes on our links
/// and for the kernel's own per-link IPv6 routes, which come and go with
/// links being up (link-local and multicast).
fn route_line(route: &Value) -> Option<String> {
    let dev = route.get("dev").and_then(Value::as_str).unwrap_or_default();
    if is_ours(dev) {
        return None;
    }
    let dst = route.get("dst").and_then(Value::as_str).unwrap_or_default();
    if dst.starts_with("fe80:") || dst.starts_with("ff00:") || dst == "multicast" {
        return None;
    }
    Some(canonical(route, &["expires", "flags", "pref"]))
}

/// `key=value` pairs of a JSON object, sorted, without `skip`.
fn canonical(object: &Value, skip: &[&str]) -> String {
    let mut pairs: Vec<String> = object
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={}", v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
        .collect();
    pairs.sort();
    pairs.join(" ") + " "
}
