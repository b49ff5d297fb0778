//! Setting up a WHIP/WHEP session — parsing the offer, building its `Rtc`
//! (str0m makes the DTLS key shares then: about 1.5 ms of elliptic-curve
//! work per session here), negotiating the answer — needs nothing of the
//! `Sfu`'s state. So it runs wherever the caller likes (the runtime: a
//! blocking pool, never the thread that forwards media), and the `Sfu`
//! only admits the result: a join storm does not stall forwarding.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use str0m::bwe::Bitrate;
use str0m::change::SdpOffer;
use str0m::config::DtlsCert;
use str0m::media::{Direction, MediaKind, Mid, Rid};
use str0m::net::{TcpType, Transmit};
use str0m::{Candidate, Output, Rtc};

use super::peer::OutTrack;
use super::{
    JoinError, PeerId, RELAY_RTX_CAP, RTX_CACHE_AGE, Role, SfuConfig, VIEWER_RTX_CAP, codec, offer,
    offered_producer, rtc_config, tidy_sdp_error,
};

/// What setting up a session needs of its shard.
#[derive(Clone)]
pub struct Setup {
    pub(super) shard: usize,
    pub(super) candidates: Vec<Candidate>,
    pub(super) initial_estimate: u64,
    pub(super) dtls_cert: Option<DtlsCert>,
    pub(super) ids: super::ids::Ids,
}

impl SfuConfig {
    pub fn setup(&self) -> Setup {
        Setup {
            shard: self.shard,
            candidates: local_candidates(&self.candidates, self.ice_tcp),
            initial_estimate: self.initial_estimate,
            dtls_cert: self.dtls_cert.clone(),
            ids: self.ids.clone(),
        }
    }
}

/// The host candidates announced for the media addresses.
pub(super) fn local_candidates(addrs: &[std::net::SocketAddr], ice_tcp: bool) -> Vec<Candidate> {
    let mut out = Vec::new();
    for addr in addrs {
        if let Ok(c) = Candidate::host(*addr, "udp") {
            out.push(c);
        }
        // ICE-TCP (RFC 6544): the media port's TCP twin, for networks that
        // block UDP. Browsers prefer the UDP candidate when both work.
        if ice_tcp {
            let tcp = Candidate::builder()
                .tcp()
                .host(*addr)
                .tcptype(TcpType::Passive)
                .build();
            if let Ok(c) = tcp {
                out.push(c);
            }
        }
    }
    out
}

/// Drains a new `Rtc`'s output (str0m's contract: after every change, poll
/// until it asks for time): when it next wants time, and what it sends.
pub(super) fn drain(rtc: &mut Rtc) -> Result<(Instant, Vec<Transmit>), String> {
    let mut transmits = Vec::new();
    loop {
        match rtc.poll_output() {
            Ok(Output::Event(_)) => {}
            Ok(Output::Transmit(t)) => transmits.push(t),
            Ok(Output::Timeout(t)) => return Ok((t, transmits)),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// A session negotiated and ready to be admitted by its shard's `Sfu`.
pub struct Prepared {
    pub(super) id: PeerId,
    pub(super) live: String,
    pub(super) rtc: Rtc,
    pub(super) ufrag: String,
    pub(super) role: Role,
    /// A caster's producers.
    pub(super) producers: Vec<super::direct::Producer>,
    /// A viewer's outgoing tracks.
    pub(super) audio: Option<OutTrack>,
    pub(super) video: Option<OutTrack>,
    /// A relay to another node: one video track per simulcast rid the
    /// edge asked to receive, lowest layer first (see [`prepare_relay`]).
    pub(super) relay: Vec<(Rid, OutTrack)>,
    pub(super) answer: String,
    /// The `Rtc`'s output is drained up to here.
    pub(super) rtc_timeout: Instant,
    pub(super) transmits: Vec<Transmit>,
    /// A caster whose group of pictures new viewers start from.
    pub(super) replay_gop: bool,
}

impl Prepared {
    /// Makes a caster's viewers start from its latest keyframe, kept for
    /// them, rather than ask it for one: for casters that cannot make a
    /// keyframe when asked (an RTMP encoder). See [`super::gop`].
    pub fn replaying_gop(mut self) -> Self {
        self.replay_gop = self.role == Role::Cast;
        self
    }

    pub fn peer(&self) -> PeerId {
        self.id
    }

    pub fn live(&self) -> &str {
        &self.live
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// How long ago (from `now`) its `Rtc` was made: a session prepared
    /// long before it is admitted has lost that much of its connect time.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.rtc_timeout)
    }
}

/// Negotiates a caster's or viewer's SDP offer. A panic inside str0m on
/// an offer it did not expect is a refusal, never more.
pub fn prepare(
    setup: &Setup,
    live: &str,
    role: Role,
    offer: &str,
    now: Instant,
) -> Result<Prepared, JoinError> {
    prepare_as(setup, live, role, false, offer, now)
}

/// Negotiates the offer of another node's relay (`src/cluster/relay.rs`):
/// a viewer that receives every video layer of the live's caster, each on
/// the simulcast rid its offer lists for it (`a=simulcast:recv q;h;f`,
/// lowest layer first), and the audio. The edge then chooses layers for
/// its own viewers as if the caster were its own. No bandwidth estimate
/// paces it: a relay between servers carries the live whole or not at all,
/// and lateness still bounds its queue.
pub fn prepare_relay(
    setup: &Setup,
    live: &str,
    offer: &str,
    now: Instant,
) -> Result<Prepared, JoinError> {
    prepare_as(setup, live, Role::Play, true, offer, now)
}

fn prepare_as(
    setup: &Setup,
    live: &str,
    role: Role,
    relay: bool,
    offer: &str,
    now: Instant,
) -> Result<Prepared, JoinError> {
    catch_unwind(AssertUnwindSafe(|| {
        negotiate(setup, live, role, relay, offer, now)
    }))
    .unwrap_or_else(|_| {
        Err(JoinError::Refused(
            "the offer could not be negotiated".into(),
        ))
    })
}

pub(crate) fn negotiate(
    setup: &Setup,
    live: &str,
    role: Role,
    relay: bool,
    offer: &str,
    now: Instant,
) -> Result<Prepared, JoinError> {
    let offer = SdpOffer::from_sdp_string(offer)
        .map_err(|e| JoinError::MalformedOffer(tidy_sdp_error(&e.to_string())))?;
    offer::check(&offer)?;
    let offered: Vec<Mid> = offer.media_lines.iter().map(|m| m.mid()).collect();
    // What a relay's offer receives as simulcast: mid and rids, in order
    // (read before str0m takes the offer).
    let simulcast_recv: Vec<(Mid, Vec<Rid>)> = match relay {
        false => Vec::new(),
        true => offer
            .media_lines
            .iter()
            .filter_map(|m| {
                let recv = m.simulcast()?.recv;
                let rids = recv.iter().map(|l| Rid::from(l.restriction_id.0.as_str()));
                Some((m.mid(), rids.collect()))
            })
            .collect(),
    };
    let id = setup.ids.peer_id(setup.shard);
    let creds = setup.ids.ice_creds();
    let ufrag = creds.ufrag.clone();
    let mut rtc_config = rtc_config(creds, setup.dtls_cert.as_ref());
    // RED (RFC 2198) for audio when the client offers it: a lost Opus
    // packet is rebuilt from the next one, with no retransmission.
    rtc_config.codec_config().enable_opus(true, true);
    match role {
        Role::Cast => codec::prefer_offered(rtc_config.codec_config(), &offer),
        Role::Play if relay => {}
        // The send-side estimate towards each viewer picks its layer.
        Role::Play => {
            rtc_config = rtc_config.enable_bwe(Some(Bitrate::bps(setup.initial_estimate)))
        }
    }
    let mut rtc = rtc_config.build(now);
    for c in &setup.candidates {
        rtc.add_local_candidate(c.clone());
    }
    let answer = rtc
        .sdp_api()
        .accept_offer(offer)
        .map_err(|e| JoinError::Refused(e.to_string()))?;
    let (rtc_timeout, transmits) = drain(&mut rtc).map_err(JoinError::Refused)?;
    // The negotiated m-lines, from our side's point of view.
    let medias: Vec<(Mid, MediaKind, Direction)> = offered
        .iter()
        .filter_map(|mid| rtc.media(*mid))
        .filter(|m| !m.disabled())
        .map(|m| (m.mid(), m.kind(), m.direction()))
        .collect();
    let first = |kind: MediaKind, sending: bool| {
        medias
            .iter()
            .find(|(_, k, dir)| {
                *k == kind
                    && if sending {
                        dir.is_sending()
                    } else {
                        dir.is_receiving()
                    }
            })
            .map(|(mid, _, _)| *mid)
    };
    let mut prepared = Prepared {
        id,
        live: live.to_string(),
        rtc,
        ufrag,
        role,
        producers: Vec::new(),
        audio: None,
        video: None,
        relay: Vec::new(),
        answer: answer.to_sdp_string(),
        rtc_timeout,
        transmits,
        replay_gop: false,
    };
    match role {
        Role::Cast => {
            if first(MediaKind::Audio, false).is_none() && first(MediaKind::Video, false).is_none()
            {
                return Err(JoinError::NoMedia(
                    "the offer sends no audio or video: a WHIP offer needs an m=audio or \
                     m=video section with a=sendonly or a=sendrecv and a supported codec \
                     (Opus, VP8, VP9, H264, AV1)",
                ));
            }
            for kind in [MediaKind::Video, MediaKind::Audio] {
                if let Some(p) =
                    first(kind, false).and_then(|mid| offered_producer(&prepared.rtc, mid))
                {
                    prepared.producers.push(p);
                }
            }
        }
        Role::Play => {
            let mut track = |kind, rid: Option<Rid>| {
                let mid = first(kind, true)?;
                let mut api = prepared.rtc.direct_api();
                let tx = api.stream_tx_by_mid(mid, rid)?;
                // A retransmission older than a second would miss any
                // live player's jitter buffer; str0m keeps 3 s. Above the
                // ratio cap str0m drops every queued resend until the share
                // of resent bytes (over the last second) falls again: a
                // viewer's 15 % (str0m's default) keeps a congested link
                // from carrying mostly repairs. A relay carries every
                // viewer of an edge, and 10 % random loss crosses 15 % in
                // a second now and then (at ~50 packets a second): its
                // repairs then stopped, and the edge's NACK retries were
                // all refused. Half its bytes is the relay's bound.
                tx.set_rtx_cache(
                    1024,
                    RTX_CACHE_AGE,
                    Some(if relay { RELAY_RTX_CAP } else { VIEWER_RTX_CAP }),
                );
                let ssrc = tx.ssrc();
                Some(OutTrack::new(mid, ssrc, kind))
            };
            let audio = track(MediaKind::Audio, None);
            let video_mid = first(MediaKind::Video, true);
            let rids = simulcast_recv
                .into_iter()
                .find(|(m, _)| Some(*m) == video_mid)
                .map(|(_, rids)| rids)
                .unwrap_or_default();
            let video = if rids.is_empty() {
                track(MediaKind::Video, None)
            } else {
                prepared.relay = rids
                    .into_iter()
                    .filter_map(|rid| Some((rid, track(MediaKind::Video, Some(rid))?)))
                    .collect();
                None
            };
            if relay && prepared.relay.is_empty() {
                return Err(JoinError::NoMedia(
                    "a relay offer receives video as simulcast (a=simulcast:recv with its rids)",
                ));
            }
            if audio.is_none() && video.is_none() {
                return Err(JoinError::NoMedia(
                    "the offer receives no audio or video: a WHEP offer needs an m=audio or \
                     m=video section with a=recvonly or a=sendrecv and a supported codec \
                     (Opus, VP8, VP9, H264, AV1)",
                ));
            }
            prepared.audio = audio;
            prepared.video = video;
        }
    }
    Ok(prepared)
}
