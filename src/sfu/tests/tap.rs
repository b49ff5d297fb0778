//! A live's caster packets handed to a consumer off the media thread.

use std::sync::{Arc, Mutex};

use super::*;
use crate::sfu::tap::{TapPacket, TapSink};

struct Collect {
    got: Arc<Mutex<Vec<TapPacket>>>,
    /// Runs it takes before it says it is gone.
    runs_left: usize,
}

impl TapSink for Collect {
    fn offer(&mut self, packets: Vec<TapPacket>) -> bool {
        if self.runs_left == 0 {
            return false;
        }
        self.runs_left -= 1;
        self.got.lock().unwrap().extend(packets);
        true
    }
}

#[test]
fn a_tap_gets_the_casters_packets_in_order_until_it_is_gone() {
    let mut net = Net::new();
    let c = net.join("show", Role::Cast);
    let got = Arc::new(Mutex::new(Vec::new()));
    net.sfus[0].set_tap(
        "show",
        Some(Box::new(Collect {
            got: got.clone(),
            runs_left: 20,
        })),
    );
    // Another live's tap gets nothing of this one.
    let other = Arc::new(Mutex::new(Vec::new()));
    net.sfus[0].set_tap(
        "other",
        Some(Box::new(Collect {
            got: other.clone(),
            runs_left: usize::MAX,
        })),
    );
    net.run(Duration::from_millis(2000));
    let got = got.lock().unwrap().clone();
    // 20 runs (a run is a frame here), then the consumer said it was gone.
    let video: Vec<&TapPacket> = got.iter().filter(|p| p.kind == MediaKind::Video).collect();
    assert_eq!(video.len(), 40, "20 frames of two packets");
    assert!(video.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    assert!(
        video
            .iter()
            .all(|p| p.caster == net.clients[c].peer && p.codec == Codec::Vp8)
    );
    assert_eq!(video.iter().filter(|p| p.marker).count(), 20);
    assert!(other.lock().unwrap().is_empty());
    assert!(!net.sfus[0].taps.contains_key("show"), "removed once gone");
}
