//! Who watches what: sessions coming on air and into an audience, and
//! each viewer's video layer.

use std::sync::Arc;
use std::time::Instant;

use str0m::bwe::Bitrate;
use str0m::media::{Mid, Rid};

use super::layer::LayerInfo;
use super::live::LAYER_CHECK;
use super::peer::{Peer, same_live};
use super::{PeerId, Sfu, SfuEvent};

impl Sfu {
    /// Caster `id` holds `live` and told the other shards so.
    pub(super) fn holds(&self, id: PeerId, live: &str) -> bool {
        let announced = self
            .peers
            .get(&id)
            .and_then(|p| p.cast.as_ref())
            .is_some_and(|c| c.announced);
        announced && self.lives.get(live).is_some_and(|l| l.caster == Some(id))
    }

    /// The lives session `id` watches.
    pub(super) fn watched(&self, id: PeerId) -> Vec<Arc<str>> {
        self.peers
            .get(&id)
            .map(|p| p.plays.iter().map(|pl| pl.live.clone()).collect())
            .unwrap_or_default()
    }

    /// The live session `id` watches on video m-line `mid`.
    pub(super) fn watched_on(&self, id: PeerId, mid: Mid) -> Option<Arc<str>> {
        let peer = self.peers.get(&id)?;
        peer.plays
            .iter()
            .find(|p| p.video_tracks().any(|t| t.mid == mid))
            .map(|p| p.live.clone())
    }

    /// Session `id`'s connection is up: its cast goes on air, its plays
    /// count as watching and get a layer.
    pub(super) fn on_connected(&mut self, id: PeerId, now: Instant) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        peer.connected_at = Some(now);
        let cast_live = peer.cast.as_ref().map(|c| c.live.clone());
        if let Some(live) = cast_live {
            self.on_air(id, &live, now);
        }
        for live in self.watched(id) {
            self.now_watching(id, &live, now);
        }
    }

    /// Caster `id`, connected, is on air as `live`'s caster.
    pub(super) fn on_air(&mut self, id: PeerId, live: &str, now: Instant) {
        let Some(l) = self.lives.get_mut(live) else {
            return;
        };
        if l.caster != Some(id) {
            return;
        }
        // A caster replacing another keeps the live on air.
        if !l.on_air {
            l.on_air = true;
            l.next_layer_check = Some(now + LAYER_CHECK);
            self.events.push_back(SfuEvent::Live(l.state()));
        }
        if l.announced.replace(id) != Some(id) {
            self.events.push_back(SfuEvent::CastStarted {
                live: live.to_string(),
                caster: id,
            });
        }
    }

    /// Viewer `id`, connected, counts in `live`'s audience and gets a layer.
    pub(super) fn now_watching(&mut self, id: PeerId, live: &str, now: Instant) {
        let relay = self.peers.get(&id).is_some_and(|p| {
            p.plays
                .iter()
                .any(|pl| same_live(&pl.live, live) && !pl.relay.is_empty())
        });
        let Some(l) = self.lives.get_mut(live) else {
            return;
        };
        l.watching += 1;
        if relay {
            l.relays.insert(id);
        }
        self.events.push_back(SfuEvent::Live(l.state()));
        let layers = self.caster_layers(live, now);
        self.choose_layer(id, live, &layers, None, now);
    }

    /// The current caster's video layers, lowest first.
    pub(super) fn caster_layers(&self, live: &str, now: Instant) -> Vec<LayerInfo> {
        let Some(l) = self.lives.get(live) else {
            return Vec::new();
        };
        match l
            .caster
            .and_then(|c| self.peers.get(&c))
            .and_then(|p| p.cast.as_ref())
        {
            Some(cast) => cast.video.infos(now),
            None => l
                .remote
                .as_ref()
                .map(|r| r.video.infos(now))
                .unwrap_or_default(),
        }
    }

    /// Chooses viewer `id`'s video layer of `live`, and lets its bandwidth
    /// estimate reach for the next layer up. The estimate is the whole
    /// connection's: a room member watching several lives shares it evenly.
    pub(super) fn choose_layer(
        &mut self,
        id: PeerId,
        live: &str,
        layers: &[LayerInfo],
        estimate: Option<u64>,
        now: Instant,
    ) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let initial = self.config.initial_estimate;
        let Peer {
            plays,
            rtc,
            bwe,
            bwe_seeded,
            live: session_live,
            ..
        } = peer;
        // A relay takes every layer, each on its own track: no choice.
        if let Some(play) = plays
            .iter_mut()
            .find(|p| same_live(&p.live, live) && !p.relay.is_empty())
        {
            for (i, (_, track)) in play.relay.iter_mut().enumerate() {
                let target = layers.get(i).map(|l| l.id);
                if target != track.target {
                    tracing::debug!(live = %session_live, peer = %id.log(), ?target, layer = i, "relay layer");
                    track.target = target;
                }
            }
            return;
        }
        let videos = plays.iter().filter(|p| p.video.is_some()).count().max(1) as u64;
        let Some(track) = plays
            .iter_mut()
            .find(|p| same_live(&p.live, live))
            .and_then(|p| p.video.as_mut())
        else {
            return;
        };
        if let Some(e) = estimate {
            track.selector.set_estimate(e / videos);
        }
        if layers.is_empty() {
            return;
        }
        let mut mutated = false;
        *bwe_seeded |= estimate.is_some();
        // A live whose lowest layer needs more than the initial estimate
        // (an RTMP encoder at 3 Mbit/s, one layer) would be paced at that
        // estimate while it grows, queueing for seconds: the estimate
        // starts from what the lowest layer needs instead, once, before
        // str0m has measured anything.
        let lowest = layers
            .iter()
            .filter(|l| l.active && l.bitrate > 0)
            .map(|l| l.bitrate)
            .min();
        if !*bwe_seeded && let Some(lowest) = lowest {
            *bwe_seeded = true;
            let need = lowest.saturating_mul(5) / 4;
            if need > initial {
                tracing::debug!(live = %session_live, peer = %id.log(), need, "bandwidth estimate starts at the live's rate");
                rtc.bwe().reset(Bitrate::bps(need));
                mutated = true;
            }
        }
        let spliced = track
            .target
            .is_some_and(|t| track.source().is_some_and(|s| s.ssrc == t));
        if !spliced {
            track.selector.forget_choice();
        }
        let target = track.selector.select(layers, now);
        if target != track.target {
            tracing::debug!(live = %session_live, peer = %id.log(), ?target, "video layer chosen");
            track.target = target;
            track.pause_current = track.selector.moved_down();
        }
        if let Some(desired) = track.selector.desired_bitrate(layers) {
            // Padding up to the next layer's rate (capped by the estimate
            // inside str0m) lets the estimate grow into it.
            track.bwe = (desired * 4 / 5, desired);
        }
        let wanted = plays
            .iter()
            .filter_map(|p| p.video.as_ref())
            .fold((0, 0), |(n, d), t| (n + t.bwe.0, d + t.bwe.1));
        if wanted.1 > 0 && *bwe != wanted {
            *bwe = wanted;
            rtc.bwe()
                .set_bitrate(Bitrate::bps(wanted.0), Bitrate::bps(wanted.1));
            mutated = true;
        }
        if mutated {
            // Drained after the change, as str0m asks of every mutation.
            self.drive(id, now);
        }
    }

    /// The caster layer viewer `id` is being sent of `live` (or is about
    /// to be).
    pub(super) fn layer_sent_to(&self, id: PeerId, live: &str, rid: Option<Rid>) -> Option<u32> {
        let play = self.peers.get(&id)?.play_of(live)?;
        let track = match rid {
            Some(rid) if !play.relay.is_empty() => &play.relay.iter().find(|(r, _)| *r == rid)?.1,
            _ => play.video.as_ref()?,
        };
        let l = self.lives.get(live)?;
        let caster = l.caster.or(l.remote.as_ref().map(|r| r.peer))?;
        match track.source() {
            Some(src) if src.peer == caster => Some(src.ssrc),
            _ => track.target,
        }
    }

    /// The periodic look at a live's layers: re-measure, re-choose.
    pub(super) fn check_layers(&mut self, live: &Arc<str>, now: Instant) {
        let Some(l) = self.lives.get_mut(live) else {
            return;
        };
        l.next_layer_check =
            (l.caster.is_some() || l.remote.is_some()).then_some(now + LAYER_CHECK);
        if let Some(remote) = l.remote.as_mut() {
            remote.video.refresh(now);
        }
        let viewers: Vec<PeerId> = l.viewers.iter().copied().collect();
        if let Some(cast) = l
            .caster
            .and_then(|c| self.peers.get_mut(&c))
            .and_then(|p| p.cast.as_mut())
            && cast.video.refresh(now)
        {
            tracing::debug!(%live, layers = ?cast.video.infos(now), "caster layers changed");
        }
        let layers = self.caster_layers(live, now);
        for v in viewers {
            self.choose_layer(v, live, &layers, None, now);
        }
    }
}
