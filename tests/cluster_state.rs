//! State that spans a cluster's nodes through Redis, on real `vessel`
//! processes and a real `redis-server`: chat rooms (one order, the same
//! ids, history and removals on every node) and the admin API's stream
//! keys and private lives (enforced by every node, kept across restarts),
//! PeerJS peers on different nodes reaching each other,
//! and what happens while Redis is gone. Needs `redis-server` on the PATH.

mod common;

use std::time::{Duration, Instant};

use common::chat::{self, Socket, next, say};
use common::cluster::{Redis, fresh_nodes, id_of, poll};
use common::{Client, Server, http};
use serde_json::{Value, json};
use tungstenite::Message;
use tungstenite::stream::MaybeTlsStream;

const LIMIT: Duration = Duration::from_secs(15);
const VIEWER_SECRET: &str = "viewer-secret-for-tests";

/// A node of the cluster, with a viewer-token secret (the same on every
/// node, as a cluster's must be).
fn member(redis: &Redis) -> Server {
    let url = redis.url();
    Server::start_with_args(&[
        "--workers",
        "1",
        "--cluster",
        &url,
        "--cluster-secret",
        "s3cret",
        "--node-capacity",
        "100",
        "--viewer-token-secret",
        VIEWER_SECRET,
    ])
}

/// Nodes that all see each other's heartbeats (so Redis is reachable from
/// each, and their subscriptions are up a moment later).
fn cluster_of(redis: &Redis, n: usize) -> Vec<Server> {
    let nodes: Vec<Server> = (0..n).map(|_| member(redis)).collect();
    let mut ids: Vec<String> = nodes.iter().map(id_of).collect();
    ids.sort();
    for node in &nodes {
        poll(LIMIT, "every node's heartbeat on every node", || {
            fresh_nodes(node) == ids
        });
    }
    nodes
}

fn open(server: &Server, live: &str, query: &str) -> Socket {
    chat::open(server, live, query).0
}

/// The next `message` frame's (id, text).
fn message(ws: &mut Socket) -> (u64, String) {
    let (id, _, text) = chat::message(ws);
    (id, text)
}

/// Frames until `done` says so, or panics after `limit`.
fn frames_until(ws: &mut Socket, limit: Duration, mut done: impl FnMut(&Value) -> bool) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        assert!(Instant::now() < deadline, "the frame did not come");
        let frame = next(ws);
        if done(&frame) {
            return frame;
        }
    }
}

fn admin(server: &Server, method: &str, path: &str, body: Value) -> (u16, Value) {
    let req = match method {
        "POST" => http().post(server.url(path)),
        "PATCH" => http().patch(server.url(path)),
        "DELETE" => http().delete(server.url(path)),
        _ => unreachable!(),
    };
    let res = req
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .unwrap();
    let status = res.status().as_u16();
    let text = res.text().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The status a WHIP/WHEP POST gets (201: admitted).
fn status_of(server: &Server, path: &str, bearer: Option<&str>) -> u16 {
    match Client::try_connect(server, path, bearer) {
        Ok(_) => 201,
        Err((status, _)) => status,
    }
}

#[test]
fn a_chat_spans_the_nodes_in_one_order_with_history_and_removals() {
    let redis = Redis::start();
    let nodes = cluster_of(&redis, 3);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    // The caster is on A, and moderates there.
    let caster = Client::connect(a, "/whip/talk");
    let session = caster.location.rsplit('/').next().unwrap().to_string();
    let mut host = open(a, "talk", &format!("name=Host&session={session}"));
    let mut ann = open(a, "talk", "name=Ann");
    let mut bob = open(b, "talk", "name=Bob");
    let mut cy = open(c, "talk", "name=Cy");

    say(&mut bob, "hello from B");
    say(&mut ann, "hello from A");
    say(&mut cy, "hello from C");
    let seen: Vec<Vec<(u64, String)>> = [&mut host, &mut ann, &mut bob, &mut cy]
        .into_iter()
        .map(|ws| (0..3).map(|_| message(ws)).collect())
        .collect();
    for other in &seen[1..] {
        assert_eq!(other, &seen[0], "the same ids in the same order everywhere");
    }
    let ids: Vec<u64> = seen[0].iter().map(|m| m.0).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let mut texts: Vec<&str> = seen[0].iter().map(|m| m.1.as_str()).collect();
    texts.sort();
    assert_eq!(texts, ["hello from A", "hello from B", "hello from C"]);
    let from_b = seen[0].iter().find(|m| m.1 == "hello from B").unwrap().0;

    // A late joiner on C gets the history from Redis, ids and all.
    let mut late = open(c, "talk", "name=Late");
    let history: Vec<(u64, String)> = (0..3).map(|_| message(&mut late)).collect();
    assert_eq!(history, seen[0]);

    // The caster on A removes B's message: B's and C's clients hear it.
    host.send(Message::text(
        json!({"type": "remove", "id": from_b}).to_string(),
    ))
    .unwrap();
    for ws in [&mut bob, &mut cy, &mut ann] {
        let removed = next(ws);
        assert_eq!(removed["type"], "removed", "{removed}");
        assert_eq!(removed["id"], from_b);
    }
    // A viewer cannot remove, on any node.
    bob.send(Message::text(
        json!({"type": "remove", "id": ids[0]}).to_string(),
    ))
    .unwrap();
    let refused = next(&mut bob);
    assert_eq!(refused["type"], "error", "{refused}");
    // And the removed message is gone from the history a joiner gets.
    let mut later = open(b, "talk", "name=Later");
    let history: Vec<u64> = (0..2).map(|_| message(&mut later).0).collect();
    assert!(!history.contains(&from_b), "{history:?}");

    // The rate limit is per connection: Bob's burst of 5 runs out on B...
    for i in 0..6 {
        say(&mut bob, &format!("flood {i}"));
    }
    let limited = frames_until(&mut bob, LIMIT, |f| f["type"] == "error");
    assert!(
        limited["reason"]
            .as_str()
            .unwrap()
            .contains("too many messages"),
        "{limited}"
    );
    // ...while another connection on the same node still talks.
    say(&mut later, "not held back");
    frames_until(&mut cy, LIMIT, |f| f["text"] == "not held back");
}

#[test]
fn keys_and_private_lives_made_on_one_node_hold_on_every_node_and_after_restarts() {
    let redis = Redis::start();
    let nodes = cluster_of(&redis, 2);
    let (a, b) = (&nodes[0], &nodes[1]);

    // A key made on A: B refuses a caster without it, takes one with it.
    assert_eq!(status_of(b, "/whip/keyed", None), 201, "no key yet");
    let (status, body) = admin(a, "POST", "/api/lives", json!({"live": "keyed"}));
    assert_eq!(status, 201, "{body}");
    let key = body["key"].as_str().unwrap().to_string();
    poll(LIMIT, "B refuses a caster without the key", || {
        status_of(b, "/whip/keyed", None) == 401
    });
    assert_eq!(status_of(b, "/whip/keyed", Some("wrong-key")), 401);
    let caster = Client::try_connect(b, "/whip/keyed", Some(&key)).expect("the key works on B");

    // A live made private on A: B refuses a viewer without a token.
    let _vip = Client::connect(b, "/whip/vip");
    assert_eq!(
        status_of(b, "/whep/vip", None),
        201,
        "public until made private"
    );
    let (status, body) = admin(a, "PATCH", "/api/lives/vip", json!({"private": true}));
    assert_eq!(status, 200, "{body}");
    poll(LIMIT, "B refuses a viewer without a token", || {
        status_of(b, "/whep/vip", None) == 401
    });
    let (status, body) = admin(b, "POST", "/api/lives/vip/tokens", json!({"ttl": 600}));
    assert_eq!(status, 201, "{body}");
    let token = body["token"].as_str().unwrap();
    assert_eq!(status_of(b, "/whep/vip", Some(token)), 201);

    // A node started after the changes (B restarted) enforces them at once.
    drop(caster);
    drop(nodes);
    let restarted = member(&redis);
    assert_eq!(status_of(&restarted, "/whip/keyed", None), 401);
    assert_eq!(
        status_of(&restarted, "/whip/keyed", Some(&key)),
        201,
        "the key made before the restart"
    );
    assert_eq!(status_of(&restarted, "/whep/vip", None), 401);

    // A key revoked on the restarted node is refused on a fresh one too.
    let (status, _) = admin(&restarted, "DELETE", "/api/lives/keyed", json!({}));
    assert_eq!(status, 204);
    let (status, _) = admin(&restarted, "DELETE", "/api/lives/keyed", json!({}));
    assert_eq!(status, 404, "no key left to revoke");
    let fresh = member(&redis);
    assert_eq!(
        status_of(&fresh, "/whip/keyed", None),
        201,
        "no key any more: anyone may cast on a loopback server"
    );
    assert!(
        !restarted.log_text().contains(&key) && !fresh.log_text().contains(&key),
        "keys never reach the logs"
    );
}

#[test]
fn without_redis_chat_goes_on_locally_and_admin_changes_are_refused_with_a_reason() {
    let mut redis = Redis::start();
    let port = redis.port;
    let nodes = cluster_of(&redis, 2);
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut ann = open(a, "cut", "name=Ann");
    let mut al = open(a, "cut", "name=Al");
    say(&mut ann, "before");
    let (before, _) = message(&mut al);
    message(&mut ann);

    redis.kill();
    // Chat on A goes on for A's connections, after the ids it knew.
    say(&mut ann, "still here");
    let (id, text) = message(&mut al);
    assert_eq!((id > before, text.as_str()), (true, "still here"));
    assert_eq!(message(&mut ann).1, "still here");
    // A newcomer on A gets the room's history from A's copy.
    let mut newcomer = open(a, "cut", "name=New");
    let history: Vec<String> = (0..2).map(|_| message(&mut newcomer).1).collect();
    assert_eq!(history, ["before", "still here"]);

    // Keys cannot be made on one node only: 503, and it says why.
    let (status, body) = admin(a, "POST", "/api/lives", json!({"live": "later"}));
    assert_eq!(status, 503, "{body}");
    assert!(body.as_str().unwrap_or("").contains("Redis"), "{body}");

    // Redis back (empty): chat spans the nodes again.
    let _redis = Redis::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    let spans = loop {
        assert!(
            Instant::now() < deadline,
            "chat did not span the nodes again"
        );
        n += 1;
        let mut bob = open(b, "cut", "name=Bob");
        let text = format!("across {n}");
        say(&mut bob, &text);
        let heard = (|| {
            let until = Instant::now() + Duration::from_secs(1);
            while Instant::now() < until {
                if let Ok(Message::Text(t)) = al.read() {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if v["text"] == text.as_str() {
                        return Some(v);
                    }
                }
            }
            None
        })();
        if let Some(v) = heard {
            break v;
        }
    };
    assert!(
        spans["id"].as_u64().unwrap() > id,
        "ids go on after the ones A gave out alone: {spans}"
    );
    let log = a.log_text();
    assert!(log.contains("chat on this node is local"), "{log}");
    for node in &nodes {
        assert!(!node.log_text().contains("panicked"));
    }
}

/// The next PeerJS frame within `within`, if any (the socket stays usable).
fn peer_frame_within(ws: &mut common::peerjs::Socket, within: Duration) -> Option<Value> {
    if let MaybeTlsStream::Plain(s) = ws.get_mut() {
        s.set_read_timeout(Some(within)).unwrap();
    }
    let frame = match ws.read() {
        Ok(Message::Text(t)) => serde_json::from_str(t.as_str()).ok(),
        _ => None,
    };
    if let MaybeTlsStream::Plain(s) = ws.get_mut() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    frame
}

#[test]
fn peerjs_peers_on_different_nodes_reach_each_other() {
    use common::peerjs::{next, open, send};
    let redis = Redis::start();
    let mut nodes = cluster_of(&redis, 2);
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut caller = open(a, "peerjs", "caller", "t1");
    assert_eq!(next(&mut caller).unwrap()["type"], "OPEN");
    let mut callee = open(b, "peerjs", "callee", "t2");
    assert_eq!(next(&mut callee).unwrap()["type"], "OPEN");

    // Once both nodes listen (their subscriptions come up just after their
    // heartbeats), a message from A reaches B's peer, from A's peer.
    let mut n = 0;
    let first = loop {
        n += 1;
        assert!(n < 40, "no message crossed from A to B");
        send(
            &mut caller,
            json!({"type": "CANDIDATE", "dst": "callee", "payload": {"probe": n}}),
        );
        if let Some(m) = peer_frame_within(&mut callee, Duration::from_millis(250)) {
            break m;
        }
    };
    assert_eq!(first["src"], "caller", "{first}");
    while peer_frame_within(&mut callee, Duration::from_millis(300)).is_some() {}

    // A call's signaling, in order, both ways.
    send(
        &mut caller,
        json!({"type": "OFFER", "dst": "callee", "payload": {"sdp": "v=0"}}),
    );
    for i in 0..10 {
        send(
            &mut caller,
            json!({"type": "CANDIDATE", "dst": "callee", "payload": {"n": i}}),
        );
    }
    let offer = next(&mut callee).unwrap();
    assert_eq!(
        (offer["type"].as_str(), offer["src"].as_str()),
        (Some("OFFER"), Some("caller"))
    );
    for i in 0..10 {
        assert_eq!(
            next(&mut callee).unwrap()["payload"]["n"],
            i,
            "in the order sent"
        );
    }
    send(
        &mut callee,
        json!({"type": "ANSWER", "dst": "caller", "src": "forged", "payload": {}}),
    );
    let answer = next(&mut caller).unwrap();
    assert_eq!(
        (answer["type"].as_str(), answer["src"].as_str()),
        (Some("ANSWER"), Some("callee"))
    );

    // An id held on A with another token is taken on B too.
    let mut thief = open(b, "peerjs", "caller", "not-t1");
    assert_eq!(next(&mut thief).unwrap()["type"], "ID-TAKEN");
    assert!(next(&mut thief).is_none(), "and closed");
    // A message for an id connected nowhere waits, then expires to its sender.
    send(
        &mut caller,
        json!({"type": "OFFER", "dst": "nobody", "payload": {}}),
    );
    let expired = next(&mut caller).unwrap();
    assert_eq!(
        (expired["type"].as_str(), expired["src"].as_str()),
        (Some("EXPIRE"), Some("nobody"))
    );

    // B dies with its peer: once B's heartbeat is gone, the id is free.
    nodes[1].kill9();
    let a = &nodes[0];
    let started = Instant::now();
    let mut retaken = loop {
        assert!(started.elapsed() < LIMIT, "the dead node's id stays taken");
        let mut ws = open(a, "peerjs", "callee", "new-token");
        match next(&mut ws).unwrap()["type"].as_str() {
            Some("OPEN") => break ws,
            _ => std::thread::sleep(Duration::from_millis(250)),
        }
    };
    println!(
        "a killed node's PeerJS id was free again after {:?}",
        started.elapsed()
    );
    send(
        &mut caller,
        json!({"type": "OFFER", "dst": "callee", "payload": {}}),
    );
    assert_eq!(next(&mut retaken).unwrap()["src"], "caller");
    for log in nodes.iter().map(Server::log_text) {
        assert!(!log.contains("panicked"));
        assert!(
            !log.contains("new-token") && !log.contains("not-t1"),
            "tokens stay out of logs"
        );
    }
}
