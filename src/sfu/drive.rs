//! Polling one peer: its `Rtc` is drained to its next timeout, and what
//! the output asks of other sessions is queued as [`Effects`] (carried out
//! by [`Sfu::process`], never from here).

use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::bwe::BweKind;
use str0m::format::Codec;
use str0m::media::{ExtensionValues, MediaKind};
use str0m::rtp::{RedDecoder, RtpPacket, Vp8Descriptor};
use str0m::{Event, IceConnectionState, Input, Output};

use super::effects::Effects;
use super::forward::{MediaPacket, SourceId};
use super::peer::{Forward, Peer};
use super::{PeerId, Sfu, SfuStats, codec};

/// A timeout str0m asks for within this of now is served at once.
const IMMEDIATE: Duration = Duration::from_micros(50);

/// Timeouts served in one drive of a peer, at most: 32 packets released
/// to one viewer in one go is more than a frame of a 1 Mbit/s stream.
const MAX_PASSES: u32 = 32;

impl Sfu {
    /// Polls peer `id` until it has nothing more to say (str0m's contract:
    /// after every input, drain `poll_output` to a timeout), and queues
    /// what it asked of others.
    pub(super) fn drive(&mut self, id: PeerId, now: Instant) {
        // A panic from here on is this peer's.
        let prev = self.running.replace(id);
        self.drive_peer(id, now);
        self.running = prev;
    }

    fn drive_peer(&mut self, id: PeerId, now: Instant) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        peer.dirty = false;
        #[cfg(test)]
        if peer.poisoned {
            panic!("injected failure");
        }
        let mut fx = Effects::new(id, peer.cast.as_ref().map(|c| c.live.clone()));
        let mut dead = false;
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
                Ok(Output::Event(e)) => on_event(peer, e, &mut fx, &mut dead, &mut self.stats),
                Err(e) => {
                    tracing::warn!(live = %peer.live, peer = %id.log(), "session failed: {e}");
                    break None;
                }
            }
        };
        match rtc_timeout.map(|t| peer.next_timeout(t)) {
            Some(t) if !dead && peer.rtc.is_alive() => self.set_timer(id, t),
            _ => {
                self.close_peer(id, now);
                return;
            }
        }
        self.stats.polls += 1;
        self.stats.rtc_timeouts += u64::from(passes);
        self.queue_effects(fx);
    }
}

/// Handles one str0m event of `peer`, noting what others must do.
fn on_event(
    peer: &mut Peer,
    event: Event,
    fx: &mut Effects,
    dead: &mut bool,
    stats: &mut SfuStats,
) {
    match event {
        Event::MediaEgressStats(s) => peer.stats_seen.egress(&s, stats),
        Event::MediaIngressStats(s) => peer.stats_seen.ingress(&s, stats),
        Event::Connected => {
            peer.connected = true;
            fx.connected = true;
            tracing::info!(live = %peer.live, peer = %peer.id.log(), role = %peer.role, "connected");
        }
        Event::IceConnectionStateChange(IceConnectionState::Disconnected) => *dead = true,
        Event::Closed => *dead = true,
        Event::KeyframeRequest(r) => fx.keyframe_requests.push((r.mid, r.rid)),
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
