//! Sessions set up without SDP (mediasoup-client's way), on simulated time.
//! The client is a str0m `Rtc` on the direct API that behaves as Chrome
//! behind mediasoup-client does: ICE-controlling full agent, DTLS client,
//! its own header-extension ids, simulcast layers known by rid only.

use str0m::format::{CodecConfig, PayloadParams};
use str0m::rtp::{Extension, ExtensionMap};

use super::*;
use crate::sfu::{DirectError, DirectTransport, Produce};

/// The ids Chrome gives a video producer made first (mediasoup-client
/// passes the browser's own ids on).
fn chrome_video_exts() -> Vec<(u8, Extension)> {
    vec![
        (9, Extension::RtpMid),
        (10, Extension::RtpStreamId),
        (11, Extension::RepairedRtpStreamId),
        (2, Extension::AbsoluteSendTime),
        (4, Extension::TransportSequenceNumber),
        (3, Extension::VideoOrientation),
    ]
}

fn vp8() -> PayloadParams {
    *CodecConfig::new_with_defaults()
        .find(|p| p.spec().codec == Codec::Vp8)
        .unwrap()
}

fn opus() -> PayloadParams {
    *CodecConfig::new_with_defaults()
        .find(|p| p.spec().codec == Codec::Opus)
        .unwrap()
}

impl Net {
    /// A client's `Rtc` for a transport the SFU described.
    fn direct_client(
        &self,
        t: &DirectTransport,
        exts: &[(u8, Extension)],
        port: u16,
    ) -> (Rtc, SocketAddr) {
        let addr: SocketAddr = format!("10.0.0.2:{port}").parse().unwrap();
        let mut map = ExtensionMap::empty();
        for (id, e) in exts {
            map.set(*id, e.clone());
        }
        let mut rtc = RtcConfig::new()
            .set_rtp_mode(true)
            .set_extension_map(map)
            .build(self.now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        for c in &t.candidates {
            rtc.add_remote_candidate(c.clone());
        }
        let mut api = rtc.direct_api();
        api.set_ice_controlling(true);
        api.set_remote_ice_credentials(t.ice.clone());
        api.set_remote_fingerprint(t.fingerprint.clone());
        api.start_dtls(true).unwrap();
        (rtc, addr)
    }

    fn push_client(
        &mut self,
        rtc: Rtc,
        addr: SocketAddr,
        (peer, shard): (PeerId, usize),
        video: Mid,
        layers: Vec<(Option<Rid>, u64, bool)>,
    ) -> usize {
        self.clients.push(Client {
            rtc,
            addr,
            peer,
            shard,
            connected: false,
            // Not a mid these clients use: their audio is not inspected.
            audio: Mid::from("none"),
            audio_got: Vec::new(),
            video,
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

    /// A transport prepared on another thread, as the runtime's blocking
    /// pool does, then admitted by its shard.
    fn open_direct_off_thread(
        &mut self,
        shard: usize,
        live: &str,
        role: Role,
    ) -> crate::sfu::DirectTransport {
        let (setup, live, now) = (self.sfus[shard].config.setup(), live.to_string(), self.now);
        let prepared = std::thread::spawn(move || {
            crate::sfu::prepare_direct(&setup, &live, role, now).unwrap()
        })
        .join()
        .unwrap();
        self.sfus[shard].admit_direct(prepared, self.now)
    }

    /// A mediasoup-client caster of `live` producing three simulcast layers.
    fn direct_cast(&mut self, live: &str) -> usize {
        let port = 6000 + self.clients.len() as u16;
        let t = self.open_direct_off_thread(0, live, Role::Cast);
        let (mut rtc, addr) = self.direct_client(&t, &chrome_video_exts(), port);
        let mid = Mid::from("0");
        let mut api = rtc.direct_api();
        api.declare_media(mid, MediaKind::Video);
        for (i, rid) in RIDS.iter().enumerate() {
            let ssrc = 1000 + 2 * i as u32;
            api.declare_stream_tx(
                ssrc.into(),
                Some((ssrc + 1).into()),
                mid,
                Some(Rid::from(*rid)),
            );
        }
        let fingerprint = api.local_dtls_fingerprint().clone();
        self.sfus[0]
            .connect_direct(t.peer, fingerprint, self.now)
            .unwrap();
        let produced = self.sfus[0]
            .produce(t.peer, produce_video(chrome_video_exts()), self.now)
            .unwrap();
        assert!(produced.took_over, "the first producer takes the live");
        let id = &produced.producer.id;
        assert!(id.starts_with("video-"), "{id}");
        assert!(
            !id.contains(&t.peer.to_string()),
            "the session id is a secret: {id}"
        );
        assert!(produced.producer.simulcast);
        let layers = RIDS
            .iter()
            .map(|r| (Some(Rid::from(*r)), 100, true))
            .collect();
        self.push_client(rtc, addr, (t.peer, 0), mid, layers)
    }

    /// A mediasoup-client viewer of `live` on `shard` consuming its video
    /// (the caster is on shard 0, which the runtime asks for producers).
    fn direct_play(&mut self, live: &str, shard: usize) -> (usize, crate::sfu::Consumer) {
        let port = 6000 + self.clients.len() as u16;
        let t = self.open_direct_off_thread(shard, live, Role::Play);
        let standard: Vec<(u8, Extension)> = ExtensionMap::standard()
            .iter()
            .map(|(i, e)| (i, e.clone()))
            .collect();
        let (mut rtc, addr) = self.direct_client(&t, &standard, port);
        let producer = self.sfus[0]
            .producers(live)
            .into_iter()
            .find(|p| p.kind == MediaKind::Video)
            .unwrap();
        let device_pts: Vec<u8> = CodecConfig::new_with_defaults()
            .params()
            .iter()
            .map(|p| *p.pt())
            .collect();
        let consumer = self.sfus[shard]
            .consume(t.peer, producer, &device_pts, self.now)
            .unwrap();
        let mid = Mid::from(consumer.mid.as_str());
        let mut api = rtc.direct_api();
        api.declare_media(mid, MediaKind::Video);
        api.expect_stream_rx(
            consumer.ssrc.into(),
            consumer.rtx_ssrc.map(Into::into),
            mid,
            None,
        );
        let fingerprint = api.local_dtls_fingerprint().clone();
        self.sfus[shard]
            .connect_direct(t.peer, fingerprint, self.now)
            .unwrap();
        (
            self.push_client(rtc, addr, (t.peer, shard), mid, Vec::new()),
            consumer,
        )
    }
}

fn produce_video(exts: Vec<(u8, Extension)>) -> Produce {
    Produce {
        mid: "0".into(),
        kind: MediaKind::Video,
        codecs: vec![vp8()],
        exts,
        rids: RIDS.iter().map(|r| r.to_string()).collect(),
        ssrcs: Vec::new(),
    }
}

fn produce_audio(mid: &str, exts: Vec<(u8, Extension)>) -> Produce {
    Produce {
        mid: mid.into(),
        kind: MediaKind::Audio,
        codecs: vec![opus()],
        exts,
        rids: Vec::new(),
        ssrcs: vec![(5000, None)],
    }
}

#[test]
fn a_direct_caster_learns_the_browser_s_ufrag_and_reaches_whep_and_direct_viewers() {
    let mut net = Net::new();
    let caster = net.direct_cast("d");
    let whep = net.join("d", Role::Play);
    net.run(Duration::from_millis(300));
    assert!(
        net.clients[caster].connected,
        "ICE and DTLS up: the ufrag was learnt from STUN"
    );
    assert!(net.last_state("d").unwrap().on_air);
    let (direct, consumer) = net.direct_play("d", 0);
    assert_eq!(consumer.mid, "0", "the server chooses the consumer's mid");
    assert_eq!(*consumer.params.pt(), *vp8().pt());
    net.run(Duration::from_secs(2));

    for i in [whep, direct] {
        let got = &net.clients[i].received;
        assert!(got.len() > 50, "viewer {i} got {} packets", got.len());
        assert_one_stream(got);
        assert_eq!(
            got.last().unwrap().layer,
            2,
            "viewer {i} is on the top layer"
        );
    }
    assert_eq!(net.last_state("d").unwrap().viewers, 2);
}

#[test]
fn a_second_producer_must_keep_the_first_one_s_routing_ids() {
    let mut net = Net::new();
    let caster = net.direct_cast("d");
    let peer = net.clients[caster].peer;
    let now = net.now;
    // Audio with the mid extension on another id than video's: str0m would
    // not find its stream.
    let moved = vec![(1, Extension::RtpMid), (12, Extension::AudioLevel)];
    let e = net.sfus[0]
        .produce(peer, produce_audio("1", moved), now)
        .unwrap_err();
    assert!(
        matches!(&e, DirectError::Refused(why) if why.contains("sdes:mid")),
        "{e}"
    );
    // The same mid id (audio level on an id of its own is fine).
    let same = vec![(9, Extension::RtpMid), (12, Extension::AudioLevel)];
    let audio = net.sfus[0]
        .produce(peer, produce_audio("1", same.clone()), now)
        .unwrap();
    assert!(
        !audio.took_over,
        "a second producer does not take the live again"
    );
    assert!(audio.producer.id.starts_with("audio-"));
    // One producer per kind, and a mid once.
    let again = net.sfus[0]
        .produce(peer, produce_audio("2", same), now)
        .unwrap_err();
    assert!(
        matches!(&again, DirectError::Refused(why) if why.contains("already produces audio")),
        "{again}"
    );
    let kinds: Vec<MediaKind> = net.sfus[0].producers("d").iter().map(|p| p.kind).collect();
    assert_eq!(kinds, [MediaKind::Video, MediaKind::Audio]);
}

#[test]
fn bad_produce_parameters_are_refused_and_the_caster_on_air_stays() {
    let mut net = Net::new();
    let whip = net.join("d", Role::Cast);
    net.run(Duration::from_millis(300));
    assert!(net.last_state("d").unwrap().on_air);
    let t = net.sfus[0].open_direct("d", Role::Cast, net.now).unwrap();
    let video = || produce_video(chrome_video_exts());
    let audio = |ssrcs: Vec<(u32, Option<u32>)>| Produce {
        ssrcs,
        ..produce_audio("1", vec![(9, Extension::RtpMid)])
    };
    let mut bad = Vec::new();
    let mut p = video();
    p.mid = "x".repeat(40);
    bad.push(("a long mid", p));
    let mut p = video();
    p.rids[0] = "a-very-long-rid".into();
    bad.push(("a long rid", p));
    let mut p = video();
    p.rids = vec!["r-0".into(), "r_0".into()];
    bad.push(("rids str0m would make one", p));
    let mut p = video();
    p.rids = vec!["a".into(), "a".into()];
    bad.push(("a rid twice", p));
    let mut p = video();
    p.rids = (0..5).map(|i| format!("r{i}")).collect();
    bad.push(("five layers", p));
    let mut p = video();
    p.codecs.clear();
    bad.push(("no codec", p));
    let mut p = video();
    p.codecs = vec![opus()];
    bad.push(("a codec of the other kind", p));
    let mut p = video();
    p.exts.push((9, Extension::AudioLevel));
    bad.push(("an extension id twice", p));
    bad.push(("ssrc 0", audio(vec![(0, None)])));
    bad.push(("rtx = ssrc", audio(vec![(7, Some(7))])));
    bad.push(("an ssrc twice", audio(vec![(7, None), (7, None)])));
    let mut p = audio(vec![(7, None)]);
    p.rids = vec!["r0".into()];
    bad.push(("audio layers", p));
    for (what, p) in bad {
        let e = net.sfus[0].produce(t.peer, p, net.now).unwrap_err();
        assert!(matches!(e, DirectError::Refused(_)), "{what}: {e}");
    }
    net.run(Duration::from_millis(100));
    assert!(
        !net.ended(net.clients[whip].peer),
        "the WHIP caster goes on"
    );
    assert!(net.last_state("d").unwrap().on_air);
    // Still pending: a good produce works. Its transport never connects,
    // so it never takes over: the WHIP caster stays on air throughout, and
    // the attempt is dropped at its deadline.
    net.sfus[0].produce(t.peer, video(), net.now).unwrap();
    net.run(Duration::from_millis(5500));
    assert_eq!(
        net.sfus[0].producers("d").len(),
        2,
        "still the WHIP caster's"
    );
    assert!(!net.ended(net.clients[whip].peer));
    assert!(net.ended(t.peer), "the attempt that never connected");
    assert!(net.last_state("d").unwrap().on_air);
}

#[test]
fn a_later_producer_cannot_reuse_an_ssrc() {
    let mut net = Net::new();
    let t = net.sfus[0].open_direct("d", Role::Cast, net.now).unwrap();
    let first = produce_audio("1", vec![(9, Extension::RtpMid)]);
    net.sfus[0].produce(t.peer, first, net.now).unwrap();
    let mut video = produce_video(vec![(9, Extension::RtpMid)]);
    video.rids.clear();
    video.ssrcs = vec![(9000, Some(5000))];
    let e = net.sfus[0].produce(t.peer, video, net.now).unwrap_err();
    assert!(
        matches!(&e, DirectError::Refused(why) if why.contains("5000")),
        "{e}"
    );
}

#[test]
fn a_caster_transport_that_never_produces_expires() {
    let mut net = Net::new();
    let t = net.sfus[0].open_direct("d", Role::Cast, net.now).unwrap();
    net.run(Duration::from_secs(6)); // connect_timeout is 5 s here
    assert!(net.ended(t.peer));
    let e = net.sfus[0]
        .produce(t.peer, produce_video(chrome_video_exts()), net.now)
        .unwrap_err();
    assert_eq!(e, DirectError::NoSuchTransport);
}

#[test]
fn a_viewer_consumes_each_kind_once_and_only_what_its_device_receives() {
    let mut net = Net::new();
    net.direct_cast("d");
    net.run(Duration::from_millis(300));
    let t = net.sfus[0].open_direct("d", Role::Play, net.now).unwrap();
    let video = net.sfus[0].producers("d").remove(0);
    let e = net.sfus[0]
        .consume(t.peer, video.clone(), &[111], net.now)
        .unwrap_err();
    assert!(
        matches!(&e, DirectError::Refused(why) if why.contains("cannot receive")),
        "{e}"
    );
    let first = net.sfus[0]
        .consume(t.peer, video.clone(), &[96, 111], net.now)
        .unwrap();
    assert!(first.rtx_ssrc.is_some_and(|r| r != first.ssrc));
    let e = net.sfus[0]
        .consume(t.peer, video, &[96, 111], net.now)
        .unwrap_err();
    assert!(
        matches!(&e, DirectError::Refused(why) if why.contains("already consumes video")),
        "{e}"
    );
}

#[test]
fn checks_that_come_before_the_first_produce_are_answered_when_it_lands() {
    let mut net = Net::new();
    let t = net.sfus[0].open_direct("d", Role::Cast, net.now).unwrap();
    let (mut rtc, addr) = net.direct_client(&t, &chrome_video_exts(), 6000);
    let mid = Mid::from("0");
    let mut api = rtc.direct_api();
    api.declare_media(mid, MediaKind::Video);
    let fingerprint = api.local_dtls_fingerprint().clone();
    net.sfus[0]
        .connect_direct(t.peer, fingerprint, net.now)
        .unwrap();
    let c = net.push_client(rtc, addr, (t.peer, 0), mid, Vec::new());
    // The browser starts its checks as it sends `produce`.
    net.run(Duration::from_millis(20));
    assert!(!net.clients[c].connected);
    net.sfus[0]
        .produce(t.peer, produce_video(chrome_video_exts()), net.now)
        .unwrap();
    // Answered from the kept checks, not after the browser's retransmit.
    net.run(Duration::from_millis(10));
    assert!(
        net.clients[c].connected,
        "connected within 10 ms of the produce"
    );
}

#[test]
fn viewers_on_another_shard_get_a_direct_caster_and_a_second_connect_is_refused() {
    let mut net = Net::sharded(2);
    net.direct_cast("d");
    let whep = net.join_on(1, "d", Role::Play, false, false);
    net.run(Duration::from_millis(300));
    let (direct, _) = net.direct_play("d", 1);
    let again = net.sfus[1]
        .connect_direct(
            net.clients[direct].peer,
            net.clients[direct]
                .rtc
                .direct_api()
                .local_dtls_fingerprint()
                .clone(),
            net.now,
        )
        .unwrap_err();
    assert!(
        matches!(&again, DirectError::Refused(why) if why.contains("already connected")),
        "{again}"
    );
    net.run(Duration::from_secs(2));
    for i in [whep, direct] {
        let got = &net.clients[i].received;
        assert!(
            got.len() > 50,
            "viewer {i} on shard 1 got {} packets",
            got.len()
        );
        assert_one_stream(got);
    }
}
