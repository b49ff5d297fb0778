//! A live's caster packets handed, as they arrive, to a consumer off the
//! media thread (LL-HLS and recording): one bounded hand-off per run of
//! packets, never a wait. A consumer that falls behind loses packets (and
//! counts them); the viewers never notice it.

use std::sync::Arc;
use std::time::Instant;

use str0m::format::Codec;
use str0m::media::{MediaKind, Rid};

use super::PeerId;
use super::peer::Forward;

/// One caster packet, as a tap's consumer sees it.
#[derive(Debug, Clone)]
pub struct TapPacket {
    pub kind: MediaKind,
    /// The caster session: a new one (a replaced or reconnected caster)
    /// starts a new timeline.
    pub caster: PeerId,
    /// The incoming stream (a simulcast layer, for video).
    pub ssrc: u32,
    pub rid: Option<Rid>,
    pub codec: Codec,
    pub clock_rate: u32,
    /// Extended (rollover-free) sequence number.
    pub seq: u64,
    pub ts: u32,
    pub marker: bool,
    pub arrival: Instant,
    /// The media payload (for RED audio, its primary block).
    pub payload: Arc<[u8]>,
}

/// Where a live's packets go. `offer` must not block: it takes the run or
/// drops it. It returns false once the consumer is gone, and the tap is
/// removed.
pub trait TapSink: Send {
    fn offer(&mut self, packets: Vec<TapPacket>) -> bool;
}

impl TapPacket {
    pub(super) fn of(f: &Forward) -> Option<Self> {
        let payload = if f.red {
            f.primary.clone()?
        } else {
            f.payload.clone()
        };
        Some(Self {
            kind: f.kind,
            caster: f.media.source.peer,
            ssrc: f.media.source.ssrc,
            rid: f.rid,
            codec: f.spec.codec,
            clock_rate: f.media.clock_rate,
            seq: f.media.seq,
            ts: f.media.ts,
            marker: f.marker,
            arrival: f.media.arrival,
            payload,
        })
    }
}
