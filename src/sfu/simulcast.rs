//! The caster's video layers: which simulcast streams arrive, how fast, and
//! whether they are still coming. A caster without simulcast has one layer.

use std::time::{Duration, Instant};

use str0m::media::Rid;
use str0m::rtp::Ssrc;

use super::keyframe::KeyframeGate;
use super::layer::LayerInfo;

/// A layer that sent nothing for this long is inactive (browsers drop the
/// top layer under CPU or bandwidth pressure). Its viewers see a freeze this
/// long before they are moved, so it is short; a camera layer sends a frame
/// every 33 ms.
const INACTIVE_AFTER: Duration = Duration::from_millis(600);
/// Bitrates are measured over windows of this length.
const WINDOW: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub struct InLayer {
    pub ssrc: Ssrc,
    /// Order before enough has been measured: from the rid's name.
    hint: u32,
    pub keyframes: KeyframeGate,
    last_packet: Instant,
    window_start: Instant,
    window_bytes: u64,
    /// Bits per second over the last full window, once there is one.
    bitrate: Option<u64>,
}

impl InLayer {
    pub fn active(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_packet) < INACTIVE_AFTER
    }

    pub fn bitrate(&self) -> u64 {
        self.bitrate.unwrap_or(0)
    }
}

#[derive(Debug)]
pub struct Layers {
    keyframe_interval: Duration,
    /// Lowest first (see [`Layers::refresh`]).
    layers: Vec<InLayer>,
    /// What viewers were last told, to notice changes.
    published: Vec<(u32, bool)>,
}

impl Layers {
    pub fn new(keyframe_interval: Duration) -> Self {
        Self {
            keyframe_interval,
            layers: Vec::new(),
            published: Vec::new(),
        }
    }

    /// Notes a video packet of `ssrc`. Returns true for the first packet of
    /// a new layer.
    pub fn on_packet(&mut self, ssrc: Ssrc, rid: Option<Rid>, bytes: usize, now: Instant) -> bool {
        let mut new = false;
        let layer = match self.layers.iter_mut().position(|l| l.ssrc == ssrc) {
            Some(i) => &mut self.layers[i],
            None => {
                new = true;
                self.layers.push(InLayer {
                    ssrc,
                    hint: rid_hint(rid, self.layers.len()),
                    keyframes: KeyframeGate::new(self.keyframe_interval),
                    last_packet: now,
                    window_start: now,
                    window_bytes: 0,
                    bitrate: None,
                });
                self.sort();
                let i = self.layers.iter().position(|l| l.ssrc == ssrc);
                &mut self.layers[i.unwrap_or(0)]
            }
        };
        layer.last_packet = now;
        layer.window_bytes += bytes as u64;
        let elapsed = now.saturating_duration_since(layer.window_start);
        if elapsed >= WINDOW {
            layer.bitrate = Some(layer.window_bytes * 8 * 1000 / elapsed.as_millis().max(1) as u64);
            layer.window_bytes = 0;
            layer.window_start = now;
        }
        new
    }

    pub fn get_mut(&mut self, ssrc: u32) -> Option<&mut InLayer> {
        self.layers.iter_mut().find(|l| *l.ssrc == ssrc)
    }

    /// Re-sorts by measured bitrate and returns true when what viewers see
    /// (order or activity) changed.
    pub fn refresh(&mut self, now: Instant) -> bool {
        self.sort();
        let view: Vec<(u32, bool)> = self
            .layers
            .iter()
            .map(|l| (*l.ssrc, l.active(now)))
            .collect();
        if view == self.published {
            return false;
        }
        self.published = view;
        true
    }

    /// The layers for a viewer's selector, lowest first.
    pub fn infos(&self, now: Instant) -> Vec<LayerInfo> {
        self.layers
            .iter()
            .map(|l| LayerInfo {
                id: *l.ssrc,
                bitrate: l.bitrate(),
                active: l.active(now),
            })
            .collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &InLayer> {
        self.layers.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut InLayer> {
        self.layers.iter_mut()
    }

    fn sort(&mut self) {
        let measured = self.layers.iter().all(|l| l.bitrate.is_some());
        if measured {
            self.layers.sort_by_key(|l| l.bitrate());
        } else {
            self.layers.sort_by_key(|l| l.hint);
        }
    }
}

/// The usual rid schemes, lowest first: q/h/f (quarter, half, full),
/// l/m/h (low, medium, high), r0/r1/r2 (mediasoup), 0/1/2. Unknown names
/// keep their order of arrival until bitrates are measured.
fn rid_hint(rid: Option<Rid>, arrival: usize) -> u32 {
    let unknown = 100 + arrival as u32;
    let Some(rid) = rid else {
        return unknown;
    };
    match &*rid {
        "q" | "l" | "r0" | "0" | "low" => 0,
        "m" | "r1" | "1" | "mid" => 1,
        // "h" is half in q/h/f and high in l/m/h: in between either way.
        "h" => 1,
        "f" | "r2" | "2" | "high" | "full" => 2,
        _ => unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Feeds `kbps` per layer for `d` in 10 ms steps.
    fn feed(layers: &mut Layers, t: &mut Instant, rates: &[(u32, &str, u64)], d: Duration) {
        let end = *t + d;
        while *t < end {
            *t += 10 * MS;
            for &(ssrc, rid, kbps) in rates {
                if kbps > 0 {
                    let bytes = (kbps * 1000 / 8 / 100) as usize;
                    layers.on_packet(ssrc.into(), Some(rid.into()), bytes, *t);
                }
            }
        }
    }

    fn order(layers: &Layers, now: Instant) -> Vec<(u32, bool)> {
        layers.infos(now).iter().map(|l| (l.id, l.active)).collect()
    }

    #[test]
    fn layers_are_ordered_by_name_then_by_measured_bitrate() {
        let mut t = Instant::now();
        let mut layers = Layers::new(500 * MS);
        // Arrive top first; names put them in order before any measurement.
        layers.on_packet(3.into(), Some("f".into()), 1000, t);
        layers.on_packet(1.into(), Some("q".into()), 100, t);
        layers.on_packet(2.into(), Some("h".into()), 300, t);
        assert_eq!(order(&layers, t), [(1, true), (2, true), (3, true)]);

        // Unknown names: measurement decides.
        let mut other = Layers::new(500 * MS);
        feed(
            &mut other,
            &mut t,
            &[(7, "x", 900), (8, "y", 100), (9, "z", 300)],
            600 * MS,
        );
        assert!(other.refresh(t));
        assert_eq!(order(&other, t), [(8, true), (9, true), (7, true)]);
        let rates: Vec<u64> = other.infos(t).iter().map(|l| l.bitrate / 1000).collect();
        assert!(
            (90..=110).contains(&rates[0]) && (850..=950).contains(&rates[2]),
            "{rates:?}"
        );
        assert!(!other.refresh(t), "nothing changed since");
    }

    #[test]
    fn a_layer_that_stops_is_marked_inactive() {
        let mut t = Instant::now();
        let mut layers = Layers::new(500 * MS);
        feed(
            &mut layers,
            &mut t,
            &[(1, "q", 100), (2, "h", 300), (3, "f", 900)],
            600 * MS,
        );
        layers.refresh(t);
        feed(
            &mut layers,
            &mut t,
            &[(1, "q", 100), (2, "h", 300)],
            700 * MS,
        );
        assert!(layers.refresh(t), "the change is reported");
        assert_eq!(order(&layers, t), [(1, true), (2, true), (3, false)]);
    }
}
