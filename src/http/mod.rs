//! The HTTP face: WHIP/WHEP signaling, the JSON API and the built-in pages.

mod admin;
pub mod admission;
mod api;
pub(crate) mod chat;
mod cluster;
mod error;
mod hls;
pub mod mediasoup;
mod ops;
mod pages;
pub mod peerjs;
mod recordings;
mod relay;
pub(crate) mod session;
pub mod skyway;
pub mod tls;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::access::Access;
use crate::board::LiveBoard;
use crate::media::MediaHandle;
use crate::turn::IceServers;

pub use chat::ChatHub;
pub use error::ApiError;

/// Bodies above this are refused with 413: an SDP offer is a few KiB.
pub const MAX_BODY: usize = 64 * 1024;
/// A request's body must arrive within this.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// A handler must answer (headers) within this; event streams and
/// WebSockets answer at once and then live on.
pub const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Clone)]
pub struct AppState {
    pub media: MediaHandle,
    pub board: Arc<LiveBoard>,
    /// Turns true when the server is shutting down: long-lived responses
    /// (event streams) end so that the graceful shutdown can finish.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// The STUN/TURN servers handed to clients; `None` without `--turn`.
    pub ice: Option<Arc<IceServers>>,
    /// Stream keys, private lives, the admission webhook.
    pub access: Arc<Access>,
    pub chat: Arc<ChatHub>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The PeerJS PeerServer; `None` with `--no-peerjs`.
    pub peerjs: Option<Arc<peerjs::PeerHub>>,
    /// The SkyWay signaling; `None` with `--no-skyway`.
    pub skyway: Option<Arc<skyway::SkywayHub>>,
    /// Admission limits (rates, caps) shared by every face.
    pub limits: Arc<crate::limits::Limits>,
    /// LL-HLS packaging; `None` with `--no-hls`.
    pub hls: Option<Arc<crate::hls::hub::Hub>>,
    /// This node's membership of a cluster; `None` without `--cluster`.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// The socket.io endpoints, each at its own path.
#[derive(Default)]
pub struct SocketIoLayers {
    /// The mediasoup dialect (see [`mediasoup::layer`]).
    pub mediasoup: Option<socketioxide::layer::SocketIoLayer>,
    /// skyway-js (see [`skyway::layer`]), with the path it is served at.
    pub skyway: Option<(socketioxide::layer::SocketIoLayer, String)>,
}

/// `peerjs_path`: where the PeerServer protocol is served (e.g. `/peer`);
/// `socket_io`: the socket.io endpoints served.
pub fn router(
    state: AppState,
    cors_origins: &[String],
    peerjs_path: &str,
    socket_io: SocketIoLayers,
) -> Router {
    let peerjs = match state.peerjs {
        Some(_) => peerjs::routes(peerjs_path),
        None => Router::new(),
    };
    let app = Router::new()
        .merge(peerjs)
        .merge(session::routes())
        .merge(api::routes())
        .merge(hls::routes())
        .merge(recordings::routes())
        .merge(admin::routes())
        .merge(chat::routes())
        .merge(cluster::routes())
        .merge(relay::routes())
        .merge(ops::routes())
        .merge(skyway::api::routes())
        .merge(pages::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            ANSWER_TIMEOUT,
        ))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            BODY_TIMEOUT,
        ));
    // socket.io answers its own path before routing; everything else
    // passes through.
    let app = match socket_io.mediasoup {
        Some(layer) => app.layer(layer),
        None => app,
    };
    let (app, skyway_path) = match socket_io.skyway {
        Some((layer, path)) => (app.layer(layer), Some(path)),
        None => (app, None),
    };
    // Every request, socket.io's included, is seen by the limits first.
    let app = app.layer(axum::middleware::from_fn_with_state(
        state.limits.clone(),
        admission::admission,
    ));
    let app = app
        .layer(DefaultBodyLimit::max(MAX_BODY))
        // Everything, /vessel.js included: a player embedded on another
        // site imports the SDK from here.
        .layer(cors(cors_origins));
    let app = match skyway_path {
        // skyway-js polls with credentials: its paths echo the origin.
        Some(path) => app.layer(axum::middleware::from_fn_with_state(
            skyway::api::CorsScope {
                socket_path: path,
                origins: cors_origins.to_vec(),
            },
            skyway::api::credentialed_cors,
        )),
        None => app,
    };
    app.with_state(state)
}

/// Whether a page of `origin` may call Vessel (`--cors-origin`).
pub fn origin_allowed(origins: &[String], origin: &str) -> bool {
    origins
        .iter()
        .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        format!("nothing at {}: see / for the lives on air", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not supported on {}", uri.path()),
    )
}

fn cors(origins: &[String]) -> CorsLayer {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        )
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            header::IF_MATCH,
        ])
        .expose_headers([
            header::LOCATION,
            header::LINK,
            header::ETAG,
            HeaderName::from_static("accept-patch"),
        ])
}

/// Live names are path segments in URLs people type and share.
pub fn valid_live_name(live: &str) -> bool {
    (1..=64).contains(&live.len())
        && live
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl AppState {
    /// New sessions and chat connections are refused once shutdown began.
    fn accepting(&self) -> Result<(), ApiError> {
        if *self.shutdown.borrow() {
            Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down; try again in a moment",
            ))
        } else {
            Ok(())
        }
    }
}

fn check_live(live: &str) -> Result<(), ApiError> {
    if valid_live_name(live) {
        Ok(())
    } else {
        Err(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid live name: use 1-64 letters, digits, '-' or '_'",
        ))
    }
}

/// Who sent a request, for the admission webhook: the TCP peer (a reverse
/// proxy, if there is one) and the `X-Forwarded-For` header a proxy set.
pub(crate) fn client_of(
    parts: &axum::http::request::Parts,
) -> (std::net::SocketAddr, Option<String>) {
    let remote = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or(std::net::SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.0);
    let forwarded_for = parts
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (remote, forwarded_for)
}

/// Checks the credential a request presented (`bearer`) with `check`,
/// through the limit on wrong guesses from one address: an address that
/// presented too many wrong keys or tokens lately gets 429, right or wrong.
fn guarded(
    state: &AppState,
    client: &crate::limits::Client,
    bearer: Option<&str>,
    check: impl FnOnce() -> Result<(), crate::access::Denied>,
) -> Result<(), ApiError> {
    state
        .limits
        .credential(client, bearer.is_some(), check, |d| {
            matches!(d, crate::access::Denied::Unauthorized(_))
        })?
        .map_err(ApiError::from)
}

/// The token of the request's `Authorization: Bearer` header.
fn bearer_of(headers: &axum::http::HeaderMap) -> Option<&str> {
    crate::access::bearer(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    )
}
