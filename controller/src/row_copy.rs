//! The controller's copy of the active rows, kept in step with the database
//! by full and incremental reads, and which nodes each change touches.
//!
//! Exists so that a change to a few rows costs work for a few nodes: a row
//! change touches its node (before and after) and every node that shares
//! its MAC (a MAC on two nodes is held on both). Only touched nodes have
//! their desired state recomputed. Pure: no I/O, no clock. It never drops
//! a row because of what a read lacks: the poll loop only gives it reads
//! that succeeded.
//!
//! It also remembers which rows changed content in this run while they read
//! `netplan_success = 1` ("stale"): the recorder writes 0 for them until
//! their node confirms the new content.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use multinic_proto::{MacAddress, NodeName};

use crate::desired::{Context, DesiredSets, NodeDesired, RowProblem, node_desired, row_address, row_node};
use crate::store::{ActiveRows, InterfaceRow, RowChange, RowContent};

/// The active rows, indexed by node, by MAC and by address.
#[derive(Debug, Default)]
pub struct RowCopy {
    rows: HashMap<i64, InterfaceRow>,
    /// Row ids of each node (rows whose node name is valid).
    by_node: HashMap<NodeName, BTreeSet<i64>>,
    /// The nodes that have rows with a MAC, with how many rows each.
    by_mac: HashMap<MacAddress, BTreeMap<NodeName, usize>>,
    /// The (node, MAC) pairs that have rows with an address, with how many rows each.
    by_address: HashMap<IpAddr, BTreeMap<(NodeName, MacAddress), usize>>,
    /// Rows that name no valid node.
    unattached: BTreeSet<i64>,
    /// Rows whose content or node changed in this run while they read 1.
    stale: HashSet<i64>,
}

/// What a change touched.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Touched {
    /// Nodes whose desired state must be recomputed.
    pub nodes: BTreeSet<NodeName>,
    /// Whether the rows naming no valid node changed.
    pub unattached: bool,
}

impl Touched {
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty() && !self.unattached
    }
}

impl RowCopy {
    /// Every active row of a full read.
    pub fn from_snapshot(snapshot: ActiveRows) -> Self {
        let mut rows = Self::default();
        for row in snapshot.rows {
            rows.insert(row, &mut Touched::default());
        }
        rows
    }

    /// How many active rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Applies rows modified recently (as they are now); rows that did not
    /// actually change touch nothing.
    pub fn apply(&mut self, changes: Vec<RowChange>) -> Touched {
        let mut touched = Touched::default();
        for RowChange { row, deleted } in changes {
            match (self.rows.get(&row.id), deleted) {
                (None, true) => {}
                (Some(old), false) if *old == row => {}
                (_, true) => {
                    self.stale.remove(&row.id);
                    self.remove(row.id, &mut touched);
                }
                (old, false) => {
                    if row.netplan_success == 0 {
                        self.stale.remove(&row.id);
                    } else if old.is_some_and(|old| moved_or_changed(old, &row)) {
                        self.stale.insert(row.id);
                    }
                    self.remove(row.id, &mut touched);
                    self.insert(row, &mut touched);
                }
            }
        }
        touched
    }

    /// Makes the copy equal to a full read: rows that differ, appeared or
    /// went away touch their nodes.
    pub fn replace(&mut self, snapshot: ActiveRows) -> Touched {
        let fresh: HashMap<i64, InterfaceRow> = snapshot.rows.into_iter().map(|r| (r.id, r)).collect();
        let gone: Vec<i64> = self.rows.keys().filter(|id| !fresh.contains_key(id)).copied().collect();
        let mut changes: Vec<RowChange> = gone
            .into_iter()
            .filter_map(|id| self.rows.get(&id).map(|row| RowChange { row: row.clone(), deleted: true }))
            .collect();
        changes.extend(fresh.into_values().map(|row| RowChange { row, deleted: false }));
        self.apply(changes)
    }

    /// Makes the copy equal to a full read that ran beside the ticks, except
    /// for the rows in `newer`: change reads (or the recorder) gave the copy
    /// those rows after the full read began, so its snapshot may hold an
    /// older state of them. They keep the copy's state, present or gone;
    /// if the snapshot was the newer, the next change read brings that
    /// state in, as it would have without a full read.
    pub fn replace_except(&mut self, snapshot: ActiveRows, newer: &HashSet<i64>) -> Touched {
        let mut rows: Vec<InterfaceRow> = snapshot.rows.into_iter().filter(|r| !newer.contains(&r.id)).collect();
        rows.extend(newer.iter().filter_map(|id| self.rows.get(id).cloned()));
        self.replace(ActiveRows { rows })
    }

    /// Notes a `netplan_success` the controller wrote, if the row still holds
    /// the content it was written for. The copy is the owner of what a row
    /// stores; the recorder only remembers its writes until this is called
    /// (see `crate::recorder`).
    pub fn recorded(&mut self, id: i64, content: &RowContent, success: bool) -> Touched {
        let mut touched = Touched::default();
        if self.rows.get(&id).is_some_and(|row| row.content() == *content) && self.stale.remove(&id) {
            // The value now stands for this content (1: confirmed; 0: said).
            touched.nodes.extend(self.rows.get(&id).and_then(|row| row_node(row).ok()));
        }
        if let Some(row) = self.rows.get(&id)
            && row.content() == *content
            && (row.netplan_success != 0) != success
        {
            let mut row = row.clone();
            row.netplan_success = i64::from(success);
            self.remove(id, &mut touched);
            self.insert(row, &mut touched);
        }
        touched
    }

    /// The desired state of `node` (`None`: the node has no rows).
    pub fn desired(&self, node: &NodeName) -> Option<NodeDesired> {
        let ids = self.by_node.get(node)?;
        let rows: Vec<&InterfaceRow> = ids.iter().filter_map(|id| self.rows.get(id)).collect();
        Some(node_desired(node, &rows, self))
    }

    /// Every node's desired state and the unattached rows (what the first
    /// read publishes; tests check it against `desired::desired_fleet`, the
    /// same rows judged without the copy).
    pub fn desired_fleet(&self) -> DesiredSets {
        let nodes = self.by_node.keys().filter_map(|n| Some((n.clone(), self.desired(n)?))).collect();
        DesiredSets { nodes, unattached: self.unattached() }
    }

    /// One active row, by id.
    pub fn row(&self, id: i64) -> Option<&InterfaceRow> {
        self.rows.get(&id)
    }

    /// The desired state of each touched node.
    pub fn desired_of(&self, nodes: &BTreeSet<NodeName>) -> BTreeMap<NodeName, Option<NodeDesired>> {
        nodes.iter().map(|n| (n.clone(), self.desired(n))).collect()
    }

    /// The problems of rows that name no valid node, in row order.
    pub fn unattached(&self) -> Vec<RowProblem> {
        self.unattached.iter().filter_map(|id| self.rows.get(id)).filter_map(|r| row_node(r).err()).collect()
    }

    fn insert(&mut self, row: InterfaceRow, touched: &mut Touched) {
        match row_node(&row) {
            Err(_) => {
                self.unattached.insert(row.id);
                touched.unattached = true;
            }
            Ok(node) => {
                if let Ok(mac) = row.macaddress.parse::<MacAddress>() {
                    let nodes = self.by_mac.entry(mac).or_default();
                    touched.nodes.extend(nodes.keys().cloned());
                    *nodes.entry(node.clone()).or_default() += 1;
                    if let Some(address) = row_address(&row) {
                        let holders = self.by_address.entry(address).or_default();
                        touched.nodes.extend(holders.keys().map(|(n, _)| n.clone()));
                        *holders.entry((node.clone(), mac)).or_default() += 1;
                    }
                }
                self.by_node.entry(node.clone()).or_default().insert(row.id);
                touched.nodes.insert(node);
            }
        }
        self.rows.insert(row.id, row);
    }

    fn remove(&mut self, id: i64, touched: &mut Touched) {
        let Some(row) = self.rows.remove(&id) else { return };
        let Ok(node) = row_node(&row) else {
            self.unattached.remove(&id);
            touched.unattached = true;
            return;
        };
        if let Ok(mac) = row.macaddress.parse::<MacAddress>()
            && let Some(nodes) = self.by_mac.get_mut(&mac)
        {
            touched.nodes.extend(nodes.keys().cloned());
            if let Some(count) = nodes.get_mut(&node) {
                *count -= 1;
                if *count == 0 {
                    nodes.remove(&node);
                }
            }
            if nodes.is_empty() {
                self.by_mac.remove(&mac);
            }
            if let Some(address) = row_address(&row)
                && let Some(holders) = self.by_address.get_mut(&address)
            {
                touched.nodes.extend(holders.keys().map(|(n, _)| n.clone()));
                let key = (node.clone(), mac);
                if let Some(count) = holders.get_mut(&key) {
                    *count -= 1;
                    if *count == 0 {
                        holders.remove(&key);
                    }
                }
                if holders.is_empty() {
                    self.by_address.remove(&address);
                }
            }
        }
        if let Some(ids) = self.by_node.get_mut(&node) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_node.remove(&node);
            }
        }
        touched.nodes.insert(node);
    }
}

impl Context for RowCopy {
    fn nodes_of_mac(&self, mac: &MacAddress) -> Vec<NodeName> {
        self.by_mac.get(mac).map(|n| n.keys().cloned().collect()).unwrap_or_default()
    }

    fn holders_of_address(&self, address: &IpAddr) -> Vec<(NodeName, MacAddress)> {
        self.by_address.get(address).map(|h| h.keys().cloned().collect()).unwrap_or_default()
    }

    fn stale(&self, id: i64) -> bool {
        self.stale.contains(&id)
    }
}

/// Whether a row now asks something else of a node, or of another node:
/// what it said before about `netplan_success` no longer holds.
fn moved_or_changed(old: &InterfaceRow, new: &InterfaceRow) -> bool {
    old.content() != new.content() || old.subnet_cidr != new.subnet_cidr || row_node(old).ok() != row_node(new).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::desired_fleet;

    fn row(id: i64, node: &str, mac: &str, mtu: i64) -> InterfaceRow {
        InterfaceRow::plain(id, node, mac, mtu, 0)
    }

    fn names(t: &Touched) -> Vec<&str> {
        t.nodes.iter().map(NodeName::as_str).collect()
    }

    fn same_as_full(rows: &RowCopy, all: Vec<InterfaceRow>) {
        let full = desired_fleet(&ActiveRows { rows: all });
        for (node, desired) in &full.nodes {
            assert_eq!(rows.desired(node).as_ref(), Some(desired), "{node}");
        }
        assert_eq!(rows.by_node.len(), full.nodes.len());
        assert_eq!(rows.unattached(), full.unattached);
        assert_eq!(rows.desired_fleet(), full);
    }

    #[test]
    fn a_change_touches_its_node_and_the_nodes_sharing_its_mac() {
        let all = vec![row(1, "a", "fa:16:3e:00:00:01", 1500), row(2, "b", "fa:16:3e:00:00:02", 1500)];
        let mut rows = RowCopy::from_snapshot(ActiveRows { rows: all.clone() });
        same_as_full(&rows, all);

        let t = rows.apply(vec![RowChange { row: row(1, "a", "fa:16:3e:00:00:01", 1500), deleted: false }]);
        assert!(t.is_empty(), "an unchanged row touches nothing");

        // b takes a's MAC: both are touched (the MAC is held on both now).
        let t = rows.apply(vec![RowChange { row: row(2, "b", "fa:16:3e:00:00:01", 1500), deleted: false }]);
        assert_eq!(names(&t), vec!["a", "b"]);
        let a = rows.desired(&"a".parse().unwrap()).unwrap();
        assert_eq!(a.set.held().len(), 1);
        same_as_full(&rows, vec![row(1, "a", "fa:16:3e:00:00:01", 1500), row(2, "b", "fa:16:3e:00:00:01", 1500)]);

        // Soft-deleted: b has no rows left; a gets its MAC back.
        let t = rows.apply(vec![RowChange { row: row(2, "b", "fa:16:3e:00:00:01", 1500), deleted: true }]);
        assert_eq!(names(&t), vec!["a", "b"]);
        assert!(rows.desired(&"b".parse().unwrap()).is_none());
        assert_eq!(rows.desired(&"a".parse().unwrap()).unwrap().set.len(), 1);
        same_as_full(&rows, vec![row(1, "a", "fa:16:3e:00:00:01", 1500)]);
    }

    #[test]
    fn a_row_moving_nodes_touches_both() {
        let mut rows = RowCopy::from_snapshot(ActiveRows { rows: vec![row(1, "a", "fa:16:3e:00:00:01", 1500)] });
        let t = rows.apply(vec![RowChange { row: row(1, "c", "fa:16:3e:00:00:01", 1500), deleted: false }]);
        assert_eq!(names(&t), vec!["a", "c"]);
        assert!(rows.desired(&"a".parse().unwrap()).is_none());
    }

    #[test]
    fn replace_finds_what_differs_and_what_went() {
        let all = vec![row(1, "a", "fa:16:3e:00:00:01", 1500), row(2, "b", "fa:16:3e:00:00:02", 1500)];
        let mut rows = RowCopy::from_snapshot(ActiveRows { rows: all });
        let mut unattached = row(3, "x", "fa:16:3e:00:00:03", 1500);
        unattached.attached_node_name = None;
        let next = vec![row(1, "a", "fa:16:3e:00:00:01", 9000), unattached];
        let t = rows.replace(ActiveRows { rows: next.clone() });
        assert_eq!(names(&t), vec!["a", "b"]);
        assert!(t.unattached);
        same_as_full(&rows, next.clone());
        assert!(rows.replace(ActiveRows { rows: next }).is_empty());
    }

    #[test]
    fn a_full_read_beside_the_ticks_keeps_what_they_read_since_it_began() {
        let a1 = row(1, "a", "fa:16:3e:00:00:01", 1500);
        let b2 = row(2, "b", "fa:16:3e:00:00:02", 1500);
        let c3 = row(3, "c", "fa:16:3e:00:00:03", 1500);
        let mut rows = RowCopy::from_snapshot(ActiveRows { rows: vec![a1.clone(), b2.clone(), c3.clone()] });
        // While the full read runs: a change read finds row 1 at MTU 1400,
        // row 3 soft-deleted, and a new row 4.
        let a1_new = row(1, "a", "fa:16:3e:00:00:01", 1400);
        let d4 = row(4, "d", "fa:16:3e:00:00:04", 1500);
        rows.apply(vec![
            RowChange { row: a1_new.clone(), deleted: false },
            RowChange { row: c3.clone(), deleted: true },
            RowChange { row: d4.clone(), deleted: false },
        ]);
        let newer: HashSet<i64> = [1, 3, 4].into();
        // Its snapshot: older for those rows, newer for row 2 (a write that
        // kept modified_at). Another copy has a row 5 the snapshot lacks.
        let b2_new = row(2, "b", "fa:16:3e:00:00:02", 9000);
        let mut with_e5 = RowCopy::from_snapshot(ActiveRows { rows: vec![a1_new.clone(), b2.clone(), d4.clone()] });
        with_e5.apply(vec![RowChange { row: row(5, "e", "fa:16:3e:00:00:05", 1500), deleted: false }]);
        let snapshot = ActiveRows { rows: vec![a1, b2_new.clone(), c3] };
        let t = rows.replace_except(snapshot.clone(), &newer);
        assert_eq!(names(&t), vec!["b"], "only what the snapshot adds is touched");
        same_as_full(&rows, vec![a1_new.clone(), b2_new.clone(), d4.clone()]);
        // Nothing read since it began: the snapshot as a whole.
        let t = with_e5.replace_except(snapshot.clone(), &HashSet::new());
        assert_eq!(names(&t), vec!["a", "b", "c", "d", "e"]);
        same_as_full(&with_e5, snapshot.rows);
    }

    fn stale(rows: &RowCopy, node: &str) -> Vec<i64> {
        let desired = rows.desired(&node.parse().unwrap()).unwrap();
        desired.rows.values().flatten().filter(|r| r.stale).map(|r| r.id).collect()
    }

    #[test]
    fn a_row_edited_while_it_reads_1_is_stale_until_its_new_content_is_recorded() {
        let applied = InterfaceRow::plain(1, "a", "fa:16:3e:00:00:01", 1500, 1);
        let other = InterfaceRow::plain(2, "a", "fa:16:3e:00:00:02", 1500, 1);
        let mut rows = RowCopy::from_snapshot(ActiveRows { rows: vec![applied.clone(), other.clone()] });
        assert!(stale(&rows, "a").is_empty(), "what a first read finds is believed");

        // The writer changes the MTU and leaves the flag at 1.
        let edited = InterfaceRow { mtu: Some(1400), ..applied.clone() };
        assert_eq!(names(&rows.apply(vec![RowChange { row: edited.clone(), deleted: false }])), vec!["a"]);
        assert_eq!(stale(&rows, "a"), vec![1]);

        // The recorder's 0 for the new content lands: it reads 0, not stale.
        assert_eq!(names(&rows.recorded(1, &edited.content(), false)), vec!["a"]);
        assert!(stale(&rows, "a").is_empty());

        // A writer that resets the flag with its edit: nothing to correct.
        let reset = InterfaceRow { mtu: Some(9000), netplan_success: 0, ..other.clone() };
        rows.apply(vec![RowChange { row: reset, deleted: false }]);
        assert!(stale(&rows, "a").is_empty());

        // A row moved to another node while it reads 1: stale there.
        let moved = InterfaceRow { attached_node_name: Some("b".into()), ..edited.clone() };
        rows.recorded(1, &edited.content(), true);
        rows.apply(vec![RowChange { row: moved, deleted: false }]);
        assert_eq!(stale(&rows, "b"), vec![1]);
        // ... and a deleted row is forgotten.
        rows.apply(vec![RowChange { row: edited, deleted: true }]);
        assert!(rows.stale.is_empty());
    }

    #[test]
    fn a_stale_row_asks_for_0_until_its_node_confirms_it() {
        use crate::fleet::Fleet;
        let a: NodeName = "a".parse().unwrap();
        let applied = InterfaceRow::plain(1, "a", "fa:16:3e:00:00:01", 1500, 1);
        let mut rows = RowCopy::from_snapshot(ActiveRows { rows: vec![applied.clone()] });
        let fleet = Fleet::new();
        fleet.publisher().publish(desired_fleet(&ActiveRows { rows: vec![applied.clone()] }));
        assert!(fleet.write_back().row_updates(&a).is_empty(), "1 as read, no agent yet: left alone");

        let edited = InterfaceRow { mtu: Some(1400), ..applied };
        let touched = rows.apply(vec![RowChange { row: edited.clone(), deleted: false }]);
        fleet.publisher().publish_nodes(rows.desired_of(&touched.nodes), None);
        let updates = fleet.write_back().row_updates(&a);
        assert_eq!(updates.iter().map(|u| (u.id, u.success)).collect::<Vec<_>>(), vec![(1, false)]);
        assert_eq!(updates[0].content, edited.content(), "conditional on the new content");
    }

    #[test]
    fn an_address_change_touches_every_node_with_that_address() {
        let with = |id, node: &str, mac: &str, address: &str| InterfaceRow {
            address: Some(address.into()),
            cidr: Some("10.0.0.0/24".into()),
            ..InterfaceRow::plain(id, node, mac, 1500, 0)
        };
        let all = vec![with(1, "a", "fa:16:3e:00:00:01", "10.0.0.5"), with(2, "b", "fa:16:3e:00:00:02", "10.0.0.6")];
        let mut rows = RowCopy::from_snapshot(ActiveRows { rows: all });
        let t = rows.apply(vec![RowChange { row: with(2, "b", "fa:16:3e:00:00:02", "10.0.0.5"), deleted: false }]);
        assert_eq!(names(&t), vec!["a", "b"], "a's warning appears");
        let next = vec![with(1, "a", "fa:16:3e:00:00:01", "10.0.0.5"), with(2, "b", "fa:16:3e:00:00:02", "10.0.0.5")];
        same_as_full(&rows, next);
        assert_eq!(rows.desired(&"a".parse().unwrap()).unwrap().warnings.len(), 1);
        let t = rows.apply(vec![RowChange { row: with(2, "b", "fa:16:3e:00:00:02", "10.0.0.5"), deleted: true }]);
        assert_eq!(names(&t), vec!["a", "b"], "and goes");
        assert!(rows.desired(&"a".parse().unwrap()).unwrap().warnings.is_empty());
    }

    #[test]
    fn recorded_values_follow_the_content_they_were_written_for() {
        let r = row(1, "a", "fa:16:3e:00:00:01", 1500);
        let mut rows = RowCopy::from_snapshot(ActiveRows { rows: vec![r.clone()] });
        let stale = RowContent { mtu: Some(9000), ..r.content() };
        assert!(rows.recorded(1, &stale, true).is_empty(), "written for other content");
        assert_eq!(names(&rows.recorded(1, &r.content(), true)), vec!["a"]);
        assert!(rows.recorded(1, &r.content(), true).is_empty(), "already known");
        let a = rows.desired(&"a".parse().unwrap()).unwrap();
        assert!(a.rows.values().flatten().all(|r| r.netplan_success));
    }
}
