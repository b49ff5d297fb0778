//! SDP from clients: WHIP and WHEP offers, trickled candidates (WHIP/WHEP
//! PATCH), and a SkyWay room member's SDP (the mesh media check and an SFU
//! member's answer).

use std::time::Instant;

use super::sfu::{drain, new_sfu, viewer_offer, with_mids};
use crate::sfu::{Role, setup};

/// The first byte picks what the rest (UTF-8 text, as the HTTP and
/// socket.io faces require) is:
/// - 0, 1: a WHIP (cast) or WHEP (play) offer, negotiated as the runtime
///   does off the media thread;
/// - 2: a trickle-ice-sdpfrag for a viewer's session;
/// - 3: a SkyWay peer's SDP: checked for media (mesh rooms) and given as
///   the answer to an SFU room member's offer (`$MID<n>` in it: the
///   offer's n-th mid).
///
/// `setup::negotiate` is called bare: the runtime's `prepare` turns a panic
/// inside str0m into a refusal, but here it must be seen.
pub fn sdp_offer(data: &[u8]) {
    let Some((&mode, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let now = Instant::now();
    match mode % 4 {
        mode @ (0 | 1) => {
            let role = if mode == 0 { Role::Cast } else { Role::Play };
            let setup = new_sfu().setup();
            let _ = setup::negotiate(&setup, "show", role, false, text, now);
        }
        2 => {
            let mut sfu = new_sfu();
            let joined = sfu
                .join("show", Role::Play, &viewer_offer(), now)
                .expect("the canned viewer offer is accepted");
            if let Ok(candidates) = crate::http::session::parse_candidates(text) {
                let _ = sfu.add_remote_candidates("show", Role::Play, joined.peer, candidates, now);
            }
            sfu.handle_timeout(now);
            drain(&mut sfu);
            assert_eq!(sfu.stats().peer_panics, 0, "a session panicked");
        }
        _ => {
            let _ = crate::skyway::sdp::sends_media(text);
            let mut sfu = new_sfu();
            let offered = sfu
                .open_member("room", &[], now)
                .expect("a member session opens");
            let answer = with_mids(text, &offered.offer);
            let _ = sfu.member_answer(offered.peer, &answer, now);
            sfu.handle_timeout(now);
            drain(&mut sfu);
            assert_eq!(sfu.stats().peer_panics, 0, "a session panicked");
        }
    }
}
