//! The origin's side of a relay (`cluster::relay`): `POST
//! /cluster/relay/{live}` with an SDP offer, signed with the cluster
//! secret, answered as a relay viewer taking every layer. Nobody without
//! the secret can open one (401), and only the live's origin relays it
//! (409): an edge's relayed copy is never relayed on, so there are no
//! chains to go stale.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};

use super::{ApiError, AppState, check_live};
use crate::cluster::{auth, relay};
use crate::media::JoinOptions;
use crate::sfu::Role;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/cluster/relay/{live}", post(open))
        .route("/cluster/relay/{live}/{session}", delete(end))
}

async fn open(
    State(state): State<AppState>,
    Path(live): Path<String>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        check_live(&live)?;
        let cluster = cluster_of(&state)?;
        let path = relay::relay_path(&live);
        signed_by_a_node(cluster, "POST", &path, &headers)?;
        if !cluster.casts_here(&live) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("this node is not the origin of '{live}': ask /api/route for it"),
            ));
        }
        state.accepting()?;
        let offer = std::str::from_utf8(&body)
            .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "the body is not UTF-8 text"))?;
        let client = crate::limits::Client {
            ip: remote.ip(),
            exempt: true,
        };
        let joined = state
            .media
            .join_with(
                &live,
                Role::Play,
                offer.to_string(),
                client,
                JoinOptions {
                    relay: true,
                    ..JoinOptions::default()
                },
            )
            .await?;
        tracing::info!(%live, peer = %joined.peer.log(), %remote, "relay to an edge opened");
        let location = format!("{path}/{}", joined.peer);
        Ok::<_, ApiError>(
            (
                StatusCode::CREATED,
                [
                    (header::CONTENT_TYPE, "application/sdp".to_string()),
                    (header::LOCATION, location),
                ],
                joined.answer,
            )
                .into_response(),
        )
    }
    .await;
    result.unwrap_or_else(|e| {
        tracing::info!(%live, status = %e.0, "relay refused: {}", e.1);
        e.into_response()
    })
}

/// The edge ends its relay: the origin's relay viewer goes at once rather
/// than when its connection times out.
async fn end(
    State(state): State<AppState>,
    Path((live, session)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        check_live(&live)?;
        let cluster = cluster_of(&state)?;
        let path = format!("{}/{session}", relay::relay_path(&live));
        signed_by_a_node(cluster, "DELETE", &path, &headers)?;
        let peer = session
            .parse()
            .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "no such relay"))?;
        state.media.leave(&live, Role::Play, peer).await?;
        tracing::info!(%live, peer = %peer.log(), "relay to an edge ended by the edge");
        Ok::<_, ApiError>(StatusCode::OK.into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// 401 unless the request carries a valid signature of the cluster secret.
fn signed_by_a_node(
    cluster: &crate::cluster::Cluster,
    method: &str,
    path: &str,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let signed = headers.get(auth::HEADER).and_then(|v| v.to_str().ok());
    auth::verify(cluster.secret(), method, path, signed, auth::unix_ms()).map_err(|e| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            format!("relays are for the cluster's nodes: {e}"),
        )
    })
}

fn cluster_of(state: &AppState) -> Result<&crate::cluster::Cluster, ApiError> {
    state.cluster.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "this node is not part of a cluster (--cluster)",
        )
    })
}
