//! `FleetService`: what `multinicctl` shows. Read-only views of [`Fleet`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::Stream;
use multinic_proto::v1::{self, FleetEvent};
use multinic_proto::{InterfaceState, NodeName};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::warn;

use super::identity::Peer;
use crate::desired::RowProblem;
use crate::fleet::{ConfirmError, Convergence, Fleet, NodeSnapshot};

const DEFAULT_PAGE: usize = 500;
const MAX_PAGE: usize = 5000;

/// The `FleetService` implementation.
#[derive(Debug, Clone)]
pub struct FleetSvc {
    fleet: Arc<Fleet>,
    shutdown: CancellationToken,
}

impl FleetSvc {
    pub fn new(fleet: Arc<Fleet>, shutdown: CancellationToken) -> Self {
        Self { fleet, shutdown }
    }

    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let peer = Peer::of(request);
        peer.require_operator().inspect_err(|s| warn!(peer = %peer, "refused fleet request: {}", s.message()))?;
        if !self.fleet.is_active() {
            return Err(Status::unavailable(
                "this controller replica is on standby and knows no fleet state; ask the active one (the Service routes there)",
            ));
        }
        Ok(())
    }

    fn summary(&self) -> v1::FleetSummary {
        summary(&self.fleet)
    }
}

#[tonic::async_trait]
impl v1::fleet_service_server::FleetService for FleetSvc {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<FleetEvent, Status>> + Send>>;

    async fn get_summary(&self, request: Request<v1::GetSummaryRequest>) -> Result<Response<v1::FleetSummary>, Status> {
        self.authorize(&request)?;
        Ok(Response::new(self.summary()))
    }

    async fn list_nodes(
        &self,
        request: Request<v1::ListNodesRequest>,
    ) -> Result<Response<v1::ListNodesResponse>, Status> {
        self.authorize(&request)?;
        let req = request.into_inner();
        let size = match req.page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let names = self.fleet.node_names();
        let start = if req.page_token.is_empty() {
            0
        } else {
            let after: NodeName =
                req.page_token.parse().map_err(|e| Status::invalid_argument(format!("invalid page_token: {e}")))?;
            names.partition_point(|n| *n <= after)
        };
        let page: Vec<_> = names.iter().skip(start).take(size).collect();
        let next_page_token = if start + page.len() < names.len() {
            page.last().map(|n| n.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        let nodes = page.into_iter().filter_map(|n| self.fleet.node(n)).map(|n| node_status(&n)).collect();
        Ok(Response::new(v1::ListNodesResponse { nodes, next_page_token }))
    }

    async fn get_node(&self, request: Request<v1::GetNodeRequest>) -> Result<Response<v1::NodeStatus>, Status> {
        self.authorize(&request)?;
        let name: NodeName = request
            .into_inner()
            .name
            .parse()
            .map_err(|e| Status::invalid_argument(format!("invalid node name: {e}")))?;
        let node = self.fleet.node(&name).ok_or_else(|| {
            Status::not_found(format!("node {name} is unknown: it has no active rows and no connected agent"))
        })?;
        Ok(Response::new(node_status(&node)))
    }

    async fn confirm_removals(
        &self,
        request: Request<v1::ConfirmRemovalsRequest>,
    ) -> Result<Response<v1::ConfirmRemovalsResponse>, Status> {
        self.authorize(&request)?;
        let peer = Peer::of(&request);
        let token = request.into_inner().token;
        match self.fleet.confirm_removals(&token) {
            Ok(released) => {
                tracing::warn!(peer = %peer, token = %token, released, "held removals confirmed");
                Ok(Response::new(v1::ConfirmRemovalsResponse { released: u32::try_from(released).unwrap_or(u32::MAX) }))
            }
            Err(e @ ConfirmError::NothingHeld) => Err(Status::failed_precondition(e.to_string())),
            Err(e @ ConfirmError::Changed { .. }) => Err(Status::aborted(e.to_string())),
        }
    }

    async fn watch(&self, request: Request<v1::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        self.authorize(&request)?;
        // Like agent streams, a watch ends at its connection's age cap so the
        // operator reconnects with current certificates.
        let ends_at = super::identity::PeerConnection::of(&request).and_then(|c| c.streams_end_at);
        let mut changes = self.fleet.subscribe_changes();
        let (tx, rx) = mpsc::channel(64);
        let fleet = self.fleet.clone();
        let shutdown = self.shutdown.clone();
        let summary = self.summary();
        tokio::spawn(async move {
            for name in fleet.node_names() {
                let Some(node) = fleet.node(&name) else { continue };
                let event = FleetEvent { node: Some(node_status(&node)), summary: None };
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            if tx.send(Ok(FleetEvent { node: None, summary: Some(summary) })).await.is_err() {
                return;
            }
            let far = tokio::time::Instant::now() + std::time::Duration::from_secs(10 * 365 * 86_400);
            let deadline = tokio::time::sleep_until(ends_at.unwrap_or(far));
            tokio::pin!(deadline);
            loop {
                let name = tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = &mut deadline => {
                        let _ = tx.send(Err(Status::unavailable("connection age limit reached: watch again"))).await;
                        return;
                    }
                    change = changes.recv() => match change {
                        Ok(name) => name,
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                };
                let node = fleet.node(&name).map(|n| node_status(&n));
                let event = FleetEvent { node, summary: Some(summary_of(&fleet)) };
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn summary_of(fleet: &Fleet) -> v1::FleetSummary {
    summary(fleet)
}

/// The fleet summary.
pub fn summary(fleet: &Fleet) -> v1::FleetSummary {
    let counts = fleet.counts();
    let db = fleet.db_status();
    let mut row_problems: Vec<v1::RowProblem> = Vec::new();
    for name in fleet.node_names() {
        if let Some(node) = fleet.node(&name) {
            row_problems.extend(node.desired.problems.iter().map(row_problem));
        }
    }
    row_problems.extend(fleet.unattached().iter().map(row_problem));
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let guard = fleet.guard_status();
    v1::FleetSummary {
        nodes_known: count(counts.nodes),
        agents_connected: count(counts.connected),
        nodes_converged: count(counts.converged),
        nodes_pending: count(counts.pending + counts.waiting),
        nodes_failed: count(counts.failed),
        db_up: db.up,
        db_error: db.error.unwrap_or_default(),
        last_poll_unix_ms: db.last_success.map_or(0, unix_ms),
        invalid_rows: count(row_problems.len()),
        controller_version: env!("CARGO_PKG_VERSION").to_owned(),
        row_problems,
        removals_held: count(guard.removals_held),
        removal_guard: guard.reason.unwrap_or_default(),
        removal_guard_token: guard.token.unwrap_or_default(),
    }
}

/// One node's status view.
pub fn node_status(node: &NodeSnapshot) -> v1::NodeStatus {
    let published = node.published.as_ref();
    let mut interfaces = Vec::new();
    if let Some(published) = published {
        for spec in published.set.iter() {
            let record = node.interfaces.get(&spec.mac);
            let state = record.map_or(InterfaceState::Pending, |r| {
                if r.spec == Some(*spec) { r.status.state } else { InterfaceState::Pending }
            });
            let status = record.filter(|r| r.spec == Some(*spec)).map(|r| &r.status);
            interfaces.push(v1::InterfaceView {
                mac_address: spec.mac.to_string(),
                name: record.and_then(|r| r.status.name).map(|n| n.to_string()).unwrap_or_default(),
                address: spec.address.map(|a| a.to_string()).unwrap_or_default(),
                mtu: u32::from(spec.mtu.get()),
                state: v1::InterfaceState::from(state).into(),
                error_code: status.map_or(0, |s| v1::ErrorCode::from(s.code).into()),
                message: status.map(|s| s.message.clone()).unwrap_or_default(),
                last_change_unix_ms: record.map_or(0, |r| unix_ms(r.since)),
                row_ids: node
                    .desired
                    .rows
                    .get(&spec.mac)
                    .map(|rows| rows.iter().map(|r| r.id).collect())
                    .unwrap_or_default(),
            });
        }
    }
    if let Some(published) = published {
        for mac in published.set.held() {
            let record = node.interfaces.get(mac);
            let (code, message) = if node.guarded.contains(mac) {
                (
                    multinic_proto::ErrorCode::RemovalHeld,
                    "its rows are gone but the mass-deletion guard holds the removal",
                )
            } else {
                let code = node
                    .desired
                    .problems
                    .iter()
                    .find(|p| p.mac.eq_ignore_ascii_case(&mac.to_string()))
                    .map_or(multinic_proto::ErrorCode::InvalidRow, |p| p.code);
                (code, "left as it is: its rows are invalid or in conflict (see rejected rows)")
            };
            interfaces.push(v1::InterfaceView {
                mac_address: mac.to_string(),
                name: record.and_then(|r| r.status.name).map(|n| n.to_string()).unwrap_or_default(),
                address: String::new(),
                mtu: 0,
                state: v1::InterfaceState::Held.into(),
                error_code: v1::ErrorCode::from(code).into(),
                message: message.to_owned(),
                last_change_unix_ms: record.map_or(0, |r| unix_ms(r.since)),
                row_ids: node.desired.rows.get(mac).map(|rows| rows.iter().map(|r| r.id).collect()).unwrap_or_default(),
            });
        }
    }
    v1::NodeStatus {
        name: node.name.to_string(),
        connected: node.session.is_some(),
        agent_version: node.session.as_ref().map(|s| s.agent_version.clone()).unwrap_or_default(),
        backend: node.session.as_ref().map(|s| s.backend.clone()).unwrap_or_default(),
        apply_mode: node.session.as_ref().map(|s| s.apply_mode.clone()).unwrap_or_default(),
        last_seen_unix_ms: node.last_seen.map_or(0, unix_ms),
        desired_generation: published.map_or(0, |p| p.generation),
        desired_digest: published.map(|p| p.set.digest().to_string()).unwrap_or_default(),
        applied_generation: node.applied.as_ref().map_or(0, |a| a.generation),
        applied_digest: node.applied.as_ref().map(|a| a.digest.to_string()).unwrap_or_default(),
        convergence: convergence(node.convergence).into(),
        interfaces,
        row_problems: node.desired.problems.iter().map(row_problem).collect(),
    }
}

fn convergence(c: Convergence) -> v1::Convergence {
    match c {
        Convergence::Converged => v1::Convergence::Converged,
        Convergence::Pending => v1::Convergence::Pending,
        Convergence::Failed => v1::Convergence::Failed,
        Convergence::Waiting => v1::Convergence::Waiting,
    }
}

fn row_problem(p: &RowProblem) -> v1::RowProblem {
    v1::RowProblem {
        row_id: p.row_id,
        node_name: p.node.as_ref().map(|n| n.to_string()).unwrap_or_default(),
        mac_address: p.mac.clone(),
        error_code: v1::ErrorCode::from(p.code).into(),
        message: p.message.clone(),
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::desired_fleet;
    use crate::store::{FleetSnapshot, InterfaceRow};
    use multinic_proto::v1::fleet_service_server::FleetService;

    fn fleet_of(nodes: usize) -> Arc<Fleet> {
        let rows = (0..nodes)
            .map(|i| InterfaceRow {
                id: i as i64,
                macaddress: format!("fa:16:3e:00:00:{i:02x}"),
                attached_node_name: Some(format!("node-{i:02}")),
                address: None,
                cidr: None,
                subnet_cidr: None,
                mtu: Some(1500),
                netplan_success: 0,
            })
            .collect();
        let fleet = Arc::new(Fleet::new());
        fleet.set_active(true);
        fleet.publish(desired_fleet(&FleetSnapshot { rows }));
        fleet
    }

    #[tokio::test]
    async fn list_nodes_pages_through_every_node_once_in_order() {
        let svc = FleetSvc::new(fleet_of(7), CancellationToken::new());
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let page = svc
                .list_nodes(Request::new(v1::ListNodesRequest { page_size: 3, page_token: token }))
                .await
                .unwrap()
                .into_inner();
            assert!(page.nodes.len() <= 3);
            seen.extend(page.nodes.into_iter().map(|n| n.name));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        let want: Vec<String> = (0..7).map(|i| format!("node-{i:02}")).collect();
        assert_eq!(seen, want);
    }

    #[tokio::test]
    async fn unknown_node_and_bad_token_are_clear_errors() {
        let svc = FleetSvc::new(fleet_of(1), CancellationToken::new());
        let err = svc.get_node(Request::new(v1::GetNodeRequest { name: "node-99".into() })).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert!(err.message().contains("node-99"));
        let err = svc
            .list_nodes(Request::new(v1::ListNodesRequest { page_size: 0, page_token: "bad_token!".into() }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }
}
