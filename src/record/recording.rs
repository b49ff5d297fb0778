//! A live's VP8 recording, sans-IO: the tap's packets and the wall clock
//! in, what to do with files out (start one with this header, append
//! these bytes, close it). The runtime ([`super::WebmRecorder`]) only does
//! the IO.
//!
//! - A file starts at a keyframe of the recorded layer: the simulcast layer
//!   with the largest picture (a larger one seen later takes over at its
//!   keyframe, in a new file).
//! - A new file also starts at a keyframe when `every` is up, when the
//!   picture size changes, when audio comes to a file made without it,
//!   and for a new caster (a replaced or reconnected one: its timestamps
//!   start over). A file never mixes two sources.
//! - Timing: each track's RTP timestamps unwrapped and placed on the
//!   caster's timeline by the arrival of its first packet (as the LL-HLS
//!   feed does: the tap has no sender reports); a file's times start at
//!   its first keyframe.
//! - Video that is not VP8 (an H.264 caster) closes the file: the fMP4
//!   recorder records that.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use str0m::format::Codec;
use str0m::media::MediaKind;

use super::vp8::Vp8Depacketizer;
use super::webm::{AUDIO_TRACK, Tracks, VIDEO_TRACK, WebmWriter};
use crate::hls::feed::Clock;
use crate::sfu::PeerId;
use crate::sfu::tap::TapPacket;

/// Simulcast layers followed (browsers send three).
const MAX_LAYERS: usize = 4;

/// How long a first file waits for the caster's audio before it starts
/// without: a keyframe that beats the first audio packet by a few
/// milliseconds would otherwise give a file without sound and, at the
/// next keyframe, a second one with it.
const AUDIO_GRACE: Duration = Duration::from_millis(500);

/// Audio kept while no file is open, in timeline ms: a keyframe is
/// complete only when its last packet is in (a large one comes over
/// 100–200 ms), and the audio of the time it covers came meanwhile.
const EARLY_AUDIO_MS: i64 = 1000;

/// What the runtime does with the recording's files, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Out {
    /// Close the current file, if any, and start a new one with this
    /// header.
    NewFile(Vec<u8>),
    /// Append to the current file (a whole Cluster).
    Append(Vec<u8>),
    /// The current file is complete.
    Close,
}

/// A track's clock (the LL-HLS feed's: RTP timestamps unwrapped, placed
/// by the first packet's arrival) read in milliseconds.
fn ms(clock: &mut Clock, rate: u32, ts: u32) -> i64 {
    clock.at(ts) as i64 * 1000 / i64::from(rate.max(1))
}

/// One incoming video stream (a simulcast layer).
struct Layer {
    ssrc: u32,
    depacketizer: Vp8Depacketizer,
    clock: Clock,
    /// From its last keyframe.
    size: Option<(u16, u16)>,
}

impl Layer {
    fn area(&self) -> u32 {
        self.size.map_or(0, |(w, h)| u32::from(w) * u32::from(h))
    }
}

/// The file being written.
struct File {
    writer: WebmWriter,
    /// The layer it records.
    ssrc: u32,
    /// Timeline ms of its first keyframe: its time 0.
    start: i64,
    opened: SystemTime,
}

/// A live's VP8 recording.
pub struct Recording {
    every: Duration,
    caster: Option<PeerId>,
    /// The caster's first packet: the timeline's origin.
    epoch: Option<Instant>,
    audio: Option<Clock>,
    /// Audio has come from the current caster.
    has_audio: bool,
    /// The last second of audio, while no file is open: (timeline ms,
    /// payload).
    early_audio: VecDeque<(i64, Arc<[u8]>)>,
    layers: Vec<Layer>,
    file: Option<File>,
}

impl Recording {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            caster: None,
            epoch: None,
            audio: None,
            has_audio: false,
            early_audio: VecDeque::new(),
            layers: Vec::new(),
            file: None,
        }
    }

    /// Whether the caster should be asked for a keyframe: VP8 is coming
    /// but no file can start (or go on, after loss) without one, or a new
    /// file is due.
    pub fn wants_keyframe(&self, wall: SystemTime) -> bool {
        if self.layers.is_empty() {
            return false;
        }
        match &self.file {
            None => true,
            Some(f) => {
                self.layers
                    .iter()
                    .any(|l| l.ssrc == f.ssrc && l.depacketizer.waiting_for_keyframe())
                    || self.has_audio && !f.writer.tracks().audio
                    || wall.duration_since(f.opened).unwrap_or_default() >= self.every
            }
        }
    }

    /// Takes one tap packet.
    pub fn push(&mut self, p: &TapPacket, wall: SystemTime) -> Vec<Out> {
        let mut out = Vec::new();
        if self.caster != Some(p.caster) {
            out.extend(self.close());
            *self = Self::new(self.every);
            self.caster = Some(p.caster);
        }
        let epoch = *self.epoch.get_or_insert(p.arrival);
        match p.kind {
            MediaKind::Audio => {
                if p.codec != Codec::Opus {
                    return out;
                }
                self.has_audio = true;
                let clock = self
                    .audio
                    .get_or_insert_with(|| Clock::new(p.clock_rate, p.arrival, epoch));
                let ms = ms(clock, p.clock_rate, p.ts);
                match self.file.as_mut() {
                    Some(f) if ms >= f.start => {
                        let at = (ms - f.start) as u64;
                        out.extend(
                            f.writer
                                .push(AUDIO_TRACK, at, true, &p.payload)
                                .map(Out::Append),
                        );
                    }
                    Some(_) => {}
                    // Kept only once VP8 is coming (a keyframe is on its
                    // way): an H.264 live's audio passes through here too.
                    None if self.layers.is_empty() => {}
                    None => {
                        self.early_audio.push_back((ms, p.payload.clone()));
                        while self
                            .early_audio
                            .front()
                            .is_some_and(|(t, _)| *t < ms - EARLY_AUDIO_MS)
                        {
                            self.early_audio.pop_front();
                        }
                    }
                }
            }
            MediaKind::Video => {
                if p.codec != Codec::Vp8 {
                    // Another codec: not this recorder's (H.264 goes to
                    // fMP4). VP8 coming back starts afresh.
                    out.extend(self.close());
                    self.layers.clear();
                    return out;
                }
                self.video(p, epoch, wall, &mut out);
            }
        }
        out
    }

    fn video(&mut self, p: &TapPacket, epoch: Instant, wall: SystemTime, out: &mut Vec<Out>) {
        let i = match self.layers.iter().position(|l| l.ssrc == p.ssrc) {
            Some(i) => i,
            None if self.layers.len() < MAX_LAYERS => {
                self.layers.push(Layer {
                    ssrc: p.ssrc,
                    depacketizer: Vp8Depacketizer::new(),
                    clock: Clock::new(p.clock_rate, p.arrival, epoch),
                    size: None,
                });
                self.layers.len() - 1
            }
            None => return,
        };
        let layer = &mut self.layers[i];
        // Every packet's timestamp through the clock: it is anchored by the
        // arrival of the first packet, so that packet's timestamp must be
        // its reference, not the first frame's that comes out (frames before
        // a keyframe are dropped).
        ms(&mut layer.clock, p.clock_rate, p.ts);
        let Some(frame) = layer.depacketizer.push(&p.payload, p.ts, p.seq, p.marker) else {
            return;
        };
        let ms = ms(&mut layer.clock, p.clock_rate, frame.rtp_ts);
        if frame.size.is_some() {
            layer.size = frame.size;
        }
        let (ssrc, area, size) = (layer.ssrc, layer.area(), layer.size);
        if frame.keyframe
            && let Some(size) = size
        {
            let largest = self.layers.iter().all(|l| l.area() <= area);
            let starts = match &self.file {
                None => {
                    largest
                        && (self.has_audio
                            || p.arrival.saturating_duration_since(epoch) >= AUDIO_GRACE)
                }
                Some(f) => {
                    let tracks = f.writer.tracks();
                    let recorded = f.ssrc == ssrc;
                    let larger = self
                        .layers
                        .iter()
                        .find(|l| l.ssrc == f.ssrc)
                        .is_none_or(|l| l.area() < area);
                    (recorded
                        && (tracks.video != size
                            || self.has_audio && !tracks.audio
                            || wall.duration_since(f.opened).unwrap_or_default() >= self.every))
                        || (!recorded && largest && larger)
                }
            };
            if starts {
                out.extend(self.close());
                let (writer, header) = WebmWriter::new(Tracks {
                    video: size,
                    audio: self.has_audio,
                });
                out.push(Out::NewFile(header));
                self.file = Some(File {
                    writer,
                    ssrc,
                    start: ms,
                    opened: wall,
                });
            }
        }
        if let Some(f) = self.file.as_mut()
            && f.ssrc == ssrc
            && ms >= f.start
        {
            let at = (ms - f.start) as u64;
            out.extend(
                f.writer
                    .push(VIDEO_TRACK, at, frame.keyframe, &frame.data)
                    .map(Out::Append),
            );
            // A file just begun: the audio of its first moments, which came
            // while its keyframe did.
            for (t, payload) in self.early_audio.drain(..) {
                if t >= f.start {
                    let at = (t - f.start) as u64;
                    out.extend(
                        f.writer
                            .push(AUDIO_TRACK, at, true, &payload)
                            .map(Out::Append),
                    );
                }
            }
        }
    }

    /// Writes out the Cluster being filled (when packets pause: what a
    /// crash would lose stays under a second).
    pub fn flush(&mut self) -> Vec<Out> {
        self.file
            .as_mut()
            .and_then(|f| f.writer.flush())
            .map(Out::Append)
            .into_iter()
            .collect()
    }

    /// Ends the current file, if any.
    pub fn close(&mut self) -> Vec<Out> {
        let mut out = self.flush();
        if self.file.take().is_some() {
            out.push(Out::Close);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::vp8::tests::{key_header, packets};
    use super::*;
    use std::sync::Arc;

    /// Builds a live's tap packets on simulated time.
    struct Caster {
        id: PeerId,
        t0: Instant,
        seq: u64,
        audio_seq: u64,
    }

    impl Caster {
        fn new(id: u128) -> Self {
            Self {
                id: PeerId(id),
                t0: Instant::now(),
                seq: 1,
                audio_seq: 1,
            }
        }

        #[allow(clippy::too_many_arguments)]
        fn packet(
            &self,
            kind: MediaKind,
            ssrc: u32,
            seq: u64,
            ts: u32,
            marker: bool,
            at_ms: u64,
            payload: Vec<u8>,
        ) -> TapPacket {
            TapPacket {
                kind,
                caster: self.id,
                ssrc,
                rid: None,
                codec: if kind == MediaKind::Video {
                    Codec::Vp8
                } else {
                    Codec::Opus
                },
                clock_rate: if kind == MediaKind::Video {
                    90_000
                } else {
                    48_000
                },
                seq,
                ts,
                marker,
                arrival: self.t0 + Duration::from_millis(at_ms),
                payload: Arc::from(payload),
            }
        }

        /// One video frame at `ms` (two packets), of a layer.
        fn frame(&mut self, ssrc: u32, ms: u64, key: Option<(u16, u16)>) -> Vec<TapPacket> {
            let mut data = match key {
                Some((w, h)) => {
                    let mut d = key_header();
                    d[6..8].copy_from_slice(&w.to_le_bytes());
                    d[8..10].copy_from_slice(&h.to_le_bytes());
                    d
                }
                None => vec![0x31, 0, 0],
            };
            data.extend_from_slice(&[1; 40]);
            let ps = packets(&data, 2);
            let n = ps.len();
            ps.into_iter()
                .enumerate()
                .map(|(i, pl)| {
                    self.seq += 1;
                    self.packet(
                        MediaKind::Video,
                        ssrc,
                        self.seq,
                        (ms * 90) as u32,
                        i == n - 1,
                        ms,
                        pl,
                    )
                })
                .collect()
        }

        fn audio(&mut self, ms: u64) -> TapPacket {
            self.audio_seq += 1;
            self.packet(
                MediaKind::Audio,
                9,
                self.audio_seq,
                (ms * 48) as u32,
                false,
                ms,
                vec![0xfc, 1, 2],
            )
        }
    }

    fn wall(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000) + Duration::from_millis(ms)
    }

    /// Runs `secs` of 30 fps video (keyframe every `gop` frames) and 50 pps
    /// audio from `from_ms`; returns the outputs.
    fn run(r: &mut Recording, c: &mut Caster, from_ms: u64, secs: u64, gop: u64) -> Vec<Out> {
        let mut out = Vec::new();
        for ms in (from_ms..from_ms + secs * 1000).step_by(10) {
            if ms % 20 == 0 {
                out.extend(r.push(&c.audio(ms), wall(ms)));
            }
            if ms % 30 == 0 {
                let n = (ms - from_ms) / 30;
                let key = n.is_multiple_of(gop);
                for p in c.frame(1, ms, key.then_some((640, 360))) {
                    out.extend(r.push(&p, wall(ms)));
                }
            }
        }
        out
    }

    fn new_files(out: &[Out]) -> usize {
        out.iter().filter(|o| matches!(o, Out::NewFile(_))).count()
    }

    #[test]
    fn a_file_starts_at_the_first_keyframe_and_appends_a_cluster_per_second() {
        let mut r = Recording::new(Duration::from_secs(3600));
        let mut c = Caster::new(1);
        // Audio and delta frames first: nothing yet, and a keyframe is
        // wanted.
        assert!(r.push(&c.audio(0), wall(0)).is_empty());
        for p in c.frame(1, 0, None) {
            assert!(r.push(&p, wall(0)).is_empty());
        }
        assert!(r.wants_keyframe(wall(0)));
        // 5 s with a keyframe every 3 s.
        let out = run(&mut r, &mut c, 30, 5, 90);
        assert!(matches!(out[0], Out::NewFile(_)), "{:?}", &out[..1]);
        assert_eq!(new_files(&out), 1);
        assert!(!r.wants_keyframe(wall(5000)));
        let appends = out.iter().filter(|o| matches!(o, Out::Append(_))).count();
        // Cut every second of file time and at the keyframe at 2.7 s.
        assert!((5..=6).contains(&appends), "{appends}");
        let rest = r.close();
        assert!(matches!(rest[..], [Out::Append(_), Out::Close]), "{rest:?}");
        assert!(r.close().is_empty());
    }

    #[test]
    fn a_keyframe_that_beats_the_audio_waits_for_it_then_video_alone_starts_a_file() {
        let mut r = Recording::new(Duration::from_secs(3600));
        let mut c = Caster::new(1);
        // A keyframe before any audio: no file yet.
        for p in c.frame(1, 0, Some((640, 360))) {
            assert!(r.push(&p, wall(0)).is_empty());
        }
        assert!(r.wants_keyframe(wall(0)));
        // Audio comes: the next keyframe starts one file, with sound.
        let mut out = r.push(&c.audio(10), wall(10));
        for p in c.frame(1, 40, Some((640, 360))) {
            out.extend(r.push(&p, wall(40)));
        }
        assert_eq!(new_files(&out), 1);
        assert!(r.file.as_ref().unwrap().writer.tracks().audio);

        // A caster without audio: its keyframes start a file after the grace.
        let mut r = Recording::new(Duration::from_secs(3600));
        let mut c = Caster::new(2);
        let mut out = Vec::new();
        for ms in [0, 300, 600] {
            for p in c.frame(1, ms, Some((640, 360))) {
                out.extend(r.push(&p, wall(ms)));
            }
        }
        assert_eq!(new_files(&out), 1);
        assert!(!r.file.as_ref().unwrap().writer.tracks().audio);
        assert_eq!(r.file.as_ref().unwrap().start, 600);
    }

    #[test]
    fn the_audio_that_came_while_the_first_keyframe_did_is_in_the_file() {
        let mut r = Recording::new(Duration::from_secs(3600));
        let mut c = Caster::new(1);
        // The keyframe at 0 ms is complete only at 150 ms: the audio of
        // 0..140 ms came meanwhile.
        let key = c.frame(1, 0, Some((640, 360)));
        let mut file = Vec::new();
        let mut take = |out: Vec<Out>| {
            for o in out {
                match o {
                    Out::NewFile(b) | Out::Append(b) => file.extend(b),
                    Out::Close => {}
                }
            }
        };
        take(r.push(&key[0], wall(0)));
        for ms in (0..150).step_by(20) {
            take(r.push(&c.audio(ms), wall(ms)));
        }
        for p in &key[1..] {
            take(r.push(p, wall(150)));
        }
        for ms in (160..400).step_by(20) {
            take(r.push(&c.audio(ms), wall(ms)));
        }
        take(r.close());
        let blocks = super::super::webm::tests::blocks(&file);
        let audio: Vec<i64> = blocks
            .iter()
            .filter(|b| b.0 == AUDIO_TRACK)
            .map(|b| b.1)
            .collect();
        assert_eq!(audio.first(), Some(&0), "{blocks:?}");
        assert_eq!(audio.len(), 20, "{blocks:?}");
        assert_eq!(blocks[0], (VIDEO_TRACK, 0), "the keyframe first");
    }

    #[test]
    fn a_layer_joined_mid_frame_keeps_its_timestamps_on_the_timeline() {
        let mut r = Recording::new(Duration::from_secs(3600));
        let mut c = Caster::new(1);
        assert!(r.push(&c.audio(0), wall(0)).is_empty());
        // The last packet of a frame at 0 ms (its first was missed), then
        // a keyframe at 300 ms: the file starts at 300 ms, where that
        // keyframe's timestamp puts it.
        let half = c.frame(1, 0, None).pop().unwrap();
        assert!(r.push(&half, wall(0)).is_empty());
        let mut out = Vec::new();
        for p in c.frame(1, 300, Some((640, 360))) {
            out.extend(r.push(&p, wall(300)));
        }
        assert_eq!(new_files(&out), 1);
        assert_eq!(r.file.as_ref().unwrap().start, 300);
    }

    #[test]
    fn a_new_caster_or_the_hour_starts_a_new_file() {
        let mut r = Recording::new(Duration::from_secs(4));
        let mut c = Caster::new(1);
        let out = run(&mut r, &mut c, 0, 6, 60);
        // A new file at the first keyframe past 4 s (at 4 s).
        assert_eq!(new_files(&out), 2);
        let mut d = Caster::new(2);
        d.t0 = c.t0 + Duration::from_secs(6);
        let out = run(&mut r, &mut d, 0, 1, 60);
        // The first caster's file closed, then the new one's.
        assert!(
            matches!(out[..2], [Out::Append(_), Out::Close]),
            "{:?}",
            &out[..2]
        );
        assert!(matches!(out[2], Out::NewFile(_)));
        assert_eq!(new_files(&out), 1);
    }

    #[test]
    fn a_larger_simulcast_layer_takes_over_at_its_keyframe() {
        let mut r = Recording::new(Duration::from_secs(3600));
        let mut c = Caster::new(1);
        let mut out = r.push(&c.audio(0), wall(0));
        for p in c.frame(1, 0, Some((320, 180))) {
            out.extend(r.push(&p, wall(0)));
        }
        for p in c.frame(2, 1, Some((1280, 720))) {
            out.extend(r.push(&p, wall(1)));
        }
        // The small layer's next keyframe does not take it back.
        for p in c.frame(1, 33, Some((320, 180))) {
            out.extend(r.push(&p, wall(33)));
        }
        assert_eq!(new_files(&out), 2);
        let tracks = r.file.as_ref().unwrap().writer.tracks();
        assert_eq!(tracks.video, (1280, 720));
    }

    #[test]
    fn h264_closes_the_file() {
        let mut r = Recording::new(Duration::from_secs(3600));
        let mut c = Caster::new(1);
        run(&mut r, &mut c, 0, 2, 30);
        let mut p = c.frame(1, 2000, None).remove(0);
        p.codec = Codec::H264;
        let out = r.push(&p, wall(2000));
        assert!(matches!(out.last(), Some(Out::Close)), "{out:?}");
        assert!(!r.wants_keyframe(wall(2000)));
        // The H.264 live's audio is not kept for a WebM file to come.
        assert!(r.push(&c.audio(2020), wall(2020)).is_empty());
        assert!(r.early_audio.is_empty());
    }
}
