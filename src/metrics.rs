//! Prometheus metrics (`GET /metrics`), on the official `prometheus-client`
//! crate. Media and TURN threads add to shared counters once per loop turn
//! or second (one atomic add each, not one per packet); the live gauges are
//! read from the live board at scrape time.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::sfu::SfuStats;

/// Which engine a count is about.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Engine {
    /// `media` (the SFU) or `turn`.
    pub engine: &'static str,
}

pub const MEDIA: Engine = Engine { engine: "media" };
pub const TURN: Engine = Engine { engine: "turn" };

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Direction {
    /// `in` (from casters) or `out` (to viewers).
    pub direction: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub lives: Gauge,
    pub casters: Gauge,
    pub viewers: Gauge,
    pub packets: Family<Direction, Counter>,
    pub bytes: Family<Direction, Counter>,
    pub packets_lost: Family<Direction, Counter>,
    pub nacks: Family<Direction, Counter>,
    pub keyframe_requests: Family<Direction, Counter>,
    pub turn_allocations: Gauge,
    pub turn_relayed_bytes: Counter,
    pub panics: Family<Engine, Counter>,
    pub refused: Family<LimitLabel, Counter>,
    /// Media sessions held now (as the admission limits count them).
    pub sessions: Gauge,
    /// HTTP connections open now.
    pub connections: Gauge,
    /// Times a viewer fell behind and skipped ahead.
    pub late_skips: Counter,
    /// Packets not sent to viewers because they were behind.
    pub late_drops: Counter,
    /// Caster packets written to viewers.
    pub copies: Counter,
    /// RTMP publishes on air now, and those that sent B-frames.
    pub rtmp_publishing: Gauge,
    pub rtmp_bframes: Counter,
    /// Viewers started from a kept group of pictures.
    pub gop_replays: Counter,
    /// Recordings stopped by a write error, and files being written now.
    pub recording_errors: Counter,
    pub recordings_active: Gauge,
    /// Sessions' `Rtc`s drained, and timeouts handed to them.
    pub rtc_polls: Counter,
    pub rtc_timeouts: Counter,
    /// A caster's packet received → its viewers' copies handed to the
    /// kernel (`sendmmsg`), seconds: the server's own forwarding delay.
    pub forwarding_delay: Histogram,
}

/// Buckets of the forwarding delay, seconds: 25 µs to 2.5 s, fine around
/// the milliseconds a fan-out to hundreds of viewers takes.
const FORWARDING_BUCKETS: [f64; 22] = [
    25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 1.5e-3, 2e-3, 3e-3, 4e-3, 5e-3, 7.5e-3, 10e-3,
    15e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0, 2.5, 5.0,
];

/// Which admission limit refused a request (see `limits::Limit::name`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    pub limit: &'static str,
}

pub const IN: Direction = Direction { direction: "in" };
pub const OUT: Direction = Direction { direction: "out" };

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("vessel"),
            lives: Gauge::default(),
            casters: Gauge::default(),
            viewers: Gauge::default(),
            packets: Family::default(),
            bytes: Family::default(),
            packets_lost: Family::default(),
            nacks: Family::default(),
            keyframe_requests: Family::default(),
            turn_allocations: Gauge::default(),
            turn_relayed_bytes: Counter::default(),
            panics: Family::default(),
            refused: Family::default(),
            sessions: Gauge::default(),
            connections: Gauge::default(),
            late_skips: Counter::default(),
            late_drops: Counter::default(),
            copies: Counter::default(),
            rtmp_publishing: Gauge::default(),
            rtmp_bframes: Counter::default(),
            gop_replays: Counter::default(),
            recording_errors: Counter::default(),
            recordings_active: Gauge::default(),
            rtc_polls: Counter::default(),
            rtc_timeouts: Counter::default(),
            forwarding_delay: Histogram::new(FORWARDING_BUCKETS),
        };
        let registry = &mut m.registry;
        registry.register("lives", "Lives with a caster or viewers", m.lives.clone());
        registry.register("casters", "Casters connected", m.casters.clone());
        registry.register("viewers", "Viewers connected", m.viewers.clone());
        registry.register(
            "media_packets",
            "Media datagrams received from peers (in) and sent to them (out)",
            m.packets.clone(),
        );
        registry.register(
            "media_bytes",
            "Media bytes received (in) and sent (out)",
            m.bytes.clone(),
        );
        registry.register(
            "packets_lost",
            "RTP packets lost: from casters as Vessel counts them (in), to viewers as their receiver reports say (out)",
            m.packets_lost.clone(),
        );
        registry.register(
            "nacks",
            "NACKs sent to casters (in) and received from viewers (out)",
            m.nacks.clone(),
        );
        registry.register(
            "keyframe_requests",
            "Keyframe requests sent to casters (in) and PLI/FIR received from viewers (out)",
            m.keyframe_requests.clone(),
        );
        registry.register(
            "turn_allocations",
            "TURN allocations held",
            m.turn_allocations.clone(),
        );
        registry.register(
            "turn_relayed_bytes",
            "Bytes relayed by TURN, both ways",
            m.turn_relayed_bytes.clone(),
        );
        registry.register(
            "panics",
            "Sessions (media) or allocations (turn) closed because handling them panicked; the rest went on",
            m.panics.clone(),
        );
        registry.register(
            "refused",
            "Requests and connections refused by an admission limit (429/503)",
            m.refused.clone(),
        );
        for limit in crate::limits::Limit::ALL {
            let _ = m.refused.get_or_create(&LimitLabel {
                limit: limit.name(),
            });
        }
        registry.register(
            "sessions",
            "Media sessions held (WHIP, WHEP, socket.io transports, SkyWay members)",
            m.sessions.clone(),
        );
        registry.register(
            "http_connections",
            "HTTP connections open",
            m.connections.clone(),
        );
        registry.register(
            "viewer_skips",
            "Times a viewer's track fell more than 300 ms behind (the server short of CPU, or the viewer's link of bandwidth) and skipped ahead, video to a keyframe",
            m.late_skips.clone(),
        );
        registry.register(
            "gop_replays",
            "Viewers started at once from the kept group of pictures of a caster that cannot make keyframes on request (RTMP), instead of waiting for its next keyframe",
            m.gop_replays.clone(),
        );
        registry.register(
            "late_packets_dropped",
            "Packets not sent to viewers because they were behind",
            m.late_drops.clone(),
        );
        registry.register(
            "rtmp_publishing",
            "RTMP publishes (OBS, FFmpeg) casting now",
            m.rtmp_publishing.clone(),
        );
        registry.register(
            "rtmp_bframe_streams",
            "RTMP publishes that sent B-frames, which WebRTC players show badly (see the log for the fix)",
            m.rtmp_bframes.clone(),
        );
        registry.register(
            "forwarded_copies",
            "Caster packets written to viewers (one per viewer per packet)",
            m.copies.clone(),
        );
        registry.register(
            "rtc_polls",
            "Times a WebRTC session's state machine was drained to its next timeout",
            m.rtc_polls.clone(),
        );
        registry.register(
            "rtc_timeouts",
            "Timeouts handed to WebRTC sessions' state machines (each runs all of a session's timers); per forwarded copy, the main cost of forwarding",
            m.rtc_timeouts.clone(),
        );
        registry.register(
            "forwarding_delay_seconds",
            "A caster's packet received to its viewers' copies handed to the kernel, seconds (copies a viewer's pacer holds back are not in it: see viewer_skips)",
            m.forwarding_delay.clone(),
        );
        registry.register(
            "recording_errors",
            "Recordings stopped by a write error (disk full, directory not writable); the lives went on",
            m.recording_errors.clone(),
        );
        registry.register(
            "recordings_active",
            "Recording files being written",
            m.recordings_active.clone(),
        );
        for engine in [MEDIA, TURN] {
            let _ = m.panics.get_or_create(&engine);
        }
        // Every series exists from the start, at zero, so that dashboards
        // and alerts see 0 rather than nothing.
        for family in [
            &m.packets,
            &m.bytes,
            &m.packets_lost,
            &m.nacks,
            &m.keyframe_requests,
        ] {
            for direction in [IN, OUT] {
                let _ = family.get_or_create(&direction);
            }
        }
        m
    }

    /// Adds what an `Sfu`'s counters grew by since `last`.
    pub fn add_sfu(&self, now: &SfuStats, last: &SfuStats) {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        self.nacks
            .get_or_create(&IN)
            .inc_by(d(now.nacks_sent, last.nacks_sent));
        self.nacks
            .get_or_create(&OUT)
            .inc_by(d(now.nacks_received, last.nacks_received));
        self.keyframe_requests
            .get_or_create(&IN)
            .inc_by(d(now.keyframe_requests_sent, last.keyframe_requests_sent));
        self.keyframe_requests.get_or_create(&OUT).inc_by(d(
            now.keyframe_requests_received,
            last.keyframe_requests_received,
        ));
        self.packets_lost
            .get_or_create(&IN)
            .inc_by(d(now.lost_in, last.lost_in));
        self.packets_lost
            .get_or_create(&OUT)
            .inc_by(d(now.lost_out, last.lost_out));
        self.panics
            .get_or_create(&MEDIA)
            .inc_by(d(now.peer_panics, last.peer_panics));
        self.late_skips.inc_by(d(now.late_skips, last.late_skips));
        self.late_drops.inc_by(d(now.late_drops, last.late_drops));
        self.copies.inc_by(d(now.copies, last.copies));
        self.gop_replays
            .inc_by(d(now.gop_replays, last.gop_replays));
        self.rtc_polls.inc_by(d(now.polls, last.polls));
        self.rtc_timeouts
            .inc_by(d(now.rtc_timeouts, last.rtc_timeouts));
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
