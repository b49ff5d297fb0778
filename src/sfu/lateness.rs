//! Bounded lateness: a viewer that the server (short of CPU) or its own
//! link (short of bandwidth) cannot keep up with skips ahead, video to the
//! next keyframe, rather than falling ever further behind. A live stream
//! must not be seconds behind: late is worse than lost.
//!
//! What is already queued in str0m is sent (str0m 0.25 has no public way
//! to drop it); what comes while the viewer is behind is not queued.

use std::time::{Duration, Instant};

/// How long media may wait in a viewer's send queue (str0m's pacer).
/// Beyond, the viewer is behind: what comes is dropped until the queue is
/// down to a third of this.
pub const MAX_LATENESS: Duration = Duration::from_millis(300);

/// A keyframe is large and takes long to send on a slow link, and skipping
/// it would only ask for another: while the oldest waiting packet is the
/// latest keyframe's, it may wait up to this.
pub const MAX_KEYFRAME_LATENESS: Duration = Duration::from_secs(1);

/// The least time between two skips of one track: each costs a keyframe,
/// and on a link that cannot carry them, skipping in a loop would turn the
/// stream into a slideshow.
pub const SKIP_HOLD_OFF: Duration = Duration::from_secs(2);

/// Whether the next packet may be queued for a viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Pass,
    /// The viewer is behind; `started` on the first packet dropped, when
    /// the track must resynchronise (video: wait for a keyframe).
    Drop {
        started: bool,
    },
}

/// One outgoing track's lateness.
#[derive(Debug, Default)]
pub struct Lateness {
    behind: bool,
    keyframe: Option<KeyframeSpan>,
    last_skip: Option<Instant>,
    /// A backlog queued on purpose (a group of pictures replayed to a new
    /// viewer) drains until then without counting as falling behind.
    grace_until: Option<Instant>,
    /// The RTP timestamp of the frame the last dropped packet belonged to:
    /// the rest of that frame is dropped too, even once the queue has
    /// drained. (An H.264 keyframe is SPS and PPS in one packet, then the
    /// IDR in many; resuming at the IDR's first fragment would count as a
    /// keyframe start, and the viewer would get an IDR without the
    /// parameter sets it needs.)
    dropped_frame: Option<u32>,
}

/// When the packets of the latest keyframe were queued.
#[derive(Debug, Clone, Copy)]
struct KeyframeSpan {
    ts: u32,
    start: Instant,
    /// When the next frame's first packet was queued.
    end: Option<Instant>,
}

impl Lateness {
    /// Whether the next packet (of the frame with RTP timestamp `ts`) may
    /// be queued, given when the oldest packet still waiting in the
    /// viewer's queue was queued (`None`: empty).
    pub fn check(&mut self, oldest: Option<Instant>, now: Instant, ts: u32) -> Gate {
        let gate = self.gate(oldest, now);
        match gate {
            Gate::Drop { .. } => self.dropped_frame = Some(ts),
            Gate::Pass if self.dropped_frame == Some(ts) => return Gate::Drop { started: false },
            Gate::Pass => self.dropped_frame = None,
        }
        gate
    }

    fn gate(&mut self, oldest: Option<Instant>, now: Instant) -> Gate {
        if self.grace_until.is_some_and(|t| now < t) {
            self.behind = false;
            return Gate::Pass;
        }
        let waited = oldest.map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        if self.behind {
            if waited > MAX_LATENESS / 3 {
                return Gate::Drop { started: false };
            }
            self.behind = false;
            return Gate::Pass;
        }
        let limit = if oldest.is_some_and(|t| self.in_keyframe(t)) {
            MAX_KEYFRAME_LATENESS
        } else {
            MAX_LATENESS
        };
        let held_off = self.last_skip.is_some_and(|s| now < s + SKIP_HOLD_OFF);
        if waited > limit && !held_off {
            self.behind = true;
            self.last_skip = Some(now);
            return Gate::Drop { started: true };
        }
        Gate::Pass
    }

    /// A backlog was queued on purpose: until `until`, no packet counts
    /// as late. Afterwards, what still waits is judged as usual.
    pub fn grace(&mut self, until: Instant) {
        self.grace_until = Some(until);
    }

    /// A packet (of the frame with RTP timestamp `ts`) was queued.
    pub fn queued(&mut self, keyframe: bool, ts: u32, now: Instant) {
        if keyframe {
            self.keyframe = Some(KeyframeSpan {
                ts,
                start: now,
                end: None,
            });
        } else if let Some(k) = &mut self.keyframe
            && k.end.is_none()
            && ts != k.ts
        {
            k.end = Some(now);
        }
    }

    fn in_keyframe(&self, queued_at: Instant) -> bool {
        self.keyframe
            .is_some_and(|k| k.start <= queued_at && k.end.is_none_or(|e| queued_at < e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_backlog_past_the_bound_drops_until_it_has_drained() {
        let t0 = Instant::now();
        let mut l = Lateness::default();
        l.queued(true, 0, t0);
        l.queued(false, 3000, t0 + ms(33));
        // The oldest waiting packet is a P-frame's, 250 ms old: fine.
        assert_eq!(l.check(Some(t0 + ms(33)), t0 + ms(283), 3000), Gate::Pass);
        // 301 ms: behind.
        let at = t0 + ms(334);
        assert_eq!(
            l.check(Some(t0 + ms(33)), at, 6000),
            Gate::Drop { started: true }
        );
        // Still more than a third of the bound waiting: dropping goes on.
        assert_eq!(
            l.check(Some(t0 + ms(300)), t0 + ms(450), 9000),
            Gate::Drop { started: false }
        );
        // Drained: it passes again.
        assert_eq!(l.check(Some(t0 + ms(460)), t0 + ms(500), 12000), Gate::Pass);
        assert_eq!(l.check(None, t0 + ms(520), 15000), Gate::Pass);
    }

    #[test]
    fn a_keyframe_on_a_slow_link_may_take_up_to_a_second() {
        let t0 = Instant::now();
        let mut l = Lateness::default();
        l.queued(false, 0, t0);
        l.queued(true, 3000, t0 + ms(33));
        l.queued(true, 3000, t0 + ms(40)); // its later packets carry no flag
        l.queued(false, 6000, t0 + ms(66));
        // The keyframe's packets still wait after 900 ms: let them.
        assert_eq!(l.check(Some(t0 + ms(40)), t0 + ms(940), 18000), Gate::Pass);
        // After a second, even a keyframe is too late.
        assert_eq!(
            l.check(Some(t0 + ms(40)), t0 + ms(1041), 21000),
            Gate::Drop { started: true }
        );
        // The P-frame after it is held to the usual bound.
        let mut l = Lateness::default();
        l.queued(true, 0, t0);
        l.queued(false, 3000, t0 + ms(33));
        assert_eq!(
            l.check(Some(t0 + ms(33)), t0 + ms(340), 24000),
            Gate::Drop { started: true }
        );
    }

    #[test]
    fn a_backlog_queued_on_purpose_is_not_late_until_its_grace_ends() {
        let t0 = Instant::now();
        let mut l = Lateness::default();
        l.queued(true, 0, t0);
        l.queued(false, 3000, t0);
        l.grace(t0 + ms(1500));
        assert_eq!(l.check(Some(t0), t0 + ms(1400), 27000), Gate::Pass);
        // Still waiting after the grace: late as usual.
        assert_eq!(
            l.check(Some(t0), t0 + ms(1500), 30000),
            Gate::Drop { started: true }
        );
    }

    #[test]
    fn skips_are_at_least_the_hold_off_apart() {
        let t0 = Instant::now();
        let mut l = Lateness::default();
        l.queued(false, 0, t0);
        assert_eq!(
            l.check(Some(t0), t0 + ms(301), 33000),
            Gate::Drop { started: true }
        );
        assert_eq!(l.check(None, t0 + ms(400), 36000), Gate::Pass);
        l.queued(false, 3000, t0 + ms(400));
        // Behind again within the hold-off: it waits (str0m's pacer bounds
        // its queue at 2 s on its own).
        assert_eq!(
            l.check(Some(t0 + ms(400)), t0 + ms(1000), 39000),
            Gate::Pass
        );
        assert_eq!(
            l.check(Some(t0 + ms(400)), t0 + ms(2302), 42000),
            Gate::Drop { started: true }
        );
    }

    #[test]
    fn a_frame_whose_head_was_dropped_is_dropped_whole() {
        let t0 = Instant::now();
        let mut l = Lateness::default();
        l.queued(false, 0, t0);
        // Behind while a keyframe's first packet (SPS and PPS) comes.
        assert_eq!(
            l.check(Some(t0), t0 + ms(301), 3000),
            Gate::Drop { started: true }
        );
        // The queue has drained, but the IDR fragments of that frame go
        // too: without the parameter sets they would not decode.
        assert_eq!(
            l.check(None, t0 + ms(302), 3000),
            Gate::Drop { started: false }
        );
        assert_eq!(
            l.check(None, t0 + ms(303), 3000),
            Gate::Drop { started: false }
        );
        // The next frame passes.
        assert_eq!(l.check(None, t0 + ms(334), 6000), Gate::Pass);
        assert_eq!(l.check(None, t0 + ms(335), 6000), Gate::Pass);
    }
}
