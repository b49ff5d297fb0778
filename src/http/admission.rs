//! The first thing every request meets: who sent it (the client address,
//! through trusted proxies), and for a request that opens something — a
//! media session, a socket.io or WebSocket connection, an event stream,
//! TURN credentials — whether that address is within its rate.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::limits::{Client, Limits};

pub async fn admission(
    State(limits): State<Arc<Limits>>,
    mut req: Request,
    next: Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let forwarded_for = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    let client = limits.client(peer, forwarded_for);
    req.extensions_mut().insert(client);
    if opens_something(&req)
        && let Err(refusal) = limits.join(&client)
    {
        return ApiError::from(refusal).into_response();
    }
    next.run(req).await
}

/// The client a request came from (set by [`admission`]).
pub fn client_of(extensions: &axum::http::Extensions) -> Client {
    extensions
        .get::<Client>()
        .copied()
        // Only a request that bypassed the layer (none does in the server).
        .unwrap_or(Client::exempt(IpAddr::V4(Ipv4Addr::UNSPECIFIED)))
}

/// Whether `req` starts something that costs the server beyond its answer.
fn opens_something<B>(req: &axum::http::Request<B>) -> bool {
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    let websocket = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    // A socket.io transport with a session id continues a connection (a
    // poll, or the upgrade to a WebSocket); without one it opens one.
    let continues = query.split('&').any(|p| p.starts_with("sid="));
    let socket_io = query.split('&').any(|p| p.starts_with("EIO="));
    let session_offer = req.method() == Method::POST && {
        let mut segments = path.trim_start_matches('/').split('/');
        matches!(segments.next(), Some("whip" | "whep"))
            && segments.next().is_some_and(|s| !s.is_empty())
            && segments.next().is_none()
    };
    let stream_or_credentials = req.method() == Method::GET
        && (path == "/api/ice-servers"
            || (path.starts_with("/api/lives/") && path.ends_with("/events")));
    ((websocket || socket_io) && !continues) || session_offer || stream_or_credentials
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, uri: &str, upgrade: bool) -> axum::http::Request<()> {
        let mut b = axum::http::Request::builder().method(method).uri(uri);
        if upgrade {
            b = b.header("upgrade", "websocket");
        }
        b.body(()).unwrap()
    }

    #[test]
    fn what_counts_as_opening_something() {
        let opens = |m, u, up| opens_something(&req(m, u, up));
        assert!(opens(Method::POST, "/whip/show", false));
        assert!(opens(Method::POST, "/whep/show", false));
        assert!(!opens(Method::PATCH, "/whep/show/abc", false));
        assert!(!opens(Method::POST, "/whep/show/abc/layer", false));
        assert!(opens(Method::GET, "/api/ice-servers", false));
        assert!(opens(Method::GET, "/api/lives/show/events", false));
        assert!(!opens(Method::GET, "/api/lives/show", false));
        assert!(opens(Method::GET, "/chat/show", true));
        assert!(opens(
            Method::GET,
            "/socket.io/?EIO=3&transport=polling",
            false
        ));
        assert!(!opens(
            Method::POST,
            "/socket.io/?EIO=3&transport=polling&sid=x",
            false
        ));
        assert!(!opens(
            Method::GET,
            "/socket.io/?EIO=3&transport=websocket&sid=x",
            true
        ));
        assert!(!opens(Method::GET, "/", false));
        assert!(!opens(Method::GET, "/healthz", false));
    }
}
