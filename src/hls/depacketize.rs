//! RTP payloads back into media frames, for the HLS muxer: H.264 (RFC 6184,
//! packetization-mode 1, what browsers send) and Opus (RFC 7587).
//!
//! Loss policy: a frame with a hole in it is worse than no frame (the decoder
//! shows garbage until the next IDR), and every frame after a lost one
//! references something missing. So any sequence gap or broken FU-A drops the
//! frame in progress and everything up to the next IDR. The caller should ask
//! the sender for a keyframe (PLI) when [`H264Depacketizer::waiting_for_keyframe`]
//! turns true; this module does no IO.

/// One complete H.264 access unit (one picture).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessUnit {
    /// RTP timestamp (90 kHz) of the picture.
    pub rtp_ts: u32,
    /// The access unit holds an IDR slice: decoding can start here.
    pub keyframe: bool,
    /// The picture's NAL units, each behind a 4-byte big-endian length
    /// (AVCC, as MP4 stores them). SPS, PPS and access unit delimiters are
    /// taken out: MP4 keeps parameter sets in the init segment and has no use
    /// for delimiters.
    pub nalus: Vec<u8>,
    /// The SPS sent with (or just before) this picture, if any.
    pub sps: Option<Vec<u8>>,
    /// The PPS sent with (or just before) this picture, if any.
    pub pps: Option<Vec<u8>>,
}

const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
const NAL_AUD: u8 = 9;
const STAP_A: u8 = 24;
const FU_A: u8 = 28;

/// Cap on one access unit's size. A 4K intra frame at high quality is a few
/// MB; past this the sender is broken or hostile, and we stop buffering.
pub const MAX_ACCESS_UNIT: usize = 8 << 20;

/// H.264 depacketizer state for one RTP stream (one SSRC).
#[derive(Debug)]
pub struct H264Depacketizer {
    last_seq: Option<u64>,
    /// The access unit being gathered, keyed by its RTP timestamp.
    cur: Option<Building>,
    /// FU-A reassembly: the NAL unit so far (header byte first).
    fu: Option<Vec<u8>>,
    /// Set after a loss (and at the start): drop frames until an IDR.
    waiting_for_idr: bool,
    /// Parameter sets seen in an access unit that had no picture in it
    /// (some senders put SPS/PPS in a packet of their own with another
    /// timestamp): handed on with the next picture.
    stray_sps: Option<Vec<u8>>,
    stray_pps: Option<Vec<u8>>,
}

#[derive(Debug)]
struct Building {
    rtp_ts: u32,
    nalus: Vec<u8>,
    keyframe: bool,
    sps: Option<Vec<u8>>,
    pps: Option<Vec<u8>>,
    /// A piece is missing: the access unit is dropped when it completes.
    broken: bool,
}

impl H264Depacketizer {
    /// A depacketizer waiting for its first IDR: frames before it can't be
    /// decoded by anyone who joins now, so they are never emitted.
    pub fn new() -> Self {
        Self {
            last_seq: None,
            cur: None,
            fu: None,
            waiting_for_idr: true,
            stray_sps: None,
            stray_pps: None,
        }
    }

    /// True while frames are being dropped for want of an IDR: a good time
    /// for the caller to send the sender a PLI.
    pub fn waiting_for_keyframe(&self) -> bool {
        self.waiting_for_idr
    }

    /// Feeds one RTP packet. `seq` is the extended (unwrapped) sequence
    /// number. Returns the access units this packet completed: usually none or
    /// one; two when a timestamp change ends a frame whose marker was lost and
    /// this packet carries a whole frame with its marker.
    pub fn push(&mut self, payload: &[u8], rtp_ts: u32, seq: u64, marker: bool) -> Vec<AccessUnit> {
        let mut out = Vec::new();
        let gap = match self.last_seq {
            // Duplicate, or late after we already gave up on it.
            Some(last) if seq <= last => return out,
            Some(last) => seq != last + 1,
            None => false,
        };
        self.last_seq = Some(seq);
        if gap {
            // The frame in progress lost a piece (its tail at least).
            if let Some(cur) = &mut self.cur {
                cur.broken = true;
            }
            self.fu = None;
            self.waiting_for_idr = true;
        }

        // A new timestamp ends the previous access unit even without its
        // marker (lost, or a sender that doesn't set it).
        if self.cur.as_ref().is_some_and(|b| b.rtp_ts != rtp_ts) {
            self.finish(&mut out);
        }
        let cur = self.cur.get_or_insert_with(|| Building {
            rtp_ts,
            nalus: Vec::new(),
            keyframe: false,
            sps: None,
            pps: None,
            // After a gap, the lost packets may have been this frame's start.
            broken: gap,
        });
        if !take_payload(cur, &mut self.fu, payload) {
            cur.broken = true;
            self.fu = None;
        }
        if marker {
            self.finish(&mut out);
        }
        out
    }

    /// Ends the access unit in progress: emits it, or drops it if it is
    /// broken or undecodable (no IDR since the last loss).
    fn finish(&mut self, out: &mut Vec<AccessUnit>) {
        let Some(mut b) = self.cur.take() else {
            return;
        };
        if self.fu.take().is_some() {
            // A fragmented NAL unit never got its end bit.
            b.broken = true;
        }
        if b.broken {
            self.waiting_for_idr = true;
            return;
        }
        if b.nalus.is_empty() || (self.waiting_for_idr && !b.keyframe) {
            // No picture to emit (or one nobody can decode), but its
            // parameter sets may serve the next IDR.
            self.stray_sps = b.sps.or(self.stray_sps.take());
            self.stray_pps = b.pps.or(self.stray_pps.take());
            return;
        }
        self.waiting_for_idr = false;
        out.push(AccessUnit {
            rtp_ts: b.rtp_ts,
            keyframe: b.keyframe,
            nalus: b.nalus,
            sps: b.sps.or(self.stray_sps.take()),
            pps: b.pps.or(self.stray_pps.take()),
        });
        self.stray_sps = None;
        self.stray_pps = None;
    }
}

impl Default for H264Depacketizer {
    fn default() -> Self {
        Self::new()
    }
}

/// Adds one RTP payload's NAL units to `cur`. False if the payload is
/// malformed or out of place (the access unit is then broken).
fn take_payload(cur: &mut Building, fu: &mut Option<Vec<u8>>, p: &[u8]) -> bool {
    let Some(&first) = p.first() else {
        // Empty payloads are padding-only packets: harmless.
        return true;
    };
    match first & 0x1f {
        1..=23 => take_nal(cur, p),
        STAP_A => {
            let mut rest = &p[1..];
            while !rest.is_empty() {
                let Some((len, tail)) = rest.split_first_chunk::<2>() else {
                    return false;
                };
                let len = usize::from(u16::from_be_bytes(*len));
                if len == 0 || len > tail.len() {
                    return false;
                }
                if !take_nal(cur, &tail[..len]) {
                    return false;
                }
                rest = &tail[len..];
            }
            true
        }
        FU_A => {
            let [indicator, header, data @ ..] = p else {
                return false;
            };
            let (start, end, nal_type) = (header & 0x80 != 0, header & 0x40 != 0, header & 0x1f);
            if start {
                if fu.is_some() {
                    // The previous fragmented NAL unit never ended.
                    return false;
                }
                // The NAL header is rebuilt from the indicator's F and NRI
                // bits and the FU header's type (RFC 6184 5.8).
                *fu = Some(vec![(indicator & 0xe0) | nal_type]);
            }
            let Some(buf) = fu else {
                // A middle or end fragment whose start we never saw.
                return false;
            };
            if buf[0] & 0x1f != nal_type {
                return false;
            }
            if cur.nalus.len() + buf.len() + data.len() > MAX_ACCESS_UNIT {
                return false;
            }
            buf.extend_from_slice(data);
            if end {
                let nal = fu.take().unwrap_or_default();
                return take_nal(cur, &nal);
            }
            true
        }
        // STAP-B, MTAP and FU-B belong to the interleaved mode browsers
        // don't use; type 0 and 30/31 are undefined.
        _ => false,
    }
}

/// Adds one NAL unit to `cur`: parameter sets aside, delimiters dropped,
/// everything else length-prefixed into the picture.
fn take_nal(cur: &mut Building, nal: &[u8]) -> bool {
    let Some(&header) = nal.first() else {
        return false;
    };
    match header & 0x1f {
        NAL_SPS => cur.sps = Some(nal.to_vec()),
        NAL_PPS => cur.pps = Some(nal.to_vec()),
        NAL_AUD => {}
        0 | 24.. => return false,
        t => {
            if cur.nalus.len() + nal.len() + 4 > MAX_ACCESS_UNIT {
                return false;
            }
            cur.keyframe |= t == NAL_IDR;
            cur.nalus
                .extend_from_slice(&(nal.len() as u32).to_be_bytes());
            cur.nalus.extend_from_slice(nal);
        }
    }
    true
}

/// Opus needs no depacketizing: one RTP payload is one Opus packet (RFC 7587
/// section 4.2), which is exactly one MP4 sample. Here so the HLS code names
/// the step instead of passing payloads through unremarked.
pub fn opus_frame(payload: &[u8]) -> &[u8] {
    payload
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPS: &[u8] = &[0x67, 0x42, 0xc0, 0x1f, 0xd9];
    const PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];

    fn idr(len: usize) -> Vec<u8> {
        let mut n = vec![0x65];
        n.extend((0..len).map(|i| (i % 251) as u8 + 1));
        n
    }

    fn slice(len: usize) -> Vec<u8> {
        let mut n = vec![0x41];
        n.extend((0..len).map(|i| (i % 13) as u8 + 1));
        n
    }

    fn avcc(nals: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for n in nals {
            out.extend_from_slice(&(n.len() as u32).to_be_bytes());
            out.extend_from_slice(n);
        }
        out
    }

    fn stap_a(nals: &[&[u8]]) -> Vec<u8> {
        let mut p = vec![0x78]; // NRI 3, type 24
        for n in nals {
            p.extend_from_slice(&(n.len() as u16).to_be_bytes());
            p.extend_from_slice(n);
        }
        p
    }

    fn fu_a(nal: &[u8], chunk: usize) -> Vec<Vec<u8>> {
        let body = &nal[1..];
        let n = body.len().div_ceil(chunk);
        body.chunks(chunk)
            .enumerate()
            .map(|(i, c)| {
                let mut h = nal[0] & 0x1f;
                if i == 0 {
                    h |= 0x80;
                }
                if i == n - 1 {
                    h |= 0x40;
                }
                let mut p = vec![(nal[0] & 0xe0) | FU_A, h];
                p.extend_from_slice(c);
                p
            })
            .collect()
    }

    /// Feeds packets with consecutive sequence numbers from `seq`, the
    /// marker on the last; returns what came out.
    fn feed(d: &mut H264Depacketizer, pkts: &[Vec<u8>], ts: u32, seq: &mut u64) -> Vec<AccessUnit> {
        let mut out = Vec::new();
        for (i, p) in pkts.iter().enumerate() {
            out.extend(d.push(p, ts, *seq, i == pkts.len() - 1));
            *seq += 1;
        }
        out
    }

    #[test]
    fn stap_a_and_fu_a_make_one_keyframe_without_parameter_sets_in_it() {
        let mut d = H264Depacketizer::new();
        let big = idr(3000);
        let mut pkts = vec![stap_a(&[SPS, PPS, &[0x09, 0xf0]])];
        pkts.extend(fu_a(&big, 1000));
        let mut seq = 10;
        let aus = feed(&mut d, &pkts, 9000, &mut seq);
        assert_eq!(aus.len(), 1);
        let au = &aus[0];
        assert!(au.keyframe);
        assert_eq!(au.rtp_ts, 9000);
        assert_eq!(au.sps.as_deref(), Some(SPS));
        assert_eq!(au.pps.as_deref(), Some(PPS));
        // Only the IDR, length-prefixed; no SPS, PPS or AUD.
        assert_eq!(au.nalus, avcc(&[&big]));
        assert!(!d.waiting_for_keyframe());

        // A P-frame of two single-NAL packets.
        let (a, b) = (slice(100), slice(50));
        let aus = feed(&mut d, &[a.clone(), b.clone()], 12000, &mut seq);
        assert_eq!(aus.len(), 1);
        assert!(!aus[0].keyframe);
        assert_eq!(aus[0].nalus, avcc(&[&a, &b]));
        assert_eq!((aus[0].sps.as_ref(), aus[0].pps.as_ref()), (None, None));
    }

    #[test]
    fn frames_before_the_first_idr_are_dropped() {
        let mut d = H264Depacketizer::new();
        let mut seq = 0;
        assert!(feed(&mut d, &[slice(10)], 0, &mut seq).is_empty());
        assert!(d.waiting_for_keyframe());
        let aus = feed(&mut d, &[stap_a(&[SPS, PPS]), idr(10)], 3000, &mut seq);
        assert_eq!(aus.len(), 1);
        assert!(aus[0].keyframe);
    }

    #[test]
    fn a_timestamp_change_ends_a_frame_whose_marker_was_lost() {
        let mut d = H264Depacketizer::new();
        // No marker on the IDR: it ends when the next timestamp shows up.
        assert!(d.push(&idr(10), 0, 0, false).is_empty());
        let aus = d.push(&slice(10), 3000, 1, true);
        assert_eq!(aus.len(), 2);
        assert_eq!((aus[0].rtp_ts, aus[0].keyframe), (0, true));
        assert_eq!((aus[1].rtp_ts, aus[1].keyframe), (3000, false));
    }

    #[test]
    fn a_sequence_gap_drops_frames_until_the_next_idr() {
        let mut d = H264Depacketizer::new();
        let mut seq = 0;
        assert_eq!(feed(&mut d, &[idr(10)], 0, &mut seq).len(), 1);
        // Second frame in three packets, the middle one lost.
        let frags = fu_a(&slice(3000), 1000);
        assert!(d.push(&frags[0], 3000, seq, false).is_empty());
        assert!(d.push(&frags[2], 3000, seq + 2, true).is_empty());
        seq += 3;
        assert!(d.waiting_for_keyframe());
        // Whole P-frames still can't be decoded: dropped.
        assert!(feed(&mut d, &[slice(10)], 6000, &mut seq).is_empty());
        // The IDR resumes.
        let aus = feed(&mut d, &[idr(10)], 9000, &mut seq);
        assert_eq!(aus.len(), 1);
        assert!(aus[0].keyframe);
        assert_eq!(feed(&mut d, &[slice(10)], 12000, &mut seq).len(), 1);
    }

    #[test]
    fn the_frame_right_after_a_gap_is_dropped_even_if_it_looks_whole() {
        let mut d = H264Depacketizer::new();
        let mut seq = 0;
        assert_eq!(feed(&mut d, &[idr(10)], 0, &mut seq).len(), 1);
        // seq 1 lost; seq 2 carries an IDR slice with a new timestamp: the
        // lost packet may have been that picture's first slice.
        assert!(d.push(&idr(10), 3000, 2, true).is_empty());
        assert_eq!(d.push(&idr(10), 6000, 3, true).len(), 1);
    }

    #[test]
    fn broken_fragments_drop_the_frame() {
        let mut d = H264Depacketizer::new();
        let frags = fu_a(&idr(3000), 1000);
        // Middle fragment without a start.
        assert!(d.push(&frags[1], 0, 0, false).is_empty());
        assert!(d.push(&frags[2], 0, 1, true).is_empty());
        // Start, then a new start before the end.
        assert!(d.push(&frags[0], 3000, 2, false).is_empty());
        assert!(d.push(&frags[0], 3000, 3, false).is_empty());
        assert!(d.push(&frags[2], 3000, 4, true).is_empty());
        // Start without an end, then the marker on another NAL.
        assert!(d.push(&frags[0], 6000, 5, false).is_empty());
        assert!(d.push(&slice(5), 6000, 6, true).is_empty());
        // A good one after all that.
        let mut seq = 7;
        assert_eq!(feed(&mut d, &frags, 9000, &mut seq).len(), 1);
    }

    #[test]
    fn malformed_payloads_do_not_panic() {
        let mut d = H264Depacketizer::new();
        let bad: &[&[u8]] = &[
            &[],
            &[0x78],
            &[0x78, 0x00],
            &[0x78, 0x00, 0x05, 0x65],
            &[0x78, 0x00, 0x00],
            &[0x7c],
            &[0x7c, 0x85],
            &[0x7c, 0x45],
            &[0x00],
            &[0x1e, 1, 2],
            &[0x65],
        ];
        for (i, p) in bad.iter().enumerate() {
            let _ = d.push(p, i as u32 * 3000, i as u64, true);
        }
        // Duplicates and reordered packets are ignored.
        let mut d = H264Depacketizer::new();
        assert_eq!(d.push(&idr(5), 0, 5, true).len(), 1);
        assert!(d.push(&idr(5), 0, 5, true).is_empty());
        assert!(d.push(&idr(5), 0, 4, true).is_empty());
    }

    #[test]
    fn parameter_sets_in_a_packet_of_their_own_reach_the_next_idr() {
        let mut d = H264Depacketizer::new();
        // SPS/PPS with their own timestamp and marker, then the IDR.
        assert!(d.push(&stap_a(&[SPS, PPS]), 0, 0, true).is_empty());
        let aus = d.push(&idr(10), 3000, 1, true);
        assert_eq!(aus[0].sps.as_deref(), Some(SPS));
        assert_eq!(aus[0].pps.as_deref(), Some(PPS));
    }

    #[test]
    fn round_trips_the_rtmp_packetizer() {
        // What the SFU forwards from an RTMP caster: our own packetizer's
        // output, single NAL units and FU-A.
        use crate::rtmp::{AvcConfig, H264Packetizer, NaluLengthSize};
        use bytes::Bytes;
        let config = AvcConfig {
            profile: 0x42,
            profile_compat: 0xc0,
            level: 0x1f,
            nalu_length_size: NaluLengthSize::Four,
            sps: vec![Bytes::from_static(SPS)],
            pps: vec![Bytes::from_static(PPS)],
        };
        let mut p = H264Packetizer::new(&config, 1000);
        let mut d = H264Depacketizer::new();
        let frames = [
            avcc(&[&idr(5000)]),
            avcc(&[&slice(700), &slice(1500)]),
            avcc(&[&slice(10)]),
        ];
        let mut seq = 0;
        for (i, f) in frames.iter().enumerate() {
            let mut aus = Vec::new();
            for pkt in p.packetize(i as u32 * 33, 0, f).unwrap() {
                aus.extend(d.push(&pkt.payload, pkt.rtp_ts, seq, pkt.marker));
                seq += 1;
            }
            assert_eq!(aus.len(), 1);
            assert_eq!(aus[0].nalus, *f);
            assert_eq!(aus[0].keyframe, i == 0);
            assert_eq!(aus[0].rtp_ts, 1000 + i as u32 * 33 * 90);
        }
    }

    #[test]
    fn opus_is_the_payload() {
        assert_eq!(opus_frame(&[0xfc, 1, 2]), &[0xfc, 1, 2]);
    }
}
