//! The Redis side of the cluster: reads and writes the records that
//! `registry.rs` reasons about. Keys (all under `vessel:`):
//!
//! - `vessel:node:{id}`: a node's heartbeat (JSON [`NodeInfo`]), `PX` a few
//!   seconds: a node that stops beating disappears by itself.
//! - `vessel:nodes`: a sorted set of node ids scored by their last
//!   heartbeat (Unix ms). Listing nodes is then one `ZRANGE` and one `MGET`
//!   instead of a `SCAN` over the whole keyspace (which grows with the
//!   lives), and each heartbeat trims ids not seen for a minute, so the set
//!   stays as small as the cluster.
//! - `vessel:lives:{id}`: a node's lives with their people watching there
//!   (JSON [`NodeLives`]), `PX` as its heartbeat: read by every node for
//!   the cluster's viewer totals (`audience.rs`). Apart from the heartbeat
//!   so that routing a viewer reads no list of lives.
//! - `vessel:live:{name}:epoch`: the live's claim counter (`INCR`).
//! - `vessel:live:{name}:origin`: the live's origin claim (JSON [`Claim`]),
//!   `PX` 5 s, refreshed by its holder.
//! - channel `vessel:claims`: every claim and release ([`Announcement`]).
//! - chat (`chat.rs`): `vessel:chat:{live}:seq`, `:history`, `:removed`,
//!   channel `vessel:chat`.
//! - admin-made live rules (`rules.rs`): hash `vessel:rules`, channel
//!   `vessel:rules`.
//!
//! Claims are written by Lua scripts so that each step is atomic: the
//! claim (counter, record and announcement in one step), the refresh
//! (extend only if the record is still ours) and the release (delete only
//! if ours).

use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::registry::{Claim, NodeInfo};
use super::totals::NodeLives;

pub const CHANNEL: &str = "vessel:claims";
const NODES: &str = "vessel:nodes";
/// Node ids not seen for this long leave `vessel:nodes`.
const FORGET_NODE_MS: u64 = 60_000;
/// An epoch counter outlives its live's last claim by this much; the claim
/// script also never goes below a stored claim's epoch or the claimer's
/// known floor, so a counter that expired (or a Redis that restarted
/// empty) cannot send epochs backwards while anyone remembers them.
const EPOCH_KEEP_MS: u64 = 7 * 24 * 3600 * 1000;

/// What a node's heartbeat key starts with (scripts that check a node is
/// alive append its id).
pub const NODE_KEY_PREFIX: &str = "vessel:node:";

fn node_key(id: &str) -> String {
    format!("{NODE_KEY_PREFIX}{id}")
}
fn lives_key(id: &str) -> String {
    format!("vessel:lives:{id}")
}
fn origin_key(live: &str) -> String {
    format!("vessel:live:{live}:origin")
}
fn epoch_key(live: &str) -> String {
    format!("vessel:live:{live}:epoch")
}

/// KEYS: epoch, origin. ARGV: node, url, floor, ttl ms, channel, live,
/// epoch keep ms. The write is unconditional (the newest caster wins);
/// the epoch is above the counter, the stored claim and the floor.
const CLAIM: &str = r#"
local e = redis.call('INCR', KEYS[1])
local floor = tonumber(ARGV[3])
local cur = redis.call('GET', KEYS[2])
if cur then
  local ok, c = pcall(cjson.decode, cur)
  if ok and type(c) == 'table' and type(c.epoch) == 'number' and c.epoch > floor then
    floor = c.epoch
  end
end
if e <= floor then
  e = floor + 1
  redis.call('SET', KEYS[1], string.format('%d', e))
end
redis.call('PEXPIRE', KEYS[1], ARGV[7])
local claim = '{"node":' .. cjson.encode(ARGV[1]) .. ',"url":' .. cjson.encode(ARGV[2])
  .. ',"epoch":' .. string.format('%d', e) .. '}'
redis.call('SET', KEYS[2], claim, 'PX', ARGV[4])
redis.call('PUBLISH', ARGV[5], '{"kind":"claimed","live":' .. cjson.encode(ARGV[6])
  .. ',"claim":' .. claim .. '}')
return e
"#;

/// KEYS: origin. ARGV: node, epoch, ttl ms. Extends the claim only if it
/// is still this node's with this epoch; returns what is stored.
const REFRESH: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return false end
local ok, c = pcall(cjson.decode, v)
if ok and type(c) == 'table' and c.node == ARGV[1] and c.epoch == tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return v
"#;

/// KEYS: origin. ARGV: node, epoch, channel, live. Deletes the claim only
/// if it is this node's with this epoch (a newer one stays); 1 if it did.
const RELEASE: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local ok, c = pcall(cjson.decode, v)
if ok and type(c) == 'table' and c.node == ARGV[1] and c.epoch == tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[3], '{"kind":"released","live":' .. cjson.encode(ARGV[4])
    .. ',"node":' .. cjson.encode(ARGV[1]) .. ',"epoch":' .. ARGV[2] .. '}')
  return 1
end
return 0
"#;

/// One node's connection to Redis: a [`ConnectionManager`] (one
/// multiplexed connection, re-opened in the background when it drops) for
/// commands, and the client to open subscriptions with.
pub struct Store {
    client: redis::Client,
    /// Shared with the chat and rules commands (`chat.rs`, `rules.rs`).
    pub(super) conn: ConnectionManager,
    claim: redis::Script,
    refresh: redis::Script,
    release: redis::Script,
}

impl Store {
    /// Parses `url` and prepares the connection without opening it: a node
    /// starts whether or not Redis is up (see `Cluster::connect`).
    pub fn new(url: &str) -> redis::RedisResult<Self> {
        let client = redis::Client::open(url)?;
        // Fail fast while Redis is away: a request should get its 503 in
        // about a second, not after the manager's default six retries.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        Ok(Self {
            client,
            conn,
            claim: redis::Script::new(CLAIM),
            refresh: redis::Script::new(REFRESH),
            release: redis::Script::new(RELEASE),
        })
    }

    /// Publishes this node's heartbeat for `ttl_ms`.
    pub async fn heartbeat(&self, info: &NodeInfo, ttl_ms: u64) -> redis::RedisResult<()> {
        let json = serde_json::to_string(info).expect("serializable");
        let mut conn = self.conn.clone();
        redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(node_key(&info.node))
            .arg(json)
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .cmd("ZADD")
            .arg(NODES)
            .arg(info.seen_ms)
            .arg(&info.node)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(NODES)
            .arg("-inf")
            .arg(format!("({}", info.seen_ms.saturating_sub(FORGET_NODE_MS)))
            .ignore()
            .query_async::<()>(&mut conn)
            .await
    }

    /// Every node's last heartbeat still held (expired ones are gone).
    pub async fn nodes(&self) -> redis::RedisResult<Vec<NodeInfo>> {
        self.per_node(node_key, "node heartbeat").await
    }

    /// The JSON record `key(id)` of every node in the node set, those
    /// still held (expired ones are gone); malformed ones are skipped with
    /// a warning naming `what`.
    async fn per_node<T: serde::de::DeserializeOwned>(
        &self,
        key: fn(&str) -> String,
        what: &str,
    ) -> redis::RedisResult<Vec<T>> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = conn.zrange(NODES, 0, -1).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| key(id)).collect();
        let records: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        Ok(records
            .into_iter()
            .flatten()
            .filter_map(|json| match serde_json::from_str(&json) {
                Ok(record) => Some(record),
                Err(e) => {
                    tracing::warn!("ignoring a malformed {what} in Redis: {e}");
                    None
                }
            })
            .collect())
    }

    /// Publishes this node's lives for `ttl_ms`.
    pub async fn publish_lives(&self, lives: &NodeLives, ttl_ms: u64) -> redis::RedisResult<()> {
        let json = serde_json::to_string(lives).expect("serializable");
        let mut conn = self.conn.clone();
        redis::cmd("SET")
            .arg(lives_key(&lives.node))
            .arg(json)
            .arg("PX")
            .arg(ttl_ms)
            .query_async::<()>(&mut conn)
            .await
    }

    /// Every node's lives still held (those of nodes that stopped expired
    /// with their heartbeats).
    pub async fn all_lives(&self) -> redis::RedisResult<Vec<NodeLives>> {
        self.per_node(lives_key, "node's lives").await
    }

    /// The stored claims of `lives`, in order.
    pub async fn origins(&self, lives: &[String]) -> redis::RedisResult<Vec<Option<Claim>>> {
        if lives.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let keys: Vec<String> = lives.iter().map(|l| origin_key(l)).collect();
        let stored: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        Ok(stored
            .into_iter()
            .map(|s| s.and_then(|s| parse_claim(&s)))
            .collect())
    }

    /// Makes `node` the origin of `live` with a new epoch above `floor`,
    /// for `ttl_ms`, and announces it.
    pub async fn claim(
        &self,
        live: &str,
        node: &str,
        url: &str,
        floor: u64,
        ttl_ms: u64,
    ) -> redis::RedisResult<Claim> {
        let mut conn = self.conn.clone();
        let epoch: u64 = self
            .claim
            .key(epoch_key(live))
            .key(origin_key(live))
            .arg(node)
            .arg(url)
            .arg(floor)
            .arg(ttl_ms)
            .arg(CHANNEL)
            .arg(live)
            .arg(EPOCH_KEEP_MS)
            .invoke_async(&mut conn)
            .await?;
        Ok(Claim {
            node: node.to_string(),
            url: url.to_string(),
            epoch,
        })
    }

    /// Extends `ours` for `ttl_ms` if it is still the stored claim; returns
    /// the stored claim either way (`None`: none).
    pub async fn refresh(
        &self,
        live: &str,
        ours: &Claim,
        ttl_ms: u64,
    ) -> redis::RedisResult<Option<Claim>> {
        let mut conn = self.conn.clone();
        let stored: Option<String> = self
            .refresh
            .key(origin_key(live))
            .arg(&ours.node)
            .arg(ours.epoch)
            .arg(ttl_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(stored.and_then(|s| parse_claim(&s)))
    }

    /// Deletes `ours` if it is still the stored claim (and announces it);
    /// true if it was.
    pub async fn release(&self, live: &str, ours: &Claim) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let released: i64 = self
            .release
            .key(origin_key(live))
            .arg(&ours.node)
            .arg(ours.epoch)
            .arg(CHANNEL)
            .arg(live)
            .invoke_async(&mut conn)
            .await?;
        Ok(released == 1)
    }

    /// The stored claim of `live`.
    pub async fn origin(&self, live: &str) -> redis::RedisResult<Option<Claim>> {
        let mut conn = self.conn.clone();
        let stored: Option<String> = conn.get(origin_key(live)).await?;
        Ok(stored.and_then(|s| parse_claim(&s)))
    }

    /// Subscribes to `channels` on a connection of its own (one for all
    /// of them) and hands every message to `heard` with its channel, until
    /// the connection drops (then returns, and the caller subscribes
    /// again). `subscribed` runs once the subscription is in place: what
    /// was published while it was not is read back then.
    pub async fn listen(
        &self,
        channels: &[&str],
        subscribed: impl FnOnce(),
        mut heard: impl FnMut(&str, &str),
    ) -> redis::RedisResult<()> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.subscribe(channels).await?;
        subscribed();
        let mut messages = pubsub.on_message();
        while let Some(msg) = messages.next().await {
            let payload: String = match msg.get_payload() {
                Ok(p) => p,
                Err(_) => continue,
            };
            heard(msg.get_channel_name(), &payload);
        }
        Ok(())
    }
}

fn parse_claim(json: &str) -> Option<Claim> {
    serde_json::from_str(json)
        .map_err(|e| tracing::warn!("ignoring a malformed origin claim in Redis: {e}"))
        .ok()
}
