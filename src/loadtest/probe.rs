//! Synthetic media for load tests: VP8 and Opus packets with valid payload
//! headers (so an SFU can find keyframes and rewrite picture ids), each
//! carrying its send time so that receivers measure forwarding delay.

use std::time::{Duration, Instant};

/// Marks a probe inside a payload: "VSLp".
const MAGIC: [u8; 4] = *b"VSLp";
/// Magic + microseconds since the load test's epoch.
pub const PROBE_LEN: usize = MAGIC.len() + 8;
/// Payload bytes per video packet at most (fits a 1200-byte MTU with
/// headers and SRTP).
pub const MAX_PAYLOAD: usize = 1100;

/// The clock probes are measured on: one per load test, shared by every
/// thread (an `Instant`, so monotonic).
#[derive(Debug, Clone, Copy)]
pub struct Epoch(pub Instant);

impl Epoch {
    pub fn micros(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.0).as_micros() as u64
    }
}

fn probe(epoch: Epoch, now: Instant) -> [u8; PROBE_LEN] {
    let mut p = [0u8; PROBE_LEN];
    p[..4].copy_from_slice(&MAGIC);
    p[4..].copy_from_slice(&epoch.micros(now).to_be_bytes());
    p
}

/// The send time (µs since the epoch) carried at `offset` of `payload`.
pub fn read_probe(payload: &[u8], offset: usize) -> Option<u64> {
    let p = payload.get(offset..offset + PROBE_LEN)?;
    (p[..4] == MAGIC).then(|| u64::from_be_bytes(p[4..].try_into().expect("8 bytes")))
}

/// Where the probe sits in a synthetic VP8 payload: after the 4-byte payload
/// descriptor (with a 15-bit picture id) and the first byte of the VP8
/// frame, whose lowest bit says keyframe (0) or not (1).
pub const VP8_PROBE_OFFSET: usize = 5;
/// In an Opus payload, after the TOC byte.
pub const OPUS_PROBE_OFFSET: usize = 1;

/// One video frame's packets.
pub struct Frame {
    pub keyframe: bool,
    /// Payloads in order; the last one carries the RTP marker.
    pub payloads: Vec<Vec<u8>>,
}

/// A VP8 stream at a target bitrate: frames of `bitrate / fps` bits,
/// keyframes three times the size.
pub struct Vp8Source {
    picture_id: u16,
    frame_bytes: usize,
    keyframe_every: u64,
    frames: u64,
    keyframe_requested: bool,
}

impl Vp8Source {
    pub fn new(bitrate: u64, fps: u32, keyframe_interval: Duration) -> Self {
        let fps = fps.max(1);
        Self {
            picture_id: rand::random::<u16>() & 0x7fff,
            frame_bytes: ((bitrate / 8) / u64::from(fps)).max(PROBE_LEN as u64 + 8) as usize,
            keyframe_every: (keyframe_interval.as_secs_f64() * f64::from(fps)).max(1.0) as u64,
            frames: 0,
            keyframe_requested: false,
        }
    }

    pub fn request_keyframe(&mut self) {
        self.keyframe_requested = true;
    }

    pub fn next_frame(&mut self, epoch: Epoch, now: Instant) -> Frame {
        let keyframe = self.frames.is_multiple_of(self.keyframe_every)
            || std::mem::take(&mut self.keyframe_requested);
        // A keyframe is three frames' worth; the others shrink so that a
        // keyframe interval averages the target bitrate.
        let k = self.keyframe_every as usize;
        let size = match (keyframe, k > 3) {
            (true, _) => self.frame_bytes * 3,
            (false, true) => self.frame_bytes * (k - 3) / (k - 1),
            (false, false) => self.frame_bytes,
        };
        let count = size.div_ceil(MAX_PAYLOAD).max(1);
        let per_packet = size / count;
        let pid = self.picture_id;
        let payloads = (0..count)
            .map(|i| {
                let mut p = Vec::with_capacity(per_packet.max(VP8_PROBE_OFFSET + PROBE_LEN));
                // X=1, S=1 on the first packet, partition 0; I=1, 15-bit picture id.
                p.push(0x80 | if i == 0 { 0x10 } else { 0 });
                p.push(0x80);
                p.push(0x80 | (pid >> 8) as u8);
                p.push(pid as u8);
                // VP8 payload header: P bit (0 = keyframe), show_frame, version 0.
                p.push(if keyframe { 0x10 } else { 0x11 });
                p.extend_from_slice(&probe(epoch, now));
                p.resize(per_packet.max(p.len()), 0x5a);
                p
            })
            .collect();
        self.picture_id = (self.picture_id + 1) & 0x7fff;
        self.frames += 1;
        Frame { keyframe, payloads }
    }
}

/// A 20 ms Opus packet (TOC 0xfc: CELT fullband, 20 ms, one frame).
pub fn opus_packet(epoch: Epoch, now: Instant) -> Vec<u8> {
    let mut p = Vec::with_capacity(1 + PROBE_LEN + 40);
    p.push(0xfc);
    p.extend_from_slice(&probe(epoch, now));
    p.resize(1 + PROBE_LEN + 40, 0xff);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_hit_the_bitrate_and_carry_probes() {
        let epoch = Epoch(Instant::now());
        let mut src = Vp8Source::new(1_000_000, 30, Duration::from_secs(2));
        let now = epoch.0 + Duration::from_millis(1234);
        let mut bytes = 0;
        let mut keyframes = 0;
        for _ in 0..60 {
            let f = src.next_frame(epoch, now);
            keyframes += usize::from(f.keyframe);
            for p in &f.payloads {
                assert!(p.len() <= MAX_PAYLOAD);
                assert_eq!(read_probe(p, VP8_PROBE_OFFSET), Some(1_234_000));
                bytes += p.len();
            }
            // The SFU's keyframe detection: S=1 partition 0, P bit 0.
            let first = &f.payloads[0];
            assert_eq!(first[0] & 0x10, 0x10);
            assert_eq!(first[4] & 0x01 == 0, f.keyframe);
        }
        assert_eq!(keyframes, 1);
        let bitrate = bytes as f64 * 8.0 / 2.0;
        assert!((900_000.0..1_100_000.0).contains(&bitrate), "{bitrate}");
        src.request_keyframe();
        assert!(src.next_frame(epoch, now).keyframe);
    }

    #[test]
    fn opus_packets_carry_probes() {
        let epoch = Epoch(Instant::now());
        let p = opus_packet(epoch, epoch.0 + Duration::from_micros(42));
        assert_eq!(read_probe(&p, OPUS_PROBE_OFFSET), Some(42));
        assert_eq!(read_probe(b"xx", 0), None);
    }
}
