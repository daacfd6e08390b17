//! The `Diff` view of `FleetService`: [`crate::fleet::diff`] for one node or
//! for the fleet page by page, converted to wire messages.
//!
//! Exists to keep the fleet service's edge small and the diff's paging rules
//! in one place. Like every status view it is built on the blocking pool by
//! the caller and bounded: per node, interfaces and rejected rows up to
//! [`VIEW_LIMIT`] (with counts of the rest); per page, at most `page_size`
//! nodes examined and about [`PAGE_ENTRIES`] entries listed. It must never
//! read the database or change the fleet.

use multinic_proto::NodeName;
use multinic_proto::v1;

use super::fleet_service::{VIEW_LIMIT, node_problem, row_problem, unix_ms};
use crate::fleet::diff::{DiffAction, FieldChange, InterfaceDiff, NodeDiff, node_diff};
use crate::fleet::{Bounded, Fleet};

/// Nodes examined per page unless the request says otherwise, and at most.
pub const DEFAULT_PAGE: usize = 500;
pub const MAX_PAGE: usize = 5000;
/// A page ends once it lists this many entries (interfaces and rejected
/// rows), so that a fleet-wide change fits in messages of a bounded size.
pub const PAGE_ENTRIES: usize = 2000;

/// One node's diff, or `None` when the node is unknown.
pub fn node(fleet: &Fleet, name: &NodeName) -> Option<v1::NodeDiff> {
    fleet.view().node(name).map(|snapshot| node_message(&node_diff(&snapshot, VIEW_LIMIT)))
}

/// The nodes after `after` (in name order) with something to show: at most
/// `size` examined, and no more once [`PAGE_ENTRIES`] are listed. The first
/// page also carries the rejected rows that name no valid node.
pub fn page(fleet: &Fleet, after: Option<&NodeName>, size: usize) -> v1::DiffResponse {
    let names = fleet.view().node_names();
    let start = after.map_or(0, |after| names.partition_point(|n| n <= after));
    let mut response = v1::DiffResponse::default();
    let (mut examined, mut listed, mut unchanged) = (0, 0, 0usize);
    for name in &names[start..] {
        if examined == size || listed >= PAGE_ENTRIES {
            break;
        }
        examined += 1;
        let Some(snapshot) = fleet.view().node(name) else { continue };
        let diff = node_diff(&snapshot, VIEW_LIMIT);
        if diff.is_quiet() {
            unchanged += 1;
            continue;
        }
        listed += diff.interfaces.items.len() + diff.rejected.items.len();
        response.nodes.push(node_message(&diff));
    }
    if start + examined < names.len() {
        response.next_page_token = names[start + examined - 1].to_string();
    }
    response.nodes_unchanged = count(unchanged);
    if after.is_none() {
        let mut unattached = Bounded::new();
        unattached.extend(&fleet.view().unattached(), VIEW_LIMIT);
        response.unattached = unattached.items.iter().map(row_problem).collect();
        response.unattached_omitted = count(unattached.omitted);
    }
    response
}

fn node_message(d: &NodeDiff) -> v1::NodeDiff {
    v1::NodeDiff {
        name: d.name.to_string(),
        connected: d.connected,
        applied_known: d.applied_at.is_some(),
        applied_unix_ms: d.applied_at.map_or(0, unix_ms),
        interfaces: d.interfaces.items.iter().map(interface_message).collect(),
        interfaces_omitted: count(d.interfaces.omitted),
        interfaces_unchanged: count(d.unchanged),
        interfaces_desired: count(d.desired),
        rejected_rows: d.rejected.items.iter().map(row_problem).collect(),
        rejected_rows_omitted: count(d.rejected.omitted),
        problems: d.problems.iter().map(node_problem).collect(),
        rollout_hold: d.rollout_hold.clone().unwrap_or_default(),
    }
}

fn interface_message(i: &InterfaceDiff) -> v1::InterfaceDiff {
    let action = match i.action {
        DiffAction::Add => v1::DiffAction::Add,
        DiffAction::Change => v1::DiffAction::Change,
        DiffAction::Remove => v1::DiffAction::Remove,
        DiffAction::Held => v1::DiffAction::Held,
    };
    v1::InterfaceDiff {
        mac_address: i.mac.to_string(),
        name: i.name.map(|n| n.to_string()).unwrap_or_default(),
        action: action.into(),
        changes: i.changes.iter().map(field_message).collect(),
        reason: i.reason.clone().unwrap_or_default(),
        row_ids: i.row_ids.clone(),
    }
}

fn field_message(c: &FieldChange) -> v1::FieldChange {
    v1::FieldChange {
        field: c.field.as_str().to_owned(),
        old: c.old.clone().unwrap_or_default(),
        new: c.new.clone().unwrap_or_default(),
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use multinic_proto::v1::fleet_service_server::FleetService;
    use tokio_util::sync::CancellationToken;
    use tonic::Request;

    use super::*;
    use crate::desired::desired_fleet;
    use crate::grpc::FleetSvc;
    use crate::store::{ActiveRows, InterfaceRow};

    /// `nodes` nodes of `per_node` rows each, no agent ever connected.
    fn fleet(nodes: usize, per_node: usize) -> Arc<Fleet> {
        let rows = (0..nodes * per_node)
            .map(|i| {
                let mac = format!("fa:16:3e:{:02x}:{:02x}:{:02x}", i / 65536, i / 256 % 256, i % 256);
                InterfaceRow::plain(i as i64, &format!("node-{:04}", i / per_node), &mac, 1500, 0)
            })
            .collect();
        let fleet = Arc::new(Fleet::new());
        fleet.leadership().set_active(true);
        fleet.publisher().publish(desired_fleet(&ActiveRows { rows }));
        fleet
    }

    async fn all_pages(svc: &FleetSvc, page_size: u32) -> (Vec<String>, usize) {
        let (mut seen, mut pages, mut page_token) = (Vec::new(), 0, String::new());
        loop {
            let request = v1::DiffRequest { node: String::new(), page_size, page_token };
            let page = svc.diff(Request::new(request)).await.unwrap().into_inner();
            pages += 1;
            seen.extend(page.nodes.into_iter().map(|n| n.name));
            if page.next_page_token.is_empty() {
                return (seen, pages);
            }
            page_token = page.next_page_token;
        }
    }

    #[tokio::test]
    async fn pages_visit_every_node_once_in_order() {
        let svc = FleetSvc::new(fleet(7, 1), CancellationToken::new());
        let (seen, pages) = all_pages(&svc, 3).await;
        let want: Vec<String> = (0..7).map(|i| format!("node-{i:04}")).collect();
        assert_eq!(seen, want, "every node unknown (no agent): each shown once");
        assert_eq!(pages, 3);
    }

    #[test]
    fn a_page_ends_once_it_lists_enough_entries() {
        // 30 nodes with 200 rejected rows each: 6,000 entries in all.
        let rows = (0..30 * 200)
            .map(|i| {
                InterfaceRow::plain(
                    i,
                    &format!("node-{:02}", i / 200),
                    &format!("fa:16:3e:00:{:02x}:{:02x}", i / 256, i % 256),
                    0,
                    0,
                )
            })
            .collect();
        let fleet = Fleet::new();
        fleet.leadership().set_active(true);
        fleet.publisher().publish(desired_fleet(&ActiveRows { rows }));
        let first = page(&fleet, None, MAX_PAGE);
        assert_eq!(first.nodes.len(), PAGE_ENTRIES / VIEW_LIMIT, "then the page ends");
        assert_eq!(first.next_page_token, "node-09");
        let listed: usize = first.nodes.iter().map(|n| n.rejected_rows.len()).sum();
        assert_eq!(listed, PAGE_ENTRIES);
        let second = page(&fleet, Some(&"node-09".parse().unwrap()), MAX_PAGE);
        assert_eq!(second.nodes[0].name, "node-10");
    }

    #[tokio::test]
    async fn before_the_first_read_and_for_an_unknown_node_the_answer_is_clear() {
        let unread = Arc::new(Fleet::new());
        unread.leadership().set_active(true);
        let svc = FleetSvc::new(unread, CancellationToken::new());
        let err = svc.diff(Request::new(v1::DiffRequest::default())).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(err.message().contains("has not read the database yet"), "{}", err.message());

        let svc = FleetSvc::new(fleet(1, 1), CancellationToken::new());
        let request = v1::DiffRequest { node: "node-9999".into(), ..Default::default() };
        let err = svc.diff(Request::new(request)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert!(err.message().contains("node-9999 is unknown"), "{}", err.message());
        let request = v1::DiffRequest { page_token: "bad token!".into(), ..Default::default() };
        assert_eq!(svc.diff(Request::new(request)).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}
