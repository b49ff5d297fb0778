//! Simulcast layer choice for one viewer: the best layer its link carries,
//! by the send-side bandwidth estimate, with hysteresis so that a noisy
//! estimate does not make the picture flap.
//!
//! The selector only names a layer. Switching happens at the next keyframe
//! of that layer (see `forward.rs`), so the viewer's decoder never sees a
//! delta frame from a stream it has not started.

use std::time::{Duration, Instant};

/// A layer as the selector sees it. Layers are passed lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerInfo {
    /// Stable across reorderings (the layer's SSRC).
    pub id: u32,
    /// Bits per second the caster sends on this layer.
    pub bitrate: u64,
    /// The caster is sending it (browsers drop layers under CPU or
    /// bandwidth pressure).
    pub active: bool,
}

/// The highest layer a viewer wants. `Auto` lets the link decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Preference {
    #[default]
    Auto,
    High,
    Medium,
    Low,
}

impl Preference {
    /// The index of the highest layer allowed out of `n`.
    fn cap(self, n: usize) -> usize {
        let top = n.saturating_sub(1);
        match self {
            Preference::Auto | Preference::High => top,
            Preference::Medium => top.saturating_sub(1),
            Preference::Low => 0,
        }
    }
}

/// What sending a layer takes besides its media bitrate: RTP and SRTP
/// headers and retransmissions (a share), and the audio that goes with it.
const OVERHEAD: f64 = 1.1;
const AUDIO_ALLOWANCE: f64 = 50_000.0;
/// The estimate must exceed a higher layer's cost by this much before
/// moving up, so that the move does not itself congest the link.
const UP_HEADROOM: f64 = 1.15;

/// Bits per second a viewer's link needs to carry a layer of `bitrate`.
fn cost(bitrate: u64) -> f64 {
    bitrate as f64 * OVERHEAD + AUDIO_ALLOWANCE
}
/// After the estimate forced a move down, moving up again waits until the
/// estimate has stayed high this long: no flapping around a congested link.
const UP_HOLD: Duration = Duration::from_secs(2);
/// How long a move down makes later moves up wait for `UP_HOLD`. Without a
/// recent congestion, a viewer goes up as soon as its estimate allows (a
/// caster's layers come up one by one; a viewer should follow at once).
const CONGESTION_MEMORY: Duration = Duration::from_secs(15);
/// The estimate must stay below the current layer's bitrate this long
/// before moving down: short dips are noise, long ones congestion.
const DOWN_HOLD: Duration = Duration::from_millis(600);

#[derive(Debug, Default)]
pub struct LayerSelector {
    preference: Preference,
    estimate: Option<u64>,
    /// The id of the layer chosen last.
    current: Option<u32>,
    up_since: Option<Instant>,
    down_since: Option<Instant>,
    /// When the estimate last forced a move down.
    congested_at: Option<Instant>,
    /// The last change of layer was a move down forced by the estimate.
    moved_down: bool,
    /// The estimate when the viewer capped its layer: what its link
    /// carried before it chose to take less. While capped, the estimate
    /// sinks to what is sent, so raising the cap would otherwise wait for
    /// it to climb back (seconds, or longer on a busy machine).
    before_cap: Option<u64>,
}

impl LayerSelector {
    /// Sets the viewer's cap. Raising it returns the estimate the link
    /// had before it was lowered, when that is higher than today's: the
    /// bandwidth estimator should start again from there, as it does for
    /// a viewer that joins (and it comes down if the link no longer
    /// carries it).
    pub fn set_preference(&mut self, p: Preference) -> Option<u64> {
        let rank = |p: Preference| p.cap(3);
        let old = std::mem::replace(&mut self.preference, p);
        self.up_since = None;
        if rank(p) < rank(old) {
            self.before_cap = self.before_cap.max(self.estimate);
            return None;
        }
        if rank(p) == rank(old) {
            return None;
        }
        // Asked for more: no waiting out an earlier congestion first. If
        // the link is still full, the estimate says so within DOWN_HOLD.
        self.congested_at = None;
        let restore = self.before_cap.filter(|e| Some(*e) > self.estimate);
        if rank(p) == rank(Preference::Auto) {
            self.before_cap = None;
        }
        if restore.is_some() {
            self.estimate = restore;
        }
        restore
    }

    /// The latest send-side bandwidth estimate towards this viewer.
    pub fn set_estimate(&mut self, bps: u64) {
        self.estimate = Some(bps);
    }

    /// The id of the layer chosen last.
    pub fn current(&self) -> Option<u32> {
        self.current
    }

    /// The last change of layer was a move down because the link is full:
    /// the old layer should stop at once, so the new one's keyframe is not
    /// stuck behind it.
    pub fn moved_down(&self) -> bool {
        self.moved_down
    }

    /// Forgets the last choice: the next one is made afresh, without hold.
    /// For a choice that never took effect (its keyframe has not come yet),
    /// there is nothing to be steady about.
    pub fn forget_choice(&mut self) {
        self.current = None;
        self.up_since = None;
        self.down_since = None;
    }

    /// Chooses the layer to send now out of `layers` (lowest first) and
    /// returns its id.
    pub fn select(&mut self, layers: &[LayerInfo], now: Instant) -> Option<u32> {
        let current = self
            .current
            .and_then(|id| layers.iter().position(|l| l.id == id));
        let congested_before = self.congested_at;
        let choice = self.choose(layers, current, now)?;
        let id = layers[choice].id;
        if self.current != Some(id) {
            self.up_since = None;
            self.down_since = None;
            self.current = Some(id);
            self.moved_down = self.congested_at != congested_before;
        }
        Some(id)
    }

    fn choose(
        &mut self,
        layers: &[LayerInfo],
        current: Option<usize>,
        now: Instant,
    ) -> Option<usize> {
        let cap = self.preference.cap(layers.len());
        let usable: Vec<usize> = (0..layers.len())
            .filter(|&i| layers[i].active && i <= cap)
            .collect();
        let Some(&lowest) = usable.first() else {
            // Nothing allowed is being sent: keep what we had, if it exists.
            return current;
        };
        let fits = |i: usize, headroom: f64| {
            self.estimate
                .is_none_or(|e| e as f64 >= cost(layers[i].bitrate) * headroom)
        };
        // The best layer the estimate carries right now.
        let best_fit = usable
            .iter()
            .rev()
            .copied()
            .find(|&i| fits(i, 1.0))
            .unwrap_or(lowest);

        let choice = match current {
            // First choice, or the current layer is gone or not allowed:
            // move at once.
            None => best_fit,
            Some(c) if !usable.contains(&c) => best_fit,
            Some(c) if !fits(c, 1.0) => {
                self.up_since = None;
                let since = *self.down_since.get_or_insert(now);
                if now.duration_since(since) >= DOWN_HOLD && best_fit < c {
                    self.congested_at = Some(now);
                    best_fit
                } else {
                    c
                }
            }
            Some(c) => {
                self.down_since = None;
                // The highest layer above that the estimate carries with room.
                let higher = usable
                    .iter()
                    .rev()
                    .copied()
                    .find(|&i| i > c && fits(i, UP_HEADROOM));
                let hold = match self.congested_at {
                    Some(t) if now.duration_since(t) < CONGESTION_MEMORY => UP_HOLD,
                    _ => Duration::ZERO,
                };
                match higher {
                    Some(h) => {
                        let since = *self.up_since.get_or_insert(now);
                        if now.duration_since(since) >= hold {
                            h
                        } else {
                            c
                        }
                    }
                    _ => {
                        self.up_since = None;
                        c
                    }
                }
            }
        };
        Some(choice)
    }

    /// The bitrate worth probing for: enough for the next layer up, so the
    /// estimate can grow into it.
    pub fn desired_bitrate(&self, layers: &[LayerInfo]) -> Option<u64> {
        let c = layers.iter().position(|l| Some(l.id) == self.current)?;
        let cap = self.preference.cap(layers.len());
        let next = (c + 1..=cap).find(|&i| layers.get(i).is_some_and(|l| l.active));
        let layer = layers.get(next.unwrap_or(c))?;
        Some((cost(layer.bitrate) * UP_HEADROOM).round() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);

    fn layers() -> Vec<LayerInfo> {
        // Ids equal positions here, to keep the assertions readable.
        [100_000, 300_000, 900_000]
            .into_iter()
            .enumerate()
            .map(|(id, bitrate)| LayerInfo {
                id: id as u32,
                bitrate,
                active: true,
            })
            .collect()
    }

    /// Feeds `estimate` every 100 ms for `d`, returning the choices.
    fn run(
        s: &mut LayerSelector,
        l: &[LayerInfo],
        t: &mut Instant,
        estimate: u64,
        d: Duration,
    ) -> Vec<u32> {
        let mut out = vec![];
        let end = *t + d;
        while *t < end {
            *t += 100 * MS;
            s.set_estimate(estimate);
            out.push(s.select(l, *t).unwrap());
        }
        out
    }

    #[test]
    fn starts_on_the_best_layer_the_estimate_carries() {
        let mut s = LayerSelector::default();
        s.set_estimate(400_000);
        assert_eq!(s.select(&layers(), Instant::now()), Some(1));
        let mut s = LayerSelector::default();
        assert_eq!(
            s.select(&layers(), Instant::now()),
            Some(2),
            "no estimate yet: top"
        );
    }

    #[test]
    fn moves_down_after_a_sustained_drop_and_up_after_a_longer_rise() {
        let l = layers();
        let mut t = Instant::now();
        let mut s = LayerSelector::default();
        assert_eq!(
            run(&mut s, &l, &mut t, 2_000_000, 500 * MS).last(),
            Some(&2)
        );

        let down = run(&mut s, &l, &mut t, 450_000, 2000 * MS);
        let at = down.iter().position(|&c| c != 2).unwrap();
        assert_eq!(down[at], 1, "drops to the layer that fits");
        assert!(s.moved_down());
        assert!((5..=7).contains(&at), "after ~600 ms, not at once: {at}");

        let up = run(&mut s, &l, &mut t, 2_000_000, 4000 * MS);
        let at = up.iter().position(|&c| c != 1).unwrap();
        assert_eq!(up[at], 2);
        assert!((19..=21).contains(&at), "after ~2 s: {at}");
    }

    #[test]
    fn without_congestion_it_moves_up_as_soon_as_the_estimate_allows() {
        let mut l = layers();
        let t = Instant::now();
        let mut s = LayerSelector::default();
        s.set_estimate(2_000_000);
        // The caster's layers come up one by one.
        l[1].active = false;
        l[2].active = false;
        assert_eq!(s.select(&l, t), Some(0));
        l[1].active = true;
        l[2].active = true;
        assert_eq!(s.select(&l, t), Some(2));
    }

    #[test]
    fn a_layer_fits_only_with_room_for_audio_and_overhead() {
        let mut s = LayerSelector::default();
        // 350 kbit/s carries 300 kbit/s of video on paper, not with audio.
        s.set_estimate(350_000);
        assert_eq!(s.select(&layers(), Instant::now()), Some(0));
    }

    #[test]
    fn a_noisy_estimate_does_not_flap() {
        let l = layers();
        let mut t = Instant::now();
        let mut s = LayerSelector::default();
        s.set_estimate(1_300_000);
        s.select(&l, t);
        // Around the top layer's bitrate, dipping below it for 300 ms at a time.
        let mut switches = 0;
        let mut last = s.current();
        for i in 0..200 {
            t += 100 * MS;
            let e = if (i / 3) % 2 == 0 { 1_100_000 } else { 700_000 };
            s.set_estimate(e);
            let c = s.select(&l, t);
            if c != last {
                switches += 1;
                last = c;
            }
        }
        assert_eq!(switches, 0, "brief dips under 600 ms never switch");
    }

    #[test]
    fn a_layer_the_caster_stops_sending_is_left_at_once() {
        let mut l = layers();
        let t = Instant::now();
        let mut s = LayerSelector::default();
        s.set_estimate(5_000_000);
        assert_eq!(s.select(&l, t), Some(2));
        l[2].active = false;
        assert_eq!(s.select(&l, t), Some(1));
        l[2].active = true;
        assert_eq!(s.select(&l, t), Some(2), "no congestion: back up at once");
    }

    #[test]
    fn the_viewer_can_cap_the_layer() {
        let l = layers();
        let t = Instant::now();
        let mut s = LayerSelector::default();
        s.set_estimate(5_000_000);
        for (p, want) in [
            (Preference::Low, 0u32),
            (Preference::Medium, 1),
            (Preference::High, 2),
        ] {
            s.set_preference(p);
            assert_eq!(s.select(&l, t), Some(want), "{p:?}");
        }
        // Two layers: medium is the lower one.
        s.set_preference(Preference::Medium);
        assert_eq!(s.select(&l[..2], t), Some(0));
    }

    #[test]
    fn raising_the_cap_goes_back_to_what_the_link_carried_before() {
        let l = layers();
        let mut t = Instant::now();
        let mut s = LayerSelector::default();
        s.set_estimate(2_500_000);
        assert_eq!(s.select(&l, t), Some(2));
        assert_eq!(
            s.set_preference(Preference::Low),
            None,
            "lowering restores nothing"
        );
        assert_eq!(s.select(&l, t), Some(0));
        // Sending the low layer only, the estimate sinks towards its rate.
        assert_eq!(run(&mut s, &l, &mut t, 250_000, 3 * SEC), vec![0; 30]);
        // Even shortly after a congestion, which makes automatic moves up
        // wait (UP_HOLD): the viewer asked.
        s.congested_at = Some(t);
        assert_eq!(s.set_preference(Preference::Medium), Some(2_500_000));
        assert_eq!(s.select(&l, t), Some(1), "medium at once");
        s.set_estimate(300_000);
        assert_eq!(s.set_preference(Preference::Auto), Some(2_500_000));
        assert_eq!(s.select(&l, t), Some(2), "the top at once");
        // Back to automatic, the saved estimate is spent.
        s.set_estimate(300_000);
        assert_eq!(s.set_preference(Preference::Low), None);
        s.set_estimate(250_000);
        assert_eq!(
            s.set_preference(Preference::Auto),
            Some(300_000),
            "only what the link carried when the cap was set this time"
        );
        s.set_estimate(900_000);
        s.set_preference(Preference::Low);
        s.set_estimate(1_000_000);
        assert_eq!(
            s.set_preference(Preference::High),
            None,
            "today's is higher"
        );
    }

    #[test]
    fn follows_its_layer_when_the_order_changes() {
        let mut l = layers();
        let t = Instant::now();
        let mut s = LayerSelector::default();
        s.set_estimate(400_000);
        assert_eq!(s.select(&l, t), Some(1));
        // Measurements reorder the layers: the chosen one is now first, and
        // the one above it is out of the estimate's reach.
        l.swap(0, 1);
        l[0].bitrate = 300_000;
        l[1].bitrate = 350_000;
        assert_eq!(s.select(&l, t), Some(1), "still the same layer, by id");
    }

    #[test]
    fn probes_for_the_next_layer_up() {
        let l = layers();
        let mut s = LayerSelector::default();
        s.set_estimate(400_000);
        s.select(&l, Instant::now());
        // The top layer's cost (900 k × 1.1 + 50 k audio) with 15 % to spare.
        assert_eq!(s.desired_bitrate(&l), Some(1_196_000));
        s.set_preference(Preference::Medium);
        assert_eq!(
            s.desired_bitrate(&l),
            Some(437_000),
            "no probing past the cap"
        );
    }
}
