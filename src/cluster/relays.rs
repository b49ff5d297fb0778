//! An edge's relays: one per live its viewers watch whose origin is
//! another node. Opened by the first viewer, following the origin when it
//! moves, ended [`LINGER`] after the last viewer left.
//!
//! WHEP and the socket.io face call [`Relays::ensure`] as a viewer arrives
//! (the viewer's first keyframe then waits only for the relay). Every other
//! way of watching (PeerJS calls, SkyWay rooms, whatever comes next) is
//! caught by [`Relays::watch_viewers`], which looks at the live board's
//! viewer counts: no face can forget to open its relay.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::relay::{self, Relay, Upstream};
use super::{Claim, Cluster, auth};
use crate::http::AppState;

/// A relay outlives its last viewer by this much: a viewer that reloads
/// its page finds it still running.
pub const LINGER: Duration = Duration::from_secs(5);

/// A relay that could not open is tried again after this.
const RETRY: Duration = Duration::from_secs(1);

/// How often [`Relays::watch_viewers`] looks at the board: a viewer that
/// no face announced waits at most this long for its relay to start.
const SCAN_EVERY: Duration = Duration::from_millis(250);

/// How often the follower looks at its viewers and the origin (it also
/// wakes at once when the origin moves).
const LOOK_EVERY: Duration = Duration::from_millis(500);

/// The relays of this node, by live.
#[derive(Default)]
pub struct Relays {
    following: Mutex<HashSet<String>>,
    http: reqwest::Client,
}

impl Relays {
    /// A viewer of `live` joined here: make sure the live is relayed from
    /// its origin if that is another node (a no-op on the origin itself,
    /// and when clustering is off).
    pub fn ensure(self: &Arc<Self>, state: &AppState, live: &str) {
        let Some(cluster) = state.cluster.clone() else {
            return;
        };
        if !lock(&self.following).insert(live.to_string()) {
            return;
        }
        let (relays, state, live) = (self.clone(), state.clone(), live.to_string());
        tokio::spawn(async move {
            let span = tracing::info_span!("relay", live = %live);
            let _ =
                tracing::Instrument::instrument(relays.follow(&state, &cluster, &live), span).await;
            lock(&relays.following).remove(&live);
        });
    }

    /// Runs while the node runs: every live with a viewer here is followed
    /// (a no-op for lives already followed, and on the origin).
    pub async fn watch_viewers(self: Arc<Self>, state: AppState) {
        let mut tick = tokio::time::interval(SCAN_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for live in state.board.active() {
                if live.viewers > 0 && !self.is_following(&live.live) {
                    self.ensure(&state, &live.live);
                }
            }
        }
    }

    fn is_following(&self, live: &str) -> bool {
        lock(&self.following).contains(live)
    }

    async fn follow(&self, state: &AppState, cluster: &Arc<Cluster>, live: &str) {
        let mut origin = cluster.watch_origin(live);
        // What Redis says now, not only what this node last heard.
        if let Ok(now) = cluster.origin(live).await {
            tracing::debug!(origin = ?now.as_ref().map(|c| &c.node), "origin looked up");
        }
        let mut current: Option<(Claim, Relay)> = None;
        // The relay an origin move replaced: kept until the new one's cast
        // has taken the live (this node's SFU then ends it), so viewers
        // keep the old picture meanwhile.
        let mut retiring: Option<(Instant, Relay)> = None;
        let mut idle_since: Option<Instant> = None;
        let mut retry_at = Instant::now();
        loop {
            let now = Instant::now();
            if state.board.get(live).viewers == 0 {
                let since = *idle_since.get_or_insert(now);
                if now >= since + LINGER {
                    tracing::info!("no viewer left: relay closed");
                    return;
                }
            } else {
                idle_since = None;
            }
            if retiring
                .as_ref()
                .is_some_and(|(at, r)| r.ended() || now >= *at)
            {
                retiring = None;
            }
            let wanted = origin
                .borrow()
                .clone()
                .filter(|c| c.node != cluster.node_id());
            let fine = match (&current, &wanted) {
                (Some((c, r)), Some(w)) => c == w && !r.ended(),
                // The origin's claim lapsed: the relay runs while packets
                // come (it ends on the origin's silence by itself).
                (Some((_, r)), None) => !r.ended(),
                (None, None) => true,
                (None, Some(_)) => false,
            };
            if !fine && now >= retry_at {
                if let Some((_, old)) = current.take()
                    && !old.ended()
                {
                    retiring = Some((now + LINGER, old));
                }
                if let Some(w) = wanted {
                    match open(state, &self.http, cluster, live, &w).await {
                        Ok(r) => {
                            tracing::info!(origin = %w.node, epoch = w.epoch, "relaying from the origin");
                            current = Some((w, r));
                        }
                        Err(e) => {
                            tracing::warn!(origin = %w.node, epoch = w.epoch, "relay not opened: {e}");
                            retry_at = Instant::now() + RETRY;
                        }
                    }
                }
            }
            tokio::select! {
                _ = origin.changed() => {}
                _ = tokio::time::sleep(LOOK_EVERY) => {}
            }
        }
    }
}

async fn open(
    state: &AppState,
    http: &reqwest::Client,
    cluster: &Arc<Cluster>,
    live: &str,
    origin: &Claim,
) -> Result<Relay, relay::RelayError> {
    let secret = cluster.secret().to_vec();
    let upstream = Upstream {
        url: origin.url.clone(),
        auth: Arc::new(move |method, path| auth::sign(&secret, method, path, auth::unix_ms())),
    };
    relay::open(state, http, live, &upstream).await
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
