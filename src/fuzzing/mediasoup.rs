//! The socket.io face for mediasoup-client: its JSON requests, read by
//! `http::mediasoup::params` and carried out on the SFU's direct API.

use serde_json::Value;
use str0m::media::MediaKind;

use super::sfu::{drain, new_sfu};
use super::{Records, elapsed};
use crate::http::mediasoup::params;
use crate::sfu::Role;

/// Records: flags bits 0-1 say which request the body (JSON) is, as
/// `http::mediasoup`'s session handles it:
/// - 0: `produce` on the caster's transport;
/// - 1: `connect*Transport` (bit 2: the viewer's transport);
/// - 2: `consume` on the viewer's transport;
/// - 3: time passes (the body says how long) and the SFU's timers run.
pub fn mediasoup_request(data: &[u8]) {
    let mut sfu = new_sfu();
    let mut now = std::time::Instant::now();
    let cast = sfu
        .open_direct("show", Role::Cast, now)
        .expect("a caster transport opens")
        .peer;
    let play = sfu
        .open_direct("show", Role::Play, now)
        .expect("a viewer transport opens")
        .peer;
    drain(&mut sfu);
    for (flags, body) in Records::new(data) {
        if flags & 3 == 3 {
            now += elapsed(body);
            sfu.handle_timeout(now);
            drain(&mut sfu);
            continue;
        }
        let Ok(arg) = serde_json::from_slice::<Value>(body) else {
            continue;
        };
        match flags & 3 {
            0 => {
                if let Ok(p) = params::produce(&arg) {
                    let _ = sfu.produce(cast, p, now);
                }
            }
            1 => {
                let peer = if flags & 4 == 0 { cast } else { play };
                if let Ok((fingerprint, false)) = params::dtls(&arg["dtlsParameters"]) {
                    let _ = sfu.connect_direct(peer, fingerprint, now);
                }
            }
            _ => {
                let caps = match arg.get("rtpCapabilities") {
                    Some(c) => c,
                    None if arg.get("codecs").is_some() => &arg,
                    None => continue,
                };
                let device_pts = params::device_pts(caps);
                let mut producers = sfu.producers("show");
                producers.sort_by_key(|p| p.kind == MediaKind::Audio);
                let wanted = arg.get("producerId").and_then(Value::as_str);
                let producer = match wanted {
                    Some(id) => producers.into_iter().find(|p| p.id == id),
                    None => producers.into_iter().next(),
                };
                if let Some(producer) = producer
                    && let Ok(consumer) = sfu.consume(play, producer, &device_pts, now)
                {
                    let _ = params::consumer(&consumer, "stream", caps);
                }
            }
        }
        drain(&mut sfu);
    }
    assert_eq!(sfu.stats().peer_panics, 0, "a session panicked");
}
