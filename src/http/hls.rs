//! LL-HLS over HTTP: `/hls/{live}/index.m3u8` (multivariant), then per
//! rendition `index.m3u8` (with blocking reload: `_HLS_msn`, `_HLS_part`,
//! `_HLS_skip`), `init-N.mp4`, `seg-N.m4s`, `part-N-M.m4s`. Stateless URLs,
//! the same for every viewer, so any cache can serve them.
//!
//! Private lives: the playlists need a viewer token (`?token=` or a Bearer
//! header), and list their media with `?k=`, a per-live signature that is
//! the same for every viewer (see `Hub::media_key`): segments stay cacheable
//! once for everyone.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;
use crate::hls::hub::{HlsLive, Hub};
use crate::hls::playlist::{
    self, Decision, MediaOptions, RenditionReport, Request, Resource, Variant,
};
use crate::hls::playlist_cache::Stamp;
use crate::hls::segmenter::Lookup;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/hls/{live}/index.m3u8", get(multivariant))
        .route("/hls/{live}/{rendition}/index.m3u8", get(media))
        .route("/hls/{live}/{rendition}/{file}", get(resource))
}

#[derive(Debug, Deserialize, Default)]
struct HlsQuery {
    token: Option<String>,
    k: Option<String>,
    #[serde(rename = "_HLS_msn")]
    msn: Option<String>,
    #[serde(rename = "_HLS_part")]
    part: Option<String>,
    #[serde(rename = "_HLS_skip")]
    skip: Option<String>,
}

/// The longest a request waits for the live's first parts to exist.
const FIRST_WAIT: Duration = Duration::from_secs(8);

const PLAYLIST: &str = "application/vnd.apple.mpegurl";

fn hub(state: &AppState) -> Result<&Arc<Hub>, ApiError> {
    state.hls.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "HLS is off on this server (--no-hls)",
        )
    })
}

/// A playlist may be read by whoever may watch the live.
fn check_viewer(
    state: &AppState,
    live: &str,
    headers: &HeaderMap,
    q: &HlsQuery,
) -> Result<(), ApiError> {
    if !super::valid_live_name(live) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("'{live}' is not a live name"),
        ));
    }
    let credential = super::bearer_of(headers).or(q.token.as_deref());
    state.access.check_play(live, credential)?;
    Ok(())
}

/// The query a private live's playlists put on their URIs.
fn media_query(state: &AppState, hub: &Hub, live: &str) -> String {
    if state.access.is_private(live) {
        format!("?k={}", hub.media_key(live))
    } else {
        String::new()
    }
}

/// Opens (or finds) the live's packaging; the live must be on air.
async fn open(state: &AppState, live: &str) -> Result<Arc<HlsLive>, ApiError> {
    let hub = hub(state)?;
    if let Some(l) = hub.get(live) {
        l.touch();
        return Ok(l);
    }
    if !state.board.get(live).on_air {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("live '{live}' is not on air"),
        ));
    }
    Ok(hub.open(live).await?)
}

/// Waits until `ready` says yes (re-checked at every new part) or `limit`
/// passes; true if it said yes.
async fn wait_for(hls: &HlsLive, limit: Duration, mut ready: impl FnMut(&HlsLive) -> bool) -> bool {
    let mut rx = hls.version.subscribe();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if ready(hls) {
            return true;
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            _ => return ready(hls),
        }
    }
}

fn refused(hls: &HlsLive) -> Option<&'static str> {
    hls.feed.lock().unwrap_or_else(|e| e.into_inner()).refused
}

fn playlist_response(body: impl Into<Bytes>, max_age: u32) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(PLAYLIST)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_str(&format!("max-age={max_age}")).expect("ascii"),
            ),
        ],
        body.into(),
    )
        .into_response()
}

async fn multivariant(
    State(state): State<AppState>,
    Path(live): Path<String>,
    Query(q): Query<HlsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_viewer(&state, &live, &headers, &q)?;
    let hls = open(&state, &live).await?;
    let has_variant = |h: &HlsLive| {
        let feed = h.feed.lock().unwrap_or_else(|e| e.into_inner());
        feed.refused.is_some() || feed.renditions.iter().any(|r| r.segmenter.is_some())
    };
    wait_for(&hls, FIRST_WAIT, has_variant).await;
    if let Some(reason) = refused(&hls) {
        return Err(ApiError::new(StatusCode::CONFLICT, reason));
    }
    let now = std::time::Instant::now();
    let mut variants: Vec<Variant> = {
        let feed = hls.feed.lock().unwrap_or_else(|e| e.into_inner());
        let audio = feed.has_audio();
        feed.renditions
            .iter()
            .filter_map(|r| r.variant(now, audio))
            .collect()
    };
    if variants.is_empty() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("live '{live}' has no H.264 keyframe yet; try again in a moment"),
        ));
    }
    // The highest first: players start with the first listed.
    variants.sort_by_key(|v| std::cmp::Reverse(v.bandwidth));
    let query = q
        .token
        .as_deref()
        .map(|t| format!("?token={t}"))
        .unwrap_or_default();
    // Private: the token is the viewer's own, so nobody else's cache may
    // keep it.
    let mut response = playlist_response(playlist::multivariant_playlist(&variants, &query), 1);
    if state.access.is_private(&live) {
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, max-age=1"),
        );
    }
    Ok(response)
}

fn number<T: std::str::FromStr>(v: &Option<String>, name: &str) -> Result<Option<T>, ApiError> {
    match v {
        None => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("{name} must be a number, not '{s}'"),
            )
        }),
    }
}

async fn media(
    State(state): State<AppState>,
    Path((live, rendition)): Path<(String, String)>,
    Query(q): Query<HlsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_viewer(&state, &live, &headers, &q)?;
    let request = Request {
        msn: number(&q.msn, "_HLS_msn")?,
        part: number(&q.part, "_HLS_part")?,
        skip: q.skip.as_deref().is_some_and(|s| s == "YES" || s == "v2"),
    };
    let hls = open(&state, &live).await?;
    let hub = hub(&state)?;
    // A plain request waits (at most FIRST_WAIT, then answers what there
    // is) until the rendition lists a complete segment and at least
    // PART-HOLD-BACK of media: players refuse a playlist of parts only
    // (hls.js: "No Segments found in Playlist", then a retry a second
    // later), and start at the first segment when the playlist is shorter
    // than PART-HOLD-BACK, closer to the edge than it says is safe. The
    // first viewer of a live gets such a young playlist: packaging starts
    // with their request. A blocking request waits for its part below.
    let plain = request.msn.is_none();
    let exists = |h: &HlsLive| {
        let feed = h.feed.lock().unwrap_or_else(|e| e.into_inner());
        feed.refused.is_some()
            || feed.renditions.iter().any(|r| {
                r.name == rendition
                    && r.segmenter.as_ref().is_some_and(|s| {
                        if plain {
                            let listed: Duration = s.segments().map(|x| x.duration).sum();
                            s.segments().any(|x| x.complete)
                                && listed >= playlist::part_hold_back(s.config().part_target)
                        } else {
                            s.last_position().is_some()
                        }
                    })
            })
    };
    wait_for(&hls, FIRST_WAIT, exists).await;
    if let Some(reason) = refused(&hls) {
        return Err(ApiError::new(StatusCode::CONFLICT, reason));
    }
    // Blocking reload: held until the part asked for exists, at most three
    // target durations (then 503, as RFC 8216bis says).
    let decide = |h: &HlsLive| -> Option<Decision> {
        let feed = h.feed.lock().unwrap_or_else(|e| e.into_inner());
        let seg = feed.segmenter(&rendition)?;
        Some(playlist::decide(&request, seg))
    };
    let hold = {
        let feed = hls.feed.lock().unwrap_or_else(|e| e.into_inner());
        let target = feed
            .renditions
            .iter()
            .find_map(|r| r.segmenter.as_ref().map(|s| s.target_duration()))
            .unwrap_or(1);
        Duration::from_secs(3 * target)
    };
    match decide(&hls) {
        None => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("live '{live}' has no rendition '{rendition}'"),
            ));
        }
        Some(Decision::BadRequest(reason)) => {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, reason));
        }
        Some(Decision::Wait) => {
            let came = wait_for(&hls, hold, |h| matches!(decide(h), Some(Decision::Render))).await;
            if !came {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the part asked for did not come in time (is the caster still sending?)",
                ));
            }
        }
        Some(Decision::Render) => {}
    }
    let query = media_query(&state, hub, &live);
    let body = {
        let feed = hls.feed.lock().unwrap_or_else(|e| e.into_inner());
        let stamp = Stamp::of(&feed);
        let mut cache = hls.playlists.lock().unwrap_or_else(|e| e.into_inner());
        match cache.get(&rendition, request.skip, &query, &stamp) {
            Some(body) => body,
            None => {
                let reports: Vec<RenditionReport> = feed
                    .renditions
                    .iter()
                    .filter(|r| r.name != rendition)
                    .filter_map(|r| {
                        let uri = format!("../{}/index.m3u8", r.name);
                        RenditionReport::of(uri, r.segmenter.as_ref()?)
                    })
                    .collect();
                let Some(seg) = feed.segmenter(&rendition) else {
                    return Err(ApiError::new(StatusCode::NOT_FOUND, "the rendition ended"));
                };
                let body = Bytes::from(playlist::media_playlist(
                    seg,
                    &MediaOptions {
                        skip: request.skip,
                        query: &query,
                        rendition_reports: &reports,
                    },
                ));
                cache.put(&rendition, request.skip, &query, stamp, body.clone());
                body
            }
        }
    };
    // A blocking request names a playlist that will not change: a cache
    // may keep it for a while; a plain one changes every part.
    let max_age = if request.msn.is_some() { 6 } else { 1 };
    let mut response = playlist_response(body, max_age);
    if state.access.is_private(&live) {
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, max-age=1"),
        );
    }
    Ok(response)
}

async fn resource(
    State(state): State<AppState>,
    Path((live, rendition, file)): Path<(String, String, String)>,
    Query(q): Query<HlsQuery>,
) -> Result<Response, ApiError> {
    if !super::valid_live_name(&live) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("'{live}' is not a live name"),
        ));
    }
    let hub = hub(&state)?;
    if state.access.is_private(&live)
        && !q
            .k
            .as_deref()
            .is_some_and(|k| crate::access::same(k, &hub.media_key(&live)))
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this private live's media needs the k= its playlist gives (ask for the playlist with a viewer token)",
        ));
    }
    let Some(what) = Resource::parse(&file) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no such HLS resource '{file}'"),
        ));
    };
    let Some(hls) = hub.get(&live) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("live '{live}' is not being served as HLS"),
        ));
    };
    hls.touch();
    let lookup = |h: &HlsLive| -> Lookup {
        let feed = h.feed.lock().unwrap_or_else(|e| e.into_inner());
        let Some(seg) = feed.segmenter(&rendition) else {
            return Lookup::NotFound;
        };
        match what {
            Resource::Init { version } => seg.init(version).map_or(Lookup::NotFound, Lookup::Ready),
            Resource::Segment { msn } => seg.segment(msn),
            Resource::Part { msn, part } => seg.part(msn, part),
        }
    };
    let hold = Duration::from_secs(3 * hub.config().segmenter.segment_target.as_secs().max(1));
    let mut found = lookup(&hls);
    if found == Lookup::Pending {
        // A preload hint (the next part) or the segment in progress: held
        // until it exists.
        wait_for(&hls, hold, |h| lookup(h) != Lookup::Pending).await;
        found = lookup(&hls);
    }
    match found {
        Lookup::Ready(bytes) => Ok(media_response(&what, bytes)),
        Lookup::Pending => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the part did not come in time (is the caster still sending?)",
        )),
        Lookup::Gone => Err(ApiError::new(
            StatusCode::GONE,
            format!("{file} slid out of the live window; reload the playlist"),
        )),
        Lookup::NotFound => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no {file} in rendition '{rendition}'"),
        )),
    }
}

fn media_response(what: &Resource, bytes: Bytes) -> Response {
    let kind = match what {
        Resource::Init { .. } => "video/mp4",
        _ => "video/iso.segment",
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
            // Never changes once made: cache for long.
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600, immutable"),
            ),
        ],
        bytes,
    )
        .into_response()
}
