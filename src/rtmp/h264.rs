//! H.264 access units (AVCC, as FLV carries them) to RTP payloads, RFC 6184
//! packetization-mode 1: single NAL unit packets up to [`MAX_PAYLOAD`] bytes,
//! FU-A fragments above. Sequence numbers, SSRC and the RTP header are the
//! SFU's job; this only makes payloads, marker bits and timestamps.
//!
//! Two things a WebRTC viewer needs that RTMP encoders don't promise:
//! - SPS and PPS in front of every IDR. RTMP sends them once, in the sequence
//!   header; a viewer joining later (or after a loss) can't decode an IDR
//!   without them, so the packetizer re-sends the last ones seen.
//! - No access unit delimiters (type 9): they cost a packet and say nothing
//!   RTP doesn't already say with the marker bit.

use bytes::Bytes;

use super::flv::{AvcConfig, NaluLengthSize};

/// Largest RTP payload we emit: leaves room for the RTP header, extensions
/// and SRTP tag under a 1280-byte IPv6 minimum MTU path.
pub const MAX_PAYLOAD: usize = 1200;

/// RTP clock rate of H.264 (RFC 6184 section 8.2.1).
const CLOCK_KHZ: i64 = 90;

const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
const NAL_AUD: u8 = 9;
const FU_A: u8 = 28;

/// One RTP payload, ready for the SFU to give a sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpOut {
    pub payload: Bytes,
    /// Set on the last packet of an access unit.
    pub marker: bool,
    pub rtp_ts: u32,
    /// The access unit holds an IDR picture (a viewer can start here).
    pub keyframe: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum H264Error {
    #[error("NAL unit length {len} at byte {at} runs past the {total}-byte access unit")]
    NaluOverrun { at: usize, len: usize, total: usize },
    #[error("access unit ends inside a NAL unit length prefix")]
    TruncatedLength,
}

/// Packetizer state for one RTMP video stream.
#[derive(Debug)]
pub struct H264Packetizer {
    nalu_length_size: NaluLengthSize,
    sps: Vec<Bytes>,
    pps: Vec<Bytes>,
    rtp_ts_base: u32,
    saw_bframes: bool,
}

impl H264Packetizer {
    /// `rtp_ts_base` is added to every timestamp (RFC 3550 wants a random
    /// start; the caller picks it so tests can fix it).
    pub fn new(config: &AvcConfig, rtp_ts_base: u32) -> Self {
        Self {
            nalu_length_size: config.nalu_length_size,
            sps: config.sps.clone(),
            pps: config.pps.clone(),
            rtp_ts_base,
            saw_bframes: false,
        }
    }

    /// A new sequence header (the encoder restarted or changed resolution).
    pub fn set_config(&mut self, config: &AvcConfig) {
        self.nalu_length_size = config.nalu_length_size;
        self.sps = config.sps.clone();
        self.pps = config.pps.clone();
    }

    /// True once any access unit had a non-zero composition offset, i.e. the
    /// encoder uses B-frames. Browsers play them, but with added latency and
    /// some decoders stutter; the caller should tell the streamer to set
    /// `bframes=0` / "B-frames: 0".
    pub fn saw_bframes(&self) -> bool {
        self.saw_bframes
    }

    /// RTP timestamp of a frame: presentation time in the 90 kHz clock.
    pub fn rtp_ts(&self, dts_ms: u32, composition_offset_ms: i32) -> u32 {
        let pts_ms = i64::from(dts_ms) + i64::from(composition_offset_ms);
        // Wrapping is what RTP timestamps do; truncation to u32 is the wrap.
        (pts_ms * CLOCK_KHZ + i64::from(self.rtp_ts_base)) as u32
    }

    /// Packetizes one access unit (the NAL units of one FLV video tag).
    pub fn packetize(
        &mut self,
        dts_ms: u32,
        composition_offset_ms: i32,
        avcc: &[u8],
    ) -> Result<Vec<RtpOut>, H264Error> {
        if composition_offset_ms != 0 {
            self.saw_bframes = true;
        }
        let nalus = split_avcc(avcc, self.nalu_length_size)?;
        let mut has_sps = false;
        let mut has_pps = false;
        let mut has_idr = false;
        for n in &nalus {
            match nal_type(n) {
                NAL_SPS => has_sps = true,
                NAL_PPS => has_pps = true,
                NAL_IDR => has_idr = true,
                _ => {}
            }
        }
        // In-band parameter sets win over the sequence header's: they are
        // what this picture was coded with.
        if has_sps && has_pps {
            self.sps = nalus
                .iter()
                .filter(|n| nal_type(n) == NAL_SPS)
                .map(|n| Bytes::copy_from_slice(n))
                .collect();
            self.pps = nalus
                .iter()
                .filter(|n| nal_type(n) == NAL_PPS)
                .map(|n| Bytes::copy_from_slice(n))
                .collect();
        }

        let mut order: Vec<&[u8]> = Vec::with_capacity(nalus.len() + 2);
        if has_idr && !(has_sps && has_pps) {
            order.extend(self.sps.iter().map(|b| b.as_ref()));
            order.extend(self.pps.iter().map(|b| b.as_ref()));
        }
        order.extend(nalus.iter().copied().filter(|n| nal_type(n) != NAL_AUD));

        let rtp_ts = self.rtp_ts(dts_ms, composition_offset_ms);
        let mut out = Vec::new();
        for nalu in order {
            push_nalu(&mut out, nalu, rtp_ts, has_idr);
        }
        if let Some(last) = out.last_mut() {
            last.marker = true;
        }
        Ok(out)
    }
}

fn nal_type(nalu: &[u8]) -> u8 {
    nalu.first().map_or(0, |b| b & 0x1f)
}

/// Splits AVCC framing into NAL units (empty ones are skipped).
fn split_avcc(avcc: &[u8], len_size: NaluLengthSize) -> Result<Vec<&[u8]>, H264Error> {
    let n = len_size.bytes();
    let mut nalus = Vec::new();
    let mut pos = 0;
    while pos < avcc.len() {
        let prefix = avcc.get(pos..pos + n).ok_or(H264Error::TruncatedLength)?;
        let len = prefix
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        let start = pos + n;
        let nalu = start
            .checked_add(len)
            .and_then(|end| avcc.get(start..end))
            .ok_or(H264Error::NaluOverrun {
                at: pos,
                len,
                total: avcc.len(),
            })?;
        if !nalu.is_empty() {
            nalus.push(nalu);
        }
        pos = start + len;
    }
    Ok(nalus)
}

fn push_nalu(out: &mut Vec<RtpOut>, nalu: &[u8], rtp_ts: u32, keyframe: bool) {
    let packet = |payload: Bytes| RtpOut {
        payload,
        marker: false,
        rtp_ts,
        keyframe,
    };
    if nalu.len() <= MAX_PAYLOAD {
        out.push(packet(Bytes::copy_from_slice(nalu)));
        return;
    }
    // FU-A (RFC 6184 5.8): the NAL header is split into the FU indicator
    // (F, NRI, type 28) and the FU header (S, E, original type).
    let header = nalu[0];
    let indicator = (header & 0xe0) | FU_A;
    let body = &nalu[1..];
    let mut chunks = body.chunks(MAX_PAYLOAD - 2).peekable();
    let mut first = true;
    while let Some(chunk) = chunks.next() {
        let mut fu_header = header & 0x1f;
        if first {
            fu_header |= 0x80;
        }
        if chunks.peek().is_none() {
            fu_header |= 0x40;
        }
        first = false;
        let mut p = Vec::with_capacity(chunk.len() + 2);
        p.push(indicator);
        p.push(fu_header);
        p.extend_from_slice(chunk);
        out.push(packet(Bytes::from(p)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPS: &[u8] = &[0x67, 0x42, 0xc0, 0x1e, 0xd9, 0x00];
    const PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];

    fn config() -> AvcConfig {
        AvcConfig {
            profile: 0x42,
            profile_compat: 0xc0,
            level: 0x1e,
            nalu_length_size: NaluLengthSize::Four,
            sps: vec![Bytes::from_static(SPS)],
            pps: vec![Bytes::from_static(PPS)],
        }
    }

    fn avcc(nalus: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for n in nalus {
            v.extend_from_slice(&(n.len() as u32).to_be_bytes());
            v.extend_from_slice(n);
        }
        v
    }

    fn nalu(kind: u8, len: usize, seed: u8) -> Vec<u8> {
        let mut v = vec![0x60 | kind];
        v.extend((0..len.saturating_sub(1)).map(|i| (i as u8).wrapping_mul(31) ^ seed));
        v
    }

    /// Test-only RFC 6184 depacketizer (single NAL + FU-A): returns the
    /// NAL units of each access unit, split on the marker bit.
    fn depacketize(packets: &[RtpOut]) -> Vec<Vec<Vec<u8>>> {
        let mut aus = Vec::new();
        let mut au = Vec::new();
        let mut fu: Option<Vec<u8>> = None;
        for p in packets {
            assert!(p.payload.len() <= MAX_PAYLOAD, "payload over MTU");
            let t = p.payload[0] & 0x1f;
            if t == FU_A {
                let h = p.payload[1];
                if h & 0x80 != 0 {
                    assert!(fu.is_none(), "FU-A start inside a fragment");
                    fu = Some(vec![(p.payload[0] & 0xe0) | (h & 0x1f)]);
                }
                let buf = fu.as_mut().expect("FU-A without start");
                buf.extend_from_slice(&p.payload[2..]);
                if h & 0x40 != 0 {
                    au.push(fu.take().unwrap());
                }
            } else {
                assert!(fu.is_none(), "single NAL inside a fragment");
                au.push(p.payload.to_vec());
            }
            if p.marker {
                assert!(fu.is_none(), "marker inside a fragment");
                aus.push(std::mem::take(&mut au));
            }
        }
        assert!(au.is_empty(), "access unit without marker");
        aus
    }

    #[test]
    fn round_trip_with_fu_a_and_parameter_sets_before_idr() {
        let mut p = H264Packetizer::new(&config(), 1000);
        let aud = [0x09, 0xf0];
        let sei = nalu(6, 30, 1);
        let idr = nalu(5, 5000, 2);
        let slice = nalu(1, 1201, 3);
        let small = nalu(1, 1200, 4);
        let mut all = Vec::new();
        all.extend(p.packetize(0, 0, &avcc(&[&aud, &sei, &idr])).unwrap());
        all.extend(p.packetize(33, 0, &avcc(&[&aud, &slice])).unwrap());
        all.extend(p.packetize(66, 0, &avcc(&[&small])).unwrap());
        // An IDR that carries its own (new) parameter sets: not doubled.
        let sps2 = [0x67, 0x4d, 0x00, 0x28];
        all.extend(p.packetize(100, 0, &avcc(&[&sps2, PPS, &idr])).unwrap());
        // The next IDR without them gets the in-band ones.
        all.extend(p.packetize(133, 0, &avcc(&[&idr])).unwrap());

        let aus = depacketize(&all);
        assert_eq!(aus.len(), 5);
        assert_eq!(aus[0], vec![SPS.to_vec(), PPS.to_vec(), sei, idr.clone()]);
        assert_eq!(aus[1], vec![slice]);
        assert_eq!(aus[2], vec![small]);
        assert_eq!(aus[3], vec![sps2.to_vec(), PPS.to_vec(), idr.clone()]);
        assert_eq!(aus[4], vec![sps2.to_vec(), PPS.to_vec(), idr]);

        // Markers only on access unit ends, one per AU.
        assert_eq!(all.iter().filter(|o| o.marker).count(), 5);
        // 1200 fits a single packet, 1201 does not.
        assert!(
            all.iter()
                .any(|o| o.payload.len() == 1200 && o.payload[0] & 0x1f == 1)
        );
        // Keyframe flag on IDR access units only, timestamps in 90 kHz.
        assert!(all.iter().filter(|o| o.rtp_ts == 1000).all(|o| o.keyframe));
        assert!(
            all.iter()
                .filter(|o| o.rtp_ts == 1000 + 33 * 90)
                .all(|o| !o.keyframe)
        );
        assert!(!p.saw_bframes());
    }

    #[test]
    fn composition_offset_sets_pts_and_flags_bframes() {
        let mut p = H264Packetizer::new(&config(), u32::MAX - 10);
        let out = p.packetize(100, 66, &avcc(&[&nalu(1, 10, 0)])).unwrap();
        assert_eq!(out[0].rtp_ts, (u32::MAX - 10).wrapping_add(166 * 90));
        assert!(p.saw_bframes());
    }

    #[test]
    fn other_length_sizes_and_bad_lengths() {
        let mut c = config();
        c.nalu_length_size = NaluLengthSize::Two;
        let mut p = H264Packetizer::new(&c, 0);
        let out = p.packetize(0, 0, &[0, 2, 0x41, 0xaa, 0, 1, 0x41]).unwrap();
        assert_eq!(out.len(), 2);
        assert!(matches!(
            p.packetize(0, 0, &[0, 9, 0x41]),
            Err(H264Error::NaluOverrun { .. })
        ));
        assert_eq!(p.packetize(0, 0, &[0]), Err(H264Error::TruncatedLength));
        // Four-byte length near usize::MAX on 32-bit must not overflow.
        let mut p = H264Packetizer::new(&config(), 0);
        assert!(p.packetize(0, 0, &[0xff, 0xff, 0xff, 0xff, 1]).is_err());
    }

    #[test]
    fn random_access_units_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut p = H264Packetizer::new(&config(), 0);
        for _ in 0..5000 {
            let len = rng.random_range(0..3000);
            let v: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if let Ok(out) = p.packetize(rng.random(), rng.random_range(-1000..1000), &v) {
                assert!(out.iter().all(|o| o.payload.len() <= MAX_PAYLOAD));
            }
        }
    }
}
