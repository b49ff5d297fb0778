//! The SkyWay signaling dialect (the legacy `skyway-js` 4.4.5 SDK), sans-IO:
//! peers open with an API key, relay their P2P signaling (`SEND_OFFER`,
//! `SEND_ANSWER`, `SEND_CANDIDATE`, `SEND_FORCE_CLOSE`) with `src` set by
//! the server, and join rooms. A mesh room is membership and relay only; an
//! SFU room is a live of Vessel's SFU, negotiated by server offers
//! (`SFU_OFFER` with an `msids` map of stream id to publisher).
//!
//! The socket.io face (`http::skyway`) feeds connections, events, time and
//! the results of what it was asked to do in, and carries out [`Out`]:
//! messages to send, sockets to close, admissions to decide (stream keys,
//! viewer tokens, the webhook) and media operations for the SFU. See
//! `../shared/SKYWAY-PROTOCOL.md` for the wire protocol this follows.

mod credential;
mod member;
mod payload;
mod room;
pub mod sdp;

pub use credential::{Credential, sign};
pub use payload::{Data, Payload};

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::sfu::{PeerId, Subscription};
use member::MemberMedia;
use room::{Mode, Room};

#[derive(Debug, Clone)]
pub struct SkywayConfig {
    /// API keys clients may open with (the SDK's `key`, a lower-case UUID).
    pub keys: Vec<String>,
    /// Peers connected at once.
    pub max_peers: usize,
    /// A peer whose connection dropped (not closed by the client) keeps its
    /// id and rooms this long, for socket.io's reconnection to come back.
    pub reconnect_grace: Duration,
    pub max_rooms_per_peer: usize,
    pub max_members: usize,
    /// Members of an SFU room publishing at once.
    pub max_publishers: usize,
    /// The largest `room.send` data, bytes.
    pub max_data: usize,
    /// Room data a peer may have fanned out per second (bytes times
    /// recipients), with bursts of twice that.
    pub data_rate: usize,
    /// Entries `ROOM_GET_LOGS` returns, per room.
    pub log_entries: usize,
}

impl Default for SkywayConfig {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            max_peers: 5000,
            reconnect_grace: Duration::from_secs(10),
            max_rooms_per_peer: 16,
            max_members: 1000,
            max_publishers: 16,
            max_data: 1 << 20,
            data_rate: 8 << 20,
            log_entries: 100,
        }
    }
}

/// A socket.io connection, numbered by the face.
pub type ConnId = u64;

/// Why something was refused: the `ERROR` event's `type` and `message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// What the face asks to be allowed before it goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// Join a room: may the peer watch the live of that name?
    Watch,
    /// Send media in a mesh room: may the peer cast the live of that name?
    Cast,
}

/// A publication of an SFU room: a live on air, its msid stream id, and
/// who casts it (a member's peer id, or `vessel:<live>` for a caster of
/// another protocol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub live: String,
    pub stream: String,
    pub peer: String,
    /// The caster's SFU session.
    pub caster: PeerId,
}

impl Publication {
    pub fn subscription(&self) -> Subscription {
        Subscription {
            live: self.live.clone(),
            stream: self.stream.clone(),
        }
    }
}

/// Work on the SFU for a member of an SFU room. The face reports each
/// result back with the matching `media_*` call.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaOp {
    /// A session for the member and its first offer.
    Open {
        peer: String,
        room: String,
        subs: Vec<Subscription>,
    },
    Answer {
        peer: String,
        room: String,
        session: PeerId,
        sdp: String,
    },
    /// A re-offer of `subs` (none if nothing changed).
    Offer {
        peer: String,
        room: String,
        session: PeerId,
        subs: Vec<Subscription>,
    },
    /// The member sends media: cast `live` if its credential allows.
    Publish {
        peer: String,
        room: String,
        session: PeerId,
        live: String,
        credential: Option<Value>,
    },
    Unpublish {
        session: PeerId,
    },
    Candidate {
        session: PeerId,
        candidate: Value,
    },
    Leave {
        session: PeerId,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    Emit(ConnId, &'static str, Payload),
    /// Close a connection (after what was sent to it).
    Close(ConnId),
    /// Decide whether `peer` may do `ask` in `room`, then call
    /// [`SkywayServer::admitted`]. The connection's next message waits.
    Admit {
        conn: ConnId,
        peer: String,
        room: String,
        ask: Ask,
        credential: Option<Value>,
    },
    Media(MediaOp),
}

/// What a client's handshake said (its query string).
#[derive(Debug, Clone, Default)]
pub struct Hello<'a> {
    pub api_key: Option<&'a str>,
    pub token: Option<&'a str>,
    pub peer_id: Option<&'a str>,
    pub credential: Option<Value>,
}

/// A token bucket: `rate` per second, bursts of `burst`.
#[derive(Debug, Clone)]
struct Bucket {
    level: f64,
    at: Instant,
}

impl Bucket {
    fn new(burst: f64, now: Instant) -> Self {
        Self {
            level: burst,
            at: now,
        }
    }

    fn take(&mut self, amount: f64, rate: f64, burst: f64, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.level = (self.level + dt * rate).min(burst);
        if self.level >= amount {
            self.level -= amount;
            true
        } else {
            false
        }
    }
}

/// Messages per second a peer may send, and its burst.
const MESSAGE_RATE: f64 = 100.0;
const MESSAGE_BURST: f64 = 300.0;
/// What waits for a peer whose connection dropped.
const OUTBOX_MAX: usize = 256;
const OUTBOX_BYTES: usize = 4 << 20;
/// Peers it exchanged P2P signaling with (told `LEAVE` when it goes).
const MAX_CONTACTS: usize = 256;
/// The longest peer id and token.
const MAX_ID: usize = 64;
const MAX_TOKEN: usize = 128;

struct Peer {
    token: String,
    conn: Option<ConnId>,
    credential: Option<Value>,
    rooms: BTreeSet<String>,
    /// Its connection dropped at this time; it may come back.
    gone_since: Option<Instant>,
    outbox: Vec<(&'static str, Payload)>,
    outbox_bytes: usize,
    contacts: HashSet<String>,
    /// Rooms (mesh) where its media-sending SDP has been admitted.
    may_cast: HashSet<String>,
    /// A message waiting for an admission (`Out::Admit`).
    held: Option<Held>,
    messages: Bucket,
    data: Bucket,
}

enum Held {
    Join(String, Mode),
    Relay(&'static str, Value),
}

pub struct SkywayServer {
    config: SkywayConfig,
    peers: HashMap<String, Peer>,
    conns: HashMap<ConnId, String>,
    rooms: HashMap<String, Room>,
    /// Lives on air: caster session and the stream id it is announced as.
    casters: HashMap<String, (PeerId, String)>,
    /// Member sessions: whose, in which room.
    sessions: HashMap<PeerId, (String, String)>,
    /// Lives a member is about to publish into.
    claimed: HashMap<String, String>,
    next_stream: u64,
    out: VecDeque<Out>,
}

impl SkywayServer {
    pub fn new(config: SkywayConfig) -> Self {
        Self {
            config,
            peers: HashMap::new(),
            conns: HashMap::new(),
            rooms: HashMap::new(),
            casters: HashMap::new(),
            sessions: HashMap::new(),
            claimed: HashMap::new(),
            next_stream: 1,
            out: VecDeque::new(),
        }
    }

    pub fn poll_output(&mut self) -> Option<Out> {
        self.out.pop_front()
    }

    /// Whether `key` is one of the API keys (each compared in constant time).
    pub fn is_key(&self, key: &str) -> bool {
        self.config
            .keys
            .iter()
            .fold(false, |found, k| crate::access::same(k, key) | found)
    }

    /// Connected peer ids, sorted (`listAllPeers`).
    pub fn peer_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| p.conn.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    pub fn exists(&self, id: &str) -> bool {
        self.peers.contains_key(id)
    }

    /// The connection of a peer, while it has one.
    pub fn conn_of(&self, peer: &str) -> Option<ConnId> {
        self.peers.get(peer).and_then(|p| p.conn)
    }

    /// An event whose argument could not be read.
    pub fn malformed(&mut self, conn: ConnId, event: &str, why: &str) {
        let shown: String = event.chars().take(40).collect();
        let why: String = why.chars().take(200).collect();
        self.error(conn, "invalid-message", format!("{shown}: {why}"));
    }

    /// The peer id behind a connection, once it opened.
    pub fn peer_of(&self, conn: ConnId) -> Option<&str> {
        self.conns.get(&conn).map(String::as_str)
    }

    /// A socket.io connection's handshake.
    pub fn connect(&mut self, conn: ConnId, hello: Hello<'_>, now: Instant) {
        if !hello.api_key.is_some_and(|k| self.is_key(k)) {
            return self.refuse(
                conn,
                "invalid-key",
                "API key is invalid: use a key this server was started with (--skyway-key)",
            );
        }
        let Some(token) = hello
            .token
            .filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN)
        else {
            return self.refuse(
                conn,
                "invalid-token",
                "a token (1-128 characters) is needed",
            );
        };
        let id = match hello.peer_id {
            Some(id) if !valid_peer_id(id) => {
                return self.refuse(
                    conn,
                    "invalid-id",
                    "ID must be 1-64 letters, digits, '-' or '_' (single spaces between words)",
                );
            }
            Some(id) => id.to_string(),
            None => self.fresh_id(),
        };
        if let Some(peer) = self.peers.get_mut(&id) {
            if !crate::access::same(&peer.token, token) {
                return self.refuse(
                    conn,
                    "unavailable-id",
                    format!("ID \"{id}\" is taken by another peer"),
                );
            }
            // The same peer again (socket.io reconnecting): the new
            // connection takes over, rooms and all.
            let old = peer.conn.replace(conn);
            peer.gone_since = None;
            peer.held = None;
            if hello.credential.is_some() {
                peer.credential = hello.credential;
            }
            let waiting = std::mem::take(&mut peer.outbox);
            peer.outbox_bytes = 0;
            if let Some(old) = old {
                self.conns.remove(&old);
                self.out.push_back(Out::Close(old));
            }
            self.conns.insert(conn, id.clone());
            tracing::info!(peer = %id, "SkyWay peer reconnected");
            self.emit(conn, "OPEN", json!({ "peerId": id }));
            for (event, payload) in waiting {
                self.out.push_back(Out::Emit(conn, event, payload));
            }
            return;
        }
        if self.peers.len() >= self.config.max_peers {
            return self.refuse(
                conn,
                "signaling-limited",
                "the server has reached its peer limit; try again later",
            );
        }
        self.peers.insert(
            id.clone(),
            Peer {
                token: token.to_string(),
                conn: Some(conn),
                credential: hello.credential,
                rooms: BTreeSet::new(),
                gone_since: None,
                outbox: Vec::new(),
                outbox_bytes: 0,
                contacts: HashSet::new(),
                may_cast: HashSet::new(),
                held: None,
                messages: Bucket::new(MESSAGE_BURST, now),
                data: Bucket::new(2.0 * self.config.data_rate as f64, now),
            },
        );
        self.conns.insert(conn, id.clone());
        tracing::info!(peer = %id, "SkyWay peer opened");
        self.emit(conn, "OPEN", json!({ "peerId": id }));
    }

    /// A connection closed. `by_client`: the client said so (`peer.disconnect()`);
    /// otherwise its transport dropped and it may come back.
    pub fn disconnect(&mut self, conn: ConnId, by_client: bool, now: Instant) {
        let Some(id) = self.conns.remove(&conn) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if peer.conn != Some(conn) {
            return;
        }
        peer.conn = None;
        peer.held = None;
        if by_client {
            self.remove_peer(&id);
        } else {
            tracing::info!(peer = %id, "SkyWay peer's connection dropped; it may come back");
            peer.gone_since = Some(now);
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let grace = self.config.reconnect_grace;
        let gone: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.gone_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= grace)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            tracing::info!(peer = %id, "SkyWay peer did not come back");
            self.remove_peer(&id);
        }
    }

    /// An event from a connection (`room.send` data goes to [`Self::room_data`]).
    pub fn message(&mut self, conn: ConnId, event: &str, arg: Value, now: Instant) {
        let Some(src) = self.conns.get(&conn).cloned() else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&src) else {
            return;
        };
        if !peer.messages.take(1.0, MESSAGE_RATE, MESSAGE_BURST, now) {
            return self.error(
                conn,
                "signaling-limited",
                format!("too many messages: {MESSAGE_RATE} a second at most; {event} dropped"),
            );
        }
        match event {
            "PING" => {}
            "SEND_OFFER" => self.relay(conn, &src, "OFFER", arg, Some("offer")),
            "SEND_ANSWER" => self.relay(conn, &src, "ANSWER", arg, Some("answer")),
            "SEND_CANDIDATE" => self.relay(conn, &src, "CANDIDATE", arg, None),
            "SEND_FORCE_CLOSE" => self.relay(conn, &src, "FORCE_CLOSE", arg, None),
            "ROOM_JOIN" => self.room_join(conn, &src, &arg),
            "ROOM_LEAVE" => {
                if let Some(room) = self.room_of(conn, &src, &arg, None) {
                    self.leave_room(&src, &room);
                }
            }
            "ROOM_GET_USERS" => {
                if let Some(room) = self.room_of(conn, &src, &arg, None) {
                    let members = self.rooms[&room].members.clone();
                    let kind = arg.get("type").cloned().unwrap_or(json!("media"));
                    self.emit(
                        conn,
                        "ROOM_USERS",
                        json!({ "roomName": room, "userList": members, "type": kind }),
                    );
                }
            }
            "ROOM_GET_LOGS" => {
                if let Some(room) = self.room_of(conn, &src, &arg, None) {
                    let log: Vec<&String> = self.rooms[&room].log.iter().collect();
                    let log = json!({ "roomName": room, "log": log });
                    self.emit(conn, "ROOM_LOGS", log);
                }
            }
            "ROOM_SEND_DATA" => self.error(
                conn,
                "invalid-message",
                "ROOM_SEND_DATA needs {roomName, data}",
            ),
            "SFU_GET_OFFER" => {
                if let Some(room) = self.room_of(conn, &src, &arg, Some(Mode::Sfu)) {
                    self.sfu_get_offer(&src, &room);
                }
            }
            "SFU_ANSWER" => {
                if let Some(room) = self.room_of(conn, &src, &arg, Some(Mode::Sfu)) {
                    match arg.pointer("/answer/sdp").and_then(Value::as_str) {
                        Some(sdp) => self.sfu_answer(conn, &src, &room, sdp.to_string()),
                        None => self.error(
                            conn,
                            "invalid-message",
                            "SFU_ANSWER needs {roomName, answer: {type, sdp}}",
                        ),
                    }
                }
            }
            "SFU_CANDIDATE" => {
                if let Some(room) = self.room_of(conn, &src, &arg, Some(Mode::Sfu)) {
                    match arg.get("candidate") {
                        Some(c) if c.is_object() => self.sfu_candidate(&src, &room, c.clone()),
                        _ => self.error(
                            conn,
                            "invalid-message",
                            "SFU_CANDIDATE needs {roomName, candidate}",
                        ),
                    }
                }
            }
            "UPDATE_CREDENTIAL" => {
                if arg.is_object() {
                    if let Some(p) = self.peers.get_mut(&src) {
                        p.credential = Some(arg);
                    }
                } else {
                    self.error(
                        conn,
                        "invalid-message",
                        "UPDATE_CREDENTIAL needs {timestamp, ttl, authToken}",
                    );
                }
            }
            other => {
                let shown: String = other.chars().take(40).collect();
                self.error(
                    conn,
                    "invalid-message",
                    format!("unknown event \"{shown}\""),
                );
            }
        }
    }

    /// `room.send(data)`: to every other member of the room.
    pub fn room_data(&mut self, conn: ConnId, room: &str, data: Data, now: Instant) {
        let Some(src) = self.conns.get(&conn).cloned() else {
            return;
        };
        let arg = json!({ "roomName": room });
        let Some(room) = self.room_of(conn, &src, &arg, None) else {
            return;
        };
        let size = data.size();
        if size > self.config.max_data {
            return self.error(
                conn,
                "signaling-limited",
                format!(
                    "room data of {size} bytes is over this server's {} byte limit",
                    self.config.max_data
                ),
            );
        }
        let others: Vec<String> = self.rooms[&room]
            .members
            .iter()
            .filter(|m| **m != src)
            .cloned()
            .collect();
        let cost = (size.max(1) * others.len().max(1)) as f64;
        let (rate, burst) = (
            self.config.data_rate as f64,
            2.0 * self.config.data_rate as f64,
        );
        let Some(peer) = self.peers.get_mut(&src) else {
            return;
        };
        if !peer.data.take(cost, rate, burst, now) {
            return self.error(
                conn,
                "signaling-limited",
                format!(
                    "too much room data: {} bytes a second at most, counted once per member",
                    self.config.data_rate
                ),
            );
        }
        let entry = json!({ "src": src, "data": data.summary() });
        self.log(&room, "ROOM_DATA", entry);
        for m in others {
            let payload = Payload::RoomData {
                room: room.clone(),
                src: src.clone(),
                data: data.clone(),
            };
            self.send(&m, "ROOM_DATA", payload);
        }
    }

    /// The answer to an [`Out::Admit`].
    pub fn admitted(&mut self, conn: ConnId, room: &str, ask: Ask, result: Result<(), Refusal>) {
        let Some(src) = self.conns.get(&conn).cloned() else {
            return;
        };
        let Some(held) = self.peers.get_mut(&src).and_then(|p| p.held.take()) else {
            return;
        };
        if let Err(r) = result {
            tracing::info!(peer = %src, room, "SkyWay {ask:?} refused: {}", r.message);
            return self.error(conn, r.kind, r.message);
        }
        match (held, ask) {
            (Held::Join(name, mode), Ask::Watch) if name == room => self.join(&src, &name, mode),
            (Held::Relay(event, message), Ask::Cast) => {
                if let Some(p) = self.peers.get_mut(&src) {
                    p.may_cast.insert(room.to_string());
                }
                self.deliver(&src, event, message);
            }
            _ => {}
        }
    }

    /// Sends `ERROR {type, message}` to a connection and closes it.
    fn refuse(&mut self, conn: ConnId, kind: &'static str, message: impl Into<String>) {
        self.error(conn, kind, message);
        self.out.push_back(Out::Close(conn));
    }

    fn error(&mut self, conn: ConnId, kind: &'static str, message: impl Into<String>) {
        let message = message.into();
        tracing::debug!(conn, kind, "SkyWay ERROR: {message}");
        self.emit(conn, "ERROR", json!({ "type": kind, "message": message }));
    }

    fn emit(&mut self, conn: ConnId, event: &'static str, v: Value) {
        self.out.push_back(Out::Emit(conn, event, Payload::Json(v)));
    }

    /// Sends to a peer, or keeps it for the peer's return.
    fn send(&mut self, id: &str, event: &'static str, payload: Payload) {
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        match peer.conn {
            Some(conn) => self.out.push_back(Out::Emit(conn, event, payload)),
            None => {
                let size = payload::size_of(&payload);
                if peer.outbox.len() < OUTBOX_MAX && peer.outbox_bytes + size <= OUTBOX_BYTES {
                    peer.outbox_bytes += size;
                    peer.outbox.push((event, payload));
                }
            }
        }
    }

    fn send_json(&mut self, id: &str, event: &'static str, v: Value) {
        self.send(id, event, Payload::Json(v));
    }

    fn fresh_id(&self) -> String {
        use rand::Rng;
        const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::rng();
        loop {
            let id: String = (0..16)
                .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
                .collect();
            if !self.peers.contains_key(&id) {
                return id;
            }
        }
    }

    /// `SEND_*` → the destination's event, with `src` set by the server.
    /// `sdp`: the field holding an SDP to check in a mesh room.
    fn relay(
        &mut self,
        conn: ConnId,
        src: &str,
        event: &'static str,
        arg: Value,
        sdp: Option<&str>,
    ) {
        let Some(dst) = arg.get("dst").and_then(Value::as_str).map(str::to_owned) else {
            return self.error(
                conn,
                "invalid-message",
                format!("{} needs a dst", event_of(event)),
            );
        };
        if !self.peers.contains_key(&dst) {
            let shown: String = dst.chars().take(MAX_ID).collect();
            return self.error(
                conn,
                "peer-unavailable",
                format!("peer \"{shown}\" is not connected"),
            );
        }
        let room = match arg.get("roomName") {
            None | Some(Value::Null) => None,
            Some(_) => match self.room_of(conn, src, &arg, Some(Mode::Mesh)) {
                Some(room) => Some(room),
                None => return,
            },
        };
        // Casting in a mesh room: as a WHIP offer would, it needs the
        // rights to cast the live of that name.
        if let (Some(room), Some(field)) = (&room, sdp) {
            let sends = arg
                .pointer(&format!("/{field}/sdp"))
                .and_then(Value::as_str)
                .is_some_and(sdp::sends_media);
            let peer = self.peers.get_mut(src).expect("the sender exists");
            if sends && !peer.may_cast.contains(room) {
                peer.held = Some(Held::Relay(event, arg));
                let credential = peer.credential.clone();
                self.out.push_back(Out::Admit {
                    conn,
                    peer: src.to_string(),
                    room: room.clone(),
                    ask: Ask::Cast,
                    credential,
                });
                return;
            }
        }
        if room.is_none() {
            // P2P: they are in touch; each hears when the other goes.
            for (a, b) in [(src, dst.as_str()), (dst.as_str(), src)] {
                if let Some(p) = self.peers.get_mut(a)
                    && p.contacts.len() < MAX_CONTACTS
                {
                    p.contacts.insert(b.to_string());
                }
            }
        }
        self.deliver(src, event, arg);
    }

    fn deliver(&mut self, src: &str, event: &'static str, mut arg: Value) {
        let Some(dst) = arg.get("dst").and_then(Value::as_str).map(str::to_owned) else {
            return;
        };
        if let Some(o) = arg.as_object_mut() {
            o.insert("src".into(), Value::String(src.to_string()));
        }
        self.send_json(&dst, event, arg);
    }

    /// The room a message names, if it is valid, of `mode` (when given)
    /// and the sender is in it; otherwise an `ERROR` and `None`.
    fn room_of(
        &mut self,
        conn: ConnId,
        src: &str,
        arg: &Value,
        mode: Option<Mode>,
    ) -> Option<String> {
        let Some(name) = arg.get("roomName").and_then(Value::as_str) else {
            self.error(conn, "invalid-message", "the message needs a roomName");
            return None;
        };
        let member = self.peers.get(src).is_some_and(|p| p.rooms.contains(name));
        let room = self.rooms.get(name);
        match (member, room) {
            (true, Some(r)) if mode.is_none_or(|m| m == r.mode) => Some(name.to_string()),
            (true, Some(r)) => {
                let why = format!("room \"{name}\" is a {} room", r.mode);
                self.error(conn, "room-error", why);
                None
            }
            _ => {
                let shown: String = name.chars().take(64).collect();
                self.error(
                    conn,
                    "room-error",
                    format!("you are not in room \"{shown}\": join it first"),
                );
                None
            }
        }
    }

    fn room_join(&mut self, conn: ConnId, src: &str, arg: &Value) {
        let Some(name) = arg.get("roomName").and_then(Value::as_str) else {
            return self.error(conn, "invalid-message", "ROOM_JOIN needs a roomName");
        };
        if !crate::http::valid_live_name(name) {
            return self.error(
                conn,
                "room-error",
                "a room name is a live name: 1-64 letters, digits, '-' or '_'",
            );
        }
        let mode = match arg.get("roomType").and_then(Value::as_str) {
            Some("mesh") | None => Mode::Mesh,
            Some("sfu") => Mode::Sfu,
            Some(_) => {
                return self.error(conn, "room-error", "roomType must be 'mesh' or 'sfu'");
            }
        };
        let name = name.to_string();
        if let Some(room) = self.rooms.get(&name) {
            if room.mode != mode {
                let why = format!(
                    "room \"{name}\" is a {} room: join it with mode '{}'",
                    room.mode, room.mode
                );
                return self.error(conn, "room-error", why);
            }
            if room.members.len() >= self.config.max_members
                && !room.members.iter().any(|m| m == src)
            {
                return self.error(conn, "room-error", format!("room \"{name}\" is full"));
            }
        }
        let peer = self.peers.get_mut(src).expect("the sender exists");
        if peer.rooms.contains(&name) {
            // Already in: its acknowledgement again.
            let members = self.rooms[&name].members.clone();
            let ack = json!({ "roomName": name, "src": src, "roomMembers": members });
            return self.emit(conn, "ROOM_USER_JOIN", ack);
        }
        if peer.rooms.len() >= self.config.max_rooms_per_peer {
            let max = self.config.max_rooms_per_peer;
            return self.error(
                conn,
                "room-error",
                format!("a peer may be in {max} rooms at most"),
            );
        }
        peer.held = Some(Held::Join(name.clone(), mode));
        let credential = peer.credential.clone();
        self.out.push_back(Out::Admit {
            conn,
            peer: src.to_string(),
            room: name,
            ask: Ask::Watch,
            credential,
        });
    }

    fn join(&mut self, src: &str, name: &str, mode: Mode) {
        let room = self
            .rooms
            .entry(name.to_string())
            .or_insert_with(|| Room::new(mode));
        if room.mode != mode {
            return; // another peer made it the other kind meanwhile
        }
        room.members.push(src.to_string());
        if mode == Mode::Sfu {
            room.media.insert(src.to_string(), MemberMedia::default());
        }
        let members = room.members.clone();
        if let Some(p) = self.peers.get_mut(src) {
            p.rooms.insert(name.to_string());
        }
        tracing::info!(peer = %src, room = name, %mode, "joined room");
        let event = json!({ "roomName": name, "src": src, "roomMembers": members });
        self.log(name, "ROOM_USER_JOIN", json!({ "src": src }));
        for m in &members {
            self.send_json(m, "ROOM_USER_JOIN", event.clone());
        }
    }

    fn leave_room(&mut self, src: &str, name: &str) {
        if let Some(p) = self.peers.get_mut(src) {
            p.rooms.remove(name);
            p.may_cast.remove(name);
        }
        let Some(room) = self.rooms.get_mut(name) else {
            return;
        };
        room.members.retain(|m| m != src);
        let media = room.media.remove(src);
        let members = room.members.clone();
        tracing::info!(peer = %src, room = name, "left room");
        self.log(name, "ROOM_USER_LEAVE", json!({ "src": src }));
        for m in &members {
            self.send_json(
                m,
                "ROOM_USER_LEAVE",
                json!({ "roomName": name, "src": src }),
            );
        }
        if let Some(media) = media {
            self.end_member_media(src, media);
        }
        if members.is_empty() {
            self.rooms.remove(name);
        }
    }

    fn remove_peer(&mut self, id: &str) {
        let Some(peer) = self.peers.get(id) else {
            return;
        };
        let rooms: Vec<String> = peer.rooms.iter().cloned().collect();
        let contacts: Vec<String> = peer.contacts.iter().cloned().collect();
        if let Some(conn) = peer.conn {
            self.conns.remove(&conn);
        }
        for room in rooms {
            self.leave_room(id, &room);
        }
        self.peers.remove(id);
        for c in contacts {
            if let Some(p) = self.peers.get_mut(&c) {
                p.contacts.remove(id);
                self.send_json(&c, "LEAVE", Value::String(id.to_string()));
            }
        }
        tracing::info!(peer = %id, "SkyWay peer gone");
    }

    fn log(&mut self, room: &str, kind: &str, message: Value) {
        let max = self.config.log_entries;
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let entry = json!({ "messageType": kind, "message": message, "timestamp": stamp });
        r.log.push_back(entry.to_string());
        while r.log.len() > max {
            r.log.pop_front();
        }
    }
}

/// The client's name for a relayed event.
fn event_of(relayed: &str) -> String {
    format!("SEND_{relayed}")
}

/// The ids the SDK itself accepts (`^[A-Za-z0-9_-]+(?:[ _-][A-Za-z0-9]+)*$`),
/// at most 64 characters.
pub fn valid_peer_id(id: &str) -> bool {
    if id.is_empty() || id.len() > MAX_ID {
        return false;
    }
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    // A head of word characters up to the first space, then groups of one
    // separator and one or more letters or digits.
    let (head, mut rest) = id.split_at(id.find(' ').unwrap_or(id.len()));
    if head.is_empty() || !head.chars().all(word) {
        return false;
    }
    while let Some(sep) = rest.chars().next() {
        if !matches!(sep, ' ' | '_' | '-') {
            return false;
        }
        let after = &rest[1..];
        let run = after
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(after.len());
        if run == 0 {
            return false;
        }
        rest = &after[run..];
    }
    true
}

#[cfg(test)]
mod tests;
