//! Per-viewer RTP rewriting: one continuous outgoing stream, whatever the
//! source behind it.
//!
//! A viewer's outgoing track keeps its own SSRC, sequence numbers, timestamps
//! and VP8 picture ids. When the source changes (the caster reconnects, or a
//! later simulcast layer switch), the new source is spliced in at a keyframe
//! with offsets chosen so that the viewer's decoder sees a stream that simply
//! goes on.

use std::time::Instant;

use str0m::rtp::{Vp8Descriptor, Vp8Patch};

use super::PeerId;

/// One incoming RTP stream of a caster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceId {
    pub peer: PeerId,
    pub ssrc: u32,
}

/// What the rewriter needs to know about an incoming packet.
#[derive(Debug, Clone, Copy)]
pub struct MediaPacket {
    pub source: SourceId,
    /// Extended (rollover-free) sequence number.
    pub seq: u64,
    pub ts: u32,
    pub arrival: Instant,
    pub clock_rate: u32,
    /// The packet starts a keyframe (always false for audio).
    pub keyframe: bool,
    pub vp8: Option<Vp8Descriptor>,
}

/// Header fields for the viewer's copy of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    pub seq: u64,
    pub ts: u32,
    /// The VP8 picture id the viewer sees, if the packet carries one.
    pub picture_id: Option<u16>,
    pub vp8_patch: Option<Vp8Patch>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Send(Rewritten),
    /// Not for this viewer (a stale source, or from before the splice point).
    Drop,
    /// A new source can only be spliced in at a keyframe: ask the caster.
    NeedKeyframe,
}

/// Rewrites one media track (audio or video) of one viewer.
///
/// Every packet handed in is from a source the viewer should see; a packet
/// from another source than the current one is a request to splice that
/// source in (the caller picks sources: caster, simulcast layer).
#[derive(Debug)]
pub struct TrackRewriter {
    splice_at_keyframe: bool,
    mapping: Option<Mapping>,
    last: Option<LastOut>,
}

#[derive(Debug, Clone, Copy)]
struct Mapping {
    source: SourceId,
    /// Packets of this source older than the splice point are dropped.
    first_seq: u64,
    seq_offset: i64,
    ts_offset: u32,
    picture_id_offset: u16,
    tl0_offset: u8,
}

/// The highest packet sent so far, to continue from at the next splice.
#[derive(Debug, Clone, Copy)]
struct LastOut {
    seq: u64,
    ts: u32,
    at: Instant,
    clock_rate: u32,
    picture_id: Option<u16>,
    tl0: Option<u8>,
}

const PICTURE_ID_MOD: u16 = 1 << 15;

impl TrackRewriter {
    pub fn video() -> Self {
        Self::new(true)
    }

    pub fn audio() -> Self {
        Self::new(false)
    }

    fn new(splice_at_keyframe: bool) -> Self {
        Self {
            splice_at_keyframe,
            mapping: None,
            last: None,
        }
    }

    /// The source currently spliced in, if any.
    pub fn source(&self) -> Option<SourceId> {
        self.mapping.map(|m| m.source)
    }

    /// Lets go of the current source: what comes next (video: from a
    /// keyframe) is spliced in to follow the last packet sent, as a new
    /// source would be. For a viewer that skips ahead: no gap in its
    /// sequence numbers to NACK, and timestamps that jump by the time
    /// skipped.
    pub fn resync(&mut self) {
        self.mapping = None;
    }

    pub fn rewrite(&mut self, pkt: &MediaPacket) -> Verdict {
        let mapping = match self.mapping {
            Some(m) if m.source == pkt.source => {
                if pkt.seq < m.first_seq {
                    return Verdict::Drop;
                }
                m
            }
            _ => {
                if self.splice_at_keyframe && !pkt.keyframe {
                    return Verdict::NeedKeyframe;
                }
                let m = self.splice(pkt);
                self.mapping = Some(m);
                m
            }
        };

        let seq = (pkt.seq as i64 + mapping.seq_offset) as u64;
        let ts = pkt.ts.wrapping_add(mapping.ts_offset);
        let (picture_id, tl0) = match &pkt.vp8 {
            Some(d) => (
                d.picture_id()
                    .map(|p| p.wrapping_add(mapping.picture_id_offset) % PICTURE_ID_MOD),
                d.tl0_pic_idx().map(|t| t.wrapping_add(mapping.tl0_offset)),
            ),
            None => (None, None),
        };
        let vp8_patch = pkt
            .vp8
            .filter(|_| mapping.picture_id_offset != 0 || mapping.tl0_offset != 0)
            .and_then(|d| vp8_patch(&d, picture_id, tl0));

        if self.last.is_none_or(|l| seq > l.seq) {
            self.last = Some(LastOut {
                seq,
                ts,
                at: pkt.arrival,
                clock_rate: pkt.clock_rate,
                picture_id: picture_id.or(self.last.and_then(|l| l.picture_id)),
                tl0: tl0.or(self.last.and_then(|l| l.tl0)),
            });
        }
        Verdict::Send(Rewritten {
            seq,
            ts,
            picture_id,
            vp8_patch,
        })
    }

    /// Offsets that make `pkt` follow the last packet sent.
    fn splice(&self, pkt: &MediaPacket) -> Mapping {
        let Some(last) = self.last else {
            // First source ever: keep its numbering, but start below 2^16 so
            // the SRTP rollover counter starts at zero as the viewer expects.
            let start = pkt.seq % (1 << 16);
            return Mapping {
                source: pkt.source,
                first_seq: pkt.seq,
                seq_offset: start as i64 - pkt.seq as i64,
                ts_offset: 0,
                picture_id_offset: 0,
                tl0_offset: 0,
            };
        };
        // Advance the timestamp by the wall time that passed, so the
        // viewer's jitter buffer sees real time go by, never time going back.
        let elapsed = pkt.arrival.saturating_duration_since(last.at);
        let ticks = (elapsed.as_secs_f64() * last.clock_rate as f64) as u32;
        let ts = last.ts.wrapping_add(ticks.max(1));
        let vp8 = pkt.vp8.as_ref();
        Mapping {
            source: pkt.source,
            first_seq: pkt.seq,
            seq_offset: (last.seq + 1) as i64 - pkt.seq as i64,
            ts_offset: ts.wrapping_sub(pkt.ts),
            picture_id_offset: match (last.picture_id, vp8.and_then(|d| d.picture_id())) {
                (Some(out), Some(inp)) => {
                    (out + 1).wrapping_sub(inp).wrapping_add(PICTURE_ID_MOD) % PICTURE_ID_MOD
                }
                _ => 0,
            },
            tl0_offset: match (last.tl0, vp8.and_then(|d| d.tl0_pic_idx())) {
                (Some(out), Some(inp)) => out.wrapping_add(1).wrapping_sub(inp),
                _ => 0,
            },
        }
    }
}

fn vp8_patch(d: &Vp8Descriptor, picture_id: Option<u16>, tl0: Option<u8>) -> Option<Vp8Patch> {
    let build = |pid: Option<u16>| {
        let mut b = d.patch();
        if let Some(p) = pid {
            b = b.picture_id(p);
        }
        if let Some(t) = tl0 {
            b = b.tl0_pic_idx(t);
        }
        b.build().ok()
    };
    // A 7-bit picture id wraps at 128: retry in its own width.
    build(picture_id).or_else(|| build(picture_id.map(|p| p & 0x7f)))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn src(peer: u128, ssrc: u32) -> SourceId {
        SourceId {
            peer: PeerId(peer),
            ssrc,
        }
    }

    /// A caster's video stream: 30 fps, 3 packets a frame, keyframe every
    /// `gop` frames, VP8 descriptors with 15-bit picture ids.
    struct Caster {
        source: SourceId,
        seq: u64,
        ts: u32,
        picture_id: u16,
        frame: u32,
        gop: u32,
    }

    impl Caster {
        fn new(source: SourceId, seq: u64, ts: u32, picture_id: u16, gop: u32) -> Self {
            Self {
                source,
                seq,
                ts,
                picture_id,
                frame: 0,
                gop,
            }
        }

        /// The packets of the next frame, sent at `at`.
        fn frame(&mut self, at: Instant) -> Vec<MediaPacket> {
            let key = self.frame.is_multiple_of(self.gop);
            let mut out = vec![];
            for i in 0..3 {
                let start = i == 0;
                // X=1, S on first packet; I=1, M=1 (15-bit picture id); then
                // the VP8 payload header byte (bit 0 clear on a keyframe).
                let payload = vec![
                    0x80 | if start { 0x10 } else { 0 },
                    0x80,
                    0x80 | (self.picture_id >> 8) as u8,
                    self.picture_id as u8,
                    if key { 0x00 } else { 0x01 },
                    0xaa,
                ];
                let vp8 = Vp8Descriptor::parse(&payload).ok();
                out.push(MediaPacket {
                    source: self.source,
                    seq: self.seq,
                    ts: self.ts,
                    arrival: at,
                    clock_rate: 90_000,
                    keyframe: key && start,
                    vp8,
                });
                self.seq += 1;
            }
            self.ts = self.ts.wrapping_add(3000);
            self.picture_id = (self.picture_id + 1) % PICTURE_ID_MOD;
            self.frame += 1;
            out
        }
    }

    fn sent(v: Verdict) -> Rewritten {
        match v {
            Verdict::Send(r) => r,
            other => panic!("expected Send, got {other:?}"),
        }
    }

    #[test]
    fn first_source_starts_below_the_rollover() {
        let t0 = Instant::now();
        let mut rw = TrackRewriter::video();
        let mut caster = Caster::new(src(1, 10), 3 * 65_536 + 100, 1_000, 7, 30);
        let pkts = caster.frame(t0);
        let out: Vec<_> = pkts.iter().map(|p| sent(rw.rewrite(p))).collect();
        assert_eq!(out[0].seq, 100);
        assert_eq!(out[2].seq, 102);
        assert_eq!(out[0].ts, 1_000, "first source keeps its timestamps");
        assert_eq!(out[0].vp8_patch, None, "nothing to patch without a splice");
    }

    #[test]
    fn video_waits_for_a_keyframe_before_splicing() {
        let t0 = Instant::now();
        let mut rw = TrackRewriter::video();
        let mut caster = Caster::new(src(1, 10), 500, 0, 0, 30);
        caster.frame(t0); // keyframe missed
        let delta = caster.frame(t0);
        assert_eq!(rw.rewrite(&delta[0]), Verdict::NeedKeyframe);
        assert_eq!(rw.source(), None);
    }

    #[test]
    fn a_viewer_that_skips_ahead_resumes_at_a_keyframe_with_no_gap() {
        let t0 = Instant::now();
        let frame = Duration::from_millis(33);
        let mut rw = TrackRewriter::video();
        let mut caster = Caster::new(src(1, 10), 100, 0, 0, 10);
        let mut out = vec![];
        let mut now = t0;
        for _ in 0..5 {
            out.extend(caster.frame(now).iter().map(|p| sent(rw.rewrite(p))));
            now += frame;
        }
        // Behind: frames 5-9 are never handed to the rewriter.
        rw.resync();
        for _ in 5..10 {
            caster.frame(now);
            now += frame;
        }
        // The next frames until the keyframe wait; then the stream goes on.
        let key = caster.frame(now);
        out.extend(key.iter().map(|p| sent(rw.rewrite(p))));
        for pair in out.windows(2) {
            assert_eq!(pair[1].seq, pair[0].seq + 1, "no gap to NACK");
        }
        let jump = out[15].ts.wrapping_sub(out[14].ts);
        assert!(
            (17_000..=18_500).contains(&jump),
            "the timestamp jumps by the time skipped (~6 frames), got {jump}"
        );
    }

    #[test]
    fn caster_replacement_keeps_the_viewer_stream_continuous() {
        let t0 = Instant::now();
        let frame = Duration::from_millis(33);
        let mut rw = TrackRewriter::video();
        let mut old = Caster::new(src(1, 10), 60_000, 4_000_000_000, 32_000, 30);
        let mut out = vec![];
        let mut now = t0;
        for _ in 0..40 {
            for p in old.frame(now) {
                out.push(sent(rw.rewrite(&p)));
            }
            now += frame;
        }
        // The new caster numbers everything from scratch; its first frames
        // are deltas (the keyframe request is on its way).
        now += Duration::from_millis(700);
        let mut new = Caster::new(src(2, 77), 12, 5, 3, 4);
        new.frame = 1;
        let before_splice = new.frame(now);
        for p in &before_splice {
            assert_eq!(rw.rewrite(p), Verdict::NeedKeyframe);
        }
        now += frame;
        new.frame = 4;
        for _ in 0..10 {
            for p in new.frame(now) {
                out.push(sent(rw.rewrite(&p)));
            }
            now += frame;
        }
        // A retransmission from before the splice point has no place in the
        // viewer's stream.
        assert_eq!(rw.rewrite(&before_splice[1]), Verdict::Drop);

        for pair in out.windows(2) {
            assert_eq!(
                pair[1].seq,
                pair[0].seq + 1,
                "sequence numbers are contiguous"
            );
            let step = pair[1].ts.wrapping_sub(pair[0].ts);
            assert!(
                step < 90_000,
                "timestamps move forward by < 1 s, got {step}"
            );
        }
        let splice = 40 * 3;
        let gap = out[splice].ts.wrapping_sub(out[splice - 1].ts);
        assert!(
            (60_000..=70_000).contains(&gap),
            "the splice advances by the wall time that passed (~733 ms), got {gap}"
        );
    }

    #[test]
    fn vp8_picture_ids_continue_across_a_splice() {
        let t0 = Instant::now();
        let mut rw = TrackRewriter::video();
        let mut old = Caster::new(src(1, 10), 0, 0, PICTURE_ID_MOD - 2, 30);
        let mut new = Caster::new(src(2, 20), 9, 9, 1234, 30);
        let mut out = vec![];
        for _ in 0..3 {
            out.extend(old.frame(t0).iter().map(|p| sent(rw.rewrite(p))));
        }
        for _ in 0..2 {
            out.extend(new.frame(t0).iter().map(|p| sent(rw.rewrite(p))));
        }
        let frames: Vec<u16> = out.chunks(3).map(|c| c[0].picture_id.unwrap()).collect();
        assert_eq!(
            frames,
            vec![PICTURE_ID_MOD - 2, PICTURE_ID_MOD - 1, 0, 1, 2]
        );
        assert!(out[..9].iter().all(|r| r.vp8_patch.is_none()));
        assert!(out[9..].iter().all(|r| r.vp8_patch.is_some()));
    }

    #[test]
    fn retransmissions_map_to_the_same_sequence_number() {
        let t0 = Instant::now();
        let mut rw = TrackRewriter::audio();
        let pkt = |seq| MediaPacket {
            source: src(1, 5),
            seq,
            ts: seq as u32 * 960,
            arrival: t0,
            clock_rate: 48_000,
            keyframe: false,
            vp8: None,
        };
        let a = sent(rw.rewrite(&pkt(100)));
        let _ = sent(rw.rewrite(&pkt(102)));
        let late = sent(rw.rewrite(&pkt(101)));
        assert_eq!(late.seq, a.seq + 1);
        assert_eq!(late.ts, a.ts + 960);
    }
}
