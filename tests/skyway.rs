//! The SkyWay dialect on the real binary, spoken by a minimal socket.io 2
//! client (engine.io 3 over a WebSocket). The browser tests drive it with
//! the npm skyway-js bundle; these check what a browser cannot easily: bad
//! input, limits, flags, and that nothing of it disturbs a live on air.

mod common;

use std::process::Command;
use std::time::Duration;

use common::socketio::Ws;
use common::{Client, Server, http, live_goes_on, live_state, run_all_until, webhook};
use serde_json::{Value, json};
use tungstenite::Message;
use tungstenite::stream::MaybeTlsStream;

const KEY: &str = "vessel00-0000-4000-8000-000000000000";

/// skyway-js's side: engine.io 3, the default namespace connected by the
/// server, every message an event.
struct SkyWay(Ws);

impl std::ops::Deref for SkyWay {
    type Target = Ws;
    fn deref(&self) -> &Ws {
        &self.0
    }
}

impl std::ops::DerefMut for SkyWay {
    fn deref_mut(&mut self) -> &mut Ws {
        &mut self.0
    }
}

impl SkyWay {
    /// Opens `path` (default `/socket.io`) with `query` as skyway-js does.
    fn connect_at(server: &Server, path: &str, query: &str) -> Result<Self, String> {
        let mut io = Ws::open(server, path, 3, query)?;
        let connect = io.frame().ok_or("closed before the namespace connect")?;
        assert!(connect.starts_with("40"), "socket.io connect: {connect}");
        Ok(Self(io))
    }

    fn connect(server: &Server, query: &str) -> Self {
        Self::connect_at(server, "/socket.io", query).unwrap()
    }

    /// Opens as peer `id` (or a server-assigned one) and returns its id.
    fn open(server: &Server, id: Option<&str>) -> (Self, String) {
        let token = format!("tok-{}", id.unwrap_or("x").replace(' ', "-"));
        let mut q = format!("apiKey={KEY}&token={token}&platform=javascript&sdk_version=4.4.5");
        if let Some(id) = id {
            q.push_str(&format!("&peerId={}", id.replace(' ', "%20")));
        }
        let mut io = Self::connect(server, &q);
        let arg = io.expect("OPEN");
        let id = arg["peerId"].as_str().unwrap().to_string();
        (io, id)
    }

    /// Sends `name` and returns the `ERROR` that answers it.
    fn refused(&mut self, name: &str, arg: Value) -> (String, String) {
        self.send(name, arg);
        let e = self.expect("ERROR");
        (
            e["type"].as_str().unwrap().to_string(),
            e["message"].as_str().unwrap().to_string(),
        )
    }

    fn join(&mut self, room: &str, mode: &str) -> Value {
        self.send("ROOM_JOIN", json!({"roomName": room, "roomType": mode}));
        self.expect("ROOM_USER_JOIN")
    }
}

/// A WHIP caster and a WHEP viewer of `live`, connected.
fn on_air(server: &Server, live: &str) -> (Client, Client) {
    let mut caster = Client::connect(server, &format!("/whip/{live}"));
    let mut viewer = Client::connect(server, &format!("/whep/{live}"));
    run_all_until(
        &mut [&mut caster, &mut viewer],
        Duration::from_secs(10),
        "the live plays",
        |c| c[1].video().len() > 10,
    );
    (caster, viewer)
}

fn get_json(server: &Server, path: &str) -> Value {
    let text = http().get(server.url(path)).send().unwrap().text().unwrap();
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

#[test]
fn peers_relay_and_rooms_on_the_real_binary() {
    let server = Server::start_with_args(&["--skyway-discovery"]);
    let (mut a, a_id) = SkyWay::open(&server, None);
    assert_eq!(a_id.len(), 16, "a server-assigned id");
    let (mut b, _) = SkyWay::open(&server, Some("bob the builder"));

    // P2P: relayed with src, as the SDK's Peer.call does.
    a.send(
        "SEND_OFFER",
        json!({"offer": {"type": "offer", "sdp": "v=0"}, "dst": "bob the builder", "connectionId": "mc_1", "connectionType": "media"}),
    );
    let offer = b.expect("OFFER");
    assert_eq!(offer["src"], a_id.as_str());
    assert_eq!(offer["connectionId"], "mc_1");

    // A mesh room: joins reach everyone with the member list.
    assert_eq!(a.join("room", "mesh")["roomMembers"], json!([a_id]));
    let joined = b.join("room", "mesh");
    assert_eq!(joined["roomMembers"], json!([a_id, "bob the builder"]));
    assert_eq!(a.expect("ROOM_USER_JOIN")["src"], "bob the builder");
    b.send(
        "ROOM_GET_USERS",
        json!({"roomName": "room", "type": "media"}),
    );
    let users = b.expect("ROOM_USERS");
    assert_eq!(users["type"], "media");
    b.send(
        "ROOM_SEND_DATA",
        json!({"roomName": "room", "data": {"chat": "hi"}}),
    );
    let data = a.expect("ROOM_DATA");
    assert_eq!(
        data,
        json!({"roomName": "room", "src": "bob the builder", "data": {"chat": "hi"}})
    );
    b.send("ROOM_GET_LOGS", json!({"roomName": "room"}));
    assert_eq!(b.expect("ROOM_LOGS")["log"].as_array().unwrap().len(), 3);

    // The SDK's HTTP calls.
    let listed = get_json(&server, &format!("/api/apikeys/{KEY}/clients/"));
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let exists = |id: &str| get_json(&server, &format!("/api/apikeys/{KEY}/peers/{id}/exists"));
    assert_eq!(exists(&a_id), json!({"exists": true}));
    assert_eq!(exists("nobody"), json!({"exists": false}));
    let wrong = http()
        .get(server.url("/api/apikeys/11111111-2222-3333-4444-555555555555/peers/x/exists"))
        .send()
        .unwrap();
    assert_eq!(wrong.status(), 401);

    // The client says goodbye (peer.disconnect()): the room hears at once.
    b.raw("41");
    let left = a.expect("ROOM_USER_LEAVE");
    assert_eq!(left, json!({"roomName": "room", "src": "bob the builder"}));
}

#[test]
fn the_same_id_takes_over_with_its_token_and_is_refused_with_another() {
    let server = Server::start();
    let (mut first, id) = SkyWay::open(&server, Some("caster"));
    first.join("show", "mesh");
    let mut thief = SkyWay::connect(
        &server,
        &format!("apiKey={KEY}&token=someone-else&peerId=caster"),
    );
    let e = thief.expect("ERROR");
    assert_eq!(e["type"], "unavailable-id", "{e}");
    assert!(thief.closed());
    // The same peer again (socket.io reconnecting): the new connection
    // takes over, rooms and all; the old one is closed.
    let (mut again, same) = SkyWay::open(&server, Some("caster"));
    assert_eq!(same, id);
    assert!(first.closed());
    again.send(
        "ROOM_GET_USERS",
        json!({"roomName": "show", "type": "media"}),
    );
    assert_eq!(again.expect("ROOM_USERS")["userList"], json!(["caster"]));
}

#[test]
fn bad_input_gets_a_reason_and_lives_on_air_keep_playing() {
    let server = Server::start();
    let (mut caster, mut viewer) = on_air(&server, "goes-on");

    // A wrong key: told, then closed (never a silent hang).
    let mut stranger = SkyWay::connect(
        &server,
        "apiKey=11111111-2222-3333-4444-555555555555&token=t",
    );
    assert_eq!(stranger.expect("ERROR")["type"], "invalid-key");
    assert!(stranger.closed());
    let mut no_token = SkyWay::connect(&server, &format!("apiKey={KEY}"));
    assert_eq!(no_token.expect("ERROR")["type"], "invalid-token");
    let mut bad_id = SkyWay::connect(
        &server,
        &format!("apiKey={KEY}&token=t&peerId=%3Cscript%3E"),
    );
    assert_eq!(bad_id.expect("ERROR")["type"], "invalid-id");

    let (mut io, _) = SkyWay::open(&server, Some("hostile"));
    let (kind, why) = io.refused("NO_SUCH_EVENT", json!({}));
    assert_eq!(kind, "invalid-message");
    assert!(why.contains("NO_SUCH_EVENT"), "{why}");
    let (kind, why) = io.refused("SEND_OFFER", json!({"offer": {}, "dst": "nobody"}));
    assert_eq!(kind, "peer-unavailable");
    assert!(why.contains("nobody"), "{why}");
    let (kind, _) = io.refused("SEND_OFFER", json!("not an object"));
    assert_eq!(kind, "invalid-message");
    let absurd = "x".repeat(5000);
    let (kind, why) = io.refused("ROOM_JOIN", json!({"roomName": absurd, "roomType": "mesh"}));
    assert_eq!(kind, "room-error");
    assert!(why.contains("live name"), "{why}");
    let (kind, _) = io.refused(
        "ROOM_JOIN",
        json!({"roomName": "../../etc", "roomType": "mesh"}),
    );
    assert_eq!(kind, "room-error");
    let (kind, _) = io.refused("ROOM_SEND_DATA", json!({"roomName": "nowhere", "data": 1}));
    assert_eq!(kind, "room-error");
    let (kind, _) = io.refused("SFU_ANSWER", json!({"roomName": "nowhere"}));
    assert_eq!(kind, "room-error");

    // In an SFU room: an answer before any offer, then a garbage answer.
    io.join("sfu-room", "sfu");
    let (kind, why) = io.refused(
        "SFU_ANSWER",
        json!({"roomName": "sfu-room", "answer": {"type": "answer", "sdp": "v=0"}}),
    );
    assert_eq!(kind, "invalid-message");
    assert!(why.contains("no SFU_OFFER"), "{why}");
    io.send("SFU_GET_OFFER", json!({"roomName": "sfu-room"}));
    let offer = io.expect("SFU_OFFER");
    assert!(
        offer["offer"]["sdp"]
            .as_str()
            .unwrap()
            .contains("a=ice-lite")
    );
    assert_eq!(offer["msids"], json!({}), "nothing on air in the room yet");
    let (kind, why) = io.refused(
        "SFU_ANSWER",
        json!({"roomName": "sfu-room", "answer": {"type": "answer", "sdp": "m=garbage"}}),
    );
    assert_eq!(kind, "invalid-message");
    assert!(why.contains("SDP"), "{why}");
    // That session is over; asking again starts a new one.
    io.send("SFU_GET_OFFER", json!({"roomName": "sfu-room"}));
    assert!(io.expect("SFU_OFFER")["offer"]["sdp"].is_string());

    // Room data over the limit (1 MiB), refused with a reason.
    let big = "y".repeat(1_100_000);
    io.join("chatty", "mesh");
    let (kind, why) = io.refused("ROOM_SEND_DATA", json!({"roomName": "chatty", "data": big}));
    assert_eq!(kind, "signaling-limited");
    assert!(why.contains("limit"), "{why}");

    // A payload over the transport's limit closes that socket only.
    let (mut flood, _) = SkyWay::open(&server, Some("flood"));
    flood.raw(&format!("42[\"PING\",\"{}\"]", "z".repeat(3_000_000)));
    assert!(flood.closed());
    // Junk that is not socket.io closes that socket only.
    let (mut junk, _) = SkyWay::open(&server, Some("junk"));
    junk.raw("42[not json");
    assert!(junk.closed());
    junk = SkyWay::open(&server, Some("junk2")).0;
    junk.raw("\u{0}\u{1}binary?");
    junk.raw("9999");

    // A socket.io 3+ client on this path is told where to go.
    let url = server
        .url("/socket.io/?EIO=4&transport=websocket")
        .replace("http://", "ws://");
    let (mut v5, _) = tungstenite::connect(url).unwrap();
    if let MaybeTlsStream::Plain(s) = v5.get_mut() {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    v5.send(Message::text("40")).unwrap();
    let mut said = String::new();
    while let Ok(Message::Text(t)) = v5.read() {
        said.push_str(t.as_str());
        if said.contains("ERROR") {
            break;
        }
    }
    assert!(said.contains("socket.io 2"), "{said}");

    // None of it disturbed the live, and the server still opens peers.
    live_goes_on(&mut caster, &mut viewer);
    assert_eq!(live_state(&server, "goes-on")["onAir"], true);
    let (mut fine, _) = SkyWay::open(&server, Some("well-behaved"));
    fine.join("room", "mesh");
    io.send("PING", Value::Null);
}

#[test]
fn an_sfu_room_shows_a_whip_caster_of_its_live_as_a_publisher() {
    let server = Server::start();
    let (mut io, _) = SkyWay::open(&server, Some("member"));
    io.join("stage", "sfu");
    io.send("SFU_GET_OFFER", json!({"roomName": "stage"}));
    let first = io.expect("SFU_OFFER");
    let sdp = first["offer"]["sdp"].as_str().unwrap();
    let kinds: Vec<&str> = sdp
        .lines()
        .filter_map(|l| l.strip_prefix("m="))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(kinds, ["audio", "video"], "the upload m-lines first");
    assert_eq!(sdp.matches("a=recvonly").count(), 2);
    // The member never answers: its offer stays out, so the WHIP caster's
    // arrival waits for it (one offer at a time).
    let mut caster = Client::connect(&server, "/whip/stage");
    caster.run_until(Duration::from_secs(10), "the caster connects", |c| {
        c.connected
    });
    caster.run(Duration::from_millis(500));
    assert_eq!(live_state(&server, "stage")["onAir"], true);
    // Another member asking now gets the caster at once, under its msid.
    let (mut late, _) = SkyWay::open(&server, Some("late"));
    late.join("stage", "sfu");
    late.send("SFU_GET_OFFER", json!({"roomName": "stage"}));
    let offer = late.expect("SFU_OFFER");
    let msids = offer["msids"].as_object().unwrap();
    assert_eq!(msids.len(), 1, "{offer}");
    let (stream, publisher) = msids.iter().next().unwrap();
    assert_eq!(publisher, "vessel:stage");
    let sdp = offer["offer"]["sdp"].as_str().unwrap();
    assert!(
        sdp.contains(&format!("a=msid:{stream} ")),
        "the caster's tracks under that stream id"
    );
    assert_eq!(sdp.matches("a=sendonly").count(), 2, "its audio and video");
}

#[test]
fn flags_move_or_turn_off_skyway_and_keys_are_checked() {
    let moved = Server::start_with_args(&["--skyway-path", "/sky"]);
    let (mut io, _) = {
        let mut io = SkyWay::connect_at(&moved, "/sky", &format!("apiKey={KEY}&token=t")).unwrap();
        let (name, arg) = io.event().unwrap();
        assert_eq!(name, "OPEN");
        (io, arg)
    };
    io.send("PING", Value::Null);

    let off = Server::start_with_args(&["--no-skyway"]);
    assert!(SkyWay::connect_at(&off, "/socket.io", &format!("apiKey={KEY}&token=t")).is_err());
    let api = http()
        .get(off.url(&format!("/api/apikeys/{KEY}/peers/x/exists")))
        .send()
        .unwrap();
    assert_eq!(api.status(), 404);

    // Keys of the SDK's shape only, and paths that do not overlap.
    for (args, says) in [
        (vec!["--skyway-key", "NOT-A-UUID"], "lower-case UUID"),
        (vec!["--skyway-path", "/media"], "overlap"),
        (vec!["--skyway-path", "/api"], "Vessel's own routes"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_vessel"))
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }

    // A server reachable from other machines takes only the keys it is given.
    let exposed = Server::start_full(
        "0.0.0.0",
        &["--skyway-key", "0123abcd-0000-4000-8000-00000000beef"],
        &[],
    );
    let mut refused = SkyWay::connect(&exposed, &format!("apiKey={KEY}&token=t"));
    assert_eq!(refused.expect("ERROR")["type"], "invalid-key");
    let mut ok = SkyWay::connect(
        &exposed,
        "apiKey=0123abcd-0000-4000-8000-00000000beef&token=t",
    );
    assert_eq!(ok.event().unwrap().0, "OPEN");
    let unkeyed = Server::start_full("0.0.0.0", &[], &[]);
    assert!(unkeyed.log_text().contains("no --skyway-key"));
}

#[test]
fn credentialed_cors_echoes_allowed_origins_only() {
    let server = Server::start_with_args(&["--cors-origin", "https://site.example"]);
    let get = |origin: &str| {
        http()
            .get(server.url(&format!(
                "/socket.io/?EIO=3&transport=polling&apiKey={KEY}&token=t"
            )))
            .header("origin", origin)
            .send()
            .unwrap()
    };
    let ok = get("https://site.example");
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://site.example"
    );
    assert_eq!(ok.headers()["access-control-allow-credentials"], "true");
    let other = get("https://evil.example");
    assert!(other.headers().get("access-control-allow-origin").is_none());
    // A WebSocket from a page of another origin is refused with a reason.
    let url = server
        .url(&format!(
            "/socket.io/?EIO=3&transport=websocket&apiKey={KEY}&token=t"
        ))
        .replace("http://", "ws://");
    let mut req = tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    let (mut ws, _) = tungstenite::connect(req).unwrap();
    if let MaybeTlsStream::Plain(s) = ws.get_mut() {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    let mut said = String::new();
    while let Ok(Message::Text(t)) = ws.read() {
        said.push_str(t.as_str());
        if said.contains("ERROR") {
            break;
        }
    }
    assert!(said.contains("invalid-domain"), "{said}");
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The credential query parameter skyway-js sends (URI-encoded JSON).
fn credential(timestamp: u64, auth_token: &str) -> String {
    let json = json!({"timestamp": timestamp, "ttl": 3600, "authToken": auth_token}).to_string();
    let mut out = String::new();
    for b in json.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn admin(server: &Server, path: &str, body: Value) -> Value {
    let text = http()
        .post(server.url(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .unwrap()
        .text()
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn rooms_follow_their_lives_access_rules() {
    let server = Server::start_with_args(&["--viewer-token-secret", "s3cret"]);
    // A private live: its room needs a viewer token to join.
    admin(
        &server,
        "/api/lives",
        json!({"live": "vip", "private": true}),
    );
    let (mut io, _) = SkyWay::open(&server, Some("fan"));
    let (kind, why) = io.refused("ROOM_JOIN", json!({"roomName": "vip", "roomType": "sfu"}));
    assert_eq!(kind, "authentication");
    assert!(why.contains("private"), "{why}");
    let token = admin(&server, "/api/lives/vip/tokens", json!({"ttl": 600}))["token"]
        .as_str()
        .unwrap()
        .to_string();
    let mut ticketed = SkyWay::connect(
        &server,
        &format!(
            "apiKey={KEY}&token=t&peerId=ticketed&credential={}",
            credential(unix_now(), &token)
        ),
    );
    assert_eq!(ticketed.expect("OPEN")["peerId"], "ticketed");
    assert_eq!(ticketed.join("vip", "sfu")["src"], "ticketed");

    // A keyed live: sending media in its mesh room needs the stream key,
    // SkyWay's signature made with it, or the key itself.
    let key = admin(&server, "/api/lives", json!({"live": "keyed"}))["key"]
        .as_str()
        .unwrap()
        .to_string();
    let (mut viewer, _) = SkyWay::open(&server, Some("viewer"));
    viewer.join("keyed", "mesh");
    let (mut pretender, _) = SkyWay::open(&server, Some("pretender"));
    pretender.join("keyed", "mesh");
    let sends = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=sendonly\r\n";
    let answer = json!({"answer": {"type": "answer", "sdp": sends}, "dst": "viewer", "roomName": "keyed", "connectionId": "mc_1"});
    let (kind, why) = pretender.refused("SEND_ANSWER", answer.clone());
    assert_eq!(kind, "authentication");
    assert!(why.contains("stream key"), "{why}");
    let now = unix_now();
    let signed = vessel::skyway::sign(&key, &format!("{now}:3600:caster"));
    let cred = credential(now, &signed);
    let mut caster = SkyWay::connect(
        &server,
        &format!("apiKey={KEY}&token=t&peerId=caster&credential={cred}"),
    );
    caster.expect("OPEN");
    caster.join("keyed", "mesh");
    caster.send("SEND_ANSWER", answer);
    assert_eq!(viewer.expect("ANSWER")["src"], "caster");
    // The same signature for another peer id is no use.
    let mut thief = SkyWay::connect(
        &server,
        &format!("apiKey={KEY}&token=t&peerId=thief&credential={cred}"),
    );
    thief.expect("OPEN");
    thief.join("keyed", "mesh");
    let (kind, _) = thief.refused(
        "SEND_OFFER",
        json!({"offer": {"type": "offer", "sdp": sends}, "dst": "viewer", "roomName": "keyed"}),
    );
    assert_eq!(kind, "authentication");
}

#[test]
fn the_admission_webhook_is_asked_with_protocol_skyway() {
    let (url, seen) = webhook();
    let server = Server::start_with_args(&["--admission-webhook", &url]);
    let (mut io, _) = SkyWay::open(&server, Some("someone"));
    let (kind, why) = io.refused(
        "ROOM_JOIN",
        json!({"roomName": "hooked", "roomType": "mesh"}),
    );
    assert_eq!(kind, "permission");
    assert!(why.contains("viewers from there are not allowed"), "{why}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0]["live"], "hooked");
    assert_eq!(seen[0]["role"], "play");
    assert_eq!(seen[0]["protocol"], "skyway");
}
