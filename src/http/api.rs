//! The JSON API: lives on air, one live's state, a live's state as
//! server-sent events (what the pages use to show on air / viewers), and the
//! ICE servers for SDKs.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use serde_json::json;

use super::{AppState, check_live};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/lives", get(lives))
        .route("/api/lives/{live}", get(live))
        .route("/api/lives/{live}/events", get(events))
        .route("/api/ice-servers", get(ice_servers))
}

/// An `RTCConfiguration` fragment: `new RTCPeerConnection(await r.json())`.
/// TURN credentials are minted per request; never cache the response.
/// `hls`: whether the server packages lives as LL-HLS, so casters prefer
/// H.264 (VP8 can't go into fMP4 for browsers); RTCConfiguration ignores it.
async fn ice_servers(State(state): State<AppState>) -> Response {
    let servers = state.ice.as_ref().map(|i| i.issue()).unwrap_or_default();
    (
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        Json(json!({ "iceServers": servers, "hls": state.hls.is_some() })),
    )
        .into_response()
}

/// Lives on air, private ones left out. In a cluster: on any node, with
/// the cluster's viewers (`board.rs`).
async fn lives(State(state): State<AppState>) -> Response {
    let mut lives = state.board.shown_on_air();
    // A SkyWay SFU room's further publishers (`room~2`) are the room's own
    // business, seen by its members, not lives of their own.
    lives.retain(|l| {
        super::valid_live_name(&l.state.live) && !state.access.is_private(&l.state.live)
    });
    Json(json!({ "lives": lives })).into_response()
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// A private live's state is for those who may watch or cast it: a viewer
/// token or the stream key, as `Authorization: Bearer` or `?token=`
/// (EventSource sends no headers).
fn may_see(
    state: &AppState,
    live: &str,
    headers: &HeaderMap,
    query: &TokenQuery,
) -> Result<(), super::ApiError> {
    check_live(live)?;
    if !state.access.is_private(live) {
        return Ok(());
    }
    let credential = super::bearer_of(headers).or(query.token.as_deref());
    if state.access.check_cast(live, credential).is_ok() {
        return Ok(());
    }
    state.access.check_play(live, credential)?;
    Ok(())
}

async fn live(
    State(state): State<AppState>,
    Path(live): Path<String>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> Response {
    match may_see(&state, &live, &headers, &query) {
        Ok(()) => {
            let mut s = state.board.shown(&live);
            // Packaging and recording problems (VP8, disk errors).
            if let Some(hub) = &state.hls {
                s.state.warnings.extend(hub.warnings(&live));
            }
            Json(s).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn events(
    State(state): State<AppState>,
    Path(live): Path<String>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> Response {
    if let Err(e) = may_see(&state, &live, &headers, &query) {
        return e.into_response();
    }
    let mut shutdown = state.shutdown.clone();
    let stream = state.board.watch(&live).map(|s| {
        Ok::<_, Infallible>(
            Event::default()
                .event("state")
                .json_data(s)
                .unwrap_or_default(),
        )
    });
    // On shutdown the page is told (`event: shutdown`), then the stream ends.
    let stream = stream
        .take_until(async move {
            let _ = shutdown.wait_for(|down| *down).await;
        })
        .chain(futures_util::stream::once(async {
            Ok(Event::default()
                .event("shutdown")
                .data("the server is restarting"))
        }));
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
