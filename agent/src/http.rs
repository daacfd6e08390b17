//! `/healthz`, `/readyz`, `/metrics` and the predecessor's `GET /` health JSON.
//!
//! Liveness never depends on the controller link: a controller outage must
//! not make Kubernetes restart every agent.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use multinic_proto::InterfaceState;
use serde::Serialize;

use crate::status::AgentStatus;

pub fn router(status: Arc<AgentStatus>) -> Router {
    Router::new()
        .route("/", get(health))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(status)
}

/// Ready while the stream to the controller is up and no apply has run
/// past its deadline.
async fn readyz(State(status): State<Arc<AgentStatus>>) -> impl IntoResponse {
    match problem(&status) {
        None => (StatusCode::OK, "ready\n".to_owned()),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    }
}

/// What keeps the agent from doing its work, if anything.
fn problem(status: &AgentStatus) -> Option<String> {
    status.overdue().or_else(|| (!status.connected()).then(|| "no stream to the controller".to_owned()))
}

async fn metrics(State(status): State<Arc<AgentStatus>>) -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        status.render_metrics(),
    )
}

/// The predecessor's health document; `database_connected` now means "the
/// stream to the controller is up" (agents no longer talk to the database).
#[derive(Debug, Serialize)]
struct Health {
    status: &'static str,
    uptime: String,
    processed_vms: u64,
    failed_configs: usize,
    database_connected: bool,
    last_sync: Option<u64>,
    /// Not in the predecessor's document: why the agent is unhealthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

async fn health(State(status): State<Arc<AgentStatus>>) -> impl IntoResponse {
    let connected = status.connected();
    let failed = status.count_in(&[InterfaceState::Failed, InterfaceState::Refused]);
    let reason = problem(&status);
    let health = Health {
        status: match (&reason, failed) {
            (Some(_), _) => "unhealthy",
            (None, 0) => "healthy",
            (None, _) => "degraded",
        },
        uptime: format!("{}s", status.uptime().as_secs()),
        processed_vms: status.pushes(),
        failed_configs: failed,
        database_connected: connected,
        last_sync: status.last_sync().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs()),
        reason,
    };
    let code = if health.reason.is_none() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(health))
}
