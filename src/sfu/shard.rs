//! Several `Sfu`s, one per worker thread, serve one set of lives. A caster
//! lives on one shard; viewers anywhere. The caster's shard hands each
//! batch of prepared packets to every other shard that has viewers of the
//! live, once per shard (payloads are shared `Arc`s, never copied per
//! viewer); those shards fan out to their own viewers as if the caster were
//! local, and send keyframe requests back.

use std::sync::Arc;
use std::time::Instant;

use str0m::media::MediaKind;

use super::live::LAYER_CHECK;
use super::peer::Forward;
use super::simulcast::Layers;
use super::{PeerId, Sfu};

/// What shards tell each other, through the runtime.
#[derive(Clone)]
pub enum Remote {
    /// A caster's packets, for the receiving shard's viewers of the live.
    Media {
        live: Arc<str>,
        forwards: Arc<[Forward]>,
    },
    /// The sending shard has (or no longer has) viewers of the live.
    Interest {
        live: Arc<str>,
        shard: usize,
        watching: bool,
    },
    /// Viewers elsewhere need a keyframe of this layer of the live's caster.
    Keyframe { live: Arc<str>, layer: u32 },
    /// The caster's kept group of pictures of one layer (it cannot make
    /// keyframes): viewers waiting for that layer start from it.
    Gop {
        live: Arc<str>,
        group: Arc<[Forward]>,
    },
    /// The live's caster ended.
    CasterGone { live: Arc<str>, caster: PeerId },
    /// A caster (whose session began `since`) took the live: its media
    /// flows. Older casters of the live elsewhere stop.
    TakeOver {
        live: Arc<str>,
        caster: PeerId,
        since: Instant,
    },
}

/// A caster on another shard, as seen from here: its layers are measured
/// from the packets handed over.
#[derive(Debug)]
pub(super) struct RemoteCaster {
    pub peer: PeerId,
    pub video: Layers,
}

impl Sfu {
    /// A message for shard `.0`, to pass on with [`Sfu::handle_remote`].
    pub fn poll_remote(&mut self) -> Option<(usize, Remote)> {
        self.remote_out.pop_front()
    }

    /// A message from another shard.
    pub fn handle_remote(&mut self, msg: Remote, now: Instant) {
        self.last_now = self.last_now.max(now);
        self.remote(msg, now);
        self.process(now);
    }

    fn remote(&mut self, msg: Remote, now: Instant) {
        match msg {
            Remote::Media { live, forwards } => self.remote_media(live, &forwards, now),
            Remote::Interest {
                live,
                shard,
                watching,
            } => {
                let mask = self.interest.entry(live.clone()).or_default();
                if watching {
                    *mask |= 1 << shard;
                } else {
                    *mask &= !(1 << shard);
                    if *mask == 0 {
                        self.interest.remove(&live);
                    }
                }
            }
            Remote::Keyframe { live, layer } => self.remote_wants_keyframe(&live, layer, now),
            Remote::Gop { live, group } => {
                let from = group.first().map(|f| f.media.source.peer);
                let caster = self
                    .lives
                    .get(&live)
                    .and_then(|l| l.remote.as_ref())
                    .map(|r| r.peer);
                if from.is_some() && from == caster {
                    self.replay_gop(&live, &group, now);
                }
            }
            Remote::TakeOver {
                live,
                caster,
                since,
            } => self.taken_over(&live, caster, since, now),
            Remote::CasterGone { live, caster } => {
                if let Some(l) = self.lives.get_mut(&live)
                    && l.remote.as_ref().is_some_and(|r| r.peer == caster)
                {
                    l.remote = None;
                    if l.caster.is_none() {
                        l.next_layer_check = None;
                    }
                }
            }
        }
    }

    fn remote_media(&mut self, live: Arc<str>, forwards: &[Forward], now: Instant) {
        let Some(first) = forwards.first() else {
            return;
        };
        let Some(l) = self.lives.get_mut(&live) else {
            return; // nobody here watches it (any more)
        };
        if l.caster.is_some() {
            return; // a local caster replaced it
        }
        let peer = first.media.source.peer;
        if l.remote.as_ref().is_none_or(|r| r.peer != peer) {
            l.remote = Some(RemoteCaster {
                peer,
                video: Layers::new(self.config.keyframe_interval),
            });
        }
        let remote = l.remote.as_mut().expect("just set");
        let mut new_layer = false;
        for f in forwards.iter().filter(|f| f.kind == MediaKind::Video) {
            let ssrc = f.media.source.ssrc;
            new_layer |=
                remote
                    .video
                    .on_packet(ssrc.into(), f.rid, f.payload.len(), f.media.arrival);
            if f.media.keyframe
                && let Some(layer) = remote.video.get_mut(ssrc)
            {
                layer.keyframes.keyframe_seen();
            }
        }
        if l.next_layer_check.is_none() {
            l.next_layer_check = Some(now + LAYER_CHECK);
        }
        if new_layer {
            self.check_layers(&live, now);
        }
        self.fan_out(&live, forwards, now);
    }

    /// Hands a local caster's packets to the shards that watch the live.
    pub(super) fn relay(&mut self, live: &Arc<str>, forwards: &[Forward]) {
        let Some(&mask) = self.interest.get(live) else {
            return;
        };
        let shared: Arc<[Forward]> = forwards.into();
        for shard in shards_in(mask) {
            self.remote_out.push_back((
                shard,
                Remote::Media {
                    live: live.clone(),
                    forwards: shared.clone(),
                },
            ));
        }
    }

    /// Hands a local caster's kept group of pictures to the shards that
    /// watch the live.
    pub(super) fn relay_gop(&mut self, live: &Arc<str>, group: Arc<[Forward]>) {
        let Some(&mask) = self.interest.get(live) else {
            return;
        };
        for shard in shards_in(mask) {
            self.remote_out.push_back((
                shard,
                Remote::Gop {
                    live: live.clone(),
                    group: group.clone(),
                },
            ));
        }
    }

    /// Tells the other shards whether this one now watches `live`.
    pub(super) fn announce_interest(&mut self, live: &Arc<str>, watching: bool) {
        for shard in (0..self.config.shards).filter(|s| *s != self.config.shard) {
            self.remote_out.push_back((
                shard,
                Remote::Interest {
                    live: live.clone(),
                    shard: self.config.shard,
                    watching,
                },
            ));
        }
    }

    /// Tells every other shard that `caster` took `live`.
    pub(super) fn announce_takeover(&mut self, live: &Arc<str>, caster: PeerId, since: Instant) {
        for shard in (0..self.config.shards).filter(|s| *s != self.config.shard) {
            self.remote_out.push_back((
                shard,
                Remote::TakeOver {
                    live: live.clone(),
                    caster,
                    since,
                },
            ));
        }
    }

    /// Tells the watching shards that the live's caster is gone.
    pub(super) fn announce_caster_gone(&mut self, live: &Arc<str>, caster: PeerId) {
        let Some(&mask) = self.interest.get(live) else {
            return;
        };
        for shard in shards_in(mask) {
            self.remote_out.push_back((
                shard,
                Remote::CasterGone {
                    live: live.clone(),
                    caster,
                },
            ));
        }
    }
}

fn shards_in(mask: u64) -> impl Iterator<Item = usize> {
    (0..64).filter(move |s| mask & (1 << s) != 0)
}
