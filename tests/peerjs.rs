//! The PeerJS PeerServer protocol on the real binary, with a WebSocket
//! client speaking what npm `peerjs` speaks.

mod common;

use std::time::{Duration, Instant};

use common::peerjs::{next, open, send};
use common::{Server, http};
use serde_json::{Value, json};

/// `GET /peer/peerjs/peers` as JSON.
fn peers(server: &Server) -> Value {
    let text = http()
        .get(server.url("/peer/peerjs/peers"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn ids_info_and_discovery_over_http() {
    let server = Server::start_with_args(&["--peerjs-discovery"]);
    let info: Value = serde_json::from_str(
        &http()
            .get(server.url("/peer"))
            .send()
            .unwrap()
            .text()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(info["name"], "PeerJS Server");
    let res = http()
        .get(server.url("/peer/peerjs/id?ts=123&version=1.5.4"))
        .send()
        .unwrap();
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let id = res.text().unwrap();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let _a = open(&server, "peerjs", &id, "tok");
    assert_eq!(peers(&server), json!([id]));
    assert_eq!(
        http()
            .get(server.url("/peer/wrongkey/peers"))
            .send()
            .unwrap()
            .status(),
        401
    );

    let closed = Server::start();
    assert_eq!(
        http()
            .get(closed.url("/peer/peerjs/peers"))
            .send()
            .unwrap()
            .status(),
        401
    );
    let off = Server::start_with_args(&["--no-peerjs"]);
    assert_eq!(
        http()
            .get(off.url("/peer/peerjs/id"))
            .send()
            .unwrap()
            .status(),
        404
    );
}

#[test]
fn open_id_taken_bad_key_and_relaying_with_src() {
    let server = Server::start();
    let mut alice = open(&server, "peerjs", "alice", "ta");
    assert_eq!(next(&mut alice).unwrap()["type"], "OPEN");
    let mut thief = open(&server, "peerjs", "alice", "other");
    let taken = next(&mut thief).unwrap();
    assert_eq!(
        (taken["type"].as_str(), taken["payload"]["msg"].as_str()),
        (Some("ID-TAKEN"), Some("ID is taken"))
    );
    assert!(next(&mut thief).is_none(), "closed after ID-TAKEN");
    let mut wrong = open(&server, "nope", "zed", "t");
    let error = next(&mut wrong).unwrap();
    assert_eq!(error["type"], "ERROR");
    assert_eq!(error["payload"]["msg"], "Invalid key provided");
    assert!(next(&mut wrong).is_none());

    // Alice was not disturbed: Bob reaches her, and src is Bob whatever he claims.
    let mut bob = open(&server, "peerjs", "bob", "tb");
    assert_eq!(next(&mut bob).unwrap()["type"], "OPEN");
    send(
        &mut bob,
        json!({"type": "OFFER", "src": "alice", "dst": "alice", "payload": {"sdp": {"type": "offer"}, "connectionId": "mc_1"}}),
    );
    let offer = next(&mut alice).unwrap();
    assert_eq!(
        (offer["type"].as_str(), offer["src"].as_str()),
        (Some("OFFER"), Some("bob"))
    );
    assert_eq!(offer["payload"]["connectionId"], "mc_1");
    send(
        &mut alice,
        json!({"type": "ANSWER", "dst": "bob", "payload": {"connectionId": "mc_1"}}),
    );
    let answer = next(&mut bob).unwrap();
    assert_eq!(
        (answer["type"].as_str(), answer["src"].as_str()),
        (Some("ANSWER"), Some("alice"))
    );
}

#[test]
fn an_offline_peer_gets_its_messages_late_or_the_sender_gets_expire() {
    let server = Server::start();
    let mut alice = open(&server, "peerjs", "alice", "ta");
    next(&mut alice);
    send(
        &mut alice,
        json!({"type": "OFFER", "dst": "carol", "payload": {"n": 1}}),
    );
    send(
        &mut alice,
        json!({"type": "CANDIDATE", "dst": "carol", "payload": {"n": 2}}),
    );
    let mut carol = open(&server, "peerjs", "carol", "tc");
    let types: Vec<Value> = (0..3)
        .map(|_| next(&mut carol).unwrap()["type"].clone())
        .collect();
    assert_eq!(types, [json!("OPEN"), json!("OFFER"), json!("CANDIDATE")]);

    let sent = Instant::now();
    send(
        &mut alice,
        json!({"type": "OFFER", "dst": "dave", "payload": {}}),
    );
    let expire = next(&mut alice).unwrap();
    assert_eq!(
        (
            expire["type"].as_str(),
            expire["src"].as_str(),
            expire["dst"].as_str()
        ),
        (Some("EXPIRE"), Some("dave"), Some("alice"))
    );
    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(8),
        "{waited:?}"
    );
}

#[test]
fn silent_peers_are_dropped_and_heartbeats_keep_peers() {
    let server = Server::start_with_args(&["--peerjs-alive-timeout", "2", "--peerjs-discovery"]);
    let mut quiet = open(&server, "peerjs", "quiet", "t1");
    let mut chatty = open(&server, "peerjs", "chatty", "t2");
    next(&mut quiet);
    next(&mut chatty);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        send(&mut chatty, json!({"type": "HEARTBEAT"}));
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        next(&mut quiet).is_none(),
        "the silent peer's socket is closed"
    );
    assert_eq!(peers(&server), json!(["chatty"]));
    // A dropped id is free again.
    let mut again = open(&server, "peerjs", "quiet", "new-token");
    assert_eq!(next(&mut again).unwrap()["type"], "OPEN");
}

#[test]
fn the_peer_limit_is_kept() {
    let server = Server::start_with_args(&["--peerjs-max-peers", "1"]);
    let mut first = open(&server, "peerjs", "one", "t");
    assert_eq!(next(&mut first).unwrap()["type"], "OPEN");
    let mut second = open(&server, "peerjs", "two", "t");
    let e = next(&mut second).unwrap();
    assert_eq!(e["type"], "ERROR");
    assert!(
        e["payload"]["msg"].as_str().unwrap().contains("limit"),
        "{e}"
    );
}
