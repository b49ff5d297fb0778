//! The TURN state machine on simulated time, driven by requests built with
//! `stun-types` as a client would send them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use stun_types::attribute::{
    AttributeStaticType, AttributeWrite, ErrorCode, Nonce, Realm, Username, XorMappedAddress,
};
use stun_types::message::{
    BINDING, IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass, MessageWrite,
    MessageWriteExt, MessageWriteVec, Method,
};
use turn_types::attribute::{
    ChannelNumber, Data, Lifetime, RequestedTransport, XorPeerAddress, XorRelayedAddress,
};
use turn_types::channel::ChannelData;
use turn_types::message::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, DATA, REFRESH, SEND};

use super::credentials::rest_password;
use super::*;

const SECRET: &str = "test-secret";
const UNIX_START: u64 = 1_800_000_000;
const RELAY: &str = "127.0.0.1:40000";
const SFU: &str = "127.0.0.1:8189";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

struct Harness {
    server: TurnServer,
    now: Instant,
    client: ClientKey,
    username: String,
    password: String,
    nonce: Option<String>,
    next_relay_port: u16,
    /// Every relay the server released, however its outputs were drained.
    released: Vec<SocketAddr>,
}

/// A decoded answer to a request.
struct Reply {
    bytes: Vec<u8>,
}

impl Reply {
    fn msg(&self) -> Message<'_> {
        Message::from_bytes(&self.bytes).unwrap()
    }
    fn class(&self) -> MessageClass {
        self.msg().class()
    }
    fn error_code(&self) -> Option<u16> {
        self.msg().attribute::<ErrorCode>().ok().map(|e| e.code())
    }
}

impl Harness {
    fn new(quota: Quota) -> Self {
        let now = Instant::now();
        let config = TurnConfig {
            realm: "vessel".into(),
            credentials: Credentials::new(SECRET.into(), HashMap::new()),
            policy: PeerPolicy::new(vec![addr(SFU)], vec![]),
            quota,
            relay_ipv6: false,
            ledger: Ledger::default(),
            nonces: Nonces::default(),
        };
        let username = format!("{}:viewer", UNIX_START + 3600);
        Self {
            server: TurnServer::new(config, now, UNIX_START),
            now,
            client: ClientKey {
                transport: Transport::Udp,
                listen: addr("127.0.0.1:3478"),
                remote: addr("127.0.0.1:50000"),
            },
            password: rest_password(SECRET, &username),
            username,
            nonce: None,
            next_relay_port: 40000,
            released: Vec::new(),
        }
    }

    fn default() -> Self {
        Self::new(Quota::default())
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.server.handle_timeout(self.now);
    }

    /// Drains outputs, opening relays as the runtime would.
    fn outputs(&mut self) -> Vec<Output> {
        let mut all = Vec::new();
        while let Some(out) = self.server.poll_output() {
            if let Output::BindRelay { token } = out {
                let relay = SocketAddr::new([127, 0, 0, 1].into(), self.next_relay_port);
                self.next_relay_port += 1;
                self.server.relay_bound(token, Ok(relay), self.now);
                continue;
            }
            if let Output::ReleaseRelay { relay } = out {
                self.released.push(relay);
            }
            all.push(out);
        }
        all
    }

    fn client_replies(&mut self) -> Vec<Vec<u8>> {
        self.outputs()
            .into_iter()
            .filter_map(|o| match o {
                Output::ToClient { client, data } => {
                    assert_eq!(client, self.client);
                    Some(data)
                }
                _ => None,
            })
            .collect()
    }

    fn build(&self, method: Method, attrs: &[&dyn AttributeWrite], sign: bool) -> Vec<u8> {
        let mut b = Message::builder_request(method, MessageWriteVec::new());
        for a in attrs {
            b.add_attribute(*a).unwrap();
        }
        if sign {
            b.add_attribute(&Username::new(&self.username).unwrap())
                .unwrap();
            b.add_attribute(&Realm::new("vessel").unwrap()).unwrap();
            let nonce = self.nonce.clone().unwrap_or_else(|| "none".into());
            b.add_attribute(&Nonce::new(&nonce).unwrap()).unwrap();
            let key = LongTermKeyCredentials::new(
                self.username.clone(),
                self.password.clone(),
                "vessel".into(),
            );
            b.add_message_integrity(&key.into(), IntegrityAlgorithm::Sha1)
                .unwrap();
        }
        b.finish()
    }

    /// Sends a request; on 401/438 takes the nonce and retries once, as
    /// clients do.
    fn request(&mut self, method: Method, attrs: &[&dyn AttributeWrite]) -> Reply {
        let reply = self.request_once(method, attrs, self.nonce.is_some());
        match reply.error_code() {
            Some(401) | Some(438) if reply.msg().has_attribute(Nonce::TYPE) => {
                self.nonce = Some(reply.msg().attribute::<Nonce>().unwrap().nonce().to_owned());
                self.request_once(method, attrs, true)
            }
            _ => reply,
        }
    }

    fn request_once(&mut self, method: Method, attrs: &[&dyn AttributeWrite], sign: bool) -> Reply {
        let bytes = self.build(method, attrs, sign);
        self.server.handle_client(self.client, &bytes, self.now);
        let mut replies = self.client_replies();
        assert_eq!(replies.len(), 1, "one answer per request");
        Reply {
            bytes: replies.remove(0),
        }
    }

    fn allocate(&mut self) -> SocketAddr {
        let reply = self.request(ALLOCATE, &[&RequestedTransport::new(17)]);
        assert_eq!(
            reply.class(),
            MessageClass::Success,
            "{:?}",
            reply.error_code()
        );
        let msg = reply.msg();
        let key = LongTermKeyCredentials::new(
            self.username.clone(),
            self.password.clone(),
            "vessel".into(),
        );
        msg.validate_integrity(&key.into()).expect("signed answer");
        assert_eq!(msg.attribute::<Lifetime>().unwrap().seconds(), 600);
        assert_eq!(
            msg.attribute::<XorMappedAddress>()
                .unwrap()
                .addr(msg.transaction_id()),
            self.client.remote
        );
        msg.attribute::<XorRelayedAddress>()
            .unwrap()
            .addr(msg.transaction_id())
    }

    fn send_indication(&mut self, peer: SocketAddr, payload: &[u8]) -> Vec<Output> {
        let mut b = Message::builder_indication(SEND, MessageWriteVec::new());
        let tid = b.transaction_id();
        b.add_attribute(&XorPeerAddress::new(peer, tid)).unwrap();
        b.add_attribute(&Data::new(payload)).unwrap();
        let bytes = b.finish();
        self.server.handle_client(self.client, &bytes, self.now);
        self.outputs()
    }
}

/// XOR-PEER-ADDRESS depends on the transaction id, so requests carrying it
/// are built by hand.
fn with_peer(h: &mut Harness, method: Method, peer: SocketAddr, extra: Option<u16>) -> Reply {
    let mut b = Message::builder_request(method, MessageWriteVec::new());
    let tid = b.transaction_id();
    if let Some(channel) = extra {
        b.add_attribute(&ChannelNumber::new(channel)).unwrap();
    }
    b.add_attribute(&XorPeerAddress::new(peer, tid)).unwrap();
    b.add_attribute(&Username::new(&h.username).unwrap())
        .unwrap();
    b.add_attribute(&Realm::new("vessel").unwrap()).unwrap();
    b.add_attribute(&Nonce::new(h.nonce.as_deref().unwrap()).unwrap())
        .unwrap();
    let key = LongTermKeyCredentials::new(h.username.clone(), h.password.clone(), "vessel".into());
    b.add_message_integrity(&key.into(), IntegrityAlgorithm::Sha1)
        .unwrap();
    let bytes = b.finish();
    h.server.handle_client(h.client, &bytes, h.now);
    let mut replies = h.client_replies();
    assert_eq!(replies.len(), 1);
    Reply {
        bytes: replies.remove(0),
    }
}

#[test]
fn binding_answers_with_the_mapped_address() {
    let mut h = Harness::default();
    let reply = h.request_once(BINDING, &[], false);
    let msg = reply.msg();
    assert_eq!(msg.class(), MessageClass::Success);
    let mapped = msg.attribute::<XorMappedAddress>().unwrap();
    assert_eq!(mapped.addr(msg.transaction_id()), h.client.remote);
}

#[test]
fn allocate_challenges_then_allocates() {
    let mut h = Harness::default();
    let challenge = h.request_once(ALLOCATE, &[&RequestedTransport::new(17)], false);
    assert_eq!(challenge.error_code(), Some(401));
    assert_eq!(
        challenge.msg().attribute::<Realm>().unwrap().realm(),
        "vessel"
    );
    assert!(challenge.msg().has_attribute(Nonce::TYPE));
    let relay = h.allocate();
    assert_eq!(relay, addr(RELAY));
    assert_eq!(h.server.stats().allocations, 1);
}

#[test]
fn a_second_allocate_on_the_same_five_tuple_is_a_mismatch() {
    let mut h = Harness::default();
    h.allocate();
    let again = h.request(ALLOCATE, &[&RequestedTransport::new(17)]);
    assert_eq!(again.error_code(), Some(437));
}

#[test]
fn allocate_needs_udp_transport() {
    let mut h = Harness::default();
    let tcp = h.request(ALLOCATE, &[&RequestedTransport::new(6)]);
    assert_eq!(tcp.error_code(), Some(442));
    let none = h.request(ALLOCATE, &[]);
    assert_eq!(none.error_code(), Some(400));
}

#[test]
fn wrong_password_and_expired_usernames_are_refused() {
    let mut h = Harness::default();
    h.password = "guess".into();
    let reply = h.request(ALLOCATE, &[&RequestedTransport::new(17)]);
    assert_eq!(reply.error_code(), Some(401));

    let mut h = Harness::default();
    h.username = format!("{}:old", UNIX_START - 1);
    h.password = rest_password(SECRET, &h.username);
    let reply = h.request(ALLOCATE, &[&RequestedTransport::new(17)]);
    assert_eq!(reply.error_code(), Some(401));
    assert_eq!(
        reply.msg().attribute::<ErrorCode>().unwrap().reason(),
        "credentials expired"
    );
}

#[test]
fn an_allocation_outlives_its_rest_username() {
    let mut h = Harness::default();
    h.allocate();
    // Past the username's expiry (an hour), refreshes keep working.
    for _ in 0..3 {
        h.advance(Duration::from_secs(500));
        let reply = h.request(REFRESH, &[&Lifetime::new(600)]);
        assert_eq!(
            reply.class(),
            MessageClass::Success,
            "{:?}",
            reply.error_code()
        );
    }
    assert_eq!(h.server.stats().allocations, 1);
}

#[test]
fn nonces_go_stale_after_an_hour() {
    let mut h = Harness::default();
    h.allocate();
    let stale = h.nonce.clone();
    for _ in 0..7 {
        h.advance(Duration::from_secs(540));
        h.nonce = stale.clone();
        // A refresh with the old nonce gets 438 with a new nonce, then works.
        let first = h.request_once(REFRESH, &[], true);
        if first.error_code() == Some(438) {
            assert!(first.msg().has_attribute(Nonce::TYPE));
            return;
        }
    }
    panic!("the nonce never went stale");
}

#[test]
fn permissions_only_for_vessels_own_media_address() {
    let mut h = Harness::default();
    h.allocate();
    let forbidden = with_peer(&mut h, CREATE_PERMISSION, addr("192.0.2.9:5000"), None);
    assert_eq!(forbidden.error_code(), Some(403));
    let lan = with_peer(&mut h, CREATE_PERMISSION, addr("10.0.0.9:5000"), None);
    assert_eq!(lan.error_code(), Some(403));
    let ok = with_peer(&mut h, CREATE_PERMISSION, addr(SFU), None);
    assert_eq!(ok.class(), MessageClass::Success);
    let channel = with_peer(&mut h, CHANNEL_BIND, addr("127.0.0.1:22"), Some(0x4000));
    assert_eq!(channel.error_code(), Some(403), "same IP, other port");
}

#[test]
fn a_panic_handling_one_client_ends_its_allocation_alone() {
    let mut h = Harness::default();
    let first = h.allocate();
    h.client.remote = addr("127.0.0.1:50001");
    let second = h.allocate();
    h.server
        .handle_client(h.client, b"panic, as a bug would", h.now);
    assert_eq!(h.server.stats().panics, 1);
    assert_eq!(
        h.server.stats().allocations,
        1,
        "the failing client's allocation ended"
    );
    assert!(matches!(&h.outputs()[..], [Output::ReleaseRelay { relay }] if *relay == second));
    // The other client's allocation still works.
    h.client.remote = addr("127.0.0.1:50000");
    let ok = with_peer(&mut h, CREATE_PERMISSION, addr(SFU), None);
    assert_eq!(ok.class(), MessageClass::Success);
    let _ = first;
}

#[test]
fn two_allocations_of_this_server_may_reach_each_other() {
    // Two browsers both forced to relay (a mesh room): each one's peer is
    // the other's relay address, on a loopback IP no range opens.
    let mut h = Harness::default();
    let first = h.allocate();
    h.client.remote = addr("127.0.0.1:50001");
    let second = h.allocate();
    let ok = with_peer(&mut h, CREATE_PERMISSION, first, None);
    assert_eq!(ok.class(), MessageClass::Success);
    let out = h.send_indication(first, b"to the other relay");
    assert!(
        matches!(&out[..], [Output::ToPeer { relay, peer, .. }] if *relay == second && *peer == first),
        "{out:?}"
    );
    h.server.handle_peer(second, first, b"back", h.now);
    assert_eq!(
        h.client_replies().len(),
        1,
        "the other relay's data comes in"
    );
    // Its port on the same IP once released is a stranger again.
    h.client.remote = addr("127.0.0.1:50000");
    let refresh = h.request(REFRESH, &[&Lifetime::new(0)]);
    assert_eq!(refresh.class(), MessageClass::Success);
    h.client.remote = addr("127.0.0.1:50001");
    h.server.handle_peer(second, first, b"late", h.now);
    assert!(h.outputs().is_empty(), "a released relay is no peer");
}

#[test]
fn send_and_data_indications_relay_both_ways() {
    let mut h = Harness::default();
    let relay = h.allocate();
    let sfu = addr(SFU);
    // No permission yet: dropped.
    assert!(h.send_indication(sfu, b"early").is_empty());
    with_peer(&mut h, CREATE_PERMISSION, sfu, None);
    let out = h.send_indication(sfu, b"hello");
    assert!(
        matches!(&out[..], [Output::ToPeer { relay: r, peer, data }] if *r == relay && *peer == sfu && data == b"hello")
    );
    h.server.handle_peer(relay, sfu, b"back", h.now);
    let to_client = h.client_replies();
    let msg = Message::from_bytes(&to_client[0]).unwrap();
    assert_eq!(msg.method(), DATA);
    assert_eq!(msg.attribute::<Data>().unwrap().data(), b"back");
    // A stranger, or the SFU's IP from another port, is not relayed.
    h.server
        .handle_peer(relay, addr("127.0.0.1:9999"), b"x", h.now);
    h.server
        .handle_peer(relay, addr("192.0.2.1:8189"), b"x", h.now);
    assert!(h.outputs().is_empty());
    // Permissions last five minutes.
    h.advance(Duration::from_secs(301));
    assert!(h.send_indication(sfu, b"late").is_empty());
}

#[test]
fn channels_carry_data_padded_on_streams() {
    for transport in [Transport::Udp, Transport::Tcp] {
        let mut h = Harness::default();
        h.client.transport = transport;
        let relay = h.allocate();
        let sfu = addr(SFU);
        let bound = with_peer(&mut h, CHANNEL_BIND, sfu, Some(0x4001));
        assert_eq!(bound.class(), MessageClass::Success);
        let mut frame = vec![0; 9];
        ChannelData::new(0x4001, b"hello").write_into_unchecked(&mut frame);
        h.server.handle_client(h.client, &frame, h.now);
        assert!(matches!(&h.outputs()[..], [Output::ToPeer { data, .. }] if data == b"hello"));
        h.server.handle_peer(relay, sfu, b"back!", h.now);
        let data = h.client_replies().remove(0);
        let expected_len = if transport.is_stream() { 12 } else { 9 };
        assert_eq!(data.len(), expected_len, "{transport:?}");
        let channel = ChannelData::parse(&data).unwrap();
        assert_eq!((channel.id(), channel.data()), (0x4001, &b"back!"[..]));
        // Unbound channel numbers are dropped.
        ChannelData::new(0x4002, b"hello").write_into_unchecked(&mut frame);
        h.server.handle_client(h.client, &frame, h.now);
        assert!(h.outputs().is_empty());
    }
}

#[test]
fn refresh_to_zero_and_expiry_release_the_relay() {
    let mut h = Harness::default();
    let relay = h.allocate();
    let reply = h.request(REFRESH, &[&Lifetime::new(0)]);
    assert_eq!(reply.class(), MessageClass::Success);
    assert_eq!(h.released, [relay]);
    assert_eq!(h.server.stats().allocations, 0);

    h.client.remote = addr("127.0.0.1:50001");
    let relay = h.allocate();
    h.now += Duration::from_secs(599);
    h.server.handle_timeout(h.now);
    assert!(h.outputs().is_empty());
    h.now += Duration::from_secs(1);
    h.server.handle_timeout(h.now);
    assert!(matches!(&h.outputs()[..], [Output::ReleaseRelay { relay: r }] if *r == relay));
}

#[test]
fn quotas_per_user_and_in_total() {
    let mut h = Harness::new(Quota {
        per_user: 2,
        total: 3,
        ..Quota::default()
    });
    for port in 50000..50002 {
        h.client.remote = SocketAddr::new([127, 0, 0, 1].into(), port);
        h.allocate();
    }
    h.client.remote = addr("127.0.0.1:50002");
    let over = h.request(ALLOCATE, &[&RequestedTransport::new(17)]);
    assert_eq!(over.error_code(), Some(486));
    h.username = format!("{}:other", UNIX_START + 3600);
    h.password = rest_password(SECRET, &h.username);
    h.allocate();
    h.client.remote = addr("127.0.0.1:50003");
    let full = h.request(ALLOCATE, &[&RequestedTransport::new(17)]);
    assert_eq!(full.error_code(), Some(508));
}

#[test]
fn another_username_cannot_use_an_allocation() {
    let mut h = Harness::default();
    h.allocate();
    h.username = format!("{}:intruder", UNIX_START + 3600);
    h.password = rest_password(SECRET, &h.username);
    let reply = h.request(REFRESH, &[]);
    assert_eq!(reply.error_code(), Some(441));
}

#[test]
fn bandwidth_quota_drops_the_excess() {
    let mut h = Harness::new(Quota {
        max_bitrate: 80_000, // 10 kB/s
        ..Quota::default()
    });
    h.allocate();
    let sfu = addr(SFU);
    with_peer(&mut h, CREATE_PERMISSION, sfu, None);
    let payload = [0u8; 1000];
    let sent = (0..20)
        .filter(|_| !h.send_indication(sfu, &payload).is_empty())
        .count();
    assert_eq!(sent, 10);
    assert_eq!(h.server.stats().over_quota, 10);
    h.now += Duration::from_secs(1);
    assert_eq!(h.send_indication(sfu, &payload).len(), 1);
}

#[test]
fn a_failed_relay_bind_answers_508_and_frees_the_quota() {
    let mut h = Harness::new(Quota {
        per_user: 1,
        ..Quota::default()
    });
    let challenge = h.request_once(ALLOCATE, &[&RequestedTransport::new(17)], false);
    h.nonce = Some(
        challenge
            .msg()
            .attribute::<Nonce>()
            .unwrap()
            .nonce()
            .to_owned(),
    );
    let bytes = h.build(ALLOCATE, &[&RequestedTransport::new(17)], true);
    h.server.handle_client(h.client, &bytes, h.now);
    let Some(Output::BindRelay { token }) = h.server.poll_output() else {
        panic!("expected a relay request");
    };
    h.server
        .relay_bound(token, Err("no ports left".into()), h.now);
    let reply = Reply {
        bytes: h.client_replies().remove(0),
    };
    assert_eq!(reply.error_code(), Some(508));
    h.allocate();
}

#[test]
fn a_closed_stream_releases_its_allocation() {
    let mut h = Harness::default();
    h.client.transport = Transport::Tcp;
    let relay = h.allocate();
    h.server.client_closed(h.client);
    assert!(matches!(&h.outputs()[..], [Output::ReleaseRelay { relay: r }] if *r == relay));
}

#[test]
fn garbage_is_ignored() {
    let mut h = Harness::default();
    for junk in [
        &b""[..],
        b"\x00",
        b"GET / HTTP/1.1\r\n\r\n",
        &[0u8; 20],
        &[0x40, 0, 0, 9],
    ] {
        h.server.handle_client(h.client, junk, h.now);
    }
    assert!(h.outputs().is_empty());
}

/// Bounded randomized run: damaged copies of signed, valid requests (and
/// plain noise) from a client with an allocation, and noise to its relay
/// from peers. Seeded (`VESSEL_FUZZ_SEED` replays); nothing may panic and
/// the allocation must still work afterwards.
#[test]
fn damaged_requests_and_noise_never_panic() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let seed = std::env::var("VESSEL_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut h = Harness::default();
    let relay = h.allocate();
    let peer = addr(SFU);
    let valid = [
        h.build(REFRESH, &[&Lifetime::new(600)], true),
        // ChannelData on an unbound channel.
        vec![0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4],
        h.build(ALLOCATE, &[&RequestedTransport::new(17)], true),
        h.build(BINDING, &[], false),
    ];
    for i in 0..20_000 {
        let mut d = valid[rng.random_range(0..valid.len())].clone();
        match rng.random_range(0..4) {
            0 => {
                for _ in 0..rng.random_range(1..4) {
                    let k = rng.random_range(0..d.len());
                    d[k] = rng.random();
                }
            }
            1 => d.truncate(rng.random_range(0..d.len())),
            2 => d.extend((0..rng.random_range(1..64)).map(|_| rng.random::<u8>())),
            _ => {
                d = (0..rng.random_range(0..200))
                    .map(|_| rng.random())
                    .collect()
            }
        }
        if i % 3 == 0 {
            h.server.handle_peer(relay, peer, &d, h.now);
        } else {
            h.server.handle_client(h.client, &d, h.now);
        }
        if i % 500 == 0 {
            h.advance(Duration::from_millis(50));
        }
        let _ = h.outputs();
    }
    // The allocation survived the noise: a proper refresh still works.
    let reply = h.request(REFRESH, &[&Lifetime::new(600)]);
    assert_eq!(reply.class(), MessageClass::Success, "seed {seed}");
}
