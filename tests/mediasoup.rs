//! The socket.io "Vessel" protocol (mediasoup-client's dialect) on the real
//! binary, spoken by a minimal socket.io client (engine.io v4 over a
//! WebSocket). The browser tests drive it with the real mediasoup-client;
//! these check what a browser cannot easily: bad input, and that a socket
//! that goes takes its transports with it.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::socketio::Ws;
use common::{Client, Server, http, live_state};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha1::Sha1;
use str0m::ice::{StunMessage, TransId};
use tungstenite::Message;

/// The mediasoup dialect's client: engine.io 4, a namespace connect with
/// the `auth` payload, and requests answered by `re:<name>`.
struct SocketIo(Ws);

impl std::ops::Deref for SocketIo {
    type Target = Ws;
    fn deref(&self) -> &Ws {
        &self.0
    }
}

impl std::ops::DerefMut for SocketIo {
    fn deref_mut(&mut self) -> &mut Ws {
        &mut self.0
    }
}

impl SocketIo {
    /// Opens `/media` with `query` and joins the default namespace.
    fn connect(server: &Server, query: &str) -> Result<Self, String> {
        Self::connect_with(server, query, None)
    }

    /// As [`SocketIo::connect`], with socket.io's `auth` payload.
    fn connect_with(server: &Server, query: &str, auth: Option<Value>) -> Result<Self, String> {
        let mut io = Ws::open(server, "/media", 4, query)?;
        let connect = match auth {
            Some(a) => format!("40{a}"),
            None => "40".into(),
        };
        io.raw(&connect);
        // Requests sent before the namespace's connect answer are dropped
        // (and the socket with them), as socket.io clients know.
        loop {
            let f = io
                .frame()
                .ok_or("closed before the socket.io connect answer")?;
            if f.starts_with("40") {
                return Ok(Self(io));
            }
            if f.starts_with("44") {
                return Err(f);
            }
        }
    }

    /// Sends `name` with `arg` and returns what `re:<name>` carries.
    fn ask(&mut self, name: &str, arg: Value) -> Value {
        self.send(name, arg);
        self.expect(&format!("re:{name}"))
    }

    fn close(self) {
        self.0.close();
    }
}

fn fake_fingerprint() -> String {
    ["AB"; 32].join(":")
}

fn error_of(reply: &Value) -> &str {
    reply["error"]
        .as_str()
        .unwrap_or_else(|| panic!("expected {{error}}, got {reply}"))
}

/// A STUN binding request to a transport's UDP candidate, signed as a
/// browser signs it; true if it is answered.
fn stun_answered(transport: &Value) -> bool {
    let candidate = transport["iceCandidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["protocol"] == "udp")
        .unwrap();
    let to = SocketAddr::new(
        candidate["address"].as_str().unwrap().parse().unwrap(),
        candidate["port"].as_u64().unwrap() as u16,
    );
    let ice = &transport["iceParameters"];
    let username = format!("{}:browser", ice["usernameFragment"].as_str().unwrap());
    let password = ice["password"].as_str().unwrap();
    let msg = StunMessage::binding_request(&username, TransId::new(), true, 7, 1_000, false);
    let mut buf = [0u8; 512];
    let n = msg
        .to_bytes(Some(password.as_bytes()), &mut buf, |key, parts| {
            let mut mac = Hmac::<Sha1>::new_from_slice(key).unwrap();
            for p in parts {
                mac.update(p);
            }
            mac.finalize().into_bytes().into()
        })
        .unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    for _ in 0..3 {
        socket.send_to(&buf[..n], to).unwrap();
        let mut reply = [0u8; 1500];
        if let Ok(len) = socket.recv(&mut reply) {
            return StunMessage::parse(&reply[..len])
                .is_ok_and(|m| m.is_successful_binding_response());
        }
    }
    false
}

#[test]
fn bad_requests_are_answered_with_a_reason_and_the_live_goes_on() {
    let server = Server::start();
    let mut caster = Client::connect(&server, "/whip/goes-on");
    caster.run_until(Duration::from_secs(10), "the caster connects", |c| {
        c.connected
    });

    let mut io = SocketIo::connect(&server, "live=goes-on").unwrap();
    let produce = json!({"kind": "video", "rtpParameters": {"mid": "0",
        "codecs": [{"mimeType": "video/VP8", "payloadType": 96, "clockRate": 90000}],
        "encodings": [{"rid": "r0"}]}});
    // Before any transport.
    let e = io.ask("produce", produce.clone());
    assert!(error_of(&e).contains("createProducerTransport"), "{e}");
    let e = io.ask("connectConsumerTransport", json!({"dtlsParameters": {}}));
    assert!(error_of(&e).contains("createConsumerTransport"), "{e}");

    let t = io.ask("createProducerTransport", Value::Null);
    let id = t["id"].as_str().unwrap().to_string();
    for (name, arg, reason) in [
        ("produce", json!("nonsense"), "kind"),
        (
            "produce",
            json!({"transportId": id, "kind": "video"}),
            "rtpParameters",
        ),
        (
            "produce",
            json!({"transportId": id, "kind": "video", "rtpParameters": {"mid": "0",
                   "codecs": [{"mimeType": "video/VP8", "payloadType": 96, "clockRate": 90000}],
                   "encodings": [{"rid": "a-rid-far-too-long"}]}}),
            "rid",
        ),
        (
            "produce",
            json!({"transportId": id, "kind": "video", "rtpParameters": {"mid": "0",
                   "codecs": [{"mimeType": "video/x-unknown", "payloadType": 96, "clockRate": 90000}],
                   "encodings": [{"ssrc": 1}]}}),
            "codec",
        ),
        (
            "connectProducerTransport",
            json!({"transportId": id, "dtlsParameters": {"fingerprints": [{"algorithm": "sha-256", "value": "zz"}]}}),
            "fingerprint",
        ),
        (
            "connectProducerTransport",
            json!({"transportId": id, "dtlsParameters": {"role": "server",
                   "fingerprints": [{"algorithm": "sha-256", "value": fake_fingerprint()}]}}),
            "DTLS server",
        ),
        ("consume", json!({"nothing": true}), "rtpCapabilities"),
        ("consume", json!({"codecs": []}), "consumer transport"),
    ] {
        let reply = io.ask(name, arg.clone());
        let e = error_of(&reply);
        assert!(
            e.contains(reason),
            "{name} {arg}: {e:?} should mention {reason:?}"
        );
    }
    // A request with no argument at all is still answered, with a reason
    // (mediasoup-client code awaits every answer).
    io.raw(r#"42["createProducerTransport"]"#);
    let reply = io.expect("re:createProducerTransport");
    assert!(error_of(&reply).contains("needs one argument"), "{reply}");
    // What the server does not know is ignored, not fatal.
    io.ws
        .send(Message::text(r#"42["noSuchRequest",{}]"#))
        .unwrap();
    let caps = io.ask("routerCapabilities", Value::Null);
    assert!(caps["codecs"].as_array().is_some_and(|c| !c.is_empty()));

    // A packet that is not socket.io ends that socket (socketioxide's
    // rule), and nothing else.
    let mut junk = SocketIo::connect(&server, "live=goes-on").unwrap();
    junk.ws.send(Message::text("42[not json")).unwrap();
    assert!(junk.event().is_none(), "the junk socket is closed");
    let caps = io.ask("routerCapabilities", Value::Null);
    assert!(caps["codecs"].is_array());

    // A bad live name is refused at connect.
    let mut bad = SocketIo::connect(&server, "live=no%20spaces%2Fplease").unwrap();
    let (name, arg) = bad.event().expect("an error event before the disconnect");
    assert_eq!(name, "error");
    assert!(error_of(&arg).contains("live"), "{arg}");

    // Nothing of that disturbed the WHIP caster.
    caster.run(Duration::from_millis(500));
    assert!(caster.connected && !caster.closed);
    assert_eq!(live_state(&server, "goes-on")["onAir"], true);
    io.close();
}

#[test]
fn a_socket_that_goes_takes_its_transports_with_it() {
    let server = Server::start();
    let mut io = SocketIo::connect(&server, "live=leaving").unwrap();
    let viewer = io.ask("createConsumerTransport", Value::Null);
    let caster = io.ask("createProducerTransport", Value::Null);
    assert!(
        stun_answered(&viewer),
        "a viewer transport answers ICE checks: {viewer}"
    );
    // A caster transport is built at its first produce; until then its
    // checks wait (the first few are kept for when it is).
    assert!(
        !stun_answered(&caster),
        "a caster transport without a producer stays quiet"
    );
    io.close();
    let deadline = Instant::now() + Duration::from_secs(5);
    while stun_answered(&viewer) {
        assert!(
            Instant::now() < deadline,
            "the viewer transport outlived its socket"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = server.log_text();
    assert!(
        log.contains("caster transport closed: ended by the client"),
        "the pending caster transport ended with the socket:\n{log}"
    );
}

/// POST to the admin API; the JSON answer.
fn admin(server: &Server, path: &str, body: Value) -> Value {
    let res = http()
        .post(server.url(path))
        .header("content-type", "application/json")
        .header("authorization", "Bearer admin-secret-1")
        .body(body.to_string())
        .send()
        .unwrap();
    assert!(res.status().is_success(), "POST {path}: {}", res.status());
    serde_json::from_str(&res.text().unwrap()).unwrap()
}

#[test]
fn stream_keys_and_viewer_tokens_come_in_the_auth_payload_or_the_query() {
    let server = Server::start_with_args(&[
        "--admin-token",
        "admin-secret-1",
        "--viewer-token-secret",
        "viewer-secret-0123456789",
    ]);
    let key = admin(
        &server,
        "/api/lives",
        json!({"live": "vip", "private": true}),
    )["key"]
        .as_str()
        .unwrap()
        .to_string();
    let token = admin(&server, "/api/lives/vip/tokens", json!({"ttl": 600}))["token"]
        .as_str()
        .unwrap()
        .to_string();

    let mut anonymous = SocketIo::connect(&server, "live=vip").unwrap();
    let e = anonymous.ask("createProducerTransport", Value::Null);
    assert!(error_of(&e).contains("key"), "{e}");
    let e = anonymous.ask("createConsumerTransport", Value::Null);
    assert!(error_of(&e).contains("private"), "{e}");
    let mut wrong =
        SocketIo::connect_with(&server, "live=vip", Some(json!({"token": "nope-nope"}))).unwrap();
    let e = wrong.ask("createProducerTransport", Value::Null);
    assert!(error_of(&e).contains("key"), "{e}");

    let mut caster =
        SocketIo::connect_with(&server, "live=vip", Some(json!({"token": key}))).unwrap();
    let t = caster.ask("createProducerTransport", Value::Null);
    assert!(t["id"].is_string(), "the stream key in `auth` casts: {t}");
    let mut viewer = SocketIo::connect(&server, &format!("live=vip&token={token}")).unwrap();
    let t = viewer.ask("createConsumerTransport", Value::Null);
    assert!(
        t["id"].is_string(),
        "the viewer token in the query plays: {t}"
    );
    // A token is for its own live only.
    admin(
        &server,
        "/api/lives",
        json!({"live": "vip2", "private": true}),
    );
    let mut elsewhere = SocketIo::connect(&server, &format!("live=vip2&token={token}")).unwrap();
    let e = elsewhere.ask("createConsumerTransport", Value::Null);
    assert!(
        error_of(&e).contains("vip"),
        "another live's token is refused: {e}"
    );
    for io in [anonymous, wrong, caster, viewer, elsewhere] {
        io.close();
    }
}

#[test]
fn the_path_can_move_or_the_protocol_be_turned_off() {
    let moved = Server::start_with_args(&["--mediasoup-path", "/signal/ms/"]);
    let status = |server: &Server, path: &str| {
        http()
            .get(server.url(path))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(status(&moved, "/media/?EIO=4&transport=polling"), 404);
    assert_eq!(status(&moved, "/signal/ms/?EIO=4&transport=polling"), 200);

    let off = Server::start_with_args(&["--no-mediasoup"]);
    assert_eq!(status(&off, "/media/?EIO=4&transport=polling"), 404);

    // Two protocols on one path is refused at start, with the reason.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vessel"))
        .args(["--peerjs-path", "/signal", "--mediasoup-path", "/signal/ms"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("overlap"), "{stderr}");
}

#[test]
fn a_key_in_the_query_is_percent_decoded() {
    let dir = std::env::temp_dir().join(format!("vessel-mediasoup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("vessel.toml");
    std::fs::write(&config, "[lives.odd]\nkey = \"p+ss/w=rd 123\"\n").unwrap();
    let server = Server::start_with_args(&["--config", config.to_str().unwrap()]);
    let mut io = SocketIo::connect(&server, "live=odd&key=p%2Bss%2Fw%3Drd%20123").unwrap();
    let t = io.ask("createProducerTransport", Value::Null);
    assert!(t["id"].is_string(), "the decoded key casts: {t}");
    io.close();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_transport_made_before_its_key_was_revoked_cannot_produce() {
    let server = Server::start_full("0.0.0.0", &["--admin-token", "admin-secret-1"], &[]);
    let key = admin(&server, "/api/lives", json!({"live": "rev"}))["key"]
        .as_str()
        .unwrap()
        .to_string();
    let mut io = SocketIo::connect_with(&server, "live=rev", Some(json!({"token": key}))).unwrap();
    let t = io.ask("createProducerTransport", Value::Null);
    let audio = json!({"transportId": t["id"], "kind": "audio", "rtpParameters": {"mid": "0",
        "codecs": [{"mimeType": "audio/opus", "payloadType": 111, "clockRate": 48000, "channels": 2}],
        "encodings": [{"ssrc": 1111}]}});
    let res = http()
        .delete(server.url("/api/lives/rev"))
        .header("authorization", "Bearer admin-secret-1")
        .send()
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let e = io.ask("produce", audio);
    assert!(error_of(&e).contains("key"), "{e}");
    assert_eq!(live_state(&server, "rev")["onAir"], false);
    io.close();
}

/// A client that asks the moment it is connected is answered: socketioxide
/// sends the connect packet before it runs the connect handler, so the
/// request handlers are registered in a middleware, before it (one CI run
/// lost such a request: "the socket closed before re:createProducerTransport").
#[test]
fn a_request_sent_the_moment_the_socket_connects_is_answered() {
    let server = Server::start();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..25 {
                    let mut io = SocketIo::connect(&server, "live=eager").unwrap();
                    let caps = io.ask("routerCapabilities", Value::Null);
                    assert!(caps["codecs"].is_array(), "{caps}");
                    io.close();
                }
            });
        }
    });
}
