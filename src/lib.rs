//! Vessel: a self-hosted live streaming server. One binary: WHIP/WHEP
//! signaling, a WebRTC SFU, and the pages to cast and play.

pub mod access;
pub mod board;
pub mod chat;
pub mod cluster;
pub mod config;
#[cfg(test)]
mod fuzz_json;
#[doc(hidden)]
pub mod fuzzing;
pub mod hls;
pub mod http;
pub mod limits;
pub mod loadtest;
pub mod media;
pub mod memory;
pub mod metrics;
pub mod peerjs;
pub mod record;
pub mod rtmp;
pub mod sfu;
pub mod skyway;
pub mod tls;
pub mod turn;
pub mod udp_batch;
