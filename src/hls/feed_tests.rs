//! The feed with an RTMP caster's frames (original AAC, B-frames), and
//! switching between RTMP and WebRTC casters.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use mp4_atom::{Codec as Mp4Codec, Decode, Moof, Moov, TrunSamples};
use str0m::format::Codec;
use str0m::media::MediaKind;

use super::*;
use crate::hls::rtmp_source::RtmpFrame;
use crate::hls::segmenter::Lookup;
use crate::hls::testutil::{self, PPS, SPS_320X240, TempDir};
use crate::rtmp::{AacConfig, AvcConfig, NaluLengthSize, flv};

fn avc() -> AvcConfig {
    AvcConfig {
        profile: 0x64,
        profile_compat: 0,
        level: 0x0d,
        nalu_length_size: NaluLengthSize::Four,
        sps: vec![Bytes::from_static(SPS_320X240)],
        pps: vec![Bytes::from_static(PPS)],
    }
}

fn aac() -> AacConfig {
    // AAC-LC, 48 kHz, stereo.
    AacConfig {
        object_type: 2,
        sample_rate: 48000,
        channels: 2,
        raw: Bytes::from_static(&[0x11, 0x90]),
    }
}

fn avcc(nal: &[u8]) -> Bytes {
    let mut v = (nal.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(nal);
    Bytes::from(v)
}

struct Caster {
    peer: PeerId,
    t0: Instant,
}

impl Caster {
    fn input(&self, ms: u32, frame: RtmpFrame) -> RtmpInput {
        RtmpInput {
            caster: self.peer,
            arrival: self.t0 + Duration::from_millis(u64::from(ms)),
            frame,
        }
    }
}

fn wall(ms: u32) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_767_225_600) + Duration::from_millis(u64::from(ms))
}

/// `secs` of 30 fps I P B B ... (keyframe every 30) and 48 kHz AAC frames,
/// interleaved by time as an RTMP publisher sends them.
fn rtmp_stream(secs: u32) -> Vec<(u32, RtmpFrame)> {
    let mut out = vec![
        (0, RtmpFrame::VideoConfig(avc())),
        (0, RtmpFrame::AudioConfig(aac())),
    ];
    let frames = secs * 30;
    let mut audio_ms = 0.0f64;
    for i in 0..frames {
        let dts = i * 1000 / 30;
        while audio_ms <= f64::from(dts) {
            let frame = RtmpFrame::Audio {
                ts_ms: audio_ms as u32,
                data: Bytes::from_static(b"aac frame"),
            };
            out.push((audio_ms as u32, frame));
            audio_ms += 1024.0 * 1000.0 / 48000.0;
        }
        // In each group of three after the keyframe: P first (shown third),
        // then two B (shown at their own time after the reordering delay).
        let (nal, cts): (&[u8], i32) = match i % 30 {
            0 => (&[0x65, 0x88], 67),
            k if k % 3 == 1 => (&[0x41, 0x9a], 100),
            _ => (&[0x01, 0x9e], 0),
        };
        let frame = RtmpFrame::Video {
            dts_ms: dts,
            composition_offset_ms: cts,
            data: avcc(nal),
        };
        out.push((dts, frame));
    }
    out
}

/// (track id, base decode time, [(duration, cts)]) of a traf.
type Traf = (u32, u64, Vec<(u32, Option<i64>)>);

/// Each traf of a part.
fn trafs(part: &Bytes) -> Vec<Traf> {
    let mut buf: &[u8] = part;
    let moof = Moof::decode(&mut buf).unwrap();
    moof.traf
        .iter()
        .map(|t| {
            let TrunSamples::Explicit(e) = &t.trun[0].samples else {
                panic!("explicit samples")
            };
            (
                t.tfhd.track_id,
                t.tfdt.as_ref().unwrap().base_media_decode_time,
                e.iter().map(|e| (e.duration.unwrap(), e.cts)).collect(),
            )
        })
        .collect()
}

#[test]
fn an_rtmp_caster_gets_aac_and_its_bframes_composition_offsets() {
    let mut feed = Feed::new(SegmenterConfig::default());
    let caster = Caster {
        peer: PeerId(7),
        t0: Instant::now(),
    };
    let mut parts = Vec::new();
    for (ms, frame) in rtmp_stream(3) {
        for (i, r) in feed.push_rtmp(&caster.input(ms, frame), wall(ms)) {
            assert_eq!(i, 0);
            if let Ready::Part { msn, part } = r {
                parts.push((msn, part));
            }
        }
    }
    assert!(feed.has_audio());
    let r = &feed.renditions[0];
    assert_eq!(r.name, "main");
    let v = r.variant(caster.t0, true).unwrap();
    assert_eq!(v.codecs, ["avc1.64000d", "mp4a.40.2"]);
    let seg = r.segmenter.as_ref().unwrap();
    let init = seg.init(0).unwrap();
    let mut buf = init.as_ref();
    mp4_atom::Ftyp::decode(&mut buf).unwrap();
    let moov = Moov::decode(&mut buf).unwrap();
    let timescales: Vec<u32> = moov.trak.iter().map(|t| t.mdia.mdhd.timescale).collect();
    assert_eq!(timescales, [90_000, 48_000]);
    let Mp4Codec::Mp4a(mp4a) = &moov.trak[1].mdia.minf.stbl.stsd.codecs[0] else {
        panic!("not mp4a")
    };
    let dsi = mp4a.esds.es_desc.dec_config.dec_specific.as_ref().unwrap();
    assert_eq!(dsi.raw, [0x11, 0x90]);

    // Two whole seconds of parts: video DTS contiguous and rising, the
    // B-frame offsets as sent (in 90 kHz), audio 1024 samples a frame.
    assert!(parts.len() >= 4, "{parts:?}");
    let mut next_video = None;
    let mut video_samples = 0;
    let mut next_audio = None;
    for (msn, part) in parts {
        let Lookup::Ready(bytes) = seg.part(msn, part) else {
            panic!("part {msn}-{part}")
        };
        for (track, base, samples) in trafs(&bytes) {
            let next = if track == 1 {
                &mut next_video
            } else {
                &mut next_audio
            };
            assert!(next.is_none_or(|n| n == base), "track {track} at {base}");
            *next = Some(base + samples.iter().map(|s| u64::from(s.0)).sum::<u64>());
            if track == 1 {
                for (k, (duration, cts)) in samples.iter().enumerate() {
                    assert!((2970..=3060).contains(duration), "{duration}");
                    let i = video_samples + k;
                    let want = match i % 30 {
                        0 => 67 * 90,
                        k if k % 3 == 1 => 100 * 90,
                        _ => 0,
                    };
                    assert_eq!(cts.unwrap(), want, "sample {i}");
                }
                video_samples += samples.len();
            } else {
                assert!(samples.iter().all(|s| s.0 == 1024 && s.1.is_none()));
            }
        }
    }
    assert!(video_samples >= 60, "{video_samples}");
}

fn tap(caster: PeerId, kind: MediaKind, arrival: Instant, ts: u32, seq: u64) -> TapPacket {
    let (codec, payload): (_, &[u8]) = match kind {
        MediaKind::Audio => (Codec::Opus, &b"opus"[..]),
        MediaKind::Video => (Codec::H264, &[0x65, 0x88]),
    };
    TapPacket {
        kind,
        caster,
        ssrc: 42,
        rid: None,
        codec,
        clock_rate: if kind == MediaKind::Audio {
            48_000
        } else {
            90_000
        },
        seq,
        ts,
        marker: true,
        arrival,
        payload: Arc::from(payload),
    }
}

/// A WebRTC caster's keyframe (SPS, PPS, IDR in a STAP-A... kept simple:
/// one packet each).
fn webrtc_keyframe(feed: &mut Feed, caster: PeerId, at: Instant, ts: u32, seq: u64) {
    for (i, nal) in [SPS_320X240, PPS, &[0x65, 0x88][..]].iter().enumerate() {
        let mut p = tap(caster, MediaKind::Video, at, ts, seq + i as u64);
        p.payload = Arc::from(*nal);
        p.marker = i == 2;
        feed.push(&p, wall(0));
    }
}

#[test]
fn switching_between_rtmp_and_webrtc_casters_starts_new_init_segments() {
    let mut feed = Feed::new(SegmenterConfig::default());
    let t0 = Instant::now();
    let whip = PeerId(1);
    let rtmp = Caster {
        peer: PeerId(2),
        t0: t0 + Duration::from_secs(5),
    };
    // A WebRTC caster with Opus.
    feed.push(&tap(whip, MediaKind::Audio, t0, 0, 1), wall(0));
    webrtc_keyframe(&mut feed, whip, t0, 0, 1);
    let r = &feed.renditions[0];
    assert_eq!(r.audio, Some(opus()));
    assert_eq!(r.segmenter.as_ref().unwrap().init_version(), 0);

    // An RTMP publish takes the live: its tap packets are ignored (the
    // hub says so before its frames come), its frames make a new init
    // segment with AAC.
    feed.expect_rtmp(rtmp.peer);
    webrtc_keyframe(&mut feed, rtmp.peer, rtmp.t0, 9000, 1);
    assert_eq!(feed.caster, Some(whip));
    for (ms, frame) in rtmp_stream(1) {
        feed.push_rtmp(&rtmp.input(ms, frame), wall(ms));
    }
    let r = &feed.renditions[0];
    assert_eq!(feed.renditions.len(), 1);
    assert!(matches!(r.audio, Some(TrackConfig::Aac { .. })));
    let seg = r.segmenter.as_ref().unwrap();
    assert_eq!(seg.init_version(), 1);
    // The replaced WebRTC caster's late packets change nothing.
    webrtc_keyframe(&mut feed, whip, t0, 3000, 9);
    feed.push(&tap(whip, MediaKind::Audio, t0, 960, 2), wall(0));
    assert_eq!(feed.caster, Some(rtmp.peer));
    assert_eq!(
        feed.renditions[0]
            .segmenter
            .as_ref()
            .unwrap()
            .init_version(),
        1
    );

    // A WebRTC caster replaces the RTMP one: Opus again, a new init; the
    // RTMP publish's frames still queued are ignored.
    let next = PeerId(3);
    let t1 = t0 + Duration::from_secs(10);
    feed.push(&tap(next, MediaKind::Audio, t1, 0, 1), wall(0));
    webrtc_keyframe(&mut feed, next, t1, 0, 1);
    for (ms, frame) in rtmp_stream(1).into_iter().take(10) {
        feed.push_rtmp(&rtmp.input(1000 + ms, frame), wall(ms));
    }
    assert_eq!(feed.caster, Some(next));
    let r = &feed.renditions[0];
    assert_eq!(r.audio, Some(opus()));
    assert_eq!(r.segmenter.as_ref().unwrap().init_version(), 2);
}

/// FLV tags of a file: (type, timestamp ms, body).
fn flv_tags(data: &[u8]) -> Vec<(u8, u32, Bytes)> {
    assert_eq!(&data[..3], b"FLV");
    let mut pos = u32::from_be_bytes(data[5..9].try_into().unwrap()) as usize + 4;
    let mut tags = Vec::new();
    while pos + 11 <= data.len() {
        let h = &data[pos..pos + 11];
        let size = (usize::from(h[1]) << 16) | (usize::from(h[2]) << 8) | usize::from(h[3]);
        let ts = (u32::from(h[7]) << 24)
            | (u32::from(h[4]) << 16)
            | (u32::from(h[5]) << 8)
            | u32::from(h[6]);
        let body = Bytes::copy_from_slice(&data[pos + 11..pos + 11 + size]);
        tags.push((h[0], ts, body));
        pos += 11 + size + 4;
    }
    tags
}

#[test]
fn x264_with_bframes_and_aac_over_flv_decodes_cleanly_from_the_segments() {
    if !testutil::have_ffmpeg("x264_with_bframes_and_aac_over_flv_decodes_cleanly") {
        return;
    }
    let dir = TempDir::new("feed-bframes");
    let flv_path = dir.0.join("in.flv");
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc=size=320x240:rate=30")
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"])
        .args(["-t", "4", "-pix_fmt", "yuv420p", "-c:v", "libx264"])
        .args(["-bf", "2", "-g", "30", "-sc_threshold", "0"])
        .args(["-c:a", "aac", "-f", "flv"])
        .arg(&flv_path)
        .status()
        .unwrap();
    assert!(status.success());
    let mut feed = Feed::new(SegmenterConfig::default());
    let caster = Caster {
        peer: PeerId(9),
        t0: Instant::now(),
    };
    let mut offsets = std::collections::BTreeSet::new();
    let mut video_frames = 0;
    for (kind, ts, body) in flv_tags(&std::fs::read(&flv_path).unwrap()) {
        let frame = match kind {
            9 => match flv::parse_video(&body).unwrap() {
                flv::VideoTag::AvcConfig(c) => RtmpFrame::VideoConfig(c),
                flv::VideoTag::AvcFrames {
                    composition_offset_ms,
                    data,
                    ..
                } => {
                    video_frames += 1;
                    offsets.insert(composition_offset_ms);
                    RtmpFrame::Video {
                        dts_ms: ts,
                        composition_offset_ms,
                        data,
                    }
                }
                _ => continue,
            },
            8 => match flv::parse_audio(&body).unwrap() {
                flv::AudioTag::AacConfig(c) => RtmpFrame::AudioConfig(c),
                flv::AudioTag::AacFrame(data) => RtmpFrame::Audio { ts_ms: ts, data },
            },
            _ => continue,
        };
        feed.push_rtmp(&caster.input(ts, frame), wall(ts));
    }
    assert_eq!(video_frames, 120);
    // Reordered: B-frames.
    assert!(offsets.len() >= 2, "composition offsets {offsets:?}");
    let seg = feed.renditions[0].segmenter.as_ref().unwrap();
    // The complete segments (the one in progress has no end yet).
    let mut file = seg.init(0).unwrap().to_vec();
    let mut secs = 0.0;
    for s in seg.segments().filter(|s| s.complete) {
        let Lookup::Ready(b) = seg.segment(s.msn) else {
            panic!()
        };
        secs += s.duration.as_secs_f64();
        file.extend_from_slice(&b);
    }
    assert!(secs >= 2.9, "{secs} s");
    let path = dir.0.join("out.mp4");
    std::fs::write(&path, &file).unwrap();
    let streams = testutil::ffprobe(&path);
    println!("ffprobe (x264 -bf 2 + AAC via FLV): {streams:?}");
    assert_eq!(streams.len(), 2);
    assert_eq!(streams[0].codec, "h264");
    assert_eq!(streams[1].codec, "aac");
    assert_eq!(streams[1].sample_rate, Some(44100));
    let frames = (secs * 30.0).round() as usize;
    assert_eq!(streams[0].packets, frames);
    // Every picture decodes, without a complaint.
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&path)
        .args(["-map", "0:v", "-f", "framemd5", "-"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "{stderr}");
    let decoded = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .count();
    assert_eq!(decoded, frames);
}

#[test]
fn a_webrtc_layer_joined_mid_frame_keeps_its_timestamps_on_the_timeline() {
    let mut feed = Feed::new(SegmenterConfig::default());
    let t0 = Instant::now();
    let caster = PeerId(1);
    // The tap starts mid-frame: an FU-A middle fragment at 0 ms, which the
    // depacketizer drops; the next frame, a keyframe, is 300 ms later.
    let mut p = tap(caster, MediaKind::Video, t0, 0, 1);
    p.payload = Arc::from(&[0x7c, 0x05, 1, 2, 3][..]);
    p.marker = false;
    feed.push(&p, wall(0));
    let key = t0 + Duration::from_millis(300);
    webrtc_keyframe(&mut feed, caster, key, 27_000, 2);
    // Its time is its timestamp's (300 ms after the first packet's), not
    // the first packet's arrival.
    let r = &mut feed.renditions[0];
    assert!(r.segmenter.is_some());
    assert_eq!(r.clock.at(27_000), 27_000);
}
