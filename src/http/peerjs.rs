//! The PeerJS PeerServer face, under `--peerjs-path` (default `/peer`, the
//! seed's): `GET {path}` (server info), `GET {path}/{key}/id` (a fresh id),
//! `GET {path}/{key}/peers` (with `--peerjs-discovery`), and the WebSocket
//! `{path}/peerjs?key=&id=&token=`. The protocol itself is the sans-IO
//! [`PeerServer`]; this file only moves frames and time.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::Weak;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::ws::{Message as Frame, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::sync::{broadcast, mpsc};

use super::AppState;
use crate::cluster::{Cluster, peerjs};
use crate::peerjs::{ConnId, Effect, Out, PeerConfig, PeerServer};

pub struct PeerHub {
    discovery: bool,
    next: AtomicU64,
    state: Mutex<HubState>,
    /// In a cluster: the cluster, and the queue of the protocol's effects
    /// on it (joins, leaves, messages for other nodes), carried out in
    /// order by one task ([`cluster_effects`]).
    cluster: Option<(Arc<Cluster>, mpsc::Sender<Effect>)>,
}

struct HubState {
    server: PeerServer,
    conns: HashMap<ConnId, mpsc::Sender<Frame>>,
}

/// Frames queued towards one WebSocket; a peer that does not read them is
/// disconnected rather than let the queue grow.
const SEND_QUEUE: usize = 256;
/// The cluster effects waiting for Redis; beyond this they are dropped
/// (a message lost to a peer on another node; an id record left to expire).
const CLUSTER_QUEUE: usize = 4096;

impl PeerHub {
    /// Starts the hub and its clock (a task that expires queued messages
    /// and silent peers once a second).
    /// In a cluster, peers on any node reach each other
    /// (`cluster::peerjs`).
    pub fn start(config: PeerConfig, discovery: bool, cluster: Option<Arc<Cluster>>) -> Arc<Self> {
        let server = match &cluster {
            Some(_) => PeerServer::new(config).clustered(),
            None => PeerServer::new(config),
        };
        let (cluster, effects) = match cluster {
            Some(cluster) => {
                let (tx, rx) = mpsc::channel(CLUSTER_QUEUE);
                (Some((cluster.clone(), tx)), Some((cluster, rx)))
            }
            None => (None, None),
        };
        let hub = Arc::new(Self {
            discovery,
            next: AtomicU64::new(1),
            state: Mutex::new(HubState {
                server,
                conns: HashMap::new(),
            }),
            cluster,
        });
        if let Some((cluster, rx)) = effects {
            tokio::spawn(cluster_effects(Arc::downgrade(&hub), cluster, rx));
        }
        let weak = Arc::downgrade(&hub);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(hub) = weak.upgrade() else { return };
                hub.with(|s| s.handle_timeout(Instant::now()));
            }
        });
        hub
    }

    /// Runs `f` on the protocol, then carries out what it asked for.
    fn with<T>(&self, f: impl FnOnce(&mut PeerServer) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let result = f(&mut state.server);
        let mut stuck = Vec::new();
        while let Some(out) = state.server.poll_output() {
            match out {
                Out::Send(conn, text) => {
                    let frame = Frame::Text(Utf8Bytes::from(text));
                    if let Some(tx) = state.conns.get(&conn)
                        && tx.try_send(frame).is_err()
                    {
                        stuck.push(conn);
                    }
                }
                Out::Close(conn) => {
                    if let Some(tx) = state.conns.remove(&conn) {
                        let _ = tx.try_send(Frame::Close(None));
                    }
                }
                Out::Cluster(effect) => {
                    if let Some((_, tx)) = &self.cluster
                        && tx.try_send(effect).is_err()
                    {
                        tracing::warn!(
                            "PeerJS: the cluster queue is full; a message or id record dropped"
                        );
                    }
                }
            }
        }
        for conn in stuck {
            // Dropping the sender ends the connection's task.
            tracing::debug!(conn, "PeerJS: peer not reading its socket; disconnected");
            state.conns.remove(&conn);
            state.server.disconnect(conn);
        }
        result
    }
}

pub fn routes(path: &str) -> Router<AppState> {
    let path = path.trim_end_matches('/');
    Router::new()
        .route(&format!("{path}/"), get(info))
        .route(if path.is_empty() { "/" } else { path }, get(info))
        .route(&format!("{path}/peerjs"), get(connect))
        .route(&format!("{path}/{{key}}/id"), get(new_id))
        .route(&format!("{path}/{{key}}/peers"), get(peers))
}

async fn info() -> Response {
    Json(json!({
        "name": "PeerJS Server",
        "description": "A server side element to broker connections between PeerJS clients.",
        "website": "https://peerjs.com/",
    }))
    .into_response()
}

/// A fresh id, as PeerServer gives it (`text/html`, the key is not checked).
async fn new_id() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        uuid::Uuid::new_v4().to_string(),
    )
        .into_response()
}

async fn peers(State(state): State<AppState>, Path(key): Path<String>) -> Response {
    let Some(hub) = state.peerjs.as_ref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if !hub.discovery {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match hub.with(|s| s.is_key(&key).then(|| s.peers())) {
        Some(ids) => Json(ids).into_response(),
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

#[derive(serde::Deserialize)]
struct ConnectQuery {
    key: Option<String>,
    id: Option<String>,
    token: Option<String>,
}

async fn connect(
    State(state): State<AppState>,
    Query(query): Query<ConnectQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let Some(hub) = state.peerjs.clone() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    ws.max_message_size(64 * 1024)
        .on_upgrade(move |socket| run(socket, hub, query, state.shutdown.clone()))
}

async fn run(
    mut socket: WebSocket,
    hub: Arc<PeerHub>,
    query: ConnectQuery,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let conn = hub.next.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel(SEND_QUEUE);
    hub.state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .conns
        .insert(conn, tx);
    if taken_elsewhere(&hub, &query).await {
        hub.with(|s| s.refuse_taken(conn));
    } else {
        hub.with(|s| {
            s.connect(
                conn,
                query.key.as_deref(),
                query.id.as_deref(),
                query.token.as_deref(),
                Instant::now(),
            )
        });
    }
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(Frame::Close(_)) | None => {
                    let _ = socket.send(Frame::Close(None)).await;
                    break;
                }
                Some(frame) => {
                    if socket.send(frame).await.is_err() {
                        break;
                    }
                }
            },
            frame = socket.recv() => match frame {
                Some(Ok(Frame::Text(text))) => {
                    hub.with(|s| s.message(conn, text.as_str(), Instant::now()));
                }
                Some(Ok(Frame::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            _ = async { let _ = shutdown.wait_for(|down| *down).await; } => {
                let _ = socket.send(Frame::Close(None)).await;
                break;
            }
        }
    }
    hub.state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .conns
        .remove(&conn);
    hub.with(|s| s.disconnect(conn));
}

/// In a cluster: whether another peer holds the id on another node (with
/// Redis away, nodes are on their own, and nothing is taken elsewhere).
async fn taken_elsewhere(hub: &PeerHub, query: &ConnectQuery) -> bool {
    let (Some((cluster, _)), Some(key), Some(id), Some(token)) = (
        &hub.cluster,
        query.key.as_deref(),
        query.id.as_deref(),
        query.token.as_deref(),
    ) else {
        return false;
    };
    if !hub.with(|s| s.is_key(key)) || !PeerServer::valid_id(id) {
        return false; // refused anyway, with the reason
    }
    matches!(cluster.peerjs_free(id, token).await, Ok(false))
}

/// Carries out the protocol's cluster effects, one at a time and in order
/// (a peer's `OFFER` before its `CANDIDATE`s), keeps this node's ids
/// recorded, and delivers what other nodes send to peers here.
async fn cluster_effects(
    hub: Weak<PeerHub>,
    cluster: Arc<Cluster>,
    mut effects: mpsc::Receiver<Effect>,
) {
    let mut refresh = tokio::time::interval(peerjs::REFRESH);
    let mut heard = cluster.peerjs_events();
    loop {
        tokio::select! {
            effect = effects.recv() => {
                let Some(effect) = effect else { return };
                match effect {
                    Effect::Joined { id, token } => {
                        let _ = cluster.peerjs_joined(&id, &token).await;
                    }
                    Effect::Left { id, token } => {
                        let _ = cluster.peerjs_release(&id, &token).await;
                    }
                    Effect::Elsewhere { src, dst, text } => {
                        if !cluster.peerjs_forward(&dst, &text).await.unwrap_or(false) {
                            // Nowhere else (or Redis is away): it waits here.
                            let Some(hub) = hub.upgrade() else { return };
                            hub.with(|s| s.hold(&src, &dst, &text, Instant::now()));
                        }
                    }
                }
            }
            _ = refresh.tick() => {
                let Some(hub) = hub.upgrade() else { return };
                let ids = hub.with(|s| s.tokens());
                let _ = cluster.peerjs_refresh(&ids).await;
            }
            message = heard.recv() => match message {
                Ok(m) => {
                    let Some(hub) = hub.upgrade() else { return };
                    if !hub.with(|s| s.deliver(&m.dst, &m.text)) {
                        tracing::debug!("PeerJS: a message from another node for a peer gone from here");
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!("PeerJS: {n} messages from other nodes dropped (this node fell behind)");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}
