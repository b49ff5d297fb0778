//! AAC-LC (what RTMP encoders send) to Opus (what WebRTC browsers play):
//! decode, up-mix to stereo, resample to 48 kHz, encode 20 ms frames.
//!
//! Crates, all pure Rust so `cargo build` needs nothing but rustc:
//! - `symphonia-codec-aac` 0.6.1: AAC-LC decoder (HE-AAC, i.e. SBR/PS, is
//!   refused with a message: OBS and FFmpeg default to LC).
//! - `rubato` 5.1.0 `Fft`: fixed-ratio resampler (44.1 -> 48 kHz is 147:160),
//!   fed one AAC frame (1024 samples) at a time.
//! - `mousiki` 0.2.1: a Rust port of libopus's encoder (the same CELT/SILK
//!   code, no C). Chosen over `opus-rs` 0.1.40 (its own encoder, 32 dB on a
//!   tone test vs libopus's 44 dB) and over the libopus bindings
//!   (`opus`/`audiopus_sys`/`opus-static-sys`/`libopus_sys` all build
//!   libopus with cmake, which a fresh machine doesn't have). Measured
//!   against ffmpeg's libopus in BENCHMARKS.md ("RTMP ingest"): 1.6 dB (speech)
//!   to 3.7 dB (music) below libopus at 128 kbit/s, decoded by ffmpeg.
//!   Only its encoder is used: its *decoder* scores far lower (~12 dB on
//!   the same packets), so the tests use it for coarse checks only.
//!
//! Timestamps: Opus RTP time is 48 kHz samples counted from `rtp_ts_base`
//! (which the caller anchors to the wall clock, as it does video), not RTMP
//! milliseconds (RTMP ms are rounded: 1024/44.1 = 23.22 ms per AAC frame is
//! sent as 23 or 24). RTMP time is only used to notice gaps: when it drifts
//! more than [`GAP_MS`] from the samples decoded, the timeline re-anchors
//! and the RTP time jumps forward by the gap.

use audioadapter_buffers::direct::InterleavedSlice;
use bytes::Bytes;
use mousiki::{Application, Bitrate, Channels, Encoder};
use rubato::{Fft, FixedSync, Resampler};
use symphonia_codec_aac::AacDecoder;
use symphonia_core::codecs::audio::well_known::CODEC_ID_AAC;
use symphonia_core::codecs::audio::{AudioCodecParameters, AudioDecoder, AudioDecoderOptions};
use symphonia_core::packet::PacketRef;
use symphonia_core::units::{Duration as SymDuration, Timestamp};

use super::flv::AacConfig;

/// Opus clock and the only rate we encode at.
pub const OPUS_RATE: u32 = 48_000;
/// 20 ms at 48 kHz: the frame size WebRTC expects (`ptime` 20).
pub const FRAME_SAMPLES: usize = 960;
/// A jump between RTMP time and decoded samples larger than this is a gap.
pub const GAP_MS: i64 = 100;
/// Default Opus bitrate: transparent for stereo music at 20 ms frames.
pub const DEFAULT_BITRATE: u32 = 128_000;
/// Largest Opus packet (RFC 6716 3.2.1: 1275 bytes per frame).
const MAX_OPUS_PACKET: usize = 1276;
/// AAC-LC frame length in samples per channel.
const AAC_FRAME: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AudioError {
    #[error(
        "AAC object type {0} is not supported; set the encoder's AAC profile to LC \
         (not HE-AAC/HE-AACv2)"
    )]
    UnsupportedProfile(u8),
    #[error("{0} audio channels are not supported; set the encoder to mono or stereo")]
    UnsupportedChannels(u8),
    #[error("AAC decoder refused the stream: {0}")]
    DecoderInit(String),
    #[error("AAC frame did not decode: {0}")]
    Decode(String),
    #[error("resampler {0}")]
    Resample(String),
    #[error("Opus encoder: {0}")]
    Encode(String),
}

/// One encoded 20 ms Opus frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpusFrame {
    pub payload: Bytes,
    /// 48 kHz RTP timestamp of the frame's first sample.
    pub rtp_ts: u32,
}

/// The AAC -> Opus pipeline of one stream.
pub struct AacToOpus {
    decoder: AacDecoder,
    in_rate: u32,
    resampler: Option<Fft<f32>>,
    /// Resampler start-up delay still to drop (48 kHz frames).
    drop_frames: usize,
    encoder: Encoder,
    /// 48 kHz stereo interleaved samples waiting for a full frame.
    fifo: Vec<f32>,
    /// RTP timestamp of the first sample in `fifo`.
    fifo_ts: u32,
    /// RTMP ms of the first frame since the last (re-)anchor, and the input
    /// frames decoded since.
    anchor_ms: Option<u32>,
    frames_since_anchor: u64,
    /// Scratch buffers reused across calls.
    pcm: Vec<f32>,
    stereo: Vec<f32>,
    resampled: Vec<f32>,
    packet: Vec<u8>,
}

impl AacToOpus {
    /// `bitrate` in bit/s (e.g. [`DEFAULT_BITRATE`]).
    pub fn new(config: &AacConfig, bitrate: u32, rtp_ts_base: u32) -> Result<Self, AudioError> {
        // 2 = AAC-LC. 5 (SBR) and 29 (PS) are HE-AAC, which symphonia
        // would decode as LC at half rate: refuse instead of sounding wrong.
        if config.object_type != 2 {
            return Err(AudioError::UnsupportedProfile(config.object_type));
        }
        if !(1..=2).contains(&config.channels) {
            return Err(AudioError::UnsupportedChannels(config.channels));
        }
        let mut params = AudioCodecParameters::new();
        params
            .for_codec(CODEC_ID_AAC)
            .with_sample_rate(config.sample_rate)
            .with_extra_data(config.raw.to_vec().into_boxed_slice());
        let decoder = AacDecoder::try_new(&params, &AudioDecoderOptions::default())
            .map_err(|e| AudioError::DecoderInit(e.to_string()))?;

        let in_rate = config.sample_rate;
        let (resampler, drop_frames) = if in_rate == OPUS_RATE {
            (None, 0)
        } else {
            let r = Fft::<f32>::new(
                in_rate as usize,
                OPUS_RATE as usize,
                AAC_FRAME,
                2,
                FixedSync::Input,
            )
            .map_err(|e| AudioError::Resample(format!("for {in_rate} Hz: {e}")))?;
            let delay = r.output_delay();
            (Some(r), delay)
        };

        let encoder = Encoder::builder(OPUS_RATE, Channels::Stereo, Application::Audio)
            .bitrate(Bitrate::Bits(i32::try_from(bitrate).unwrap_or(i32::MAX)))
            .build()
            .map_err(|e| AudioError::Encode(format!("{e:?}")))?;

        Ok(Self {
            decoder,
            in_rate,
            resampler,
            drop_frames,
            encoder,
            fifo: Vec::with_capacity(FRAME_SAMPLES * 4),
            fifo_ts: rtp_ts_base,
            anchor_ms: None,
            frames_since_anchor: 0,
            pcm: Vec::new(),
            stereo: Vec::new(),
            resampled: Vec::new(),
            packet: vec![0; MAX_OPUS_PACKET],
        })
    }

    /// Decodes one raw AAC frame (the body of an FLV AAC packet type 1)
    /// with its RTMP timestamp; returns the Opus frames now complete.
    ///
    /// A frame that fails to decode is an `Err` the caller can log and skip:
    /// the pipeline stays usable.
    pub fn push(&mut self, aac: &[u8], rtmp_ms: u32) -> Result<Vec<OpusFrame>, AudioError> {
        let mut out = Vec::new();
        self.check_gap(rtmp_ms, &mut out)?;

        let packet = PacketRef::new(
            0,
            Timestamp::new(0),
            SymDuration::new(AAC_FRAME as u64),
            aac,
        );
        let decoded = self
            .decoder
            .decode_ref(&packet)
            .map_err(|e| AudioError::Decode(e.to_string()))?;
        let channels = decoded.spec().channels().count();
        let frames = decoded.frames();
        self.pcm.clear();
        decoded.copy_to_vec_interleaved(&mut self.pcm);
        self.frames_since_anchor += frames as u64;

        // Up-mix (or pass) to stereo.
        self.stereo.clear();
        match channels {
            1 => self.stereo.extend(self.pcm.iter().flat_map(|s| [*s, *s])),
            2 => self.stereo.extend_from_slice(&self.pcm),
            n => return Err(AudioError::UnsupportedChannels(n.min(255) as u8)),
        }

        self.resample_into_fifo(frames)?;
        self.encode_ready(&mut out)?;
        Ok(out)
    }

    fn resample_into_fifo(&mut self, frames: usize) -> Result<(), AudioError> {
        let Some(r) = self.resampler.as_mut() else {
            self.fifo.extend_from_slice(&self.stereo);
            return Ok(());
        };
        // The resampler takes exactly AAC_FRAME frames; decoders give 1024
        // per AAC-LC frame, so this loop runs once (shorter: zero-padded).
        let mut pos = 0;
        while pos < frames {
            let n = (frames - pos).min(r.input_frames_next());
            let input = &self.stereo[pos * 2..(pos + n) * 2];
            let in_buf = InterleavedSlice::new(input, 2, n)
                .map_err(|e| AudioError::Resample(e.to_string()))?;
            let out_frames = r.output_frames_next();
            self.resampled.clear();
            self.resampled.resize(out_frames * 2, 0.0);
            let mut out_buf = InterleavedSlice::new_mut(&mut self.resampled, 2, out_frames)
                .map_err(|e| AudioError::Resample(e.to_string()))?;
            let indexing = rubato::Indexing {
                input_offset: 0,
                output_offset: 0,
                partial_len: (n < r.input_frames_next()).then_some(n),
                active_channels_mask: None,
            };
            let (_, written) = r
                .process_into_buffer(&in_buf, &mut out_buf, Some(&indexing))
                .map_err(|e| AudioError::Resample(e.to_string()))?;
            let skip = self.drop_frames.min(written);
            self.drop_frames -= skip;
            self.fifo
                .extend_from_slice(&self.resampled[skip * 2..written * 2]);
            pos += n;
        }
        Ok(())
    }

    fn encode_ready(&mut self, out: &mut Vec<OpusFrame>) -> Result<(), AudioError> {
        let frame_len = FRAME_SAMPLES * 2;
        let mut start = 0;
        while self.fifo.len() - start >= frame_len {
            let frame = &self.fifo[start..start + frame_len];
            let n = self
                .encoder
                .encode_float(frame, &mut self.packet)
                .map_err(|e| AudioError::Encode(format!("{e:?}")))?;
            out.push(OpusFrame {
                payload: Bytes::copy_from_slice(&self.packet[..n]),
                rtp_ts: self.fifo_ts,
            });
            self.fifo_ts = self.fifo_ts.wrapping_add(FRAME_SAMPLES as u32);
            start += frame_len;
        }
        self.fifo.drain(..start);
        Ok(())
    }

    /// Compares RTMP time with the decoded sample count; on a gap, ends the
    /// partial frame with silence and moves the RTP time over the gap.
    fn check_gap(&mut self, rtmp_ms: u32, out: &mut Vec<OpusFrame>) -> Result<(), AudioError> {
        let Some(anchor) = self.anchor_ms else {
            self.anchor_ms = Some(rtmp_ms);
            return Ok(());
        };
        let expected_ms =
            i64::from(anchor) + (self.frames_since_anchor * 1000 / u64::from(self.in_rate)) as i64;
        // RTMP time wraps at 2^32 ms; compare in that ring.
        let drift = i64::from(rtmp_ms.wrapping_sub(expected_ms as u32) as i32);
        if drift.abs() <= GAP_MS {
            return Ok(());
        }
        tracing::debug!(drift_ms = drift, rtmp_ms, "rtmp audio gap, re-anchoring");
        self.anchor_ms = Some(rtmp_ms);
        self.frames_since_anchor = 0;
        if drift < 0 {
            // Time went back (encoder restart): keep RTP time monotonic.
            return Ok(());
        }
        let pending = self.fifo.len() / 2;
        let mut pad = 0;
        if pending > 0 {
            pad = FRAME_SAMPLES - pending;
            self.fifo.resize(FRAME_SAMPLES * 2, 0.0);
            self.encode_ready(out)?;
        }
        let gap_samples = u32::try_from(drift * i64::from(OPUS_RATE) / 1000).unwrap_or(u32::MAX);
        self.fifo_ts = self
            .fifo_ts
            .wrapping_add(gap_samples.saturating_sub(pad as u32));
        Ok(())
    }
}

#[cfg(test)]
#[path = "audio_tests.rs"]
mod tests;
