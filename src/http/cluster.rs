//! The cluster's HTTP face:
//!
//! - `GET /api/route?live=NAME[&avoid=NODE][&cast=1]` → `{"url", "node",
//!   "origin", "whep", "whip", "nodes"}`: the node a new viewer of the live
//!   should play from (any node answers the same), or with `cast=1` where
//!   a caster should cast (the live's origin if it has a live one, else
//!   the node asked). `avoid` names a node the client could not reach
//!   (taken only if no other has room); `nodes` lists every fresh node's
//!   URL, where to ask again when this one is gone. Without `--cluster`,
//!   this node itself (`node` is `"local"`). 503 with the reason when the
//!   cluster's Redis is unreachable or every node is full.
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
    avoid: Option<String>,
    /// Any value but `0`/`false` asks where to cast.
    cast: Option<String>,
}

impl RouteQuery {
    fn cast(&self) -> bool {
        self.cast
            .as_deref()
            .is_some_and(|v| v != "0" && !v.eq_ignore_ascii_case("false"))
    }
}

async fn route(
    State(state): State<AppState>,
    Query(q): Query<RouteQuery>,
    headers: HeaderMap,
) -> Response {
    let cast = q.cast();
    let result = async {
        let live = q.live.unwrap_or_default();
        check_live(&live)?;
        let (url, node, origin, nodes) = match &state.cluster {
            Some(cluster) if cast => {
                let nodes = cluster.fresh_urls().await?;
                match cluster.cast_elsewhere(&live, q.avoid.as_deref()).await {
                    Some(claim) => (claim.url, claim.node, true, nodes),
                    None => {
                        let url = cluster.node_url().to_string();
                        (url, cluster.node_id().to_string(), true, nodes)
                    }
                }
            }
            Some(cluster) => {
                let route = cluster.route(&live, q.avoid.as_deref()).await?;
                (route.url, route.node, route.origin, route.nodes)
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
                let on_air = cast || state.board.get(&live).on_air;
                let url = format!("{scheme}://{host}");
                (url.clone(), "local".to_string(), on_air, vec![url])
            }
        };
        let whep = format!("{url}/whep/{live}");
        let whip = format!("{url}/whip/{live}");
        Ok::<_, ApiError>(
            (
                [(header::CACHE_CONTROL, "no-store")],
                Json(json!({
                    "url": url, "node": node, "origin": origin,
                    "whep": whep, "whip": whip, "nodes": nodes,
                })),
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
