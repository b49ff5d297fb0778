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
fn in_a_cluster_ids_are_announced_and_messages_for_other_nodes_go_out_in_order() {
    let mut w = World::new();
    w.server = PeerServer::new(PeerConfig::default()).clustered();
    let out = w.connect(1, "alice", "t1");
    assert_eq!(sent(&out, 1)[0]["type"], "OPEN");
    let joined = Out::Cluster(Effect::Joined {
        id: "alice".into(),
        token: "t1".into(),
    });
    assert!(out.contains(&joined), "{out:?}");
    // The same peer again (a new socket): no second announcement.
    let out = w.connect(2, "alice", "t1");
    assert!(
        !out.iter()
            .any(|o| matches!(o, Out::Cluster(Effect::Joined { .. })))
    );

    // Messages for an id not here go out, in order, with the server's src.
    let out = w.say(2, r#"{"type":"OFFER","dst":"bob","payload":{"n":1}}"#);
    let out2 = w.say(2, r#"{"type":"CANDIDATE","dst":"bob","payload":{"n":2}}"#);
    let mut texts = Vec::new();
    for o in out.iter().chain(&out2) {
        match o {
            Out::Cluster(Effect::Elsewhere { src, dst, text }) => {
                assert_eq!((src.as_str(), dst.as_str()), ("alice", "bob"));
                texts.push(serde_json::from_str::<Value>(text).unwrap());
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(texts[0]["type"], "OFFER");
    assert_eq!(texts[0]["src"], "alice");
    assert_eq!(texts[1]["payload"]["n"], 2);
    // Not queued here: no EXPIRE for what went to another node.
    assert!(w.wait(Duration::from_secs(10)).is_empty());

    // From another node: delivered to a peer here; nothing for one not here.
    assert!(
        w.server
            .deliver("alice", r#"{"type":"ANSWER","src":"bob"}"#)
    );
    assert_eq!(sent(&w.drain(), 2)[0]["type"], "ANSWER");
    assert!(!w.server.deliver("carol", "{}"));

    // What the cluster found nobody for waits here, then expires.
    w.server.hold(
        "alice",
        "dave",
        r#"{"type":"OFFER","dst":"dave","src":"alice"}"#,
        w.now,
    );
    w.server
        .hold("alice", "dave", r#"{"type":"LEAVE","dst":"dave"}"#, w.now);
    let out = w.wait(Duration::from_secs(6));
    let expired = sent(&out, 2);
    assert_eq!(expired.len(), 1, "{out:?}");
    assert_eq!(expired[0]["type"], "EXPIRE");
    assert_eq!(expired[0]["src"], "dave");

    // Taken on another node: refused as on one node.
    w.server.refuse_taken(9);
    let out = w.drain();
    assert_eq!(sent(&out, 9)[0]["type"], "ID-TAKEN");
    assert!(out.contains(&Out::Close(9)));

    // Leaving, by closing or by going silent, is announced.
    w.connect(3, "erin", "t3");
    w.server.disconnect(2);
    let left = Out::Cluster(Effect::Left {
        id: "alice".into(),
        token: "t1".into(),
    });
    assert_eq!(w.drain(), [left]);
    let out = w.wait(Duration::from_secs(61));
    assert!(out.contains(&Out::Cluster(Effect::Left {
        id: "erin".into(),
        token: "t3".into()
    })));
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

/// Seeded randomized run (`VESSEL_FUZZ_SEED` replays): peers connect with
/// good and bad credentials, send damaged messages and garbage, vanish and
/// come back, while time passes. Nothing may panic, what is held stays
/// within its bounds, and once everyone has gone and time has passed the
/// server holds nothing.
#[test]
fn fuzzed_messages_break_nothing_and_leave_nothing_behind() {
    use crate::fuzz_json::{mutate, rng, text};
    use rand::Rng;

    let (mut rng, seed) = rng();
    let mut w = World::new();
    w.server.config.max_peers = 6;
    let ids = ["a", "b", "c", "d", "e", "f", "g", "h"];
    let templates = [
        json!({"type": "HEARTBEAT"}),
        json!({"type": "OFFER", "dst": "b", "payload": {"sdp": {"type": "offer", "sdp": "v=0\r\n"},
            "type": "media", "connectionId": "mc_1", "browser": "chrome"}}),
        json!({"type": "ANSWER", "dst": "a", "payload": {"sdp": {"type": "answer", "sdp": "v=0\r\n"},
            "type": "media", "connectionId": "mc_1"}}),
        json!({"type": "CANDIDATE", "dst": "c", "payload": {"candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host"},
            "type": "data", "connectionId": "dc_1"}}),
        json!({"type": "LEAVE", "dst": "zz"}),
        json!({"type": "EXPIRE", "dst": "a"}),
    ];
    let mut open: Vec<ConnId> = Vec::new();
    let mut next: ConnId = 1;
    for step in 0..20_000 {
        let what = rng.random_range(0..10);
        if what == 0 || open.is_empty() {
            let id = ids[rng.random_range(0..ids.len())];
            let key = if rng.random_bool(0.9) {
                "peerjs"
            } else {
                "nope"
            };
            let token = format!("t{}", rng.random_range(0..2));
            let id = if rng.random_bool(0.05) {
                text(&mut rng)
            } else {
                id.to_string()
            };
            w.server
                .connect(next, Some(key), Some(&id), Some(&token), w.now);
            open.push(next);
            next += 1;
        } else if what == 1 {
            let conn = open.swap_remove(rng.random_range(0..open.len()));
            w.server.disconnect(conn);
        } else if what == 2 {
            w.now += Duration::from_millis(rng.random_range(0..3_000));
            w.server.handle_timeout(w.now);
        } else {
            let conn = open[rng.random_range(0..open.len())];
            let msg = if rng.random_bool(0.1) {
                text(&mut rng)
            } else {
                let t = &templates[rng.random_range(0..templates.len())];
                let v = if rng.random_bool(0.5) {
                    mutate(&mut rng, t)
                } else {
                    t.clone()
                };
                v.to_string()
            };
            w.server.message(conn, &msg, w.now);
        }
        for out in w.drain() {
            if let Out::Close(c) = out {
                open.retain(|o| *o != c);
            }
        }
        assert!(
            w.server.clients.len() <= 6,
            "seed {seed}, step {step}: {} peers held",
            w.server.clients.len()
        );
        assert!(w.server.queued_bytes <= MAX_QUEUED_BYTES, "seed {seed}");
        assert!(
            w.server
                .queues
                .values()
                .all(|q| q.messages.len() <= MAX_QUEUED_PER_ID),
            "seed {seed}"
        );
    }
    for conn in open {
        w.server.disconnect(conn);
    }
    w.wait(Duration::from_secs(3600));
    assert!(w.server.clients.is_empty(), "seed {seed}");
    assert!(w.server.ids.is_empty(), "seed {seed}");
    assert!(w.server.queues.is_empty(), "seed {seed}");
    assert_eq!(w.server.queued_bytes, 0, "seed {seed}");
}
