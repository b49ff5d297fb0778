//! Chat rooms that span the cluster's nodes, through Redis.
//!
//! A live's chat is one room whichever node its connections are on:
//!
//! - `vessel:chat:{live}:seq`: the message counter (`INCR`), so every node
//!   shows the same id for a message.
//! - `vessel:chat:{live}:history`: the last `ChatConfig::history` messages
//!   (JSON, oldest first; `RPUSH` + `LTRIM`), what a joining client gets.
//! - `vessel:chat:{live}:removed`: the ids removed lately, for clients that
//!   come back with `since` (as on one node).
//! - channel `vessel:chat`: every message and removal, as [`Heard`].
//!
//! Why this way:
//!
//! - One Lua script numbers, keeps and publishes a message, so the order of
//!   the ids, of the history and of the channel is one order: every node
//!   delivers in it, the node the message was said on included (it waits
//!   for its own message to come back rather than showing it early).
//! - One channel for every live rather than one per live: each node needs
//!   one subscription, opened once with the claims' (`Cluster::subscription`),
//!   instead of subscribing and unsubscribing as rooms come and go. Every
//!   node then hears every live's chat and drops what no connection here
//!   wants; chat is small next to media, so this holds for clusters of a
//!   few nodes and many lives.
//! - The keys expire a day after the last message or removal: the chat of
//!   a live nobody talks in any more does not pile up in Redis.
//! - Rate limits and the length limit stay with the connection, on the
//!   node holding the socket (`chat::Room::prepare`); removal rights too
//!   (the live's caster, on the node it casts to).
//!
//! Redis unreachable: chat does not stop. The node's own room (a copy of
//! what it heard) numbers and shows messages to the connections on this
//! node only, and says so once in the log (`http::chat`). When Redis is
//! back, messages go through it again, numbered after the highest id the
//! node knows (the script's floor; and every node raises the counter
//! above its rooms' ids when its subscription is back, for a Redis that
//! restarted empty), and rooms read back what they missed. Messages said
//! while Redis was away stay on their node.

use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::{Cluster, ClusterError};
use crate::chat::Message;

pub const CHANNEL: &str = "vessel:chat";
/// Chat keys outlive a live's last message by this much.
const KEEP_MS: u64 = 24 * 3600 * 1000;
/// Removals remembered for returning clients (as `chat::MAX_REMOVED`).
const KEEP_REMOVED: usize = 200;

fn seq_key(live: &str) -> String {
    format!("vessel:chat:{live}:seq")
}
fn history_key(live: &str) -> String {
    format!("vessel:chat:{live}:history")
}
fn removed_key(live: &str) -> String {
    format!("vessel:chat:{live}:removed")
}

/// What a node hears on [`CHANNEL`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Heard {
    Message {
        live: String,
        message: Message,
    },
    Removed {
        live: String,
        id: u64,
    },
    /// Not on the channel: this node (re)subscribed, and may have missed
    /// messages meanwhile.
    #[serde(skip)]
    Resync,
}

/// KEYS: seq, history. ARGV: the message as JSON without its id, floor,
/// history length, keep ms, channel, live. The id is above the counter and
/// above `floor` (the newest id the calling node knows: ids never go back
/// for its clients, even after the counter expired or Redis restarted
/// empty). The id goes first in the JSON, which is how removal finds it.
const SAY: &str = r#"
local id = redis.call('INCR', KEYS[1])
local floor = tonumber(ARGV[2])
if id <= floor then
  id = floor + 1
  redis.call('SET', KEYS[1], string.format('%d', id))
end
local m = '{"id":' .. string.format('%d', id) .. ',' .. string.sub(ARGV[1], 2)
redis.call('RPUSH', KEYS[2], m)
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[3]), -1)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[5], '{"kind":"message","live":' .. cjson.encode(ARGV[6])
  .. ',"message":' .. m .. '}')
return id
"#;

/// KEYS: history, removed. ARGV: id, removals kept, keep ms, channel, live.
/// 1 if the message was in the history (and is removed and announced).
const REMOVE: &str = r#"
local prefix = '{"id":' .. ARGV[1] .. ','
for _, m in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if string.sub(m, 1, #prefix) == prefix then
    redis.call('LREM', KEYS[1], 1, m)
    redis.call('RPUSH', KEYS[2], ARGV[1])
    redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
    redis.call('PEXPIRE', KEYS[2], ARGV[3])
    redis.call('PUBLISH', ARGV[4], '{"kind":"removed","live":' .. cjson.encode(ARGV[5])
      .. ',"id":' .. ARGV[1] .. '}')
    return 1
  end
end
return 0
"#;

/// KEYS: seq. ARGV: floor, keep ms. Raises the counter to `floor`: after
/// Redis restarted empty, a node's rooms hold ids Redis no longer knows,
/// and new messages must be numbered after them to be heard there.
const RAISE: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 0
"#;

static RAISE_SCRIPT: LazyLock<::redis::Script> = LazyLock::new(|| ::redis::Script::new(RAISE));
static SAY_SCRIPT: LazyLock<::redis::Script> = LazyLock::new(|| ::redis::Script::new(SAY));
static REMOVE_SCRIPT: LazyLock<::redis::Script> = LazyLock::new(|| ::redis::Script::new(REMOVE));

/// A message as the script stores it, before the script puts the id in.
fn unnumbered(name: &str, text: &str, caster: bool, at: u64) -> String {
    serde_json::json!({"name": name, "text": text, "at": at, "caster": caster}).to_string()
}

/// The stored history, oldest first; malformed entries are skipped.
fn parse_history(stored: Vec<String>) -> Vec<Message> {
    stored
        .iter()
        .filter_map(|m| match serde_json::from_str(m) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!("ignoring a malformed chat message in Redis: {e}");
                None
            }
        })
        .collect()
}

impl Cluster {
    /// Numbers, keeps and publishes a message said on this node; returns
    /// its id. The message reaches this node's connections when it is
    /// heard back (in the cluster's order), not from here.
    #[allow(clippy::too_many_arguments)]
    pub async fn chat_say(
        &self,
        live: &str,
        name: &str,
        text: &str,
        caster: bool,
        at: u64,
        floor: u64,
        history: usize,
    ) -> Result<u64, ClusterError> {
        let mut conn = self.store.conn.clone();
        let mut call = SAY_SCRIPT.key(seq_key(live));
        call.key(history_key(live))
            .arg(unnumbered(name, text, caster, at))
            .arg(floor)
            .arg(history.max(1))
            .arg(KEEP_MS)
            .arg(CHANNEL)
            .arg(live);
        self.call(call.invoke_async::<u64>(&mut conn)).await
    }

    /// Removes message `id` of `live` everywhere; false if Redis does not
    /// hold it (too old, removed already, or said while Redis was away).
    pub async fn chat_remove(&self, live: &str, id: u64) -> Result<bool, ClusterError> {
        let mut conn = self.store.conn.clone();
        let mut call = REMOVE_SCRIPT.key(history_key(live));
        call.key(removed_key(live))
            .arg(id)
            .arg(KEEP_REMOVED)
            .arg(KEEP_MS)
            .arg(CHANNEL)
            .arg(live);
        let removed: i64 = self.call(call.invoke_async(&mut conn)).await?;
        Ok(removed == 1)
    }

    /// `live`'s kept messages (oldest first) and its recent removals.
    pub async fn chat_history(&self, live: &str) -> Result<(Vec<Message>, Vec<u64>), ClusterError> {
        let mut conn = self.store.conn.clone();
        let mut read = ::redis::pipe();
        read.cmd("LRANGE")
            .arg(history_key(live))
            .arg(0)
            .arg(-1)
            .cmd("LRANGE")
            .arg(removed_key(live))
            .arg(0)
            .arg(-1);
        let (stored, removed): (Vec<String>, Vec<u64>) =
            self.call(read.query_async(&mut conn)).await?;
        Ok((parse_history(stored), removed))
    }

    /// Raises `live`'s counter to at least `floor` (the newest id a room
    /// here knows).
    pub async fn chat_raise(&self, live: &str, floor: u64) -> Result<(), ClusterError> {
        let mut conn = self.store.conn.clone();
        let mut call = RAISE_SCRIPT.key(seq_key(live));
        call.arg(floor).arg(KEEP_MS);
        self.call(call.invoke_async::<i64>(&mut conn)).await?;
        Ok(())
    }

    /// Chat heard from every node (this one's included).
    pub fn chat_events(&self) -> broadcast::Receiver<Heard> {
        self.chat.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the scripts publish, built as they build it.
    fn as_published(id: u64, live: &str, body: &str) -> String {
        let m = format!("{{\"id\":{id},{}", &body[1..]);
        format!(
            "{{\"kind\":\"message\",\"live\":{},\"message\":{m}}}",
            serde_json::to_string(live).unwrap()
        )
    }

    #[test]
    fn a_published_message_reads_back_whole() {
        let body = unnumbered("Ann \"the\" caster", "hi\nthere", true, 1_700_000_000_123);
        let heard: Heard = serde_json::from_str(&as_published(42, "show", &body)).unwrap();
        assert_eq!(
            heard,
            Heard::Message {
                live: "show".into(),
                message: Message {
                    id: 42,
                    name: "Ann \"the\" caster".into(),
                    text: "hi\nthere".into(),
                    at: 1_700_000_000_123,
                    caster: true,
                }
            }
        );
        let removed: Heard =
            serde_json::from_str(r#"{"kind":"removed","live":"show","id":42}"#).unwrap();
        assert_eq!(
            removed,
            Heard::Removed {
                live: "show".into(),
                id: 42
            }
        );
    }

    #[test]
    fn malformed_history_entries_are_skipped() {
        let good = format!("{{\"id\":1,{}", &unnumbered("a", "b", false, 0)[1..]);
        let read = parse_history(vec![good, "{not json".into()]);
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].id, 1);
    }
}
