//! An RTMP publish's frames as they came in the FLV tags, for the live's
//! LL-HLS and recordings: the original AAC (not the Opus WebRTC viewers
//! get) and H.264 with its decode order and composition offsets (RTP only
//! carries presentation times, so B-frames cannot survive the SFU's tap).
//! Sans-IO: frames in, samples on the live's timeline out.
//!
//! Timing: RTMP gives audio and video one millisecond clock, so both
//! tracks stay on it (the encoder's own A/V sync), counted from the first
//! frame that reaches the muxer. Video DTS and composition offsets are
//! those milliseconds in 90 kHz ticks. Audio time is counted in AAC
//! samples (1024 a frame), not RTMP's rounded milliseconds (23 or 24 ms a
//! frame at 44.1 kHz); the milliseconds only tell gaps: past [`GAP_MS`] of
//! drift the audio timeline re-anchors on them, as the Opus transcoder
//! does (`rtmp::audio`).

use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

use super::fmp4::{TrackConfig, VIDEO_TIMESCALE};
use crate::rtmp::{AacConfig, AvcConfig};
use crate::sfu::PeerId;

/// Drift between RTMP time and counted audio samples that means a gap.
pub const GAP_MS: i64 = 100;
/// AAC samples per frame (per channel): AAC-LC and HE-AAC's core.
const AAC_FRAME: u64 = 1024;
/// Added to every time so that a track starting a little before the first
/// frame seen (B-frame DTS, audio ahead of video) stays positive. The
/// segmenter starts its output at 0 whatever the input's origin.
const ORIGIN_MS: i64 = 10_000;

const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
const NAL_AUD: u8 = 9;

/// One FLV tag's worth of media, as the RTMP ingest read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtmpFrame {
    /// AVC sequence header: the parameter sets and NAL length size of the
    /// frames that follow.
    VideoConfig(AvcConfig),
    /// One access unit: NAL units behind lengths of the config's size.
    Video {
        dts_ms: u32,
        composition_offset_ms: i32,
        data: Bytes,
    },
    /// AAC sequence header (AudioSpecificConfig).
    AudioConfig(AacConfig),
    /// One raw AAC frame.
    Audio { ts_ms: u32, data: Bytes },
}

/// A frame handed to a live's muxer by the RTMP session `caster`.
#[derive(Debug, Clone)]
pub struct RtmpInput {
    pub caster: PeerId,
    pub arrival: Instant,
    pub frame: RtmpFrame,
}

/// A sample for the live's renditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSample {
    Video {
        /// The track, on IDR pictures (with in-band parameter sets if the
        /// picture carried some): a change means a new init segment.
        config: Option<TrackConfig>,
        /// 90 kHz.
        dts: u64,
        composition_offset: i32,
        keyframe: bool,
        /// AVCC with 4-byte lengths, without SPS, PPS and delimiters.
        data: Bytes,
    },
    Audio {
        /// In the AAC sample rate.
        dts: u64,
        data: Bytes,
    },
}

#[derive(Debug)]
struct Audio {
    track: TrackConfig,
    rate: u32,
    /// Timeline ms and ticks of the last (re-)anchor, once a frame came.
    anchor: Option<(i64, u64)>,
    /// Samples since the anchor.
    samples: u64,
}

/// One RTMP publish's frames onto a timeline. See the module docs.
#[derive(Debug, Default)]
pub struct RtmpSource {
    /// Unwrapped ms of the last frame, and its RTMP ms.
    last: Option<(i64, u32)>,
    video: Option<AvcConfig>,
    /// In-band parameter sets seen last (they win over the header's).
    sps: Option<Bytes>,
    pps: Option<Bytes>,
    audio: Option<Audio>,
    audio_config: Option<AacConfig>,
}

impl RtmpSource {
    pub fn new() -> Self {
        Self::default()
    }

    /// The AAC track, once the sequence header came.
    pub fn audio_track(&self) -> Option<&TrackConfig> {
        self.audio.as_ref().map(|a| &a.track)
    }

    /// Takes one frame; returns its sample, if it is one and readable.
    pub fn push(&mut self, frame: &RtmpFrame) -> Option<SourceSample> {
        match frame {
            RtmpFrame::VideoConfig(c) => {
                self.video = Some(c.clone());
                self.sps = None;
                self.pps = None;
                None
            }
            RtmpFrame::AudioConfig(c) => {
                if self.audio_config.as_ref() == Some(c) {
                    return None; // repeated: the timeline goes on
                }
                self.audio_config = Some(c.clone());
                self.audio = Some(Audio {
                    track: TrackConfig::Aac {
                        audio_specific_config: c.raw.to_vec(),
                        sample_rate: c.sample_rate,
                        channels: u16::from(c.channels),
                    },
                    rate: c.sample_rate,
                    anchor: None,
                    samples: 0,
                });
                None
            }
            RtmpFrame::Video {
                dts_ms,
                composition_offset_ms,
                data,
            } => {
                let length_size = self.video.as_ref()?.nalu_length_size.bytes();
                let (avcc, idr) = self.avcc_of(data, length_size)?;
                let ms = self.ms(*dts_ms);
                let config = if idr {
                    let c = self.video.as_ref()?;
                    let sps = self.sps.as_ref().or(c.sps.first())?;
                    let pps = self.pps.as_ref().or(c.pps.first())?;
                    TrackConfig::video(sps.to_vec(), pps.to_vec())
                } else {
                    None
                };
                let ticks_per_ms = i64::from(VIDEO_TIMESCALE / 1000);
                Some(SourceSample::Video {
                    config,
                    dts: (ms * ticks_per_ms).max(0) as u64,
                    composition_offset: composition_offset_ms.saturating_mul(ticks_per_ms as i32),
                    keyframe: idr,
                    data: avcc,
                })
            }
            RtmpFrame::Audio { ts_ms, data } => {
                self.audio.as_ref()?;
                let ms = self.ms(*ts_ms);
                let a = self.audio.as_mut()?;
                let rate = i64::from(a.rate);
                // A gap (or the first frame): anchor on RTMP time, never
                // behind what was already counted. Time going back (an
                // encoder restart) keeps counting instead.
                let counted = a.anchor.map(|(m, t)| (m, t + a.samples));
                let gap =
                    counted.is_none_or(|(m, _)| ms - (m + a.samples as i64 * 1000 / rate) > GAP_MS);
                if gap {
                    let ticks = (ms.max(0) * rate / 1000) as u64;
                    a.anchor = Some((ms, ticks.max(counted.map_or(0, |(_, t)| t))));
                    a.samples = 0;
                }
                let (_, anchor_ticks) = a.anchor.expect("anchored above");
                let dts = anchor_ticks + a.samples;
                a.samples += AAC_FRAME;
                Some(SourceSample::Audio {
                    dts,
                    data: data.clone(),
                })
            }
        }
    }

    /// RTMP ms on the timeline: unwrapped (RTMP time wraps after 49 days),
    /// from the first frame seen, plus [`ORIGIN_MS`].
    fn ms(&mut self, ts: u32) -> i64 {
        let ext = match self.last {
            None => ORIGIN_MS,
            Some((ext, prev)) => ext + i64::from(ts.wrapping_sub(prev) as i32),
        };
        self.last = Some((ext, ts));
        ext
    }

    /// The frame's NAL units with 4-byte lengths (what the init segment
    /// says), parameter sets kept aside and delimiters dropped; and whether
    /// it holds an IDR slice. `None` if the lengths don't add up.
    fn avcc_of(&mut self, data: &[u8], length_size: usize) -> Option<(Bytes, bool)> {
        let mut out = BytesMut::with_capacity(data.len() + 16);
        let mut rest = data;
        let mut idr = false;
        let (mut sps, mut pps) = (None, None);
        while !rest.is_empty() {
            let len = rest
                .get(..length_size)?
                .iter()
                .fold(0usize, |n, b| (n << 8) | usize::from(*b));
            let nal = rest.get(length_size..length_size + len)?;
            rest = &rest[length_size + len..];
            let Some(&head) = nal.first() else { continue };
            match head & 0x1f {
                NAL_SPS => sps = Some(Bytes::copy_from_slice(nal)),
                NAL_PPS => pps = Some(Bytes::copy_from_slice(nal)),
                NAL_AUD => {}
                t => {
                    idr |= t == NAL_IDR;
                    out.put_u32(len as u32);
                    out.put_slice(nal);
                }
            }
        }
        if out.is_empty() {
            return None;
        }
        if let (Some(s), Some(p)) = (sps, pps) {
            self.sps = Some(s);
            self.pps = Some(p);
        }
        Some((out.freeze(), idr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hls::testutil::{PPS, SPS_320X240};
    use crate::rtmp::NaluLengthSize;

    fn avc(length: NaluLengthSize) -> AvcConfig {
        AvcConfig {
            profile: 0x64,
            profile_compat: 0,
            level: 0x0d,
            nalu_length_size: length,
            sps: vec![Bytes::from_static(SPS_320X240)],
            pps: vec![Bytes::from_static(PPS)],
        }
    }

    fn aac(rate: u32) -> AacConfig {
        let index = [96000, 88200, 64000, 48000, 44100]
            .iter()
            .position(|r| *r == rate)
            .unwrap() as u8;
        AacConfig {
            object_type: 2,
            sample_rate: rate,
            channels: 2,
            raw: Bytes::from(vec![0x10 | (index >> 1), ((index & 1) << 7) | 0x10]),
        }
    }

    /// NAL units behind `size`-byte lengths.
    fn nals(size: usize, units: &[&[u8]]) -> Bytes {
        let mut v = Vec::new();
        for u in units {
            v.extend_from_slice(&(u.len() as u32).to_be_bytes()[4 - size..]);
            v.extend_from_slice(u);
        }
        Bytes::from(v)
    }

    fn video(s: &mut RtmpSource, dts_ms: u32, cts: i32, units: &[&[u8]]) -> SourceSample {
        s.push(&RtmpFrame::Video {
            dts_ms,
            composition_offset_ms: cts,
            data: nals(4, units),
        })
        .unwrap()
    }

    #[test]
    fn bframes_keep_decode_order_and_composition_offsets() {
        let mut s = RtmpSource::new();
        assert_eq!(
            s.push(&RtmpFrame::VideoConfig(avc(NaluLengthSize::Four))),
            None
        );
        // I P B B as x264 -bf 2 sends them: DTS steps 33 ms, PTS reordered.
        let frames: [(u32, i32, &[u8]); 4] = [
            (0, 66, &[0x65, 1]),
            (33, 100, &[0x41, 2]),
            (66, 0, &[0x01, 3]),
            (100, 0, &[0x01, 4]),
        ];
        let mut last = None;
        for (i, (dts, cts, nal)) in frames.into_iter().enumerate() {
            let SourceSample::Video {
                config,
                dts: d,
                composition_offset,
                keyframe,
                data,
            } = video(&mut s, dts, cts, &[&[0x09, 0xf0], nal])
            else {
                panic!("video")
            };
            assert_eq!(keyframe, i == 0);
            assert_eq!(config.is_some(), i == 0);
            assert_eq!(d, (10_000 + u64::from(dts)) * 90);
            assert_eq!(composition_offset, cts * 90);
            assert!(last.is_none_or(|l| d > l), "DTS monotonic");
            last = Some(d);
            // The delimiter is gone, the lengths are 4 bytes.
            assert_eq!(data, nals(4, &[nal]));
        }
    }

    #[test]
    fn short_lengths_become_four_bytes_and_in_band_parameter_sets_win() {
        let mut s = RtmpSource::new();
        s.push(&RtmpFrame::VideoConfig(avc(NaluLengthSize::Two)));
        let mut sps = SPS_320X240.to_vec();
        sps.push(0); // a different SPS (same picture)
        let SourceSample::Video { config, data, .. } = s
            .push(&RtmpFrame::Video {
                dts_ms: 0,
                composition_offset_ms: 0,
                data: nals(2, &[&sps, PPS, &[0x65, 9, 9]]),
            })
            .unwrap()
        else {
            panic!("video")
        };
        let Some(TrackConfig::Video { sps: got, .. }) = config else {
            panic!("a config")
        };
        assert_eq!(got, sps);
        assert_eq!(data, nals(4, &[&[0x65, 9, 9]]));
        // Broken lengths: nothing.
        let broken = RtmpFrame::Video {
            dts_ms: 33,
            composition_offset_ms: 0,
            data: Bytes::from_static(&[0, 9, 0x41]),
        };
        assert_eq!(s.push(&broken), None);
    }

    #[test]
    fn video_before_its_header_is_skipped() {
        let mut s = RtmpSource::new();
        let f = RtmpFrame::Video {
            dts_ms: 0,
            composition_offset_ms: 0,
            data: nals(4, &[&[0x65, 1]]),
        };
        assert_eq!(s.push(&f), None);
    }

    fn audio_dts(s: &mut RtmpSource, ts_ms: u32) -> u64 {
        match s.push(&RtmpFrame::Audio {
            ts_ms,
            data: Bytes::from_static(b"aac"),
        }) {
            Some(SourceSample::Audio { dts, .. }) => dts,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn audio_counts_samples_not_rounded_milliseconds_and_re_anchors_on_gaps() {
        let mut s = RtmpSource::new();
        s.push(&RtmpFrame::AudioConfig(aac(44100)));
        assert!(matches!(
            s.audio_track(),
            Some(TrackConfig::Aac {
                sample_rate: 44100,
                ..
            })
        ));
        let base = 10_000 * 44100 / 1000;
        // 43 frames at 23.22 ms, sent as whole ms.
        for i in 0..43u64 {
            let ms = (i * 1024 * 1000 / 44100) as u32;
            assert_eq!(audio_dts(&mut s, ms), base + i * 1024);
        }
        // A repeated header changes nothing.
        s.push(&RtmpFrame::AudioConfig(aac(44100)));
        assert_eq!(audio_dts(&mut s, 998), base + 43 * 1024);
        // Half a second missing: the next frame is placed by RTMP time.
        let dts = audio_dts(&mut s, 1500);
        assert_eq!(dts, (10_000 + 1500) * 44100 / 1000);
        assert_eq!(audio_dts(&mut s, 1523), dts + 1024);
        // Time going back a little: counting goes on (monotonic).
        assert_eq!(audio_dts(&mut s, 1200), dts + 2048);
    }

    #[test]
    fn one_clock_for_both_tracks_and_it_unwraps() {
        let mut s = RtmpSource::new();
        s.push(&RtmpFrame::VideoConfig(avc(NaluLengthSize::Four)));
        s.push(&RtmpFrame::AudioConfig(aac(48000)));
        let start = u32::MAX - 10;
        let SourceSample::Video { dts: v0, .. } = video(&mut s, start, 0, &[&[0x65, 1]]) else {
            panic!()
        };
        // Audio 20 ms later, across the wrap.
        let a0 = audio_dts(&mut s, start.wrapping_add(20));
        assert_eq!(a0 * 90_000 / 48_000, v0 + 20 * 90);
        let SourceSample::Video { dts: v1, .. } =
            video(&mut s, start.wrapping_add(33), 0, &[&[0x41, 1]])
        else {
            panic!()
        };
        assert_eq!(v1, v0 + 33 * 90);
    }
}
