//! Carries out what the SkyWay protocol asks of the SFU for SFU room
//! members, and reports each result back to it.

use std::sync::Arc;

use serde_json::Value;
use str0m::Candidate;

use super::{SkywayHub, admission};
use crate::http::AppState;
use crate::media::MediaError;
use crate::sfu::{JoinError, MemberError};
use crate::skyway::{MediaOp, Refusal};

pub(super) async fn run(hub: Arc<SkywayHub>, state: AppState, op: MediaOp) {
    let media = &state.media;
    match op {
        MediaOp::Open { peer, room, subs } => {
            let client = hub.client_of_peer(&peer);
            let result = media
                .open_member(&room, subs, client)
                .await
                .map(|o| (o.peer, o.offer))
                .map_err(refusal);
            hub.with(&state, |s| s.media_opened(&peer, &room, result));
        }
        MediaOp::Answer {
            peer,
            room,
            session,
            sdp,
        } => {
            let result = media
                .member_answer(session, sdp)
                .await
                .map(|a| a.sending)
                .map_err(refusal);
            hub.with(&state, |s| s.media_answered(&peer, &room, session, result));
        }
        MediaOp::Offer {
            peer,
            room,
            session,
            subs,
        } => {
            let result = media.member_offer(session, subs).await.map_err(refusal);
            hub.with(&state, |s| s.media_offered(&peer, &room, session, result));
        }
        MediaOp::Publish {
            peer,
            room,
            session,
            live,
            credential,
        } => {
            let asker = hub.asker_of(&peer);
            let result = match asker {
                Some(asker) => publish(&state, &asker, &peer, &room, credential).await,
                None => Err(Refusal::new("server-error", "the peer went away")),
            };
            let result = match result {
                Ok(()) => media
                    .member_cast(session, Some(&live))
                    .await
                    .map_err(refusal),
                Err(r) => Err(r),
            };
            hub.with(&state, |s| {
                s.media_published(&peer, &room, session, &live, result)
            });
        }
        MediaOp::Unpublish { session } => {
            let _ = media.member_cast(session, None).await;
        }
        MediaOp::Candidate { session, candidate } => {
            if let Some(c) = candidate_of(&candidate) {
                media.member_candidate(session, c).await;
            }
        }
        MediaOp::Leave { session } => media.member_leave(session).await,
    }
}

/// A member sends media into its room (its own live or `room~n`): it must
/// be allowed to cast the room's live, as a WHIP caster would.
async fn publish(
    state: &AppState,
    asker: &admission::Asker,
    peer: &str,
    room: &str,
    credential: Option<Value>,
) -> Result<(), Refusal> {
    state
        .accepting()
        .map_err(|e| Refusal::new("server-error", e.1))?;
    admission::decide(
        state,
        asker,
        peer,
        room,
        crate::skyway::Ask::Cast,
        credential,
    )
    .await
}

/// A trickled `RTCIceCandidate` as JSON (`{candidate, sdpMid, …}`).
pub(crate) fn candidate_of(v: &Value) -> Option<Candidate> {
    let line = v.get("candidate")?.as_str()?;
    if line.is_empty() {
        return None; // end of candidates
    }
    Candidate::from_sdp_string(line).ok()
}

fn refusal(e: MediaError) -> Refusal {
    match e {
        MediaError::Join(JoinError::MalformedOffer(m)) => Refusal::new("invalid-message", m),
        MediaError::Join(e) => Refusal::new("room-error", e.to_string()),
        MediaError::Member(MemberError::Refused(m)) => Refusal::new("invalid-message", m),
        MediaError::Member(e) => Refusal::new("room-error", e.to_string()),
        e => Refusal::new("server-error", e.to_string()),
    }
}
