//! For operators: `GET /metrics` (Prometheus) and `GET /healthz`.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
}

async fn metrics(State(state): State<AppState>) -> Response {
    let lives = state.board.active();
    let m = &state.metrics;
    m.lives.set(lives.len() as i64);
    m.casters
        .set(lives.iter().filter(|l| l.on_air).count() as i64);
    m.viewers.set(lives.iter().map(|l| l.viewers as i64).sum());
    m.sessions.set(state.limits.sessions.open() as i64);
    m.connections.set(state.limits.connections.count() as i64);
    if let Some(hub) = &state.hls {
        let errors = hub
            .recordings
            .errors
            .load(std::sync::atomic::Ordering::Relaxed);
        m.recording_errors
            .inc_by(errors.saturating_sub(m.recording_errors.get()));
        m.recordings_active
            .set(hub.recordings.writing().len() as i64);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
        .into_response()
}

/// 200 while serving, 503 once shutdown has begun (load balancers stop
/// sending new sessions here).
async fn healthz(State(state): State<AppState>) -> Response {
    if *state.shutdown.borrow() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining"})),
        )
            .into_response();
    }
    let lives = state.board.active();
    Json(json!({
        "status": "ok",
        "lives": lives.len(),
        "viewers": lives.iter().map(|l| l.viewers).sum::<usize>(),
    }))
    .into_response()
}
