//! Bounded randomized runs over what the SFU reads from the network: any
//! datagram from anyone, and any offer. Seeded, so a failure replays
//! (`VESSEL_FUZZ_SEED=<n>`); the panic counter must stay at zero — a panic
//! is isolated to its session in production, here it is a bug.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

fn rng() -> (StdRng, u64) {
    let seed = std::env::var("VESSEL_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    (StdRng::seed_from_u64(seed), seed)
}

/// A browser-like offer: audio and simulcast video, BUNDLE, trickle.
const OFFER: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
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
a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\na=sendonly\r\na=msid:- v\r\na=rtcp-mux\r\n\
a=rtcp-rsize\r\na=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack\r\na=rtcp-fb:96 nack pli\r\n\
a=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\na=rid:h send\r\na=rid:l send\r\na=simulcast:send h;l\r\n";

/// A damaged copy of `text`: lines dropped, repeated or swapped, bytes
/// changed, numbers made extreme, the end cut.
fn mutate(rng: &mut StdRng, text: &str) -> String {
    let mut lines: Vec<String> = text.split("\r\n").map(str::to_owned).collect();
    for _ in 0..rng.random_range(1..6) {
        if lines.is_empty() {
            break;
        }
        let i = rng.random_range(0..lines.len());
        match rng.random_range(0..7) {
            0 => {
                lines.remove(i);
            }
            1 => {
                let l = lines[i].clone();
                lines.insert(rng.random_range(0..lines.len()), l);
            }
            2 => {
                let j = rng.random_range(0..lines.len());
                lines.swap(i, j);
            }
            3 => {
                let mut bytes = lines[i].clone().into_bytes();
                if !bytes.is_empty() {
                    let k = rng.random_range(0..bytes.len());
                    bytes[k] = rng.random_range(0x20..0x7f);
                }
                lines[i] = String::from_utf8_lossy(&bytes).into_owned();
            }
            4 => {
                let extreme = ["0", "-1", "65536", "4294967296", "99999999999999999999", ""];
                let n = extreme[rng.random_range(0..extreme.len())];
                lines[i] = lines[i]
                    .split(' ')
                    .map(|w| {
                        if w.bytes().all(|b| b.is_ascii_digit()) && !w.is_empty() {
                            n
                        } else {
                            w
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" ");
            }
            5 => {
                let cut = rng.random_range(0..=lines[i].len());
                let at = lines[i].floor_char_boundary(cut);
                lines[i].truncate(at);
            }
            _ => {
                let junk: String = (0..rng.random_range(1..40))
                    .map(|_| rng.random_range(0x20u8..0x7f) as char)
                    .collect();
                lines.insert(i, format!("a={junk}"));
            }
        }
    }
    lines.join("\r\n")
}

#[test]
fn damaged_offers_are_refused_or_answered_never_a_panic() {
    let (mut rng, seed) = rng();
    let setup = SfuConfig::new(vec!["127.0.0.1:5000".parse().unwrap()]).setup();
    let now = Instant::now();
    let (mut answered, mut refused) = (0, 0);
    for i in 0..400 {
        let offer = mutate(&mut rng, OFFER);
        let role = if i % 2 == 0 { Role::Cast } else { Role::Play };
        let ran = std::panic::catch_unwind(|| {
            super::super::setup::negotiate(&setup, "show", role, false, &offer, now).is_ok()
        });
        match ran {
            Ok(true) => answered += 1,
            Ok(false) => refused += 1,
            Err(_) => panic!("seed {seed}: offer {i} panicked:\n{offer}"),
        }
    }
    // Both outcomes are exercised: the damage is neither always fatal nor
    // always harmless.
    assert!(
        answered > 20 && refused > 20,
        "seed {seed}: {answered} answered, {refused} refused"
    );
}

/// A datagram of one of the kinds the SFU demultiplexes (RFC 7983), with
/// random contents, or a damaged STUN binding request naming `ufrag`.
fn datagram(rng: &mut StdRng, ufrag: &str) -> Vec<u8> {
    let len = rng.random_range(0..1300);
    let mut d: Vec<u8> = (0..len).map(|_| rng.random()).collect();
    match rng.random_range(0..5) {
        // STUN with a plausible header and USERNAME, then garbage.
        0 => {
            let user = format!("{ufrag}:remote");
            let mut m = vec![0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42];
            m.extend((0..12).map(|_| rng.random::<u8>()));
            m.extend([0x00, 0x06, 0, user.len() as u8]);
            m.extend(user.as_bytes());
            while m.len() % 4 != 0 {
                m.push(0);
            }
            m.extend(d.iter().take(rng.random_range(0..64)));
            let body = (m.len() - 20) as u16;
            m[2..4].copy_from_slice(&body.to_be_bytes());
            d = m;
        }
        1 if !d.is_empty() => d[0] = rng.random_range(20..64), // DTLS
        2 if !d.is_empty() => d[0] = rng.random_range(128..192), // RTP/RTCP
        3 if d.len() > 1 => {
            d[0] = 0x80;
            d[1] = rng.random_range(192..224); // RTCP packet types
        }
        _ => {}
    }
    d
}

#[test]
fn random_datagrams_from_anyone_never_panic_nor_disturb_sessions() {
    let (mut rng, seed) = rng();
    let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
    let mut config = SfuConfig::new(vec![local]);
    config.ice_tcp = true;
    let mut sfu = Sfu::new(config);
    let now = Instant::now();
    let viewer = sfu
        .join(
            "show",
            Role::Play,
            &OFFER
                .replace("sendonly", "recvonly")
                .replace("a=simulcast:send h;l\r\n", "")
                .replace("a=rid:h send\r\na=rid:l send\r\n", ""),
            now,
        )
        .unwrap_or_else(|e| panic!("a viewer: {e}"));
    let ufrag = sfu.peers[&viewer.peer].ufrag.clone();
    let mut t = now;
    for i in 0..20_000 {
        let from = SocketAddr::from((
            [127, 0, 0, rng.random_range(1..4)],
            rng.random_range(1000..1010),
        ));
        let proto = if i % 7 == 0 {
            Protocol::Tcp
        } else {
            Protocol::Udp
        };
        let d = datagram(&mut rng, &ufrag);
        sfu.handle_receive(t, proto, from, local, &d);
        if i % 100 == 0 {
            t += Duration::from_millis(10);
            sfu.handle_timeout(t);
        }
        while sfu.poll_transmit().is_some() {}
        while sfu.poll_event().is_some() {}
    }
    assert_eq!(sfu.stats().peer_panics, 0, "seed {seed}");
    assert!(
        sfu.peers.contains_key(&viewer.peer),
        "seed {seed}: the session is still there"
    );
    assert!(
        sfu.peers[&viewer.peer].addrs.is_empty(),
        "seed {seed}: no forged check moved the session anywhere"
    );
}

/// Found by the `sdp_offer` fuzz target (its randomized run, 30 000
/// inputs, `src/fuzzing/tests.rs`): a viewer's offer mapping
/// payload type 108 to H.264 without parameters in its audio m-line and to
/// H.264 with them in its video m-line made str0m 0.25 panic ("Pt locked
/// multiple times"). `setup::prepare` turned that into a vague refusal;
/// now the offer is refused before str0m sees it, with the reason.
#[test]
fn an_offer_giving_a_payload_type_two_meanings_is_refused_not_a_panic() {
    let offer = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=recvonly\r\n\
        a=rtpmap:108 H264/90000\r\na=rtpmap:111 opus/48000/2\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96 127 124 108 123\r\n\
        a=ice-ufrag:FkCtvh4VBs1AMN7I\r\na=ice-pwd:FYRrp6qVByo6QpalVqPUko\r\n\
        a=fingerprint:sha-256 93:AD:B6:28:36:22:81:BF:29:0B:E8:2F:48:D3:BE:14:E8:C4:4A:CD:9E:A8:11:C8:E3:8A:DC:BE:79:49:BE:C0\r\n\
        a=mid:1\r\na=recvonly\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:127 H264/90000\r\n\
        a=rtpmap:124 H264/90000\r\na=rtpmap:108 H264/90000\r\n\
        a=fmtp:108 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
        a=rtpmap:123 H264/90000\r\n";
    let setup = SfuConfig::new(vec!["127.0.0.1:5000".parse().unwrap()]).setup();
    for role in [Role::Play, Role::Cast] {
        let offer = match role {
            Role::Play => offer.to_string(),
            Role::Cast => offer.replace("recvonly", "sendonly"),
        };
        match super::super::setup::negotiate(&setup, "show", role, false, &offer, Instant::now()) {
            Err(JoinError::Unusable(why)) => assert!(why.contains("payload type 108"), "{why}"),
            Err(e) => panic!("{role}: refused for another reason: {e}"),
            Ok(_) => panic!("{role}: accepted"),
        }
    }
}
