//! Keyframe requests from viewers to casters, through each layer's gate.

use std::sync::Arc;
use std::time::Instant;

use str0m::bwe::Bitrate;
use str0m::media::KeyframeRequestKind;

use super::peer::{Forward, OutTrack, Peer, Play, same_live};
use super::{PeerId, Sfu};

impl Sfu {
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
        if let Some(gop) = cast.gop.take() {
            // The caster cannot make one: its kept group of pictures
            // serves instead.
            if let Some(group) = gop.group(layer) {
                self.replay_gop(live, group, now);
            }
            if let Some(cast) = self.peers.get_mut(&caster).and_then(|p| p.cast.as_mut()) {
                cast.gop = Some(gop);
            }
            return;
        }
        let Some(gate) = cast.video.get_mut(layer).map(|l| &mut l.keyframes) else {
            return;
        };
        if gate.request(now) {
            request_keyframe(peer, layer);
            self.stats.keyframe_requests_sent += 1;
            self.drive(caster, now);
        }
    }

    /// Something besides viewers (LL-HLS, recording) needs a keyframe of
    /// every layer of `live`'s caster, if it casts from this shard.
    pub fn request_keyframes(&mut self, live: &str, now: Instant) {
        let layers: Vec<u32> = self
            .lives
            .get(live)
            .and_then(|l| l.caster)
            .and_then(|c| self.peers.get(&c))
            .and_then(|p| p.cast.as_ref())
            .map(|c| c.video.iter().map(|l| *l.ssrc).collect())
            .unwrap_or_default();
        for layer in layers {
            self.want_keyframe(live, layer, now);
        }
        self.process(now);
    }

    /// Another shard's viewers need a keyframe of `layer`: a caster here
    /// with a kept group of pictures sends it over, any other is asked.
    pub(super) fn remote_wants_keyframe(&mut self, live: &Arc<str>, layer: u32, now: Instant) {
        let group: Option<Option<Arc<[Forward]>>> = self
            .lives
            .get(&**live)
            .and_then(|l| l.caster)
            .and_then(|c| self.peers.get(&c))
            .and_then(|p| p.cast.as_ref())
            .and_then(|c| c.gop.as_ref())
            .map(|g| g.group(layer).map(Into::into));
        match group {
            None => self.want_keyframe(live, layer, now),
            Some(None) => {}
            Some(Some(group)) => self.relay_gop(live, group),
        }
    }

    /// Starts the viewers of `live` that wait for `group`'s layer from
    /// `group`, a caster's kept group of pictures.
    pub(super) fn replay_gop(&mut self, live: &str, group: &[Forward], now: Instant) {
        let Some(l) = self.lives.get(live) else {
            return;
        };
        let viewers: Vec<PeerId> = l.viewers.iter().copied().collect();
        let running = self.running;
        for v in viewers {
            let Some(peer) = self.peers.get_mut(&v) else {
                continue;
            };
            if !peer.connected {
                continue;
            }
            let Peer { plays, rtc, .. } = peer;
            // A relay: each of its layer tracks that waits for this layer.
            if let Some(play) = plays
                .iter_mut()
                .find(|p| same_live(&p.live, live) && !p.relay.is_empty())
            {
                let copies: usize = play
                    .relay
                    .iter_mut()
                    .filter(|(_, t)| t.waits_for(group))
                    .map(|(_, t)| t.replay(rtc, group, now))
                    .sum();
                if copies > 0 {
                    self.stats.copies += copies as u64;
                    self.stats.gop_replays += 1;
                    self.touch(v);
                }
                continue;
            }
            let Some(track) = video_of(plays, live) else {
                continue;
            };
            if !track.waits_for(group) {
                continue;
            }
            let first = track.source().is_none();
            self.running = Some(v);
            if first && let Some(rate) = super::gop::burst_rate(group) {
                // A viewer's first estimate is a guess: let the group go
                // out at a few times the live's rate (str0m's estimate
                // follows the link from there).
                rtc.bwe().reset(Bitrate::bps(rate));
                self.drive(v, now);
            }
            let Some(Peer { plays, rtc, .. }) = self.peers.get_mut(&v) else {
                continue;
            };
            let Some(track) = video_of(plays, live) else {
                continue;
            };
            let copies = track.replay(rtc, group, now);
            tracing::debug!(%live, peer = %v.log(), copies, "started from the kept group of pictures");
            self.stats.copies += copies as u64;
            self.stats.gop_replays += 1;
            self.touch(v);
        }
        self.running = running;
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
            for layer in due {
                if let Some(peer) = self.peers.get_mut(&id) {
                    request_keyframe(peer, layer);
                    self.stats.keyframe_requests_sent += 1;
                }
                // Drained after each request, as str0m asks.
                self.drive(id, now);
            }
        }
    }
}

/// The video track watching `live` among a viewer's plays.
fn video_of<'a>(plays: &'a mut [Play], live: &str) -> Option<&'a mut OutTrack> {
    plays
        .iter_mut()
        .find(|p| same_live(&p.live, live))
        .and_then(|p| p.video.as_mut())
}

fn request_keyframe(peer: &mut Peer, layer: u32) {
    if let Some(rx) = peer.rtc.direct_api().stream_rx(&layer.into()) {
        tracing::debug!(live = %peer.live, peer = %peer.id.log(), layer, "keyframe requested");
        rx.request_keyframe(KeyframeRequestKind::Pli);
    }
}
