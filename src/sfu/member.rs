//! Sessions the server offers: a SkyWay SFU room member's one connection.
//!
//! The first offer carries two upload m-lines, audio then video, recvonly
//! on Vessel's side: a member with a stream binds its tracks to them (JSEP
//! binds an `addTrack` sender to the first free m-line of its kind, so they
//! come first) and publishes; one without answers them inactive. The upload
//! asks for no simulcast: Chrome never binds an `addTrack` sender to an
//! m-line that requests it (libwebrtc's `AssociateTransceiver`: "a
//! transceiver cannot be associated because AddTrack cannot be called to
//! initialize it") and would answer the video inactive, and skyway-js adds
//! its tracks with `addTrack`. Layers reach members from casters that send
//! them (WHIP, the cast page) into the room's live. Then, per publication the member watches, an
//! audio and a video m-line, sendonly, under one msid stream id, so that
//! the browser makes one `MediaStream` per publisher. Re-offers add the
//! publications that came and stop the m-lines of those that went; a new
//! caster of a live is a new publication (new m-lines, a new stream id),
//! so the page sees a new `stream` event for it.
//!
//! str0m keeps one pending offer: a session has at most one offer out, and
//! the caller waits for its answer before asking for the next.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use str0m::bwe::Bitrate;
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::Transmit;
use str0m::{Candidate, Rtc};

use super::peer::{Cast, OutTrack, Play, same_live};
use super::setup::Setup;
use super::{
    JoinError, NoSuchSession, PeerId, RTX_CACHE_AGE, Role, Sfu, VIEWER_RTX_CAP, offered_producer,
    rtc_config, tidy_sdp_error,
};

/// m-lines one session may grow to. Stopped m-lines stay in the SDP (str0m
/// does not recycle its own), so a member that has seen many casters come
/// and go is refused more rather than sent an ever longer SDP.
pub const MAX_MLINES: usize = 128;

/// A publication a member watches: a live, and the msid stream id its
/// current caster is announced under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subscription {
    pub live: String,
    pub stream: String,
}

/// A member session's first offer.
#[derive(Debug, Clone)]
pub struct MemberOffer {
    pub peer: PeerId,
    pub offer: String,
}

/// What an accepted answer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answered {
    /// The member sends media on its upload m-lines: it may publish.
    pub sending: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemberError {
    #[error("no such session")]
    NoSuchSession,
    #[error("an offer is waiting for its answer")]
    OfferPending,
    #[error("no offer is waiting for an answer")]
    NoOffer,
    #[error("{0}")]
    Refused(String),
}

impl From<NoSuchSession> for MemberError {
    fn from(_: NoSuchSession) -> Self {
        MemberError::NoSuchSession
    }
}

/// A negotiated (or offered) publication: its m-lines.
#[derive(Debug, Clone)]
struct Sub {
    sub: Subscription,
    audio: Mid,
    video: Mid,
}

/// The offer/answer state of a member session.
pub(super) struct Negotiation {
    upload_audio: Mid,
    upload_video: Mid,
    /// What the last accepted answer set up.
    subs: Vec<Sub>,
    /// The offer out, and the publications it proposes (all of them).
    pending: Option<(SdpPendingOffer, Vec<Sub>)>,
    /// m-lines in the SDP so far, stopped ones included.
    mlines: usize,
}

/// A member session built off the media thread (its `Rtc`, key shares and
/// first offer), waiting for its shard to admit it.
pub struct PreparedMember {
    id: PeerId,
    room: String,
    rtc: Rtc,
    ufrag: String,
    negotiation: Negotiation,
    offer: String,
    /// The `Rtc`'s output is drained up to here.
    rtc_timeout: Instant,
    transmits: Vec<Transmit>,
}

/// Builds a member session of `room` and its first offer: the upload
/// m-lines, then those of `subs`. Needs nothing of the `Sfu`'s state, so
/// it runs where the caller likes (the runtime: the blocking pool). A
/// panic inside str0m is a refusal, never more.
pub fn prepare_member(
    setup: &Setup,
    room: &str,
    subs: &[Subscription],
    now: Instant,
) -> Result<PreparedMember, JoinError> {
    if 2 + 2 * subs.len() > MAX_MLINES {
        return Err(JoinError::Refused(format!(
            "a room member may watch at most {} publishers",
            (MAX_MLINES - 2) / 2
        )));
    }
    catch_unwind(AssertUnwindSafe(|| build_member(setup, room, subs, now)))
        .unwrap_or_else(|_| Err(JoinError::Refused("the session could not be made".into())))
}

fn build_member(
    setup: &Setup,
    room: &str,
    subs: &[Subscription],
    now: Instant,
) -> Result<PreparedMember, JoinError> {
    let id = setup.ids.peer_id(setup.shard);
    let creds = setup.ids.ice_creds();
    let ufrag = creds.ufrag.clone();
    // A member watches: the send-side estimate picks its layers.
    let mut config = rtc_config(creds, setup.dtls_cert.as_ref())
        .enable_bwe(Some(Bitrate::bps(setup.initial_estimate)));
    config.codec_config().enable_opus(true, true);
    let mut rtc = config.build(now);
    for c in &setup.candidates {
        rtc.add_local_candidate(c.clone());
    }
    let mut api = rtc.sdp_api();
    let upload_audio = api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    let upload_video = api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let offered: Vec<Sub> = subs.iter().map(|s| add_sub(&mut api, s)).collect();
    let (offer, pending) = api
        .apply()
        .ok_or_else(|| JoinError::Refused("nothing to offer".into()))?;
    let (rtc_timeout, transmits) = super::setup::drain(&mut rtc).map_err(JoinError::Refused)?;
    Ok(PreparedMember {
        id,
        room: room.to_string(),
        rtc,
        ufrag,
        negotiation: Negotiation {
            upload_audio,
            upload_video,
            subs: Vec::new(),
            mlines: 2 + 2 * offered.len(),
            pending: Some((pending, offered)),
        },
        offer: offer.to_sdp_string(),
        rtc_timeout,
        transmits,
    })
}

impl Sfu {
    /// Opens a member session of `room` and makes its first offer, here
    /// and now (the runtime prepares it off the media thread instead).
    pub fn open_member(
        &mut self,
        room: &str,
        subs: &[Subscription],
        now: Instant,
    ) -> Result<MemberOffer, JoinError> {
        let prepared = prepare_member(&self.config.setup(), room, subs, now)?;
        Ok(self.admit_member(prepared, now))
    }

    /// Makes a member session prepared by [`prepare_member`] (with this
    /// shard's [`super::SfuConfig::setup`]) live.
    pub fn admit_member(&mut self, p: PreparedMember, now: Instant) -> MemberOffer {
        self.transmits.extend(p.transmits);
        let id = p.id;
        let mut peer = self.new_peer(id, &p.room, p.rtc, p.ufrag, Role::Play, None, Vec::new());
        peer.member = Some(Box::new(p.negotiation));
        self.admit(peer, p.rtc_timeout, now);
        tracing::info!(live = %p.room, peer = %id.log(), "room member session offered");
        MemberOffer {
            peer: id,
            offer: p.offer,
        }
    }

    /// The member's answer to the offer out: sets up what it proposed.
    pub fn member_answer(
        &mut self,
        id: PeerId,
        answer: &str,
        now: Instant,
    ) -> Result<Answered, MemberError> {
        let answer = SdpAnswer::from_sdp_string(answer).map_err(|e| {
            MemberError::Refused(format!(
                "malformed SDP answer: {}",
                tidy_sdp_error(&e.to_string())
            ))
        })?;
        let peer = self.peers.get_mut(&id).ok_or(MemberError::NoSuchSession)?;
        let neg = peer.member.as_mut().ok_or(MemberError::NoSuchSession)?;
        let (pending, proposed) = neg.pending.take().ok_or(MemberError::NoOffer)?;
        // str0m may panic on SDP it does not expect; a member's answer must
        // never take the server down.
        let rtc = &mut peer.rtc;
        catch_unwind(AssertUnwindSafe(|| {
            rtc.sdp_api().accept_answer(pending, answer)
        }))
        .map_err(|_| MemberError::Refused("the answer could not be negotiated".into()))?
        .map_err(|e| MemberError::Refused(format!("the answer was refused: {e}")))?;
        let neg = peer.member.as_mut().expect("checked above");
        let (upload_audio, upload_video) = (neg.upload_audio, neg.upload_video);
        let before = std::mem::replace(&mut neg.subs, proposed.clone());
        let sending = [upload_audio, upload_video].iter().any(|mid| {
            peer.rtc
                .media(*mid)
                .is_some_and(|m| !m.disabled() && m.direction().is_receiving())
        });
        self.apply_subs(id, &before, &proposed, now);
        self.drive(id, now);
        Ok(Answered { sending })
    }

    /// Offers `subs` to the member if they differ from what it has. `None`:
    /// nothing to negotiate.
    pub fn member_offer(
        &mut self,
        id: PeerId,
        subs: &[Subscription],
        now: Instant,
    ) -> Result<Option<String>, MemberError> {
        let peer = self.peers.get_mut(&id).ok_or(MemberError::NoSuchSession)?;
        let neg = peer.member.as_mut().ok_or(MemberError::NoSuchSession)?;
        if neg.pending.is_some() {
            return Err(MemberError::OfferPending);
        }
        let gone: Vec<&Sub> = neg.subs.iter().filter(|s| !subs.contains(&s.sub)).collect();
        let new: Vec<&Subscription> = subs
            .iter()
            .filter(|s| !neg.subs.iter().any(|k| k.sub == **s))
            .collect();
        if gone.is_empty() && new.is_empty() {
            return Ok(None);
        }
        if neg.mlines + 2 * new.len() > MAX_MLINES {
            return Err(MemberError::Refused(format!(
                "this member's connection has seen {} m-lines come and go, the most Vessel \
                 offers one connection: rejoin the room for a fresh one",
                neg.mlines
            )));
        }
        let mut api = peer.rtc.sdp_api();
        for s in &gone {
            api.stop_media(s.audio);
            api.stop_media(s.video);
        }
        let mut proposed: Vec<Sub> = neg
            .subs
            .iter()
            .filter(|s| subs.contains(&s.sub))
            .cloned()
            .collect();
        for s in new {
            proposed.push(add_sub(&mut api, s));
        }
        let added = proposed.len() - (neg.subs.len() - gone.len());
        let Some((offer, pending)) = api.apply() else {
            return Ok(None);
        };
        neg.mlines += 2 * added;
        neg.pending = Some((pending, proposed));
        self.drive(id, now);
        Ok(Some(offer.to_sdp_string()))
    }

    /// The member publishes into `live` (taking it over from any caster),
    /// or stops publishing (`None`).
    pub fn member_cast(
        &mut self,
        id: PeerId,
        live: Option<&str>,
        now: Instant,
    ) -> Result<(), MemberError> {
        let peer = self.peers.get(&id).ok_or(MemberError::NoSuchSession)?;
        let neg = peer.member.as_ref().ok_or(MemberError::NoSuchSession)?;
        let upload = [neg.upload_video, neg.upload_audio];
        if let Some(old) = peer.cast.as_ref().map(|c| c.live.clone())
            && live.is_none_or(|l| !same_live(&old, l))
        {
            self.end_cast(id, &old, now);
        }
        let Some(live) = live else {
            return Ok(());
        };
        let peer = self.peers.get(&id).ok_or(MemberError::NoSuchSession)?;
        if peer.casts(live) {
            return Ok(());
        }
        let mut cast = Cast::new(self.live_name(live), self.config.keyframe_interval, now);
        for mid in upload {
            let receiving = peer
                .rtc
                .media(mid)
                .is_some_and(|m| !m.disabled() && m.direction().is_receiving());
            if receiving && let Some(p) = offered_producer(&peer.rtc, mid) {
                cast.producers.push(p);
            }
        }
        if cast.producers.is_empty() {
            return Err(MemberError::Refused(
                "the member sends no audio or video to publish".into(),
            ));
        }
        let connected = peer.connected;
        let live = cast.live.clone();
        if let Some(p) = self.peers.get_mut(&id) {
            p.cast = Some(cast);
        }
        tracing::info!(%live, peer = %id.log(), "room member publishing");
        self.take_live(id, &live, now);
        if connected {
            self.on_air(id, &live, now);
        }
        self.drive(id, now);
        Ok(())
    }

    /// A candidate the member trickled (ICE-lite finds its address from
    /// its checks; kept for str0m all the same).
    pub fn member_candidate(
        &mut self,
        id: PeerId,
        candidate: Candidate,
        now: Instant,
    ) -> Result<(), MemberError> {
        let peer = self.peers.get_mut(&id).ok_or(MemberError::NoSuchSession)?;
        if peer.member.is_none() {
            return Err(MemberError::NoSuchSession);
        }
        peer.add_remote_candidate(candidate);
        self.drive(id, now);
        Ok(())
    }

    /// Ends a member session.
    pub fn member_leave(&mut self, id: PeerId, now: Instant) -> Result<(), MemberError> {
        match self.peers.get(&id) {
            Some(p) if p.member.is_some() => {
                tracing::info!(live = %p.live, peer = %id.log(), "room member session ended");
                self.close_peer(id, now);
                Ok(())
            }
            _ => Err(MemberError::NoSuchSession),
        }
    }

    /// Brings the member's plays in line with a newly accepted answer:
    /// lives it no longer watches are left, new ones joined, and a live
    /// whose publication changed gets the new m-lines' tracks.
    fn apply_subs(&mut self, id: PeerId, before: &[Sub], after: &[Sub], now: Instant) {
        let mut left: Vec<Arc<str>> = Vec::new();
        let mut joined: Vec<Arc<str>> = Vec::new();
        let names: HashMap<&str, Arc<str>> = after
            .iter()
            .map(|s| (s.sub.live.as_str(), self.live_name(&s.sub.live)))
            .collect();
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let connected = peer.connected;
        peer.plays.retain(|p| {
            let keep = after.iter().any(|s| same_live(&p.live, &s.sub.live));
            if !keep {
                left.push(p.live.clone());
            }
            keep
        });
        for s in after {
            if before.iter().any(|b| b.sub == s.sub) {
                continue; // negotiated before: its tracks stay
            }
            let audio = out_track(&mut peer.rtc, s.audio, MediaKind::Audio);
            let video = out_track(&mut peer.rtc, s.video, MediaKind::Video);
            match peer
                .plays
                .iter_mut()
                .find(|p| same_live(&p.live, &s.sub.live))
            {
                // A new caster of a live it watches: the new m-lines.
                Some(play) => {
                    play.audio = audio;
                    play.video = video;
                }
                None => {
                    let mut play = Play::new(names[s.sub.live.as_str()].clone());
                    play.audio = audio;
                    play.video = video;
                    joined.push(play.live.clone());
                    peer.plays.push(play);
                }
            }
        }
        for live in left {
            self.unwatch(id, &live, connected);
        }
        for live in joined {
            self.watch(id, &live);
            if connected {
                self.now_watching(id, &live, now);
            }
        }
        // Layers for replaced tracks too.
        for s in after {
            let layers = self.caster_layers(&s.sub.live, now);
            self.choose_layer(id, &s.sub.live, &layers, None, now);
        }
    }
}

/// Adds a publication's two sendonly m-lines to an offer being made.
fn add_sub(api: &mut str0m::change::SdpApi<'_>, s: &Subscription) -> Sub {
    let track = |kind: &str| Some(format!("{}-{kind}", s.stream));
    let audio = api.add_media(
        MediaKind::Audio,
        Direction::SendOnly,
        Some(s.stream.clone()),
        track("audio"),
        None,
    );
    let video = api.add_media(
        MediaKind::Video,
        Direction::SendOnly,
        Some(s.stream.clone()),
        track("video"),
        None,
    );
    Sub {
        sub: s.clone(),
        audio,
        video,
    }
}

/// The track a negotiated sendonly m-line is fed through; none if the
/// member refused the m-line.
fn out_track(rtc: &mut str0m::Rtc, mid: Mid, kind: MediaKind) -> Option<OutTrack> {
    let media = rtc.media(mid)?;
    if media.disabled() || !media.direction().is_sending() {
        return None;
    }
    let mut api = rtc.direct_api();
    let tx = api.stream_tx_by_mid(mid, None)?;
    // As for WHEP viewers: a retransmission older than a second misses any
    // live player's jitter buffer.
    tx.set_rtx_cache(1024, RTX_CACHE_AGE, Some(VIEWER_RTX_CAP));
    let ssrc = tx.ssrc();
    Some(OutTrack::new(mid, ssrc, kind))
}
