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

async fn readyz(State(status): State<Arc<AgentStatus>>) -> impl IntoResponse {
    if status.connected() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: no stream to the controller\n")
    }
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
}

async fn health(State(status): State<Arc<AgentStatus>>) -> impl IntoResponse {
    let connected = status.connected();
    let failed = status.count_in(&[InterfaceState::Failed, InterfaceState::Refused]);
    let health = Health {
        status: match (connected, failed) {
            (false, _) => "unhealthy",
            (true, 0) => "healthy",
            (true, _) => "degraded",
        },
        uptime: format!("{}s", status.uptime().as_secs()),
        processed_vms: status.pushes(),
        failed_configs: failed,
        database_connected: connected,
        last_sync: status.last_sync().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs()),
    };
    let code = if connected { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(health))
}
