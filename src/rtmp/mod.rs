//! RTMP ingest, sans-IO: what OBS and FFmpeg publish, turned into what the
//! WebRTC SFU forwards.
//!
//! ```text
//! TCP bytes ─▶ session::RtmpConn ─▶ Publish{app, stream, key}  (caller: accept/reject)
//!                                 ├▶ Metadata (onMetaData)
//!                                 ├▶ Video{dts ms, FLV body} ─▶ flv::parse_video
//!                                 │      AvcConfig ─▶ h264::H264Packetizer::new / set_config
//!                                 │      AvcFrames ─▶ H264Packetizer::packetize ─▶ RTP payloads (90 kHz)
//!                                 └▶ Audio{dts ms, FLV body} ─▶ flv::parse_audio
//!                                        AacConfig ─▶ audio::AacToOpus::new
//!                                        AacFrame  ─▶ AacToOpus::push ─▶ Opus 20 ms frames (48 kHz)
//! ```
//!
//! Nothing here opens a socket, spawns a task or reads a clock: every state
//! machine takes bytes and an `Instant` or timestamp and returns values, so
//! the tests drive them directly and the wiring (tokio, SFU tracks) is the
//! caller's. Each file has one job:
//! - [`session`]: RTMP handshake, chunks and commands (on `scuffle-rtmp`).
//! - [`amf`]: a bounded AMF0 reader that vets commands and reads metadata.
//! - [`flv`]: FLV video/audio tag bodies and codec configuration records.
//! - [`h264`]: AVCC access units to RFC 6184 RTP payloads.
//! - [`audio`]: AAC-LC to Opus (decode, resample to 48 kHz, encode).
//!
//! And the wiring, which is IO: [`ingest`] (the TCP listener, one task per
//! connection, the pipeline above) and [`bridge`] (the live's WebRTC
//! session the RTP goes out on, as a WHIP caster's would).

mod amf;
pub mod audio;
pub mod bridge;
pub mod flv;
pub mod h264;
pub mod ingest;
pub mod session;

/// Packets an RTMP publish's session holds until it has connected (a few
/// seconds of a stream: the first keyframe is among them).
const MAX_EARLY_PACKETS: usize = 1024;

pub use audio::{AacToOpus, AudioError, OpusFrame};
pub use flv::{AacConfig, AudioTag, AvcConfig, FlvError, NaluLengthSize, VideoTag};
pub use h264::{H264Error, H264Packetizer, RtpOut};
pub use session::{CloseReason, PublishRequest, RtmpConn, RtmpError, RtmpOutput, StreamMetadata};
