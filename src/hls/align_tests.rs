//! The ABR ladder of a simulcast caster: its renditions end their segments
//! on the same keyframes, also when a layer comes on later than the others
//! (as simulcast layers do while the caster's bandwidth estimate grows), and
//! the keyframes asked for stay at one per segment. Simulated: a seeded
//! arrival jitter, no real time.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use str0m::format::Codec;
use str0m::media::{MediaKind, Rid};

use super::feed::Feed;
use super::segmenter::SegmenterConfig;
use super::testutil::{PPS, SPS_320X240, SPS_1280X720};
use crate::sfu::PeerId;
use crate::sfu::tap::TapPacket;

const FPS: u64 = 30;

struct Layer {
    rid: &'static str,
    ssrc: u32,
    sps: &'static [u8],
    /// The layer's RTP timestamp of the live's time 0 (each layer has its
    /// own random offset).
    ts_offset: u32,
    seq: u64,
    /// Source time (s) the encoder starts this layer, with a keyframe.
    starts: f64,
    /// Network delay of its packets (a bigger layer's frames take longer).
    delay_ms: u64,
    keyframe_pending: bool,
    started: bool,
}

/// A small deterministic generator (the jitter must replay).
struct Lcg(u64);

impl Lcg {
    fn next_ms(&mut self, max: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % (max + 1)
    }
}

fn packet(
    layer: &mut Layer,
    payload: Vec<u8>,
    ts: u32,
    marker: bool,
    arrival: Instant,
) -> TapPacket {
    layer.seq += 1;
    TapPacket {
        kind: MediaKind::Video,
        caster: PeerId(7),
        ssrc: layer.ssrc,
        rid: Some(Rid::from(layer.rid)),
        codec: Codec::H264,
        clock_rate: 90_000,
        seq: layer.seq,
        ts,
        marker,
        arrival,
        payload: Arc::from(payload),
    }
}

/// Runs a three-layer caster for `seconds`, the half-frame `h` layer coming
/// on at 2.3 s, with keyframe requests made as the hub makes them (all
/// layers at once, at most every 500 ms, answered two frames later).
/// Returns the feed and the number of keyframe requests.
fn simulcast(seconds: u64, seed: u64) -> (Feed, u32) {
    let config = SegmenterConfig {
        window: 30,
        ..SegmenterConfig::default()
    };
    let mut feed = Feed::new(config);
    let mut rng = Lcg(seed);
    let mut layers = [
        ("q", 11, SPS_320X240, 0.0, 2),
        ("h", 22, SPS_320X240, 2.3, 6),
        ("f", 33, SPS_1280X720, 0.0, 12),
    ]
    .map(|(rid, ssrc, sps, starts, delay_ms)| Layer {
        rid,
        ssrc,
        sps,
        ts_offset: (ssrc * 0x0101_0101).wrapping_mul(977),
        seq: u64::from(ssrc) * 1000,
        starts,
        delay_ms,
        keyframe_pending: false,
        started: false,
    });
    let t0 = Instant::now();
    let wall0 = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
    let mut requests = 0;
    let mut last_request: Option<u64> = None;
    // Frames until the requested keyframes come.
    let mut keyframes_in: Option<u64> = None;
    for frame in 0..seconds * FPS {
        let t_ms = frame * 1000 / FPS;
        if keyframes_in == Some(0) {
            for l in layers.iter_mut().filter(|l| l.started) {
                l.keyframe_pending = true;
            }
        }
        keyframes_in = keyframes_in.and_then(|n| n.checked_sub(1));
        for l in &mut layers {
            if (t_ms as f64) < l.starts * 1000.0 {
                continue;
            }
            let keyframe = !l.started || std::mem::take(&mut l.keyframe_pending);
            l.started = true;
            let ts = l.ts_offset.wrapping_add((frame * 90_000 / FPS) as u32);
            let arrival_ms = t_ms + l.delay_ms + rng.next_ms(4);
            let arrival = t0 + Duration::from_millis(arrival_ms);
            let wall = wall0 + Duration::from_millis(arrival_ms);
            let mut nals: Vec<Vec<u8>> = Vec::new();
            if keyframe {
                nals.push(l.sps.to_vec());
                nals.push(PPS.to_vec());
                nals.push(vec![0x65, 0x88, 0x84, 0x00, 0x33, 0xff]);
            } else {
                nals.push(vec![0x41, 0x9a, 0x02, 0x0c, 0x00, 0x11]);
            }
            let last = nals.len() - 1;
            for (i, nal) in nals.into_iter().enumerate() {
                let p = packet(l, nal, ts, i == last, arrival);
                feed.push(&p, wall);
            }
        }
        // The hub's rule: all layers, at most every 500 ms.
        if feed.wants_keyframe() && last_request.is_none_or(|at| t_ms >= at + 500) {
            last_request = Some(t_ms);
            requests += 1;
            keyframes_in = Some(2);
        }
    }
    (feed, requests)
}

/// (program date time, duration) of a rendition's complete segments.
fn segments(feed: &Feed, rid: &str) -> Vec<(SystemTime, Duration)> {
    let r = feed.renditions.iter().find(|r| r.name == rid).unwrap();
    r.segmenter
        .as_ref()
        .expect("the rendition started")
        .segments()
        .filter(|s| s.complete)
        .map(|s| (s.program_date_time, s.duration))
        .collect()
}

fn close(a: SystemTime, b: SystemTime, within: Duration) -> bool {
    let d = a.duration_since(b).unwrap_or_else(|e| e.duration());
    d <= within
}

#[test]
fn simulcast_renditions_end_segments_on_the_same_keyframes() {
    for seed in [1, 2, 3] {
        let (feed, requests) = simulcast(20, seed);
        let q = segments(&feed, "q");
        let h = segments(&feed, "h");
        let f = segments(&feed, "f");
        assert!(q.len() >= 15, "seed {seed}: q made {} segments", q.len());
        // The layer that came on late: its first (short) segment aside,
        // every segment starts and ends with one of q's and f's. 20 ms:
        // the layers' delays differ by 10 ms, plus jitter.
        let within = Duration::from_millis(20);
        for (pdt, duration) in h.iter().skip(1) {
            for other in [&q, &f] {
                assert!(
                    other
                        .iter()
                        .any(|(p, d)| close(*p, *pdt, within) && d.abs_diff(*duration) <= within),
                    "seed {seed}: h's segment at {pdt:?} ({duration:?}) has no match in {other:?}"
                );
            }
        }
        assert!(
            h.len() + 3 >= q.len(),
            "seed {seed}: h {} q {}",
            h.len(),
            q.len()
        );
        // q and f start together and stay together.
        assert_eq!(q.len(), f.len(), "seed {seed}");
        for ((pq, dq), (pf, df)) in q.iter().zip(&f) {
            assert!(
                close(*pq, *pf, within) && dq.abs_diff(*df) <= within,
                "seed {seed}"
            );
        }
        // One keyframe request per segment (1 s), plus the start and the
        // late layer's: not one every 500 ms.
        assert!(
            requests <= 20 + 3,
            "seed {seed}: {requests} keyframe requests in 20 s"
        );
    }
}
