//! Stream keys and live settings made through the admin API, shared by
//! every node through Redis so that each enforces them, and kept there so
//! that they survive node restarts.
//!
//! - hash `vessel:rules`: live → its rules as JSON ([`Stored`]: the
//!   `LiveRules` fields, the live, and a version).
//! - channel `vessel:rules`: every change, the same JSON.
//!
//! The config file's lives are the base: a live the admin API never
//! changed is as the file says. A change is one Lua script that merges the
//! admin's patch (`access::RulesPatch`) into what Redis holds (or, the
//! first time, into the calling node's rules for the live, i.e. its config
//! file's), stores it, and publishes it, so two admins changing one live
//! on two nodes at once each change their field and neither undoes the
//! other. Every node applies what it hears (`access::Access::apply_stored`);
//! the version is Redis's clock in microseconds, so a change heard late,
//! or read back while a newer one is on its way, does not undo a newer
//! one, and versions keep increasing across a Redis restart.
//!
//! A node loads the whole hash before it serves (`load`), and again each
//! time its subscription is back (what changed meanwhile was missed).
//! While Redis is unreachable, a node keeps enforcing what it knows and the
//! admin API's changes are refused with 503: a change made on one node
//! only would be a key some nodes take and others refuse.
//!
//! Keys are stored as they are (the cluster's Redis is trusted with them,
//! as it is with the cluster secret's work) but never logged.

use std::sync::{Arc, LazyLock};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::{Cluster, ClusterError};
use crate::access::{Access, LiveRules, RulesPatch};
use crate::media::MediaHandle;

pub const CHANNEL: &str = "vessel:rules";
const RULES: &str = "vessel:rules";

/// A live's rules as Redis holds and publishes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    pub live: String,
    #[serde(flatten)]
    pub rules: LiveRules,
    /// Redis's clock when it was stored, microseconds.
    pub v: u64,
}

/// What the rules follower hears.
#[derive(Debug, Clone)]
pub enum Heard {
    Changed(Stored),
    /// This node (re)subscribed: load everything again.
    Resync,
}

/// KEYS: the rules hash. ARGV: live, base rules (JSON), patch (JSON),
/// channel. Returns the rules before (JSON) and the stored record.
/// `v` is spliced in as text: cjson would print 16 digits as a float.
const CHANGE: &str = r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local before = cur or ARGV[2]
local r = cjson.decode(before)
for k, v in pairs(cjson.decode(ARGV[3])) do r[k] = v end
r.v = nil
r.live = ARGV[1]
local t = redis.call('TIME')
local v = string.format('%d', tonumber(t[1]) * 1000000 + tonumber(t[2]))
local stored = '{"v":' .. v .. ',' .. string.sub(cjson.encode(r), 2)
redis.call('HSET', KEYS[1], ARGV[1], stored)
redis.call('PUBLISH', ARGV[4], stored)
return {before, stored}
"#;

static CHANGE_SCRIPT: LazyLock<::redis::Script> = LazyLock::new(|| ::redis::Script::new(CHANGE));

fn parse(json: &str) -> Option<Stored> {
    serde_json::from_str(json)
        .map_err(|e| tracing::warn!("ignoring malformed live rules in Redis: {e}"))
        .ok()
}

impl Cluster {
    /// Changes `live`'s rules for the whole cluster: `base` is what this
    /// node has for it (used if Redis holds nothing for the live yet).
    /// Returns the rules before and the record stored.
    pub async fn change_rules(
        &self,
        live: &str,
        base: &LiveRules,
        patch: &RulesPatch,
    ) -> Result<(LiveRules, Stored), ClusterError> {
        let mut conn = self.store.conn.clone();
        let mut call = CHANGE_SCRIPT.key(RULES);
        call.arg(live)
            .arg(serde_json::to_string(base).expect("serializable"))
            .arg(serde_json::to_string(patch).expect("serializable"))
            .arg(CHANNEL);
        let (before, stored): (String, String) = self.call(call.invoke_async(&mut conn)).await?;
        let before: LiveRules = serde_json::from_str(&before).unwrap_or_default();
        let stored = parse(&stored).ok_or_else(|| {
            ClusterError::Unavailable("Redis stored live rules this node cannot read".into())
        })?;
        Ok((before, stored))
    }

    /// Every live's rules stored in Redis.
    pub async fn stored_rules(&self) -> Result<Vec<Stored>, ClusterError> {
        let mut conn = self.store.conn.clone();
        let all: Vec<String> = self
            .call(::redis::cmd("HVALS").arg(RULES).query_async(&mut conn))
            .await?;
        Ok(all.iter().filter_map(|j| parse(j)).collect())
    }

    /// Rules changes heard from every node (this one's included).
    pub fn rules_events(&self) -> broadcast::Receiver<Heard> {
        self.rules.subscribe()
    }
}

/// Takes every live's rules stored in Redis; how many there were.
pub async fn load(cluster: &Cluster, access: &Access) -> Result<usize, ClusterError> {
    let stored = cluster.stored_rules().await?;
    let n = stored.len();
    for s in stored {
        apply(access, None, s).await;
    }
    Ok(n)
}

/// Applies heard rules; a key revoked elsewhere ends the live's cast here
/// too (as `DELETE /api/lives/{live}` does on the node it is sent to).
async fn apply(access: &Access, media: Option<&MediaHandle>, stored: Stored) {
    let Stored { live, rules, v } = stored;
    let revoked = rules.key.is_none();
    let Some(before) = access.apply_stored(&live, rules, v) else {
        return;
    };
    if revoked
        && before.key.is_some()
        && let Some(media) = media
    {
        tracing::info!(%live, "stream key revoked on another node: ending the cast here");
        media.end_casts(&live).await;
    }
}

/// Keeps `access` in step with the cluster: every heard change is applied,
/// and everything is read again after each (re)subscription or when this
/// follower fell behind.
pub async fn follow(cluster: Arc<Cluster>, access: Arc<Access>, media: MediaHandle) {
    let mut heard = cluster.rules_events();
    loop {
        match heard.recv().await {
            Ok(Heard::Changed(stored)) => apply(&access, Some(&media), stored).await,
            Ok(Heard::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => {
                match load(&cluster, &access).await {
                    Ok(n) => tracing::debug!(lives = n, "live rules read from Redis"),
                    Err(e) => tracing::debug!("live rules not read: {e}"),
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_rules_read_back_as_the_script_writes_them() {
        let json =
            r#"{"v":1733356800123456,"key":"k1","private":true,"record":false,"live":"show"}"#;
        let s = parse(json).unwrap();
        assert_eq!(s.live, "show");
        assert_eq!(s.v, 1_733_356_800_123_456);
        assert_eq!(s.rules.key.as_deref(), Some("k1"));
        assert!(s.rules.private);
        // A revoked key is stored as null; missing fields are defaults.
        let s = parse(r#"{"v":2,"key":null,"live":"x"}"#).unwrap();
        assert_eq!(s.rules, LiveRules::default());
    }
}
