//! From database rows to each node's desired set. Pure: no I/O, no clock.
//!
//! Every row either becomes part of an interface spec or a [`RowProblem`]
//! that names the row and says what is wrong. A problem never removes
//! anything from a node: a row whose MAC is valid but whose content is not
//! (or that conflicts with another row) makes that MAC *held*, which tells the
//! agent to leave whatever it has for that MAC exactly as it is.
//!
//! A node's rows are judged with what the rest of the fleet says about them
//! ([`Context`]: the other nodes of a MAC or an address, whether a row's
//! content changed in this run). In production one road leads here: the
//! controller's copy of the rows ([`crate::row_copy::RowCopy`]) is the
//! context, whether for every node after the first read or for the nodes a
//! change touched. Tests have a second, independent road over one snapshot
//! (`desired_fleet`), the oracle the copy is checked against.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;

use multinic_proto::{DesiredSet, ErrorCode, IfaceAddr, InterfaceSpec, MacAddress, Mtu, NodeName, ParseError};

use crate::store::{InterfaceRow, RowContent};

/// A row the controller could not turn into (part of) an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowProblem {
    pub row_id: i64,
    /// The node, when the row's `attached_node_name` is valid.
    pub node: Option<NodeName>,
    /// `macaddress` as stored.
    pub mac: String,
    pub code: ErrorCode,
    pub message: String,
}

/// One row behind an interface of a node's set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowRef {
    pub id: i64,
    /// What the row held when read; outcomes are recorded against it.
    pub content: RowContent,
    /// `netplan_success` as read.
    pub netplan_success: bool,
    /// The row's own spec, when the row is valid.
    pub spec: Option<InterfaceSpec>,
    /// The row's content (or node) changed in this controller run while it
    /// read `netplan_success = 1`: that 1 was for content it no longer has.
    pub stale: bool,
}

/// A node's desired set plus the rows it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDesired {
    pub set: DesiredSet,
    /// The rows behind each MAC of the set, held MACs included.
    pub rows: BTreeMap<MacAddress, Vec<RowRef>>,
    /// This node's rows with problems, in row order.
    pub problems: Vec<RowProblem>,
    /// The error code of each held MAC's first problem (status views look
    /// it up per held MAC; a scan of `problems` each time is quadratic).
    pub held_codes: BTreeMap<MacAddress, ErrorCode>,
    /// Valid rows that look wrong but are applied (an address another
    /// interface also has), in row order.
    pub warnings: Vec<RowProblem>,
}

impl NodeDesired {
    /// A node with no rows.
    pub fn empty() -> Self {
        Self {
            set: DesiredSet::empty(),
            rows: BTreeMap::new(),
            problems: Vec::new(),
            held_codes: BTreeMap::new(),
            warnings: Vec::new(),
        }
    }
}

/// What judging one node's rows needs to know about the rest of the fleet.
pub trait Context {
    /// Every node (the row's own included) that has a row with this MAC.
    fn nodes_of_mac(&self, mac: &MacAddress) -> Vec<NodeName>;
    /// Every (node, MAC) that has a row with this address.
    fn holders_of_address(&self, address: &IpAddr) -> Vec<(NodeName, MacAddress)>;
    /// Whether the row's content changed in this run while it read 1.
    fn stale(&self, id: i64) -> bool;
}

/// The address a row asks for, as the index of [`Context::holders_of_address`]
/// knows it (the bare address, whatever its cidr).
pub fn row_address(row: &InterfaceRow) -> Option<IpAddr> {
    row.address.as_deref().map(str::trim).filter(|a| !a.is_empty())?.parse().ok()
}

/// Every node's desired set, from one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredSets {
    pub nodes: BTreeMap<NodeName, NodeDesired>,
    /// Rows that name no valid node.
    pub unattached: Vec<RowProblem>,
}

impl DesiredSets {
    /// Every problem, node by node, then the unattached rows.
    pub fn problems(&self) -> impl Iterator<Item = &RowProblem> {
        self.nodes.values().flat_map(|n| n.problems.iter()).chain(self.unattached.iter())
    }

    /// The number of interfaces (specs) across the fleet.
    pub fn interface_count(&self) -> usize {
        self.nodes.values().map(|n| n.set.len()).sum()
    }
}

/// A row parsed as far as it goes.
struct ParsedRow<'a> {
    row: &'a InterfaceRow,
    spec: Result<InterfaceSpec, ParseError>,
}

/// The node a row is attached to, or the problem of a row attached to none.
pub fn row_node(row: &InterfaceRow) -> Result<NodeName, RowProblem> {
    match row.attached_node_name.as_deref().map(str::parse::<NodeName>) {
        None => Err(problem(row, None, ErrorCode::InvalidRow, "attached_node_name is NULL".into())),
        Some(Err(e)) => Err(problem(row, None, ErrorCode::InvalidRow, format!("attached_node_name: {e}"))),
        Some(Ok(node)) => Ok(node),
    }
}

/// One node's desired set from all of its rows (in id order), judged in
/// `context`: a MAC on two nodes is held on both.
pub fn node_desired(node: &NodeName, rows: &[&InterfaceRow], context: &dyn Context) -> NodeDesired {
    // Each row's MAC is parsed here, once per pass; what follows uses the
    // parsed value.
    let mut by_mac: BTreeMap<MacAddress, Vec<ParsedRow<'_>>> = BTreeMap::new();
    let mut with_mac: Vec<(&InterfaceRow, MacAddress)> = Vec::with_capacity(rows.len());
    let mut problems = Vec::new();
    for row in rows {
        match row.macaddress.parse::<MacAddress>() {
            Ok(mac) => {
                with_mac.push((row, mac));
                by_mac.entry(mac).or_default().push(ParsedRow { row, spec: row_spec(row, mac) });
            }
            Err(e) => problems.push(problem(row, Some(node), ErrorCode::InvalidRow, format!("macaddress: {e}"))),
        }
    }
    let mut specs = BTreeMap::new();
    let mut held = BTreeSet::new();
    let mut held_codes = BTreeMap::new();
    let mut rows_of = BTreeMap::new();
    for (mac, rows) in by_mac {
        let all = context.nodes_of_mac(&mac);
        let others: Vec<&str> = all.iter().filter(|n| *n != node).map(NodeName::as_str).collect();
        match decide(&rows, &others) {
            Ok(spec) => {
                specs.insert(mac, spec);
            }
            Err(row_problems) => {
                held.insert(mac);
                // The code of the MAC's first problem by row id (all of a
                // held MAC's problems are these).
                if let Some((_, code, _)) = row_problems.iter().min_by_key(|(row, _, _)| row.id) {
                    held_codes.insert(mac, *code);
                }
                problems.extend(row_problems.into_iter().map(|(row, code, msg)| problem(row, Some(node), code, msg)));
            }
        }
        // Problems of invalid rows next to a valid spec.
        for parsed in &rows {
            if let Err(e) = &parsed.spec
                && specs.contains_key(&mac)
            {
                let msg = format!("{e}; this row is ignored, another row of MAC {mac} applies");
                problems.push(problem(parsed.row, Some(node), ErrorCode::InvalidRow, msg));
            }
        }
        let refs = rows
            .iter()
            .map(|p| RowRef {
                id: p.row.id,
                content: p.row.content(),
                netplan_success: p.row.netplan_success != 0,
                spec: p.spec.as_ref().ok().copied(),
                stale: p.row.netplan_success != 0 && context.stale(p.row.id),
            })
            .collect();
        rows_of.insert(mac, refs);
    }
    problems.sort_by_key(|p| p.row_id);
    let warnings = address_warnings(node, &with_mac, &specs, &held, context);
    NodeDesired { set: DesiredSet::from_parts(specs, held), rows: rows_of, problems, held_codes, warnings }
}

/// A warning for each valid row (with its parsed MAC, in row order) whose
/// address another interface (another MAC, on this node or another) also has: both are applied, as the rows
/// say, but one of them is likely a mistake.
fn address_warnings(
    node: &NodeName,
    rows: &[(&InterfaceRow, MacAddress)],
    specs: &BTreeMap<MacAddress, InterfaceSpec>,
    held: &BTreeSet<MacAddress>,
    context: &dyn Context,
) -> Vec<RowProblem> {
    let mut warnings = Vec::new();
    let mut seen = HashSet::new();
    for &(row, mac) in rows {
        let Some(spec) = specs.get(&mac).filter(|_| !held.contains(&mac)) else { continue };
        let Some(address) = spec.address.map(|a| a.addr()) else { continue };
        if row_address(row) != Some(address) || !seen.insert(row.id) {
            continue;
        }
        let others: Vec<(NodeName, MacAddress)> =
            context.holders_of_address(&address).into_iter().filter(|(_, m)| *m != mac).collect();
        let Some((first_node, first_mac)) = others.first() else { continue };
        let more = match others.len() {
            1 => String::new(),
            n => format!(" and {} more", n - 1),
        };
        let place = if first_node == node { "this node".to_owned() } else { format!("node {first_node}") };
        let message = format!(
            "address {address} is also desired for {first_mac} on {place}{more}; both are applied \
             (the OpenStack side normally prevents this)"
        );
        warnings.push(problem(row, Some(node), ErrorCode::DuplicateAddress, message));
    }
    warnings
}

type Problems<'a> = Vec<(&'a InterfaceRow, ErrorCode, String)>;

/// The one spec the rows of a MAC agree on, or why the MAC must be held.
///
/// Invalid rows next to valid ones are reported by the caller and do not
/// block the valid spec: one bad row never affects another.
fn decide<'a>(rows: &[ParsedRow<'a>], other_nodes: &[&str]) -> Result<InterfaceSpec, Problems<'a>> {
    const HELD: &str = "the node keeps its current configuration for this MAC";
    if !other_nodes.is_empty() {
        let msg = format!("MAC is also attached to node(s) {}; {HELD}", other_nodes.join(", "));
        return Err(rows.iter().map(|p| (p.row, ErrorCode::DuplicateMac, msg.clone())).collect());
    }
    let valid: BTreeSet<_> = rows.iter().filter_map(|p| p.spec.as_ref().ok()).map(SpecKey::from).collect();
    let first_valid = rows.iter().find_map(|p| p.spec.as_ref().ok().copied());
    match (valid.len(), first_valid) {
        (1, Some(spec)) => Ok(spec),
        (0, _) | (_, None) => Err(rows
            .iter()
            .filter_map(|p| p.spec.as_ref().err().map(|e| (p.row, ErrorCode::InvalidRow, format!("{e}; {HELD}"))))
            .collect()),
        _ => {
            let ids: Vec<String> = rows.iter().map(|p| p.row.id.to_string()).collect();
            let msg = format!("rows {} give this MAC different settings; {HELD}", ids.join(", "));
            Err(rows.iter().map(|p| (p.row, ErrorCode::DuplicateMac, msg.clone())).collect())
        }
    }
}

/// Specs compare by content for agreement between rows.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct SpecKey(Option<IfaceAddr>, Mtu);

impl From<&InterfaceSpec> for SpecKey {
    fn from(spec: &InterfaceSpec) -> Self {
        Self(spec.address, spec.mtu)
    }
}

/// A row's spec: `mtu` NULL means the column default (1500); `address` NULL
/// means rename and MTU only; `cidr` NULL falls back to `multi_subnet.cidr`.
fn row_spec(row: &InterfaceRow, mac: MacAddress) -> Result<InterfaceSpec, ParseError> {
    let mtu = match row.mtu {
        None => Mtu::DEFAULT,
        Some(mtu) => Mtu::new(mtu)?,
    };
    let address = match row.address.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(address) => {
            let cidr = row.cidr.as_deref().or(row.subnet_cidr.as_deref()).filter(|c| !c.trim().is_empty());
            let Some(cidr) = cidr else {
                return Err(ParseError::Cidr {
                    input: String::new(),
                    reason: format!(
                        "address {address} has no cidr: multi_interface.cidr is NULL and no multi_subnet.cidr exists for its subnet"
                    ),
                });
            };
            Some(IfaceAddr::from_address_and_cidr(address, cidr.trim())?)
        }
    };
    InterfaceSpec::new(mac, address, mtu)
}

fn problem(row: &InterfaceRow, node: Option<&NodeName>, code: ErrorCode, message: String) -> RowProblem {
    RowProblem { row_id: row.id, node: node.cloned(), mac: row.macaddress.clone(), code, message }
}

#[cfg(test)]
pub use oracle::desired_fleet;

/// The desired sets of a whole snapshot, computed without the copy of the
/// rows: the test oracle for [`crate::row_copy::RowCopy`].
#[cfg(test)]
mod oracle {
    use std::collections::{BTreeMap, BTreeSet, HashMap};
    use std::net::IpAddr;

    use multinic_proto::{MacAddress, NodeName};

    use super::{Context, DesiredSets, node_desired, row_address, row_node};
    use crate::store::{ActiveRows, InterfaceRow};

    /// [`Context`] over one full snapshot: nothing changed in this run yet.
    struct SnapshotContext {
        nodes_of_mac: HashMap<MacAddress, BTreeSet<NodeName>>,
        holders_of_address: HashMap<IpAddr, BTreeSet<(NodeName, MacAddress)>>,
    }

    impl Context for SnapshotContext {
        fn nodes_of_mac(&self, mac: &MacAddress) -> Vec<NodeName> {
            self.nodes_of_mac.get(mac).into_iter().flatten().cloned().collect()
        }

        fn holders_of_address(&self, address: &IpAddr) -> Vec<(NodeName, MacAddress)> {
            self.holders_of_address.get(address).into_iter().flatten().cloned().collect()
        }

        fn stale(&self, _id: i64) -> bool {
            false
        }
    }

    /// Computes every node's desired set from a snapshot.
    pub fn desired_fleet(snapshot: &ActiveRows) -> DesiredSets {
        let mut fleet = DesiredSets::default();
        let mut by_node: BTreeMap<NodeName, Vec<&InterfaceRow>> = BTreeMap::new();
        let mut context = SnapshotContext { nodes_of_mac: HashMap::new(), holders_of_address: HashMap::new() };
        for row in &snapshot.rows {
            match row_node(row) {
                Err(problem) => fleet.unattached.push(problem),
                Ok(node) => {
                    if let Ok(mac) = row.macaddress.parse::<MacAddress>() {
                        context.nodes_of_mac.entry(mac).or_default().insert(node.clone());
                        if let Some(address) = row_address(row) {
                            context.holders_of_address.entry(address).or_default().insert((node.clone(), mac));
                        }
                    }
                    by_node.entry(node).or_default().push(row);
                }
            }
        }
        for (node, mut rows) in by_node {
            rows.sort_by_key(|r| r.id);
            let desired = node_desired(&node, &rows, &context);
            fleet.nodes.insert(node, desired);
        }
        fleet
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ActiveRows;

    fn row(
        id: i64,
        node: Option<&str>,
        mac: &str,
        address: Option<&str>,
        cidr: Option<&str>,
        mtu: Option<i64>,
    ) -> InterfaceRow {
        InterfaceRow {
            id,
            macaddress: mac.into(),
            attached_node_name: node.map(Into::into),
            address: address.map(Into::into),
            cidr: cidr.map(Into::into),
            subnet_cidr: None,
            mtu,
            netplan_success: 0,
        }
    }

    fn node(name: &str) -> NodeName {
        name.parse().unwrap()
    }

    fn fleet(rows: Vec<InterfaceRow>) -> DesiredSets {
        desired_fleet(&ActiveRows { rows })
    }

    #[test]
    fn rows_group_by_short_lower_case_node_name() {
        let f = fleet(vec![
            row(1, Some("Node1.novalocal"), "fa:16:3e:00:00:01", Some("10.0.0.5"), Some("10.0.0.0/24"), Some(1450)),
            row(2, Some("node1"), "FA:16:3E:00:00:02", None, None, None),
            row(3, Some("node2"), "fa:16:3e:00:00:03", None, None, Some(9000)),
        ]);
        assert_eq!(f.nodes.len(), 2);
        let n1 = &f.nodes[&node("node1")];
        assert_eq!(n1.set.len(), 2);
        let mac2: MacAddress = "fa:16:3e:00:00:02".parse().unwrap();
        assert_eq!(n1.set.get(&mac2).unwrap().mtu, Mtu::DEFAULT, "NULL mtu is the column default");
        assert!(f.problems().next().is_none());
    }

    #[test]
    fn subnet_cidr_fills_a_null_cidr() {
        let mut r = row(1, Some("n"), "fa:16:3e:00:00:01", Some("10.1.0.9"), None, Some(1500));
        r.subnet_cidr = Some("10.1.0.0/16".into());
        let f = fleet(vec![r]);
        let spec = f.nodes[&node("n")].set.iter().next().copied().unwrap();
        assert_eq!(spec.address.unwrap().to_string(), "10.1.0.9/16");
    }

    #[test]
    fn invalid_rows_are_problems_and_never_touch_other_rows() {
        let f = fleet(vec![
            row(1, Some("n"), "fa:16:3e:00:00:01", None, None, Some(1500)),
            row(2, Some("n"), "fa-16-3e-00-00-02", None, None, Some(1500)),
            row(3, Some("n"), "fa:16:3e:00:00:03", None, None, Some(0)),
            row(4, Some("n"), "fa:16:3e:00:00:04", Some("10.0.0.5"), None, Some(1500)),
            row(5, None, "fa:16:3e:00:00:05", None, None, Some(1500)),
            row(6, Some(""), "fa:16:3e:00:00:06", None, None, Some(1500)),
            row(7, Some("bad_node"), "fa:16:3e:00:00:07", None, None, Some(1500)),
        ]);
        let n = &f.nodes[&node("n")];
        assert_eq!(n.set.len(), 1, "only the valid row becomes a spec");
        let ids: Vec<i64> = n.problems.iter().map(|p| p.row_id).collect();
        assert_eq!(ids, vec![2, 3, 4]);
        assert!(n.problems[0].message.contains("dashes"));
        assert!(n.problems[1].message.contains("positive"));
        assert!(n.problems[2].message.contains("no cidr"));
        // Rows 3 and 4 have valid MACs: held, so the node keeps what it has.
        assert_eq!(n.set.held().len(), 2);
        let unattached: Vec<i64> = f.unattached.iter().map(|p| p.row_id).collect();
        assert_eq!(unattached, vec![5, 6, 7]);
        assert!(f.unattached[0].message.contains("NULL"));
        assert!(f.unattached[1].message.contains("empty"));
    }

    #[test]
    fn same_mac_twice_on_a_node() {
        let same = fleet(vec![
            row(1, Some("n"), "fa:16:3e:00:00:01", None, None, Some(1500)),
            row(2, Some("n"), "fa:16:3e:00:00:01", None, None, Some(1500)),
        ]);
        let n = &same.nodes[&node("n")];
        assert_eq!(n.set.len(), 1, "identical rows agree");
        assert_eq!(n.rows.values().next().unwrap().len(), 2);
        assert!(n.problems.is_empty());

        let differ = fleet(vec![
            row(1, Some("n"), "fa:16:3e:00:00:01", None, None, Some(1500)),
            row(2, Some("n"), "fa:16:3e:00:00:01", None, None, Some(9000)),
        ]);
        let n = &differ.nodes[&node("n")];
        assert_eq!(n.set.len(), 0);
        assert_eq!(n.set.held().len(), 1);
        assert_eq!(n.problems.len(), 2);
        assert!(n.problems.iter().all(|p| p.code == ErrorCode::DuplicateMac && p.message.contains("rows 1, 2")));
    }

    #[test]
    fn valid_row_wins_over_an_invalid_row_of_the_same_mac() {
        let f = fleet(vec![
            row(1, Some("n"), "fa:16:3e:00:00:01", None, None, Some(1500)),
            row(2, Some("n"), "fa:16:3e:00:00:01", None, None, Some(-5)),
        ]);
        let n = &f.nodes[&node("n")];
        assert_eq!(n.set.len(), 1);
        assert_eq!(n.problems.len(), 1);
        assert_eq!(n.problems[0].row_id, 2);
    }

    #[test]
    fn same_mac_on_two_nodes_is_held_on_both() {
        let f = fleet(vec![
            row(1, Some("a"), "fa:16:3e:00:00:01", None, None, Some(1500)),
            row(2, Some("b"), "fa:16:3e:00:00:01", None, None, Some(1500)),
            row(3, Some("b"), "fa:16:3e:00:00:02", None, None, Some(1500)),
        ]);
        for (name, other) in [("a", "b"), ("b", "a")] {
            let n = &f.nodes[&node(name)];
            assert_eq!(n.set.held().len(), 1, "{name}");
            assert!(n.problems[0].message.contains(other), "{}", n.problems[0].message);
        }
        assert_eq!(f.nodes[&node("b")].set.len(), 1, "b's other MAC is unaffected");
    }

    #[test]
    fn the_same_address_on_two_interfaces_is_a_warning_and_both_apply() {
        let f = fleet(vec![
            row(1, Some("a"), "fa:16:3e:00:00:01", Some("10.0.0.5"), Some("10.0.0.0/24"), Some(1500)),
            row(2, Some("b"), "fa:16:3e:00:00:02", Some("10.0.0.5"), Some("10.0.0.0/16"), Some(1500)),
            row(3, Some("b"), "fa:16:3e:00:00:03", Some("10.0.0.6"), Some("10.0.0.0/24"), Some(1500)),
            row(4, Some("c"), "fa:16:3e:00:00:04", Some("10.0.0.6"), Some("10.0.0.0/24"), Some(0)),
        ]);
        let a = &f.nodes[&node("a")];
        assert_eq!(a.set.len(), 1, "applied anyway");
        assert!(a.problems.is_empty());
        assert_eq!(a.warnings.len(), 1);
        assert_eq!(a.warnings[0].code, ErrorCode::DuplicateAddress);
        assert!(a.warnings[0].message.contains("10.0.0.5 is also desired for fa:16:3e:00:00:02 on node b"));
        let b = &f.nodes[&node("b")];
        // Row 4 is invalid (a problem, no warning of its own), but it asks
        // for 10.0.0.6 too: row 3 is warned.
        assert_eq!(b.warnings.iter().map(|w| w.row_id).collect::<Vec<_>>(), vec![2, 3]);
        assert!(f.nodes[&node("c")].warnings.is_empty());
        // A node's rows of one MAC sharing an address are not a duplicate.
        let same = fleet(vec![
            row(1, Some("a"), "fa:16:3e:00:00:01", Some("10.0.0.5"), Some("10.0.0.0/24"), Some(1500)),
            row(2, Some("a"), "fa:16:3e:00:00:01", Some("10.0.0.5"), Some("10.0.0.0/24"), Some(1500)),
        ]);
        assert!(same.nodes[&node("a")].warnings.is_empty());
    }

    #[test]
    fn held_macs_know_their_first_problems_code() {
        let f = fleet(vec![
            row(1, Some("a"), "fa:16:3e:00:00:01", None, None, Some(0)),
            row(2, Some("a"), "fa:16:3e:00:00:02", None, None, Some(1500)),
            row(3, Some("b"), "fa:16:3e:00:00:02", None, None, Some(1500)),
        ]);
        let a = &f.nodes[&node("a")];
        let code = |m: &str| a.held_codes.get(&m.parse::<MacAddress>().unwrap()).copied();
        assert_eq!(code("fa:16:3e:00:00:01"), Some(ErrorCode::InvalidRow));
        assert_eq!(code("fa:16:3e:00:00:02"), Some(ErrorCode::DuplicateMac));
    }

    #[test]
    fn digest_does_not_depend_on_row_ids() {
        let before =
            fleet(vec![row(1, Some("n"), "fa:16:3e:00:00:01", Some("10.0.0.5"), Some("10.0.0.0/24"), Some(1500))]);
        let after =
            fleet(vec![row(9, Some("n"), "fa:16:3e:00:00:01", Some("10.0.0.5"), Some("10.0.0.0/24"), Some(1500))]);
        assert_eq!(before.nodes[&node("n")].set.digest(), after.nodes[&node("n")].set.digest());
    }
}

/// Fuzzing of the rows → desired sets function with arbitrary rows: it never
/// panics, accounts for every row exactly once, and does not depend on row
/// order. Longer runs: `PROPTEST_CASES=100000 cargo test -p multinic-controller desired::fuzz`.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::store::ActiveRows;

    fn any_row() -> impl Strategy<Value = InterfaceRow> {
        let node = prop_oneof![
            Just(None),
            Just(Some(String::new())),
            "[a-cA-C][a-c.-]{0,6}".prop_map(Some),
            "\\PC{0,12}".prop_map(Some)
        ];
        let mac = prop_oneof!["fa:16:3e:00:00:0[0-4]", "[0-9a-fA-F:-]{0,18}", "\\PC{0,10}"];
        let address =
            prop_oneof![Just(None), "10\\.0\\.[0-2]\\.[0-9]{1,3}".prop_map(Some), "\\PC{0,12}".prop_map(Some)];
        let cidr = prop_oneof![
            Just(None),
            Just(Some("10.0.0.0/24".to_owned())),
            Just(Some("10.0.0.0/16".to_owned())),
            "\\PC{0,12}".prop_map(Some)
        ];
        let mtu = prop_oneof![Just(None), Just(Some(1500)), Just(Some(9000)), any::<i64>().prop_map(Some)];
        (1i64..1000, node, mac, address, cidr.clone(), cidr, mtu, 0i64..2).prop_map(
            |(id, attached_node_name, macaddress, address, cidr, subnet_cidr, mtu, netplan_success)| InterfaceRow {
                id,
                macaddress,
                attached_node_name,
                address,
                cidr,
                subnet_cidr,
                mtu,
                netplan_success,
            },
        )
    }

    proptest! {
        #[test]
        fn every_row_is_accounted_for_once(rows in proptest::collection::vec(any_row(), 0..40)) {
            let fleet = desired_fleet(&ActiveRows { rows: rows.clone() });
            let in_sets: usize = fleet.nodes.values().flat_map(|n| n.rows.values()).map(Vec::len).sum();
            let bad_macs = fleet
                .nodes
                .values()
                .flat_map(|n| n.problems.iter())
                .filter(|p| p.mac.parse::<MacAddress>().is_err())
                .count();
            prop_assert_eq!(in_sets + bad_macs + fleet.unattached.len(), rows.len());
            for node in fleet.nodes.values() {
                for spec in node.set.iter() {
                    // A spec only comes from a valid row of its own MAC.
                    let rows = &node.rows[&spec.mac];
                    prop_assert!(rows.iter().any(|r| r.spec == Some(*spec)));
                }
                for mac in node.set.held() {
                    prop_assert!(node.problems.iter().any(|p| p.mac.parse::<MacAddress>().ok() == Some(*mac)));
                    // Its code is its first problem's (the problems are in row order).
                    let first = node.problems.iter().find(|p| p.mac.parse::<MacAddress>().ok() == Some(*mac));
                    prop_assert_eq!(node.held_codes.get(mac).copied(), first.map(|p| p.code));
                }
                prop_assert_eq!(node.held_codes.len(), node.set.held().len());
            }
        }

        #[test]
        fn row_order_does_not_matter(mut rows in proptest::collection::vec(any_row(), 0..20)) {
            let before = desired_fleet(&ActiveRows { rows: rows.clone() });
            rows.reverse();
            let after = desired_fleet(&ActiveRows { rows });
            let digests = |f: &DesiredSets| f.nodes.iter().map(|(n, d)| (n.clone(), d.set.digest().clone())).collect::<Vec<_>>();
            prop_assert_eq!(digests(&before), digests(&after));
        }
    }
}
