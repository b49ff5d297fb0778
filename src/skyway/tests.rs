use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;

const KEY: &str = "00000000-0000-4000-8000-000000000000";

struct World {
    server: SkywayServer,
    now: Instant,
}

impl World {
    fn new() -> Self {
        Self::with(SkywayConfig::default())
    }

    fn with(config: SkywayConfig) -> Self {
        Self {
            server: SkywayServer::new(SkywayConfig {
                keys: vec![KEY.into()],
                ..config
            }),
            now: Instant::now(),
        }
    }

    fn hello(&mut self, conn: ConnId, key: &str, id: Option<&str>, token: &str) -> Vec<Out> {
        let hello = Hello {
            api_key: Some(key),
            token: Some(token),
            peer_id: id,
            credential: None,
        };
        self.server.connect(conn, hello, self.now);
        self.drain()
    }

    /// Opens `id` on `conn` (token `t-<id>`).
    fn open(&mut self, conn: ConnId, id: &str) {
        let out = self.hello(conn, KEY, Some(id), &format!("t-{id}"));
        assert_eq!(events(&out, conn), vec![("OPEN", json!({"peerId": id}))]);
    }

    fn say(&mut self, conn: ConnId, event: &str, arg: Value) -> Vec<Out> {
        self.server.message(conn, event, arg, self.now);
        self.drain()
    }

    /// Joins a room, admitting it.
    fn join(&mut self, conn: ConnId, room: &str, mode: &str) -> Vec<Out> {
        let out = self.say(
            conn,
            "ROOM_JOIN",
            json!({"roomName": room, "roomType": mode}),
        );
        assert!(
            out.iter().any(|o| matches!(
                o,
                Out::Admit {
                    ask: Ask::Watch,
                    ..
                }
            )),
            "a join is admitted first: {out:?}"
        );
        self.admit(conn, room, Ask::Watch, Ok(()))
    }

    fn admit(&mut self, conn: ConnId, room: &str, ask: Ask, r: Result<(), Refusal>) -> Vec<Out> {
        self.server.admitted(conn, room, ask, r);
        self.drain()
    }

    fn wait(&mut self, d: Duration) -> Vec<Out> {
        self.now += d;
        self.server.handle_timeout(self.now);
        self.drain()
    }

    fn drain(&mut self) -> Vec<Out> {
        std::iter::from_fn(|| self.server.poll_output()).collect()
    }
}

/// The events sent to `conn`, as JSON.
fn events(out: &[Out], conn: ConnId) -> Vec<(&'static str, Value)> {
    out.iter()
        .filter_map(|o| match o {
            Out::Emit(c, e, p) if *c == conn => Some((*e, p.json())),
            _ => None,
        })
        .collect()
}

fn named(out: &[Out], conn: ConnId, name: &str) -> Vec<Value> {
    events(out, conn)
        .into_iter()
        .filter(|(e, _)| *e == name)
        .map(|(_, v)| v)
        .collect()
}

fn error_type(out: &[Out], conn: ConnId) -> Option<String> {
    named(out, conn, "ERROR")
        .first()
        .map(|e| e["type"].as_str().unwrap().to_string())
}

fn closed(out: &[Out], conn: ConnId) -> bool {
    out.iter().any(|o| *o == Out::Close(conn))
}

fn media(out: &[Out]) -> Vec<MediaOp> {
    out.iter()
        .filter_map(|o| match o {
            Out::Media(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

fn sid(n: u128) -> PeerId {
    PeerId(n << 8)
}

#[test]
fn ids_are_assigned_or_taken_and_keys_checked() {
    let mut w = World::new();
    let out = w.hello(1, KEY, None, "tok");
    let opened = named(&out, 1, "OPEN");
    let id = opened[0]["peerId"].as_str().unwrap();
    assert_eq!(id.len(), 16, "a server-assigned id: {id}");
    assert!(
        opened[0].get("turnCredential").is_none(),
        "no TURN host to give"
    );
    assert!(w.server.exists(id));

    let out = w.hello(2, "11111111-2222-3333-4444-555555555555", None, "tok");
    assert_eq!(error_type(&out, 2).as_deref(), Some("invalid-key"));
    assert!(closed(&out, 2), "a wrong key is told, then closed");

    let out = w.hello(3, KEY, Some("bad  id"), "tok");
    assert_eq!(error_type(&out, 3).as_deref(), Some("invalid-id"));
    assert!(closed(&out, 3));

    let out = w.hello(4, KEY, Some("alice"), "");
    assert_eq!(error_type(&out, 4).as_deref(), Some("invalid-token"));
}

#[test]
fn the_sdks_id_rule() {
    for ok in ["a", "A-b_c", "a b", "a b-c d", "a- b", "-x", "x_"] {
        assert!(valid_peer_id(ok), "{ok}");
    }
    for bad in [
        "",
        " a",
        "a ",
        "a  b",
        "a b-",
        "a -b",
        "é",
        "a\tb",
        &"x".repeat(65),
    ] {
        assert!(!valid_peer_id(bad), "{bad}");
    }
}

#[test]
fn a_taken_id_is_refused_and_the_same_token_takes_over() {
    let mut w = World::new();
    w.open(1, "alice");
    w.join(1, "live", "mesh");
    let out = w.hello(2, KEY, Some("alice"), "someone-else");
    assert_eq!(error_type(&out, 2).as_deref(), Some("unavailable-id"));
    assert!(closed(&out, 2));
    assert!(!closed(&out, 1), "the holder is untouched");

    // The same peer reconnecting (same token): the new connection wins,
    // rooms and all, and the old one is closed.
    let out = w.hello(3, KEY, Some("alice"), "t-alice");
    assert_eq!(named(&out, 3, "OPEN"), vec![json!({"peerId": "alice"})]);
    assert!(closed(&out, 1));
    let out = w.say(
        3,
        "ROOM_GET_USERS",
        json!({"roomName": "live", "type": "media"}),
    );
    assert_eq!(
        named(&out, 3, "ROOM_USERS"),
        vec![json!({"roomName": "live", "userList": ["alice"], "type": "media"})]
    );
    // The old connection closing later changes nothing.
    w.server.disconnect(1, true, w.now);
    assert!(w.server.exists("alice"));
}

#[test]
fn p2p_signaling_is_relayed_with_src_and_leave_tells_contacts() {
    let mut w = World::new();
    w.open(1, "a");
    w.open(2, "b");
    let offer = json!({"offer": {"type": "offer", "sdp": "v=0"}, "dst": "b", "connectionId": "mc_1", "connectionType": "media", "src": "forged"});
    let out = w.say(1, "SEND_OFFER", offer);
    let got = named(&out, 2, "OFFER");
    assert_eq!(got[0]["src"], "a", "the server says who it is from");
    assert_eq!(got[0]["connectionId"], "mc_1");
    let out = w.say(
        2,
        "SEND_ANSWER",
        json!({"answer": {"type": "answer", "sdp": "v=0"}, "dst": "a", "connectionId": "mc_1"}),
    );
    assert_eq!(named(&out, 1, "ANSWER")[0]["src"], "b");
    let out = w.say(
        1,
        "SEND_CANDIDATE",
        json!({"candidate": {"candidate": "c"}, "dst": "b", "connectionId": "mc_1"}),
    );
    assert_eq!(named(&out, 2, "CANDIDATE").len(), 1);
    let out = w.say(
        1,
        "SEND_FORCE_CLOSE",
        json!({"dst": "b", "connectionId": "mc_1"}),
    );
    assert_eq!(named(&out, 2, "FORCE_CLOSE")[0]["src"], "a");

    let out = w.say(1, "SEND_OFFER", json!({"offer": {}, "dst": "nobody"}));
    assert_eq!(error_type(&out, 1).as_deref(), Some("peer-unavailable"));
    let out = w.say(1, "SEND_OFFER", json!({"offer": {}}));
    assert_eq!(error_type(&out, 1).as_deref(), Some("invalid-message"));
    let out = w.say(1, "NO_SUCH_EVENT", json!({}));
    assert_eq!(error_type(&out, 1).as_deref(), Some("invalid-message"));

    w.server.disconnect(1, true, w.now);
    let out = w.drain();
    assert_eq!(events(&out, 2), vec![("LEAVE", json!("a"))]);
}

#[test]
fn mesh_joins_in_either_order_reach_every_member_with_the_member_list() {
    let mut w = World::new();
    w.open(1, "caster");
    w.open(2, "viewer");
    let out = w.join(2, "show", "mesh");
    assert_eq!(
        named(&out, 2, "ROOM_USER_JOIN"),
        vec![json!({"roomName": "show", "src": "viewer", "roomMembers": ["viewer"]})]
    );
    let out = w.join(1, "show", "mesh");
    let both = json!({"roomName": "show", "src": "caster", "roomMembers": ["viewer", "caster"]});
    assert_eq!(
        named(&out, 1, "ROOM_USER_JOIN"),
        vec![both.clone()],
        "the joiner's own copy"
    );
    assert_eq!(named(&out, 2, "ROOM_USER_JOIN"), vec![both]);
    let out = w.say(
        1,
        "ROOM_GET_USERS",
        json!({"roomName": "show", "type": "media"}),
    );
    assert_eq!(
        named(&out, 1, "ROOM_USERS")[0]["userList"],
        json!(["viewer", "caster"])
    );
    let out = w.say(
        1,
        "ROOM_GET_USERS",
        json!({"roomName": "show", "type": "data"}),
    );
    assert_eq!(
        named(&out, 1, "ROOM_USERS")[0]["type"],
        "data",
        "type echoed"
    );

    // Relay inside the room keeps roomName.
    let offer = json!({"offer": {"type": "offer", "sdp": "m=audio 9 RTP 0\r\na=recvonly\r\n"}, "dst": "viewer", "connectionId": "mc_x", "connectionType": "media", "roomName": "show"});
    let out = w.say(1, "SEND_OFFER", offer);
    assert_eq!(named(&out, 2, "OFFER")[0]["roomName"], "show");

    // Leaving tells the others; the room goes with its last member.
    let out = w.say(2, "ROOM_LEAVE", json!({"roomName": "show"}));
    assert_eq!(
        named(&out, 1, "ROOM_USER_LEAVE"),
        vec![json!({"roomName": "show", "src": "viewer"})]
    );
    w.server.disconnect(1, true, w.now);
    w.drain();
    assert!(w.server.rooms.is_empty());
}

#[test]
fn simultaneous_joins_both_land() {
    let mut w = World::new();
    w.open(1, "a");
    w.open(2, "b");
    let a = w.say(1, "ROOM_JOIN", json!({"roomName": "r", "roomType": "mesh"}));
    let b = w.say(2, "ROOM_JOIN", json!({"roomName": "r", "roomType": "mesh"}));
    assert!(a.iter().chain(&b).all(|o| matches!(o, Out::Admit { .. })));
    let out_b = w.admit(2, "r", Ask::Watch, Ok(()));
    let out_a = w.admit(1, "r", Ask::Watch, Ok(()));
    assert_eq!(
        named(&out_b, 2, "ROOM_USER_JOIN")[0]["roomMembers"],
        json!(["b"])
    );
    assert_eq!(named(&out_a, 2, "ROOM_USER_JOIN")[0]["src"], "a");
    assert_eq!(
        named(&out_a, 1, "ROOM_USER_JOIN")[0]["roomMembers"],
        json!(["b", "a"])
    );
}

#[test]
fn a_dropped_connection_keeps_its_rooms_for_the_grace_then_leaves() {
    let mut w = World::new();
    w.open(1, "a");
    w.open(2, "b");
    w.join(1, "r", "mesh");
    w.join(2, "r", "mesh");
    w.server.disconnect(1, false, w.now);
    // Meanwhile b offers to a: kept for a's return.
    w.say(
        2,
        "SEND_OFFER",
        json!({"offer": {"sdp": ""}, "dst": "a", "roomName": "r"}),
    );
    let out = w.wait(Duration::from_secs(3));
    assert!(named(&out, 2, "ROOM_USER_LEAVE").is_empty(), "not yet");
    let out = w.hello(3, KEY, Some("a"), "t-a");
    assert_eq!(
        events(&out, 3).iter().map(|e| e.0).collect::<Vec<_>>(),
        ["OPEN", "OFFER"],
        "what waited is delivered after OPEN"
    );
    // Dropped again, and this time for good.
    w.server.disconnect(3, false, w.now);
    let out = w.wait(Duration::from_secs(11));
    assert_eq!(
        named(&out, 2, "ROOM_USER_LEAVE"),
        vec![json!({"roomName": "r", "src": "a"})]
    );
    assert!(!w.server.exists("a"));
}

#[test]
fn bad_room_requests_get_reasons() {
    let mut w = World::with(SkywayConfig {
        max_rooms_per_peer: 2,
        max_members: 2,
        ..SkywayConfig::default()
    });
    w.open(1, "a");
    let long = "x".repeat(65);
    for name in [json!("../etc"), json!(""), json!(long), json!(7)] {
        let out = w.say(
            1,
            "ROOM_JOIN",
            json!({"roomName": name, "roomType": "mesh"}),
        );
        assert!(
            matches!(
                error_type(&out, 1).as_deref(),
                Some("room-error" | "invalid-message")
            ),
            "{name}: {out:?}"
        );
    }
    let out = w.say(1, "ROOM_JOIN", json!({"roomName": "r", "roomType": "p2p"}));
    assert_eq!(error_type(&out, 1).as_deref(), Some("room-error"));
    w.join(1, "r", "sfu");
    let out = w.say(1, "ROOM_JOIN", json!({"roomName": "r", "roomType": "sfu"}));
    assert_eq!(
        named(&out, 1, "ROOM_USER_JOIN").len(),
        1,
        "joining again acknowledges"
    );
    w.open(2, "b");
    let out = w.say(2, "ROOM_JOIN", json!({"roomName": "r", "roomType": "mesh"}));
    let e = &named(&out, 2, "ERROR")[0];
    assert!(e["message"].as_str().unwrap().contains("sfu room"), "{e}");
    w.join(2, "r", "sfu");
    w.open(3, "c");
    let out = w.say(3, "ROOM_JOIN", json!({"roomName": "r", "roomType": "sfu"}));
    assert!(
        named(&out, 3, "ERROR")[0]["message"]
            .as_str()
            .unwrap()
            .contains("full")
    );
    w.join(1, "q", "mesh");
    let out = w.say(1, "ROOM_JOIN", json!({"roomName": "z", "roomType": "mesh"}));
    assert!(
        named(&out, 1, "ERROR")[0]["message"]
            .as_str()
            .unwrap()
            .contains("2 rooms")
    );
    let out = w.say(3, "ROOM_GET_USERS", json!({"roomName": "r"}));
    assert_eq!(
        error_type(&out, 3).as_deref(),
        Some("room-error"),
        "not a member"
    );
    let out = w.say(
        3,
        "SEND_OFFER",
        json!({"offer": {}, "dst": "a", "roomName": "r"}),
    );
    assert_eq!(error_type(&out, 3).as_deref(), Some("room-error"));

    // A refused admission is told and the peer stays out.
    let out = w.say(
        3,
        "ROOM_JOIN",
        json!({"roomName": "priv", "roomType": "mesh"}),
    );
    assert!(matches!(out[0], Out::Admit { .. }));
    let out = w.admit(
        3,
        "priv",
        Ask::Watch,
        Err(Refusal::new("permission", "private live")),
    );
    assert_eq!(error_type(&out, 3).as_deref(), Some("permission"));
    assert!(!w.server.rooms.contains_key("priv"));
}

#[test]
fn sending_media_in_a_mesh_room_needs_the_right_to_cast() {
    let mut w = World::new();
    w.open(1, "viewer");
    w.open(2, "caster");
    w.join(1, "show", "mesh");
    w.join(2, "show", "mesh");
    let recvonly = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=recvonly\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=recvonly\r\n";
    let out = w.say(1, "SEND_OFFER", json!({"offer": {"type": "offer", "sdp": recvonly}, "dst": "caster", "roomName": "show", "connectionId": "mc_1"}));
    assert_eq!(
        named(&out, 2, "OFFER").len(),
        1,
        "receiving needs no rights"
    );

    let sendonly = recvonly.replace("recvonly", "sendonly");
    let answer = json!({"answer": {"type": "answer", "sdp": sendonly}, "dst": "viewer", "roomName": "show", "connectionId": "mc_1"});
    let out = w.say(2, "SEND_ANSWER", answer.clone());
    assert!(
        matches!(&out[..], [Out::Admit { ask: Ask::Cast, room, .. }] if room == "show"),
        "{out:?}"
    );
    let out = w.admit(
        2,
        "show",
        Ask::Cast,
        Err(Refusal::new("permission", "wrong stream key")),
    );
    assert_eq!(error_type(&out, 2).as_deref(), Some("permission"));
    assert!(named(&out, 1, "ANSWER").is_empty(), "not relayed");

    let out = w.say(2, "SEND_ANSWER", answer.clone());
    assert!(matches!(out[0], Out::Admit { .. }));
    let out = w.admit(2, "show", Ask::Cast, Ok(()));
    assert_eq!(named(&out, 1, "ANSWER")[0]["src"], "caster");
    let out = w.say(2, "SEND_ANSWER", answer);
    assert_eq!(named(&out, 1, "ANSWER").len(), 1, "asked once per room");
}

#[test]
fn room_data_reaches_the_others_within_limits_and_is_logged() {
    let mut w = World::with(SkywayConfig {
        max_data: 1000,
        data_rate: 5000,
        ..SkywayConfig::default()
    });
    w.open(1, "a");
    w.open(2, "b");
    w.open(3, "c");
    w.join(1, "r", "mesh");
    w.join(2, "r", "mesh");
    w.join(3, "r", "mesh");
    w.server
        .room_data(1, "r", Data::Json(json!({"hi": 1})), w.now);
    let out = w.drain();
    assert_eq!(
        named(&out, 2, "ROOM_DATA"),
        vec![json!({"roomName": "r", "src": "a", "data": {"hi": 1}})]
    );
    assert_eq!(named(&out, 3, "ROOM_DATA").len(), 1);
    assert!(
        named(&out, 1, "ROOM_DATA").is_empty(),
        "not back to the sender"
    );
    w.server.room_data(
        1,
        "r",
        Data::Binary(bytes::Bytes::from(vec![1, 2, 3])),
        w.now,
    );
    let out = w.drain();
    assert!(matches!(
        out.iter().find(|o| matches!(o, Out::Emit(2, "ROOM_DATA", _))),
        Some(Out::Emit(_, _, Payload::RoomData { data: Data::Binary(b), .. })) if b.len() == 3
    ));

    w.server
        .room_data(1, "r", Data::Json(json!("x".repeat(2000))), w.now);
    let out = w.drain();
    assert_eq!(error_type(&out, 1).as_deref(), Some("signaling-limited"));
    // The fan-out budget: 900 bytes to two members, 10000 in the bucket.
    let mut refused = 0;
    for _ in 0..10 {
        w.server
            .room_data(1, "r", Data::Json(json!("y".repeat(900))), w.now);
        refused += usize::from(error_type(&w.drain(), 1).is_some());
    }
    assert!((4..=6).contains(&refused), "the budget binds: {refused}");
    w.wait(Duration::from_secs(2));
    w.server.room_data(1, "r", Data::Json(json!("z")), w.now);
    assert!(error_type(&w.drain(), 1).is_none(), "and refills");

    let out = w.say(2, "ROOM_GET_LOGS", json!({"roomName": "r"}));
    let log = named(&out, 2, "ROOM_LOGS")[0]["log"].clone();
    let kinds: Vec<String> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            serde_json::from_str::<Value>(s.as_str().unwrap()).unwrap()["messageType"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        &kinds[..4],
        [
            "ROOM_USER_JOIN",
            "ROOM_USER_JOIN",
            "ROOM_USER_JOIN",
            "ROOM_DATA"
        ]
    );
}

#[test]
fn a_flood_of_messages_is_cut_off() {
    let mut w = World::new();
    w.open(1, "a");
    let mut limited = 0;
    for _ in 0..400 {
        let out = w.say(1, "PING", Value::Null);
        limited += usize::from(error_type(&out, 1).as_deref() == Some("signaling-limited"));
    }
    assert!(limited >= 90, "{limited}");
}

/// An SFU room: member `conn` asks for an offer, gets a session, answers.
fn sfu_member(
    w: &mut World,
    conn: ConnId,
    id: &str,
    room: &str,
    s: PeerId,
    sending: bool,
) -> Vec<Out> {
    w.open(conn, id);
    w.join(conn, room, "sfu");
    let out = w.say(conn, "SFU_GET_OFFER", json!({"roomName": room}));
    let ops = media(&out);
    assert!(
        matches!(&ops[..], [MediaOp::Open { peer, .. }] if peer == id),
        "{ops:?}"
    );
    w.server
        .media_opened(id, room, Ok((s, format!("offer-for-{id}"))));
    let out = w.drain();
    let offer = &named(&out, conn, "SFU_OFFER")[0];
    assert_eq!(offer["offer"]["type"], "offer");
    let out = w.say(
        conn,
        "SFU_ANSWER",
        json!({"roomName": room, "answer": {"type": "answer", "sdp": "answer"}}),
    );
    assert!(matches!(&media(&out)[..], [MediaOp::Answer { session, .. }] if *session == s));
    w.server.media_answered(id, room, s, Ok(sending));
    w.drain()
}

#[test]
fn sfu_members_publish_into_the_rooms_live_and_watch_each_other() {
    let mut w = World::new();
    let viewer = sid(1);
    let out = sfu_member(&mut w, 1, "viewer", "show", viewer, false);
    assert!(
        media(&out).is_empty(),
        "nothing to publish, nothing to offer"
    );

    let caster = sid(2);
    let out = sfu_member(&mut w, 2, "caster", "show", caster, true);
    let ops = media(&out);
    assert!(
        matches!(&ops[..], [MediaOp::Publish { live, session, .. }] if live == "show" && *session == caster),
        "the first publisher takes the room's live: {ops:?}"
    );
    w.server
        .media_published("caster", "show", caster, "show", Ok(()));
    assert!(media(&w.drain()).is_empty());
    // On air: the viewer is offered the caster; the caster nothing of its own.
    w.server.cast_started("show", caster);
    let out = w.drain();
    let ops = media(&out);
    assert_eq!(ops.len(), 1, "{ops:?}");
    let MediaOp::Offer { session, subs, .. } = &ops[0] else {
        panic!("{ops:?}")
    };
    assert_eq!(*session, viewer);
    assert_eq!(subs[0].live, "show");
    w.server
        .media_offered("viewer", "show", viewer, Ok(Some("reoffer".into())));
    let out = w.drain();
    let offer = &named(&out, 1, "SFU_OFFER")[0];
    assert_eq!(offer["offer"]["sdp"], "reoffer");
    assert_eq!(offer["msids"], json!({ subs[0].stream.clone(): "caster" }));

    // A second publisher takes show~2, and each watches the other.
    let second = sid(3);
    let out = sfu_member(&mut w, 3, "guest", "show", second, true);
    assert!(matches!(&media(&out)[..], [MediaOp::Publish { live, .. }] if live == "show~2"));
    w.server
        .media_published("guest", "show", second, "show~2", Ok(()));
    w.drain();
    w.server.cast_started("show~2", second);
    let ops = media(&w.drain());
    let offered: Vec<PeerId> = ops
        .iter()
        .filter_map(|o| match o {
            MediaOp::Offer { session, .. } => Some(*session),
            _ => None,
        })
        .collect();
    assert!(offered.contains(&caster), "the caster watches the guest");
    assert!(
        !offered.contains(&viewer),
        "the viewer is still answering its offer"
    );
    let out = w.say(
        1,
        "SFU_ANSWER",
        json!({"roomName": "show", "answer": {"sdp": "a2"}}),
    );
    assert!(matches!(&media(&out)[..], [MediaOp::Answer { .. }]));
    w.server.media_answered("viewer", "show", viewer, Ok(false));
    let ops = media(&w.drain());
    assert!(
        matches!(&ops[..], [MediaOp::Offer { subs, .. }] if subs.len() == 2),
        "then it gets both: {ops:?}"
    );

    // The caster goes: its session ends; members are offered without it.
    let out = w.say(2, "ROOM_LEAVE", json!({"roomName": "show"}));
    assert!(media(&out).contains(&MediaOp::Leave { session: caster }));
    assert_eq!(named(&out, 3, "ROOM_USER_LEAVE").len(), 1);
}

#[test]
fn a_caster_of_another_protocol_is_a_publisher_of_the_room() {
    let mut w = World::new();
    let viewer = sid(1);
    sfu_member(&mut w, 1, "viewer", "show", viewer, false);
    let whip = sid(9);
    w.server.cast_started("show", whip);
    let ops = media(&w.drain());
    assert!(matches!(&ops[..], [MediaOp::Offer { .. }]));
    w.server
        .media_offered("viewer", "show", viewer, Ok(Some("o".into())));
    let out = w.drain();
    let msids = &named(&out, 1, "SFU_OFFER")[0]["msids"];
    assert_eq!(
        msids.as_object().unwrap().values().next().unwrap(),
        "vessel:show"
    );
    // A member that publishes meanwhile gets show~2.
    let caster = sid(2);
    let out = sfu_member(&mut w, 2, "m", "show", caster, true);
    assert!(matches!(&media(&out)[..], [MediaOp::Publish { live, .. }] if live == "show~2"));
    // Lives of other rooms are no business of this one.
    w.server.cast_started("other", sid(7));
    w.server.cast_started("showcase", sid(8));
    assert!(media(&w.drain()).is_empty());
}

#[test]
fn refusals_and_races_of_sfu_members() {
    let mut w = World::with(SkywayConfig {
        max_publishers: 1,
        ..SkywayConfig::default()
    });
    let a = sid(1);
    let out = sfu_member(&mut w, 1, "a", "r", a, true);
    assert!(matches!(&media(&out)[..], [MediaOp::Publish { .. }]));
    w.server.media_published(
        "a",
        "r",
        a,
        "r",
        Err(Refusal::new("permission", "live 'r' needs its stream key")),
    );
    let out = w.drain();
    assert_eq!(error_type(&out, 1).as_deref(), Some("permission"));
    // A refused publisher is not asked again at its next answer.
    w.server.cast_started("r", sid(5));
    let ops = media(&w.drain());
    assert!(matches!(&ops[..], [MediaOp::Offer { .. }]));
    w.server.media_offered("a", "r", a, Ok(Some("o".into())));
    w.say(
        1,
        "SFU_ANSWER",
        json!({"roomName": "r", "answer": {"sdp": "x"}}),
    );
    w.server.media_answered("a", "r", a, Ok(true));
    assert!(media(&w.drain()).is_empty());

    // The room is at its publisher limit: the next sender is told.
    let out = sfu_member(&mut w, 2, "b", "r", sid(2), true);
    let e = &named(&out, 2, "ERROR")[0];
    assert!(e["message"].as_str().unwrap().contains("publishers"), "{e}");

    // A session that opens after its member left is closed at once.
    w.open(3, "c");
    w.join(3, "r", "sfu");
    w.say(3, "SFU_GET_OFFER", json!({"roomName": "r"}));
    w.say(
        3,
        "SFU_CANDIDATE",
        json!({"roomName": "r", "candidate": {"candidate": "c1"}}),
    );
    w.say(3, "ROOM_LEAVE", json!({"roomName": "r"}));
    w.server.media_opened("c", "r", Ok((sid(3), "o".into())));
    assert_eq!(media(&w.drain()), vec![MediaOp::Leave { session: sid(3) }]);

    // Candidates before the session are passed on once it exists.
    w.open(4, "d");
    w.join(4, "r", "sfu");
    w.say(4, "SFU_GET_OFFER", json!({"roomName": "r"}));
    w.say(
        4,
        "SFU_CANDIDATE",
        json!({"roomName": "r", "candidate": {"candidate": "c1"}}),
    );
    w.server.media_opened("d", "r", Ok((sid(4), "o".into())));
    let ops = media(&w.drain());
    assert!(matches!(&ops[..], [MediaOp::Candidate { session, .. }] if *session == sid(4)));
    // A failed answer ends the session; asking again opens a new one.
    w.say(
        4,
        "SFU_ANSWER",
        json!({"roomName": "r", "answer": {"sdp": "x"}}),
    );
    w.server.media_answered(
        "d",
        "r",
        sid(4),
        Err(Refusal::new("invalid-message", "bad SDP")),
    );
    let out = w.drain();
    assert_eq!(error_type(&out, 4).as_deref(), Some("invalid-message"));
    assert_eq!(media(&out), vec![MediaOp::Leave { session: sid(4) }]);
    let out = w.say(4, "SFU_GET_OFFER", json!({"roomName": "r"}));
    assert!(
        matches!(&media(&out)[..], [MediaOp::Open { .. }]),
        "{out:?}"
    );
    // An answer with no offer out is refused.
    let out = w.say(
        1,
        "SFU_ANSWER",
        json!({"roomName": "r", "answer": {"sdp": "x"}}),
    );
    assert_eq!(error_type(&out, 1).as_deref(), Some("invalid-message"));
    // SFU messages in a mesh room are refused.
    w.open(5, "e");
    w.join(5, "m", "mesh");
    let out = w.say(5, "SFU_GET_OFFER", json!({"roomName": "m"}));
    assert_eq!(error_type(&out, 5).as_deref(), Some("room-error"));
}

#[test]
fn a_member_whose_session_ends_may_ask_again() {
    let mut w = World::new();
    let a = sid(1);
    sfu_member(&mut w, 1, "a", "r", a, false);
    w.server.session_ended(a);
    let out = w.say(1, "SFU_GET_OFFER", json!({"roomName": "r"}));
    assert!(matches!(&media(&out)[..], [MediaOp::Open { .. }]));
}

/// Seeded randomized run (`VESSEL_FUZZ_SEED` replays): peers connect with
/// good and bad credentials, send every event damaged and made-up ones,
/// are admitted or refused at random, vanish and come back, while time
/// passes. Nothing may panic, and once everyone has gone the server holds
/// no peer, connection or room.
#[test]
fn fuzzed_events_break_nothing_and_leave_nothing_behind() {
    use crate::fuzz_json::{any, mutate, rng, text};
    use rand::Rng;

    let (mut rng, seed) = rng();
    let mut w = World::new();
    let ids = ["a", "b", "c", "d", "e"];
    let sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";
    let templates: Vec<(&str, Value)> = vec![
        ("PING", json!({})),
        (
            "SEND_OFFER",
            json!({"dst": "b", "offer": {"sdp": sdp, "type": "offer"},
            "connectionId": "mc_1", "connectionType": "media"}),
        ),
        (
            "SEND_ANSWER",
            json!({"dst": "a", "answer": {"sdp": sdp, "type": "answer"},
            "connectionId": "mc_1", "connectionType": "media"}),
        ),
        (
            "SEND_CANDIDATE",
            json!({"dst": "c", "candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host",
            "sdpMid": "0", "sdpMLineIndex": 0}, "connectionId": "dc_1", "connectionType": "data"}),
        ),
        (
            "SEND_FORCE_CLOSE",
            json!({"dst": "a", "connectionId": "mc_1"}),
        ),
        ("ROOM_JOIN", json!({"roomName": "r", "roomType": "mesh"})),
        ("ROOM_JOIN", json!({"roomName": "s", "roomType": "sfu"})),
        ("ROOM_LEAVE", json!({"roomName": "r", "roomType": "mesh"})),
        ("ROOM_GET_USERS", json!({"roomName": "r", "type": "mesh"})),
        ("ROOM_GET_LOGS", json!({"roomName": "s", "roomType": "sfu"})),
        ("ROOM_SEND_DATA", json!({"roomName": "r", "data": "hi"})),
        ("SFU_GET_OFFER", json!({"roomName": "s"})),
        (
            "SFU_ANSWER",
            json!({"roomName": "s", "answer": {"sdp": sdp, "type": "answer"}}),
        ),
        (
            "SFU_CANDIDATE",
            json!({"roomName": "s", "candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host"}}),
        ),
        (
            "UPDATE_CREDENTIAL",
            json!({"peerId": "a", "timestamp": 1, "ttl": 60, "authToken": "x"}),
        ),
    ];
    let mut open: Vec<ConnId> = Vec::new();
    let mut next: ConnId = 1;
    for step in 0..20_000 {
        let what = rng.random_range(0..10);
        if what == 0 || open.is_empty() {
            let key = if rng.random_bool(0.9) {
                KEY.to_string()
            } else {
                text(&mut rng)
            };
            let id = if rng.random_bool(0.9) {
                Some(ids[rng.random_range(0..ids.len())].to_string())
            } else if rng.random_bool(0.5) {
                None
            } else {
                Some(text(&mut rng))
            };
            let token = format!("t{}", rng.random_range(0..2));
            let credential = rng.random_bool(0.1).then(|| any(&mut rng, 0));
            let hello = Hello {
                api_key: Some(&key),
                token: Some(&token),
                peer_id: id.as_deref(),
                credential,
            };
            w.server.connect(next, hello, w.now);
            open.push(next);
            next += 1;
        } else if what == 1 {
            let conn = open.swap_remove(rng.random_range(0..open.len()));
            w.server.disconnect(conn, rng.random_bool(0.5), w.now);
        } else if what == 2 {
            w.now += Duration::from_millis(rng.random_range(0..3_000));
            w.server.handle_timeout(w.now);
        } else {
            let conn = open[rng.random_range(0..open.len())];
            let (event, arg) = if rng.random_bool(0.05) {
                (text(&mut rng), any(&mut rng, 0))
            } else {
                let (e, t) = &templates[rng.random_range(0..templates.len())];
                let arg = if rng.random_bool(0.5) {
                    mutate(&mut rng, t)
                } else {
                    t.clone()
                };
                (e.to_string(), arg)
            };
            w.server.message(conn, &event, arg, w.now);
        }
        // The runtime's part: admissions decided at random, media never
        // answers, closed connections are gone.
        let mut pending: Vec<Out> = w.drain();
        while let Some(out) = pending.pop() {
            match out {
                Out::Close(c) => open.retain(|o| *o != c),
                Out::Admit {
                    conn, room, ask, ..
                } => {
                    let result = if rng.random_bool(0.8) {
                        Ok(())
                    } else {
                        Err(Refusal::new("authentication", "no"))
                    };
                    w.server.admitted(conn, &room, ask, result);
                    pending.extend(w.drain());
                }
                _ => {}
            }
        }
        // Every peer held has its connection.
        assert!(
            w.server.conns.len() <= open.len(),
            "seed {seed}, step {step}: {} connections held, {} open",
            w.server.conns.len(),
            open.len()
        );
    }
    for conn in open {
        w.server.disconnect(conn, true, w.now);
    }
    w.wait(Duration::from_secs(3600));
    assert!(
        w.server.conns.is_empty(),
        "seed {seed}: {:?}",
        w.server.conns
    );
    assert!(w.server.peers.is_empty(), "seed {seed}");
    assert!(w.server.rooms.is_empty(), "seed {seed}");
}
