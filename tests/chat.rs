//! Chat over the WebSocket at /api/lives/{live}/chat, on the real binary.

mod common;

use common::chat::{message, next, open, say};
use common::{Client, Server};
use serde_json::{Value, json};
use tungstenite::Message;

#[test]
fn everyone_sees_messages_in_the_same_order_and_a_reconnect_catches_up() {
    let server = Server::start();
    let (mut a, welcome) = open(&server, "talk", "name=Ann");
    assert_eq!(welcome["name"], "Ann");
    assert_eq!(welcome["moderator"], false);
    let (mut b, _) = open(&server, "talk", "name=Bob");
    for i in 0..3 {
        say(&mut a, &format!("a{i}"));
        say(&mut b, &format!("b{i}"));
    }
    let seen_a: Vec<_> = (0..6).map(|_| message(&mut a)).collect();
    let seen_b: Vec<_> = (0..6).map(|_| message(&mut b)).collect();
    assert_eq!(seen_a, seen_b, "the same messages in the same order");
    let ids: Vec<u64> = seen_a.iter().map(|m| m.0).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let mut texts: Vec<&str> = seen_a.iter().map(|m| m.2.as_str()).collect();
    texts.sort();
    assert_eq!(texts, ["a0", "a1", "a2", "b0", "b1", "b2"]);

    // Bob drops off; two messages later he reconnects with the last id he
    // had and gets exactly what he missed, in order.
    drop(b);
    say(&mut a, "while you were away");
    say(&mut a, "and this");
    let last = ids[5];
    let (mut b, _) = open(&server, "talk", &format!("name=Bob&since={last}"));
    let missed: Vec<String> = (0..2).map(|_| message(&mut b).2).collect();
    assert_eq!(missed, ["while you were away", "and this"]);
    // A fresh joiner gets the whole kept history.
    let (mut c, _) = open(&server, "talk", "name=Cy");
    let history: Vec<u64> = (0..8).map(|_| message(&mut c).0).collect();
    assert_eq!(&history[..6], &ids[..]);
}

#[test]
fn long_messages_and_floods_are_refused_with_a_reason() {
    let server = Server::start();
    let (mut a, _) = open(&server, "limits", "name=Ann");
    say(&mut a, &"x".repeat(501));
    let e = next(&mut a);
    assert_eq!(e["type"], "error");
    assert!(e["reason"].as_str().unwrap().contains("too long"), "{e}");
    say(&mut a, &"x".repeat(500));
    assert_eq!(message(&mut a).2.len(), 500);
    // Garbage gets a reason, and the connection stays.
    a.send(Message::text("{\"type\": \"shout\"}")).unwrap();
    let e = next(&mut a);
    assert!(e["reason"].as_str().unwrap().contains("bad frame"), "{e}");
    // The burst is 5 (one is spent); the 6th in a row is refused.
    for i in 0..5 {
        say(&mut a, &format!("flood {i}"));
    }
    let mut refused = None;
    for _ in 0..5 {
        let m = next(&mut a);
        if m["type"] == "error" {
            refused = Some(m);
        }
    }
    let refused = refused.expect("one message over the limit");
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .contains("too many messages"),
        "{refused}"
    );
    // Another connection is not held back by this one.
    let (mut b, _) = open(&server, "limits", "name=Bob");
    for _ in 0..5 {
        message(&mut b); // history
    }
    say(&mut b, "still fine");
    assert_eq!(message(&mut b).2, "still fine");
}

#[test]
fn only_the_caster_removes_messages() {
    let server = Server::start();
    let caster = Client::connect(&server, "/whip/moderated");
    let session = caster.location.rsplit('/').next().unwrap().to_string();
    let (mut viewer, _) = open(&server, "moderated", "name=Troll");
    let (mut host, welcome) = open(
        &server,
        "moderated",
        &format!("name=Host&session={session}"),
    );
    assert_eq!(welcome["moderator"], true);
    let (mut fake, welcome) = open(&server, "moderated", "name=Fake&session=12345");
    assert_eq!(welcome["moderator"], false);

    say(&mut viewer, "spam");
    let (id, _, _) = message(&mut viewer);
    message(&mut host);
    message(&mut fake);
    fake.send(Message::text(
        json!({"type": "remove", "id": id}).to_string(),
    ))
    .unwrap();
    let e = next(&mut fake);
    assert!(
        e["reason"]
            .as_str()
            .unwrap()
            .contains("only the live's caster"),
        "{e}"
    );
    host.send(Message::text(
        json!({"type": "remove", "id": id}).to_string(),
    ))
    .unwrap();
    for ws in [&mut viewer, &mut host, &mut fake] {
        let r = next(ws);
        assert_eq!(
            (r["type"].as_str(), r["id"].as_u64()),
            (Some("removed"), Some(id))
        );
    }
    // Someone away when it was removed hears of it on reconnecting.
    let (mut back, _) = open(&server, "moderated", &format!("name=Back&since={id}"));
    let r = next(&mut back);
    assert_eq!(
        (r["type"].as_str(), r["id"].as_u64()),
        (Some("removed"), Some(id))
    );
    // The caster's own messages are marked.
    say(&mut host, "welcome all");
    let m = next(&mut viewer);
    assert_eq!(m["caster"], true, "{m}");
    // A removed message is not replayed to newcomers.
    let (mut late, _) = open(&server, "moderated", "name=Late");
    let m = next(&mut late);
    assert_eq!(m["text"], "welcome all", "{m}");
}

#[test]
fn a_private_live_chat_needs_a_token() {
    let server = Server::start_with_args(&["--viewer-token-secret", "s3cret-for-tests"]);
    let res = common::http()
        .post(server.url("/api/lives"))
        .header("content-type", "application/json")
        .body(r#"{"live": "hidden", "private": true}"#)
        .send()
        .unwrap();
    assert_eq!(res.status(), 201);
    let url = server
        .url("/api/lives/hidden/chat")
        .replace("http://", "ws://");
    match tungstenite::connect(url) {
        Err(tungstenite::Error::Http(res)) => assert_eq!(res.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    let token: Value = common::http()
        .post(server.url("/api/lives/hidden/tokens"))
        .send()
        .unwrap()
        .text()
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap();
    let token = token["token"].as_str().unwrap();
    open(&server, "hidden", &format!("name=In&token={token}"));
    // The live's own caster chats (and moderates) with its WHIP session id.
    let key: Value = serde_json::from_str(
        &common::http()
            .post(server.url("/api/lives"))
            .body(r#"{"live": "hidden", "private": true}"#)
            .send()
            .unwrap()
            .text()
            .unwrap(),
    )
    .unwrap();
    let caster = Client::try_connect(&server, "/whip/hidden", key["key"].as_str()).unwrap();
    let session = caster.location.rsplit('/').next().unwrap();
    let (_, welcome) = open(&server, "hidden", &format!("name=Host&session={session}"));
    assert_eq!(welcome["moderator"], true);
}
