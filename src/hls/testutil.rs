//! Test helpers: real media made by ffmpeg at test time, and ffprobe as an
//! independent reader of what we write. Tests that need them print a note
//! and pass when the tools are missing (they are Debian packages; CI has
//! them when the machine does).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;

/// A fresh empty directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("vessel-hls-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // HLS_KEEP_TEMP=1 keeps the files for a look with ffprobe by hand.
        if std::env::var_os("HLS_KEEP_TEMP").is_some() {
            println!("kept {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// True if ffmpeg and ffprobe both run; otherwise prints why the caller
/// skips.
pub fn have_ffmpeg(test: &str) -> bool {
    let ok = have("ffmpeg") && have("ffprobe");
    if !ok {
        println!("{test}: SKIPPED, ffmpeg/ffprobe not installed (apt-get install ffmpeg)");
    }
    ok
}

/// One H.264 picture from an Annex-B stream, as the depacketizer gives them.
#[derive(Debug, Clone)]
pub struct TestAu {
    pub keyframe: bool,
    pub sps: Option<Vec<u8>>,
    pub pps: Option<Vec<u8>>,
    /// AVCC (4-byte lengths), no SPS/PPS/AUD/SEI.
    pub avcc: Bytes,
}

/// `seconds` of 320x240@`fps` testsrc through libx264 (no B-frames, a
/// keyframe every `gop` frames), split into access units.
pub fn x264_access_units(dir: &Path, seconds: f64, fps: u32, gop: u32) -> Vec<TestAu> {
    x264_access_units_sized(dir, (320, 240), seconds, fps, gop)
}

/// [`x264_access_units`] at another picture size.
pub fn x264_access_units_sized(
    dir: &Path,
    (w, h): (u32, u32),
    seconds: f64,
    fps: u32,
    gop: u32,
) -> Vec<TestAu> {
    let out = dir.join(format!("in-{w}x{h}.h264"));
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc=size={w}x{h}:rate={fps}"))
        .args(["-t", &seconds.to_string()])
        .args(["-pix_fmt", "yuv420p", "-c:v", "libx264", "-bf", "0"])
        .args(["-g", &gop.to_string(), "-f", "h264"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "ffmpeg failed");
    annexb_access_units(&std::fs::read(out).unwrap())
}

/// Splits Annex-B into NAL units, then into access units: a slice whose
/// first_mb_in_slice is 0 starts a picture (x264 writes one slice each).
pub fn annexb_access_units(data: &[u8]) -> Vec<TestAu> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i..i + 3] == [0, 0, 1] {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut aus: Vec<TestAu> = Vec::new();
    let (mut sps, mut pps) = (None, None);
    for (k, &s) in starts.iter().enumerate() {
        let end = starts.get(k + 1).map_or(data.len(), |&e| e - 3);
        let mut nal = &data[s..end];
        while let [rest @ .., 0] = nal {
            nal = rest;
        }
        let Some(&h) = nal.first() else { continue };
        match h & 0x1f {
            7 => sps = Some(nal.to_vec()),
            8 => pps = Some(nal.to_vec()),
            t @ (1 | 5) => {
                let first_slice = nal.get(1).is_some_and(|b| b & 0x80 != 0);
                let mut prefixed = (nal.len() as u32).to_be_bytes().to_vec();
                prefixed.extend_from_slice(nal);
                if first_slice || aus.is_empty() {
                    aus.push(TestAu {
                        keyframe: t == 5,
                        sps: sps.take(),
                        pps: pps.take(),
                        avcc: Bytes::from(prefixed),
                    });
                } else {
                    let last = aus.last_mut().unwrap();
                    let mut v = last.avcc.to_vec();
                    v.extend_from_slice(&prefixed);
                    last.avcc = Bytes::from(v);
                }
            }
            _ => {} // SEI, AUD: not needed
        }
    }
    aus
}

/// Raw AAC frames and the AudioSpecificConfig of an ADTS stream.
pub fn adts_frames(data: &[u8]) -> (Vec<u8>, Vec<Bytes>) {
    let mut frames = Vec::new();
    let mut asc = None;
    let mut pos = 0;
    while pos + 7 <= data.len() {
        let h = &data[pos..pos + 7];
        assert_eq!((h[0], h[1] & 0xf0), (0xff, 0xf0), "ADTS sync at {pos}");
        let header_len = if h[1] & 1 == 1 { 7 } else { 9 };
        let profile = (h[2] >> 6) + 1;
        let sf = (h[2] >> 2) & 0x0f;
        let ch = ((h[2] & 1) << 2) | (h[3] >> 6);
        let len = (usize::from(h[3] & 3) << 11) | (usize::from(h[4]) << 3) | usize::from(h[5] >> 5);
        asc.get_or_insert(vec![
            (profile << 3) | (sf >> 1),
            ((sf & 1) << 7) | (ch << 3),
        ]);
        frames.push(Bytes::copy_from_slice(&data[pos + header_len..pos + len]));
        pos += len;
    }
    (asc.expect("no ADTS frame"), frames)
}

/// A 48 kHz mono AAC-LC sine, 0.5 s (src/rtmp/testdata).
pub const AAC_48K_MONO: &[u8] = include_bytes!("../rtmp/testdata/sine1k_48k_mono.aac");

/// What ffprobe says about one stream of a file.
#[derive(Debug, Clone)]
pub struct ProbedStream {
    pub codec: String,
    pub width: Option<u64>,
    pub height: Option<u64>,
    pub sample_rate: Option<u64>,
    pub channels: Option<u64>,
    /// From the packets: last pts + its duration - first pts, seconds.
    pub packet_span: f64,
    pub packets: usize,
    /// The stream duration ffprobe reports, if any.
    pub duration: Option<f64>,
}

/// Runs ffprobe on `file`: every stream, with the span its packets cover.
pub fn ffprobe(file: &Path) -> Vec<ProbedStream> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-of",
            "json",
            "-show_streams",
            "-show_packets",
        ])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let num = |x: &serde_json::Value| -> Option<f64> {
        x.as_f64()
            .or_else(|| x.as_str().and_then(|s| s.parse().ok()))
    };
    let streams = v["streams"].as_array().cloned().unwrap_or_default();
    let packets = v["packets"].as_array().cloned().unwrap_or_default();
    streams
        .iter()
        .map(|s| {
            let idx = s["index"].as_u64().unwrap();
            let mine: Vec<_> = packets
                .iter()
                .filter(|p| p["stream_index"].as_u64() == Some(idx))
                .collect();
            let pts: Vec<f64> = mine.iter().filter_map(|p| num(&p["pts_time"])).collect();
            let first = pts.iter().copied().fold(f64::MAX, f64::min);
            // ffmpeg leaves some packets' duration unset (Opus in MP4): the
            // mean gap stands in for those.
            let gap = if pts.len() > 1 {
                (pts.iter().copied().fold(f64::MIN, f64::max) - first) / (pts.len() - 1) as f64
            } else {
                0.0
            };
            let end = mine
                .iter()
                .filter_map(|p| {
                    Some(num(&p["pts_time"])? + num(&p["duration_time"]).unwrap_or(gap))
                })
                .fold(f64::MIN, f64::max);
            ProbedStream {
                codec: s["codec_name"].as_str().unwrap_or("").to_string(),
                width: s["width"].as_u64(),
                height: s["height"].as_u64(),
                sample_rate: num(&s["sample_rate"]).map(|r| r as u64),
                channels: s["channels"].as_u64(),
                packet_span: if mine.is_empty() { 0.0 } else { end - first },
                packets: mine.len(),
                duration: num(&s["duration"]),
            }
        })
        .collect()
}

/// An x264 SPS for 320x240 High profile, and a PPS to go with it.
pub const SPS_320X240: &[u8] = &[
    0x67, 0x64, 0x00, 0x0d, 0xac, 0xb2, 0x02, 0x83, 0xf6, 0x02, 0x20, 0x00, 0x00, 0x03, 0x00, 0x20,
    0x00, 0x00, 0x07, 0x81, 0xe2, 0x85, 0x49,
];
/// An x264 SPS for 1280x720 Baseline.
pub const SPS_1280X720: &[u8] = &[
    0x67, 0x42, 0xc0, 0x1f, 0xd9, 0x00, 0x50, 0x05, 0xbb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10,
    0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x83, 0x24, 0x80,
];
pub const PPS: &[u8] = &[0x68, 0xeb, 0xc3, 0xcb, 0x22, 0xc0];

/// A simulated live source driving a segmenter: video at `fps` with an IDR
/// every `gop` frames, and (optionally) 20 ms Opus frames, pushed in time
/// order with wall-clock times counted from `t0`. No real time passes.
pub struct Sim {
    pub seg: crate::hls::segmenter::Segmenter,
    pub t0: std::time::SystemTime,
    pub fps: u32,
    pub gop: u32,
    pub audio: bool,
    pub video: bool,
    /// Frames pushed so far, per kind.
    pub frames: u64,
    pub audio_frames: u64,
    /// Input timestamp origins (a source's RTP clock doesn't start at 0).
    pub video_origin: u64,
    pub audio_origin: u64,
    /// Wall-clock offset of this source's time 0 from `t0`.
    pub wall_offset: std::time::Duration,
    /// Every `Ready` the segmenter returned, in order.
    pub ready: Vec<crate::hls::segmenter::Ready>,
}

impl Sim {
    pub fn new(config: crate::hls::segmenter::SegmenterConfig, fps: u32, gop: u32) -> Self {
        Self::with_tracks(config, fps, gop, true, true)
    }

    pub fn with_tracks(
        config: crate::hls::segmenter::SegmenterConfig,
        fps: u32,
        gop: u32,
        video: bool,
        audio: bool,
    ) -> Self {
        use crate::hls::fmp4::TrackConfig;
        let mut tracks = Vec::new();
        if video {
            tracks.push(TrackConfig::video(SPS_320X240.to_vec(), PPS.to_vec()).unwrap());
        }
        if audio {
            tracks.push(TrackConfig::Opus {
                channels: 2,
                pre_skip: 312,
            });
        }
        Self {
            seg: crate::hls::segmenter::Segmenter::new(config, tracks),
            t0: std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_767_225_600),
            fps,
            gop,
            audio,
            video,
            frames: 0,
            audio_frames: 0,
            video_origin: 1_000_000,
            audio_origin: 1_000_000 * 48 / 90,
            wall_offset: std::time::Duration::ZERO,
            ready: Vec::new(),
        }
    }

    fn video_time(&self) -> f64 {
        self.frames as f64 / f64::from(self.fps)
    }

    fn audio_time(&self) -> f64 {
        self.audio_frames as f64 * 0.02
    }

    /// Pushes everything up to `until` seconds of source time.
    pub fn run_until(&mut self, until: f64) {
        use crate::hls::segmenter::Sample;
        loop {
            let v = if self.video {
                self.video_time()
            } else {
                f64::MAX
            };
            let a = if self.audio {
                self.audio_time()
            } else {
                f64::MAX
            };
            let t = v.min(a);
            if t >= until - 1e-9 {
                return;
            }
            let wall = self.t0 + self.wall_offset + std::time::Duration::from_secs_f64(t);
            let sample = if v <= a {
                let i = self.frames;
                self.frames += 1;
                Sample {
                    track: 0,
                    dts: self.video_origin + i * 90_000 / u64::from(self.fps),
                    composition_offset: 0,
                    keyframe: i.is_multiple_of(u64::from(self.gop)),
                    data: Bytes::from(format!("video frame {i}")),
                }
            } else {
                let i = self.audio_frames;
                self.audio_frames += 1;
                Sample {
                    track: usize::from(self.video),
                    dts: self.audio_origin + i * 960,
                    composition_offset: 0,
                    keyframe: false,
                    data: Bytes::from(format!("opus {i}")),
                }
            };
            let r = self.seg.push(sample, wall);
            self.ready.extend(r);
        }
    }
}

/// About `seconds` of real 20 ms stereo Opus frames: the AAC fixture
/// (looped) through the RTMP ingest's AAC -> Opus transcoder.
pub fn opus_frames(seconds: f64) -> Vec<Bytes> {
    let (asc, aac) = adts_frames(AAC_48K_MONO);
    let config = crate::rtmp::AacConfig {
        object_type: 2,
        sample_rate: 48000,
        channels: 1,
        raw: Bytes::from(asc),
    };
    let mut t = crate::rtmp::AacToOpus::new(&config, 64_000, 0).unwrap();
    let mut out = Vec::new();
    let mut n = 0usize;
    while (out.len() as f64) * 0.02 < seconds {
        for f in &aac {
            let ms = (n * 1024 * 1000 / 48000) as u32;
            out.extend(t.push(f, ms).unwrap().into_iter().map(|f| f.payload));
            n += 1;
        }
    }
    out.truncate((seconds / 0.02) as usize);
    out
}
