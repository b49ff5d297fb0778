//! PeerJS ids across the cluster's nodes, through Redis.
//!
//! PeerJS media goes browser to browser; the server only passes signaling
//! between ids. Behind one hostname the caller and the callee may reach
//! different nodes, so an id is found wherever it connected:
//!
//! - `vessel:peerjs:{id}`: `"{tag} {node}"`, the node holding the id and a
//!   tag of the peer's token (an HMAC with the cluster secret: Redis never
//!   holds the token, which lets its holder take the id back). `PX` 30 s,
//!   refreshed every 10 s by the node while the peer is there; deleted
//!   when it leaves.
//! - channel `vessel:peerjs`: a message for an id on another node, as
//!   [`Forwarded`]; only that node delivers it.
//!
//! Why this way:
//!
//! - An id is refused (`ID-TAKEN`) if another token holds it on another
//!   live node (its heartbeat key exists): a node that died leaves no id
//!   taken for longer than its heartbeat's TTL. The same token on another
//!   node takes it over, as a reconnecting peer does on one node.
//! - One node's messages go out through one task, in order (PeerJS sends
//!   an `OFFER` and then its `CANDIDATE`s), and one Redis connection
//!   publishes them, so they arrive in order.
//! - A message for an id connected nowhere waits on the sender's node, as
//!   on one node (`EXPIRE` after 5 s); it is not handed to a peer that
//!   connects to another node meanwhile.
//! - Redis unreachable: each node is its own PeerServer again.

use std::sync::LazyLock;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::broadcast;

use super::{Cluster, ClusterError};

pub const CHANNEL: &str = "vessel:peerjs";
/// An id's record lives this long unless refreshed.
pub const TTL_MS: u64 = 30_000;
/// How often a node refreshes its ids' records.
pub const REFRESH: std::time::Duration = std::time::Duration::from_secs(10);

fn id_key(id: &str) -> String {
    format!("vessel:peerjs:{id}")
}

/// A message for a peer on another node, as published on [`CHANNEL`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forwarded {
    /// The node holding `dst`.
    pub node: String,
    pub dst: String,
    /// The message as the peer gets it (JSON, `src` set by the server).
    pub text: String,
}

/// KEYS: the id's record. ARGV: record, node, heartbeat key prefix. 0 if
/// another token holds the id on another live node (an id held here is
/// this node's PeerServer's to judge).
const FREE: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v or v == ARGV[1] then return 1 end
local sep = string.find(v, ' ', 1, true)
if not sep then return 1 end
local node = string.sub(v, sep + 1)
local tag = string.sub(v, 1, sep - 1)
local mine = string.sub(ARGV[1], 1, string.find(ARGV[1], ' ', 1, true) - 1)
if tag ~= mine and node ~= ARGV[2] and redis.call('EXISTS', ARGV[3] .. node) == 1 then
  return 0
end
return 1
"#;

/// KEYS: the records. ARGV: ttl ms, then each record. Refreshes the ones
/// still this node's, and puts back the ones gone (Redis restarted empty).
const REFRESH_ALL: &str = r#"
for i, k in ipairs(KEYS) do
  local v = redis.call('GET', k)
  if not v or v == ARGV[i + 1] then
    redis.call('SET', k, ARGV[i + 1], 'PX', ARGV[1])
  end
end
return 0
"#;

/// KEYS: the record. ARGV: the record. Deletes it if it is still that.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 0
"#;

/// KEYS: the record. ARGV: heartbeat key prefix. The holding node, if alive.
const FIND: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return false end
local sep = string.find(v, ' ', 1, true)
if not sep then return false end
local node = string.sub(v, sep + 1)
if redis.call('EXISTS', ARGV[1] .. node) == 1 then return node end
return false
"#;

static FREE_SCRIPT: LazyLock<::redis::Script> = LazyLock::new(|| ::redis::Script::new(FREE));
static REFRESH_SCRIPT: LazyLock<::redis::Script> =
    LazyLock::new(|| ::redis::Script::new(REFRESH_ALL));
static RELEASE_SCRIPT: LazyLock<::redis::Script> = LazyLock::new(|| ::redis::Script::new(RELEASE));
static FIND_SCRIPT: LazyLock<::redis::Script> = LazyLock::new(|| ::redis::Script::new(FIND));

/// An id's record as stored: the token's tag, then the node.
fn record(secret: &[u8], token: &str, node: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(b"peerjs-token\0");
    mac.update(token.as_bytes());
    let tag = mac.finalize().into_bytes();
    let hex: String = tag[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex} {node}")
}

impl Cluster {
    /// Whether a peer may take `id` here with `token`: false if another
    /// token holds it on another live node (the peer gets `ID-TAKEN`).
    pub async fn peerjs_free(&self, id: &str, token: &str) -> Result<bool, ClusterError> {
        let mut conn = self.store.conn.clone();
        let mut call = FREE_SCRIPT.key(id_key(id));
        call.arg(record(&self.secret, token, &self.node))
            .arg(&self.node)
            .arg(super::redis::NODE_KEY_PREFIX);
        let free: i64 = self.call(call.invoke_async(&mut conn)).await?;
        Ok(free == 1)
    }

    /// A peer took `id` here with `token`: other nodes find it here now.
    pub async fn peerjs_joined(&self, id: &str, token: &str) -> Result<(), ClusterError> {
        let mut conn = self.store.conn.clone();
        let set = ::redis::cmd("SET")
            .arg(id_key(id))
            .arg(record(&self.secret, token, &self.node))
            .arg("PX")
            .arg(TTL_MS)
            .to_owned();
        self.call(set.query_async::<()>(&mut conn)).await
    }

    /// Keeps this node's ids recorded (`ids`: id and token).
    pub async fn peerjs_refresh(&self, ids: &[(String, String)]) -> Result<(), ClusterError> {
        let mut conn = self.store.conn.clone();
        for chunk in ids.chunks(500) {
            let mut call = REFRESH_SCRIPT.prepare_invoke();
            call.arg(TTL_MS);
            for (id, token) in chunk {
                call.key(id_key(id))
                    .arg(record(&self.secret, token, &self.node));
            }
            self.call(call.invoke_async::<i64>(&mut conn)).await?;
        }
        Ok(())
    }

    /// A peer left this node: its id is free (if it is still ours).
    pub async fn peerjs_release(&self, id: &str, token: &str) -> Result<(), ClusterError> {
        let mut conn = self.store.conn.clone();
        let mut call = RELEASE_SCRIPT.key(id_key(id));
        call.arg(record(&self.secret, token, &self.node));
        self.call(call.invoke_async::<i64>(&mut conn)).await?;
        Ok(())
    }

    /// Carries `text` to `dst` on the live node holding it; false if no
    /// node does (or this one does: the caller holds it here).
    pub async fn peerjs_forward(&self, dst: &str, text: &str) -> Result<bool, ClusterError> {
        let mut conn = self.store.conn.clone();
        let mut call = FIND_SCRIPT.key(id_key(dst));
        call.arg(super::redis::NODE_KEY_PREFIX);
        let node: Option<String> = self.call(call.invoke_async(&mut conn)).await?;
        let Some(node) = node.filter(|n| *n != self.node) else {
            return Ok(false);
        };
        let message = Forwarded {
            node,
            dst: dst.to_string(),
            text: text.to_string(),
        };
        let payload = serde_json::to_string(&message).expect("plain strings");
        self.call(
            ::redis::cmd("PUBLISH")
                .arg(CHANNEL)
                .arg(payload)
                .query_async::<i64>(&mut conn),
        )
        .await?;
        Ok(true)
    }

    /// Messages from other nodes for PeerJS peers on this one.
    pub fn peerjs_events(&self) -> broadcast::Receiver<Forwarded> {
        self.peerjs.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_names_the_node_and_hides_the_token() {
        let r = record(b"secret", "tok-123", "n1");
        let (tag, node) = r.split_once(' ').unwrap();
        assert_eq!(node, "n1");
        assert_eq!(tag.len(), 24);
        assert!(!r.contains("tok-123"));
        assert_eq!(r, record(b"secret", "tok-123", "n1"), "stable");
        assert_ne!(
            tag,
            record(b"secret", "tok-124", "n1")
                .split_once(' ')
                .unwrap()
                .0
        );
        assert_ne!(
            tag,
            record(b"other", "tok-123", "n1").split_once(' ').unwrap().0
        );
    }

    #[test]
    fn a_forwarded_message_reads_back() {
        let m = Forwarded {
            node: "n2".into(),
            dst: "bob".into(),
            text: r#"{"type":"OFFER","src":"alice"}"#.into(),
        };
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Forwarded>(&text).unwrap(), m);
    }
}
