//! Valid inputs for every target: what the randomized run mutates, and
//! (written by `write_seed_corpus`) the committed `fuzz/in/` corpus the
//! coverage-guided fuzzer starts from.

use std::net::SocketAddr;
use std::time::Instant;

use serde_json::{Value, json};
use str0m::change::SdpOffer;
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Input, Output, Rtc, RtcConfig};
use stun_types::attribute::AttributeWrite;
use stun_types::message::{Message, MessageWrite, MessageWriteExt, MessageWriteVec, TransactionId};
use turn_types::attribute::{ChannelNumber, Data, Lifetime, RequestedTransport, XorPeerAddress};
use turn_types::message::SEND;

use super::record;
use super::sfu::{LOCAL, OFFER, new_sfu, viewer_offer};
use crate::sfu::Role;

/// Seeds of one target: (file name, input).
pub type Seeds = Vec<(&'static str, Vec<u8>)>;

/// The seeds of `target` (a name in `fuzzing::TARGETS`).
pub fn of(target: &str) -> Seeds {
    match target {
        "sfu_datagram" => sfu_datagram(),
        "sdp_offer" => sdp_offer(),
        "turn_message" => turn_message(),
        "rfc4571" => rfc4571(),
        "peerjs_message" => peerjs_message(),
        "skyway_message" => skyway_message(),
        "chat_message" => chat_message(),
        "mediasoup_request" => mediasoup_request(),
        other => panic!("no seeds for {other}"),
    }
}

/// The harness's transaction ids: 12 bytes the fuzzer may change.
const TID: [u8; 12] = *b"fuzz-tid-001";

fn tid() -> TransactionId {
    let mut id = [0u8; 16];
    id[4..].copy_from_slice(&TID);
    TransactionId::from(u128::from_be_bytes(id))
}

/// Attributes as they are on the wire.
fn wire(attrs: &[&dyn AttributeWrite]) -> Vec<u8> {
    let mut b = Message::builder_request(stun_types::message::BINDING, MessageWriteVec::new());
    for a in attrs {
        b.add_attribute(*a).expect("room for the attributes");
    }
    b.finish()[20..].to_vec()
}

/// A raw STUN attribute: type, value (padded).
fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
    let mut a = kind.to_be_bytes().to_vec();
    a.extend((value.len() as u16).to_be_bytes());
    a.extend(value);
    while !a.len().is_multiple_of(4) {
        a.push(0);
    }
    a
}

/// A browser's ICE check attributes: PRIORITY, ICE-CONTROLLING,
/// USE-CANDIDATE.
fn check_attrs() -> Vec<u8> {
    [
        &TID[..],
        &attr(0x0024, &0x6e7f_00ffu32.to_be_bytes()),
        &attr(0x802a, &7u64.to_be_bytes()),
        &attr(0x0025, &[]),
    ]
    .concat()
}

/// A client `Rtc` that receives audio and video, with its offer.
fn client(now: Instant) -> (Rtc, String, str0m::change::SdpPendingOffer) {
    let mut rtc = RtcConfig::new().build(now);
    let addr: SocketAddr = "127.0.0.1:1000".parse().unwrap();
    rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let (offer, pending) = api.apply().unwrap();
    (rtc, offer.to_sdp_string(), pending)
}

/// What a real viewer sends the SFU until its DTLS ClientHello (which the
/// harness cannot make): its first DTLS datagram.
fn client_hello() -> Vec<u8> {
    let now = Instant::now();
    let (mut rtc, offer, pending) = client(now);
    let mut sfu = new_sfu();
    let joined = sfu.join("show", Role::Play, &offer, now).unwrap();
    let answer = str0m::change::SdpAnswer::from_sdp_string(&joined.answer).unwrap();
    rtc.sdp_api().accept_answer(pending, answer).unwrap();
    let from: SocketAddr = "127.0.0.1:1000".parse().unwrap();
    let mut t = now;
    for _ in 0..200 {
        t += std::time::Duration::from_millis(10);
        rtc.handle_input(Input::Timeout(t)).unwrap();
        while let Ok(out) = rtc.poll_output() {
            match out {
                Output::Timeout(_) => break,
                Output::Event(_) => {}
                Output::Transmit(tx) => {
                    if (20..64).contains(&tx.contents[0]) {
                        return tx.contents.to_vec();
                    }
                    sfu.handle_receive(t, Protocol::Udp, from, LOCAL, &tx.contents);
                }
            }
        }
        sfu.handle_timeout(t);
        while let Some(tx) = sfu.poll_transmit() {
            let input = Input::Receive(
                t,
                Receive {
                    proto: Protocol::Udp,
                    source: LOCAL,
                    destination: from,
                    contents: (&tx.contents[..]).try_into().unwrap(),
                },
            );
            rtc.handle_input(input).unwrap();
        }
    }
    panic!("the client never started DTLS");
}

fn sfu_datagram() -> Seeds {
    let check = record(0x08, &check_attrs());
    let later = record(0x18, &[0, 10]);
    let rtp = [&[0x80, 0x60, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9][..], &[0x90; 40]].concat();
    let rtcp = [0x81, 0xc8, 0, 6, 0, 0, 0, 9]
        .into_iter()
        .chain([0; 24])
        .collect::<Vec<u8>>();
    vec![
        ("ice-check", [check.clone(), later.clone()].concat()),
        (
            "ice-then-dtls",
            [check.clone(), record(0, &client_hello()), later.clone()].concat(),
        ),
        (
            "ice-then-rtp",
            [check.clone(), record(0, &rtp), record(0, &rtcp), later].concat(),
        ),
        ("ice-tcp-check", record(0x09, &check_attrs())),
        ("unsigned-check", record(0x10, &check_attrs())),
    ]
}

/// `text` behind a mode byte.
fn moded(mode: u8, text: &str) -> Vec<u8> {
    [&[mode][..], text.as_bytes()].concat()
}

/// An SFU room member's answer, made by a real client.
fn member_answer() -> String {
    let now = Instant::now();
    let mut sfu = new_sfu();
    let offered = sfu.open_member("room", &[], now).unwrap();
    let mut rtc = RtcConfig::new().build(now);
    let offer = SdpOffer::from_sdp_string(&offered.offer).unwrap();
    let answer = rtc.sdp_api().accept_offer(offer).unwrap();
    // The mids as the harnesses take them (`$MID<n>`: the offer's n-th).
    let mids: Vec<&str> = offered
        .offer
        .lines()
        .filter_map(|l| l.strip_prefix("a=mid:"))
        .collect();
    let placeholder = |word: &str| match mids.iter().position(|m| *m == word) {
        Some(i) => format!("$MID{i}"),
        None => word.to_owned(),
    };
    answer
        .to_sdp_string()
        .split("\r\n")
        .map(|line| match line.split_once(':') {
            Some(("a=mid", mid)) => format!("a=mid:{}", placeholder(mid)),
            Some(("a=group", group)) => {
                let words: Vec<String> = group.split(' ').map(placeholder).collect();
                format!("a=group:{}", words.join(" "))
            }
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

fn sdp_offer() -> Seeds {
    let simulcast = OFFER.replace(
        "a=fmtp:97 apt=96\r\n",
        "a=fmtp:97 apt=96\r\na=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n\
         a=rid:h send\r\na=rid:l send\r\na=simulcast:send h;l\r\n",
    );
    let frag = "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\n\
                m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n\
                a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\r\n\
                a=candidate:2 1 tcp 1518280447 127.0.0.1 9 typ host tcptype active\r\n\
                a=end-of-candidates\r\n";
    let (_, browser, _) = client(Instant::now());
    vec![
        ("whip", moded(0, OFFER)),
        ("whip-simulcast", moded(0, &simulcast)),
        ("whep", moded(1, &viewer_offer())),
        ("whep-str0m", moded(1, &browser)),
        ("trickle", moded(2, frag)),
        ("skyway-answer", moded(3, &member_answer())),
    ]
}

/// A request the TURN harness signs: method, transaction id, attributes.
fn signed(method: u16, attrs: &[&dyn AttributeWrite]) -> Vec<u8> {
    [&method.to_be_bytes()[..], &TID, &wire(attrs)].concat()
}

fn turn_message() -> Seeds {
    let sfu: SocketAddr = "127.0.0.1:8189".parse().unwrap();
    let peer = XorPeerAddress::new(sfu, tid());
    let refresh = record(1, &signed(0x004, &[&Lifetime::new(600)]));
    let permission = record(1, &signed(0x008, &[&peer]));
    let channel = record(1, &signed(0x009, &[&ChannelNumber::new(0x4000), &peer]));
    let channel_data = record(0, &[0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5]);
    let from_peer = record(2, b"from the peer");
    let mut send = Message::builder(
        stun_types::message::MessageType::from_class_method(
            stun_types::message::MessageClass::Indication,
            SEND,
        ),
        tid(),
        MessageWriteVec::new(),
    );
    send.add_attribute(&peer).unwrap();
    send.add_attribute(&Data::new(b"to the peer")).unwrap();
    let send = record(0, &send.finish());
    let allocate = signed(0x003, &[&RequestedTransport::new(17)]);
    let binding = Message::builder_request(stun_types::message::BINDING, MessageWriteVec::new());
    let later = record(3, &[0x10, 0x00]);
    vec![
        (
            "refresh",
            [refresh.clone(), later.clone(), refresh].concat(),
        ),
        (
            "permission-send",
            [permission.clone(), send, from_peer.clone()].concat(),
        ),
        (
            "channel",
            [channel, channel_data.clone(), from_peer.clone(), later].concat(),
        ),
        (
            "tcp-allocate",
            [record(5, &allocate), record(4, &channel_data)].concat(),
        ),
        ("binding", record(0, &binding.finish())),
        ("peer-refused", record(0x42, b"from elsewhere")),
    ]
}

fn rfc4571() -> Seeds {
    let frame = |p: &[u8]| crate::media::tcp::frame(p).unwrap();
    vec![
        (
            "two-frames",
            [frame(b"\x00\x01stun"), frame(&[0x16; 30])].concat(),
        ),
        ("cut-short", [frame(b"whole"), vec![0, 40, 1, 2]].concat()),
        ("empty-frame", frame(&[])),
    ]
}

fn json_record(flags: u8, v: &Value) -> Vec<u8> {
    record(flags, v.to_string().as_bytes())
}

fn peerjs_message() -> Seeds {
    let open = [record(0x00, b"a"), record(0x04, b"b")].concat();
    let sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";
    let offer = json!({"type": "OFFER", "dst": "b", "payload": {"sdp": {"type": "offer", "sdp": sdp},
        "type": "media", "connectionId": "mc_1", "browser": "chrome"}});
    let candidate = json!({"type": "CANDIDATE", "dst": "a", "payload": {"candidate":
        {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host"}, "type": "data", "connectionId": "dc_1"}});
    vec![
        (
            "offer-candidate",
            [
                open.clone(),
                json_record(0x01, &offer),
                json_record(0x05, &candidate),
                json_record(0x01, &json!({"type": "HEARTBEAT"})),
            ]
            .concat(),
        ),
        (
            "absent-expire",
            [
                open.clone(),
                json_record(0x01, &json!({"type": "OFFER", "dst": "zz", "payload": {}})),
                record(0x03, &[4, 0]),
            ]
            .concat(),
        ),
        (
            "leave",
            [open, json_record(0x05, &json!({"type": "LEAVE"}))].concat(),
        ),
    ]
}

/// An event record: the event's index in `skyway::EVENTS`, its argument.
fn event(conn: u8, name: &str, arg: &Value) -> Vec<u8> {
    let index = super::skyway::EVENTS
        .iter()
        .position(|e| *e == name)
        .unwrap() as u8;
    let body = [&[index][..], arg.to_string().as_bytes()].concat();
    record(1 | conn << 3, &body)
}

fn skyway_message() -> Seeds {
    let secret = "fuzz-key";
    let unix = 1_800_000_000u64;
    let credential = crate::skyway::Credential {
        timestamp: unix,
        ttl: 3600,
        auth_token: String::new(),
    };
    let token = crate::skyway::sign(secret, &credential.message("a"));
    let credential = json!({"timestamp": unix, "ttl": 3600, "authToken": token}).to_string();
    let open_a = record(0, &[&[0u8][..], b"a\0", credential.as_bytes()].concat());
    let open_b = record(1 << 3, b"\0b");
    let sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";
    let answer = member_answer();
    let sfu_room = json!({"roomName": "s", "roomType": "sfu"});
    vec![
        (
            "mesh",
            [
                open_a.clone(),
                open_b.clone(),
                event(0, "ROOM_JOIN", &json!({"roomName": "r", "roomType": "mesh"})),
                event(1, "ROOM_JOIN", &json!({"roomName": "r", "roomType": "mesh"})),
                event(0, "SEND_OFFER", &json!({"dst": "b", "offer": {"sdp": sdp, "type": "offer"},
                    "connectionId": "mc_1", "connectionType": "media"})),
                event(1, "SEND_ANSWER", &json!({"dst": "a", "answer": {"sdp": sdp, "type": "answer"},
                    "connectionId": "mc_1", "connectionType": "media"})),
                event(0, "ROOM_GET_USERS", &json!({"roomName": "r", "type": "mesh"})),
                record(3, &[&[0u8][..], json!({"roomName": "r", "data": "hi"}).to_string().as_bytes()].concat()),
                record(3, &[&[1u8][..], b"r\0\x01\x02\x03"].concat()),
                event(1, "ROOM_LEAVE", &json!({"roomName": "r", "roomType": "mesh"})),
            ]
            .concat(),
        ),
        (
            "sfu-room",
            [
                open_a.clone(),
                event(0, "ROOM_JOIN", &sfu_room),
                event(0, "SFU_GET_OFFER", &json!({"roomName": "s"})),
                event(0, "SFU_ANSWER", &json!({"roomName": "s", "answer": {"sdp": answer, "type": "answer"}})),
                event(0, "SFU_CANDIDATE", &json!({"roomName": "s", "candidate":
                    {"candidate": "candidate:1 1 udp 2130706431 127.0.0.1 9 typ host", "sdpMid": "0"}})),
                record(6, b"s"),
                event(0, "ROOM_GET_LOGS", &json!({"roomName": "s", "roomType": "sfu"})),
                record(7, b"s"),
            ]
            .concat(),
        ),
        (
            "reconnect",
            [
                open_a.clone(),
                record(4, &[]),
                open_a,
                event(0, "UPDATE_CREDENTIAL", &json!({"peerId": "a", "timestamp": 1, "ttl": 60, "authToken": "x"})),
                record(5, &[2, 0]),
            ]
            .concat(),
        ),
    ]
}

fn chat_message() -> Seeds {
    let say =
        |slot: u8, text: &str| json_record(1 | slot << 2, &json!({"type": "say", "text": text}));
    vec![
        (
            "say-remove",
            [
                record(0x00, b"alice"),
                record(0x24, b"caster"),
                say(0, "hi"),
                say(1, "hello\nthere"),
                json_record(0x05, &json!({"type": "remove", "id": 1})),
                record(0x03, &[]),
                record(0x02, &[]),
            ]
            .concat(),
        ),
        (
            "since",
            [
                record(0x00, b"a"),
                say(0, "one"),
                say(0, "two"),
                record(0x44, &[1]),
                record(0x07, &[]),
            ]
            .concat(),
        ),
    ]
}

fn mediasoup_request() -> Seeds {
    let video = json!({"kind": "video", "rtpParameters": {"mid": "0",
        "codecs": [{"mimeType": "video/VP8", "payloadType": 96, "clockRate": 90000, "parameters": {}},
            {"mimeType": "video/rtx", "payloadType": 97, "clockRate": 90000, "parameters": {"apt": 96}}],
        "headerExtensions": [
            {"uri": "urn:ietf:params:rtp-hdrext:sdes:mid", "id": 9},
            {"uri": "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id", "id": 10},
            {"uri": "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id", "id": 11}],
        "encodings": [{"rid": "r0"}, {"rid": "r1"}, {"rid": "r2"}]}});
    let audio = json!({"kind": "audio", "rtpParameters": {"mid": "1",
        "codecs": [{"mimeType": "audio/opus", "payloadType": 111, "clockRate": 48000, "channels": 2,
            "parameters": {"minptime": 10, "useinbandfec": 1}}],
        "encodings": [{"ssrc": 1582342931u32}]}});
    let hex = "9F:F5:".repeat(15) + "9f:f5";
    let connect = json!({"dtlsParameters": {"role": "client",
        "fingerprints": [{"algorithm": "sha-256", "value": hex}]}});
    let consume = json!({"rtpCapabilities": {"codecs": [
        {"kind": "video", "mimeType": "video/VP8", "preferredPayloadType": 96, "clockRate": 90000},
        {"kind": "audio", "mimeType": "audio/opus", "preferredPayloadType": 111, "clockRate": 48000}],
        "headerExtensions": [{"kind": "video", "uri": "urn:ietf:params:rtp-hdrext:sdes:mid"}]}});
    vec![
        (
            "produce-consume",
            [
                json_record(1, &connect),
                json_record(0, &video),
                json_record(0, &audio),
                json_record(5, &connect),
                json_record(2, &consume),
                json_record(2, &consume),
                record(3, &[1, 0]),
            ]
            .concat(),
        ),
        ("consume-nothing", json_record(2, &consume)),
    ]
}
