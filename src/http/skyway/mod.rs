//! The SkyWay face: skyway-js pages connect here with only
//! `new Peer({key, host, port, secure})` changed. socket.io protocol 4 over
//! engine.io 3 (the SDK bundles socket.io-client 2) at `--skyway-path`
//! (`/socket.io`), served by socketioxide's `v4` feature next to the
//! mediasoup dialect's v5 endpoint; two HTTP answers under
//! `/api/apikeys/{key}/` (see `api.rs`). The protocol itself is the sans-IO
//! [`SkywayServer`]; this file moves events, time and media results.

mod admission;
pub mod api;
pub(crate) mod exec;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Query;
use serde_json::Value;
use socketioxide::extract::{Event, SocketRef, TryData};
use socketioxide::layer::SocketIoLayer;
use socketioxide::socket::DisconnectReason;
use socketioxide::{ProtocolVersion, SocketIo};
use tokio::sync::{Notify, mpsc};
use tracing::Instrument;

use super::AppState;
use crate::sfu::SfuEvent;
use crate::skyway::{Ask, ConnId, Data as RoomData, Hello, Out, SkywayConfig, SkywayServer};

/// Events one socket may have waiting; a flood beyond is refused.
const QUEUE: usize = 64;
/// The largest engine.io payload: room data (1 MiB) and its framing.
const MAX_PAYLOAD: u64 = 2 << 20;

pub struct SkywayHub {
    pub(super) discovery: bool,
    /// Origins allowed to connect (`*`: any).
    origins: Vec<String>,
    next: AtomicU64,
    inner: Mutex<Inner>,
}

struct Inner {
    server: SkywayServer,
    sockets: HashMap<ConnId, SocketRef>,
    /// Where each connection comes from, for the webhook.
    askers: HashMap<ConnId, admission::Asker>,
}

/// What the connection's own task must decide before its next message.
struct Admit {
    room: String,
    ask: Ask,
    peer: String,
    credential: Option<Value>,
}

impl SkywayHub {
    pub fn new(config: SkywayConfig, discovery: bool, origins: Vec<String>) -> Arc<Self> {
        Arc::new(Self {
            discovery,
            origins,
            next: AtomicU64::new(1),
            inner: Mutex::new(Inner {
                server: SkywayServer::new(config),
                sockets: HashMap::new(),
                askers: HashMap::new(),
            }),
        })
    }

    /// Runs `f` on the protocol and carries out what it asked: messages go
    /// out under the lock (in order), closes after it (a close runs the
    /// socket's disconnect handler, which comes back here), media work in
    /// tasks of its own. Admissions are returned to the caller.
    /// The client address of SkyWay peer `peer`'s connection.
    pub(super) fn client_of_peer(&self, peer: &str) -> crate::limits::Client {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .server
            .conn_of(peer)
            .and_then(|c| inner.askers.get(&c))
            .map_or(
                crate::limits::Client::exempt(std::net::Ipv4Addr::UNSPECIFIED.into()),
                |a| a.client,
            )
    }

    fn with<T>(
        self: &Arc<Self>,
        state: &AppState,
        f: impl FnOnce(&mut SkywayServer) -> T,
    ) -> (T, Vec<Admit>) {
        let mut closing = Vec::new();
        let mut admits = Vec::new();
        let result = {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            let result = f(&mut inner.server);
            while let Some(out) = inner.server.poll_output() {
                match out {
                    Out::Emit(conn, event, payload) => {
                        let Some(socket) = inner.sockets.get(&conn) else {
                            continue;
                        };
                        if let Err(e) = socket.emit(event, &payload) {
                            // A client that does not read its socket.
                            tracing::debug!(conn, "SkyWay: cannot send {event}: {e}");
                            closing.extend(inner.sockets.remove(&conn));
                        }
                    }
                    Out::Close(conn) => closing.extend(inner.sockets.remove(&conn)),
                    Out::Admit {
                        room,
                        ask,
                        peer,
                        credential,
                        ..
                    } => admits.push(Admit {
                        room,
                        ask,
                        peer,
                        credential,
                    }),
                    Out::Media(op) => {
                        let (hub, state) = (self.clone(), state.clone());
                        tokio::spawn(exec::run(hub, state, op));
                    }
                }
            }
            result
        };
        for socket in closing {
            let _ = socket.disconnect();
        }
        (result, admits)
    }

    /// Peer ids connected now (`listAllPeers`), if `key` is one of ours.
    pub(super) fn peers(&self, key: &str) -> Option<Vec<String>> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.server.is_key(key).then(|| inner.server.peer_ids())
    }

    /// Whether `id` is a peer here, if `key` is one of ours.
    pub(super) fn exists(&self, key: &str, id: &str) -> Option<bool> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.server.is_key(key).then(|| inner.server.exists(id))
    }

    /// Where `peer`'s connection comes from.
    fn asker_of(&self, peer: &str) -> Option<admission::Asker> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let conn = inner.server.conn_of(peer)?;
        inner.askers.get(&conn).cloned()
    }

    fn origin_allowed(&self, origin: Option<&str>) -> bool {
        match origin {
            None => true, // not a browser page on another origin
            Some(o) => super::origin_allowed(&self.origins, o),
        }
    }
}

/// The socket.io endpoint at `path`, and its handle (closed on shutdown);
/// starts the hub's clock and its reading of media events.
pub fn layer(
    state: AppState,
    path: &str,
    events: Option<mpsc::UnboundedReceiver<SfuEvent>>,
) -> (SocketIoLayer, SocketIo) {
    let hub = state.skyway.clone().expect("the SkyWay hub is set");
    let (layer, io) = SocketIo::builder()
        .req_path(path.to_owned())
        .max_payload(MAX_PAYLOAD)
        .ws_max_message_size(MAX_PAYLOAD as usize)
        .build_layer();
    let connect_state = state.clone();
    io.ns("/", move |socket: SocketRef| {
        on_connect(socket, connect_state.clone());
        std::future::ready(())
    });
    // Time: peers whose connection dropped and did not come back.
    let weak = Arc::downgrade(&hub);
    let clock_state = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let Some(hub) = weak.upgrade() else { return };
            hub.with(&clock_state, |s| s.handle_timeout(Instant::now()));
        }
    });
    // Casts starting and ending, member sessions ending.
    if let Some(mut events) = events {
        let weak = Arc::downgrade(&hub);
        tokio::spawn(async move {
            while let Some(e) = events.recv().await {
                let Some(hub) = weak.upgrade() else { return };
                hub.with(&state, |s| match e {
                    SfuEvent::CastStarted { live, caster } => s.cast_started(&live, caster),
                    SfuEvent::CastEnded { live, caster } => s.cast_ended(&live, caster),
                    SfuEvent::SessionEnded { peer, .. } => s.session_ended(peer),
                    SfuEvent::Live(_) => {}
                });
            }
        });
    }
    (layer, io)
}

/// One message from a socket, in the order it came.
enum Incoming {
    Event(String, Value),
    RoomData(String, RoomData),
    Malformed(String, String),
}

#[derive(serde::Deserialize)]
pub(crate) struct SendData {
    #[serde(rename = "roomName")]
    pub(crate) room: String,
    pub(crate) data: RoomData,
}

fn on_connect(socket: SocketRef, state: AppState) {
    let hub = state.skyway.clone().expect("the SkyWay hub is set");
    let conn = hub.next.fetch_add(1, Ordering::Relaxed);
    let parts = socket.req_parts();
    // Percent-decoded (the SDK's peer ids may hold spaces, its credential
    // is URI-encoded JSON).
    let query: HashMap<String, String> = Query::try_from_uri(&parts.uri)
        .map(|Query(q)| q)
        .unwrap_or_default();
    let (remote, forwarded_for) = super::client_of(parts);
    let origin = parts
        .headers
        .get(axum::http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let refuse = |kind: &str, message: String| {
        let error = serde_json::json!({ "type": kind, "message": message });
        let _ = socket.emit("ERROR", &error);
        let _ = socket.clone().disconnect();
    };
    if socket.protocol() != ProtocolVersion::V4 {
        return refuse(
            "invalid-message",
            "this endpoint speaks socket.io 2 (skyway-js); socket.io 3+ clients use the \
             mediasoup endpoint"
                .into(),
        );
    }
    if !hub.origin_allowed(origin.as_deref()) {
        return refuse(
            "invalid-domain",
            format!(
                "pages from {} may not use this server (--cors-origin)",
                origin.unwrap_or_default()
            ),
        );
    }
    if state.accepting().is_err() {
        return refuse(
            "server-error",
            "the server is shutting down; try again in a moment".into(),
        );
    }
    let asker = admission::Asker {
        remote,
        forwarded_for,
        client: crate::http::admission::client_of(&parts.extensions),
    };
    {
        let mut inner = hub.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.sockets.insert(conn, socket.clone());
        inner.askers.insert(conn, asker.clone());
    }

    let credential = query
        .get("credential")
        .and_then(|c| serde_json::from_str::<Value>(c).ok())
        .filter(Value::is_object);
    let hello = Hello {
        api_key: query.get("apiKey").map(String::as_str),
        token: query.get("token").map(String::as_str),
        peer_id: query.get("peerId").map(String::as_str),
        credential,
    };
    let gone = Arc::new(Notify::new());
    let notify = gone.clone();
    let (disconnect_hub, disconnect_state) = (hub.clone(), state.clone());
    socket.on_disconnect(move |reason: DisconnectReason| {
        notify.notify_one();
        {
            let mut inner = disconnect_hub
                .inner
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            inner.sockets.remove(&conn);
            inner.askers.remove(&conn);
        }
        // Only the client saying goodbye leaves at once; a dropped
        // connection may come back (socket.io reconnects twice).
        let by_client = matches!(
            reason,
            DisconnectReason::ClientNSDisconnect
                | DisconnectReason::PacketParsingError
                | DisconnectReason::ClosingServer
        );
        disconnect_hub.with(&disconnect_state, |s| {
            s.disconnect(conn, by_client, Instant::now())
        });
        std::future::ready(())
    });
    // Messages are queued to one task per socket, so that an admission
    // (which may ask the webhook) holds the ones after it.
    let (tx, mut rx) = mpsc::channel::<Incoming>(QUEUE);
    let too_many = |s: &SocketRef| {
        let error = serde_json::json!({
            "type": "signaling-limited",
            "message": "too many messages waiting; wait for the server",
        });
        let _ = s.emit("ERROR", &error);
    };
    let data_tx = tx.clone();
    socket.on(
        "ROOM_SEND_DATA",
        move |s: SocketRef, TryData(data): TryData<SendData>| {
            let incoming = match data {
                Ok(d) => Incoming::RoomData(d.room, d.data),
                Err(e) => Incoming::Malformed("ROOM_SEND_DATA".into(), e.to_string()),
            };
            if data_tx.try_send(incoming).is_err() {
                too_many(&s);
            }
            std::future::ready(())
        },
    );
    let event_tx = tx.clone();
    socket.on_fallback(
        move |s: SocketRef, Event(event): Event, TryData(arg): TryData<Value>| {
            let incoming = match arg {
                Ok(arg) => Incoming::Event(event, arg),
                Err(e) => Incoming::Malformed(event, e.to_string()),
            };
            if event_tx.try_send(incoming).is_err() {
                too_many(&s);
            }
            std::future::ready(())
        },
    );
    drop(tx);
    // Only now that every handler is in place: OPEN goes out here, and a
    // client that answers it at once (ROOM_GET_USERS, ROOM_JOIN) must not
    // find its message dropped by socketioxide for want of a handler.
    // What comes meanwhile waits in the queue until the task below runs.
    hub.with(&state, |s| s.connect(conn, hello, Instant::now()));
    if !socket.connected() {
        // Refused, or gone already: the task below ends at once.
        gone.notify_one();
    }
    let span = tracing::info_span!("skyway", conn);
    tokio::spawn(
        async move {
            loop {
                let incoming = tokio::select! {
                    biased;
                    _ = gone.notified() => break,
                    Some(next) = rx.recv() => next,
                };
                let now = Instant::now();
                let ((), admits) = match incoming {
                    Incoming::Event(event, arg) => {
                        hub.with(&state, |s| s.message(conn, &event, arg, now))
                    }
                    Incoming::RoomData(room, data) => {
                        hub.with(&state, |s| s.room_data(conn, &room, data, now))
                    }
                    Incoming::Malformed(event, why) => {
                        hub.with(&state, |s| s.malformed(conn, &event, &why))
                    }
                };
                for a in admits {
                    let result =
                        admission::decide(&state, &asker, &a.peer, &a.room, a.ask, a.credential)
                            .await;
                    hub.with(&state, |s| s.admitted(conn, &a.room, a.ask, result));
                }
            }
        }
        .instrument(span),
    );
}
