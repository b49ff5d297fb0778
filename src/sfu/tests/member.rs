//! Sessions the server offers (SkyWay SFU room members), on simulated time.
//! The client is a str0m `Rtc` that answers Vessel's offers as a browser
//! behind skyway-js does: a member with a stream sends on the upload
//! m-lines (with simulcast when offered), one without answers them
//! inactive.

use str0m::change::SdpOffer;

use super::*;
use crate::sfu::{MemberError, Subscription};

fn sub(live: &str, stream: &str) -> Subscription {
    Subscription {
        live: live.into(),
        stream: stream.into(),
    }
}

/// The mids of an offer's m-lines, in order, with their kind.
fn offered_mids(offer: &str) -> Vec<(Mid, MediaKind)> {
    let offer = SdpOffer::from_sdp_string(offer).unwrap();
    offer
        .media_lines
        .iter()
        .map(|m| {
            let kind = if m.typ.to_string() == "audio" {
                MediaKind::Audio
            } else {
                MediaKind::Video
            };
            (m.mid(), kind)
        })
        .collect()
}

/// An answer that declines to send: the upload m-lines (the first audio
/// and video ones) turned inactive, as a browser without a stream answers.
fn without_upload(answer: &str) -> String {
    let mut out = Vec::new();
    let mut section = 0;
    for line in answer.split("\r\n") {
        if line.starts_with("m=") {
            section += 1;
        }
        if section <= 2 && line == "a=sendonly" {
            out.push("a=inactive".to_string());
        } else {
            out.push(line.to_string());
        }
    }
    out.join("\r\n")
}

impl Net {
    /// Opens a member of `room` on `shard` watching `subs`; a publisher
    /// sends on its upload m-lines.
    fn member_on(
        &mut self,
        shard: usize,
        room: &str,
        subs: &[Subscription],
        publish: bool,
    ) -> usize {
        let port = 6000 + self.clients.len() as u16;
        let addr: SocketAddr = format!("10.0.0.2:{port}").parse().unwrap();
        // Prepared on another thread, as the runtime's blocking pool does.
        let setup = self.sfus[shard].config.setup();
        let (name, list, now) = (room.to_string(), subs.to_vec(), self.now);
        let prepared =
            std::thread::spawn(move || crate::sfu::prepare_member(&setup, &name, &list, now))
                .join()
                .unwrap()
                .unwrap();
        let offer = self.sfus[shard].admit_member(prepared, self.now);
        let mids = offered_mids(&offer.offer);
        assert_eq!(mids[0].1, MediaKind::Audio, "upload audio first");
        assert_eq!(mids[1].1, MediaKind::Video, "then upload video");
        let mut config = RtcConfig::new().set_rtp_mode(true);
        config.codec_config().enable_opus(true, false);
        let mut rtc = config.build(self.now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        assert!(
            !offer.offer.contains("a=simulcast"),
            "no simulcast asked of the upload (Chrome would not bind its track)"
        );
        let sdp = offer.offer.clone();
        let answer = rtc
            .sdp_api()
            .accept_offer(SdpOffer::from_sdp_string(&sdp).unwrap())
            .unwrap()
            .to_sdp_string();
        let answer = if publish {
            answer
        } else {
            without_upload(&answer)
        };
        let answered = self.sfus[shard]
            .member_answer(offer.peer, &answer, self.now)
            .unwrap();
        assert_eq!(answered.sending, publish);
        let layers = if publish {
            vec![(None, 100, true)]
        } else {
            Vec::new()
        };
        self.clients.push(Client {
            rtc,
            addr,
            peer: offer.peer,
            shard,
            connected: false,
            audio: mids[0].0,
            audio_got: Vec::new(),
            video: mids[1].0,
            received: Vec::new(),
            layers,
            ts: 0,
            keyframe_requests: 0,
            dead: false,
            fill: 0x42,
            parts: (2, 0),
            link: None,
            gop_every: None,
            frames: 0,
        });
        self.clients.len() - 1
    }

    /// A member of `room` that publishes into `live`.
    fn publisher(&mut self, room: &str, live: &str) -> (usize, PeerId) {
        let i = self.member_on(0, room, &[], true);
        let peer = self.clients[i].peer;
        self.sfus[0]
            .member_cast(peer, Some(live), self.now)
            .unwrap();
        (i, peer)
    }

    /// Re-offers `subs` to member `i` and has it answer. False if there
    /// was nothing to negotiate.
    fn reoffer(&mut self, i: usize, subs: &[Subscription]) -> bool {
        let (peer, shard) = (self.clients[i].peer, self.clients[i].shard);
        let Some(offer) = self.sfus[shard].member_offer(peer, subs, self.now).unwrap() else {
            return false;
        };
        let answer = self.clients[i]
            .rtc
            .sdp_api()
            .accept_offer(SdpOffer::from_sdp_string(&offer).unwrap())
            .unwrap()
            .to_sdp_string();
        self.sfus[shard]
            .member_answer(peer, &answer, self.now)
            .unwrap();
        self.pump();
        true
    }

    fn cast_events(&self, live: &str) -> Vec<(bool, PeerId)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                SfuEvent::CastStarted { live: l, caster } if l == live => Some((true, *caster)),
                SfuEvent::CastEnded { live: l, caster } if l == live => Some((false, *caster)),
                _ => None,
            })
            .collect()
    }
}

/// Video packets member `c` got on the m-lines of `mids`.
fn got_on(c: &Client, mids: &[Mid]) -> usize {
    c.received
        .iter()
        .filter(|g| g.mid.is_some_and(|m| mids.contains(&m)))
        .count()
}

#[test]
fn a_member_publishes_and_members_and_whep_viewers_watch_it() {
    let mut net = Net::new();
    let (a, a_peer) = net.publisher("room", "room");
    let stream = a_peer.to_string();
    let b = net.member_on(0, "room", &[sub("room", &stream)], false);
    let whep = net.join("room", Role::Play);
    net.run(Duration::from_millis(800));

    assert_eq!(net.cast_events("room"), vec![(true, a_peer)]);
    let state = net.last_state("room").unwrap();
    assert!(state.on_air);
    assert_eq!(state.viewers, 2, "the member and the WHEP viewer");
    let got = net.clients[b].received.len();
    assert!(got > 20, "member b receives a's video: {got}");
    assert!(
        net.clients[b].received.iter().all(|g| g.mid.is_some()),
        "on its own m-lines"
    );
    assert!(net.clients[whep].received.len() > 20, "the WHEP viewer too");
    assert!(
        net.clients[a].received.is_empty(),
        "the publisher gets nothing back"
    );
    assert_one_stream(&net.clients[b].received);
}

#[test]
fn re_offers_add_publishers_that_come_and_stop_those_that_go() {
    let mut net = Net::new();
    let b = net.member_on(0, "room", &[], false);
    let b_peer = net.clients[b].peer;
    assert_eq!(
        net.sfus[0].member_offer(b_peer, &[], net.now),
        Ok(None),
        "nothing changed: no offer"
    );
    let a = net.member_on(0, "room", &[], true);
    let a_peer = net.clients[a].peer;
    net.sfus[0]
        .member_cast(a_peer, Some("room"), net.now)
        .unwrap();
    net.run(Duration::from_millis(300));
    assert!(net.clients[b].received.is_empty());

    let s = sub("room", &a_peer.to_string());
    assert!(net.reoffer(b, std::slice::from_ref(&s)));
    net.run(Duration::from_millis(500));
    let got = net.clients[b].received.len();
    assert!(got > 10, "b watches a once the re-offer is answered: {got}");
    assert_eq!(net.last_state("room").unwrap().viewers, 1);

    // A leaves: its cast ends, and the re-offer stops its m-lines.
    net.sfus[0].member_leave(a_peer, net.now).unwrap();
    net.pump();
    assert!(net.ended(a_peer));
    assert_eq!(
        net.cast_events("room"),
        vec![(true, a_peer), (false, a_peer)]
    );
    assert!(net.reoffer(b, &[]));
    let state = net.last_state("room").unwrap();
    assert_eq!((state.on_air, state.viewers), (false, 0));
    assert!(
        net.sfus[0].live_state("room").is_none(),
        "an empty live is forgotten"
    );
    let stopped = net.clients[b]
        .rtc
        .media(offered_video_mid(&net, b))
        .map(|m| m.disabled());
    assert_eq!(stopped, Some(true), "the m-line is stopped (port 0)");
    assert!(!net.ended(b_peer), "b's session carries on");
}

/// The first video m-line b was offered for a publication (after the upload ones).
fn offered_video_mid(net: &Net, i: usize) -> Mid {
    net.clients[i]
        .received
        .first()
        .and_then(|g| g.mid)
        .expect("b got video")
}

#[test]
fn one_offer_at_a_time_and_answers_only_to_offers() {
    let mut net = Net::new();
    let offer = net.sfus[0].open_member("room", &[], net.now).unwrap();
    assert_eq!(
        net.sfus[0].member_offer(offer.peer, &[sub("x", "s")], net.now),
        Err(MemberError::OfferPending)
    );
    let refused = net.sfus[0].member_answer(offer.peer, "v=0 garbage", net.now);
    assert!(
        matches!(&refused, Err(MemberError::Refused(why)) if why.contains("malformed")),
        "{refused:?}"
    );
    let b = net.member_on(0, "room", &[], false);
    let peer = net.clients[b].peer;
    assert_eq!(
        net.sfus[0].member_answer(peer, &offer.offer.replace("offer", "answer"), net.now),
        Err(MemberError::NoOffer),
        "no offer is out"
    );
    assert_eq!(
        net.sfus[0].member_cast(peer, Some("room"), net.now),
        Err(MemberError::Refused(
            "the member sends no audio or video to publish".into()
        )),
        "a member that sends nothing cannot publish"
    );
    let whip = net.join("other", Role::Cast);
    assert_eq!(
        net.sfus[0].member_offer(net.clients[whip].peer, &[], net.now),
        Err(MemberError::NoSuchSession),
        "a WHIP session is no member"
    );
    assert_eq!(
        net.sfus[0].leave("room", Role::Play, peer, net.now),
        Err(NoSuchSession),
        "nor is a member a WHEP session"
    );
}

#[test]
fn a_whip_caster_taking_the_live_stops_a_members_publishing_only() {
    let mut net = Net::new();
    let (a, a_peer) = net.publisher("room", "room");
    let b = net.member_on(0, "room", &[sub("room", &a_peer.to_string())], false);
    net.run(Duration::from_millis(500));
    let before = net.clients[b].received.len();
    assert!(before > 10);

    let whip = net.join("room", Role::Cast);
    net.clients[whip].layers[0] = (None, 40_000, true);
    net.run(Duration::from_millis(600));
    let whip_peer = net.clients[whip].peer;
    assert_eq!(
        net.cast_events("room"),
        vec![(true, a_peer), (false, a_peer), (true, whip_peer)]
    );
    assert!(!net.ended(a_peer), "a's session goes on");
    assert!(
        net.clients[b].received.len() > before + 10,
        "b gets the new caster on the tracks it has until it is re-offered"
    );
    assert_one_stream(&net.clients[b].received);
    // A may watch the WHIP caster now, on a new publication.
    assert!(net.reoffer(a, &[sub("room", &whip_peer.to_string())]));
    net.run(Duration::from_millis(500));
    assert!(
        !net.clients[a].received.is_empty(),
        "a watches what replaced it"
    );
}

#[test]
fn members_on_other_shards_watch_a_simulcast_caster_each_at_its_own_layer() {
    // A WHIP caster with three layers casts the room's live; members on
    // both shards watch it, each on the layer its own estimate allows.
    let mut net = Net::sharded(2);
    let caster = net.join_on(0, "room", Role::Cast, true, false);
    net.run(Duration::from_millis(300));
    let s = sub("room", "whip");
    let b = net.member_on(1, "room", std::slice::from_ref(&s), false);
    let c = net.member_on(0, "room", std::slice::from_ref(&s), false);
    net.run(Duration::from_millis(1500));
    for i in [b, c] {
        let got = &net.clients[i].received;
        assert!(got.len() > 20, "member {i} receives: {}", got.len());
        assert_one_stream(got);
    }
    // Each member's own choice: the top layer fits the initial estimate.
    for i in [b, c] {
        let top = net.clients[i].received.last().unwrap().layer;
        assert!(top > 0, "member {i} is above the lowest layer: {top}");
    }
    assert!(
        net.clients[caster].keyframe_requests > 0,
        "layers spliced in at keyframes"
    );
}

#[test]
fn a_member_watches_several_publishers_on_their_own_m_lines() {
    let mut net = Net::new();
    let a = net.member_on(0, "room", &[], true);
    let b = net.member_on(0, "room", &[], true);
    let (a_peer, b_peer) = (net.clients[a].peer, net.clients[b].peer);
    net.sfus[0]
        .member_cast(a_peer, Some("room"), net.now)
        .unwrap();
    net.sfus[0]
        .member_cast(b_peer, Some("room~2"), net.now)
        .unwrap();
    net.clients[b].layers[0] = (None, 30_000, true);
    let (sa, sb) = (
        sub("room", &a_peer.to_string()),
        sub("room~2", &b_peer.to_string()),
    );
    let c = net.member_on(0, "room", &[sa.clone(), sb.clone()], false);
    assert!(net.reoffer(a, std::slice::from_ref(&sb)));
    assert!(net.reoffer(b, std::slice::from_ref(&sa)));
    net.run(Duration::from_millis(800));

    let mids: Vec<Mid> = {
        let mut m: Vec<Mid> = net.clients[c]
            .received
            .iter()
            .filter_map(|g| g.mid)
            .collect();
        m.sort();
        m.dedup();
        m
    };
    assert_eq!(mids.len(), 2, "c gets two videos on two m-lines: {mids:?}");
    for mid in &mids {
        assert!(got_on(&net.clients[c], &[*mid]) > 10);
    }
    assert!(net.clients[a].received.len() > 10, "a watches b");
    assert!(net.clients[b].received.len() > 10, "b watches a");
    assert_eq!(net.last_state("room").unwrap().viewers, 2);
    assert_eq!(net.last_state("room~2").unwrap().viewers, 2);
}
