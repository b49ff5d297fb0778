//! The admin API (`Authorization: Bearer <admin-token>`): stream keys and
//! viewer tokens.
//!
//! - `POST /api/lives` `{"live": "show", "private": false}` → 201
//!   `{"live", "key", "private", "whip"}`; posting again rotates the key.
//! - `PATCH /api/lives/{live}` `{"record": true, "private": false}` → 200
//!   `{"live", "private", "record"}`: changes settings, keeps the key;
//!   `record` starts (or stops) recording the live while on air.
//! - `DELETE /api/lives/{live}` revokes the key and ends the current cast.
//! - `POST /api/lives/{live}/tokens` `{"ttl": 3600}` → 201 `{"token", "expires"}`.
//!
//! Keys made here live in memory; keys meant to survive a restart belong in
//! the config file (`[lives.<name>] key = "..."`).

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use serde_json::json;

use super::{ApiError, AppState, bearer_of, check_live, guarded};
use crate::limits::Client;
use crate::sfu::Role;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/lives", post(create))
        .route("/api/lives/{live}", delete(revoke).patch(update))
        .route("/api/lives/{live}/tokens", post(token))
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateLive {
    live: String,
    /// Absent: a new live is public, an existing one keeps its setting.
    private: Option<bool>,
    /// Recorded while on air; absent: as before (a new live is not).
    record: Option<bool>,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct UpdateLive {
    private: Option<bool>,
    record: Option<bool>,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    /// Seconds; default one day.
    ttl: Option<u64>,
}

/// The longest viewer token the API mints: 30 days.
const MAX_TTL: u64 = 30 * 86_400;

fn json_body<T: serde::de::DeserializeOwned + Default>(
    body: &Bytes,
    expected: &str,
    empty_ok: bool,
) -> Result<T, ApiError> {
    if empty_ok && body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("expected {expected}: {e}")))
}

/// The admin token, checked through the limit on wrong guesses.
pub(super) fn check_admin(
    state: &AppState,
    client: &Client,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let bearer = bearer_of(headers);
    guarded(state, client, bearer, || state.access.check_admin(bearer))
}

async fn create(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        check_admin(&state, &client, &headers)?;
        let request: CreateLive =
            json_body(&body, r#"{"live": "<name>", "private": false}"#, false)?;
        check_live(&request.live)?;
        let key = state.access.create_key(&request.live, request.private);
        let rules = state.access.update(&request.live, None, request.record);
        let private = rules.private;
        tracing::info!(live = %request.live, private, record = rules.record, "stream key created");
        Ok::<_, ApiError>(
            (
                StatusCode::CREATED,
                Json(json!({
                    "live": request.live,
                    "key": key,
                    "private": private,
                    "record": rules.record,
                    "whip": format!("/whip/{}", request.live),
                })),
            )
                .into_response(),
        )
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn update(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    Path(live): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        check_admin(&state, &client, &headers)?;
        check_live(&live)?;
        let request: UpdateLive =
            json_body(&body, r#"{"record": true, "private": false}"#, false)?;
        let rules = state.access.update(&live, request.private, request.record);
        tracing::info!(%live, private = rules.private, record = rules.record, "live settings changed");
        Ok::<_, ApiError>(
            Json(json!({"live": live, "private": rules.private, "record": rules.record}))
                .into_response(),
        )
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn revoke(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    Path(live): Path<String>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        check_admin(&state, &client, &headers)?;
        check_live(&live)?;
        if !state.access.revoke_key(&live) {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("live '{live}' has no stream key"),
            ));
        }
        // A revoked key must not keep a cast going, nor one still
        // proving itself that was admitted with it.
        let mut casters = state.media.cast_sessions_of(&live);
        casters.extend(state.media.caster(&live));
        casters.sort();
        casters.dedup();
        for caster in casters {
            let _ = state.media.leave(&live, Role::Cast, caster).await;
        }
        tracing::info!(%live, "stream key revoked");
        Ok(StatusCode::NO_CONTENT.into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn token(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    Path(live): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        check_admin(&state, &client, &headers)?;
        check_live(&live)?;
        let request: CreateToken = json_body(&body, r#"{"ttl": <seconds>}"#, true)?;
        let ttl = request.ttl.unwrap_or(86_400);
        if !(1..=MAX_TTL).contains(&ttl) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("ttl must be 1..={MAX_TTL} seconds"),
            ));
        }
        let (token, expires) = state.access.mint_token(&live, ttl)?;
        Ok((
            StatusCode::CREATED,
            Json(json!({"live": live, "token": token, "expires": expires})),
        )
            .into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}
