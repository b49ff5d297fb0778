//! A caster's packets fanned out to its viewers: each viewer is written a
//! whole run of packets, then polled once.

use std::sync::Arc;
use std::time::Instant;

use super::peer::{Forward, Peer, Sent, same_live};
use super::tap::TapPacket;
use super::{PeerId, Sfu};

impl Sfu {
    pub(super) fn forward(
        &mut self,
        live: &Arc<str>,
        caster: PeerId,
        forwards: &[Forward],
        now: Instant,
    ) {
        if self
            .lives
            .get(live)
            .is_none_or(|l| l.caster != Some(caster))
        {
            return;
        }
        if let Some(gop) = self
            .peers
            .get_mut(&caster)
            .and_then(|p| p.cast.as_mut())
            .and_then(|c| c.gop.as_mut())
        {
            for f in forwards {
                gop.push(f);
            }
        }
        if let Some(sink) = self.taps.get_mut(&**live) {
            let packets: Vec<_> = forwards.iter().filter_map(TapPacket::of).collect();
            if !sink.offer(packets) {
                tracing::debug!(%live, "tap closed");
                self.taps.remove(&**live);
            }
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
                for track in play.tracks(f.kind) {
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
            }
            // Polled once by `process`, after the whole run is written.
            self.touch(v);
        }
        self.running = running;
        self.stats.copies += copies as u64;
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
}
