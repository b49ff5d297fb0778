//! What one session's output asks of the others, queued and carried out at
//! the top.
//!
//! A peer is polled on its own ([`Sfu::drive`]); what its output asks of
//! other sessions (its packets for the live's viewers, a viewer's keyframe
//! request for the caster, a viewer's new bandwidth estimate) is queued
//! here as [`Effects`] and carried out by [`Sfu::process`], which may write
//! to other peers and poll them in turn, queueing their effects. No session
//! calls into another, as quinn-proto's endpoint and connection events keep
//! apart. That bounds the stack, keeps a panic attributable to one peer,
//! and lets a viewer take a whole run of a caster's packets (a frame) with
//! one poll instead of one per packet.

use std::sync::Arc;
use std::time::Instant;

use str0m::media::{Mid, Rid};

use super::peer::Forward;
use super::{PeerId, Sfu};

/// What polling one peer asks of the others.
pub(super) struct Effects {
    pub peer: PeerId,
    /// The live it casts, if it is a caster.
    pub cast_live: Option<Arc<str>>,
    /// A caster's packets, in order, for its live's viewers and shards.
    pub forwards: Vec<Forward>,
    pub connected: bool,
    /// A viewer asked for a keyframe (PLI/FIR) of what it is sent on
    /// these m-lines.
    /// Keyframe requests of a viewer, by m-line (and rid, from a relay).
    pub keyframe_requests: Vec<(Mid, Option<Rid>)>,
    /// A viewer's latest bandwidth estimate.
    pub estimate: Option<u64>,
    /// A caster started sending a new layer.
    pub new_layer: bool,
}

impl Effects {
    pub fn new(peer: PeerId, cast_live: Option<Arc<str>>) -> Self {
        Self {
            peer,
            cast_live,
            forwards: Vec::new(),
            connected: false,
            keyframe_requests: Vec::new(),
            estimate: None,
            new_layer: false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.forwards.is_empty()
            && !self.connected
            && self.keyframe_requests.is_empty()
            && self.estimate.is_none()
            && !self.new_layer
    }

    /// Takes in what a later poll of the same peer asked: the two are
    /// carried out as one (a caster's run of packets fans out together).
    fn merge(&mut self, later: Effects) {
        self.forwards.extend(later.forwards);
        self.connected |= later.connected;
        self.keyframe_requests.extend(later.keyframe_requests);
        self.estimate = later.estimate.or(self.estimate);
        self.new_layer |= later.new_layer;
        self.cast_live = later.cast_live.or(self.cast_live.take());
    }
}

impl Sfu {
    /// Queues what a poll of a peer asked of the others.
    pub(super) fn queue_effects(&mut self, fx: Effects) {
        if fx.is_empty() {
            return;
        }
        match self.effects.back_mut() {
            Some(last) if last.peer == fx.peer => last.merge(fx),
            _ => self.effects.push_back(fx),
        }
    }

    /// Peer `id` was given something to send (packets written to it): it
    /// is polled once by [`Sfu::process`], after whatever else it is given
    /// in the same pass.
    ///
    /// This is the one place Vessel mutates an `Rtc` more than once before
    /// draining it, and on purpose: `write_rtp` only appends to the
    /// stream's send queue (str0m 0.25 `streams/send.rs`, `StreamTx::write_rtp`
    /// → `send_queue.push`), and the packets leave through the pacer in the
    /// following `poll_output`s, as they would one by one.
    pub(super) fn touch(&mut self, id: PeerId) {
        if let Some(peer) = self.peers.get_mut(&id)
            && !peer.dirty
        {
            peer.dirty = true;
            self.dirty.push_back(id);
        }
    }

    /// Whether queued work waits for [`Sfu::process`].
    pub(super) fn has_work(&self) -> bool {
        !self.effects.is_empty() || !self.dirty.is_empty()
    }

    /// Carries out every queued effect and polls every peer that was given
    /// something, until nothing is left. Each step on its own: a panic in
    /// one peer ends that peer and the rest goes on.
    pub fn process(&mut self, now: Instant) {
        self.run = None;
        loop {
            if let Some(id) = self.dirty.pop_front() {
                if self.peers.get(&id).is_some_and(|p| p.dirty) {
                    self.isolated(now, |sfu| sfu.drive(id, now));
                }
                continue;
            }
            let Some(fx) = self.effects.pop_front() else {
                break;
            };
            self.isolated(now, |sfu| sfu.apply(fx, now));
        }
    }

    /// Carries out what one poll of a peer asked.
    fn apply(&mut self, fx: Effects, now: Instant) {
        let id = fx.peer;
        if !self.peers.contains_key(&id) {
            return; // closed since
        }
        if fx.connected {
            self.on_connected(id, now);
        }
        if let Some(live) = &fx.cast_live {
            // Its media flows: the proof it may take the live, if it has
            // not yet (claimed and announced to the other shards).
            let owns =
                !fx.forwards.is_empty() && (self.holds(id, live) || self.claim(id, live, now));
            if fx.new_layer {
                // Viewers waiting for video get a layer without waiting for
                // the next periodic check.
                self.check_layers(live, now);
            }
            if owns {
                self.forward(live, id, &fx.forwards, now);
            }
        }
        if fx.estimate.is_some() {
            for live in self.watched(id) {
                let layers = self.caster_layers(&live, now);
                self.choose_layer(id, &live, &layers, fx.estimate, now);
            }
        }
        for (mid, rid) in fx.keyframe_requests {
            if let Some(live) = self.watched_on(id, mid)
                && let Some(layer) = self.layer_sent_to(id, &live, rid)
            {
                self.want_keyframe(&live, layer, now);
            }
        }
    }
}
