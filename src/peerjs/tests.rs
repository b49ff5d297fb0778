use std::time::{Duration, Instant};

use serde_json::Value;

use super::*;

struct World {
    server: PeerServer,
    now: Instant,
}

impl World {
    fn new() -> Self {
        Self {
            server: PeerServer::new(PeerConfig {
                max_peers: 3,
                ..PeerConfig::default()
            }),
            now: Instant::now(),
        }
    }

    fn connect(&mut self, conn: ConnId, id: &str, token: &str) -> Vec<Out> {
        self.server
            .connect(conn, Some("peerjs"), Some(id), Some(token), self.now);
        self.drain()
    }

    fn say(&mut self, conn: ConnId, text: &str) -> Vec<Out> {
        self.server.message(conn, text, self.now);
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

fn sent(out: &[Out], to: ConnId) -> Vec<Value> {
    out.iter()
        .filter_map(|o| match o {
            Out::Send(c, text) if *c == to => Some(serde_json::from_str(text).unwrap()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_peer_opens_and_a_taken_id_is_refused_without_disturbing_its_holder() {
    let mut w = World::new();
    let out = w.connect(1, "alice", "t1");
    assert_eq!(sent(&out, 1)[0]["type"], "OPEN");
    let out = w.connect(2, "alice", "other-token");
    assert_eq!(sent(&out, 2)[0]["type"], "ID-TAKEN");
    assert_eq!(sent(&out, 2)[0]["payload"]["msg"], "ID is taken");
    assert!(out.contains(&Out::Close(2)));
    assert!(!out.contains(&Out::Close(1)), "the holder stays");
    assert_eq!(w.server.peers(), ["alice"]);
}

#[test]
fn the_same_token_replaces_the_socket_silently() {
    let mut w = World::new();
    w.connect(1, "alice", "t1");
    let out = w.connect(2, "alice", "t1");
    assert!(sent(&out, 2).is_empty(), "no OPEN for a replaced socket");
    assert!(out.contains(&Out::Close(1)));
    // The old socket closing does not remove the peer.
    w.server.disconnect(1);
    assert_eq!(w.server.peers(), ["alice"]);
    w.server.disconnect(2);
    assert!(w.server.peers().is_empty());
}

#[test]
fn bad_keys_and_missing_parameters_get_an_error() {
    let mut w = World::new();
    w.server
        .connect(1, Some("wrong"), Some("a"), Some("t"), w.now);
    let out = w.drain();
    assert_eq!(sent(&out, 1)[0]["type"], "ERROR");
    assert_eq!(sent(&out, 1)[0]["payload"]["msg"], "Invalid key provided");
    assert!(out.contains(&Out::Close(1)));
    w.server.connect(2, Some("peerjs"), None, Some("t"), w.now);
    let out = w.drain();
    assert!(
        sent(&out, 2)[0]["payload"]["msg"]
            .as_str()
            .unwrap()
            .contains("No id")
    );
}

#[test]
fn signaling_is_relayed_with_the_server_s_src() {
    let mut w = World::new();
    w.connect(1, "alice", "t1");
    w.connect(2, "bob", "t2");
    let out = w.say(
        1,
        r#"{"type":"OFFER","src":"mallory","dst":"bob","payload":{"sdp":"x"}}"#,
    );
    let got = sent(&out, 2);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["type"], "OFFER");
    assert_eq!(got[0]["src"], "alice", "src is set by the server");
    assert_eq!(got[0]["payload"]["sdp"], "x");
    // Heartbeats, garbage and unknown types go nowhere.
    assert!(w.say(1, r#"{"type":"HEARTBEAT"}"#).is_empty());
    assert!(w.say(1, "not json").is_empty());
    assert!(w.say(1, r#"{"type":"SHOUT","dst":"bob"}"#).is_empty());
}

#[test]
fn messages_wait_for_an_absent_peer_then_expire_to_their_sender() {
    let mut w = World::new();
    w.connect(1, "alice", "t1");
    w.say(1, r#"{"type":"OFFER","dst":"carol","payload":{}}"#);
    w.say(1, r#"{"type":"CANDIDATE","dst":"carol","payload":{}}"#);
    // Carol arrives in time: both, in order, after OPEN.
    let out = w.connect(3, "carol", "t3");
    let types: Vec<String> = sent(&out, 3)
        .iter()
        .map(|m| m["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(types, ["OPEN", "OFFER", "CANDIDATE"]);

    // Dave never comes: one EXPIRE after 5 s, naming him as src.
    w.say(1, r#"{"type":"OFFER","dst":"dave","payload":{}}"#);
    w.say(1, r#"{"type":"CANDIDATE","dst":"dave","payload":{}}"#);
    assert!(w.wait(Duration::from_secs(4)).is_empty());
    let out = w.wait(Duration::from_secs(1));
    let got = sent(&out, 1);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (
            got[0]["type"].as_str(),
            got[0]["src"].as_str(),
            got[0]["dst"].as_str()
        ),
        (Some("EXPIRE"), Some("dave"), Some("alice"))
    );
    // LEAVE to an absent peer is dropped, not queued.
    w.say(1, r#"{"type":"LEAVE","dst":"erin"}"#);
    assert!(
        w.wait(Duration::from_secs(6))
            .iter()
            .all(|o| !matches!(o, Out::Send(1, _)))
    );
}

#[test]
fn silent_peers_are_dropped_and_heartbeats_keep_them() {
    let mut w = World::new();
    w.connect(1, "alice", "t1");
    w.connect(2, "bob", "t2");
    for _ in 0..5 {
        w.wait(Duration::from_secs(15));
        w.say(1, r#"{"type":"HEARTBEAT"}"#);
    }
    let out = w.drain();
    assert!(out.is_empty());
    assert_eq!(w.server.peers(), ["alice"], "bob said nothing for 75 s");
}

#[test]
fn the_peer_limit_holds() {
    let mut w = World::new();
    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        w.connect(i as ConnId, id, "t");
    }
    let out = w.connect(9, "d", "t");
    assert!(
        sent(&out, 9)[0]["payload"]["msg"]
            .as_str()
            .unwrap()
            .contains("limit")
    );
    assert!(out.contains(&Out::Close(9)));
}

#[test]
fn queues_for_absent_ids_are_bounded() {
    let mut w = World::new();
    w.connect(1, "alice", "t1");
    for _ in 0..150 {
        w.say(1, r#"{"type":"CANDIDATE","dst":"nobody","payload":{}}"#);
    }
    let long_id = "x".repeat(300);
    w.say(
        1,
        &format!(r#"{{"type":"OFFER","dst":"{long_id}","payload":{{}}}}"#),
    );
    let out = w.connect(2, "nobody", "t2");
    assert_eq!(
        sent(&out, 2).len(),
        1 + MAX_QUEUED_PER_ID,
        "OPEN and the first 100"
    );
    assert!(w.server.queues.is_empty() && w.server.queued_bytes == 0);
}
