//! Counters for operators (`/metrics`): NACKs, keyframe requests and loss,
//! from str0m's periodic per-stream stats (cumulative, so kept as deltas).

use str0m::media::{Mid, Rid};
use str0m::stats::{MediaEgressStats, MediaIngressStats};

/// Everything one `Sfu` counted since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SfuStats {
    /// NACKs Vessel sent to casters (packets it found missing).
    pub nacks_sent: u64,
    /// NACKs viewers sent to Vessel.
    pub nacks_received: u64,
    /// Keyframe requests Vessel sent to casters.
    pub keyframe_requests_sent: u64,
    /// PLI/FIR from viewers.
    pub keyframe_requests_received: u64,
    /// Packets from casters lost on the way in (estimated from loss ratios).
    pub lost_in: u64,
    /// Packets to viewers lost on the way out (from their receiver reports).
    pub lost_out: u64,
    /// Sessions closed because their handling panicked.
    pub peer_panics: u64,
    /// Times a viewer's track fell behind (see `lateness`) and skipped
    /// ahead.
    pub late_skips: u64,
    /// Packets not sent to a viewer because it was behind.
    pub late_drops: u64,
    /// Caster packets written to viewers (one per viewer per packet).
    pub copies: u64,
    /// Times a session's `Rtc` was drained (polled to its next timeout).
    pub polls: u64,
    /// Timeouts handed to sessions' `Rtc`s: each runs all of the session's
    /// timers (ICE, RTCP, pacer, bandwidth estimate). What a copy costs is
    /// mostly these per copy.
    pub rtc_timeouts: u64,
    /// Viewers started from a caster's kept group of pictures (see `gop`).
    pub gop_replays: u64,
}

/// The last cumulative figures seen for one stream of one peer.
#[derive(Debug, Default)]
pub(super) struct StreamSeen {
    key: Option<(Mid, Option<Rid>)>,
    packets: u64,
    nacks: u64,
    keyframes: u64,
}

/// Per peer, the streams whose stats have been seen.
#[derive(Debug, Default)]
pub(super) struct StatsSeen(Vec<StreamSeen>);

impl StatsSeen {
    fn stream(&mut self, mid: Mid, rid: Option<Rid>) -> &mut StreamSeen {
        let key = Some((mid, rid));
        if let Some(i) = self.0.iter().position(|s| s.key == key) {
            return &mut self.0[i];
        }
        self.0.push(StreamSeen {
            key,
            ..StreamSeen::default()
        });
        self.0.last_mut().expect("just pushed")
    }

    /// A viewer's stream: what Vessel sent and what the viewer reported.
    pub fn egress(&mut self, s: &MediaEgressStats, stats: &mut SfuStats) {
        let seen = self.stream(s.mid, s.rid);
        let packets = s.packets.saturating_sub(seen.packets);
        stats.nacks_received += s.nacks.saturating_sub(seen.nacks);
        let keyframes = s.plis + s.firs;
        stats.keyframe_requests_received += keyframes.saturating_sub(seen.keyframes);
        stats.lost_out += lost(s.loss, packets);
        (seen.packets, seen.nacks, seen.keyframes) = (s.packets, s.nacks, keyframes);
    }

    /// A caster's stream: what Vessel received.
    pub fn ingress(&mut self, s: &MediaIngressStats, stats: &mut SfuStats) {
        let seen = self.stream(s.mid, s.rid);
        let packets = s.packets.saturating_sub(seen.packets);
        stats.nacks_sent += s.nacks.saturating_sub(seen.nacks);
        stats.lost_in += lost(s.loss, packets);
        (seen.packets, seen.nacks) = (s.packets, s.nacks);
    }
}

/// Packets lost, from a loss fraction over `packets` that arrived: lost /
/// (arrived + lost) = loss.
fn lost(loss: Option<f32>, arrived: u64) -> u64 {
    match loss {
        Some(l) if l > 0.0 && l < 1.0 => {
            (arrived as f64 * f64::from(l) / (1.0 - f64::from(l))).round() as u64
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_fractions_become_packet_counts() {
        assert_eq!(lost(Some(0.5), 100), 100);
        assert_eq!(lost(Some(0.01), 990), 10);
        assert_eq!(lost(None, 100), 0);
        assert_eq!(lost(Some(0.0), 100), 0);
    }
}
