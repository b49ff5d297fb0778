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
//! On one node, keys made here live in memory; keys meant to survive a
//! restart belong in the config file (`[lives.<name>] key = "..."`). In a
//! cluster, the changes are stored in Redis and every node applies them
//! (`cluster::rules`); while Redis is unreachable they are refused with
//! 503, so that no node takes a key the others refuse.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use serde_json::json;

use super::{ApiError, AppState, bearer_of, check_live, guarded};
use crate::access::{Access, LiveRules, RulesPatch};
use crate::limits::Client;

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
        let key = Access::new_key();
        let patch = RulesPatch {
            key: Some(Some(key.clone())),
            private: request.private,
            record: request.record,
        };
        let (_, rules) = change(&state, &request.live, &patch).await?;
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
        let patch = RulesPatch {
            key: None,
            private: request.private,
            record: request.record,
        };
        let (_, rules) = change(&state, &live, &patch).await?;
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
        if state.access.rules(&live).key.is_none() {
            return Err(no_key(&live));
        }
        let revoke = RulesPatch {
            key: Some(None),
            ..RulesPatch::default()
        };
        let (before, _) = change(&state, &live, &revoke).await?;
        if before.key.is_none() {
            return Err(no_key(&live));
        }
        // A revoked key must not keep a cast going, nor one still
        // proving itself that was admitted with it (other nodes end theirs
        // when they hear of it).
        state.media.end_casts(&live).await;
        tracing::info!(%live, "stream key revoked");
        Ok(StatusCode::NO_CONTENT.into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

fn no_key(live: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("live '{live}' has no stream key"),
    )
}

/// Changes `live`'s rules: here, or in a cluster through Redis for every
/// node (this one takes the result at once, the others when they hear
/// it). Returns the rules before and after.
async fn change(
    state: &AppState,
    live: &str,
    patch: &RulesPatch,
) -> Result<(LiveRules, LiveRules), ApiError> {
    let Some(cluster) = &state.cluster else {
        return Ok(state.access.change(live, patch));
    };
    let base = state.access.rules(live);
    let (before, stored) = cluster
        .change_rules(live, &base, patch)
        .await
        .map_err(|e| {
            let mut e = ApiError::from(e);
            e.1 = format!(
                "{} (stream keys and live settings are kept in Redis so that every node \
                 enforces them: try again when it answers)",
                e.1
            );
            e
        })?;
    let after = stored.rules.clone();
    state.access.apply_stored(live, stored.rules, stored.v);
    Ok((before, after))
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
