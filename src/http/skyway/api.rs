//! skyway-js's two HTTP requests, and the CORS its socket needs.
//!
//! - `peer.listAllPeers()`: `GET /api/apikeys/{key}/clients/` → the peer
//!   ids (with `--skyway-discovery`; otherwise 401, which the SDK turns
//!   into a `list-error`);
//! - `peer.fetchPeerExists(id)`: `GET /api/apikeys/{key}/peers/{id}/exists`
//!   → `{exists}`.
//!
//! The SDK's polling requests are credentialed (`withCredentials`), so a
//! page on another origin needs its own origin echoed with
//! `Access-Control-Allow-Credentials: true`, never `*`.

use axum::Json;
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::http::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/apikeys/{key}/clients", get(clients))
        .route("/api/apikeys/{key}/clients/", get(clients))
        .route("/api/apikeys/{key}/peers/{id}/exists", get(exists))
}

fn unknown_key() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "API key is invalid: use a key this server was started with (--skyway-key)",
    )
}

async fn clients(State(state): State<AppState>, Path(key): Path<String>) -> Response {
    let Some(hub) = state.skyway.as_ref() else {
        return not_served().into_response();
    };
    let Some(ids) = hub.peers(&key) else {
        return unknown_key().into_response();
    };
    if !hub.discovery {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "listing peers is off on this server (--skyway-discovery turns it on)",
        )
        .into_response();
    }
    Json(ids).into_response()
}

async fn exists(
    State(state): State<AppState>,
    Path((key, id)): Path<(String, String)>,
) -> Response {
    let Some(hub) = state.skyway.as_ref() else {
        return not_served().into_response();
    };
    match hub.exists(&key, &id) {
        Some(exists) => Json(json!({ "exists": exists })).into_response(),
        None => unknown_key().into_response(),
    }
}

fn not_served() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "the SkyWay protocol is off on this server (--no-skyway)",
    )
}

/// Where the credentialed CORS applies, and which origins may use it.
#[derive(Clone)]
pub struct CorsScope {
    pub socket_path: String,
    pub origins: Vec<String>,
}

/// Echoes an allowed `Origin` with `Access-Control-Allow-Credentials: true`
/// on the SkyWay socket and API paths, over what the general CORS layer
/// (inside this one) said; preflights included.
pub async fn credentialed_cors(
    State(scope): State<CorsScope>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let ours = path == scope.socket_path
        || path.starts_with(&format!("{}/", scope.socket_path))
        || path.starts_with("/api/apikeys/");
    let origin = request.headers().get(header::ORIGIN).cloned();
    let mut response = next.run(request).await;
    if !ours {
        return response;
    }
    let headers = response.headers_mut();
    match origin {
        Some(o)
            if o.to_str()
                .is_ok_and(|o| crate::http::origin_allowed(&scope.origins, o)) =>
        {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
            headers.append(header::VARY, HeaderValue::from_static("origin"));
        }
        _ => {
            headers.remove(header::ACCESS_CONTROL_ALLOW_ORIGIN);
        }
    }
    response
}
