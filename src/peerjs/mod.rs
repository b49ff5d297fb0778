//! The PeerJS PeerServer protocol (npm `peer` 1.0), sans-IO: peers register
//! an id over a WebSocket, and the server relays their WebRTC signaling
//! (`OFFER`, `ANSWER`, `CANDIDATE`, `LEAVE`, `EXPIRE`) with `src` set by
//! the server. Messages to an id that is not connected wait for it; after
//! `expire_after` their senders get `EXPIRE`. Peers silent for
//! `alive_timeout` are dropped.
//!
//! The WebSocket face (`http::peerjs`) feeds connections, frames and time
//! in and carries out [`Out`].

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// The API key clients connect with (PeerServer's `key`, default `peerjs`).
    pub key: String,
    /// Peers connected at once.
    pub max_peers: usize,
    /// A peer that sends nothing (not even `HEARTBEAT`) this long is dropped.
    pub alive_timeout: Duration,
    /// Messages for an absent id wait this long before `EXPIRE`.
    pub expire_after: Duration,
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self {
            key: "peerjs".into(),
            max_peers: 5000,
            alive_timeout: Duration::from_secs(60),
            expire_after: Duration::from_secs(5),
        }
    }
}

/// A WebSocket connection, numbered by the runtime.
pub type ConnId = u64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    /// A text frame (JSON) for a connection.
    Send(ConnId, String),
    /// Close a connection (after what was sent to it).
    Close(ConnId),
    /// In a cluster only: what the cluster must do (see [`Effect`]).
    Cluster(Effect),
}

/// What a clustered [`PeerServer`] asks of the cluster; the runtime carries
/// them out one at a time, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A message for an id not connected here: the runtime asks the
    /// cluster where `dst` is and carries `text` there; if `dst` is
    /// nowhere, it hands the message back with [`PeerServer::hold`]
    /// (queued here, `EXPIRE` if nobody comes).
    Elsewhere {
        src: String,
        dst: String,
        text: String,
    },
    /// A peer took its id here: recorded, so other nodes find it.
    Joined { id: String, token: String },
    /// A peer here is gone: forgotten, if the record is still ours.
    Left { id: String, token: String },
}

struct Client {
    token: String,
    conn: ConnId,
    last_seen: Instant,
}

/// Messages waiting for an id to connect, as they will be sent (held as
/// text: what the byte budget counts is what memory holds).
struct Queue {
    since: Instant,
    /// (sender, the message as JSON text).
    messages: Vec<(String, String)>,
    bytes: usize,
}

pub struct PeerServer {
    config: PeerConfig,
    clients: HashMap<String, Client>,
    ids: HashMap<ConnId, String>,
    queues: HashMap<String, Queue>,
    /// Bytes held in `queues`, all ids together.
    queued_bytes: usize,
    /// In a cluster: messages for ids not here go out as [`Effect::Elsewhere`].
    clustered: bool,
    out: VecDeque<Out>,
}

/// What absent ids may hold: per id, and in all (a peer must not be able to
/// fill the server's memory with messages for made-up ids).
const MAX_QUEUED_PER_ID: usize = 100;
const MAX_QUEUED_BYTES: usize = 16 << 20;
/// The longest id (PeerJS's are 36-character UUIDs).
const MAX_ID: usize = 256;

/// The message types relayed from one peer to another.
const RELAYED: &[&str] = &["OFFER", "ANSWER", "CANDIDATE", "LEAVE", "EXPIRE"];

impl PeerServer {
    pub fn new(config: PeerConfig) -> Self {
        Self {
            config,
            clients: HashMap::new(),
            ids: HashMap::new(),
            queues: HashMap::new(),
            queued_bytes: 0,
            clustered: false,
            out: VecDeque::new(),
        }
    }

    /// Part of a cluster: ids connect to any node (messages for an id not
    /// here go out as [`Effect::Elsewhere`]; joins and leaves are announced).
    pub fn clustered(mut self) -> Self {
        self.clustered = true;
        self
    }

    /// Whether `id` may take a connection (what [`Self::connect`] would
    /// not refuse for the id itself): the runtime asks the cluster only
    /// for those.
    pub fn valid_id(id: &str) -> bool {
        !id.is_empty() && id.len() <= MAX_ID
    }

    /// Whether `key` is this server's (in constant time).
    pub fn is_key(&self, key: &str) -> bool {
        crate::access::same(key, &self.config.key)
    }

    /// The ids connected now with their tokens (a cluster keeps them
    /// recorded).
    pub fn tokens(&self) -> Vec<(String, String)> {
        self.clients
            .iter()
            .map(|(id, c)| (id.clone(), c.token.clone()))
            .collect()
    }

    /// The ids connected now (for `GET /{key}/peers` with discovery).
    pub fn peers(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.clients.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// A WebSocket opened at `/peerjs?key=&id=&token=`.
    pub fn connect(
        &mut self,
        conn: ConnId,
        key: Option<&str>,
        id: Option<&str>,
        token: Option<&str>,
        now: Instant,
    ) {
        let (Some(key), Some(id), Some(token)) = (key, id, token) else {
            return self.refuse(
                conn,
                "ERROR",
                "No id, token, or key supplied to websocket server",
            );
        };
        if !crate::access::same(key, &self.config.key) {
            return self.refuse(conn, "ERROR", "Invalid key provided");
        }
        if !Self::valid_id(id) {
            return self.refuse(conn, "ERROR", "Invalid id");
        }
        if let Some(client) = self.clients.get_mut(id) {
            if !crate::access::same(&client.token, token) {
                return self.refuse(conn, "ID-TAKEN", "ID is taken");
            }
            // The same peer reconnecting: the new socket replaces the old,
            // silently, as PeerServer does.
            let old = std::mem::replace(&mut client.conn, conn);
            client.last_seen = now;
            self.ids.remove(&old);
            self.ids.insert(conn, id.to_string());
            self.out.push_back(Out::Close(old));
        } else {
            if self.clients.len() >= self.config.max_peers {
                return self.refuse(
                    conn,
                    "ERROR",
                    "Server has reached its concurrent user limit",
                );
            }
            self.clients.insert(
                id.to_string(),
                Client {
                    token: token.to_string(),
                    conn,
                    last_seen: now,
                },
            );
            self.ids.insert(conn, id.to_string());
            self.send(conn, json!({"type": "OPEN"}));
            if self.clustered {
                self.out.push_back(Out::Cluster(Effect::Joined {
                    id: id.to_string(),
                    token: token.to_string(),
                }));
            }
        }
        if let Some(queue) = self.take_queue(id) {
            for (_, text) in queue.messages {
                self.out.push_back(Out::Send(conn, text));
            }
        }
    }

    /// A text frame from a connection.
    pub fn message(&mut self, conn: ConnId, text: &str, now: Instant) {
        let Some(src) = self.ids.get(&conn).cloned() else {
            return;
        };
        if let Some(client) = self.clients.get_mut(&src) {
            client.last_seen = now;
        }
        let Ok(Value::Object(mut message)) = serde_json::from_str::<Value>(text) else {
            tracing::debug!(peer = %src, "PeerJS: not a JSON object; ignored");
            return;
        };
        let kind = message.get("type").and_then(Value::as_str).unwrap_or("");
        if kind == "HEARTBEAT" {
            return;
        }
        if !RELAYED.contains(&kind) {
            tracing::debug!(peer = %src, kind, "PeerJS: unknown message type; ignored");
            return;
        }
        let kind = kind.to_string();
        let dst = message
            .get("dst")
            .and_then(Value::as_str)
            .map(str::to_string);
        // The server, not the sender, says who it is from.
        message.insert("src".into(), Value::String(src.clone()));
        self.relay(&kind, &src, dst, Value::Object(message), now);
    }

    /// The id's connection refused: in a cluster, another node's peer
    /// holds it with another token.
    pub fn refuse_taken(&mut self, conn: ConnId) {
        self.refuse(conn, "ID-TAKEN", "ID is taken");
    }

    /// A message from a peer on another node, for `dst`: sent if `dst` is
    /// here (false if it is not, any more).
    pub fn deliver(&mut self, dst: &str, text: &str) -> bool {
        let Some(client) = self.clients.get(dst) else {
            return false;
        };
        self.out.push_back(Out::Send(client.conn, text.to_string()));
        true
    }

    /// A message the cluster found nobody for: queued here as on one node
    /// (delivered if `dst` connects here, `EXPIRE` to `src` otherwise).
    pub fn hold(&mut self, src: &str, dst: &str, text: &str, now: Instant) {
        let Ok(message) = serde_json::from_str::<Value>(text) else {
            return;
        };
        let kind = message.get("type").and_then(Value::as_str).unwrap_or("");
        if kind == "LEAVE" || kind == "EXPIRE" {
            return;
        }
        // Connected here meanwhile, or else kept for it.
        if !self.deliver(dst, text) {
            self.queue(src, dst.to_string(), text.to_string(), now);
        }
    }

    fn relay(&mut self, kind: &str, src: &str, dst: Option<String>, message: Value, now: Instant) {
        match dst {
            Some(dst) if self.clients.contains_key(&dst) => {
                let conn = self.clients[&dst].conn;
                self.send(conn, message);
            }
            Some(dst) if self.clustered && dst.len() <= MAX_ID => {
                self.out.push_back(Out::Cluster(Effect::Elsewhere {
                    src: src.to_string(),
                    dst,
                    text: message.to_string(),
                }));
            }
            // Nobody to tell that someone left or expired.
            Some(_) if kind == "LEAVE" || kind == "EXPIRE" => {}
            Some(dst) if dst.len() <= MAX_ID => self.queue(src, dst, message.to_string(), now),
            Some(_) => {}
            // LEAVE without a destination: the sender is leaving the server.
            None if kind == "LEAVE" => self.remove(src),
            None => {}
        }
    }

    /// Keeps a message for an absent id, within the bounds.
    fn queue(&mut self, src: &str, dst: String, text: String, now: Instant) {
        let size = text.len() + src.len();
        if self.queued_bytes + size > MAX_QUEUED_BYTES {
            tracing::debug!(peer = %src, "PeerJS: message queues full; dropped");
            return;
        }
        let queue = self.queues.entry(dst).or_insert_with(|| Queue {
            since: now,
            messages: Vec::new(),
            bytes: 0,
        });
        if queue.messages.len() < MAX_QUEUED_PER_ID {
            queue.messages.push((src.to_string(), text));
            queue.bytes += size;
            self.queued_bytes += size;
        }
    }

    /// A connection closed.
    pub fn disconnect(&mut self, conn: ConnId) {
        if let Some(id) = self.ids.remove(&conn)
            && self.clients.get(&id).is_some_and(|c| c.conn == conn)
        {
            let client = self.clients.remove(&id).expect("checked");
            self.left(id, client.token);
        }
    }

    fn left(&mut self, id: String, token: String) {
        if self.clustered {
            self.out.push_back(Out::Cluster(Effect::Left { id, token }));
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        // Messages nobody came for: one EXPIRE per (sender, absent id).
        let expired: Vec<String> = self
            .queues
            .iter()
            .filter(|(_, q)| now.saturating_duration_since(q.since) >= self.config.expire_after)
            .map(|(dst, _)| dst.clone())
            .collect();
        for dst in expired {
            let queue = self.take_queue(&dst).expect("listed");
            let mut told: Vec<&str> = Vec::new();
            for (src, _) in &queue.messages {
                let src = src.as_str();
                if told.contains(&src) {
                    continue;
                }
                told.push(src);
                if let Some(client) = self.clients.get(src) {
                    let conn = client.conn;
                    self.send(conn, json!({"type": "EXPIRE", "src": dst, "dst": src}));
                }
            }
        }
        // Peers that went silent.
        let silent: Vec<String> = self
            .clients
            .iter()
            .filter(|(_, c)| {
                now.saturating_duration_since(c.last_seen) >= self.config.alive_timeout
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in silent {
            tracing::debug!(peer = %id, "PeerJS: no heartbeat; dropped");
            self.remove(&id);
        }
    }

    pub fn poll_output(&mut self) -> Option<Out> {
        self.out.pop_front()
    }

    fn take_queue(&mut self, id: &str) -> Option<Queue> {
        let queue = self.queues.remove(id)?;
        self.queued_bytes = self.queued_bytes.saturating_sub(queue.bytes);
        Some(queue)
    }

    fn remove(&mut self, id: &str) {
        if let Some(client) = self.clients.remove(id) {
            self.ids.remove(&client.conn);
            self.out.push_back(Out::Close(client.conn));
            self.left(id.to_string(), client.token);
        }
    }

    fn refuse(&mut self, conn: ConnId, kind: &str, msg: &str) {
        self.send(conn, json!({"type": kind, "payload": {"msg": msg}}));
        self.out.push_back(Out::Close(conn));
    }

    fn send(&mut self, conn: ConnId, message: Value) {
        self.out.push_back(Out::Send(conn, message.to_string()));
    }
}

#[cfg(test)]
mod tests;
