//! SFU rooms: each member's one connection to Vessel's SFU, negotiated by
//! server offers. A member asks (`SFU_GET_OFFER`), gets `SFU_OFFER` (its
//! upload m-lines, then every other publication of the room), answers; if
//! its answer sends media it publishes: into the live named after the room
//! when that is free, otherwise into `<room>~2`, `<room>~3`… When the
//! room's publications change, every member is offered again, one offer at
//! a time (the SDK queues offers; str0m keeps one pending).
//!
//! A room's publications are the lives on air named after it, whoever
//! casts them: a WHIP, RTMP or mediasoup caster of the room's live shows
//! up as a publisher `vessel:<live>`.

use serde_json::{Map, Value, json};

use super::{MediaOp, Out, Publication, Refusal, SkywayServer};
use crate::sfu::PeerId;

/// Candidates a member may trickle before its session exists.
const MAX_EARLY_CANDIDATES: usize = 32;

/// A member's state with the SFU.
#[derive(Debug, Default)]
pub(super) struct MemberMedia {
    pub session: Option<PeerId>,
    /// The operation out (at most one).
    op: Option<Op>,
    /// An offer the member has not answered: what it proposes.
    offered: Option<Vec<Publication>>,
    /// What its session carries.
    negotiated: Vec<Publication>,
    /// A re-offer of these failed: not tried again until they change.
    stuck: Option<Vec<Publication>>,
    /// The live it publishes into.
    publishing: Option<String>,
    publish_refused: bool,
    /// Candidates trickled before its session existed.
    early: Vec<Value>,
    /// An answer that came while an operation was out.
    answer: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Open(Vec<Publication>),
    Answer,
    Offer(Vec<Publication>),
    Publish(String),
}

/// The room a live belongs to: `room` or `room~n`.
pub(super) fn room_of_live(live: &str) -> &str {
    live.split('~').next().unwrap_or(live)
}

fn same(a: &[Publication], b: &[Publication]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.live == y.live && x.stream == y.stream)
}

impl SkywayServer {
    /// `SFU_GET_OFFER`: the first offer, or an offer of what changed.
    pub(super) fn sfu_get_offer(&mut self, peer: &str, room: &str) {
        let subs = self.subs_for(peer, room);
        let Some(m) = self.media_mut(peer, room) else {
            return;
        };
        if m.session.is_none() && m.op.is_none() {
            m.op = Some(Op::Open(subs.clone()));
            self.out.push_back(Out::Media(MediaOp::Open {
                peer: peer.to_string(),
                room: room.to_string(),
                subs: subs.iter().map(Publication::subscription).collect(),
            }));
        } else {
            m.stuck = None;
            self.maybe_reoffer(peer, room);
        }
    }

    pub(super) fn sfu_answer(&mut self, conn: super::ConnId, peer: &str, room: &str, sdp: String) {
        let Some(m) = self.media_mut(peer, room) else {
            return;
        };
        if m.offered.is_none() {
            return self.error(
                conn,
                "invalid-message",
                "no SFU_OFFER is waiting for an answer",
            );
        }
        if m.op.is_some() {
            m.answer = Some(sdp);
            return;
        }
        self.send_answer(peer, room, sdp);
    }

    fn send_answer(&mut self, peer: &str, room: &str, sdp: String) {
        let Some(m) = self.media_mut(peer, room) else {
            return;
        };
        let Some(session) = m.session else {
            return;
        };
        m.op = Some(Op::Answer);
        self.out.push_back(Out::Media(MediaOp::Answer {
            peer: peer.to_string(),
            room: room.to_string(),
            session,
            sdp,
        }));
    }

    pub(super) fn sfu_candidate(&mut self, peer: &str, room: &str, candidate: Value) {
        let Some(m) = self.media_mut(peer, room) else {
            return;
        };
        match m.session {
            Some(session) => self
                .out
                .push_back(Out::Media(MediaOp::Candidate { session, candidate })),
            None if m.early.len() < MAX_EARLY_CANDIDATES => m.early.push(candidate),
            None => {}
        }
    }

    /// The result of [`MediaOp::Open`].
    pub fn media_opened(
        &mut self,
        peer: &str,
        room: &str,
        result: Result<(PeerId, String), Refusal>,
    ) {
        let opening = self
            .media_mut(peer, room)
            .filter(|m| matches!(m.op, Some(Op::Open(_))));
        let Some(m) = opening else {
            // It left meanwhile: the session is not wanted.
            if let Ok((session, _)) = result {
                self.out.push_back(Out::Media(MediaOp::Leave { session }));
            }
            return;
        };
        let Some(Op::Open(subs)) = m.op.take() else {
            unreachable!("checked above")
        };
        let (session, sdp) = match result {
            Ok(ok) => ok,
            Err(r) => return self.error_to(peer, r),
        };
        m.session = Some(session);
        m.offered = Some(subs.clone());
        let early = std::mem::take(&mut m.early);
        self.sessions
            .insert(session, (peer.to_string(), room.to_string()));
        self.emit_offer(peer, room, sdp, &subs);
        for candidate in early {
            self.out
                .push_back(Out::Media(MediaOp::Candidate { session, candidate }));
        }
    }

    /// The result of [`MediaOp::Answer`]: whether the member sends media.
    pub fn media_answered(
        &mut self,
        peer: &str,
        room: &str,
        session: PeerId,
        result: Result<bool, Refusal>,
    ) {
        let Some(m) = self.media_of(peer, room, session, |op| *op == Op::Answer) else {
            return;
        };
        m.op = None;
        let sending = match result {
            Ok(sending) => sending,
            Err(r) => {
                // The offer is spent and the session half set up: it ends,
                // and the member may ask again (`SFU_GET_OFFER`).
                let media = std::mem::take(m);
                self.error_to(peer, r);
                return self.end_member_media(peer, media);
            }
        };
        m.negotiated = m.offered.take().unwrap_or_default();
        if sending && m.publishing.is_none() && !m.publish_refused {
            let credential = self.peers.get(peer).and_then(|p| p.credential.clone());
            match self.free_live(room) {
                Some(live) => {
                    self.claimed.insert(live.clone(), peer.to_string());
                    if let Some(m) = self.media_mut(peer, room) {
                        m.op = Some(Op::Publish(live.clone()));
                    }
                    self.out.push_back(Out::Media(MediaOp::Publish {
                        peer: peer.to_string(),
                        room: room.to_string(),
                        session,
                        live,
                        credential,
                    }));
                    return;
                }
                None => {
                    if let Some(m) = self.media_mut(peer, room) {
                        m.publish_refused = true;
                    }
                    let max = self.config.max_publishers;
                    self.error_to(
                        peer,
                        Refusal::new(
                            "room-error",
                            format!("room \"{room}\" has {max} publishers, the most it may have"),
                        ),
                    );
                }
            }
        } else if !sending && m.publishing.take().is_some() {
            self.out
                .push_back(Out::Media(MediaOp::Unpublish { session }));
        }
        self.maybe_reoffer(peer, room);
    }

    /// The result of [`MediaOp::Offer`]: the offer, or `None` if nothing
    /// needed negotiating.
    pub fn media_offered(
        &mut self,
        peer: &str,
        room: &str,
        session: PeerId,
        result: Result<Option<String>, Refusal>,
    ) {
        let Some(m) = self.media_of(peer, room, session, |op| matches!(op, Op::Offer(_))) else {
            return;
        };
        let Some(Op::Offer(subs)) = m.op.take() else {
            unreachable!("checked above")
        };
        match result {
            Ok(Some(sdp)) => {
                m.offered = Some(subs.clone());
                self.emit_offer(peer, room, sdp, &subs);
            }
            Ok(None) => {
                m.negotiated = subs;
                self.maybe_reoffer(peer, room);
            }
            Err(r) => {
                m.stuck = Some(subs);
                self.error_to(peer, r);
            }
        }
    }

    /// The result of [`MediaOp::Publish`].
    pub fn media_published(
        &mut self,
        peer: &str,
        room: &str,
        session: PeerId,
        live: &str,
        result: Result<(), Refusal>,
    ) {
        if self.claimed.get(live).is_some_and(|p| p == peer) {
            self.claimed.remove(live);
        }
        let publishing = |op: &Op| *op == Op::Publish(live.to_string());
        let Some(m) = self.media_of(peer, room, session, publishing) else {
            if result.is_ok() {
                // It left (or its session changed) meanwhile.
                self.out
                    .push_back(Out::Media(MediaOp::Unpublish { session }));
            }
            return;
        };
        m.op = None;
        match result {
            Ok(()) => m.publishing = Some(live.to_string()),
            Err(r) => {
                m.publish_refused = true;
                self.error_to(peer, r);
            }
        }
        self.maybe_reoffer(peer, room);
    }

    /// A live went on air with `caster` (any protocol).
    pub fn cast_started(&mut self, live: &str, caster: PeerId) {
        let stream = format!("vessel-{}", self.next_stream);
        self.next_stream += 1;
        self.casters.insert(live.to_string(), (caster, stream));
        self.room_changed(room_of_live(live));
    }

    /// `caster` no longer casts `live`.
    pub fn cast_ended(&mut self, live: &str, caster: PeerId) {
        if self.casters.get(live).is_some_and(|(c, _)| *c == caster) {
            self.casters.remove(live);
        }
        if let Some((peer, room)) = self.sessions.get(&caster).cloned()
            && let Some(m) = self.media_mut(&peer, &room)
            && m.publishing.as_deref() == Some(live)
        {
            // Taken over (by a WHIP caster, say): its next answer that
            // sends publishes it again, under another name.
            m.publishing = None;
        }
        self.room_changed(room_of_live(live));
    }

    /// An SFU session ended (the member's connection failed or timed out).
    pub fn session_ended(&mut self, session: PeerId) {
        let Some((peer, room)) = self.sessions.remove(&session) else {
            return;
        };
        if let Some(m) = self.media_mut(&peer, &room)
            && m.session == Some(session)
        {
            tracing::info!(%peer, %room, "SFU session of a room member ended");
            *m = MemberMedia::default();
        }
    }

    /// The member left its room: its session goes.
    pub(super) fn end_member_media(&mut self, peer: &str, media: MemberMedia) {
        self.claimed.retain(|_, p| p != peer);
        if let Some(session) = media.session {
            self.sessions.remove(&session);
            self.out.push_back(Out::Media(MediaOp::Leave { session }));
        }
    }

    /// The publications of `room`, its own live first.
    pub fn publications(&self, room: &str) -> Vec<Publication> {
        let mut pubs: Vec<Publication> = self
            .casters
            .iter()
            .filter(|(live, _)| room_of_live(live) == room)
            .map(|(live, (caster, stream))| Publication {
                live: live.clone(),
                stream: stream.clone(),
                peer: self
                    .sessions
                    .get(caster)
                    .map(|(p, _)| p.clone())
                    .unwrap_or_else(|| format!("vessel:{live}")),
                caster: *caster,
            })
            .collect();
        pubs.sort_by(|a, b| (a.live.len(), &a.live).cmp(&(b.live.len(), &b.live)));
        pubs
    }

    /// What `peer` watches in `room`: every publication but its own.
    fn subs_for(&self, peer: &str, room: &str) -> Vec<Publication> {
        let own = self
            .rooms
            .get(room)
            .and_then(|r| r.media.get(peer))
            .and_then(|m| m.session);
        self.publications(room)
            .into_iter()
            .filter(|p| Some(p.caster) != own && p.peer != peer)
            .collect()
    }

    /// A live of `room` nobody casts or is about to: the room's own first.
    fn free_live(&self, room: &str) -> Option<String> {
        let publishing = self
            .casters
            .keys()
            .chain(self.claimed.keys())
            .filter(|l| room_of_live(l) == room)
            .count();
        if publishing >= self.config.max_publishers {
            return None;
        }
        std::iter::once(room.to_string())
            .chain((2..).map(|n| format!("{room}~{n}")))
            .find(|l| !self.casters.contains_key(l) && !self.claimed.contains_key(l))
    }

    /// Offers each member of `room` what changed.
    fn room_changed(&mut self, room: &str) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        let members: Vec<String> = r.media.keys().cloned().collect();
        for m in members {
            self.maybe_reoffer(&m, room);
        }
    }

    /// Sends the next thing a member's negotiation needs, if it is idle: a
    /// waiting answer, or an offer of what changed.
    fn maybe_reoffer(&mut self, peer: &str, room: &str) {
        let subs = self.subs_for(peer, room);
        let Some(m) = self.media_mut(peer, room) else {
            return;
        };
        let Some(session) = m.session else {
            return;
        };
        if m.op.is_some() {
            return;
        }
        if m.offered.is_some() {
            if let Some(sdp) = m.answer.take() {
                self.send_answer(peer, room, sdp);
            }
            return;
        }
        if same(&subs, &m.negotiated) || m.stuck.as_deref().is_some_and(|s| same(s, &subs)) {
            return;
        }
        m.stuck = None;
        m.op = Some(Op::Offer(subs.clone()));
        self.out.push_back(Out::Media(MediaOp::Offer {
            peer: peer.to_string(),
            room: room.to_string(),
            session,
            subs: subs.iter().map(Publication::subscription).collect(),
        }));
    }

    fn emit_offer(&mut self, peer: &str, room: &str, sdp: String, subs: &[Publication]) {
        let msids: Map<String, Value> = subs
            .iter()
            .map(|p| (p.stream.clone(), Value::String(p.peer.clone())))
            .collect();
        let offer = json!({
            "roomName": room,
            "offer": { "type": "offer", "sdp": sdp },
            "msids": msids,
        });
        self.send_json(peer, "SFU_OFFER", offer);
    }

    fn error_to(&mut self, peer: &str, r: Refusal) {
        tracing::info!(%peer, "SkyWay SFU refusal: {}", r.message);
        let error = json!({ "type": r.kind, "message": r.message });
        self.send_json(peer, "ERROR", error);
    }

    fn media_mut(&mut self, peer: &str, room: &str) -> Option<&mut MemberMedia> {
        self.rooms.get_mut(room)?.media.get_mut(peer)
    }

    /// The member's media if its session is `session` and `op` is out.
    fn media_of(
        &mut self,
        peer: &str,
        room: &str,
        session: PeerId,
        op: impl Fn(&Op) -> bool,
    ) -> Option<&mut MemberMedia> {
        self.media_mut(peer, room)
            .filter(|m| m.session == Some(session) && m.op.as_ref().is_some_and(&op))
    }
}
