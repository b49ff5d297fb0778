//! Keyframe requests from viewers to casters, through each layer's gate.

use std::time::Instant;

use str0m::media::KeyframeRequestKind;

use super::peer::Peer;
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

fn request_keyframe(peer: &mut Peer, layer: u32) {
    if let Some(rx) = peer.rtc.direct_api().stream_rx(&layer.into()) {
        tracing::debug!(live = %peer.live, peer = %peer.id.log(), layer, "keyframe requested");
        rx.request_keyframe(KeyframeRequestKind::Pli);
    }
}
