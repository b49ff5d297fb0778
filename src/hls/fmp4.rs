//! Fragmented MP4 (ISO-BMFF) for HLS: an init segment (`ftyp` + `moov`) per
//! rendition and source, then one `moof` + `mdat` fragment per LL-HLS part.
//! The boxes come from `mp4-atom`; this file decides what goes in them.

use bytes::Bytes;
use mp4_atom::{
    Audio, Avc1, Avcc, AvccExt, Codec, Dinf, Dops, Dref, DrefEntry, Encode, Esds, FixedPoint, Ftyp,
    Hdlr, Mdhd, Mdia, Mfhd, Minf, Moof, Moov, Mp4a, Mvex, Mvhd, Opus, Smhd, Stbl, Stco, Stsd, Tfdt,
    Tfhd, Tkhd, Traf, Trak, Trex, Trun, TrunEntry, TrunSamples, Url, Visual, Vmhd, esds,
};

use super::sps::parse_sps;

/// H.264 RTP and MP4 clock: 90 kHz.
pub const VIDEO_TIMESCALE: u32 = 90_000;
/// Opus always runs at 48 kHz in MP4, whatever rate it was encoded from.
pub const OPUS_TIMESCALE: u32 = 48_000;

/// One track of a rendition, as the init segment describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackConfig {
    /// H.264 (`avc1` + `avcC`), 90 kHz. SPS and PPS are NAL units with their
    /// one-byte header and no length or start code.
    Video {
        sps: Vec<u8>,
        pps: Vec<u8>,
        width: u16,
        height: u16,
    },
    /// Opus (`Opus` + `dOps`, per the Opus-in-ISOBMFF spec), 48 kHz.
    Opus { channels: u8, pre_skip: u16 },
    /// AAC (`mp4a` + `esds`); the timescale is the sample rate.
    Aac {
        audio_specific_config: Vec<u8>,
        sample_rate: u32,
        channels: u16,
    },
}

impl TrackConfig {
    /// A video track from its parameter sets, the size read from the SPS.
    /// `None` if the SPS doesn't parse.
    pub fn video(sps: Vec<u8>, pps: Vec<u8>) -> Option<Self> {
        let info = parse_sps(&sps)?;
        Some(Self::Video {
            width: u16::try_from(info.width).ok()?,
            height: u16::try_from(info.height).ok()?,
            sps,
            pps,
        })
    }

    /// Ticks per second of the track's timestamps (`mdhd` timescale).
    pub fn timescale(&self) -> u32 {
        match self {
            Self::Video { .. } => VIDEO_TIMESCALE,
            Self::Opus { .. } => OPUS_TIMESCALE,
            Self::Aac { sample_rate, .. } => *sample_rate,
        }
    }

    /// True for the video track.
    pub fn is_video(&self) -> bool {
        matches!(self, Self::Video { .. })
    }
}

/// One sample's entry in a `trun`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleEntry {
    /// In the track's timescale.
    pub duration: u32,
    /// Bytes in `mdat`.
    pub size: u32,
    /// A sync sample (IDR; every audio sample is one).
    pub keyframe: bool,
    /// PTS - DTS in the track's timescale (0 without B-frames).
    pub composition_offset: i32,
}

/// One track's samples in a fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackRun {
    /// 1-based, in the order of the tracks given to [`init_segment`].
    pub track_id: u32,
    /// Decode time of the first sample, in the track's timescale.
    pub base_decode_time: u64,
    pub samples: Vec<SampleEntry>,
    /// The samples' bytes in order, in as many pieces as convenient (one
    /// per sample is typical): written back to back into `mdat`. Their total
    /// length must equal the sum of the samples' sizes.
    pub data: Vec<Bytes>,
}

/// Sample flags (ISO/IEC 14496-12 8.8.3.1): sync = depends on no other
/// sample; non-sync = depends on others and is_non_sync_sample set. Players
/// use them to find where decoding can start.
const SYNC_SAMPLE_FLAGS: u32 = 0x0200_0000;
const NON_SYNC_SAMPLE_FLAGS: u32 = 0x0101_0000;

/// `ftyp` + `moov` for these tracks (track ids 1, 2, ... in this order), with
/// `mvex`/`trex` announcing that samples come in fragments.
pub fn init_segment(tracks: &[TrackConfig]) -> Vec<u8> {
    let ftyp = Ftyp {
        // iso6: the brand that covers tfdt and default-base-is-moof.
        major_brand: b"iso6".into(),
        minor_version: 0,
        compatible_brands: vec![b"iso6".into(), b"mp41".into()],
    };
    let moov = Moov {
        mvhd: Mvhd {
            timescale: 1000,
            rate: 1u16.into(),
            volume: 1u8.into(),
            next_track_id: tracks.len() as u32 + 1,
            ..Default::default()
        },
        mvex: Some(Mvex {
            mehd: None,
            trex: (1..=tracks.len() as u32)
                .map(|track_id| Trex {
                    track_id,
                    default_sample_description_index: 1,
                    ..Default::default()
                })
                .collect(),
        }),
        trak: tracks
            .iter()
            .enumerate()
            .map(|(i, t)| trak(i as u32 + 1, t))
            .collect(),
        ..Default::default()
    };
    let mut out = Vec::with_capacity(1024);
    // Encoding into a Vec only fails on values we never build (e.g. a
    // length size of 0), so a failure here is a bug in this file.
    ftyp.encode(&mut out).expect("ftyp encodes");
    moov.encode(&mut out).expect("moov encodes");
    out
}

fn trak(track_id: u32, t: &TrackConfig) -> Trak {
    let video = t.is_video();
    let (width, height) = match t {
        TrackConfig::Video { width, height, .. } => (*width, *height),
        _ => (0, 0),
    };
    Trak {
        tkhd: Tkhd {
            track_id,
            enabled: true,
            in_movie: true,
            volume: if video { 0u8.into() } else { 1u8.into() },
            width: FixedPoint::from(width),
            height: FixedPoint::from(height),
            ..Default::default()
        },
        mdia: Mdia {
            mdhd: Mdhd {
                timescale: t.timescale(),
                language: "und".into(),
                ..Default::default()
            },
            hdlr: Hdlr {
                handler: if video { b"vide" } else { b"soun" }.into(),
                name: if video {
                    "VideoHandler"
                } else {
                    "SoundHandler"
                }
                .into(),
            },
            minf: Minf {
                vmhd: video.then(Vmhd::default),
                smhd: (!video).then(Smhd::default),
                dinf: Dinf {
                    dref: Dref {
                        // An empty url: the media is in this file.
                        entries: vec![DrefEntry::Url(Url::default())],
                    },
                },
                stbl: Stbl {
                    stsd: Stsd {
                        codecs: vec![sample_entry(t)],
                    },
                    // Empty tables: every sample is in a fragment.
                    stco: Some(Stco::default()),
                    ..Default::default()
                },
                ..Default::default()
            },
        },
        ..Default::default()
    }
}

fn sample_entry(t: &TrackConfig) -> Codec {
    match t {
        TrackConfig::Video {
            sps,
            pps,
            width,
            height,
        } => {
            let info = parse_sps(sps);
            // ISO/IEC 14496-15 5.3.3.1: High profiles (100 and up) carry
            // chroma format and bit depths after the parameter sets.
            let ext = info
                .filter(|i| !matches!(i.profile_idc, 66 | 77 | 88))
                .map(|i| AvccExt {
                    chroma_format: i.chroma_format_idc,
                    bit_depth_luma: i.bit_depth_luma,
                    bit_depth_chroma: i.bit_depth_chroma,
                    sequence_parameter_sets_ext: Vec::new(),
                });
            Avc1 {
                visual: Visual {
                    data_reference_index: 1,
                    width: *width,
                    height: *height,
                    ..Default::default()
                },
                avcc: Avcc {
                    configuration_version: 1,
                    avc_profile_indication: sps.get(1).copied().unwrap_or(0),
                    profile_compatibility: sps.get(2).copied().unwrap_or(0),
                    avc_level_indication: sps.get(3).copied().unwrap_or(0),
                    // We write 4-byte NAL unit lengths (see depacketize).
                    length_size: 4,
                    sequence_parameter_sets: vec![sps.clone()],
                    picture_parameter_sets: vec![pps.clone()],
                    ext,
                },
                btrt: None,
                colr: None,
                pasp: None,
                taic: None,
                fiel: None,
                spatial: None,
            }
            .into()
        }
        TrackConfig::Opus { channels, pre_skip } => Opus {
            audio: Audio {
                data_reference_index: 1,
                channel_count: u16::from(*channels),
                sample_size: 16,
                sample_rate: (OPUS_TIMESCALE as u16).into(),
            },
            dops: Dops {
                output_channel_count: *channels,
                pre_skip: *pre_skip,
                input_sample_rate: OPUS_TIMESCALE,
                output_gain: 0,
                // Family 0: mono or stereo, what WebRTC sends.
                channel_mapping: None,
            },
            btrt: None,
        }
        .into(),
        TrackConfig::Aac {
            audio_specific_config,
            sample_rate,
            channels,
        } => Mp4a {
            audio: Audio {
                data_reference_index: 1,
                channel_count: *channels,
                sample_size: 16,
                // 16.16 fixed point: rates past 65535 Hz are written as 0,
                // the timescale and the AudioSpecificConfig say the truth.
                sample_rate: u16::try_from(*sample_rate).unwrap_or(0).into(),
            },
            esds: Esds {
                es_desc: esds::EsDescriptor {
                    es_id: 0,
                    depends_on_es_id: None,
                    url: None,
                    ocr_es_id: None,
                    stream_priority: 0,
                    dec_config: esds::DecoderConfig {
                        object_type_indication: 0x40, // MPEG-4 audio
                        stream_type: 0x05,            // audio stream
                        up_stream: 0,
                        buffer_size_db: Default::default(),
                        max_bitrate: 0,
                        avg_bitrate: 0,
                        dec_specific: Some(esds::DecoderSpecific {
                            raw: audio_specific_config.clone(),
                            ..Default::default()
                        }),
                    },
                    sl_config: esds::SLConfig::default(),
                },
            },
            btrt: None,
            taic: None,
        }
        .into(),
    }
}

/// One fragment: `moof` (mfhd, then per run a traf with tfhd
/// default-base-is-moof, tfdt version 1 and a trun with a data offset) and
/// the `mdat` holding every run's data in order. `sequence_number` must grow
/// by one per fragment of the rendition.
///
/// Panics if a run's data length differs from the sum of its sample sizes
/// (the offsets would point at the wrong bytes: a bug in the caller).
pub fn fragment(sequence_number: u32, runs: &[TrackRun]) -> Vec<u8> {
    let data_len = |r: &TrackRun| r.data.iter().map(Bytes::len).sum::<usize>();
    for r in runs {
        let sizes: usize = r.samples.iter().map(|s| s.size as usize).sum();
        assert_eq!(
            sizes,
            data_len(r),
            "track {} data vs sample sizes",
            r.track_id
        );
    }
    let mut moof = Moof {
        mfhd: Mfhd { sequence_number },
        traf: runs.iter().map(traf).collect(),
    };
    // data_offset counts from the start of moof (default-base-is-moof) to
    // the run's first byte in mdat; the offsets' values don't change moof's
    // size, so encode once to measure, then fill them in.
    let mut out = Vec::new();
    moof.encode(&mut out).expect("moof encodes");
    let mdat_header = 8;
    let mut offset = out.len() + mdat_header;
    for (traf, run) in moof.traf.iter_mut().zip(runs) {
        traf.trun[0].data_offset = Some(i32::try_from(offset).expect("fragment under 2 GiB"));
        offset += data_len(run);
    }
    out.clear();
    moof.encode(&mut out).expect("moof encodes");
    let mdat_size = u32::try_from(mdat_header + runs.iter().map(data_len).sum::<usize>())
        .expect("fragment under 4 GiB");
    out.reserve(mdat_size as usize);
    out.extend_from_slice(&mdat_size.to_be_bytes());
    out.extend_from_slice(b"mdat");
    for r in runs {
        for d in &r.data {
            out.extend_from_slice(d);
        }
    }
    out
}

fn traf(run: &TrackRun) -> Traf {
    // Composition offsets only when some sample needs one (B-frames): four
    // bytes a sample saved otherwise.
    let with_cts = run.samples.iter().any(|s| s.composition_offset != 0);
    Traf {
        tfhd: Tfhd {
            track_id: run.track_id,
            default_base_is_moof: true,
            ..Default::default()
        },
        tfdt: Some(Tfdt {
            base_media_decode_time: run.base_decode_time,
        }),
        trun: vec![Trun {
            data_offset: Some(0),
            samples: TrunSamples::Explicit(
                run.samples
                    .iter()
                    .map(|s| TrunEntry {
                        duration: Some(s.duration),
                        size: Some(s.size),
                        flags: Some(if s.keyframe {
                            SYNC_SAMPLE_FLAGS
                        } else {
                            NON_SYNC_SAMPLE_FLAGS
                        }),
                        cts: with_cts.then_some(i64::from(s.composition_offset)),
                    })
                    .collect(),
            ),
        }],
        ..Default::default()
    }
}

/// The track's RFC 6381 name for an HLS `CODECS` attribute: `avc1.PPCCLL`
/// (profile, constraint flags, level from the SPS), `opus`, `mp4a.40.N`
/// (N the AAC object type, 2 for AAC-LC).
pub fn codec_string(t: &TrackConfig) -> String {
    match t {
        TrackConfig::Video { sps, .. } => {
            let b = |i: usize| sps.get(i).copied().unwrap_or(0);
            format!("avc1.{:02x}{:02x}{:02x}", b(1), b(2), b(3))
        }
        TrackConfig::Opus { .. } => "opus".into(),
        TrackConfig::Aac {
            audio_specific_config,
            ..
        } => {
            // The object type is the config's first 5 bits (31 escapes to
            // 32 + the next 6, for types past 30).
            let aot = match audio_specific_config.as_slice() {
                [a, b, ..] if a >> 3 == 31 => 32 + (((a & 7) << 3) | (b >> 5)),
                [a, ..] if a >> 3 != 0 => a >> 3,
                _ => 2,
            };
            format!("mp4a.40.{aot}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hls::testutil::{self, TempDir};
    use mp4_atom::{Decode, Ftyp, Moof, Moov};

    const SPS: &[u8] = &[
        0x67, 0x64, 0x00, 0x0d, 0xac, 0xb2, 0x02, 0x83, 0xf6, 0x02, 0x20, 0x00, 0x00, 0x03, 0x00,
        0x20, 0x00, 0x00, 0x07, 0x81, 0xe2, 0x85, 0x49,
    ];
    const PPS: &[u8] = &[0x68, 0xeb, 0xc3, 0xcb, 0x22, 0xc0];

    fn video() -> TrackConfig {
        TrackConfig::video(SPS.to_vec(), PPS.to_vec()).unwrap()
    }

    #[test]
    fn video_config_reads_its_size_from_the_sps() {
        let TrackConfig::Video { width, height, .. } = video() else {
            unreachable!()
        };
        assert_eq!((width, height), (320, 240));
        assert_eq!(TrackConfig::video(vec![0x67], PPS.to_vec()), None);
    }

    #[test]
    fn init_segment_decodes_back() {
        let tracks = [
            video(),
            TrackConfig::Opus {
                channels: 2,
                pre_skip: 312,
            },
            TrackConfig::Aac {
                audio_specific_config: vec![0x11, 0x88],
                sample_rate: 48000,
                channels: 1,
            },
        ];
        let init = init_segment(&tracks);
        let mut buf = init.as_slice();
        let ftyp = Ftyp::decode(&mut buf).unwrap();
        assert_eq!(ftyp.major_brand, b"iso6".into());
        let moov = Moov::decode(&mut buf).unwrap();
        assert!(buf.is_empty());
        assert_eq!(moov.mvhd.next_track_id, 4);
        let trex = &moov.mvex.as_ref().unwrap().trex;
        assert_eq!(
            trex.iter().map(|t| t.track_id).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        let scales: Vec<_> = moov.trak.iter().map(|t| t.mdia.mdhd.timescale).collect();
        assert_eq!(scales, [90_000, 48_000, 48_000]);
        let Codec::Avc1(avc1) = &moov.trak[0].mdia.minf.stbl.stsd.codecs[0] else {
            panic!("not avc1")
        };
        assert_eq!(avc1.avcc.sequence_parameter_sets, [SPS.to_vec()]);
        assert_eq!(avc1.avcc.picture_parameter_sets, [PPS.to_vec()]);
        assert_eq!((avc1.visual.width, avc1.visual.height), (320, 240));
        // High profile: the avcC extension is there.
        assert_eq!(avc1.avcc.ext.as_ref().unwrap().chroma_format, 1);
        let Codec::Opus(opus) = &moov.trak[1].mdia.minf.stbl.stsd.codecs[0] else {
            panic!("not Opus")
        };
        assert_eq!(
            (opus.dops.output_channel_count, opus.dops.pre_skip),
            (2, 312)
        );
        let Codec::Mp4a(mp4a) = &moov.trak[2].mdia.minf.stbl.stsd.codecs[0] else {
            panic!("not mp4a")
        };
        let dsi = mp4a.esds.es_desc.dec_config.dec_specific.as_ref().unwrap();
        assert_eq!(dsi.raw, [0x11, 0x88]);
    }

    #[test]
    fn fragment_offsets_point_at_each_runs_data() {
        let v = [
            Bytes::from_static(b"keyframe!"),
            Bytes::from_static(b"delta"),
        ];
        let a = Bytes::from_static(b"opus opus");
        let runs = [
            TrackRun {
                track_id: 1,
                base_decode_time: 90_000,
                samples: vec![
                    SampleEntry {
                        duration: 3000,
                        size: 9,
                        keyframe: true,
                        composition_offset: 0,
                    },
                    SampleEntry {
                        duration: 3000,
                        size: 5,
                        keyframe: false,
                        composition_offset: 0,
                    },
                ],
                data: v.to_vec(),
            },
            TrackRun {
                track_id: 2,
                base_decode_time: 48_000,
                samples: vec![SampleEntry {
                    duration: 960,
                    size: 9,
                    keyframe: true,
                    composition_offset: 0,
                }],
                data: vec![a.clone()],
            },
        ];
        let frag = fragment(7, &runs);
        let mut buf = frag.as_slice();
        let moof = Moof::decode(&mut buf).unwrap();
        assert_eq!(moof.mfhd.sequence_number, 7);
        assert_eq!(&buf[4..8], b"mdat");
        assert_eq!(
            u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize,
            buf.len()
        );
        let at = |traf: &Traf, len: usize| {
            let off = traf.trun[0].data_offset.unwrap() as usize;
            frag[off..off + len].to_vec()
        };
        assert_eq!(at(&moof.traf[0], 14), b"keyframe!delta");
        assert_eq!(at(&moof.traf[1], 9), b"opus opus");
        assert!(moof.traf[0].tfhd.default_base_is_moof);
        assert_eq!(
            moof.traf[1].tfdt.as_ref().unwrap().base_media_decode_time,
            48_000
        );
        let TrunSamples::Explicit(entries) = &moof.traf[0].trun[0].samples else {
            panic!("per-sample entries expected")
        };
        assert_eq!(entries[0].flags, Some(SYNC_SAMPLE_FLAGS));
        assert_eq!(entries[1].flags, Some(NON_SYNC_SAMPLE_FLAGS));
        assert_eq!(entries[1].cts, None);
    }

    #[test]
    #[should_panic(expected = "data vs sample sizes")]
    fn fragment_refuses_sizes_that_do_not_add_up() {
        fragment(
            1,
            &[TrackRun {
                track_id: 1,
                base_decode_time: 0,
                samples: vec![SampleEntry {
                    duration: 1,
                    size: 3,
                    keyframe: true,
                    composition_offset: 0,
                }],
                data: vec![Bytes::from_static(b"ab")],
            }],
        );
    }

    #[test]
    fn codec_strings() {
        assert_eq!(codec_string(&video()), "avc1.64000d");
        let opus = TrackConfig::Opus {
            channels: 2,
            pre_skip: 312,
        };
        assert_eq!(codec_string(&opus), "opus");
        let aac = |asc: Vec<u8>| TrackConfig::Aac {
            audio_specific_config: asc,
            sample_rate: 44100,
            channels: 2,
        };
        assert_eq!(codec_string(&aac(vec![0x12, 0x10])), "mp4a.40.2");
        assert_eq!(codec_string(&aac(vec![0x2b, 0x92, 0x08])), "mp4a.40.5");
        assert_eq!(codec_string(&aac(vec![])), "mp4a.40.2");
    }

    /// One track-1 run per 15 pictures of `aus` (half a second at 30 fps),
    /// each picture 1/`fps` long.
    fn video_runs(aus: &[testutil::TestAu], fps: u32) -> Vec<TrackRun> {
        let dur = VIDEO_TIMESCALE / fps;
        aus.chunks(15)
            .enumerate()
            .map(|(i, chunk)| TrackRun {
                track_id: 1,
                base_decode_time: (i * 15) as u64 * u64::from(dur),
                samples: chunk
                    .iter()
                    .map(|au| SampleEntry {
                        duration: dur,
                        size: au.avcc.len() as u32,
                        keyframe: au.keyframe,
                        composition_offset: 0,
                    })
                    .collect(),
                data: chunk.iter().map(|au| au.avcc.clone()).collect(),
            })
            .collect()
    }

    fn within(actual: f64, expected: f64, tolerance: f64) -> bool {
        (actual - expected).abs() <= expected * tolerance
    }

    #[test]
    fn ffprobe_reads_h264_fragments() {
        if !testutil::have_ffmpeg("ffprobe_reads_h264_fragments") {
            return;
        }
        let dir = TempDir::new("fmp4-video");
        let aus = testutil::x264_access_units(&dir.0, 2.0, 30, 30);
        assert_eq!(aus.len(), 60);
        let track =
            TrackConfig::video(aus[0].sps.clone().unwrap(), aus[0].pps.clone().unwrap()).unwrap();
        let mut file = init_segment(std::slice::from_ref(&track));
        for (i, run) in video_runs(&aus, 30).into_iter().enumerate() {
            file.extend(fragment(i as u32 + 1, &[run]));
        }
        let path = dir.0.join("out.mp4");
        std::fs::write(&path, &file).unwrap();
        let streams = testutil::ffprobe(&path);
        println!("ffprobe (video only): {streams:?}");
        assert_eq!(streams.len(), 1);
        let s = &streams[0];
        assert_eq!(s.codec, "h264");
        assert_eq!((s.width, s.height), (Some(320), Some(240)));
        assert_eq!(s.packets, 60);
        assert!(within(s.packet_span, 2.0, 0.02), "span {}", s.packet_span);
        assert!(
            within(s.duration.unwrap(), 2.0, 0.02),
            "duration {:?}",
            s.duration
        );
    }

    #[test]
    fn ffprobe_reads_h264_with_opus_and_aac() {
        if !testutil::have_ffmpeg("ffprobe_reads_h264_with_opus_and_aac") {
            return;
        }
        let dir = TempDir::new("fmp4-av");
        let aus = testutil::x264_access_units(&dir.0, 1.0, 30, 30);
        let (asc, aac) = testutil::adts_frames(testutil::AAC_48K_MONO);
        // Real Opus packets: the RTMP ingest's AAC -> Opus transcoder.
        let config = crate::rtmp::AacConfig {
            object_type: 2,
            sample_rate: 48000,
            channels: 1,
            raw: Bytes::from(asc.clone()),
        };
        let mut t = crate::rtmp::AacToOpus::new(&config, 64_000, 0).unwrap();
        let mut opus = Vec::new();
        for (i, f) in aac.iter().enumerate() {
            opus.extend(t.push(f, (i * 1024 * 1000 / 48000) as u32).unwrap());
        }
        assert!(opus.len() > 10);

        let tracks = [
            TrackConfig::video(aus[0].sps.clone().unwrap(), aus[0].pps.clone().unwrap()).unwrap(),
            TrackConfig::Opus {
                channels: 2,
                pre_skip: 312,
            },
            TrackConfig::Aac {
                audio_specific_config: asc,
                sample_rate: 48000,
                channels: 1,
            },
        ];
        let mut file = init_segment(&tracks);
        let audio_run = |track_id, frames: &[Bytes], dur: u32| TrackRun {
            track_id,
            base_decode_time: 0,
            samples: frames
                .iter()
                .map(|f| SampleEntry {
                    duration: dur,
                    size: f.len() as u32,
                    keyframe: true,
                    composition_offset: 0,
                })
                .collect(),
            data: frames.to_vec(),
        };
        let opus_frames: Vec<Bytes> = opus.iter().map(|f| f.payload.clone()).collect();
        let mut runs = video_runs(&aus, 30);
        // All audio in the first fragment, beside the first video run.
        let mut first = vec![runs.remove(0)];
        first.push(audio_run(2, &opus_frames, 960));
        first.push(audio_run(3, &aac, 1024));
        file.extend(fragment(1, &first));
        for (i, run) in runs.into_iter().enumerate() {
            file.extend(fragment(i as u32 + 2, &[run]));
        }
        let path = dir.0.join("out.mp4");
        std::fs::write(&path, &file).unwrap();
        let streams = testutil::ffprobe(&path);
        println!("ffprobe (video + opus + aac): {streams:?}");
        assert_eq!(streams.len(), 3);
        assert_eq!(streams[0].codec, "h264");
        assert!(within(streams[0].packet_span, 1.0, 0.02));
        assert!(within(streams[0].duration.unwrap(), 1.0, 0.02));
        assert_eq!(streams[1].codec, "opus");
        assert_eq!(
            (streams[1].sample_rate, streams[1].channels),
            (Some(48000), Some(2))
        );
        assert_eq!(streams[1].packets, opus.len());
        let opus_s = opus.len() as f64 * 0.02;
        assert!(within(streams[1].packet_span, opus_s, 0.02));
        assert!(within(streams[1].duration.unwrap(), opus_s, 0.02));
        assert_eq!(streams[2].codec, "aac");
        assert_eq!(
            (streams[2].sample_rate, streams[2].channels),
            (Some(48000), Some(1))
        );
        let aac_s = aac.len() as f64 * 1024.0 / 48000.0;
        assert!(within(streams[2].packet_span, aac_s, 0.02));
        assert!(within(streams[2].duration.unwrap(), aac_s, 0.02));
    }
}
