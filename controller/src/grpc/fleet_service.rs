//! `FleetService`: what `multinicctl` shows. Read-only views of [`Fleet`].
//!
//! Views are built on the blocking pool, never on the async workers that
//! serve agent streams, TLS handshakes and `/healthz`; and they are bounded:
//! a node's held interfaces and rejected rows, and the fleet's rejected
//! rows, are listed up to [`VIEW_LIMIT`] with a count of the rest, so one
//! node's thousands of dirty rows cost a view the same as a few hundred.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::Stream;
use multinic_proto::v1::{self, FleetEvent};
use multinic_proto::{InterfaceState, NodeName};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::warn;

use super::limits::{StreamLimits, WATCHES_PER_OPERATOR};
use crate::desired::RowProblem;
use crate::fleet::{ConfirmError, Convergence, Fleet, NodeProblem, NodeSnapshot};
use crate::tls::{Peer, PeerConnection};

const DEFAULT_PAGE: usize = 500;
const MAX_PAGE: usize = 5000;
/// Held interfaces, rejected rows and warnings listed per view at most.
pub const VIEW_LIMIT: usize = 200;
/// A watch sends what changed at most this often (changes in between
/// coalesce), so a burst of changes costs one summary, not one per change.
const WATCH_EVERY: Duration = Duration::from_millis(100);

/// The `FleetService` implementation.
#[derive(Debug, Clone)]
pub struct FleetSvc {
    fleet: Arc<Fleet>,
    shutdown: CancellationToken,
    /// Open watches per operator certificate.
    watches: Arc<StreamLimits>,
}

impl FleetSvc {
    pub fn new(fleet: Arc<Fleet>, shutdown: CancellationToken) -> Self {
        Self { fleet, shutdown, watches: StreamLimits::new("watches", WATCHES_PER_OPERATOR) }
    }

    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let peer = Peer::of(request);
        peer.require_operator().inspect_err(|s| warn!(peer = %peer, "refused fleet request: {}", s.message()))?;
        if !self.fleet.leadership().is_active() {
            return Err(Status::unavailable(
                "this controller replica is on standby and knows no fleet state; ask the active one (the Service routes there)",
            ));
        }
        Ok(())
    }
}

impl FleetSvc {
    /// An operator's action on the rollout the request names, logged with
    /// who asked; a refusal says why.
    async fn rollout_action(
        &self,
        request: Request<v1::RolloutActionRequest>,
        done: &'static str,
        action: fn(&Fleet, u64) -> Result<crate::rollout::Rollout, crate::rollout::RolloutError>,
    ) -> Result<Response<v1::RolloutStatus>, Status> {
        self.authorize(&request)?;
        let peer = Peer::of(&request);
        let id = request.into_inner().id;
        let fleet = self.fleet.clone();
        let rollout = blocking(move || action(&fleet, id)).await?.map_err(|e| super::rollout_view::refused(&e))?;
        tracing::warn!(peer = %peer, rollout = id, action = done, "an operator acted on a rollout");
        Ok(Response::new(super::rollout_view::status(Some(&rollout))))
    }
}

/// The node a page token names (the last of the previous page); `None` for
/// the first page.
fn page_token(token: &str) -> Result<Option<NodeName>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    token.parse().map(Some).map_err(|e| Status::invalid_argument(format!("invalid page_token: {e}")))
}

/// The node a request names (short or full name; case does not matter).
fn node_name(name: &str) -> Result<NodeName, Status> {
    name.parse().map_err(|e| Status::invalid_argument(format!("invalid node name: {e}")))
}

/// A node the controller knows nothing of.
fn unknown_node(name: NodeName) -> Status {
    Status::not_found(format!("node {name} is unknown: it has no active rows and no connected agent"))
}

/// Runs a view on the blocking pool.
async fn blocking<T: Send + 'static>(view: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(view).await.map_err(|e| Status::internal(format!("building the view failed: {e}")))
}

#[tonic::async_trait]
impl v1::fleet_service_server::FleetService for FleetSvc {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<FleetEvent, Status>> + Send>>;

    async fn get_summary(&self, request: Request<v1::GetSummaryRequest>) -> Result<Response<v1::FleetSummary>, Status> {
        self.authorize(&request)?;
        let fleet = self.fleet.clone();
        Ok(Response::new(blocking(move || summary(&fleet)).await?))
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
        let after = page_token(&req.page_token)?;
        let fleet = self.fleet.clone();
        let page = blocking(move || {
            let names = fleet.view().node_names();
            let start = after.map_or(0, |after| names.partition_point(|n| *n <= after));
            let page: Vec<_> = names.iter().skip(start).take(size).collect();
            let next_page_token = if start + page.len() < names.len() {
                page.last().map(|n| n.to_string()).unwrap_or_default()
            } else {
                String::new()
            };
            let nodes = page.into_iter().filter_map(|n| fleet.view().node(n)).map(|n| node_status(&n)).collect();
            v1::ListNodesResponse { nodes, next_page_token }
        })
        .await?;
        Ok(Response::new(page))
    }

    async fn get_node(&self, request: Request<v1::GetNodeRequest>) -> Result<Response<v1::NodeStatus>, Status> {
        self.authorize(&request)?;
        let name = node_name(&request.into_inner().name)?;
        let fleet = self.fleet.clone();
        let view = blocking(move || fleet.view().node(&name).map(|n| node_status(&n)).ok_or(name)).await?;
        Ok(Response::new(view.map_err(unknown_node)?))
    }

    async fn confirm_removals(
        &self,
        request: Request<v1::ConfirmRemovalsRequest>,
    ) -> Result<Response<v1::ConfirmRemovalsResponse>, Status> {
        self.authorize(&request)?;
        let peer = Peer::of(&request);
        let token = request.into_inner().token;
        let fleet = self.fleet.clone();
        let confirm_token = token.clone();
        match blocking(move || fleet.guard().confirm(&confirm_token)).await? {
            Ok(released) => {
                tracing::warn!(peer = %peer, token = %token, released, "held removals confirmed");
                Ok(Response::new(v1::ConfirmRemovalsResponse { released: u32::try_from(released).unwrap_or(u32::MAX) }))
            }
            Err(e @ ConfirmError::NothingHeld) => Err(Status::failed_precondition(e.to_string())),
            Err(e @ ConfirmError::Changed { .. }) => Err(Status::aborted(e.to_string())),
        }
    }

    async fn diff(&self, request: Request<v1::DiffRequest>) -> Result<Response<v1::DiffResponse>, Status> {
        self.authorize(&request)?;
        if !self.fleet.db().status().synced {
            return Err(Status::unavailable(
                "the controller has not read the database yet: there is no desired state to compare; try again shortly",
            ));
        }
        let req = request.into_inner();
        let fleet = self.fleet.clone();
        if !req.node.is_empty() {
            let name = node_name(&req.node)?;
            let view = blocking(move || super::diff_view::node(&fleet, &name).ok_or(name)).await?;
            let node = view.map_err(unknown_node)?;
            return Ok(Response::new(v1::DiffResponse { nodes: vec![node], ..Default::default() }));
        }
        let size = match req.page_size as usize {
            0 => super::diff_view::DEFAULT_PAGE,
            n => n.min(super::diff_view::MAX_PAGE),
        };
        let after = page_token(&req.page_token)?;
        let page = blocking(move || super::diff_view::page(&fleet, after.as_ref(), size)).await?;
        Ok(Response::new(page))
    }

    async fn get_rollout(
        &self,
        request: Request<v1::GetRolloutRequest>,
    ) -> Result<Response<v1::RolloutStatus>, Status> {
        self.authorize(&request)?;
        let fleet = self.fleet.clone();
        let status = blocking(move || super::rollout_view::status(fleet.rollouts().status().as_ref())).await?;
        Ok(Response::new(status))
    }

    async fn resume_rollout(
        &self,
        request: Request<v1::RolloutActionRequest>,
    ) -> Result<Response<v1::RolloutStatus>, Status> {
        self.rollout_action(request, "resumed", |fleet, id| fleet.rollouts().resume(id)).await
    }

    async fn abort_rollout(
        &self,
        request: Request<v1::RolloutActionRequest>,
    ) -> Result<Response<v1::RolloutStatus>, Status> {
        self.rollout_action(request, "aborted", |fleet, id| fleet.rollouts().abort(id)).await
    }

    async fn watch(&self, request: Request<v1::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        self.authorize(&request)?;
        let permit = match Peer::of(&request) {
            Peer::Operator { name } => Some(self.watches.open(&format!("operator {name}"))?),
            _ => None,
        };
        // Like agent streams, a watch ends at its connection's age cap so the
        // operator reconnects with current certificates.
        let ends_at = PeerConnection::of(&request).and_then(|c| c.streams_end_at);
        let changes = self.fleet.view().subscribe_changes();
        let (tx, rx) = mpsc::channel(64);
        let fleet = self.fleet.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            watch_loop(fleet, changes, tx, shutdown, ends_at).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Sends every node and the summary, then what changes, until the client
/// goes, the controller stops or the connection reaches its age cap.
async fn watch_loop(
    fleet: Arc<Fleet>,
    mut changes: broadcast::Receiver<NodeName>,
    tx: mpsc::Sender<Result<FleetEvent, Status>>,
    shutdown: CancellationToken,
    ends_at: Option<tokio::time::Instant>,
) {
    let first = fleet.clone();
    let snapshot = move || {
        let mut events: Vec<FleetEvent> = first
            .view()
            .node_names()
            .iter()
            .filter_map(|name| first.view().node(name))
            .map(|node| FleetEvent { node: Some(node_status(&node)), summary: None })
            .collect();
        events.push(FleetEvent { node: None, summary: Some(summary(&first)) });
        events
    };
    if !send_view(&tx, snapshot).await {
        return;
    }
    let far = tokio::time::Instant::now() + Duration::from_secs(10 * 365 * 86_400);
    let deadline = tokio::time::sleep_until(ends_at.unwrap_or(far));
    tokio::pin!(deadline);
    loop {
        let first = tokio::select! {
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
        tokio::time::sleep(WATCH_EVERY).await;
        let mut names = std::collections::BTreeSet::from([first]);
        loop {
            match changes.try_recv() {
                Ok(name) => {
                    names.insert(name);
                }
                Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => break,
            }
        }
        let fleet = fleet.clone();
        let changed = move || {
            let summary = summary(&fleet);
            let mut events: Vec<FleetEvent> = names
                .iter()
                .map(|name| FleetEvent { node: fleet.view().node(name).map(|n| node_status(&n)), summary: None })
                .collect();
            if let Some(last) = events.last_mut() {
                last.summary = Some(summary);
            }
            events
        };
        if !send_view(&tx, changed).await {
            return;
        }
    }
}

/// Builds events on the blocking pool and sends them in order; `false`
/// once the watcher is gone (or the view could not be built).
async fn send_view(
    tx: &mpsc::Sender<Result<FleetEvent, Status>>,
    view: impl FnOnce() -> Vec<FleetEvent> + Send + 'static,
) -> bool {
    let Ok(events) = blocking(view).await else { return false };
    for event in events {
        if tx.send(Ok(event)).await.is_err() {
            return false;
        }
    }
    true
}

/// The fleet summary.
pub fn summary(fleet: &Fleet) -> v1::FleetSummary {
    let counts = fleet.view().counts();
    let db = fleet.db().status();
    let problems = fleet.view().row_problems(VIEW_LIMIT);
    let warnings = fleet.view().row_warnings(VIEW_LIMIT);
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let guard = fleet.guard().status();
    v1::FleetSummary {
        nodes_known: count(counts.nodes),
        agents_connected: count(counts.connected),
        nodes_converged: count(counts.converged),
        nodes_pending: count(counts.pending + counts.waiting),
        nodes_failed: count(counts.failed),
        db_up: db.up,
        db_error: db.error.unwrap_or_default(),
        last_poll_unix_ms: db.last_success.map_or(0, unix_ms),
        invalid_rows: count(problems.items.len() + problems.omitted),
        controller_version: env!("CARGO_PKG_VERSION").to_owned(),
        row_problems: problems.items.iter().map(row_problem).collect(),
        row_problems_omitted: count(problems.omitted),
        row_warnings: warnings.items.iter().map(row_problem).collect(),
        row_warnings_omitted: count(warnings.omitted),
        removals_held: count(guard.removals_held),
        removal_guard: guard.reason.unwrap_or_default(),
        removal_guard_token: guard.token.unwrap_or_default(),
    }
}

/// One node's status view.
pub fn node_status(node: &NodeSnapshot) -> v1::NodeStatus {
    let published = node.published.as_ref();
    let rows_of = |mac| node.desired.rows.get(mac).map(|rows| rows.iter().map(|r| r.id).collect()).unwrap_or_default();
    let mut interfaces = Vec::new();
    let mut interfaces_omitted = 0;
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
                row_ids: rows_of(&spec.mac),
            });
        }
        let held = published.set.held();
        interfaces_omitted = held.len().saturating_sub(VIEW_LIMIT);
        for mac in held.iter().take(VIEW_LIMIT) {
            let record = node.interfaces.get(mac);
            let (code, message) = if node.guarded.contains(mac) {
                let why = node.guard_reason.as_deref().unwrap_or("it holds removals");
                (
                    multinic_proto::ErrorCode::RemovalHeld,
                    format!("its rows are gone but the mass-deletion guard holds the removal: {why}"),
                )
            } else {
                let code = node.desired.held_codes.get(mac).copied().unwrap_or(multinic_proto::ErrorCode::InvalidRow);
                (code, "left as it is: its rows are invalid or in conflict (see rejected rows)".to_owned())
            };
            interfaces.push(v1::InterfaceView {
                mac_address: mac.to_string(),
                name: record.and_then(|r| r.status.name).map(|n| n.to_string()).unwrap_or_default(),
                address: String::new(),
                mtu: 0,
                state: v1::InterfaceState::Held.into(),
                error_code: v1::ErrorCode::from(code).into(),
                message,
                last_change_unix_ms: record.map_or(0, |r| unix_ms(r.since)),
                row_ids: rows_of(mac),
            });
        }
    }
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let problems = &node.desired.problems;
    let warnings = &node.desired.warnings;
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
        interfaces_omitted: count(interfaces_omitted),
        row_problems: problems.iter().take(VIEW_LIMIT).map(row_problem).collect(),
        row_problems_omitted: count(problems.len().saturating_sub(VIEW_LIMIT)),
        row_warnings: warnings.iter().take(VIEW_LIMIT).map(row_problem).collect(),
        row_warnings_omitted: count(warnings.len().saturating_sub(VIEW_LIMIT)),
        problems: node.problems.iter().map(node_problem).collect(),
        last_drift_unix_ms: node.drift.as_ref().map_or(0, |d| unix_ms(d.at)),
        last_drift: node
            .drift
            .iter()
            .flat_map(|d| d.findings.iter().take(VIEW_LIMIT))
            .map(v1::DriftFinding::from)
            .collect(),
        drift_repairs: node.drift.as_ref().map_or(0, |d| d.repairs),
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

pub(super) fn row_problem(p: &RowProblem) -> v1::RowProblem {
    v1::RowProblem {
        row_id: p.row_id,
        node_name: p.node.as_ref().map(|n| n.to_string()).unwrap_or_default(),
        mac_address: p.mac.clone(),
        error_code: v1::ErrorCode::from(p.code).into(),
        message: p.message.clone(),
    }
}

pub(super) fn node_problem(p: &NodeProblem) -> v1::NodeProblem {
    v1::NodeProblem { error_code: v1::ErrorCode::from(p.code).into(), message: p.message.clone() }
}

pub(super) fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::desired_fleet;
    use crate::store::{ActiveRows, InterfaceRow};
    use multinic_proto::v1::fleet_service_server::FleetService;

    fn fleet_of(nodes: usize) -> Arc<Fleet> {
        let rows = (0..nodes)
            .map(|i| {
                InterfaceRow::plain(i as i64, &format!("node-{i:02}"), &format!("fa:16:3e:00:00:{i:02x}"), 1500, 0)
            })
            .collect();
        let fleet = Arc::new(Fleet::new());
        fleet.leadership().set_active(true);
        fleet.publisher().publish(desired_fleet(&ActiveRows { rows }));
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
    async fn views_of_a_node_with_thousands_of_bad_rows_are_bounded() {
        let mut rows: Vec<InterfaceRow> = (0..5000)
            .map(|i| InterfaceRow::plain(i, "dirty", &format!("fa:16:3e:00:{:02x}:{:02x}", i / 256, i % 256), 0, 0))
            .collect();
        rows.push(InterfaceRow::plain(9999, "clean", "fa:16:3e:ff:00:01", 1500, 0));
        let fleet = Arc::new(Fleet::new());
        fleet.leadership().set_active(true);
        fleet.publisher().publish(desired_fleet(&ActiveRows { rows }));
        let svc = FleetSvc::new(fleet, CancellationToken::new());

        let node = svc.get_node(Request::new(v1::GetNodeRequest { name: "dirty".into() })).await.unwrap().into_inner();
        assert_eq!(node.interfaces.len(), VIEW_LIMIT);
        assert_eq!(node.interfaces_omitted as usize, 5000 - VIEW_LIMIT);
        assert!(node.interfaces.iter().all(|i| i.error_code == v1::ErrorCode::InvalidRow as i32));
        assert_eq!(node.row_problems.len(), VIEW_LIMIT);
        assert_eq!(node.row_problems_omitted as usize, 5000 - VIEW_LIMIT);

        let summary = svc.get_summary(Request::new(v1::GetSummaryRequest {})).await.unwrap().into_inner();
        assert_eq!(summary.invalid_rows, 5000, "the count is whole");
        assert_eq!(summary.row_problems.len(), VIEW_LIMIT);
        assert_eq!(summary.row_problems_omitted as usize, 5000 - VIEW_LIMIT);
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
