//! The cluster's HTTP face:
//!
//! - `GET /api/route?live=NAME` → `{"url", "node", "origin", "whep"}`: the
//!   node a new viewer of the live should play from (any node answers the
//!   same). Without `--cluster`, this node itself. 503 with the reason when
//!   the cluster's Redis is unreachable or every node is full.
//! - `GET /api/origin?live=NAME` → `{"node", "url", "epoch"}`: the live's
//!   origin claim as stored now; 404 when none (off air, or one node).
//! - `GET /api/cluster` → this node's id and every node's heartbeat (load,
//!   age, whether fresh); admin-only as the admin API is.
//! - `GET /api/cluster/metrics` → the whole cluster as Prometheus text
//!   (`cluster/exposition.rs`): every node's load, labelled by node, and
//!   every live's people per node and origin; admin-only (it names the
//!   nodes' URLs). 404 without `--cluster`.

use axum::Json;
use axum::Router;
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::admin::check_admin;
use super::{ApiError, AppState, check_live};
use crate::cluster::{ClusterError, HEARTBEAT_TTL_MS, auth, exposition, totals};
use crate::limits::Client;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/route", get(route))
        .route("/api/origin", get(origin))
        .route("/api/cluster", get(cluster))
        .route("/api/cluster/metrics", get(cluster_metrics))
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> Self {
        let status = match e {
            ClusterError::Config(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(
            status,
            e.to_string(),
            Some(std::time::Duration::from_secs(1)),
        )
    }
}

#[derive(serde::Deserialize)]
struct RouteQuery {
    live: Option<String>,
}

async fn route(
    State(state): State<AppState>,
    Query(q): Query<RouteQuery>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let live = q.live.unwrap_or_default();
        check_live(&live)?;
        let (url, node, origin) = match &state.cluster {
            Some(cluster) => {
                let route = cluster.route(&live).await?;
                (route.url, route.node, route.origin)
            }
            None => {
                // One node: this one, as the client reached it.
                let host = headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("localhost");
                let secure = headers
                    .get("x-forwarded-proto")
                    .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
                let scheme = if secure { "https" } else { "http" };
                let on_air = state.board.get(&live).on_air;
                (format!("{scheme}://{host}"), "local".to_string(), on_air)
            }
        };
        let whep = format!("{url}/whep/{live}");
        Ok::<_, ApiError>(
            (
                [(header::CACHE_CONTROL, "no-store")],
                Json(json!({ "url": url, "node": node, "origin": origin, "whep": whep })),
            )
                .into_response(),
        )
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn origin(State(state): State<AppState>, Query(q): Query<RouteQuery>) -> Response {
    let result = async {
        let live = q.live.unwrap_or_default();
        check_live(&live)?;
        let claim = match &state.cluster {
            Some(cluster) => cluster.origin(&live).await?,
            None => None,
        };
        let claim = claim.ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("live '{live}' has no origin in the cluster (not on air anywhere)"),
            )
        })?;
        Ok::<_, ApiError>(
            (
                [(header::CACHE_CONTROL, "no-store")],
                Json(json!({ "node": claim.node, "url": claim.url, "epoch": claim.epoch })),
            )
                .into_response(),
        )
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn cluster(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        check_admin(&state, &client, &headers)?;
        let Some(cluster) = &state.cluster else {
            return Ok::<_, ApiError>(
                Json(json!({ "cluster": false, "nodes": [] })).into_response(),
            );
        };
        let nodes = cluster.nodes().await?;
        let now = auth::unix_ms();
        let nodes: Vec<_> = nodes
            .into_iter()
            .map(|n| {
                json!({
                    "node": n.node,
                    "url": n.url,
                    "viewers": n.viewers,
                    "capacity": n.capacity,
                    "egress_bps": n.egress_bps,
                    "cpu_percent": n.cpu_percent,
                    "age_ms": now.saturating_sub(n.seen_ms),
                    "fresh": n.fresh(now, HEARTBEAT_TTL_MS),
                })
            })
            .collect();
        Ok((
            [(header::CACHE_CONTROL, "no-store")],
            Json(json!({ "cluster": true, "node": cluster.node_id(), "nodes": nodes })),
        )
            .into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn cluster_metrics(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        check_admin(&state, &client, &headers)?;
        let Some(cluster) = &state.cluster else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "this node is not in a cluster (start it with --cluster); its own metrics are at \
                 /metrics",
            ));
        };
        let nodes = cluster.nodes().await?;
        let now = auth::unix_ms();
        let lives = totals::by_live(&cluster.all_lives().await?, now, HEARTBEAT_TTL_MS);
        let names: Vec<String> = lives.keys().cloned().collect();
        let claims = cluster.origins(&names).await?;
        let origins = names
            .into_iter()
            .zip(claims)
            .filter_map(|(live, claim)| Some((live, claim?)))
            .collect();
        let text = exposition::render(&exposition::View {
            nodes: &nodes,
            lives: &lives,
            origins: &origins,
            now_ms: now,
            heartbeat_ttl_ms: HEARTBEAT_TTL_MS,
        });
        Ok::<_, ApiError>(
            (
                [
                    (
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    ),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                text,
            )
                .into_response(),
        )
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}
