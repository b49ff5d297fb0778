//! The whole SFU on simulated time: str0m clients wired to an [`Sfu`]
//! through an in-memory network. No sockets, no sleeping, deterministic.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

use super::*;

mod direct;
mod fuzz;
mod gop;
mod hardening;
mod lossy;
mod member;
mod relay;
mod tap;

/// Shard `k` of the SFU listens on 10.0.0.1:5000 + k.
fn server(shard: usize) -> SocketAddr {
    SocketAddr::new([10, 0, 0, 1].into(), 5000 + shard as u16)
}

struct Client {
    rtc: Rtc,
    addr: SocketAddr,
    peer: PeerId,
    /// The SFU shard its session lives on.
    shard: usize,
    connected: bool,
    audio: Mid,
    /// Audio packets received: (payload type, payload).
    audio_got: Vec<(u8, Vec<u8>)>,
    video: Mid,
    received: Vec<Got>,
    /// Caster: its layers (one `None` without simulcast), each with its
    /// next sequence number and whether a keyframe was asked for.
    layers: Vec<(Option<Rid>, u64, bool)>,
    ts: u32,
    keyframe_requests: usize,
    /// Its process is gone: it neither sends nor receives.
    dead: bool,
    /// Caster: the byte its payloads are filled with (tells casters apart).
    fill: u8,
    /// Caster: packets per frame, and their size (0: 20 bytes on the
    /// lowest layer, 3 times more on each above).
    parts: (u8, usize),
    /// Its downlink: bytes per second, and the bytes it may still take
    /// now (a token bucket of 50 ms). What comes beyond is lost.
    link: Option<(u64, f64, Instant)>,
    /// Caster: makes a keyframe every this many frames and none on
    /// request, as an RTMP encoder does.
    gop_every: Option<u32>,
    /// Caster: frames written so far.
    frames: u32,
}

impl Client {
    /// Whether `bytes` more get through its downlink at `now`.
    fn takes(&mut self, bytes: usize, now: Instant) -> bool {
        let Some((rate, tokens, at)) = &mut self.link else {
            return true;
        };
        let burst = *rate as f64 / 20.0;
        *tokens = (*tokens + (now - *at).as_secs_f64() * *rate as f64).min(burst);
        *at = now;
        if *tokens < bytes as f64 {
            return false;
        }
        *tokens -= bytes as f64;
        true
    }
}

/// A video packet as a viewer got it.
#[derive(Debug, Clone, Copy)]
struct Got {
    /// The m-line it came on.
    mid: Option<Mid>,
    /// The simulcast rid it came on (a relay's).
    rid: Option<Rid>,
    /// The caster's fill byte.
    fill: u8,
    seq: u64,
    ts: u32,
    /// Which caster layer it came from (index, lowest first).
    layer: u8,
    starts_keyframe: bool,
    /// When the caster wrote it, as time since the start of the run.
    sent: Duration,
    /// When the viewer got it.
    at: Instant,
}

impl Got {
    /// How long it took from the caster to the viewer.
    fn delay(&self, start: Instant) -> Duration {
        (self.at - start).saturating_sub(self.sent)
    }
}

const RIDS: [&str; 3] = ["q", "h", "f"];

struct Net {
    /// One `Sfu` per shard, as the runtime's workers hold them.
    sfus: Vec<Sfu>,
    start: Instant,
    now: Instant,
    clients: Vec<Client>,
    events: Vec<SfuEvent>,
    /// The same events with the shard that told them.
    told: Vec<(usize, SfuEvent)>,
    /// How often the shards' timers run, in ms: above 1, a server short of
    /// CPU (packets are still handled as they come).
    timer_every: u128,
    /// The run's seed (`VESSEL_SIM_SEED` replays one): session ids and the
    /// network's losses come from it.
    seed: u64,
    /// Datagrams lost on the way, each way, in percent; drawn from `rng`.
    loss_percent: u32,
    rng: rand::rngs::StdRng,
    /// Casters joined from now on are deaf to keyframe requests and kept
    /// a group of pictures for (as the RTMP bridge is).
    replay_gop: bool,
}

/// The seed of a simulated run: `VESSEL_SIM_SEED` if set (to replay a
/// failure), otherwise a fixed one.
fn sim_seed() -> u64 {
    std::env::var("VESSEL_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED)
}

impl Net {
    fn new() -> Self {
        Self::sharded(1)
    }

    fn sharded(shards: usize) -> Self {
        str0m::crypto::from_feature_flags().install_process_default();
        let seed = sim_seed();
        let sfus = (0..shards)
            .map(|k| {
                let mut config = SfuConfig::new(vec![server(k)]);
                config.connect_timeout = Duration::from_secs(5);
                config.shard = k;
                config.shards = shards;
                config.ids = ids::Ids::seeded(seed.wrapping_add(k as u64));
                Sfu::new(config)
            })
            .collect();
        Self {
            sfus,
            start: Instant::now(),
            now: Instant::now(),
            clients: Vec::new(),
            events: Vec::new(),
            told: Vec::new(),
            timer_every: 1,
            seed,
            loss_percent: 0,
            rng: rand::SeedableRng::seed_from_u64(seed),
            replay_gop: false,
        }
    }

    /// Whether the network loses the next datagram.
    fn lost(&mut self) -> bool {
        self.loss_percent > 0 && rand::Rng::random_range(&mut self.rng, 0..100) < self.loss_percent
    }

    fn offer(&self, cast: bool, port: u16) -> (Rtc, Mid, String, SdpPendingOffer, SocketAddr) {
        let (rtc, _, video, offer, pending, addr) = self.offer_full(cast, false, false, port);
        (rtc, video, offer, pending, addr)
    }

    #[allow(clippy::type_complexity)]
    fn offer_full(
        &self,
        cast: bool,
        simulcast: bool,
        red: bool,
        port: u16,
    ) -> (Rtc, Mid, Mid, String, SdpPendingOffer, SocketAddr) {
        let addr: SocketAddr = format!("10.0.0.2:{port}").parse().unwrap();
        let mut config = RtcConfig::new().set_rtp_mode(true);
        config.codec_config().enable_opus(true, red);
        let mut rtc = config.build(self.now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        let dir = if cast {
            Direction::SendOnly
        } else {
            Direction::RecvOnly
        };
        let mut api = rtc.sdp_api();
        let audio = api.add_media(MediaKind::Audio, dir, None, None, None);
        // A viewer with simulcast is a relay: it receives every layer.
        let rids = || RIDS.iter().map(|r| SimulcastLayer::new(r)).collect();
        let layers = simulcast.then(|| match cast {
            true => Simulcast {
                send: rids(),
                recv: vec![],
            },
            false => Simulcast {
                send: vec![],
                recv: rids(),
            },
        });
        let video = api.add_media(MediaKind::Video, dir, None, None, layers);
        let (offer, pending) = api.apply().unwrap();
        (rtc, audio, video, offer.to_sdp_string(), pending, addr)
    }

    /// Joins a client and returns its index.
    fn join(&mut self, live: &str, role: Role) -> usize {
        self.join_with(live, role, false)
    }

    fn join_with(&mut self, live: &str, role: Role, simulcast: bool) -> usize {
        self.join_full(live, role, simulcast, false)
    }

    fn join_full(&mut self, live: &str, role: Role, simulcast: bool, red: bool) -> usize {
        self.join_on(0, live, role, simulcast, red)
    }

    fn join_on(
        &mut self,
        shard: usize,
        live: &str,
        role: Role,
        simulcast: bool,
        red: bool,
    ) -> usize {
        let port = 6000 + self.clients.len() as u16;
        let (mut rtc, audio, video, offer, pending, addr) =
            self.offer_full(role == Role::Cast, simulcast, red, port);
        let setup = self.sfus[shard].setup();
        let mut prepared = match (role, simulcast) {
            (Role::Play, true) => super::setup::prepare_relay(&setup, live, &offer, self.now),
            _ => super::setup::prepare(&setup, live, role, &offer, self.now),
        }
        .unwrap();
        if self.replay_gop {
            prepared = prepared.replaying_gop();
        }
        let joined = self.sfus[shard].admit_prepared(prepared, self.now);
        let answer = SdpAnswer::from_sdp_string(&joined.answer).unwrap();
        rtc.sdp_api().accept_answer(pending, answer).unwrap();
        self.clients.push(Client {
            rtc,
            addr,
            peer: joined.peer,
            shard,
            connected: false,
            audio,
            audio_got: Vec::new(),
            video,
            received: Vec::new(),
            layers: if simulcast && role == Role::Play {
                Vec::new() // a relay sends nothing
            } else if simulcast {
                RIDS.iter()
                    .map(|r| (Some(Rid::from(*r)), 100, true))
                    .collect()
            } else {
                vec![(None, 100, true)]
            },
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

    /// Advances simulated time by `d` in 1 ms steps, delivering every
    /// datagram instantly. Casters send a 2-packet VP8 frame every 33 ms.
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += Duration::from_millis(1);
            let now = self.now;
            let frame_due = (now - self.start).as_millis().is_multiple_of(33);
            for c in self.clients.iter_mut().filter(|c| !c.dead) {
                if c.connected && frame_due {
                    write_frame(c, now, self.start);
                }
                let _ = c.rtc.handle_input(Input::Timeout(now));
            }
            if (now - self.start)
                .as_millis()
                .is_multiple_of(self.timer_every)
            {
                for sfu in &mut self.sfus {
                    sfu.handle_timeout(now);
                }
            }
            self.pump();
        }
    }

    /// Delivers datagrams until the network is quiet. Each input is
    /// followed by a poll, as str0m requires; the SFU takes each client's
    /// datagrams as one batch (a caster's frame fans out together).
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.clients.len() {
                moved |= self.drain_client(i);
            }
            for k in 0..self.sfus.len() {
                // The end of a batch, as the runtime's receive loop has it.
                self.sfus[k].process(self.now);
                while let Some(t) = self.sfus[k].poll_transmit() {
                    moved = true;
                    let Some(i) = self
                        .clients
                        .iter()
                        .position(|c| c.addr == t.destination && !c.dead)
                    else {
                        continue;
                    };
                    if self.lost() {
                        continue;
                    }
                    let c = &mut self.clients[i];
                    if !c.takes(t.contents.len(), self.now) {
                        continue;
                    }
                    let input = Input::Receive(
                        self.now,
                        Receive {
                            proto: Protocol::Udp,
                            source: server(k),
                            destination: c.addr,
                            contents: (&t.contents[..]).try_into().unwrap(),
                        },
                    );
                    let _ = c.rtc.handle_input(input);
                    self.drain_client(i);
                }
                // Hand-offs between shards, as the runtime's queues carry them.
                let mut remote = Vec::new();
                while let Some(m) = self.sfus[k].poll_remote() {
                    remote.push(m);
                }
                for (to, msg) in remote {
                    moved = true;
                    self.sfus[to].handle_remote(msg, self.now);
                }
                while let Some(e) = self.sfus[k].poll_event() {
                    self.told.push((k, e.clone()));
                    self.events.push(e);
                }
            }
            if !moved {
                break;
            }
        }
    }

    /// Polls client `i`, sending its datagrams to its shard. True if it sent any.
    fn drain_client(&mut self, i: usize) -> bool {
        if self.clients[i].dead {
            return false;
        }
        let mut sent = false;
        loop {
            let c = &mut self.clients[i];
            match c.rtc.poll_output().unwrap() {
                Output::Timeout(_) => return sent,
                Output::Event(e) => on_event(c, e),
                Output::Transmit(t) => {
                    sent = true;
                    let (addr, shard) = (c.addr, c.shard);
                    if self.lost() {
                        continue;
                    }
                    self.sfus[shard].handle_receive_run(
                        self.now,
                        Protocol::Udp,
                        addr,
                        server(shard),
                        &t.contents,
                    );
                }
            }
        }
    }

    fn last_state(&self, live: &str) -> Option<LiveState> {
        self.events.iter().rev().find_map(|e| match e {
            SfuEvent::Live(s) if s.live == live => Some(s.clone()),
            _ => None,
        })
    }

    fn ended(&self, peer: PeerId) -> bool {
        self.events
            .iter()
            .any(|e| matches!(e, SfuEvent::SessionEnded { peer: p, .. } if *p == peer))
    }
}

/// One 2-packet VP8 frame on every layer; layer `i` is 3^i times larger, so
/// measured bitrates order them. Byte 2 of the payload names the layer.
fn write_frame(c: &mut Client, now: Instant, start: Instant) {
    // Negotiated by SDP, or (a client set up without SDP) any VP8 it knows.
    let remote = c.rtc.media(c.video).unwrap().remote_pts().to_vec();
    let pt = c
        .rtc
        .codec_config()
        .find(|p| (remote.is_empty() || remote.contains(&p.pt())) && p.spec().codec == Codec::Vp8)
        .unwrap()
        .pt();
    let (parts, size) = c.parts;
    let periodic = c.gop_every.is_some_and(|n| c.frames.is_multiple_of(n));
    c.frames += 1;
    for (i, (rid, seq, key)) in c.layers.iter_mut().enumerate() {
        let key = std::mem::take(key) || periodic;
        for part in 0..parts {
            let mut payload = vec![
                if part == 0 { 0x10 } else { 0x00 },
                if key { 0x00 } else { 0x01 },
                i as u8,
            ];
            let size = if size > 0 {
                size
            } else {
                20 * 3usize.pow(i as u32)
            };
            payload.resize(size, c.fill);
            let sent = (now - start).as_micros() as u64;
            payload[4..12].copy_from_slice(&sent.to_be_bytes());
            let mut api = c.rtc.direct_api();
            let tx = api.stream_tx_by_mid(c.video, *rid).unwrap();
            tx.write_rtp(
                RtpWrite::new(pt, (*seq).into(), c.ts, now, payload)
                    .marker(part == parts - 1)
                    .nackable(true),
            );
            *seq += 1;
        }
    }
    c.ts = c.ts.wrapping_add(3000);
}

fn on_event(c: &mut Client, e: Event) {
    match e {
        Event::Connected => c.connected = true,
        Event::KeyframeRequest(r) => {
            c.keyframe_requests += 1;
            let deaf = c.gop_every.is_some();
            for layer in c.layers.iter_mut().filter(|l| l.0 == r.rid && !deaf) {
                layer.2 = true;
            }
        }
        Event::RtpPacket(p)
            if c.rtc
                .direct_api()
                .stream_rx(&p.header.ssrc)
                .map(|s| s.mid())
                == Some(c.audio) =>
        {
            c.audio_got
                .push((*p.header.payload_type, p.payload.to_vec()))
        }
        Event::RtpPacket(p) if p.payload.len() >= 3 && p.payload[2] < 3 => c.received.push(Got {
            mid: c
                .rtc
                .direct_api()
                .stream_rx(&p.header.ssrc)
                .map(|s| s.mid()),
            rid: p.header.ext_vals.rid,
            fill: p.payload.get(3).copied().unwrap_or(0),
            seq: *p.seq_no,
            ts: p.header.timestamp,
            layer: p.payload[2],
            starts_keyframe: p.payload[0] & 0x10 != 0 && p.payload[1] & 1 == 0,
            sent: p
                .payload
                .get(4..12)
                .map(|b| Duration::from_micros(u64::from_be_bytes(b.try_into().unwrap())))
                .unwrap_or_default(),
            at: p.timestamp,
        }),
        _ => {}
    }
}

/// Sequence numbers contiguous, timestamps moving forward (by less than 2 s:
/// a splice advances them by the wall time that passed), and every change
/// of layer at a keyframe.
fn assert_one_stream(got: &[Got]) {
    for w in got.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1, "contiguous sequence numbers");
        let step = w[1].ts.wrapping_sub(w[0].ts);
        assert!(step < 2 * 90_000, "timestamps move forward: {w:?}");
        if w[1].layer != w[0].layer {
            assert!(w[1].starts_keyframe, "layer switch at a keyframe: {w:?}");
        }
    }
}

#[test]
fn a_live_goes_on_air_when_its_caster_connects() {
    let mut net = Net::new();
    let caster = net.join("show", Role::Cast);
    assert_eq!(
        net.sfus[0].live_state("show").map(|s| s.on_air),
        Some(false)
    );
    net.run(Duration::from_millis(500));
    assert!(net.clients[caster].connected);
    assert_eq!(
        net.last_state("show"),
        Some(LiveState {
            live: "show".into(),
            on_air: true,
            viewers: 0,
            ..Default::default()
        })
    );
}

#[test]
fn viewers_are_counted_once_connected_and_uncounted_when_they_leave() {
    let mut net = Net::new();
    net.join("show", Role::Cast);
    let a = net.join("show", Role::Play);
    let b = net.join("show", Role::Play);
    net.run(Duration::from_millis(500));
    assert_eq!(net.last_state("show").unwrap().viewers, 2);
    assert!(!net.clients[a].received.is_empty(), "viewer a receives");
    assert!(!net.clients[b].received.is_empty(), "viewer b receives");

    let peer = net.clients[a].peer;
    assert_eq!(
        net.sfus[0].leave("show", Role::Cast, peer, net.now),
        Err(NoSuchSession),
        "a viewer's session is not a caster's"
    );
    net.sfus[0]
        .leave("show", Role::Play, peer, net.now)
        .unwrap();
    net.pump();
    assert_eq!(net.last_state("show").unwrap().viewers, 1);
    assert!(net.ended(peer));
}

#[test]
fn a_new_caster_replaces_the_old_without_going_off_air() {
    let mut net = Net::new();
    let old = net.join("show", Role::Cast);
    let viewer = net.join("show", Role::Play);
    net.run(Duration::from_millis(500));
    let before = net.clients[viewer].received.len();
    assert!(before > 0);

    let new = net.join("show", Role::Cast);
    net.clients[new].layers[0] = (None, 50_000, false);
    net.clients[new].ts = 123_456;
    net.pump();
    assert!(
        !net.ended(net.clients[old].peer),
        "the old caster stays until the new one's media flows"
    );
    net.run(Duration::from_millis(300));
    assert!(net.ended(net.clients[old].peer), "then it is closed");
    assert!(
        net.events
            .iter()
            .all(|e| !matches!(e, SfuEvent::Live(s) if !s.on_air && s.viewers > 0)),
        "the live never went off air: {:?}",
        net.events
    );
    net.run(Duration::from_millis(500));
    let got = &net.clients[viewer].received;
    assert!(got.len() > before + 10, "the viewer keeps receiving");
    assert_one_stream(got);
}

#[test]
fn the_live_is_forgotten_when_everyone_leaves() {
    let mut net = Net::new();
    let c = net.join("show", Role::Cast);
    net.run(Duration::from_millis(300));
    let peer = net.clients[c].peer;
    net.sfus[0]
        .leave("show", Role::Cast, peer, net.now)
        .unwrap();
    net.pump();
    assert_eq!(net.last_state("show").map(|s| s.on_air), Some(false));
    assert_eq!(net.sfus[0].live_state("show"), None);
    assert_eq!(net.sfus[0].poll_timeout(), None, "no timers left behind");
}

#[test]
fn a_session_that_never_connects_is_dropped() {
    let mut net = Net::new();
    let (_rtc, _, offer, _, _) = net.offer(false, 7000);
    let joined = net.sfus[0]
        .join("show", Role::Play, &offer, net.now)
        .unwrap();
    // The client never sends a packet.
    for _ in 0..6 {
        net.now += Duration::from_secs(1);
        net.sfus[0].handle_timeout(net.now);
    }
    net.pump();
    assert!(net.ended(joined.peer));
    assert_eq!(net.sfus[0].live_state("show"), None);
}

#[test]
fn refused_offers_leave_no_trace() {
    let mut net = Net::new();
    let caster_offer = net.offer(true, 7001).2;
    assert!(matches!(
        net.sfus[0].join("show", Role::Cast, "nonsense", net.now),
        Err(JoinError::MalformedOffer(_))
    ));
    // A caster's (sendonly) offer is no viewer's offer.
    assert!(matches!(
        net.sfus[0].join("show", Role::Play, &caster_offer, net.now),
        Err(JoinError::NoMedia(_))
    ));
    assert_eq!(net.sfus[0].live_state("show"), None);
    assert_eq!(net.sfus[0].poll_timeout(), None);
}

#[test]
fn simulcast_viewers_get_the_top_layer_and_can_cap_it() {
    let mut net = Net::new();
    net.join_with("show", Role::Cast, true);
    let a = net.join("show", Role::Play);
    let b = net.join("show", Role::Play);
    net.run(Duration::from_millis(1500));
    let top = |c: &Client| c.received.last().map(|g| g.layer);
    assert_eq!(
        top(&net.clients[a]),
        Some(2),
        "unconstrained: the top layer"
    );
    assert_eq!(top(&net.clients[b]), Some(2));

    // Viewer a asks for the lowest layer: it moves at the next keyframe of
    // that layer; viewer b is not disturbed.
    let peer = net.clients[a].peer;
    net.sfus[0]
        .set_preference("show", peer, Preference::Low, net.now)
        .unwrap();
    net.run(Duration::from_millis(500));
    assert_eq!(top(&net.clients[a]), Some(0));
    assert_eq!(top(&net.clients[b]), Some(2));

    // Back to auto: up again once the up hold has passed.
    net.sfus[0]
        .set_preference("show", peer, Preference::Auto, net.now)
        .unwrap();
    net.run(Duration::from_millis(3000));
    assert_eq!(top(&net.clients[a]), Some(2));
    assert_one_stream(&net.clients[a].received);
    assert_one_stream(&net.clients[b].received);
    let b_got = &net.clients[b].received;
    let on_top = b_got.iter().position(|g| g.layer == 2).unwrap();
    assert!(
        b_got[on_top..].iter().all(|g| g.layer == 2),
        "once on the top layer, b never left it"
    );
}

#[test]
fn a_layer_the_caster_drops_moves_its_viewers_down() {
    let mut net = Net::new();
    let caster = net.join_with("show", Role::Cast, true);
    let viewer = net.join("show", Role::Play);
    net.run(Duration::from_millis(1500));
    assert_eq!(
        net.clients[viewer].received.last().map(|g| g.layer),
        Some(2)
    );
    // The browser stops sending the top layer (CPU or bandwidth pressure).
    net.clients[caster].layers.truncate(2);
    let before = net.clients[viewer].received.len();
    net.run(Duration::from_millis(2000));
    let got = &net.clients[viewer].received;
    assert_eq!(got.last().map(|g| g.layer), Some(1));
    let gap = got[before].ts.wrapping_sub(got[before - 1].ts);
    assert!(gap < 90_000, "moved within a second: {gap} ticks");
    assert_one_stream(&net.clients[viewer].received);
}

#[test]
fn setting_the_layer_of_an_unknown_session_fails() {
    let mut net = Net::new();
    let caster = net.join("show", Role::Cast);
    let peer = net.clients[caster].peer;
    assert_eq!(
        net.sfus[0].set_preference("show", peer, Preference::Low, net.now),
        Err(NoSuchSession),
        "a caster has no layer preference"
    );
    assert_eq!(
        net.sfus[0].set_preference("show", PeerId(7), Preference::Low, net.now),
        Err(NoSuchSession)
    );
}

#[test]
fn red_audio_reaches_viewers_with_and_without_red() {
    use str0m::rtp::{RedEncoder, RedundantBlock};

    let mut net = Net::new();
    let caster = net.join_full("show", Role::Cast, false, true);
    let with_red = net.join_full("show", Role::Play, false, true);
    let without = net.join_full("show", Role::Play, false, false);
    net.run(Duration::from_millis(300));

    // A client's Opus parameters: its payload type and RED payload type.
    let opus_of = |c: &Client| {
        *c.rtc
            .codec_config()
            .params()
            .iter()
            .find(|p| p.spec().codec == Codec::Opus)
            .unwrap()
    };
    let opus = opus_of(&net.clients[caster]);
    let c = &mut net.clients[caster];
    let red_pt = opus.red().expect("RED negotiated with the caster");
    for i in 0..20u8 {
        let redundant = RedundantBlock {
            pt: *opus.pt(),
            timestamp_offset: 960,
            payload: vec![i.wrapping_sub(1); 3],
        };
        let payload = RedEncoder::encode(*opus.pt(), &[i; 5], &[redundant]);
        let now = net.now;
        let mut api = c.rtc.direct_api();
        let tx = api.stream_tx_by_mid(c.audio, None).unwrap();
        tx.write_rtp(RtpWrite::new(
            red_pt,
            (1000 + i as u64).into(),
            i as u32 * 960,
            now,
            payload,
        ));
    }
    net.run(Duration::from_millis(300));

    let viewer_pts = |i: usize| {
        let p = opus_of(&net.clients[i]);
        (*p.pt(), p.red().map(|r| *r))
    };
    let (_, Some(red)) = viewer_pts(with_red) else {
        panic!("the RED viewer negotiated RED");
    };
    let got = &net.clients[with_red].audio_got;
    assert_eq!(got.len(), 20);
    assert!(
        got.iter().all(|(pt, p)| *pt == red && p.len() > 5),
        "RED as sent"
    );

    let (opus_pt, no_red) = viewer_pts(without);
    assert_eq!(no_red, None);
    let got = &net.clients[without].audio_got;
    assert_eq!(got.len(), 20);
    for (i, (pt, p)) in got.iter().enumerate() {
        assert_eq!(*pt, opus_pt, "plain Opus payload type");
        assert_eq!(p, &vec![i as u8; 5], "the primary block alone");
    }
}

#[test]
fn viewers_on_other_shards_get_the_caster_through_one_hand_off_each() {
    let mut net = Net::sharded(3);
    let caster = net.join_on(0, "show", Role::Cast, true, false);
    let near = net.join_on(0, "show", Role::Play, false, false);
    let far = net.join_on(1, "show", Role::Play, false, false);
    let farther = net.join_on(2, "show", Role::Play, false, false);
    net.run(Duration::from_millis(1500));
    for v in [near, far, farther] {
        let got = &net.clients[v].received;
        assert!(got.len() > 40, "viewer {v} receives: {}", got.len());
        assert!(got[0].starts_keyframe, "viewer {v} starts at a keyframe");
        assert_eq!(
            got.last().unwrap().layer,
            2,
            "viewer {v} gets the top layer"
        );
        assert_one_stream(got);
    }
    // Each shard counts its own viewers; the board adds them up.
    let viewers: usize = (0..3)
        .map(|k| net.sfus[k].live_state("show").map_or(0, |s| s.viewers))
        .sum();
    assert_eq!(viewers, 3);
    assert_eq!(net.sfus[0].live_state("show").map(|s| s.on_air), Some(true));
    assert_eq!(
        net.sfus[1].live_state("show").map(|s| s.on_air),
        Some(false)
    );

    // A viewer far away caps its layer: its shard measured the layers from
    // the hand-offs and asks the caster's shard for the keyframe it needs.
    let peer = net.clients[far].peer;
    net.sfus[1]
        .set_preference("show", peer, layer::Preference::Low, net.now)
        .unwrap();
    let before = net.clients[far].received.len();
    let asked = net.clients[caster].keyframe_requests;
    net.run(Duration::from_millis(1000));
    let after = &net.clients[far].received[before..];
    assert!(after.iter().any(|g| g.layer == 0), "moved to the low layer");
    assert!(
        net.clients[caster].keyframe_requests > asked,
        "the keyframe request crossed back to the caster's shard"
    );
    assert_eq!(after.last().unwrap().layer, 0);

    // The caster leaves: the other shards forget it.
    let caster_peer = net.clients[caster].peer;
    net.sfus[0]
        .leave("show", Role::Cast, caster_peer, net.now)
        .unwrap();
    net.pump();
    for k in 1..3 {
        assert!(
            net.sfus[k]
                .lives
                .get("show")
                .is_some_and(|l| l.remote.is_none())
        );
    }
    // The last viewer of a shard leaving withdraws that shard's interest.
    let far_peer = net.clients[far].peer;
    net.sfus[1]
        .leave("show", Role::Play, far_peer, net.now)
        .unwrap();
    net.pump();
    assert_eq!(net.sfus[0].interest.get("show").copied(), Some(1 << 2));
}

#[test]
fn a_viewer_joining_mid_stream_counts_a_keyframe_request() {
    let mut net = Net::new();
    net.join("show", Role::Cast);
    net.run(Duration::from_millis(500));
    assert_eq!(net.sfus[0].stats().keyframe_requests_sent, 0);
    net.join("show", Role::Play);
    net.run(Duration::from_millis(500));
    let stats = net.sfus[0].stats();
    assert!(stats.keyframe_requests_sent >= 1, "{stats:?}");
    // str0m's periodic stats come in; on a clean network nothing is lost.
    net.run(STATS_INTERVAL * 2);
    let later = net.sfus[0].stats();
    assert_eq!(
        (later.lost_in, later.lost_out, later.nacks_received),
        (0, 0, 0)
    );
}
