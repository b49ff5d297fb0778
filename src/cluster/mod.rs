//! A cluster of Vessel nodes coordinated through Redis (`--cluster`): each
//! node publishes a heartbeat with its load, the node a live's caster is
//! on claims the live as its origin (with an epoch), and any node answers
//! where a viewer should play. The rules are in `registry.rs` (no IO), the
//! Redis commands in `redis.rs`, node-to-node request signing in `auth.rs`,
//! and the wiring to the media engine's casts in `casts.rs`. Chat rooms
//! that span nodes are in `chat.rs`, admin-made stream keys and live
//! settings shared by every node in `rules.rs`.
//!
//! Redis being down never stops a node: [`Cluster::connect`] returns at
//! once and keeps trying in the background; until Redis answers (and
//! whenever it stops answering), cross-node calls fail with
//! [`ClusterError::Unavailable`] (HTTP 503 with the reason) while the lives
//! and viewers on each node go on. When Redis is back, heartbeats resume
//! within a second and every live cast here is claimed again.

pub mod audience;
pub mod auth;
pub mod casts;
pub mod chat;
pub mod exposition;
pub mod peerjs;
pub mod redis;
pub mod registry;
pub mod relay;
pub mod relays;
pub mod rules;
pub mod totals;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tracing::Instrument;

pub use registry::{Claim, NodeId, NodeInfo};

use crate::config::ClusterFlags;
use registry::{Announcement, Origins, Placement, Standing};

/// A heartbeat is sent this often...
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// ...and lives this long in Redis: a node that stopped is gone from
/// routing within three seconds.
pub const HEARTBEAT_TTL_MS: u64 = 3_000;
/// An origin claim lives this long unless refreshed...
pub const CLAIM_TTL_MS: u64 = 5_000;
/// ...which its holder does this often (three tries before it lapses).
pub const REFRESH_EVERY: Duration = Duration::from_millis(1_500);
/// A Redis call that takes longer fails as unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// What the node reads of itself for each heartbeat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Viewers it serves now.
    pub viewers: u64,
    /// Bytes it has sent to viewers since it started (a counter: the
    /// heartbeat turns it into bits per second).
    pub egress_bytes: u64,
    /// How busy its media workers are, percent.
    pub cpu_percent: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// Redis does not answer: HTTP maps it to 503.
    #[error(
        "the cluster's Redis is unreachable ({0}); lives on this node go on, but nodes cannot \
         be coordinated until it is back"
    )]
    Unavailable(String),
    /// Every node is at its `--node-capacity`.
    #[error("every node of the cluster is at its --node-capacity; try again later or add a node")]
    Full,
    /// Redis answers but holds no fresh heartbeat (it has just restarted).
    #[error("no node of the cluster has sent a heartbeat lately; try again in a few seconds")]
    NoNodes,
    /// The flags cannot work (a bad URL, no secret).
    #[error("{0}")]
    Config(String),
}

impl From<::redis::RedisError> for ClusterError {
    fn from(e: ::redis::RedisError) -> Self {
        ClusterError::Unavailable(e.to_string())
    }
}

/// What the origin of a live hears about its claim. The relay and the
/// cast wiring subscribe with [`Cluster::claim_events`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimEvent {
    /// Another node's caster of `live` is newer: `ours` is stale and the
    /// local cast must end (as a replaced caster does on one node).
    Lost {
        live: String,
        ours: Claim,
        by: Claim,
    },
}

/// Where a viewer of a live should play.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Route {
    pub node: NodeId,
    pub url: String,
    /// Whether that node is the live's origin (its caster is there).
    pub origin: bool,
    /// Every fresh node's URL, by node id: where a client asks again when
    /// the node it asked first is gone.
    pub nodes: Vec<String>,
}

/// This node's membership of the cluster. Shared as `Arc<Cluster>`.
pub struct Cluster {
    node: NodeId,
    /// `--cast-redirect`: WHIP casters of a live cast elsewhere go there.
    cast_redirect: bool,
    url: String,
    secret: Vec<u8>,
    capacity: u64,
    store: redis::Store,
    /// Whether Redis answered the last call (for logging the changes).
    up: AtomicBool,
    /// Origins as heard (pub/sub, reads).
    origins: Mutex<Origins>,
    /// Edges' watches of origins, by live.
    watches: Mutex<HashMap<String, watch::Sender<Option<Claim>>>>,
    /// Lives cast here: the claim each holds (`None`: not made yet, Redis
    /// was unreachable; the refresh loop makes it when Redis is back).
    held: Mutex<HashMap<String, Option<Claim>>>,
    events: broadcast::Sender<ClaimEvent>,
    /// The relays this node runs as an edge (`relays.rs`).
    pub relays: Arc<relays::Relays>,
    /// The cast sessions here that are relays from another node's origin:
    /// on air here, but no claim of the live (`casts.rs` skips them).
    relay_casts: Mutex<std::collections::HashSet<crate::sfu::PeerId>>,
    /// Chat heard on `vessel:chat`, for this node's rooms (`chat.rs`).
    chat: broadcast::Sender<chat::Heard>,
    /// Live rules heard on `vessel:rules` (`rules.rs`).
    rules: broadcast::Sender<rules::Heard>,
    /// PeerJS messages for this node's peers (`peerjs.rs`).
    peerjs: broadcast::Sender<peerjs::Forwarded>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn timed<T>(call: impl Future<Output = ::redis::RedisResult<T>>) -> Result<T, ClusterError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ClusterError::Unavailable(format!(
            "no answer within {} s",
            CALL_TIMEOUT.as_secs()
        ))),
    }
}

impl Cluster {
    /// Joins the cluster: parses the flags and starts the heartbeat, claim
    /// refresh and pub/sub tasks. Redis being down is not an error here (a
    /// node must start, and serve its own lives, without it): the tasks
    /// log it and keep trying, and calls fail with `Unavailable` until it
    /// answers. Errors only for flags that can never work.
    pub async fn connect(
        cfg: &ClusterFlags,
        node_url: String,
        load: impl Fn() -> Load + Send + Sync + 'static,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let url = cfg
            .cluster
            .as_deref()
            .ok_or_else(|| ClusterError::Config("--cluster is not set".into()))?;
        let secret = cfg
            .cluster_secret
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                ClusterError::Config(
                    "--cluster needs --cluster-secret (VESSEL_CLUSTER_SECRET): the same secret \
                     on every node, which signs their requests to one another"
                        .into(),
                )
            })?;
        let store = redis::Store::new(url).map_err(|e| {
            ClusterError::Config(format!(
                "--cluster {url}: {e} (expected redis://HOST:6379/0)"
            ))
        })?;
        let node: NodeId = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
        let cluster = Arc::new(Cluster {
            node,
            url: node_url,
            secret: secret.as_bytes().to_vec(),
            capacity: cfg.node_capacity.unwrap_or(0),
            cast_redirect: cfg.cast_redirect,
            store,
            up: AtomicBool::new(true),
            origins: Mutex::default(),
            watches: Mutex::default(),
            held: Mutex::default(),
            events: broadcast::channel(64).0,
            relays: Arc::default(),
            relay_casts: Mutex::default(),
            chat: broadcast::channel(1024).0,
            rules: broadcast::channel(256).0,
            peerjs: broadcast::channel(1024).0,
        });
        tracing::info!(
            node = %cluster.node,
            url = %cluster.url,
            capacity = cluster.capacity,
            "joining the cluster at {}",
            redacted(url)
        );
        tokio::spawn(cluster.clone().heartbeats(load));
        tokio::spawn(cluster.clone().refreshes());
        tokio::spawn(cluster.clone().subscription());
        Ok(cluster)
    }

    pub fn node_id(&self) -> &str {
        &self.node
    }

    pub fn node_url(&self) -> &str {
        &self.url
    }

    /// The cluster secret (for signing node-to-node requests, `auth.rs`).
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Makes this node the origin of `live` with a new epoch: called when a
    /// caster goes on air here. Unconditional (the newest caster wins, as
    /// on one node); the node whose claim this replaces hears it on the
    /// pub/sub channel, or at its next refresh, and ends its cast. If Redis
    /// is unreachable the live is still remembered as cast here and
    /// claimed when Redis is back.
    pub async fn claim(&self, live: &str) -> Result<Claim, ClusterError> {
        lock(&self.held).entry(live.to_string()).or_insert(None);
        let floor = lock(&self.origins).floor(live);
        let claim = self.call(
            self.store
                .claim(live, &self.node, &self.url, floor, CLAIM_TTL_MS),
        );
        let claim = claim.await?;
        tracing::info!(live, epoch = claim.epoch, "this node is the live's origin");
        // Two claims of one live may cross (a cast start and the refresh
        // loop retrying): the higher epoch is the one stored.
        if let Some(held) = lock(&self.held).get_mut(live)
            && held.as_ref().is_none_or(|h| h.epoch < claim.epoch)
        {
            *held = Some(claim.clone());
        }
        self.heard(live, claim.clone());
        Ok(claim)
    }

    /// Hears when this node's claims are taken by another node.
    pub fn claim_events(&self) -> broadcast::Receiver<ClaimEvent> {
        self.events.subscribe()
    }

    /// Whether `live`'s caster is on this node (its claim made, or waiting
    /// for Redis): only then may another node relay it from here.
    pub fn casts_here(&self, live: &str) -> bool {
        lock(&self.held).contains_key(live)
    }

    /// Cast session `peer` here is a relay from another node (or no longer
    /// is, `false`): its cast claims nothing.
    pub fn mark_relay_cast(&self, peer: crate::sfu::PeerId, relay: bool) {
        let mut casts = lock(&self.relay_casts);
        if relay {
            casts.insert(peer);
        } else {
            casts.remove(&peer);
        }
    }

    pub fn is_relay_cast(&self, peer: crate::sfu::PeerId) -> bool {
        lock(&self.relay_casts).contains(&peer)
    }

    /// The claim this node holds for `live`, if any (`None` also while a
    /// claim waits for Redis).
    pub fn held(&self, live: &str) -> Option<Claim> {
        lock(&self.held).get(live).cloned().flatten()
    }

    /// The cast of `live` here ended: drop the claim of `epoch` (0: the
    /// claim never reached Redis). A newer claim, by this node or another,
    /// stays.
    pub async fn release(&self, live: &str, epoch: u64) {
        {
            let mut held = lock(&self.held);
            let ours = held.get(live).cloned();
            match ours {
                Some(None) => {
                    held.remove(live);
                }
                Some(Some(c)) if c.epoch == epoch => {
                    held.remove(live);
                }
                _ => {}
            }
        }
        if epoch == 0 {
            return;
        }
        let ours = Claim {
            node: self.node.clone(),
            url: self.url.clone(),
            epoch,
        };
        match self.call(self.store.release(live, &ours)).await {
            Ok(true) => {
                tracing::info!(live, epoch, "origin claim released");
                if lock(&self.origins).gone(live, Some(epoch)) {
                    self.publish_origin(live);
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(live, epoch, "cannot release the origin claim: {e}"),
        }
    }

    /// The origin of `live` as stored in Redis now.
    pub async fn origin(&self, live: &str) -> Result<Option<Claim>, ClusterError> {
        let stored = self.call(self.store.origin(live)).await?;
        self.read_back(live, stored.clone());
        Ok(stored)
    }

    /// The origin of `live` as it moves: fed by the pub/sub channel at
    /// once, and by a read every [`REFRESH_EVERY`] (which also covers
    /// messages missed while the subscription was down). Starts with what
    /// this node last heard.
    pub fn watch_origin(&self, live: &str) -> watch::Receiver<Option<Claim>> {
        let known = lock(&self.origins).get(live).cloned();
        let mut watches = lock(&self.watches);
        watches
            .entry(live.to_string())
            .or_insert_with(|| watch::channel(known).0)
            .subscribe()
    }

    /// Where a new viewer of `live` should play: the least-loaded node
    /// with room among those with a fresh heartbeat (`registry::place`:
    /// the origin wins only ties). `avoid`: a node the client could not
    /// reach, taken only if no other has room.
    pub async fn route(&self, live: &str, avoid: Option<&str>) -> Result<Route, ClusterError> {
        let nodes = self.nodes().await?;
        let origin = self.origin(live).await?;
        let origin_node = origin.as_ref().map(|c| c.node.as_str());
        let now = auth::unix_ms();
        let fresh = fresh_urls(&nodes, now);
        match registry::place(&nodes, origin_node, avoid, now, HEARTBEAT_TTL_MS) {
            Placement::Node(n) => Ok(Route {
                origin: Some(n.node.as_str()) == origin_node,
                node: n.node,
                url: n.url,
                nodes: fresh,
            }),
            Placement::Full => Err(ClusterError::Full),
            Placement::NoNodes => Err(ClusterError::NoNodes),
        }
    }

    /// Where a new caster of `live` should cast, if not here: the live's
    /// origin when it is another node with a fresh heartbeat (and
    /// `--cast-redirect` is on, as by default). Casting there
    /// keeps the live where its edges' relays already are; a new caster
    /// elsewhere would take the live over (the newest caster wins) and
    /// move every relay. `None` when the live has no origin, the origin is
    /// this node or looks dead, or Redis is unreachable (a caster is never
    /// turned away for the cluster's sake).
    /// `avoid`: a node the caster could not reach (taken as dead).
    pub async fn cast_elsewhere(&self, live: &str, avoid: Option<&str>) -> Option<Claim> {
        if !self.cast_redirect {
            return None;
        }
        let claim = self.origin(live).await.ok()??;
        if claim.node == self.node || Some(claim.node.as_str()) == avoid {
            return None;
        }
        let now = auth::unix_ms();
        let nodes = self.nodes().await.ok()?;
        nodes
            .iter()
            .any(|n| n.node == claim.node && n.fresh(now, HEARTBEAT_TTL_MS))
            .then_some(claim)
    }

    /// The URLs of every node with a fresh heartbeat, by node id: where a
    /// client asks again when the node it used is gone.
    pub async fn fresh_urls(&self) -> Result<Vec<String>, ClusterError> {
        Ok(fresh_urls(&self.nodes().await?, auth::unix_ms()))
    }

    /// Publishes this node's lives (`audience.rs`) for a heartbeat's
    /// lifetime.
    pub async fn publish_lives(&self, lives: &totals::NodeLives) -> Result<(), ClusterError> {
        self.call(self.store.publish_lives(lives, HEARTBEAT_TTL_MS))
            .await
    }

    /// Every node's lives as last published (this node's too).
    pub async fn all_lives(&self) -> Result<Vec<totals::NodeLives>, ClusterError> {
        self.call(self.store.all_lives()).await
    }

    /// The origin claims of `lives` as stored now, in order.
    pub async fn origins(&self, lives: &[String]) -> Result<Vec<Option<Claim>>, ClusterError> {
        self.call(self.store.origins(lives)).await
    }

    /// Every node with a heartbeat in Redis, by id.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, ClusterError> {
        let mut nodes = self.call(self.store.nodes()).await?;
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(nodes)
    }

    /// Runs a Redis call with a deadline, noting whether Redis answered.
    async fn call<T>(
        &self,
        call: impl Future<Output = ::redis::RedisResult<T>>,
    ) -> Result<T, ClusterError> {
        let result = timed(call).await;
        let up = result.is_ok();
        if self.up.swap(up, Ordering::Relaxed) != up {
            match &result {
                Ok(_) => tracing::info!("the cluster's Redis answers again"),
                Err(e) => tracing::warn!("{e}"),
            }
        }
        result
    }

    /// A claim announced or made: remember it if it is the newest, tell the
    /// watchers, and if it takes a live cast here, say the claim is lost.
    fn heard(&self, live: &str, claim: Claim) {
        if lock(&self.origins).heard(live, claim.clone()) {
            self.publish_origin(live);
        }
        self.check_held(live, &claim, false);
    }

    /// A read of `live`'s claim came back.
    fn read_back(&self, live: &str, stored: Option<Claim>) {
        match stored {
            Some(c) => self.heard(live, c),
            None => {
                if lock(&self.origins).gone(live, None) {
                    self.publish_origin(live);
                }
            }
        }
    }

    /// Whether the claim `by` takes `live` from this node. Heard on the
    /// channel or read, it must be newer than ours (a message or read that
    /// was on its way while this node claimed must not end the new cast);
    /// `settled` (the refresh script found it stored in place of ours) it
    /// takes the live whatever its epoch: writes are unconditional, so it
    /// came later.
    fn check_held(&self, live: &str, by: &Claim, settled: bool) {
        // A claim by this node itself is a newer cast here, which took
        // over locally already (and `claim` records it).
        if by.node == self.node {
            return;
        }
        let ours = {
            let mut held = lock(&self.held);
            match held.get(live) {
                Some(Some(ours)) if settled || by.epoch > ours.epoch => {
                    let ours = ours.clone();
                    held.remove(live);
                    ours
                }
                _ => return,
            }
        };
        tracing::info!(
            live,
            epoch = ours.epoch,
            by = %by.node,
            by_epoch = by.epoch,
            "another node's caster took the live: ending the cast here"
        );
        let _ = self.events.send(ClaimEvent::Lost {
            live: live.to_string(),
            ours,
            by: by.clone(),
        });
    }

    fn publish_origin(&self, live: &str) {
        let known = lock(&self.origins).get(live).cloned();
        let mut watches = lock(&self.watches);
        if let Some(tx) = watches.get(live) {
            if tx.receiver_count() == 0 {
                watches.remove(live);
            } else {
                tx.send_if_modified(|v| {
                    let changed = *v != known;
                    *v = known.clone();
                    changed
                });
            }
        }
    }

    /// Sends a heartbeat every [`HEARTBEAT_EVERY`], whether Redis answered
    /// the last one or not: the first that gets through re-registers the
    /// node (after a Redis restart too).
    async fn heartbeats(self: Arc<Self>, load: impl Fn() -> Load + Send + Sync + 'static) {
        let mut last: Option<(u64, u64)> = None;
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = auth::unix_ms();
            let l = load();
            let egress_bps = last.map_or(0, |b| registry::bit_rate(b, (now, l.egress_bytes)));
            last = Some((now, l.egress_bytes));
            let info = NodeInfo {
                node: self.node.clone(),
                url: self.url.clone(),
                viewers: l.viewers,
                egress_bps,
                cpu_percent: l.cpu_percent,
                capacity: self.capacity,
                seen_ms: now,
            };
            let _ = self
                .call(self.store.heartbeat(&info, HEARTBEAT_TTL_MS))
                .await;
        }
    }

    /// Every [`REFRESH_EVERY`]: extends this node's claims (or learns they
    /// were taken, or makes those Redis lost or never got), and re-reads
    /// the origins edges watch.
    async fn refreshes(self: Arc<Self>) {
        let mut tick = tokio::time::interval(REFRESH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let held: Vec<(String, Option<Claim>)> = lock(&self.held)
                .iter()
                .map(|(l, c)| (l.clone(), c.clone()))
                .collect();
            for (live, ours) in held {
                let span = tracing::info_span!("refresh", %live);
                self.refresh(&live, ours).instrument(span).await;
            }
            for live in self.watched() {
                let _ = self.origin(&live).await;
            }
        }
    }

    /// The lives edges still watch; watches nobody holds any more go.
    fn watched(&self) -> Vec<String> {
        let mut watches = lock(&self.watches);
        watches.retain(|_, tx| tx.receiver_count() > 0);
        watches.keys().cloned().collect()
    }

    /// Extends (or makes, or gives up) this node's claim of `live`.
    async fn refresh(&self, live: &str, ours: Option<Claim>) {
        let Some(ours) = ours else {
            if let Err(e) = self.claim(live).await {
                tracing::debug!("claim still waits for Redis: {e}");
            }
            return;
        };
        let refreshed = self.call(self.store.refresh(live, &ours, CLAIM_TTL_MS));
        // Unreachable (logged by `call`): the claim is kept locally and the
        // cast goes on; the next refresh tries again.
        let Ok(stored) = refreshed.await else {
            return;
        };
        match registry::standing(&ours, stored.as_ref()) {
            Standing::Held => {}
            Standing::Vacant => {
                tracing::info!(
                    epoch = ours.epoch,
                    "the origin claim was gone from Redis; claiming again"
                );
                let _ = self.claim(live).await;
            }
            Standing::Lost(by) if by.node == self.node => {
                // A newer claim of ours crossed this one.
                if let Some(held) = lock(&self.held).get_mut(live)
                    && held.as_ref().is_some_and(|h| h.epoch < by.epoch)
                {
                    *held = Some(by);
                }
            }
            Standing::Lost(by) => {
                self.check_held(live, &by, true);
                self.heard(live, by);
            }
        }
    }

    /// Listens to the claims channel, re-subscribing whenever the
    /// connection drops; after each (re)subscription, re-reads the watched
    /// origins (what was announced in between was missed).
    async fn subscription(self: Arc<Self>) {
        loop {
            let (tx, mut subscribed) = tokio::sync::oneshot::channel();
            let me = self.clone();
            let listening = self.store.listen(
                &[
                    redis::CHANNEL,
                    chat::CHANNEL,
                    rules::CHANNEL,
                    peerjs::CHANNEL,
                ],
                move || {
                    let _ = tx.send(());
                },
                |channel, payload| me.dispatch(channel, payload),
            );
            let resync = async {
                if subscribed.try_recv().is_err() && (&mut subscribed).await.is_err() {
                    return;
                }
                tracing::debug!("subscribed to the cluster's channels");
                // Chat rooms and rules catch up on what was missed.
                let _ = self.chat.send(chat::Heard::Resync);
                let _ = self.rules.send(rules::Heard::Resync);
                for live in self.watched() {
                    let _ = self.origin(&live).await;
                }
                std::future::pending::<()>().await
            };
            tokio::select! {
                r = listening => {
                    if let Err(e) = r {
                        tracing::debug!("claims subscription: {e}");
                    }
                }
                () = resync => {}
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// A message on one of the channels, handed to whoever follows it.
    fn dispatch(&self, channel: &str, payload: &str) {
        match channel {
            redis::CHANNEL => match serde_json::from_str(payload) {
                Ok(a) => self.announced(a),
                Err(e) => tracing::warn!("ignoring a malformed message on {channel}: {e}"),
            },
            chat::CHANNEL => match serde_json::from_str(payload) {
                Ok(heard) => {
                    let _ = self.chat.send(heard);
                }
                Err(e) => tracing::warn!("ignoring a malformed message on {channel}: {e}"),
            },
            peerjs::CHANNEL => match serde_json::from_str::<peerjs::Forwarded>(payload) {
                Ok(message) => {
                    if message.node == self.node {
                        let _ = self.peerjs.send(message);
                    }
                }
                Err(e) => tracing::warn!("ignoring a malformed message on {channel}: {e}"),
            },
            rules::CHANNEL => match serde_json::from_str::<rules::Stored>(payload) {
                Ok(stored) => {
                    let _ = self.rules.send(rules::Heard::Changed(stored));
                }
                Err(e) => tracing::warn!("ignoring a malformed message on {channel}: {e}"),
            },
            _ => {}
        }
    }

    fn announced(&self, a: Announcement) {
        match a {
            Announcement::Claimed { live, claim } => self.heard(&live, claim),
            Announcement::Released { live, epoch, .. } => {
                if lock(&self.origins).gone(&live, Some(epoch)) {
                    self.publish_origin(&live);
                }
            }
        }
    }
}

/// The Redis URL without a password, for logs.
fn redacted(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://…@{}", &url[at + 1..]),
        _ => url.to_string(),
    }
}

fn fresh_urls(nodes: &[NodeInfo], now_ms: u64) -> Vec<String> {
    nodes
        .iter()
        .filter(|n| n.fresh(now_ms, HEARTBEAT_TTL_MS))
        .map(|n| n.url.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_the_logs() {
        assert_eq!(
            redacted("redis://:hunter2@db:6379/0"),
            "redis://…@db:6379/0"
        );
        assert_eq!(redacted("redis://db:6379/0"), "redis://db:6379/0");
    }
}
