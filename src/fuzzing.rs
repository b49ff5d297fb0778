//! Fuzz targets: one function per parser that reads bytes from the network,
//! each driving the real sans-IO state machine that consumes them. Every
//! function takes any `&[u8]` and must never panic: a panic (or a panic
//! that Vessel's own isolation caught, which the targets check for) is a
//! bug to fix.
//!
//! Two drivers use them: `fuzz/` (coverage-guided, cargo-afl; its own
//! crate, outside the workspace) and the seeded randomized run in
//! `fuzzing/tests.rs`, which `cargo test` (so `scripts/test`, so CI) runs
//! on every target.
//!
//! Most inputs are a sequence of records (see [`Records`]): the flags byte
//! picks what the record is (a datagram from this or that address, a
//! request the harness signs with valid credentials, time passing, ...),
//! so that the fuzzer can reach the states behind authentication.

mod faces;
mod mediasoup;
mod sdp;
mod sfu;
mod skyway;
mod stream;
mod stun;
mod turn;

#[cfg(test)]
mod seeds;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use faces::{chat_message, peerjs_message};
pub use mediasoup::mediasoup_request;
pub use sdp::sdp_offer;
pub use sfu::sfu_datagram;
pub use skyway::skyway_message;
pub use stream::rfc4571;
pub use turn::turn_message;

/// A fuzz target: any input, no panic.
pub type Target = fn(&[u8]);

/// Every target, by name (the `fuzz/` binaries and corpus folders).
pub const TARGETS: &[(&str, Target)] = &[
    ("sfu_datagram", sfu_datagram),
    ("sdp_offer", sdp_offer),
    ("turn_message", turn_message),
    ("rfc4571", rfc4571),
    ("peerjs_message", peerjs_message),
    ("skyway_message", skyway_message),
    ("chat_message", chat_message),
    ("mediasoup_request", mediasoup_request),
];

/// Records an input holds at most: each costs a state machine step, and a
/// fuzzer's input must run in milliseconds.
const MAX_RECORDS: usize = 200;

/// An input cut into records: a flags byte, a big-endian `u16` length, then
/// that many bytes (what is left if the input ends first).
pub struct Records<'a> {
    rest: &'a [u8],
    taken: usize,
}

impl<'a> Records<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self {
            rest: data,
            taken: 0,
        }
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = (u8, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.taken == MAX_RECORDS {
            return None;
        }
        let (&flags, rest) = self.rest.split_first()?;
        let (len, rest) = match rest {
            [a, b, rest @ ..] => (usize::from(u16::from_be_bytes([*a, *b])), rest),
            _ => (rest.len(), &[][..]),
        };
        let (body, rest) = rest.split_at(len.min(rest.len()));
        self.rest = rest;
        self.taken += 1;
        Some((flags, body))
    }
}

/// One record, encoded (for seeds and the mutator).
pub fn record(flags: u8, body: &[u8]) -> Vec<u8> {
    let len = u16::try_from(body.len()).expect("a record body fits in 64 KiB");
    let mut r = vec![flags];
    r.extend_from_slice(&len.to_be_bytes());
    r.extend_from_slice(body);
    r
}

/// The first two bytes of `bytes` as a number (0 without them).
fn u16_of(bytes: &[u8]) -> u16 {
    match bytes {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        [a] => u16::from(*a),
        [] => 0,
    }
}

/// Time a record says passes: up to about 17 minutes, in 16 ms steps, so
/// that both timers (ms) and expiries (minutes) are within reach.
fn elapsed(bytes: &[u8]) -> Duration {
    Duration::from_millis(u64::from(u16_of(bytes)) * 16)
}
