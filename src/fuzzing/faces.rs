//! The WebSocket JSON faces: the PeerJS PeerServer and the chat.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::broadcast::error::TryRecvError;

use super::{Records, elapsed};
use crate::chat::{ChatConfig, ChatEvent, Speaker};
use crate::http::chat::{ChatHub, Joined};
use crate::peerjs::{ConnId, Out, PeerConfig, PeerServer};

/// PeerJS connections the input may have open at once.
const PEERJS_SLOTS: usize = 8;
const MAX_PEERS: usize = 4;

/// Records: flags bits 0-1 say what happens, bits 2-4 on which connection
/// (of eight open at once):
/// - 0: a WebSocket opens (the slot's last one closes); the body is the
///   id (bit 5: a wrong key, bit 6: token `t1` rather than `t0`, bit 7: no
///   id);
/// - 1: a text frame (frames that are not UTF-8 never reach the server);
/// - 2: the connection closes; 3: time passes.
///
/// What the server sends must be JSON, and it must stay within its peer
/// limit and, once everyone has gone, hold nobody.
pub fn peerjs_message(data: &[u8]) {
    let mut server = PeerServer::new(PeerConfig {
        max_peers: MAX_PEERS,
        ..PeerConfig::default()
    });
    let mut now = Instant::now();
    // The connection in each slot: a new one for each connect, as every
    // WebSocket has its own number.
    let mut slots: [ConnId; PEERJS_SLOTS] = std::array::from_fn(|i| i as ConnId);
    let mut next = PEERJS_SLOTS as ConnId;
    for (flags, body) in Records::new(data) {
        let slot = usize::from(flags >> 2 & 7);
        if flags & 3 == 0 {
            server.disconnect(slots[slot]);
            slots[slot] = next;
            next += 1;
        }
        let conn = slots[slot];
        match flags & 3 {
            0 => {
                let id = String::from_utf8_lossy(body);
                let key = if flags & 0x20 == 0 { "peerjs" } else { "nope" };
                let token = if flags & 0x40 == 0 { "t0" } else { "t1" };
                let id = (flags & 0x80 == 0).then_some(&*id);
                server.connect(conn, Some(key), id, Some(token), now);
            }
            1 => {
                if let Ok(text) = std::str::from_utf8(body) {
                    server.message(conn, text, now);
                }
            }
            2 => server.disconnect(conn),
            _ => {
                now += elapsed(body);
                server.handle_timeout(now);
            }
        }
        while let Some(out) = server.poll_output() {
            match out {
                Out::Send(_, text) => {
                    assert!(
                        serde_json::from_str::<Value>(&text).is_ok(),
                        "not JSON: {text}"
                    );
                }
                // The socket closes, and the face says so.
                Out::Close(c) => server.disconnect(c),
                Out::Cluster(effect) => panic!("a single node's PeerServer said {effect:?}"),
            }
        }
        assert!(server.peers().len() <= MAX_PEERS, "over the peer limit");
    }
    for conn in slots {
        server.disconnect(conn);
    }
    let left = server.peers();
    assert!(left.is_empty(), "peers stay after all left: {left:?}");
    // What waited for absent ids expires, with nobody left to tell.
    server.handle_timeout(now + Duration::from_secs(3600));
    assert!(server.poll_output().is_none(), "nobody is left to tell");
}

/// A chat connection: its live, speaker and subscription.
struct Conn {
    live: &'static str,
    speaker: Speaker,
    joined: Joined,
    /// The last message id it was told of.
    last: u64,
}

/// Records: flags bits 0-1 say what happens, bits 2-3 on which connection:
/// - 0: it connects (bit 4: to live `b` rather than `a`, bit 5: as the
///   caster, bit 6: with `since` (the body's first byte)); the body is its
///   name;
/// - 1: a text frame from it; 2: it leaves; 3: it reads what it was sent.
///
/// Everyone must see a live's messages in increasing id order.
pub fn chat_message(data: &[u8]) {
    let config = ChatConfig {
        max_len: 64,
        history: 4,
        burst: 8,
        refill: Duration::from_millis(1),
    };
    let hub = ChatHub::new(config.clone());
    let mut conns: [Option<Conn>; 4] = Default::default();
    for (flags, body) in Records::new(data) {
        let slot = usize::from(flags >> 2 & 3);
        match flags & 3 {
            0 => {
                if let Some(old) = conns[slot].take() {
                    hub.leave(old.live);
                }
                let live = if flags & 0x10 == 0 { "a" } else { "b" };
                let name = String::from_utf8_lossy(body);
                let speaker = Speaker::new(&name, flags & 0x20 != 0, &config, Instant::now());
                let since =
                    (flags & 0x40 != 0).then(|| u64::from(body.first().copied().unwrap_or(0)));
                if let Ok(joined) = hub.join(live, since) {
                    let last = joined.history.last().map_or(0, |m| m.id);
                    conns[slot] = Some(Conn {
                        live,
                        speaker,
                        joined,
                        last,
                    });
                }
            }
            1 => {
                if let (Some(c), Ok(text)) = (&mut conns[slot], std::str::from_utf8(body)) {
                    let _ = hub.frame(c.live, &mut c.speaker, text);
                }
            }
            2 => {
                if let Some(old) = conns[slot].take() {
                    hub.leave(old.live);
                }
            }
            _ => {
                if let Some(c) = &mut conns[slot] {
                    read(c);
                }
            }
        }
    }
    for c in conns.iter_mut().flatten() {
        read(c);
        hub.leave(c.live);
    }
}

/// Takes what a connection was sent: messages in increasing id order.
fn read(c: &mut Conn) {
    loop {
        match c.joined.events.try_recv() {
            Ok(ChatEvent::Message(m)) => {
                assert!(m.id > c.last, "message {} after {}", m.id, c.last);
                c.last = m.id;
            }
            Ok(ChatEvent::Removed(_)) | Err(TryRecvError::Lagged(_)) => {}
            Err(TryRecvError::Empty | TryRecvError::Closed) => return,
        }
    }
}
