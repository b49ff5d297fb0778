//! WHIP (RFC 9725) and WHEP: one offer/answer exchange per session, a
//! session URL to trickle candidates to (PATCH) and to end it (DELETE).

use axum::Router;
use axum::body::Bytes;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Extension, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{patch, post};
use str0m::Candidate;
use tracing::Instrument;

use super::{ApiError, AppState, bearer_of, check_live, guarded};
use crate::access::Admission;
use crate::limits::Client;
use crate::sfu::layer::Preference;
use crate::sfu::{PeerId, Role};
use crate::turn::ice_servers::link_headers;

pub fn routes() -> Router<AppState> {
    Router::new()
        .merge(routes_for(Role::Cast))
        .merge(routes_for(Role::Play))
}

/// `/whip/...` for casters, `/whep/...` for viewers: the same protocol.
fn routes_for(role: Role) -> Router<AppState> {
    let p = prefix(role);
    let router = match role {
        Role::Play => Router::new().route("/whep/{live}/{session}/layer", post(layer)),
        Role::Cast => Router::new(),
    };
    router
        .route(
            &format!("/{p}/{{live}}"),
            post(move |s, live, remote, client, h, body| {
                offer(s, live, remote, client, h, body, role)
            }),
        )
        .route(
            &format!("/{p}/{{live}}/{{session}}"),
            patch(move |s, path, h, body| trickle(s, path, h, body, role))
                .delete(move |s, path| end(s, path, role)),
        )
}

fn prefix(role: Role) -> &'static str {
    match role {
        Role::Cast => "whip",
        Role::Play => "whep",
    }
}

/// The WHEP draft's layer-selection extension.
const LAYER_REL: &str = "urn:ietf:params:whep:ext:core:layer";

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LayerRequest {
    layer: Preference,
}

/// `POST /whep/{live}/{session}/layer` with `{"layer": "auto"|"high"|"medium"|"low"}`.
async fn layer(
    State(state): State<AppState>,
    Path((live, session)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        check_live(&live)?;
        let peer = session_id(&session)?;
        check_content_type(&headers, "application/json")?;
        let request: LayerRequest = serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"layer\": \"auto\"|\"high\"|\"medium\"|\"low\"}}: {e}"),
            )
        })?;
        state.media.set_layer(&live, peer, request.layer).await?;
        Ok::<_, ApiError>(StatusCode::NO_CONTENT.into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

fn check_content_type(headers: &HeaderMap, expected: &str) -> Result<(), ApiError> {
    let got = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = got.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("expected Content-Type: {expected}, got '{got}'"),
        ))
    }
}

fn utf8(body: &Bytes) -> Result<&str, ApiError> {
    std::str::from_utf8(body)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "the body is not UTF-8 text"))
}

fn session_id(session: &str) -> Result<PeerId, ApiError> {
    session
        .parse()
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "no such session"))
}

async fn offer(
    State(state): State<AppState>,
    Path(live): Path<String>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Extension(client): Extension<Client>,
    headers: HeaderMap,
    body: Bytes,
    role: Role,
) -> Response {
    let span = tracing::info_span!("offer", %live, %role, %remote);
    async move {
        check_live(&live)?;
        state.accepting()?;
        // Credentials first: a refused request must not cost an SDP parse,
        // nor disturb whoever is live.
        let bearer = bearer_of(&headers);
        guarded(&state, &client, bearer, || match role {
            Role::Cast => state.access.check_cast(&live, bearer),
            Role::Play => state.access.check_play(&live, bearer),
        })?;
        check_content_type(&headers, "application/sdp")?;
        let offer = utf8(&body)?;
        if offer.trim().is_empty() {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "empty SDP offer"));
        }
        // A caster of a live cast on another node goes there (307 keeps the
        // method, the body and, for clients that follow it, the key).
        if role == Role::Cast
            && let Some(cluster) = &state.cluster
            && let Some(origin) = cluster.cast_elsewhere(&live, None).await
        {
            tracing::info!(origin = %origin.node, "caster sent to the live's origin");
            let location = format!("{}/whip/{live}", origin.url);
            return Ok((
                StatusCode::TEMPORARY_REDIRECT,
                [(header::LOCATION, location)],
                format!("live '{live}' is cast on node {}: cast there", origin.node),
            )
                .into_response());
        }
        let forwarded_for = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
        state
            .access
            .admit(&Admission {
                live: &live,
                role: &role.to_string(),
                remote,
                forwarded_for,
                protocol: prefix(role),
            })
            .await?;
        // A viewer on an edge: the live comes from its origin node.
        if role == Role::Play
            && let Some(cluster) = &state.cluster
        {
            cluster.relays.ensure(&state, &live);
        }
        let joined = state
            .media
            .join(&live, role, offer.to_string(), client)
            .await?;
        // The key may have been revoked while the webhook or the media
        // worker was busy: a revoked key must not keep the cast it started.
        if role == Role::Cast
            && let Err(denied) = state.access.check_cast(&live, bearer)
        {
            let _ = state.media.leave(&live, role, joined.peer).await;
            return Err(denied.into());
        }
        let location = format!("/{}/{}/{}", prefix(role), live, joined.peer);
        let mut response = (
            StatusCode::CREATED,
            [
                (header::CONTENT_TYPE, "application/sdp".to_string()),
                (header::ETAG, format!("\"{}\"", joined.peer)),
                (
                    header::HeaderName::from_static("accept-patch"),
                    "application/trickle-ice-sdpfrag".to_string(),
                ),
            ],
            joined.answer,
        )
            .into_response();
        let headers = response.headers_mut();
        if role == Role::Play {
            // The WHEP layer extension: where the viewer caps its layer.
            let link = format!("<{location}/layer>; rel=\"{LAYER_REL}\"");
            if let Ok(v) = header::HeaderValue::from_str(&link) {
                headers.append(header::LINK, v);
            }
        }
        // RFC 9725 §4.6: the ICE servers, with fresh TURN credentials.
        if let Some(ice) = &state.ice {
            for link in link_headers(&ice.issue()) {
                if let Ok(v) = header::HeaderValue::from_str(&link) {
                    headers.append(header::LINK, v);
                }
            }
        }
        if let Ok(v) = header::HeaderValue::from_str(&location) {
            headers.insert(header::LOCATION, v);
        }
        Ok::<_, ApiError>(response)
    }
    .instrument(span)
    .await
    .unwrap_or_else(|e| {
        tracing::info!(status = %e.0, "offer refused: {}", e.1);
        e.into_response()
    })
}

async fn trickle(
    State(state): State<AppState>,
    Path((live, session)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
    role: Role,
) -> Response {
    let result = async {
        check_live(&live)?;
        let peer = session_id(&session)?;
        check_content_type(&headers, "application/trickle-ice-sdpfrag")?;
        let frag = utf8(&body)?;
        if headers.get(header::IF_MATCH).is_some_and(|v| v == "*") {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "ICE restarts are not supported: end this session and POST a new offer",
            ));
        }
        let candidates = parse_candidates(frag)?;
        state.media.trickle(&live, role, peer, candidates).await?;
        Ok::<_, ApiError>(StatusCode::NO_CONTENT.into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// The `a=candidate` lines of a trickle-ice-sdpfrag body.
pub(crate) fn parse_candidates(frag: &str) -> Result<Vec<Candidate>, ApiError> {
    frag.lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("a="))
        .filter(|l| l.starts_with("candidate:"))
        .map(|l| {
            Candidate::from_sdp_string(l).map_err(|e| {
                ApiError::new(StatusCode::BAD_REQUEST, format!("bad candidate '{l}': {e}"))
            })
        })
        .collect()
}

async fn end(
    State(state): State<AppState>,
    Path((live, session)): Path<(String, String)>,
    role: Role,
) -> Response {
    let result = async {
        check_live(&live)?;
        let peer = session_id(&session)?;
        state.media.leave(&live, role, peer).await?;
        Ok::<_, ApiError>(StatusCode::OK.into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_read_from_a_sdpfrag() {
        let frag = "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\r\na=end-of-candidates\r\n";
        let c = parse_candidates(frag).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].addr(), "127.0.0.1:50000".parse().unwrap());
        assert!(parse_candidates("a=candidate:garbage").is_err());
    }
}
