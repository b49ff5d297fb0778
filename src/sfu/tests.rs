//! The whole SFU on simulated time: str0m clients wired to an [`Sfu`]
//! through an in-memory network. No sockets, no sleeping, deterministic.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

use super::*;

const SERVER: &str = "10.0.0.1:5000";

struct Client {
    rtc: Rtc,
    addr: SocketAddr,
    peer: PeerId,
    connected: bool,
    video: Mid,
    received: Vec<(u64, u32)>,
    seq: u64,
    ts: u32,
    keyframe_requests: usize,
}

struct Net {
    sfu: Sfu,
    start: Instant,
    now: Instant,
    clients: Vec<Client>,
    events: Vec<SfuEvent>,
}

impl Net {
    fn new() -> Self {
        str0m::crypto::from_feature_flags().install_process_default();
        let mut config = SfuConfig::new(vec![SERVER.parse().unwrap()]);
        config.connect_timeout = Duration::from_secs(5);
        Self {
            sfu: Sfu::new(config),
            start: Instant::now(),
            now: Instant::now(),
            clients: Vec::new(),
            events: Vec::new(),
        }
    }

    fn offer(&self, cast: bool, port: u16) -> (Rtc, Mid, String, SdpPendingOffer, SocketAddr) {
        let addr: SocketAddr = format!("10.0.0.2:{port}").parse().unwrap();
        let mut rtc = RtcConfig::new().set_rtp_mode(true).build(self.now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        let dir = if cast {
            Direction::SendOnly
        } else {
            Direction::RecvOnly
        };
        let mut api = rtc.sdp_api();
        api.add_media(MediaKind::Audio, dir, None, None, None);
        let video = api.add_media(MediaKind::Video, dir, None, None, None);
        let (offer, pending) = api.apply().unwrap();
        (rtc, video, offer.to_sdp_string(), pending, addr)
    }

    /// Joins a client and returns its index.
    fn join(&mut self, live: &str, role: Role) -> usize {
        let port = 6000 + self.clients.len() as u16;
        let (mut rtc, video, offer, pending, addr) = self.offer(role == Role::Cast, port);
        let joined = self.sfu.join(live, role, &offer, self.now).unwrap();
        let answer = SdpAnswer::from_sdp_string(&joined.answer).unwrap();
        rtc.sdp_api().accept_answer(pending, answer).unwrap();
        self.clients.push(Client {
            rtc,
            addr,
            peer: joined.peer,
            connected: false,
            video,
            received: Vec::new(),
            seq: 100,
            ts: 0,
            keyframe_requests: 0,
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
            for c in &mut self.clients {
                if c.connected && frame_due {
                    write_frame(c, now);
                }
                let _ = c.rtc.handle_input(Input::Timeout(now));
            }
            self.sfu.handle_timeout(now);
            self.pump();
        }
    }

    /// Delivers datagrams until the network is quiet. Each input is
    /// followed by a poll, as str0m requires.
    fn pump(&mut self) {
        let server: SocketAddr = SERVER.parse().unwrap();
        loop {
            let mut moved = false;
            for i in 0..self.clients.len() {
                moved |= self.drain_client(i, server);
            }
            while let Some(t) = self.sfu.poll_transmit() {
                moved = true;
                let Some(i) = self.clients.iter().position(|c| c.addr == t.destination) else {
                    continue;
                };
                let c = &mut self.clients[i];
                let input = Input::Receive(
                    self.now,
                    Receive {
                        proto: Protocol::Udp,
                        source: server,
                        destination: c.addr,
                        contents: (&t.contents[..]).try_into().unwrap(),
                    },
                );
                let _ = c.rtc.handle_input(input);
                self.drain_client(i, server);
            }
            while let Some(e) = self.sfu.poll_event() {
                self.events.push(e);
            }
            if !moved {
                break;
            }
        }
    }

    /// Polls client `i`, sending its datagrams to the SFU. True if it sent any.
    fn drain_client(&mut self, i: usize, server: SocketAddr) -> bool {
        let mut sent = false;
        loop {
            let c = &mut self.clients[i];
            match c.rtc.poll_output().unwrap() {
                Output::Timeout(_) => return sent,
                Output::Event(e) => on_event(c, e),
                Output::Transmit(t) => {
                    sent = true;
                    let addr = c.addr;
                    self.sfu
                        .handle_receive(self.now, Protocol::Udp, addr, server, &t.contents);
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

fn write_frame(c: &mut Client, now: Instant) {
    let remote = c.rtc.media(c.video).unwrap().remote_pts().to_vec();
    let pt = c
        .rtc
        .codec_config()
        .find(|p| remote.contains(&p.pt()) && p.spec().codec == Codec::Vp8)
        .unwrap()
        .pt();
    let key = c.seq == 100 || std::mem::take(&mut c.keyframe_requests) > 0;
    for part in 0..2u8 {
        let payload = vec![
            if part == 0 { 0x10 } else { 0x00 },
            if key { 0x00 } else { 0x01 },
            0x42,
        ];
        let mut api = c.rtc.direct_api();
        let tx = api.stream_tx_by_mid(c.video, None).unwrap();
        tx.write_rtp(RtpWrite::new(pt, c.seq.into(), c.ts, now, payload).marker(part == 1));
        c.seq += 1;
    }
    c.ts = c.ts.wrapping_add(3000);
}

fn on_event(c: &mut Client, e: Event) {
    match e {
        Event::Connected => c.connected = true,
        Event::KeyframeRequest(_) => c.keyframe_requests += 1,
        Event::RtpPacket(p) if p.payload.len() == 3 => {
            c.received.push((*p.seq_no, p.header.timestamp))
        }
        _ => {}
    }
}

#[test]
fn a_live_goes_on_air_when_its_caster_connects() {
    let mut net = Net::new();
    let caster = net.join("show", Role::Cast);
    assert_eq!(net.sfu.live_state("show").map(|s| s.on_air), Some(false));
    net.run(Duration::from_millis(500));
    assert!(net.clients[caster].connected);
    assert_eq!(
        net.last_state("show"),
        Some(LiveState {
            live: "show".into(),
            on_air: true,
            viewers: 0
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
        net.sfu.leave("show", Role::Cast, peer, net.now),
        Err(NoSuchSession),
        "a viewer's session is not a caster's"
    );
    net.sfu.leave("show", Role::Play, peer, net.now).unwrap();
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
    net.clients[new].seq = 50_000;
    net.clients[new].ts = 123_456;
    net.pump();
    assert!(net.ended(net.clients[old].peer), "the old caster is closed");
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
    for w in got.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1, "contiguous sequence numbers");
        assert!(
            w[1].1.wrapping_sub(w[0].1) < 90_000,
            "timestamps move forward"
        );
    }
}

#[test]
fn the_live_is_forgotten_when_everyone_leaves() {
    let mut net = Net::new();
    let c = net.join("show", Role::Cast);
    net.run(Duration::from_millis(300));
    let peer = net.clients[c].peer;
    net.sfu.leave("show", Role::Cast, peer, net.now).unwrap();
    net.pump();
    assert_eq!(net.last_state("show").map(|s| s.on_air), Some(false));
    assert_eq!(net.sfu.live_state("show"), None);
    assert_eq!(net.sfu.poll_timeout(), None, "no timers left behind");
}

#[test]
fn a_session_that_never_connects_is_dropped() {
    let mut net = Net::new();
    let (_rtc, _, offer, _, _) = net.offer(false, 7000);
    let joined = net.sfu.join("show", Role::Play, &offer, net.now).unwrap();
    // The client never sends a packet.
    for _ in 0..6 {
        net.now += Duration::from_secs(1);
        net.sfu.handle_timeout(net.now);
    }
    net.pump();
    assert!(net.ended(joined.peer));
    assert_eq!(net.sfu.live_state("show"), None);
}

#[test]
fn refused_offers_leave_no_trace() {
    let mut net = Net::new();
    let caster_offer = net.offer(true, 7001).2;
    assert!(matches!(
        net.sfu.join("show", Role::Cast, "nonsense", net.now),
        Err(JoinError::MalformedOffer(_))
    ));
    // A caster's (sendonly) offer is no viewer's offer.
    assert!(matches!(
        net.sfu.join("show", Role::Play, &caster_offer, net.now),
        Err(JoinError::NoMedia(_))
    ));
    assert_eq!(net.sfu.live_state("show"), None);
    assert_eq!(net.sfu.poll_timeout(), None);
}
