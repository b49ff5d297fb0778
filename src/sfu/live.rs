//! A live: one caster slot and the viewers watching it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::keyframe::KeyframeGate;
use super::{LiveState, PeerId};

#[derive(Debug)]
pub(super) struct Live {
    pub name: Arc<str>,
    /// The current caster session. A new cast replaces it.
    pub caster: Option<PeerId>,
    /// The caster's media is flowing (its connection is up).
    pub on_air: bool,
    /// Every viewer session, connected or not.
    pub viewers: BTreeSet<PeerId>,
    /// Viewers whose connection is up: the figure shown to people.
    pub watching: usize,
    pub keyframes: KeyframeGate,
}

impl Live {
    pub fn new(name: Arc<str>, keyframe_interval: Duration) -> Self {
        Self {
            name,
            caster: None,
            on_air: false,
            viewers: BTreeSet::new(),
            watching: 0,
            keyframes: KeyframeGate::new(keyframe_interval),
        }
    }

    pub fn state(&self) -> LiveState {
        LiveState {
            live: self.name.to_string(),
            on_air: self.on_air,
            viewers: self.watching,
        }
    }

    /// Nobody is casting or watching: the live can be forgotten.
    pub fn is_empty(&self) -> bool {
        self.caster.is_none() && self.viewers.is_empty()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.keyframes.poll_timeout()
    }
}
