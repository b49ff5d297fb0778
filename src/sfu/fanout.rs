//! Media between peers: a caster's packets fanned out to its viewers,
//! keyframe requests back to the caster, and each viewer's layer choice.

use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::bwe::{Bitrate, BweKind};
use str0m::format::Codec;
use str0m::media::{ExtensionValues, KeyframeRequestKind, MediaKind, Mid};
use str0m::rtp::{RedDecoder, RtpPacket, Vp8Descriptor};
use str0m::{Event, IceConnectionState, Input, Output};

use super::forward::{MediaPacket, SourceId};
use super::layer::LayerInfo;
use super::live::LAYER_CHECK;
use super::peer::{Forward, Peer, Sent, same_live};
use super::{PeerId, Sfu, SfuEvent, SfuStats, codec};

/// A timeout str0m asks for within this of now is served at once.
const IMMEDIATE: Duration = Duration::from_micros(50);

/// Timeouts served in one drive of a peer, at most: 32 packets released
/// to one viewer in one go is more than a frame of a 1 Mbit/s stream.
const MAX_PASSES: u32 = 32;

/// What polling one peer asks of the others.
#[derive(Default)]
struct Effects {
    forwards: Vec<Forward>,
    connected: bool,
    /// A viewer asked for a keyframe (PLI/FIR) of what it is sent on
    /// these m-lines.
    keyframe_requests: Vec<Mid>,
    estimate: Option<u64>,
    /// A caster started sending a new layer.
    new_layer: bool,
    dead: bool,
}

impl Sfu {
    /// Polls a peer until it has nothing more to say, then carries out what
    /// it asked of others.
    pub(super) fn drive(&mut self, id: PeerId, now: Instant) {
        // A panic from here on is this peer's (until it hands over to
        // another, which does the same).
        let prev = self.running.replace(id);
        self.drive_peer(id, now);
        self.running = prev;
    }

    fn drive_peer(&mut self, id: PeerId, now: Instant) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        #[cfg(test)]
        if peer.poisoned {
            panic!("injected failure");
        }
        let mut fx = Effects::default();
        let mut passes = 0;
        let rtc_timeout = loop {
            match peer.rtc.poll_output() {
                Ok(Output::Transmit(t)) => self.transmits.push_back(t),
                // str0m's pacer lets one packet out per timeout and asks
                // for the next a microsecond later. Served here rather than
                // through the runtime's timers, a viewer's queue drains as
                // fast as its pacing rate allows, not one packet per turn
                // of a busy event loop (where it would fall ever further
                // behind). Bounded, so that one peer cannot hold the thread.
                Ok(Output::Timeout(t)) if t <= now + IMMEDIATE && passes < MAX_PASSES => {
                    passes += 1;
                    if let Err(e) = peer.rtc.handle_input(Input::Timeout(t.max(now))) {
                        tracing::warn!(live = %peer.live, peer = %id.log(), "session failed: {e}");
                        break None;
                    }
                }
                Ok(Output::Timeout(t)) => break Some(t),
                Ok(Output::Event(e)) => on_event(peer, e, &mut fx, &mut self.stats),
                Err(e) => {
                    tracing::warn!(live = %peer.live, peer = %id.log(), "session failed: {e}");
                    break None;
                }
            }
        };
        let cast_live = peer.cast.as_ref().map(|c| c.live.clone());
        match rtc_timeout.map(|t| peer.next_timeout(t)) {
            Some(t) if !fx.dead && peer.rtc.is_alive() => self.set_timer(id, t),
            _ => {
                self.close_peer(id, now);
                return;
            }
        }
        if fx.connected {
            self.on_connected(id, now);
        }
        if let Some(live) = &cast_live {
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
        for mid in fx.keyframe_requests {
            if let Some(live) = self.watched_on(id, mid)
                && let Some(layer) = self.layer_sent_to(id, &live)
            {
                self.want_keyframe(&live, layer, now);
            }
        }
    }

    /// Caster `id` holds `live` and told the other shards so.
    fn holds(&self, id: PeerId, live: &str) -> bool {
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
    fn watched_on(&self, id: PeerId, mid: Mid) -> Option<Arc<str>> {
        let peer = self.peers.get(&id)?;
        peer.plays
            .iter()
            .find(|p| p.video.as_ref().is_some_and(|t| t.mid == mid))
            .map(|p| p.live.clone())
    }

    /// Session `id`'s connection is up: its cast goes on air, its plays
    /// count as watching and get a layer.
    fn on_connected(&mut self, id: PeerId, now: Instant) {
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
        let Some(l) = self.lives.get_mut(live) else {
            return;
        };
        l.watching += 1;
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
        let Peer {
            plays,
            rtc,
            bwe,
            live: session_live,
            ..
        } = peer;
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
        }
    }

    /// The caster layer viewer `id` is being sent of `live` (or is about
    /// to be).
    fn layer_sent_to(&self, id: PeerId, live: &str) -> Option<u32> {
        let track = self.peers.get(&id)?.play_of(live)?.video.as_ref()?;
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

    fn forward(&mut self, live: &Arc<str>, caster: PeerId, forwards: &[Forward], now: Instant) {
        if self
            .lives
            .get(live)
            .is_none_or(|l| l.caster != Some(caster))
        {
            return;
        }
        self.relay(live, forwards);
        self.fan_out(live, forwards, now);
    }

    /// Sends a caster's packets (local or handed over) to this shard's viewers.
    pub(super) fn fan_out(&mut self, live: &str, forwards: &[Forward], now: Instant) {
        let Some(l) = self.lives.get(live) else {
            return;
        };
        let viewers: Vec<PeerId> = l.viewers.iter().copied().collect();
        let caster = forwards.first().map(|f| f.media.source.peer);
        let running = self.running;
        let mut need_keyframe: Vec<u32> = Vec::new();
        let mut copies = 0usize;
        for v in viewers {
            // A room member that just took over a live it watched: not its
            // own media back while the re-offer that stops it is out.
            if Some(v) == caster {
                continue;
            }
            let Some(peer) = self.peers.get_mut(&v) else {
                continue;
            };
            if !peer.connected {
                continue;
            }
            let Peer { plays, rtc, .. } = peer;
            let Some(play) = plays.iter_mut().find(|p| same_live(&p.live, live)) else {
                continue;
            };
            self.running = Some(v);
            for f in forwards {
                let Some(track) = play.track(f.kind) else {
                    continue;
                };
                match track.send(rtc, f, now) {
                    Sent::NeedKeyframe => need_keyframe.push(f.media.source.ssrc),
                    Sent::Late { started } => {
                        self.stats.late_drops += 1;
                        if started {
                            self.stats.late_skips += 1;
                            tracing::debug!(%live, peer = %v.log(), kind = ?f.kind, "viewer behind; skipping ahead");
                        }
                    }
                    Sent::Queued => copies += 1,
                    Sent::Dropped => {}
                }
            }
            self.drive(v, now);
        }
        self.running = running;
        if copies > 0 {
            self.forwarded
                .extend(forwards.iter().map(|f| f.media.arrival));
        }
        need_keyframe.sort_unstable();
        need_keyframe.dedup();
        for layer in need_keyframe {
            self.want_keyframe(live, layer, now);
        }
    }

    /// Someone needs a keyframe of `layer`: ask the caster, through the
    /// layer's gate.
    pub(super) fn want_keyframe(&mut self, live: &str, layer: u32, now: Instant) {
        let Some(l) = self.lives.get_mut(live) else {
            return;
        };
        let Some(caster) = l.caster else {
            // The caster is on another shard: through this shard's gate, ask it.
            if let Some(remote) = l.remote.as_mut()
                && let Some(gate) = remote.video.get_mut(layer).map(|l| &mut l.keyframes)
                && gate.request(now)
            {
                let shard = remote.peer.shard();
                let live = l.name.clone();
                self.remote_out
                    .push_back((shard, super::shard::Remote::Keyframe { live, layer }));
            }
            return;
        };
        let Some(peer) = self.peers.get_mut(&caster) else {
            return;
        };
        let Some(cast) = peer.cast.as_mut() else {
            return;
        };
        let Some(gate) = cast.video.get_mut(layer).map(|l| &mut l.keyframes) else {
            return;
        };
        if gate.request(now) {
            request_keyframe(peer, layer);
            self.stats.keyframe_requests_sent += 1;
            self.drive(caster, now);
        }
    }

    /// Sends the deferred keyframe requests that are due.
    pub(super) fn keyframe_timeouts(&mut self, now: Instant) {
        for l in self.lives.values_mut() {
            let Some(remote) = l.remote.as_mut() else {
                continue;
            };
            for layer in remote.video.iter_mut() {
                if layer.keyframes.handle_timeout(now) {
                    self.remote_out.push_back((
                        remote.peer.shard(),
                        super::shard::Remote::Keyframe {
                            live: l.name.clone(),
                            layer: *layer.ssrc,
                        },
                    ));
                }
            }
        }
        let casters: Vec<PeerId> = self.lives.values().filter_map(|l| l.caster).collect();
        for id in casters {
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            let Some(cast) = peer.cast.as_mut() else {
                continue;
            };
            let due: Vec<u32> = cast
                .video
                .iter_mut()
                .filter_map(|l| l.keyframes.handle_timeout(now).then_some(*l.ssrc))
                .collect();
            if due.is_empty() {
                continue;
            }
            for layer in due {
                request_keyframe(peer, layer);
                self.stats.keyframe_requests_sent += 1;
            }
            self.drive(id, now);
        }
    }
}

fn request_keyframe(peer: &mut Peer, layer: u32) {
    if let Some(rx) = peer.rtc.direct_api().stream_rx(&layer.into()) {
        tracing::debug!(live = %peer.live, peer = %peer.id.log(), layer, "keyframe requested");
        rx.request_keyframe(KeyframeRequestKind::Pli);
    }
}

/// Handles one str0m event of `peer`, noting what others must do.
fn on_event(peer: &mut Peer, event: Event, fx: &mut Effects, stats: &mut SfuStats) {
    match event {
        Event::MediaEgressStats(s) => peer.stats_seen.egress(&s, stats),
        Event::MediaIngressStats(s) => peer.stats_seen.ingress(&s, stats),
        Event::Connected => {
            peer.connected = true;
            fx.connected = true;
            tracing::info!(live = %peer.live, peer = %peer.id.log(), role = %peer.role, "connected");
        }
        Event::IceConnectionStateChange(IceConnectionState::Disconnected) => fx.dead = true,
        Event::Closed => fx.dead = true,
        Event::KeyframeRequest(r) => fx.keyframe_requests.push(r.mid),
        Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
            fx.estimate = Some(estimate.as_u64());
        }
        Event::RtpPacket(pkt) => {
            if let Some(f) = prepare(peer, pkt, &mut fx.new_layer) {
                fx.forwards.push(f);
            }
        }
        _ => {}
    }
}

/// Turns a caster's RTP packet into a [`Forward`], or `None` if it is not
/// forwarded (padding, unknown stream).
fn prepare(peer: &mut Peer, pkt: RtpPacket, new_layer: &mut bool) -> Option<Forward> {
    let Peer { cast, rtc, .. } = peer;
    let cast = cast.as_mut()?;
    if pkt.payload.is_empty() {
        return None; // padding / bandwidth probes
    }
    let ssrc = pkt.header.ssrc;
    let (kind, rid) = cast.stream(rtc, ssrc)?;
    let pt = pkt.header.payload_type;
    let (spec, red) = cast.codec(rtc, pt)?;
    let keyframe = kind == MediaKind::Video && codec::starts_keyframe(spec.codec, &pkt.payload);
    if kind == MediaKind::Video {
        *new_layer |= cast
            .video
            .on_packet(ssrc, rid, pkt.payload.len(), pkt.timestamp);
        if keyframe && let Some(layer) = cast.video.get_mut(*ssrc) {
            layer.keyframes.keyframe_seen();
        }
    }
    let vp8 = (spec.codec == Codec::Vp8)
        .then(|| Vp8Descriptor::parse(&pkt.payload).ok())
        .flatten();
    // Only what describes the media travels on; transport extensions
    // (TWCC, abs-send-time, mid/rid) belong to each leg and str0m sets them.
    let exts = ExtensionValues {
        audio_level: pkt.header.ext_vals.audio_level,
        voice_activity: pkt.header.ext_vals.voice_activity,
        video_orientation: pkt.header.ext_vals.video_orientation,
        ..Default::default()
    };
    let primary = red
        .then(|| RedDecoder::decode(&pkt.payload).ok())
        .flatten()
        .and_then(|blocks| blocks.into_iter().find(|b| b.is_primary))
        .map(|b| Arc::<[u8]>::from(b.payload));
    Some(Forward {
        red,
        primary,
        kind,
        rid,
        media: MediaPacket {
            source: SourceId {
                peer: peer.id,
                ssrc: *ssrc,
            },
            seq: *pkt.seq_no,
            ts: pkt.header.timestamp,
            arrival: pkt.timestamp,
            clock_rate: spec.clock_rate.get(),
            keyframe,
            vp8,
        },
        spec,
        pt,
        marker: pkt.header.marker,
        exts,
        payload: pkt.payload,
    })
}
