//! Keyframe economy: every keyframe request towards a caster goes through a
//! [`KeyframeGate`], so that a burst of joining viewers or PLIs costs the
//! caster one keyframe, not one per viewer.

use std::time::{Duration, Instant};

/// Coalesces and throttles keyframe requests for one caster track.
///
/// The first request goes out at once; requests inside the following
/// `min_interval` are folded into at most one deferred request, sent when the
/// interval ends, unless a keyframe arrived in the meantime.
#[derive(Debug, Clone)]
pub struct KeyframeGate {
    min_interval: Duration,
    last_sent: Option<Instant>,
    pending: bool,
}

impl KeyframeGate {
    pub fn new(min_interval: Duration) -> Self {
        Self {
            min_interval,
            last_sent: None,
            pending: false,
        }
    }

    /// Someone needs a keyframe. Returns `true` when a request must go to the
    /// caster now; otherwise it is deferred to [`KeyframeGate::poll_timeout`].
    pub fn request(&mut self, now: Instant) -> bool {
        match self.last_sent {
            Some(t) if now < t + self.min_interval => {
                self.pending = true;
                false
            }
            _ => {
                self.last_sent = Some(now);
                self.pending = false;
                true
            }
        }
    }

    /// When the deferred request is due, if there is one.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.pending, self.last_sent) {
            (true, Some(t)) => Some(t + self.min_interval),
            _ => None,
        }
    }

    /// Returns `true` when the deferred request must go out now.
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        match self.poll_timeout() {
            Some(due) if now >= due => {
                self.last_sent = Some(now);
                self.pending = false;
                true
            }
            _ => false,
        }
    }

    /// A keyframe arrived from the caster: whoever was waiting has it now.
    pub fn keyframe_seen(&mut self) {
        self.pending = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn first_request_goes_out_at_once() {
        let t0 = Instant::now();
        let mut gate = KeyframeGate::new(500 * MS);
        assert!(gate.request(t0));
        assert_eq!(gate.poll_timeout(), None);
    }

    #[test]
    fn burst_is_coalesced_into_one_deferred_request() {
        let t0 = Instant::now();
        let mut gate = KeyframeGate::new(500 * MS);
        assert!(gate.request(t0));
        let sent_later: usize = (1..=50)
            .map(|i| gate.request(t0 + i * 5 * MS))
            .filter(|&sent| sent)
            .count();
        assert_eq!(sent_later, 0, "requests inside the interval must wait");
        assert_eq!(gate.poll_timeout(), Some(t0 + 500 * MS));
        assert!(!gate.handle_timeout(t0 + 499 * MS));
        assert!(gate.handle_timeout(t0 + 500 * MS));
        assert!(
            !gate.handle_timeout(t0 + 501 * MS),
            "the deferred request goes out once"
        );
        assert_eq!(gate.poll_timeout(), None);
    }

    #[test]
    fn keyframe_cancels_the_deferred_request() {
        let t0 = Instant::now();
        let mut gate = KeyframeGate::new(500 * MS);
        assert!(gate.request(t0));
        assert!(!gate.request(t0 + 10 * MS));
        gate.keyframe_seen();
        assert_eq!(gate.poll_timeout(), None);
        assert!(!gate.handle_timeout(t0 + 600 * MS));
    }

    #[test]
    fn request_after_the_interval_goes_out_at_once() {
        let t0 = Instant::now();
        let mut gate = KeyframeGate::new(500 * MS);
        assert!(gate.request(t0));
        assert!(gate.request(t0 + 500 * MS));
        assert!(!gate.request(t0 + 600 * MS));
        assert_eq!(gate.poll_timeout(), Some(t0 + 1000 * MS));
    }
}
