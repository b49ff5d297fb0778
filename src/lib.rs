//! Vessel: a self-hosted live streaming server. One binary: WHIP/WHEP
//! signaling, a WebRTC SFU, and the pages to cast and play.

pub mod board;
pub mod config;
pub mod http;
pub mod loadtest;
pub mod media;
pub mod sfu;
pub mod turn;
pub mod udp_batch;
