//! The SFU's media port: its demultiplexing (RFC 7983: STUN, DTLS,
//! RTP/RTCP by first byte, then the session by ICE username or address)
//! and `handle_receive` down into the session's `Rtc`.

use std::net::SocketAddr;
use std::time::Instant;

use str0m::net::Protocol;
use stun_types::attribute::Username;
use stun_types::message::{BINDING, ShortTermCredentials};

use super::{Records, elapsed, stun};
use crate::sfu::{Role, Sfu, SfuConfig};

/// The media port.
pub(super) const LOCAL: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5000);

/// Where datagrams come from: the flags choose.
const SOURCES: [&str; 4] = [
    "127.0.0.1:1000",
    "127.0.0.1:1001",
    "127.0.0.2:1000",
    "[::1]:1000",
];

/// A browser-like offer: audio and video (VP8 with RTX), BUNDLE, trickle.
/// Sendonly: a WHIP cast; [`viewer_offer`] makes the WHEP play of it.
pub(crate) const OFFER: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
a=group:BUNDLE 0 1\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 63\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=ice-options:trickle\r\n\
a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
a=setup:actpass\r\na=mid:0\r\na=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=sendonly\r\n\
a=msid:- a\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=rtcp-fb:111 transport-cc\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\na=ssrc:1 cname:x\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=ice-options:trickle\r\n\
a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
a=setup:actpass\r\na=mid:1\r\na=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a=sendonly\r\na=msid:- v\r\na=rtcp-mux\r\n\
a=rtcp-rsize\r\na=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack\r\na=rtcp-fb:96 nack pli\r\n\
a=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n";

pub(crate) fn viewer_offer() -> String {
    OFFER.replace("sendonly", "recvonly")
}

thread_local! {
    /// Making the DTLS certificate is the slow part of a config: once.
    static CONFIG: SfuConfig = {
        str0m::crypto::from_feature_flags().install_process_default();
        let mut config = SfuConfig::new(vec![LOCAL]);
        config.ice_tcp = true;
        config
    };
}

/// A fresh `Sfu` (with the shared certificate).
pub(super) fn new_sfu() -> Sfu {
    Sfu::new(CONFIG.with(Clone::clone))
}

/// Polls everything out, as the runtime does after each input.
pub(super) fn drain(sfu: &mut Sfu) {
    while sfu.poll_transmit().is_some() {}
    while sfu.poll_event().is_some() {}
    while sfu.poll_remote().is_some() {}
}

/// `a=<key>:` of an SDP.
pub(super) fn sdp_value<'a>(sdp: &'a str, key: &str) -> &'a str {
    sdp.lines()
        .find_map(|l| l.strip_prefix("a=")?.strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_default()
        .trim()
}

/// `sdp` (an answer from the input) with `$MID0`, `$MID1`, ... made the
/// mids of `offer`: str0m's mids are random, and an answer must name them.
pub(super) fn with_mids(sdp: &str, offer: &str) -> String {
    let mids: Vec<&str> = offer
        .lines()
        .filter_map(|l| l.strip_prefix("a=mid:"))
        .collect();
    let mut sdp = sdp.to_owned();
    // The longest placeholders first: `$MID1` is in `$MID10`.
    for (i, mid) in mids.iter().enumerate().rev() {
        sdp = sdp.replace(&format!("$MID{i}"), mid.trim());
    }
    sdp
}

/// Records:
/// - flags bit 0: UDP (0) or ICE-TCP (1); bits 1-2: the source address;
/// - bits 3-4: 0: the body as a datagram; 1: a Binding request for the
///   viewer's session (USERNAME `<its ufrag>:abcd`), transaction id and
///   attributes from the body, signed with its ICE password, as a browser
///   sends it; 2: the same, unsigned; 3: time passes (the body says how
///   long) and the SFU's timers run.
///
/// Everything the SFU sends or tells is drained after each record. A
/// session whose handling panicked is a failure: Vessel survives it (it
/// closes that session), but it is a bug.
pub fn sfu_datagram(data: &[u8]) {
    let mut sfu = new_sfu();
    let start = Instant::now();
    let joined = sfu
        .join("show", Role::Play, &viewer_offer(), start)
        .expect("the canned viewer offer is accepted");
    let ufrag = sdp_value(&joined.answer, "ice-ufrag").to_owned();
    let password = sdp_value(&joined.answer, "ice-pwd").to_owned();
    // `abcd`: the offer's ufrag, which str0m checks too.
    let username = Username::new(&format!("{ufrag}:abcd")).expect("a short username");
    let credentials = ShortTermCredentials::new(password).into();
    drain(&mut sfu);
    let mut now = start;
    for (flags, body) in Records::new(data) {
        let proto = if flags & 1 == 0 {
            Protocol::Udp
        } else {
            Protocol::Tcp
        };
        let source: SocketAddr = SOURCES[usize::from(flags >> 1 & 3)]
            .parse()
            .expect("a literal address");
        match flags >> 3 & 3 {
            0 => sfu.handle_receive(now, proto, source, LOCAL, body),
            kind @ (1 | 2) => {
                let integrity = (kind == 1).then_some(&credentials);
                let check = stun::request(BINDING, body, &[&username], integrity, true);
                sfu.handle_receive(now, proto, source, LOCAL, &check);
            }
            _ => {
                now += elapsed(body);
                sfu.handle_timeout(now);
            }
        }
        drain(&mut sfu);
    }
    assert_eq!(sfu.stats().peer_panics, 0, "a session panicked");
}
