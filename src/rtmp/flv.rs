//! FLV tag bodies as RTMP carries them (message types 8 and 9): which codec,
//! which packet kind, and the codec configuration records.
//!
//! Only what the WebRTC side can use is parsed: H.264 video (legacy codec id
//! 7, or Enhanced RTMP FourCC `avc1`) and AAC audio. Everything else is a
//! typed [`FlvError`] whose message tells the streamer what to change; the
//! caller logs it once per stream, not once per frame.

use bytes::Bytes;

/// Why a tag body was not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlvError {
    #[error("FLV {what} is truncated ({len} bytes); the encoder sent a broken tag")]
    Truncated { what: &'static str, len: usize },
    #[error("video codec id {0} is not supported; set the encoder to H.264 (x264, NVENC, QSV...)")]
    UnsupportedVideoCodec(u8),
    #[error("Enhanced RTMP video codec {0:?} is not supported; set the encoder to H.264 (avc1)")]
    UnsupportedFourCc(String),
    #[error("Enhanced RTMP video packet type {0} is not supported (only single-track H.264)")]
    UnsupportedVideoPacketType(u8),
    #[error("audio format {0} is not supported; set the encoder's audio to AAC")]
    UnsupportedAudioFormat(u8),
    #[error("AAC packet type {0} is unknown")]
    UnknownAacPacketType(u8),
    #[error("AVC packet type {0} is unknown")]
    UnknownAvcPacketType(u8),
    #[error("invalid AVCDecoderConfigurationRecord: {0}")]
    BadAvcConfig(&'static str),
    #[error("invalid AudioSpecificConfig: {0}")]
    BadAudioConfig(&'static str),
}

/// Size of the big-endian length in front of each NAL unit (AVCC framing),
/// from `lengthSizeMinusOne`. 3 bytes is not allowed by ISO 14496-15.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NaluLengthSize {
    One = 1,
    Two = 2,
    Four = 4,
}

impl NaluLengthSize {
    pub fn bytes(self) -> usize {
        self as usize
    }
}

/// AVCDecoderConfigurationRecord (ISO 14496-15 5.2.4.1): what a decoder
/// needs before the first frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvcConfig {
    pub profile: u8,
    pub profile_compat: u8,
    pub level: u8,
    pub nalu_length_size: NaluLengthSize,
    /// SPS NAL units, without any length prefix.
    pub sps: Vec<Bytes>,
    /// PPS NAL units, without any length prefix.
    pub pps: Vec<Bytes>,
}

/// One parsed video tag body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoTag {
    /// Sequence header: replaces the decoder configuration.
    AvcConfig(AvcConfig),
    /// One access unit of length-prefixed NAL units.
    AvcFrames {
        keyframe: bool,
        /// pts - dts in ms (signed 24 bit on the wire); non-zero means
        /// B-frames (reordering), which WebRTC players handle badly.
        composition_offset_ms: i32,
        /// AVCC: NAL units each prefixed by `nalu_length_size` bytes.
        data: Bytes,
    },
    AvcEndOfSequence,
    /// Frame type 5 (video info / command frame): carries no picture.
    Command,
}

const AVC_CODEC_ID: u8 = 7;
const ENHANCED_FLAG: u8 = 0x80;

/// Parses a video message body (FLV VIDEODATA, legacy or Enhanced RTMP).
pub fn parse_video(body: &Bytes) -> Result<VideoTag, FlvError> {
    let first = *body.first().ok_or(FlvError::Truncated {
        what: "video tag",
        len: 0,
    })?;
    if first & ENHANCED_FLAG != 0 {
        return parse_enhanced_video(body, first);
    }
    let frame_type = first >> 4;
    let codec_id = first & 0x0f;
    if frame_type == 5 {
        return Ok(VideoTag::Command);
    }
    if codec_id != AVC_CODEC_ID {
        return Err(FlvError::UnsupportedVideoCodec(codec_id));
    }
    let head = body.get(..5).ok_or(FlvError::Truncated {
        what: "AVC video tag",
        len: body.len(),
    })?;
    let keyframe = frame_type == 1;
    match head[1] {
        0 => Ok(VideoTag::AvcConfig(parse_avc_config(&body.slice(5..))?)),
        1 => Ok(VideoTag::AvcFrames {
            keyframe,
            composition_offset_ms: i24(head[2], head[3], head[4]),
            data: body.slice(5..),
        }),
        2 => Ok(VideoTag::AvcEndOfSequence),
        other => Err(FlvError::UnknownAvcPacketType(other)),
    }
}

/// Enhanced RTMP (veovera spec v1/v2): `1 | frameType(3) | packetType(4)`,
/// then a FourCC. Only `avc1` maps to what we forward.
fn parse_enhanced_video(body: &Bytes, first: u8) -> Result<VideoTag, FlvError> {
    let frame_type = (first >> 4) & 0x07;
    let packet_type = first & 0x0f;
    if frame_type == 5 && packet_type != 4 {
        // A command frame has no FourCC-specific payload worth reading.
        return Ok(VideoTag::Command);
    }
    let fourcc = body.get(1..5).ok_or(FlvError::Truncated {
        what: "Enhanced RTMP video tag",
        len: body.len(),
    })?;
    if fourcc != b"avc1" {
        return Err(FlvError::UnsupportedFourCc(
            String::from_utf8_lossy(fourcc).into_owned(),
        ));
    }
    let keyframe = frame_type == 1;
    match packet_type {
        // SequenceStart
        0 => Ok(VideoTag::AvcConfig(parse_avc_config(&body.slice(5..))?)),
        // CodedFrames: with a composition time offset
        1 => {
            let cto = body.get(5..8).ok_or(FlvError::Truncated {
                what: "Enhanced RTMP coded frames",
                len: body.len(),
            })?;
            Ok(VideoTag::AvcFrames {
                keyframe,
                composition_offset_ms: i24(cto[0], cto[1], cto[2]),
                data: body.slice(8..),
            })
        }
        // SequenceEnd
        2 => Ok(VideoTag::AvcEndOfSequence),
        // CodedFramesX: offset implied zero
        3 => Ok(VideoTag::AvcFrames {
            keyframe,
            composition_offset_ms: 0,
            data: body.slice(5..),
        }),
        other => Err(FlvError::UnsupportedVideoPacketType(other)),
    }
}

fn i24(a: u8, b: u8, c: u8) -> i32 {
    // Sign-extend by placing the 24 bits at the top of an i32 and shifting back.
    i32::from_be_bytes([a, b, c, 0]) >> 8
}

/// Parses an AVCDecoderConfigurationRecord.
pub fn parse_avc_config(rec: &Bytes) -> Result<AvcConfig, FlvError> {
    let head = rec
        .get(..6)
        .ok_or(FlvError::BadAvcConfig("shorter than its 6-byte header"))?;
    if head[0] != 1 {
        return Err(FlvError::BadAvcConfig("configurationVersion is not 1"));
    }
    let nalu_length_size = match head[4] & 0x03 {
        0 => NaluLengthSize::One,
        1 => NaluLengthSize::Two,
        3 => NaluLengthSize::Four,
        _ => return Err(FlvError::BadAvcConfig("NAL unit length size of 3 bytes")),
    };
    let mut pos = 6;
    let sps_count = usize::from(head[5] & 0x1f);
    let sps = read_param_sets(rec, &mut pos, sps_count)?;
    let pps_count = usize::from(*rec.get(pos).ok_or(FlvError::BadAvcConfig("no PPS count"))?);
    pos += 1;
    let pps = read_param_sets(rec, &mut pos, pps_count)?;
    if sps.is_empty() || pps.is_empty() {
        return Err(FlvError::BadAvcConfig("no SPS or no PPS"));
    }
    Ok(AvcConfig {
        profile: head[1],
        profile_compat: head[2],
        level: head[3],
        nalu_length_size,
        sps,
        pps,
    })
}

fn read_param_sets(rec: &Bytes, pos: &mut usize, count: usize) -> Result<Vec<Bytes>, FlvError> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let len_bytes = rec
            .get(*pos..pos.saturating_add(2))
            .ok_or(FlvError::BadAvcConfig("parameter set length cut off"))?;
        let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
        let start = *pos + 2;
        let end = start + len;
        if len == 0 || end > rec.len() {
            return Err(FlvError::BadAvcConfig("parameter set empty or cut off"));
        }
        out.push(rec.slice(start..end));
        *pos = end;
    }
    Ok(out)
}

/// AudioSpecificConfig (ISO 14496-3 1.6.2.1), the fields we act on plus
/// the raw bytes, which the AAC decoder takes as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AacConfig {
    /// Audio object type: 2 is AAC-LC; 5 (SBR) and 29 (PS) are HE-AAC.
    pub object_type: u8,
    pub sample_rate: u32,
    /// Channel configuration: 1 mono, 2 stereo; 0 means "in a PCE".
    pub channels: u8,
    pub raw: Bytes,
}

/// One parsed audio tag body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioTag {
    AacConfig(AacConfig),
    /// One raw AAC frame (1024 samples per channel for AAC-LC).
    AacFrame(Bytes),
}

const AAC_SOUND_FORMAT: u8 = 10;

/// Parses an audio message body (FLV AUDIODATA).
pub fn parse_audio(body: &Bytes) -> Result<AudioTag, FlvError> {
    let first = *body.first().ok_or(FlvError::Truncated {
        what: "audio tag",
        len: 0,
    })?;
    let format = first >> 4;
    if format != AAC_SOUND_FORMAT {
        return Err(FlvError::UnsupportedAudioFormat(format));
    }
    let packet_type = *body.get(1).ok_or(FlvError::Truncated {
        what: "AAC audio tag",
        len: body.len(),
    })?;
    match packet_type {
        0 => Ok(AudioTag::AacConfig(parse_aac_config(&body.slice(2..))?)),
        1 => Ok(AudioTag::AacFrame(body.slice(2..))),
        other => Err(FlvError::UnknownAacPacketType(other)),
    }
}

const AAC_SAMPLE_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

/// Parses an AudioSpecificConfig.
pub fn parse_aac_config(raw: &Bytes) -> Result<AacConfig, FlvError> {
    let mut bits = BitReader::new(raw);
    let short = FlvError::BadAudioConfig("shorter than its fields");
    let mut object_type = bits.read(5).ok_or(short.clone())?;
    if object_type == 31 {
        object_type = 32 + bits.read(6).ok_or(short.clone())?;
    }
    let freq_index = bits.read(4).ok_or(short.clone())?;
    let sample_rate = if freq_index == 15 {
        bits.read(24).ok_or(short.clone())?
    } else {
        *AAC_SAMPLE_RATES
            .get(freq_index as usize)
            .ok_or(FlvError::BadAudioConfig(
                "reserved sampling frequency index",
            ))?
    };
    if sample_rate == 0 {
        return Err(FlvError::BadAudioConfig("sample rate 0"));
    }
    let channels = bits.read(4).ok_or(short)?;
    Ok(AacConfig {
        object_type: u8::try_from(object_type).unwrap_or(u8::MAX),
        sample_rate,
        channels: u8::try_from(channels).unwrap_or(u8::MAX),
        raw: raw.clone(),
    })
}

/// MSB-first bit reader over a byte slice; `None` past the end.
struct BitReader<'a> {
    data: &'a [u8],
    bit: usize,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, bit: 0 }
    }

    fn read(&mut self, n: u32) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            let byte = *self.data.get(self.bit / 8)?;
            let b = (byte >> (7 - (self.bit % 8))) & 1;
            v = (v << 1) | u32::from(b);
            self.bit += 1;
        }
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn avc_record() -> Vec<u8> {
        let sps = [0x67, 0x42, 0xc0, 0x1e, 0xd9];
        let pps = [0x68, 0xce, 0x3c, 0x80];
        let mut r = vec![1, 0x42, 0xc0, 0x1e, 0xff, 0xe1, 0, sps.len() as u8];
        r.extend_from_slice(&sps);
        r.extend_from_slice(&[1, 0, pps.len() as u8]);
        r.extend_from_slice(&pps);
        r
    }

    #[test]
    fn avc_sequence_header() {
        let mut body = vec![0x17, 0, 0, 0, 0];
        body.extend(avc_record());
        let VideoTag::AvcConfig(c) = parse_video(&Bytes::from(body)).unwrap() else {
            panic!("not a config")
        };
        assert_eq!(c.nalu_length_size, NaluLengthSize::Four);
        assert_eq!(c.sps[0][0], 0x67);
        assert_eq!(c.pps[0][0], 0x68);
        assert_eq!((c.profile, c.level), (0x42, 0x1e));
    }

    #[test]
    fn avc_frames_with_negative_composition_offset() {
        let body = Bytes::from_static(&[0x27, 1, 0xff, 0xff, 0xfe, 0, 0, 0, 1, 0x41]);
        assert_eq!(
            parse_video(&body).unwrap(),
            VideoTag::AvcFrames {
                keyframe: false,
                composition_offset_ms: -2,
                data: body.slice(5..)
            }
        );
        let body = Bytes::from_static(&[0x17, 1, 0, 0, 66, 0, 0, 0, 1, 0x65]);
        let VideoTag::AvcFrames {
            keyframe,
            composition_offset_ms,
            ..
        } = parse_video(&body).unwrap()
        else {
            panic!()
        };
        assert!(keyframe);
        assert_eq!(composition_offset_ms, 66);
    }

    #[test]
    fn enhanced_avc1_and_unsupported_fourcc() {
        let mut body = vec![0x90, b'a', b'v', b'c', b'1'];
        body.extend(avc_record());
        assert!(matches!(
            parse_video(&Bytes::from(body)),
            Ok(VideoTag::AvcConfig(_))
        ));
        let body = Bytes::from_static(&[0x93, b'a', b'v', b'c', b'1', 0, 0, 0, 1, 0x65]);
        assert!(matches!(
            parse_video(&body),
            Ok(VideoTag::AvcFrames {
                keyframe: true,
                composition_offset_ms: 0,
                ..
            })
        ));
        let body = Bytes::from_static(&[0x90, b'h', b'v', b'c', b'1', 1, 2, 3]);
        assert_eq!(
            parse_video(&body),
            Err(FlvError::UnsupportedFourCc("hvc1".into()))
        );
    }

    #[test]
    fn other_codecs_are_typed_errors() {
        // Sorenson H.263 (codec id 2), VP6 (4).
        assert_eq!(
            parse_video(&Bytes::from_static(&[0x12, 0])),
            Err(FlvError::UnsupportedVideoCodec(2))
        );
        // MP3 audio (format 2).
        assert_eq!(
            parse_audio(&Bytes::from_static(&[0x2f, 0])),
            Err(FlvError::UnsupportedAudioFormat(2))
        );
        assert!(parse_video(&Bytes::new()).is_err());
        assert!(parse_audio(&Bytes::new()).is_err());
    }

    #[test]
    fn aac_config_and_frame() {
        // AAC-LC, 44.1 kHz (index 4), stereo: 00010 0100 0010 000
        let body = Bytes::from_static(&[0xaf, 0, 0x12, 0x10]);
        let AudioTag::AacConfig(c) = parse_audio(&body).unwrap() else {
            panic!()
        };
        assert_eq!((c.object_type, c.sample_rate, c.channels), (2, 44100, 2));
        // 48 kHz (index 3), mono: 00010 0011 0001 000
        let c = parse_aac_config(&Bytes::from_static(&[0x11, 0x88])).unwrap();
        assert_eq!((c.sample_rate, c.channels), (48000, 1));
        let body = Bytes::from_static(&[0xaf, 1, 0x21, 0x00]);
        assert_eq!(
            parse_audio(&body).unwrap(),
            AudioTag::AacFrame(body.slice(2..))
        );
    }

    #[test]
    fn truncated_and_absurd_records_do_not_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let len = rng.random_range(0..40);
            let mut v: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if let Some(b) = v.first_mut() {
                // Bias toward the paths that parse further.
                *b = [0x17, 0x27, 0x90, 0x91, 0xaf, *b][rng.random_range(0..6)];
            }
            let b = Bytes::from(v);
            let _ = parse_video(&b);
            let _ = parse_audio(&b);
            let _ = parse_avc_config(&b);
            let _ = parse_aac_config(&b);
        }
    }
}
