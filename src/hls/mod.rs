//! LL-HLS, sans-IO: RTP payloads in, fMP4 parts and playlists out. No
//! sockets, no clocks, no tasks: the IO layer feeds packets and wall-clock
//! times, serves the bytes, and holds blocked requests; everything here is a
//! state machine or a pure function, tested deterministically.
//!
//! - [`depacketize`]: RTP (H.264, Opus) to access units.
//! - [`sps`]: picture size and profile from an H.264 SPS.
//! - [`fmp4`]: init segments and `moof`+`mdat` fragments.
//! - [`segmenter`]: one rendition's timeline of parts and segments.
//! - [`rtmp_source`]: an RTMP publish's FLV frames (AAC, B-frames) as samples.
//! - [`playlist`]: media and multivariant playlists, blocking-reload
//!   decisions, resource names.

#[cfg(test)]
mod align_tests;
#[cfg(test)]
mod chain_tests;
pub mod depacketize;
pub mod feed;
pub mod fmp4;
pub mod hub;
pub mod playlist;
pub mod playlist_cache;
pub mod record;
pub mod recordings;
pub mod rtmp_sink;
pub mod rtmp_source;
pub mod segmenter;
pub mod sps;
pub mod stored;
#[cfg(test)]
mod testutil;
pub mod vod;
