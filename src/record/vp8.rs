//! VP8 frames from RTP payloads (RFC 7741), for recording. str0m has a VP8
//! depacketizer but keeps it private (only `Vp8Descriptor`, which hides
//! where the VP8 payload starts), so this is the small part recording
//! needs: strip the payload descriptor, join a frame's packets, drop a
//! frame that lost a packet and everything after it until a keyframe
//! (later frames reference what was lost).

/// One VP8 frame, as a WebM block carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vp8Frame {
    pub rtp_ts: u32,
    pub keyframe: bool,
    /// Picture size, read from a keyframe's header.
    pub size: Option<(u16, u16)>,
    pub data: Vec<u8>,
}

/// Joins one VP8 stream's packets (one SSRC) into frames.
#[derive(Debug)]
pub struct Vp8Depacketizer {
    /// The frame being joined: its timestamp and bytes so far.
    partial: Option<(u32, Vec<u8>)>,
    /// The sequence number the next packet should have.
    expected: Option<u64>,
    /// A packet was lost: frames are dropped until a keyframe.
    waiting: bool,
}

impl Default for Vp8Depacketizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Vp8Depacketizer {
    pub fn new() -> Self {
        Self {
            partial: None,
            expected: None,
            waiting: true,
        }
    }

    /// Nothing usable until the next keyframe (at the start, or after loss).
    pub fn waiting_for_keyframe(&self) -> bool {
        self.waiting
    }

    /// Takes one packet (`seq` extended); returns the frame it completes.
    pub fn push(&mut self, payload: &[u8], ts: u32, seq: u64, marker: bool) -> Option<Vp8Frame> {
        if let Some(expected) = self.expected {
            if seq < expected {
                // A late duplicate (a retransmission already received).
                return None;
            }
            if seq > expected {
                self.lost();
            }
        }
        self.expected = Some(seq + 1);
        let Some((start, offset)) = descriptor(payload) else {
            self.lost();
            return None;
        };
        if self.partial.as_ref().is_some_and(|(t, _)| *t != ts) {
            // The previous frame's last packet (the marker) never came.
            self.lost();
        }
        if start {
            self.partial = Some((ts, Vec::with_capacity(payload.len() * 4)));
        }
        let (_, data) = self.partial.as_mut()?;
        data.extend_from_slice(&payload[offset..]);
        if !marker {
            return None;
        }
        let (rtp_ts, data) = self.partial.take()?;
        let keyframe = data.first().is_some_and(|b| b & 0x01 == 0);
        if self.waiting && !keyframe {
            return None;
        }
        self.waiting = false;
        let size = if keyframe { keyframe_size(&data) } else { None };
        Some(Vp8Frame {
            rtp_ts,
            keyframe,
            size,
            data,
        })
    }

    fn lost(&mut self) {
        self.partial = None;
        self.waiting = true;
    }
}

/// Whether the payload starts a frame (S=1, partition 0), and where the
/// VP8 bytes start after the payload descriptor. `None` if malformed.
fn descriptor(payload: &[u8]) -> Option<(bool, usize)> {
    let first = *payload.first()?;
    let start = first & 0x10 != 0 && first & 0x07 == 0;
    let mut at = 1;
    if first & 0x80 != 0 {
        let ext = *payload.get(at)?;
        at += 1;
        if ext & 0x80 != 0 {
            // PictureID: 7 or 15 bits (M flag).
            at += if *payload.get(at)? & 0x80 != 0 { 2 } else { 1 };
        }
        if ext & 0x40 != 0 {
            at += 1; // TL0PICIDX
        }
        if ext & 0x30 != 0 {
            at += 1; // TID / KEYIDX
        }
    }
    (at < payload.len()).then_some((start, at))
}

/// Width and height from a keyframe's header (RFC 6386 9.1): a 3-byte
/// frame tag, the start code 9d 01 2a, then 14-bit sizes (2 bits scale).
fn keyframe_size(frame: &[u8]) -> Option<(u16, u16)> {
    if frame.get(3..6)? != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u16::from_le_bytes([frame[6], *frame.get(7)?]) & 0x3fff;
    let h = u16::from_le_bytes([*frame.get(8)?, *frame.get(9)?]) & 0x3fff;
    (w > 0 && h > 0).then_some((w, h))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A keyframe's first bytes: frame tag (key), start code, 640x360.
    pub fn key_header() -> Vec<u8> {
        vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01]
    }

    /// RTP payloads of one frame: descriptor with a 15-bit PictureID.
    pub fn packets(frame: &[u8], parts: usize) -> Vec<Vec<u8>> {
        let chunk = frame.len().div_ceil(parts);
        frame
            .chunks(chunk)
            .enumerate()
            .map(|(i, c)| {
                let mut p = vec![0x80 | if i == 0 { 0x10 } else { 0 }, 0x80, 0x81, 0x23];
                p.extend_from_slice(c);
                p
            })
            .collect()
    }

    fn delta() -> Vec<u8> {
        let mut f = vec![0x31, 0x02, 0x00];
        f.extend_from_slice(&[7; 50]);
        f
    }

    fn keyframe() -> Vec<u8> {
        let mut f = key_header();
        f.extend_from_slice(&[9; 100]);
        f
    }

    /// Pushes a frame's packets from `seq`, leaving out `skip`; returns the
    /// frame (if any) and the next seq.
    fn feed(
        d: &mut Vp8Depacketizer,
        frame: &[u8],
        ts: u32,
        seq: u64,
        skip: Option<usize>,
    ) -> (Option<Vp8Frame>, u64) {
        let ps = packets(frame, 3);
        let n = ps.len();
        let mut out = None;
        for (i, p) in ps.into_iter().enumerate() {
            if Some(i) != skip {
                out = out.or(d.push(&p, ts, seq + i as u64, i == n - 1));
            }
        }
        (out, seq + n as u64)
    }

    #[test]
    fn joins_a_frames_packets_and_reads_a_keyframes_size() {
        let mut d = Vp8Depacketizer::new();
        let (f, seq) = feed(&mut d, &keyframe(), 1000, 10, None);
        let f = f.expect("a keyframe");
        assert!(f.keyframe);
        assert_eq!(f.size, Some((640, 360)));
        assert_eq!(f.data, keyframe());
        assert_eq!(f.rtp_ts, 1000);
        let (f, _) = feed(&mut d, &delta(), 4000, seq, None);
        let f = f.expect("a delta frame");
        assert!(!f.keyframe && f.size.is_none());
        assert_eq!(f.data, delta());
    }

    #[test]
    fn waits_for_a_keyframe_first() {
        let mut d = Vp8Depacketizer::new();
        let (f, seq) = feed(&mut d, &delta(), 0, 1, None);
        assert!(f.is_none() && d.waiting_for_keyframe());
        let (f, _) = feed(&mut d, &keyframe(), 3000, seq, None);
        assert!(f.is_some() && !d.waiting_for_keyframe());
    }

    #[test]
    fn a_lost_packet_drops_frames_until_the_next_keyframe() {
        let mut d = Vp8Depacketizer::new();
        let (_, seq) = feed(&mut d, &keyframe(), 0, 1, None);
        // The middle packet of a frame lost: that frame and the next go.
        let (f, seq) = feed(&mut d, &delta(), 3000, seq, Some(1));
        assert!(f.is_none());
        let (f, seq) = feed(&mut d, &delta(), 6000, seq, None);
        assert!(f.is_none() && d.waiting_for_keyframe());
        let (f, seq) = feed(&mut d, &keyframe(), 9000, seq, None);
        assert!(f.unwrap().keyframe);
        // A lost marker packet: the frame is dropped when the next starts.
        let (f, seq) = feed(&mut d, &delta(), 12000, seq, Some(2));
        assert!(f.is_none());
        let (f, _) = feed(&mut d, &delta(), 15000, seq, None);
        assert!(f.is_none() && d.waiting_for_keyframe());
    }

    #[test]
    fn late_duplicates_are_ignored() {
        let mut d = Vp8Depacketizer::new();
        let (_, seq) = feed(&mut d, &keyframe(), 0, 1, None);
        let ps = packets(&delta(), 2);
        assert!(d.push(&ps[0], 3000, seq, false).is_none());
        assert!(d.push(&ps[0], 3000, seq, false).is_none());
        let f = d.push(&ps[1], 3000, seq + 1, true).expect("the frame");
        assert_eq!(f.data, delta());
    }

    #[test]
    fn descriptors_of_every_shape() {
        // No extension.
        assert_eq!(descriptor(&[0x10, 0xaa]), Some((true, 1)));
        // 7-bit PictureID, TL0PICIDX, TID.
        assert_eq!(
            descriptor(&[0x90, 0xe0, 0x05, 0x01, 0x20, 0xaa]),
            Some((true, 5))
        );
        // Not the first partition.
        assert_eq!(descriptor(&[0x11, 0xaa]), Some((false, 1)));
        // Nothing after the descriptor.
        assert_eq!(descriptor(&[0x90, 0x80, 0x81, 0x23]), None);
        assert_eq!(descriptor(&[]), None);
    }
}
