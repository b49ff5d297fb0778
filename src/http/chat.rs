//! Chat over a WebSocket: `GET /api/lives/{live}/chat?name=&since=&token=&session=`.
//!
//! Why a WebSocket and not a WebRTC data channel: chat must work before
//! and without media (a viewer waiting for the caster, a caster whose
//! camera failed), survive a media reconnect untouched, and pass the same
//! reverse proxies as the pages; and the media workers stay free of SCTP.
//!
//! Frames are JSON. From the client: `{"type":"say","text":...}`,
//! `{"type":"remove","id":N}` (the caster only). From the server:
//! `welcome` (name, moderator), `message` (id, name, text, at, caster),
//! `removed` (id), `error` (reason), `shutdown`.
//!
//! In a cluster (`cluster::chat`), a live's room spans the nodes: messages
//! are numbered and kept in Redis and come back to every node's room on
//! the `vessel:chat` channel; a joining client's history is read from
//! Redis. If Redis does not answer, the node's own room takes over for
//! the connections here (logged once) until it does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::ws::{Message as Frame, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::sync::broadcast;

use super::{ApiError, AppState, bearer_of, check_live};
use crate::chat::{ChatConfig, ChatError, ChatEvent, Message, Room, Rooms, Speaker};
use crate::cluster::{Cluster, ClusterError, chat::Heard};
use crate::sfu::PeerId;

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/lives/{live}/chat", get(connect))
}

/// Every live's chat room and the channel its connections listen on.
pub struct ChatHub {
    config: ChatConfig,
    state: Mutex<HubState>,
    /// In a cluster, rooms span the nodes through Redis.
    cluster: Option<Arc<Cluster>>,
    /// When Redis last failed a chat call; while recent, chat is local
    /// without trying it (a message must not wait a second each time).
    failed: Mutex<Option<Instant>>,
}

struct HubState {
    rooms: Rooms,
    channels: HashMap<String, broadcast::Sender<ChatEvent>>,
}

/// What a connection starts from.
pub(crate) struct Joined {
    pub(crate) history: Vec<Message>,
    pub(crate) removed: Vec<u64>,
    pub(crate) events: broadcast::Receiver<ChatEvent>,
}

/// Chat rooms kept at once (each keeps up to 200 messages of up to 500
/// characters: at most some 400 MB in all, far less in practice).
const MAX_ROOMS: usize = 1000;

/// After Redis failed a chat call, chat stays local this long before the
/// next call tries it again.
const RETRY_REDIS: Duration = Duration::from_secs(2);

impl ChatHub {
    pub fn new(config: ChatConfig) -> Self {
        Self {
            config,
            state: Mutex::new(HubState {
                rooms: Rooms::new(MAX_ROOMS),
                channels: HashMap::new(),
            }),
            cluster: None,
            failed: Mutex::new(None),
        }
    }

    /// Rooms that span the cluster: also starts hearing the other nodes'
    /// chat (`cluster::chat`).
    pub fn clustered(config: ChatConfig, cluster: Arc<Cluster>) -> Arc<Self> {
        let heard = cluster.chat_events();
        let hub = Arc::new(Self {
            cluster: Some(cluster),
            ..Self::new(config)
        });
        tokio::spawn(hub.clone().follow(heard));
        hub
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What a new connection missed, and its subscription from then on; taken
    /// under one lock so that nothing falls between them.
    pub(crate) fn join(&self, live: &str, since: Option<u64>) -> Result<Joined, ChatError> {
        let mut state = self.lock();
        let entered = state.rooms.enter(live)?;
        let history = entered.room.since(since);
        // A returning client may still show messages removed meanwhile.
        let removed = since.map(|_| entered.room.removed()).unwrap_or_default();
        if let Some(gone) = entered.evicted {
            state.channels.remove(&gone);
        }
        let rx = state
            .channels
            .entry(live.to_string())
            .or_insert_with(|| broadcast::channel(256).0)
            .subscribe();
        Ok(Joined {
            history,
            removed,
            events: rx,
        })
    }

    /// [`ChatHub::join`], with the history from Redis in a cluster (the
    /// node's own copy if Redis does not answer).
    pub(crate) async fn join_any(
        &self,
        live: &str,
        since: Option<u64>,
    ) -> Result<Joined, ChatError> {
        let mut joined = self.join(live, since)?;
        let Some(cluster) = self.redis() else {
            return Ok(joined);
        };
        match cluster.chat_history(live).await {
            Ok((messages, removed)) => {
                self.answered();
                if let Some(room) = self.lock().rooms.room(live) {
                    // The copy here serves if Redis goes away.
                    for m in &messages {
                        room.hear(&self.config, m.clone());
                    }
                }
                let after = since.unwrap_or(0);
                joined.history = messages.into_iter().filter(|m| m.id > after).collect();
                joined.removed = since.map(|_| removed).unwrap_or_default();
            }
            Err(e) => self.unanswered(&e),
        }
        Ok(joined)
    }

    /// The cluster, unless Redis failed a chat call lately.
    fn redis(&self) -> Option<&Arc<Cluster>> {
        let cluster = self.cluster.as_ref()?;
        let failed = *self.failed.lock().unwrap_or_else(|e| e.into_inner());
        match failed {
            Some(at) if at.elapsed() < RETRY_REDIS => None,
            _ => Some(cluster),
        }
    }

    fn answered(&self) {
        if self
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .is_some()
        {
            tracing::info!("chat spans the cluster again");
        }
    }

    fn unanswered(&self, e: &ClusterError) {
        let before = self
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(Instant::now());
        if before.is_none() {
            tracing::warn!(
                "chat on this node is local until the cluster's Redis answers: messages said \
                 here reach only the connections here ({e})"
            );
        }
    }

    /// One text frame from a client: [`ChatHub::frame`] on one node; in a
    /// cluster, through Redis (or locally while it does not answer).
    pub(crate) async fn frame_any(
        &self,
        live: &str,
        speaker: &mut Speaker,
        text: &str,
    ) -> Result<(), String> {
        if self.cluster.is_none() {
            return self.frame(live, speaker, text);
        }
        let frame =
            serde_json::from_str::<ClientFrame>(text).map_err(|e| format!("bad frame: {e}"))?;
        self.clustered_frame(live, speaker, frame)
            .await
            .map_err(|e| e.to_string())
    }

    async fn clustered_frame(
        &self,
        live: &str,
        speaker: &mut Speaker,
        frame: ClientFrame,
    ) -> Result<(), ChatError> {
        match frame {
            ClientFrame::Say { text } => {
                let (text, floor) = {
                    let mut state = self.lock();
                    let room = state.rooms.room(live).ok_or(ChatError::TooManyRooms)?;
                    let text = Room::prepare(&self.config, speaker, &text, Instant::now())?;
                    (text, room.newest())
                };
                let at = unix_ms();
                if let Some(cluster) = self.redis() {
                    let history = self.config.history;
                    let said = cluster.chat_say(
                        live,
                        &speaker.name,
                        &text,
                        speaker.moderator,
                        at,
                        floor,
                        history,
                    );
                    match said.await {
                        // Shown here when heard back, in the cluster's order.
                        Ok(_) => {
                            self.answered();
                            return Ok(());
                        }
                        Err(e) => self.unanswered(&e),
                    }
                }
                let mut state = self.lock();
                let room = state.rooms.room(live).ok_or(ChatError::TooManyRooms)?;
                let message = room.push(&self.config, speaker, text, at);
                if let Some(tx) = state.channels.get(live) {
                    let _ = tx.send(ChatEvent::Message(message));
                }
                Ok(())
            }
            ClientFrame::Remove { id } => {
                if !speaker.moderator {
                    return Err(ChatError::NotModerator);
                }
                if let Some(cluster) = self.redis() {
                    match cluster.chat_remove(live, id).await {
                        Ok(true) => {
                            self.answered();
                            return Ok(());
                        }
                        // Maybe said here while Redis was away.
                        Ok(false) => self.answered(),
                        Err(e) => self.unanswered(&e),
                    }
                }
                self.handle(live, speaker, ClientFrame::Remove { id })
            }
        }
    }

    /// Keeps this node's rooms in step with what Redis spreads.
    async fn follow(self: Arc<Self>, mut heard: broadcast::Receiver<Heard>) {
        loop {
            match heard.recv().await {
                Ok(Heard::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.resync().await;
                }
                Ok(h) => self.heard(h),
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// A message or removal from Redis: kept in the room here (if anyone
    /// is in it) and sent to its connections.
    fn heard(&self, heard: Heard) {
        let mut state = self.lock();
        let (live, event) = match heard {
            Heard::Message { live, message } => {
                let Some(room) = state.rooms.room(&live) else {
                    return;
                };
                if !room.hear(&self.config, message.clone()) {
                    return;
                }
                (live, ChatEvent::Message(message))
            }
            Heard::Removed { live, id } => {
                let Some(room) = state.rooms.room(&live) else {
                    return;
                };
                if !room.forget(id) {
                    return;
                }
                (live, ChatEvent::Removed(id))
            }
            Heard::Resync => return,
        };
        if let Some(tx) = state.channels.get(&live) {
            let _ = tx.send(event);
        }
    }

    /// After the subscription was down: reads back each room's messages
    /// and removals from Redis, and passes on what was missed.
    async fn resync(&self) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let lives: Vec<(String, u64)> = {
            let mut state = self.lock();
            let lives: Vec<String> = state.channels.keys().cloned().collect();
            lives
                .into_iter()
                .filter_map(|live| {
                    let newest = state.rooms.room(&live)?.newest();
                    Some((live, newest))
                })
                .collect()
        };
        for (live, newest) in lives {
            // Redis may have restarted empty: what it numbers next must
            // come after what this node's connections were shown.
            if cluster.chat_raise(&live, newest).await.is_err() {
                return;
            }
            let Ok((messages, removed)) = cluster.chat_history(&live).await else {
                return;
            };
            for message in messages {
                self.heard(Heard::Message {
                    live: live.clone(),
                    message,
                });
            }
            for id in removed {
                self.heard(Heard::Removed {
                    live: live.clone(),
                    id,
                });
            }
        }
    }

    /// A connection ended: the last one out of a room without messages
    /// takes the room with it.
    pub(crate) fn leave(&self, live: &str) {
        let mut state = self.lock();
        if state.rooms.leave(live, Instant::now()) {
            state.channels.remove(live);
        }
    }

    /// Reads and applies one text frame from a client; the error is what
    /// the client is told.
    pub(crate) fn frame(
        &self,
        live: &str,
        speaker: &mut Speaker,
        text: &str,
    ) -> Result<(), String> {
        serde_json::from_str::<ClientFrame>(text)
            .map_err(|e| format!("bad frame: {e}"))
            .and_then(|f| self.handle(live, speaker, f).map_err(|e| e.to_string()))
    }

    /// Applies one client frame. Events are sent under the lock, so every
    /// connection sees them in id order.
    fn handle(
        &self,
        live: &str,
        speaker: &mut Speaker,
        frame: ClientFrame,
    ) -> Result<(), ChatError> {
        let mut state = self.lock();
        let room = state.rooms.room(live).ok_or(ChatError::TooManyRooms)?;
        let event = match frame {
            ClientFrame::Say { text } => {
                room.say(&self.config, speaker, &text, Instant::now(), unix_ms())?
            }
            ClientFrame::Remove { id } => room.remove(speaker, id)?,
        };
        if let Some(tx) = state.channels.get(live) {
            let _ = tx.send(event);
        }
        Ok(())
    }
}

#[derive(serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum ClientFrame {
    Say { text: String },
    Remove { id: u64 },
}

#[derive(serde::Deserialize)]
struct ChatQuery {
    name: Option<String>,
    /// The last message id this client has (a reconnect).
    since: Option<u64>,
    /// A viewer token for a private live (browsers cannot set headers on a
    /// WebSocket).
    token: Option<String>,
    /// The caster's WHIP session id: makes this connection the moderator.
    session: Option<String>,
}

async fn connect(
    State(state): State<AppState>,
    Path(live): Path<String>,
    Query(query): Query<ChatQuery>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if let Err(e) = check_live(&live) {
        return e.into_response();
    }
    if let Err(e) = state.accepting() {
        return e.into_response();
    }
    // The live's caster (its WHIP session id) moderates, and needs no
    // viewer token for its own private live.
    let moderator = query
        .session
        .as_deref()
        .and_then(|s| s.parse::<PeerId>().ok())
        .is_some_and(|s| state.media.is_caster(&live, s));
    let token = query.token.as_deref().or_else(|| bearer_of(&headers));
    if !moderator && let Err(denied) = state.access.check_play(&live, token) {
        return ApiError::from(denied).into_response();
    }
    let name = query.name.unwrap_or_default();
    let since = query.since;
    tracing::debug!(%live, %remote, moderator, "chat connection");
    ws.max_message_size(16 * 1024)
        .on_upgrade(move |socket| run(socket, state, live, name, moderator, since))
}

async fn run(
    mut socket: WebSocket,
    state: AppState,
    live: String,
    name: String,
    moderator: bool,
    since: Option<u64>,
) {
    let hub = state.chat.clone();
    let mut speaker = Speaker::new(&name, moderator, &hub.config, Instant::now());
    match hub.join_any(&live, since).await {
        Ok(mut joined) => {
            converse(&mut socket, &state, &live, &mut speaker, &mut joined).await;
            drop(joined);
            hub.leave(&live);
        }
        Err(e) => {
            let _ = send(
                &mut socket,
                &json!({"type": "error", "reason": e.to_string()}),
            )
            .await;
        }
    }
}

/// A connection's life: the welcome and history, then frames both ways
/// until either side ends or the server shuts down.
async fn converse(
    socket: &mut WebSocket,
    state: &AppState,
    live: &str,
    speaker: &mut Speaker,
    joined: &mut Joined,
) {
    let hub = &state.chat;
    let welcome =
        json!({"type": "welcome", "name": &*speaker.name, "moderator": speaker.moderator});
    if send(socket, &welcome).await.is_err() {
        return;
    }
    // In a cluster, a message may come both in the history read from
    // Redis and on the channel: each is sent once, in id order.
    let mut last = joined.history.last().map_or(0, |m| m.id);
    let history = std::mem::take(&mut joined.history)
        .into_iter()
        .map(|m| message_json(&m));
    let removed = joined
        .removed
        .iter()
        .map(|id| json!({"type": "removed", "id": id}));
    for frame in history.chain(removed) {
        if send(socket, &frame).await.is_err() {
            return;
        }
    }
    let events = &mut joined.events;
    let mut shutdown = state.shutdown.clone();
    // A quiet chat is not a dead connection: a ping every 30 s (browsers
    // answer it) keeps it within the idle timeout, and proxies' too.
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            _ = ping.tick() => {
                if socket.send(Frame::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
            frame = socket.recv() => {
                let text = match frame {
                    Some(Ok(Frame::Text(t))) => t,
                    Some(Ok(Frame::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => continue,
                };
                if let Err(reason) = hub.frame_any(live, speaker, text.as_str()).await
                    && send(socket, &json!({"type": "error", "reason": reason})).await.is_err()
                {
                    return;
                }
            }
            event = events.recv() => {
                let out = match event {
                    Ok(ChatEvent::Message(m)) if m.id <= last => continue,
                    Ok(ChatEvent::Message(m)) => {
                        last = m.id;
                        message_json(&m)
                    }
                    Ok(ChatEvent::Removed(id)) => json!({"type": "removed", "id": id}),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Too slow to keep up: the client reconnects with
                        // `since` and gets what it missed, in order.
                        let _ = send(socket, &json!({"type": "error",
                            "reason": "fell behind; reconnect to catch up"})).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if send(socket, &out).await.is_err() {
                    return;
                }
            }
            _ = async { let _ = shutdown.wait_for(|down| *down).await; } => {
                let _ = send(socket, &json!({"type": "shutdown"})).await;
                let _ = socket.send(Frame::Close(None)).await;
                return;
            }
        }
    }
}

const PING_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

fn message_json(m: &Message) -> serde_json::Value {
    json!({"type": "message", "id": m.id, "name": &*m.name, "text": m.text, "at": m.at, "caster": m.caster})
}

async fn send(socket: &mut WebSocket, value: &serde_json::Value) -> Result<(), axum::Error> {
    socket
        .send(Frame::Text(Utf8Bytes::from(value.to_string())))
        .await
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
