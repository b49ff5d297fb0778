//! A live: one caster slot and the viewers watching it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::shard::RemoteCaster;
use super::{LiveState, PeerId};

#[derive(Debug)]
pub(super) struct Live {
    pub name: Arc<str>,
    /// The current caster session. A new cast replaces it.
    pub caster: Option<PeerId>,
    /// The caster's media is flowing (its connection is up).
    pub on_air: bool,
    /// The caster whose `CastStarted` was told (and no `CastEnded` yet).
    pub announced: Option<PeerId>,
    /// Every viewer session, connected or not.
    pub viewers: BTreeSet<PeerId>,
    /// Viewers whose connection is up: the figure shown to people.
    pub watching: usize,
    /// Of those, the relays to other nodes (`Play::relay`): counted apart,
    /// as they are not people watching.
    pub relays: BTreeSet<PeerId>,
    /// When the caster's layers are next measured and every viewer's layer
    /// chosen again; none while there is no caster.
    pub next_layer_check: Option<Instant>,
    /// The caster when it is on another shard.
    pub remote: Option<RemoteCaster>,
    /// The newest caster known to have taken the live (any shard), by the
    /// time its session began: an older one whose media comes late does
    /// not take the live back.
    pub newest: Option<(Instant, PeerId)>,
}

/// How often layers are re-measured and re-chosen: often enough to follow
/// the selector's hold times, rare enough to cost nothing per packet.
pub(super) const LAYER_CHECK: Duration = Duration::from_millis(250);

impl Live {
    pub fn new(name: Arc<str>) -> Self {
        Self {
            name,
            caster: None,
            on_air: false,
            announced: None,
            viewers: BTreeSet::new(),
            watching: 0,
            relays: BTreeSet::new(),
            next_layer_check: None,
            remote: None,
            newest: None,
        }
    }

    pub fn state(&self) -> LiveState {
        LiveState {
            live: self.name.to_string(),
            on_air: self.on_air,
            viewers: self.watching,
            relays: self.relays.len(),
            ..Default::default()
        }
    }

    /// Nobody is casting or watching: the live can be forgotten.
    pub fn is_empty(&self) -> bool {
        self.caster.is_none() && self.viewers.is_empty()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_layer_check
    }
}
