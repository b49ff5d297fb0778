//! Instant join for casters that cannot make a keyframe when asked.
//!
//! An RTMP encoder cannot hear a PLI: a new viewer would wait for the
//! encoder's next keyframe, up to 8 s with OBS's defaults. Such a caster's
//! current group of pictures (its latest keyframe and every video packet
//! since) is kept, and a viewer that needs a keyframe gets the group at
//! once instead (`OutTrack::replay`), its timestamps squeezed together so
//! the viewer's jitter buffer shows the group as a quick catch-up to the
//! live edge rather than playing it at its pace, seconds behind.

use std::time::Duration;

use str0m::media::MediaKind;

use super::forward::SourceId;
use super::peer::Forward;

/// A group larger than this is not kept (what it would cost a viewer to
/// receive at once is more than a join is worth): such a live's viewers
/// wait for the next keyframe, as without a cache. 8 MiB holds 10 s at
/// 6 Mbit/s.
pub const MAX_GOP_BYTES: usize = 8 << 20;
/// Likewise in packets (a 10 s group at 6 Mbit/s is ~5600 packets).
pub const MAX_GOP_PACKETS: usize = 12_000;
/// Layers kept per caster (simulcast has three).
const MAX_LAYERS: usize = 4;

/// The current group of pictures of each of a caster's video layers.
#[derive(Default)]
pub struct GopCache {
    layers: Vec<Gop>,
}

struct Gop {
    source: SourceId,
    /// The group's keyframe, by RTP timestamp; `None` while the layer
    /// waits for a keyframe (at the start, or after the group outgrew the
    /// bounds).
    keyframe_ts: Option<u32>,
    packets: Vec<Forward>,
    bytes: usize,
}

impl GopCache {
    /// Takes in a caster's packet (audio is ignored: it needs no keyframe).
    pub fn push(&mut self, f: &Forward) {
        if f.kind != MediaKind::Video {
            return;
        }
        let source = f.media.source;
        let i = match self.layers.iter().position(|g| g.source == source) {
            Some(i) => i,
            None => {
                if self.layers.len() == MAX_LAYERS {
                    self.layers.remove(0);
                }
                self.layers.push(Gop {
                    source,
                    keyframe_ts: None,
                    packets: Vec::new(),
                    bytes: 0,
                });
                self.layers.len() - 1
            }
        };
        let gop = &mut self.layers[i];
        if f.media.keyframe && gop.keyframe_ts != Some(f.media.ts) {
            gop.keyframe_ts = Some(f.media.ts);
            gop.packets.clear();
            gop.bytes = 0;
        }
        if gop.keyframe_ts.is_none() {
            return;
        }
        if gop.bytes + f.payload.len() > MAX_GOP_BYTES || gop.packets.len() >= MAX_GOP_PACKETS {
            gop.keyframe_ts = None;
            // Released, not kept at its largest.
            gop.packets = Vec::new();
            gop.bytes = 0;
            return;
        }
        gop.bytes += f.payload.len();
        gop.packets.push(f.clone());
    }

    /// The group of `layer` (an SSRC), from its keyframe, if one is kept.
    pub fn group(&self, layer: u32) -> Option<&[Forward]> {
        self.layers
            .iter()
            .find(|g| g.source.ssrc == layer && g.keyframe_ts.is_some())
            .map(|g| g.packets.as_slice())
            .filter(|p| !p.is_empty())
    }
}

/// The media time a group spans, first packet to last.
pub fn span(group: &[Forward]) -> Duration {
    match (group.first(), group.last()) {
        (Some(a), Some(b)) => {
            let ticks = b.media.ts.wrapping_sub(a.media.ts);
            Duration::from_secs_f64(ticks as f64 / a.media.clock_rate.max(1) as f64)
        }
        _ => Duration::ZERO,
    }
}

/// The rate to send a group at to a viewer that has just joined: three
/// times the rate it was made at, within sane bounds.
pub fn burst_rate(group: &[Forward]) -> Option<u64> {
    let secs = span(group).as_secs_f64();
    if secs < 0.05 {
        return None;
    }
    let bytes: usize = group.iter().map(|f| f.payload.len()).sum();
    let rate = (bytes as f64 * 8.0 / secs) as u64;
    Some((rate * 3).clamp(1_000_000, 20_000_000))
}

/// For each packet of `group`, what to add to its RTP timestamp so that
/// the group's frames are one tick apart and end at the last frame's
/// timestamp: the viewer then takes them as all due now, decodes them as
/// fast as they come and goes on with the live frames at their own pace.
pub fn squeeze(group: &[Forward]) -> Vec<u32> {
    let Some(last) = group.last() else {
        return Vec::new();
    };
    let mut adjust = vec![0u32; group.len()];
    // Frames after each packet's frame, counted from the end.
    let mut after = 0u32;
    let mut frame_ts = last.media.ts;
    for (i, f) in group.iter().enumerate().rev() {
        if f.media.ts != frame_ts {
            frame_ts = f.media.ts;
            after += 1;
        }
        adjust[i] = last.media.ts.wrapping_sub(f.media.ts).wrapping_sub(after);
    }
    adjust
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use str0m::format::{Codec, CodecSpec, FormatParams};
    use str0m::media::{ExtensionValues, MediaKind};

    use super::*;
    use crate::sfu::PeerId;
    use crate::sfu::forward::MediaPacket;

    fn packet(kind: MediaKind, seq: u64, ts: u32, keyframe: bool, len: usize) -> Forward {
        Forward {
            kind,
            rid: None,
            media: MediaPacket {
                source: SourceId {
                    peer: PeerId(1),
                    ssrc: 7,
                },
                seq,
                ts,
                arrival: Instant::now(),
                clock_rate: 90_000,
                keyframe,
                vp8: None,
            },
            spec: CodecSpec {
                codec: Codec::H264,
                clock_rate: str0m::media::Frequency::NINETY_KHZ,
                channels: None,
                format: FormatParams::default(),
            },
            pt: 96.into(),
            marker: false,
            exts: ExtensionValues::default(),
            payload: Arc::from(vec![0u8; len]),
            red: false,
            primary: None,
        }
    }

    #[test]
    fn a_group_starts_at_the_latest_keyframe() {
        let mut c = GopCache::default();
        // Before any keyframe: nothing to give.
        c.push(&packet(MediaKind::Video, 1, 0, false, 100));
        assert!(c.group(7).is_none());
        c.push(&packet(MediaKind::Video, 2, 3000, true, 100));
        c.push(&packet(MediaKind::Video, 3, 3000, false, 100));
        c.push(&packet(MediaKind::Audio, 4, 3000, false, 100));
        c.push(&packet(MediaKind::Video, 5, 6000, false, 100));
        let g = c.group(7).unwrap();
        assert_eq!(g.iter().map(|f| f.media.seq).collect::<Vec<_>>(), [2, 3, 5]);
        // The next keyframe starts a new group.
        c.push(&packet(MediaKind::Video, 6, 9000, true, 100));
        assert_eq!(c.group(7).unwrap().len(), 1);
        assert!(c.group(8).is_none());
    }

    #[test]
    fn a_group_past_the_bounds_is_dropped_until_the_next_keyframe() {
        let mut c = GopCache::default();
        c.push(&packet(MediaKind::Video, 1, 0, true, 1000));
        let per = MAX_GOP_BYTES / 1000;
        for i in 0..per as u64 + 10 {
            c.push(&packet(MediaKind::Video, 2 + i, 3000, false, 1000));
        }
        assert!(c.group(7).is_none(), "too large to replay");
        c.push(&packet(MediaKind::Video, 1_000_000, 6000, true, 1000));
        assert_eq!(c.group(7).unwrap().len(), 1);
    }

    #[test]
    fn squeezed_frames_are_one_tick_apart_and_end_at_the_last() {
        let g = vec![
            packet(MediaKind::Video, 1, 1000, true, 10),
            packet(MediaKind::Video, 2, 1000, false, 10),
            packet(MediaKind::Video, 3, 4000, false, 10),
            packet(MediaKind::Video, 4, 7000, false, 10),
            packet(MediaKind::Video, 5, 7000, false, 10),
        ];
        let out: Vec<u32> = g
            .iter()
            .zip(squeeze(&g))
            .map(|(f, a)| f.media.ts.wrapping_add(a))
            .collect();
        assert_eq!(out, [6998, 6998, 6999, 7000, 7000]);
        assert_eq!(span(&g), Duration::from_secs_f64(6000.0 / 90_000.0));
        // Across the 32-bit wrap.
        let g = vec![
            packet(MediaKind::Video, 1, u32::MAX - 100, true, 10),
            packet(MediaKind::Video, 2, 2900, false, 10),
        ];
        let out: Vec<u32> = g
            .iter()
            .zip(squeeze(&g))
            .map(|(f, a)| f.media.ts.wrapping_add(a))
            .collect();
        assert_eq!(out, [2899, 2900]);
    }
}
