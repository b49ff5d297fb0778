//! Chat beside a live: an ordered, bounded history per live, per-connection
//! rate limits, and removal by the live's caster. Sans-IO: the WebSocket
//! face (`http::chat`) feeds it text and time and relays what it returns.
//!
//! In a cluster (`cluster::chat`) the id of a message comes from Redis, so
//! the steps are apart: [`Room::prepare`] checks and charges the speaker
//! here, Redis numbers and spreads the message, and every node's room
//! [`Room::hear`]s it back (and [`Room::forget`]s removals) to keep a local
//! copy for its connections, which also serves while Redis is away.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct ChatConfig {
    /// Longest message, in characters.
    pub max_len: usize,
    /// Messages kept per live for those who join or reconnect.
    pub history: usize,
    /// Messages a connection may send in a burst ...
    pub burst: u32,
    /// ... and how often it earns one more.
    pub refill: Duration,
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self {
            max_len: 500,
            history: 200,
            burst: 5,
            refill: Duration::from_secs(2),
        }
    }
}

/// Removals remembered for reconnecting clients.
const MAX_REMOVED: usize = 200;

/// Display names: short, printable.
pub const MAX_NAME: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// Increasing within a live: the order everyone sees.
    pub id: u64,
    pub name: Arc<str>,
    pub text: String,
    /// Unix milliseconds when the server took it.
    pub at: u64,
    /// Sent by the live's caster.
    pub caster: bool,
}

/// What a room tells every connection of its live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatEvent {
    Message(Message),
    Removed(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    #[error("empty message")]
    Empty,
    #[error("message too long: {len} characters, at most {max}")]
    TooLong { len: usize, max: usize },
    #[error("too many messages: wait {0} ms")]
    RateLimited(u64),
    #[error("only the live's caster can remove messages")]
    NotModerator,
    #[error("no message {0}")]
    NoSuchMessage(u64),
    #[error("too many chat rooms are open on this server; try again later")]
    TooManyRooms,
}

/// One connection's identity and allowance.
#[derive(Debug)]
pub struct Speaker {
    pub name: Arc<str>,
    pub moderator: bool,
    tokens: f64,
    last: Instant,
}

impl Speaker {
    pub fn new(name: &str, moderator: bool, config: &ChatConfig, now: Instant) -> Self {
        Self {
            name: clean_name(name).into(),
            moderator,
            tokens: f64::from(config.burst),
            last: now,
        }
    }

    /// Takes one message's worth of allowance, or says how long to wait.
    fn spend(&mut self, config: &ChatConfig, now: Instant) -> Result<(), ChatError> {
        let earned =
            now.saturating_duration_since(self.last).as_secs_f64() / config.refill.as_secs_f64();
        self.tokens = (self.tokens + earned).min(f64::from(config.burst));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) * config.refill.as_secs_f64();
            Err(ChatError::RateLimited((wait * 1000.0).ceil() as u64))
        }
    }
}

/// A name people can read: control characters out, trimmed, at most
/// `MAX_NAME` characters; `viewer` when nothing is left.
pub fn clean_name(name: &str) -> String {
    let name: String = name
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .trim()
        .chars()
        .take(MAX_NAME)
        .collect();
    if name.is_empty() {
        "viewer".into()
    } else {
        name
    }
}

#[derive(Debug, Default)]
pub struct Room {
    next_id: u64,
    messages: VecDeque<Message>,
    /// Ids removed lately, for clients that were away when it happened.
    removed: VecDeque<u64>,
}

impl Room {
    /// Takes a message from `speaker`; returns what everyone should see.
    pub fn say(
        &mut self,
        config: &ChatConfig,
        speaker: &mut Speaker,
        text: &str,
        now: Instant,
        unix_ms: u64,
    ) -> Result<ChatEvent, ChatError> {
        let text = Self::prepare(config, speaker, text, now)?;
        Ok(ChatEvent::Message(
            self.push(config, speaker, text, unix_ms),
        ))
    }

    /// Checks and cleans `text` and takes one message from `speaker`'s
    /// allowance: everything [`Room::say`] does before numbering it.
    pub fn prepare(
        config: &ChatConfig,
        speaker: &mut Speaker,
        text: &str,
        now: Instant,
    ) -> Result<String, ChatError> {
        // Line breaks stay; other control characters cannot be shown.
        let text: String = text
            .trim()
            .chars()
            .filter(|c| *c == '\n' || !c.is_control())
            .collect();
        if text.is_empty() {
            return Err(ChatError::Empty);
        }
        let len = text.chars().count();
        if len > config.max_len {
            return Err(ChatError::TooLong {
                len,
                max: config.max_len,
            });
        }
        speaker.spend(config, now)?;
        Ok(text)
    }

    /// Numbers and keeps a prepared message here (one node, or a cluster
    /// node while Redis is away).
    pub fn push(
        &mut self,
        config: &ChatConfig,
        speaker: &Speaker,
        text: String,
        unix_ms: u64,
    ) -> Message {
        let message = Message {
            id: self.next_id + 1,
            name: speaker.name.clone(),
            text,
            at: unix_ms,
            caster: speaker.moderator,
        };
        self.hear(config, message.clone());
        message
    }

    /// Keeps a message numbered elsewhere (Redis); false if it is not newer
    /// than the newest here (heard already, or an echo of what was read).
    /// Local numbering then goes on after it.
    pub fn hear(&mut self, config: &ChatConfig, message: Message) -> bool {
        if message.id <= self.next_id {
            return false;
        }
        self.next_id = message.id;
        self.messages.push_back(message);
        while self.messages.len() > config.history {
            self.messages.pop_front();
        }
        true
    }

    /// A removal decided elsewhere; false if it was heard already.
    pub fn forget(&mut self, id: u64) -> bool {
        if self.removed.contains(&id) {
            return false;
        }
        self.messages.retain(|m| m.id != id);
        self.removed.push_back(id);
        if self.removed.len() > MAX_REMOVED {
            self.removed.pop_front();
        }
        true
    }

    /// The newest id known here.
    pub fn newest(&self) -> u64 {
        self.next_id
    }

    pub fn remove(&mut self, speaker: &Speaker, id: u64) -> Result<ChatEvent, ChatError> {
        if !speaker.moderator {
            return Err(ChatError::NotModerator);
        }
        let at = self
            .messages
            .iter()
            .position(|m| m.id == id)
            .ok_or(ChatError::NoSuchMessage(id))?;
        self.messages.remove(at);
        self.removed.push_back(id);
        if self.removed.len() > MAX_REMOVED {
            self.removed.pop_front();
        }
        Ok(ChatEvent::Removed(id))
    }

    /// Ids removed lately: a client back from a disconnection (`since`)
    /// may still show them.
    pub fn removed(&self) -> Vec<u64> {
        self.removed.iter().copied().collect()
    }

    /// The kept messages after `since` (all of them for `None`), in order.
    pub fn since(&self, since: Option<u64>) -> Vec<Message> {
        let since = since.unwrap_or(0);
        self.messages
            .iter()
            .filter(|m| m.id > since)
            .cloned()
            .collect()
    }
}

/// Every live's room. Any name may have one (viewers chat while they wait
/// for the caster), so their number is capped: a room with no messages goes
/// with its last connection, and when the cap is reached the room idle the
/// longest (no connection) makes way. Memory is bounded by the cap times
/// the history.
#[derive(Debug)]
pub struct Rooms {
    rooms: HashMap<String, Tracked>,
    max: usize,
}

#[derive(Debug, Default)]
struct Tracked {
    room: Room,
    connections: usize,
    /// Since when nobody is connected.
    idle_since: Option<Instant>,
}

/// A connection's way into a room.
pub struct Entered<'a> {
    pub room: &'a mut Room,
    /// A room forgotten to make way for this one.
    pub evicted: Option<String>,
}

impl Rooms {
    pub fn new(max: usize) -> Self {
        Self {
            rooms: HashMap::new(),
            max,
        }
    }

    /// A new connection to the room of `live`.
    pub fn enter(&mut self, live: &str) -> Result<Entered<'_>, ChatError> {
        let mut evicted = None;
        if !self.rooms.contains_key(live) && self.rooms.len() >= self.max {
            let oldest = self
                .rooms
                .iter()
                .filter_map(|(name, t)| t.idle_since.map(|at| (at, name)))
                .min()
                .map(|(_, name)| name.clone())
                .ok_or(ChatError::TooManyRooms)?;
            self.rooms.remove(&oldest);
            evicted = Some(oldest);
        }
        let tracked = self.rooms.entry(live.to_string()).or_default();
        tracked.connections += 1;
        tracked.idle_since = None;
        Ok(Entered {
            room: &mut tracked.room,
            evicted,
        })
    }

    /// The room of a connected client.
    pub fn room(&mut self, live: &str) -> Option<&mut Room> {
        self.rooms.get_mut(live).map(|t| &mut t.room)
    }

    /// A connection left; true if the room went with it (no messages kept).
    pub fn leave(&mut self, live: &str, now: Instant) -> bool {
        let Some(tracked) = self.rooms.get_mut(live) else {
            return false;
        };
        tracked.connections = tracked.connections.saturating_sub(1);
        if tracked.connections > 0 {
            return false;
        }
        if tracked.room.messages.is_empty() {
            self.rooms.remove(live);
            return true;
        }
        tracked.idle_since = Some(now);
        false
    }
}

#[cfg(test)]
mod tests;
