//! Recordings over HTTP:
//!
//! - `GET /api/recordings?live=` → `{"recordings": [...]}`, newest first;
//! - `GET /recordings/{file}` → the file, with HTTP Range (tower-http's
//!   `ServeFile`: 206, `Content-Range`, 416);
//! - `GET /recordings/{stem}.m3u8` → an HLS VOD playlist over the MP4 by
//!   byte ranges (EVENT while the file is still being written).
//!
//! Who may read them: with the admin token, anything. On a server whose
//! casting needs keys (not `open`), only the admin. On an open server,
//! anyone, as for playing, except a private live's recordings, which need
//! its viewer token. Credentials as `Authorization: Bearer` or `?token=`
//! (a `<video src>` sends no headers). Only names of the recording pattern
//! are ever opened: no path can reach another file.

use std::collections::HashSet;
use std::path::PathBuf;

use axum::Json;
use axum::Router;
use axum::extract::{Extension, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::{ApiError, AppState, bearer_of, guarded};
use crate::access::Denied;
use crate::hls::recordings;
use crate::hls::stored;
use crate::limits::Client;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/recordings", get(list))
        .route("/recordings/{file}", get(file))
}

#[derive(serde::Deserialize)]
struct ListQuery {
    live: Option<String>,
    token: Option<String>,
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// The recording directory and the files being written.
fn recording_dir(state: &AppState) -> Result<(PathBuf, HashSet<PathBuf>), ApiError> {
    let hub = state.hls.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "recordings are off: this server runs with --no-hls",
        )
    })?;
    let dir = hub.config().recordings_dir().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "recordings are off (no --record-dir)",
        )
    })?;
    Ok((dir.to_path_buf(), hub.recordings.writing()))
}

/// May this credential read `live`'s recordings (`None`: the listing of
/// every live)? `Ok(true)` for the admin. Keys are in use when casting
/// needs them (not `open`) or an admin token is set: then recordings are
/// the admin's.
fn may_read(
    state: &AppState,
    client: &Client,
    credential: Option<&str>,
    live: Option<&str>,
) -> Result<bool, ApiError> {
    let access = &state.access;
    let keys_in_use = !access.is_open() || access.has_admin_token();
    if access.has_admin_token() && credential.is_some() && access.check_admin(credential).is_ok() {
        return Ok(true);
    }
    if keys_in_use && !access.has_admin_token() && access.check_admin(None).is_ok() {
        // A loopback server without an admin token: the admin API is
        // open to it, and so are recordings.
        return Ok(true);
    }
    guarded(state, client, credential, || {
        if keys_in_use {
            return Err(Denied::Unauthorized(
                "recordings are the admin's on a server that uses keys: send \
                 'Authorization: Bearer <admin-token>' (or ?token=<admin-token>)"
                    .into(),
            ));
        }
        match live {
            Some(live) => access.check_play(live, credential),
            None => Ok(()),
        }
    })?;
    Ok(false)
}

async fn list(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Response {
    let result = async {
        if let Some(live) = &query.live {
            super::check_live(live)?;
        }
        let credential = bearer_of(&headers).or(query.token.as_deref());
        let admin = may_read(&state, &client, credential, query.live.as_deref())?;
        let (dir, writing) = recording_dir(&state)?;
        let live = query.live.clone();
        let mut found =
            tokio::task::spawn_blocking(move || recordings::list(&dir, live.as_deref(), &writing))
                .await
                .unwrap_or_default();
        if !admin && query.live.is_none() {
            // Without a live named, a private live's token proves nothing.
            found.retain(|r| !state.access.is_private(&r.live));
        }
        Ok::<_, ApiError>(
            (
                [(header::CACHE_CONTROL, "no-store")],
                Json(json!({ "recordings": found })),
            )
                .into_response(),
        )
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn file(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    Path(name): Path<String>,
    Query(query): Query<TokenQuery>,
    request: Request,
) -> Response {
    let result = async {
        let bad = || {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "not a recording's name: recordings are {live}-{YYYYmmdd-HHMMSS}.mp4, .webm \
                 or (the MP4's playlist) .m3u8, as GET /api/recordings lists them",
            )
        };
        let (live, playlist) = match name.strip_suffix(".m3u8") {
            Some(stem) => (stored::parse_stem(stem).ok_or_else(bad)?.0, true),
            None => (stored::parse(&name).ok_or_else(bad)?.live, false),
        };
        let credential = bearer_of(request.headers()).or(query.token.as_deref());
        may_read(&state, &client, credential, Some(&live))?;
        let (dir, writing) = recording_dir(&state)?;
        let missing = || {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no recording {name}: see GET /api/recordings"),
            )
        };
        if playlist {
            let mp4 = format!("{}.mp4", name.trim_end_matches(".m3u8"));
            let path = dir.join(&mp4);
            let complete = !writing.contains(&path);
            let index = tokio::task::spawn_blocking(move || {
                let mut f = std::fs::File::open(&path).ok()?;
                let len = f.metadata().ok()?.len();
                crate::hls::vod::index(&mut f, len)
            })
            .await
            .ok()
            .flatten()
            .ok_or_else(missing)?;
            // The token travels on to the file's URIs (players add no
            // headers of their own); only a URL-safe one.
            let uri = match query.token.as_deref() {
                Some(t)
                    if t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b)) =>
                {
                    format!("{mp4}?token={t}")
                }
                _ => mp4,
            };
            let text = crate::hls::vod::playlist(&index, &uri, complete);
            return Ok((
                [
                    (header::CONTENT_TYPE, "application/vnd.apple.mpegurl"),
                    (
                        header::CACHE_CONTROL,
                        if complete {
                            "private, max-age=60"
                        } else {
                            "no-store"
                        },
                    ),
                ],
                text,
            )
                .into_response());
        }
        let path = dir.join(&name);
        if !path.is_file() {
            return Err(missing());
        }
        let served = tower_http::services::ServeFile::new(&path)
            .try_call(request)
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot read {name}: {e}"),
                )
            })?;
        Ok(served.map(axum::body::Body::new))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}
