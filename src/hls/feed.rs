//! A live's caster packets (from the SFU's tap) into LL-HLS renditions:
//! one rendition per H.264 video layer, each with the live's audio. Sans-IO:
//! packets and wall-clock times in, segmenter state and readiness out.
//!
//! An RTMP caster's frames come instead straight from the ingest
//! ([`Feed::push_rtmp`], see [`super::rtmp_source`]): its original AAC and
//! its B-frames' decode order; the tap's packets of that caster (the Opus
//! transcode, the re-packetized video) are ignored.
//!
//! Timing: each track's RTP timestamps are unwrapped and placed on one
//! timeline by the arrival of that track's first packet (the tap carries no
//! RTCP sender reports). The error is the first packets' jitter, a few
//! milliseconds of audio/video offset.

use std::time::{Instant, SystemTime};

use bytes::Bytes;
use str0m::format::Codec;
use str0m::media::MediaKind;

use super::depacketize::H264Depacketizer;
use super::fmp4::{OPUS_TIMESCALE, TrackConfig, VIDEO_TIMESCALE, codec_string};
use super::playlist::Variant;
use super::rtmp_source::{RtmpInput, RtmpSource, SourceSample};
use super::segmenter::{Boundary, Ready, Sample, Segmenter, SegmenterConfig};
use crate::sfu::PeerId;
use crate::sfu::tap::TapPacket;

/// Video layers (renditions) kept per live: simulcast has three.
const MAX_RENDITIONS: usize = 4;

/// Replaced casters remembered: their late packets (a replaced RTMP
/// publish's frames still queued, say) must not take the live back.
const RETIRED: usize = 8;

/// Why a live cannot be packaged, for the 409 and the live's warnings.
pub const VP8_REFUSED: &str = "this live's video is VP8, which HLS (fMP4) cannot carry in the \
    players that matter (Chromium's Media Source Extensions refuse vp08 in MP4): it plays over \
    WebRTC only. Cast H.264 (the cast page and vessel.js prefer it when HLS or recording is on; \
    OBS and FFmpeg send H.264) to get HLS";

/// One track's RTP timestamps on the live's timeline (also the WebM
/// recorder's).
#[derive(Debug)]
pub(crate) struct Clock {
    /// Unwrapped ticks of the last timestamp, and that timestamp.
    last: Option<(i64, u32)>,
    /// Timeline ticks of the track's first packet.
    origin: i64,
}

impl Clock {
    pub(crate) fn new(rate: u32, first_arrival: Instant, epoch: Instant) -> Self {
        let since = first_arrival.saturating_duration_since(epoch);
        Self {
            last: None,
            origin: (since.as_secs_f64() * rate as f64) as i64,
        }
    }

    /// The timeline time of `ts`, in the track's ticks (never below 0).
    pub(crate) fn at(&mut self, ts: u32) -> u64 {
        let ext = match self.last {
            None => 0,
            Some((ext, prev)) => ext + i64::from(ts.wrapping_sub(prev) as i32),
        };
        self.last = Some((ext, ts));
        (self.origin + ext).max(0) as u64
    }
}

/// Where a live's renditions end their segments, so that the ABR ladder's
/// segments line up: the same keyframe (every layer gets the keyframe
/// requests at once, and a simulcast encoder makes them from one captured
/// frame) ends a segment in every rendition. Without it a layer that
/// started later (simulcast layers come on as the caster's bandwidth grows)
/// would cut a fraction of a segment off the others, forever, and ask for
/// keyframes in between theirs: twice the keyframes for every layer.
#[derive(Debug, Default)]
struct Boundaries {
    /// Recent boundaries on the live's timeline (90 kHz), newest last.
    recent: std::collections::VecDeque<u64>,
}

impl Boundaries {
    const KEPT: usize = 4;

    /// Whether a keyframe at `dts` ends its rendition's segment: it is one
    /// another rendition ended on (within `segment_target` / 5: the layers'
    /// clocks are anchored by their own first arrivals, a few ms apart), or
    /// the first since the last boundary that comes (nearly) a segment
    /// target later, which becomes the next boundary.
    fn at_keyframe(&mut self, dts: u64, segment_target: std::time::Duration) -> Boundary {
        let target = (segment_target.as_secs_f64() * f64::from(VIDEO_TIMESCALE)) as u64;
        let tolerance = target / 5;
        if self.recent.iter().any(|b| b.abs_diff(dts) <= tolerance) {
            return Boundary::Here;
        }
        match self.recent.back() {
            Some(last) if dts < last + target * 9 / 10 => Boundary::NotHere,
            _ => {
                if self.recent.len() == Self::KEPT {
                    self.recent.pop_front();
                }
                self.recent.push_back(dts);
                Boundary::Here
            }
        }
    }
}

/// One video layer's rendition.
pub struct Rendition {
    /// Its name in URIs: the simulcast rid, or `main`.
    pub name: String,
    ssrc: u32,
    depacketizer: H264Depacketizer,
    clock: Clock,
    /// Created at the layer's first keyframe (the init segment needs its
    /// SPS and PPS).
    pub segmenter: Option<Segmenter>,
    video: Option<TrackConfig>,
    /// The audio track of the segmenter's tracks, if they have one.
    audio: Option<TrackConfig>,
    /// Bytes seen and since when, for `BANDWIDTH`.
    bytes: u64,
    since: Instant,
}

impl Rendition {
    fn new(name: String, ssrc: u32, arrival: Instant, epoch: Instant) -> Self {
        Self {
            name,
            ssrc,
            depacketizer: H264Depacketizer::new(),
            clock: Clock::new(VIDEO_TIMESCALE, arrival, epoch),
            segmenter: None,
            video: None,
            audio: None,
            bytes: 0,
            since: arrival,
        }
    }

    /// What the multivariant playlist says of it, once it has an init
    /// segment.
    pub fn variant(&self, now: Instant, audio: bool) -> Option<Variant> {
        let Some(TrackConfig::Video { width, height, .. }) = &self.video else {
            return None;
        };
        self.segmenter.as_ref()?;
        let secs = now
            .saturating_duration_since(self.since)
            .as_secs_f64()
            .max(1.0);
        let video_bps = (self.bytes as f64 * 8.0 / secs) as u64;
        let mut codecs = vec![codec_string(self.video.as_ref()?)];
        if audio {
            codecs.push(codec_string(self.audio.as_ref().unwrap_or(&opus())));
        }
        Some(Variant {
            uri: format!("{}/index.m3u8", self.name),
            // Peak, not mean: a margin for keyframes and the audio.
            bandwidth: (video_bps * 3 / 2).max(100_000) + if audio { 64_000 } else { 0 },
            resolution: Some((*width, *height)),
            codecs,
            frame_rate: None,
        })
    }
}

fn opus() -> TrackConfig {
    TrackConfig::Opus {
        channels: 2,
        pre_skip: 0,
    }
}

/// A live's renditions, fed from its tap.
pub struct Feed {
    config: SegmenterConfig,
    pub renditions: Vec<Rendition>,
    /// The caster whose packets are on the timeline now.
    caster: Option<PeerId>,
    /// Timeline origin (the current caster's first packet).
    epoch: Option<Instant>,
    audio: Option<Clock>,
    /// The current caster's audio track, once seen: renditions made later
    /// carry it.
    audio_track: Option<TrackConfig>,
    /// The current caster is an RTMP publish and this its frames' timeline
    /// (`None` for a WebRTC caster).
    rtmp: Option<RtmpSource>,
    /// An RTMP publish whose tap packets are ignored: its frames come
    /// through [`Feed::push_rtmp`].
    rtmp_caster: Option<PeerId>,
    /// Casters replaced since (most recent last).
    retired: Vec<PeerId>,
    /// The caster's video cannot be packaged (VP8, VP9, AV1).
    pub refused: Option<&'static str>,
    boundaries: Boundaries,
}

impl Feed {
    /// The packaging of the rendition named `name`, once it has begun.
    pub fn segmenter(&self, name: &str) -> Option<&Segmenter> {
        self.renditions
            .iter()
            .find(|r| r.name == name)
            .and_then(|r| r.segmenter.as_ref())
    }

    pub fn new(config: SegmenterConfig) -> Self {
        Self {
            config,
            renditions: Vec::new(),
            caster: None,
            epoch: None,
            audio: None,
            audio_track: None,
            rtmp: None,
            rtmp_caster: None,
            retired: Vec::new(),
            refused: None,
            boundaries: Boundaries::default(),
        }
    }

    /// The rendition with the largest picture, once one has an init segment.
    pub fn largest(&self) -> Option<usize> {
        self.renditions
            .iter()
            .enumerate()
            .filter(|(_, r)| r.segmenter.is_some())
            .max_by_key(|(_, r)| match &r.video {
                Some(TrackConfig::Video { width, height, .. }) => {
                    u32::from(*width) * u32::from(*height)
                }
                _ => 0,
            })
            .map(|(i, _)| i)
    }

    /// Audio has come from the current caster.
    pub fn has_audio(&self) -> bool {
        self.audio_track.is_some()
    }

    /// `caster` is an RTMP publish: its frames will come through
    /// [`Feed::push_rtmp`], so its tap packets are ignored from now on.
    pub fn expect_rtmp(&mut self, caster: PeerId) {
        self.rtmp_caster = Some(caster);
    }

    /// Takes one caster packet; returns what became ready, by rendition.
    pub fn push(&mut self, p: &TapPacket, wall: SystemTime) -> Vec<(usize, Ready)> {
        let mut ready = Vec::new();
        if self.rtmp_caster == Some(p.caster) || self.retired.contains(&p.caster) {
            return ready;
        }
        if self.caster != Some(p.caster) {
            self.new_caster(p.caster, p.arrival);
        }
        let epoch = *self.epoch.get_or_insert(p.arrival);
        match p.kind {
            MediaKind::Audio => {
                if p.codec != Codec::Opus {
                    return ready;
                }
                self.audio_track.get_or_insert_with(opus);
                let clock = self
                    .audio
                    .get_or_insert_with(|| Clock::new(OPUS_TIMESCALE, p.arrival, epoch));
                let dts = clock.at(p.ts);
                self.push_audio(dts, Bytes::copy_from_slice(&p.payload), wall, &mut ready);
            }
            MediaKind::Video => {
                if p.codec != Codec::H264 {
                    self.refused = Some(VP8_REFUSED);
                    return ready;
                }
                self.refused = None;
                let Some(i) = self.rendition_of(p, epoch) else {
                    return ready;
                };
                let r = &mut self.renditions[i];
                r.bytes += p.payload.len() as u64;
                // Every packet's timestamp through the clock: it is anchored
                // by the arrival of the first packet, so that packet's
                // timestamp must be its reference, not the first frame's that
                // comes out (frames before a keyframe are dropped).
                r.clock.at(p.ts);
                let aus = r.depacketizer.push(&p.payload, p.ts, p.seq, p.marker);
                for au in aus {
                    let r = &mut self.renditions[i];
                    let dts = r.clock.at(au.rtp_ts);
                    let config = match (au.keyframe, au.sps, au.pps) {
                        (true, Some(sps), Some(pps)) => TrackConfig::video(sps, pps),
                        _ => None,
                    };
                    let sample = Sample {
                        track: 0,
                        dts,
                        composition_offset: 0,
                        keyframe: au.keyframe,
                        data: Bytes::from(au.nalus),
                    };
                    self.push_video(i, config, sample, wall, &mut ready);
                }
            }
        }
        ready
    }

    /// Takes one frame of an RTMP caster (see [`super::rtmp_source`]);
    /// returns what became ready, by rendition. Its video is the `main`
    /// rendition.
    pub fn push_rtmp(&mut self, input: &RtmpInput, wall: SystemTime) -> Vec<(usize, Ready)> {
        let mut ready = Vec::new();
        if self.retired.contains(&input.caster) {
            return ready;
        }
        if self.caster != Some(input.caster) || self.rtmp.is_none() {
            self.new_caster(input.caster, input.arrival);
            self.rtmp = Some(RtmpSource::new());
        }
        self.rtmp_caster = Some(input.caster);
        let source = self.rtmp.as_mut().expect("set above");
        let sample = source.push(&input.frame);
        if let Some(t) = source.audio_track()
            && self.audio_track.as_ref() != Some(t)
        {
            // A new AudioSpecificConfig: a new init segment at the next
            // keyframe.
            self.audio_track = Some(t.clone());
        }
        match sample {
            None => {}
            Some(SourceSample::Audio { dts, data }) => self.push_audio(dts, data, wall, &mut ready),
            Some(SourceSample::Video {
                config,
                dts,
                composition_offset,
                keyframe,
                data,
            }) => {
                let i = match self.renditions.iter().position(|r| r.name == "main") {
                    Some(i) => i,
                    None if self.renditions.len() < MAX_RENDITIONS => {
                        self.renditions.push(Rendition::new(
                            "main".into(),
                            0,
                            input.arrival,
                            input.arrival,
                        ));
                        self.renditions.len() - 1
                    }
                    None => return ready,
                };
                self.renditions[i].bytes += data.len() as u64;
                let sample = Sample {
                    track: 0,
                    dts,
                    composition_offset,
                    keyframe,
                    data,
                };
                self.push_video(i, config, sample, wall, &mut ready);
            }
        }
        ready
    }

    /// One video sample of rendition `i`; `config` is the track a keyframe
    /// was sent with.
    fn push_video(
        &mut self,
        i: usize,
        config: Option<TrackConfig>,
        sample: Sample,
        wall: SystemTime,
        ready: &mut Vec<(usize, Ready)>,
    ) {
        let audio = self.audio_track.clone();
        let boundary = if sample.keyframe {
            self.boundaries
                .at_keyframe(sample.dts, self.config.segment_target)
        } else {
            Boundary::Auto
        };
        let r = &mut self.renditions[i];
        if sample.keyframe
            && let Some(video) = config
            && (r.video.as_ref() != Some(&video) || r.audio != audio)
        {
            // A new source, new parameter sets, or audio that came after
            // the first keyframe: a new init segment.
            let mut tracks = vec![video.clone()];
            tracks.extend(audio.clone());
            r.video = Some(video);
            r.audio = audio;
            match r.segmenter.as_mut() {
                Some(seg) => ready.extend(seg.discontinuity(tracks).into_iter().map(|x| (i, x))),
                None => r.segmenter = Some(Segmenter::new(self.config.clone(), tracks)),
            }
        }
        if let Some(seg) = r.segmenter.as_mut() {
            ready.extend(
                seg.push_at(sample, wall, boundary)
                    .into_iter()
                    .map(|x| (i, x)),
            );
        }
    }

    /// One audio sample for every rendition whose init segment has the
    /// current caster's audio track (not one still waiting for the new
    /// caster's keyframe, whose audio may be another codec).
    fn push_audio(
        &mut self,
        dts: u64,
        data: Bytes,
        wall: SystemTime,
        ready: &mut Vec<(usize, Ready)>,
    ) {
        for (i, r) in self.renditions.iter_mut().enumerate() {
            if r.video.is_none() || r.audio.is_none() || r.audio != self.audio_track {
                continue;
            }
            if let Some(seg) = r.segmenter.as_mut() {
                let sample = Sample {
                    track: 1,
                    dts,
                    composition_offset: 0,
                    keyframe: true,
                    data: data.clone(),
                };
                ready.extend(seg.push(sample, wall).into_iter().map(|x| (i, x)));
            }
        }
    }

    /// Whether a rendition waits for a keyframe (to start, or to end its
    /// segment): the caller asks the caster for one, through the SFU's
    /// rate limit.
    pub fn wants_keyframe(&self) -> bool {
        self.renditions.iter().any(|r| {
            r.depacketizer.waiting_for_keyframe()
                || (self.audio_track.is_some() && r.audio != self.audio_track)
                || r.segmenter.as_ref().is_none_or(Segmenter::wants_keyframe)
        })
    }

    /// The rendition of a video packet's layer: by SSRC, else (a new
    /// caster) the one of the same rid, else a new one.
    fn rendition_of(&mut self, p: &TapPacket, epoch: Instant) -> Option<usize> {
        if let Some(i) = self.renditions.iter().position(|r| r.ssrc == p.ssrc) {
            return Some(i);
        }
        let name = p.rid.map_or_else(|| "main".to_string(), |r| r.to_string());
        if let Some(i) = self
            .renditions
            .iter()
            .position(|r| r.ssrc == 0 && r.name == name)
        {
            let r = &mut self.renditions[i];
            r.ssrc = p.ssrc;
            r.clock = Clock::new(VIDEO_TIMESCALE, p.arrival, epoch);
            return Some(i);
        }
        if self.renditions.len() == MAX_RENDITIONS {
            return None;
        }
        self.renditions
            .push(Rendition::new(name, p.ssrc, p.arrival, epoch));
        Some(self.renditions.len() - 1)
    }

    /// A new caster (the live's caster was replaced or came back): its
    /// timestamps start over. Each rendition waits for the new caster's
    /// keyframe on its layer, where the segmenter starts a discontinuity
    /// (its output timeline goes on without a jump).
    fn new_caster(&mut self, caster: PeerId, arrival: Instant) {
        if let Some(old) = self.caster.filter(|old| *old != caster) {
            if self.retired.len() == RETIRED {
                self.retired.remove(0);
            }
            self.retired.push(old);
        }
        self.caster = Some(caster);
        self.epoch = Some(arrival);
        self.audio = None;
        self.audio_track = None;
        self.rtmp = None;
        self.boundaries = Boundaries::default();
        for r in &mut self.renditions {
            r.depacketizer = H264Depacketizer::new();
            r.video = None;
            // Matched again by rid when the new caster's layer comes.
            r.ssrc = 0;
        }
    }
}

#[cfg(test)]
#[path = "feed_tests.rs"]
mod tests;
