//! `/healthz`, `/readyz` and `/metrics`.
//!
//! Liveness never depends on the database: a database outage must not make
//! Kubernetes restart the controller (the predecessor's mistake).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::alert_metrics::WatchedCertificates;
use crate::fleet::Fleet;
use crate::metrics::Metrics;

/// What the HTTP endpoints read.
#[derive(Debug, Clone)]
pub struct HttpState {
    pub fleet: Arc<Fleet>,
    pub metrics: Arc<Metrics>,
    /// Set once the gRPC server accepts connections; cleared on shutdown.
    pub serving: Arc<AtomicBool>,
    /// TLS handshake counts of the gRPC port.
    pub handshakes: Arc<crate::tls::HandshakeStats>,
    /// The certificates whose expiry `/metrics` shows.
    pub certificates: WatchedCertificates,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    let db = state.fleet.db().status();
    if !state.serving.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: gRPC server is not serving\n".to_owned());
    }
    if !state.fleet.leadership().is_active() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: standby (another replica holds the controller lock)\n".to_owned(),
        );
    }
    if !db.up {
        let why = db.error.unwrap_or_else(|| "no successful read yet".to_owned());
        return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: database: {why}\n"));
    }
    (StatusCode::OK, "ready\n".to_owned())
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    state.metrics.set_counts(&state.fleet.view().counts(), state.fleet.db().status().up);
    state.metrics.set_handshakes(&state.handshakes);
    let held = state.fleet.guard().status().removals_held;
    state.metrics.removals_held.set(i64::try_from(held).unwrap_or(i64::MAX));
    state.metrics.alerts.refresh(&state.fleet, &state.certificates);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.render())
}
