//! The SkyWay signaling (socket.io events from skyway-js), with its SFU
//! rooms' media carried out on a real `Sfu` as the face does it.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::sfu::{drain, new_sfu, with_mids};
use super::{Records, elapsed};
use crate::http::skyway::SendData;
use crate::http::skyway::exec::candidate_of;
use crate::sfu::{PeerId, Sfu, SfuEvent};
use crate::skyway::{
    ConnId, Credential, Data, Hello, MediaOp, Out, Refusal, SkywayConfig, SkywayServer,
};

const KEY: &str = "00000000-0000-4000-8000-000000000000";
/// The secret credentials are signed with (a live's stream key).
const SECRET: &str = "fuzz-key";
const UNIX_NOW: u64 = 1_800_000_000;

/// Every event skyway-js sends; a byte picks one (or an unknown one).
pub(crate) const EVENTS: [&str; 14] = [
    "PING",
    "SEND_OFFER",
    "SEND_ANSWER",
    "SEND_CANDIDATE",
    "SEND_FORCE_CLOSE",
    "ROOM_JOIN",
    "ROOM_LEAVE",
    "ROOM_GET_USERS",
    "ROOM_GET_LOGS",
    "ROOM_SEND_DATA",
    "SFU_GET_OFFER",
    "SFU_ANSWER",
    "SFU_CANDIDATE",
    "UPDATE_CREDENTIAL",
];

/// Connections the input may have open at once.
const SLOTS: usize = 4;

struct Harness {
    server: SkywayServer,
    sfu: Sfu,
    now: Instant,
    /// Whether admissions without a credential are granted: the flags of
    /// the record being handled say.
    allow: bool,
    /// The last SFU offer a member was sent: its mids stand for `$MID<n>`
    /// in the input.
    offer: String,
}

impl Harness {
    /// Carries out what the server asks until both it and the SFU are
    /// quiet: closes, admissions, media work and the SFU's events.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut busy = false;
            while let Some(out) = self.server.poll_output() {
                busy = true;
                match out {
                    Out::Emit(_, "SFU_OFFER", payload) => {
                        if let Some(sdp) =
                            payload.json().pointer("/offer/sdp").and_then(Value::as_str)
                        {
                            self.offer = sdp.to_owned();
                        }
                    }
                    Out::Emit(..) => {}
                    // A close by the server is not the client leaving: it
                    // may come back.
                    Out::Close(conn) => self.server.disconnect(conn, false, self.now),
                    Out::Admit {
                        conn,
                        peer,
                        room,
                        ask,
                        credential,
                    } => {
                        let result = self.admit(&peer, credential.as_ref());
                        self.server.admitted(conn, &room, ask, result);
                    }
                    Out::Media(op) => self.media(op),
                }
            }
            while let Some(event) = self.sfu.poll_event() {
                busy = true;
                match event {
                    SfuEvent::CastStarted { live, caster } => {
                        self.server.cast_started(&live, caster)
                    }
                    SfuEvent::CastEnded { live, caster } => self.server.cast_ended(&live, caster),
                    SfuEvent::SessionEnded { peer, .. } => self.server.session_ended(peer),
                    SfuEvent::Live(_) => {}
                }
            }
            drain(&mut self.sfu);
            assert_eq!(self.sfu.stats().peer_panics, 0, "a session panicked");
            if !busy {
                return;
            }
        }
        panic!("the signaling and the SFU keep telling each other things");
    }

    /// The webhook's part is the flags'; a credential is checked as the
    /// face checks it.
    fn admit(&self, peer: &str, credential: Option<&Value>) -> Result<(), Refusal> {
        let refused = || Refusal::new("authentication", "refused");
        match credential {
            Some(c) => {
                let c = Credential::from_json(c).map_err(|_| refused())?;
                c.check_time(UNIX_NOW).map_err(|_| refused())?;
                c.signed_by(SECRET, peer).then_some(()).ok_or_else(refused)
            }
            None if self.allow => Ok(()),
            None => Err(refused()),
        }
    }

    /// What `http::skyway::exec` does with each operation.
    fn media(&mut self, op: MediaOp) {
        let now = self.now;
        let refusal = |e: String| Refusal::new("room-error", e);
        match op {
            MediaOp::Open { peer, room, subs } => {
                let result = self
                    .sfu
                    .open_member(&room, &subs, now)
                    .map(|o| (o.peer, o.offer))
                    .map_err(|e| refusal(e.to_string()));
                self.server.media_opened(&peer, &room, result);
            }
            MediaOp::Answer {
                peer,
                room,
                session,
                sdp,
            } => {
                let result = self
                    .sfu
                    .member_answer(session, &sdp, now)
                    .map(|a| a.sending)
                    .map_err(|e| refusal(e.to_string()));
                self.server.media_answered(&peer, &room, session, result);
            }
            MediaOp::Offer {
                peer,
                room,
                session,
                subs,
            } => {
                let result = self
                    .sfu
                    .member_offer(session, &subs, now)
                    .map_err(|e| refusal(e.to_string()));
                self.server.media_offered(&peer, &room, session, result);
            }
            MediaOp::Publish {
                peer,
                room,
                session,
                live,
                credential,
            } => {
                let result = self.admit(&peer, credential.as_ref()).and_then(|()| {
                    self.sfu
                        .member_cast(session, Some(&live), now)
                        .map_err(|e| refusal(e.to_string()))
                });
                self.server
                    .media_published(&peer, &room, session, &live, result);
            }
            MediaOp::Unpublish { session } => {
                let _ = self.sfu.member_cast(session, None, now);
            }
            MediaOp::Candidate { session, candidate } => {
                if let Some(c) = candidate_of(&candidate) {
                    let _ = self.sfu.member_candidate(session, c, now);
                }
            }
            MediaOp::Leave { session } => {
                let _ = self.sfu.member_leave(session, now);
            }
        }
    }
}

/// The text of `bytes` up to the first NUL, and the bytes after it.
fn split_nul(bytes: &[u8]) -> (String, &[u8]) {
    let at = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    let rest = bytes.get(at + 1..).unwrap_or_default();
    (String::from_utf8_lossy(&bytes[..at]).into_owned(), rest)
}

/// Records: flags bits 0-2 say what happens, bits 3-4 on which connection
/// (of four open at once; each connect opens a new one),
/// bit 7 refuses admissions (without a credential) while it is handled:
/// - 0: a connection opens (the slot's last one drops); the body: an options byte (bit 0: a wrong API
///   key, bit 1: no token, bit 2: no peer id, bit 3: token `t1` rather
///   than `t0`), the peer id, a NUL, the credential (JSON);
/// - 1, 2: an event: a byte picks it from [`EVENTS`] (or an unknown one),
///   the rest is its JSON argument (not JSON: malformed, as the face says);
/// - 3: `ROOM_SEND_DATA`: a byte says binary data (room name, NUL, the
///   bytes) or JSON (`{roomName, data}`);
/// - 4: the connection drops (bit 5: the client said goodbye);
/// - 5: time passes; 6, 7: a caster of another protocol starts or stops
///   on the live the body names (as the SFU tells it).
///
/// `$MID<n>` in a record stands for the n-th mid of the last SFU offer (an
/// answer must name them, and str0m makes them at random).
pub fn skyway_message(data: &[u8]) {
    let mut h = Harness {
        server: SkywayServer::new(SkywayConfig {
            keys: vec![KEY.into()],
            // Small limits, so that the input reaches them.
            max_peers: 3,
            max_rooms_per_peer: 2,
            max_members: 3,
            max_publishers: 2,
            max_data: 4096,
            data_rate: 16_384,
            log_entries: 4,
            ..SkywayConfig::default()
        }),
        sfu: new_sfu(),
        now: Instant::now(),
        allow: true,
        offer: String::new(),
    };
    // The connection in each of the input's slots: a new one for each
    // connect, as every socket.io connection has its own number.
    let mut slots: [ConnId; SLOTS] = std::array::from_fn(|i| i as ConnId);
    let mut next = SLOTS as ConnId;
    for (flags, body) in Records::new(data) {
        let answer;
        let body = match std::str::from_utf8(body) {
            Ok(text) if text.contains("$MID") => {
                answer = with_mids(text, &h.offer);
                answer.as_bytes()
            }
            _ => body,
        };
        h.allow = flags & 0x80 == 0;
        let slot = usize::from(flags >> 3 & 3);
        let (opts, rest) = body.split_first().unwrap_or((&0, &[]));
        if flags & 7 == 0 {
            // The slot's connection, if open, is dropped for the new one.
            h.server.disconnect(slots[slot], false, h.now);
            slots[slot] = next;
            next += 1;
        }
        let conn = slots[slot];
        match flags & 7 {
            0 => {
                let (id, credential) = split_nul(rest);
                let token = if opts & 8 == 0 { "t0" } else { "t1" };
                let credential = std::str::from_utf8(credential)
                    .ok()
                    .and_then(|c| serde_json::from_str::<Value>(c).ok())
                    .filter(Value::is_object);
                let hello = Hello {
                    api_key: Some(if opts & 1 == 0 { KEY } else { "nope" }),
                    token: (opts & 2 == 0).then_some(token),
                    peer_id: (opts & 4 == 0).then_some(id.as_str()),
                    credential,
                };
                h.server.connect(conn, hello, h.now);
            }
            1 | 2 => {
                let event = EVENTS.get(usize::from(*opts)).copied().unwrap_or("NOPE");
                match serde_json::from_slice::<Value>(rest) {
                    Ok(arg) => h.server.message(conn, event, arg, h.now),
                    Err(e) => h.server.malformed(conn, event, &e.to_string()),
                }
            }
            3 if opts & 1 == 1 => {
                let (room, bytes) = split_nul(rest);
                let data = Data::Binary(bytes::Bytes::copy_from_slice(bytes));
                h.server.room_data(conn, &room, data, h.now);
            }
            3 => match serde_json::from_slice::<SendData>(rest) {
                Ok(d) => h.server.room_data(conn, &d.room, d.data, h.now),
                Err(e) => h.server.malformed(conn, "ROOM_SEND_DATA", &e.to_string()),
            },
            4 => h.server.disconnect(conn, flags & 0x20 != 0, h.now),
            5 => {
                h.now += elapsed(body);
                h.server.handle_timeout(h.now);
                h.sfu.handle_timeout(h.now);
            }
            kind => {
                let live = String::from_utf8_lossy(body);
                let caster = PeerId(u128::from(flags));
                if kind == 6 {
                    h.server.cast_started(&live, caster);
                } else {
                    h.server.cast_ended(&live, caster);
                }
            }
        }
        h.settle();
    }
    // Everyone leaves: nothing may stay behind, in the signaling or the SFU.
    for conn in slots {
        h.server.disconnect(conn, true, h.now);
    }
    h.settle();
    h.now += Duration::from_secs(3600);
    h.server.handle_timeout(h.now);
    h.settle();
    let left = h.server.peer_ids();
    assert!(left.is_empty(), "peers stay after all left: {left:?}");
    assert_eq!(
        h.sfu.session_count(),
        0,
        "member sessions stay after all left"
    );
}
