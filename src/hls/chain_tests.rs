//! RTP in, playable fMP4 out: real x264 pictures packetized as the SFU
//! forwards them (our RTMP ingest's RFC 6184 packetizer: single NAL units,
//! FU-A), one packet lost, then depacketizer -> segmenter -> files that
//! ffmpeg must decode without a single complaint.

use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;

use super::depacketize::H264Depacketizer;
use super::fmp4::TrackConfig;
use super::segmenter::{Lookup, Sample, Segmenter, SegmenterConfig};
use super::testutil::{self, TempDir};
use crate::rtmp::{AvcConfig, H264Packetizer, NaluLengthSize};

#[test]
fn rtp_with_a_loss_becomes_clean_fmp4() {
    if !testutil::have_ffmpeg("rtp_with_a_loss_becomes_clean_fmp4") {
        return;
    }
    let dir = TempDir::new("chain");
    let aus = testutil::x264_access_units(&dir.0, 3.0, 30, 30);
    assert_eq!(aus.len(), 90);
    let config = AvcConfig {
        profile: 0x64,
        profile_compat: 0,
        level: 0x0d,
        nalu_length_size: NaluLengthSize::Four,
        sps: vec![Bytes::from(aus[0].sps.clone().unwrap())],
        pps: vec![Bytes::from(aus[0].pps.clone().unwrap())],
    };
    let mut packetizer = H264Packetizer::new(&config, 123_456);
    let mut depacketizer = H264Depacketizer::new();
    let mut segmenter: Option<Segmenter> = None;
    let t0 = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
    let (mut seq, mut lost, mut fragmented) = (0u64, 0, 0);
    let mut emitted = 0;
    for (i, au) in aus.iter().enumerate() {
        // RTMP-style millisecond times: 33/34 ms frame steps, as jittery as
        // real capture clocks.
        let ms = (i * 1000 / 30) as u32;
        for pkt in packetizer.packetize(ms, 0, &au.avcc).unwrap() {
            seq += 1;
            fragmented += usize::from(pkt.payload[0] & 0x1f == 28);
            if i == 40 {
                lost += 1; // frame 40 never arrives
                continue;
            }
            for out in depacketizer.push(&pkt.payload, pkt.rtp_ts, seq, pkt.marker) {
                emitted += 1;
                let seg = segmenter.get_or_insert_with(|| {
                    let track =
                        TrackConfig::video(out.sps.clone().unwrap(), out.pps.clone().unwrap());
                    Segmenter::new(SegmenterConfig::default(), vec![track.unwrap()])
                });
                let sample = Sample {
                    track: 0,
                    dts: u64::from(out.rtp_ts),
                    composition_offset: 0,
                    keyframe: out.keyframe,
                    data: Bytes::from(out.nalus),
                };
                seg.push(sample, t0 + Duration::from_millis(u64::from(ms)));
            }
        }
    }
    assert!(lost > 0 && fragmented > 0, "the IDRs went as FU-A");
    // Frames 40..59 are dropped: 40 lost, the rest undecodable until the
    // IDR at 60.
    assert_eq!(emitted, 70);
    let seg = segmenter.unwrap();

    // Segments 0 and 1 are complete, 2 has its first part.
    let mut file = seg.init(0).unwrap().to_vec();
    for msn in [0, 1] {
        let Lookup::Ready(b) = seg.segment(msn) else {
            panic!("segment {msn}")
        };
        file.extend_from_slice(&b);
    }
    let Lookup::Ready(part) = seg.part(2, 0) else {
        panic!("part 2.0")
    };
    file.extend_from_slice(&part);
    let path = dir.0.join("out.mp4");
    std::fs::write(&path, file).unwrap();
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v", "-show_entries"])
        .args(["frame=pts_time,key_frame", "-of", "csv=p=0"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "{stderr}");
    let frames: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    // 0..39, then 60..74: 55 pictures, keyframes at 0, 30 and 60.
    assert_eq!(frames.len(), 55);
    let keys: Vec<usize> = (0..frames.len())
        .filter(|&i| frames[i].starts_with("1,"))
        .collect();
    assert_eq!(keys, [0, 30, 40]);
    // The picture after the gap is shown at 2.0 s: the gap is time, not
    // lost sync.
    assert_eq!(frames[40], "1,2.000000");
}
