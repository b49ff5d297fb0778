//! The STUN/TURN server: messages from clients over UDP and over a TCP
//! stream (cut into frames as the runtime cuts them), and datagrams from
//! peers to relays, with an allocation already made.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use stun_types::attribute::{Nonce, Realm, Username};
use stun_types::message::{
    LongTermKeyCredentials, Message, MessageIntegrityCredentials, MessageWrite, MessageWriteVec,
    Method,
};
use turn_types::attribute::RequestedTransport;
use turn_types::message::ALLOCATE;

use super::{Records, elapsed, stun};
use crate::turn::credentials::rest_password;
use crate::turn::runtime::{Framing, frame_len};
use crate::turn::{
    Cidr, ClientKey, Credentials, Ledger, Nonces, Output, PeerPolicy, Quota, Transport, TurnConfig,
    TurnServer,
};

const SECRET: &str = "fuzz-secret";
const REALM: &str = "vessel";
const UNIX_START: u64 = 1_800_000_000;
/// The SFU's media port: relaying to it is always allowed.
const SFU: &str = "127.0.0.1:8189";
/// Where peer datagrams come from: the SFU, an allowed range, a forbidden
/// address, IPv6.
const PEERS: [&str; 4] = [SFU, "192.0.2.9:5000", "198.51.100.7:5000", "[::1]:8189"];

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a literal address")
}

struct Harness {
    server: TurnServer,
    now: Instant,
    udp: ClientKey,
    tcp: ClientKey,
    /// Bytes the TCP client sent that make no whole frame yet.
    stream: Vec<u8>,
    username: String,
    credentials: MessageIntegrityCredentials,
    nonce: String,
    relays: Vec<SocketAddr>,
    /// The runtime cannot open the next relay socket.
    fail_bind: bool,
}

impl Harness {
    fn new() -> Self {
        let now = Instant::now();
        let config = TurnConfig {
            realm: REALM.into(),
            credentials: Credentials::new(SECRET.into(), HashMap::new()),
            policy: PeerPolicy::new(
                vec![addr(SFU)],
                vec![Cidr::new(addr("192.0.2.0:0").ip(), 24).expect("a literal range")],
            ),
            // Small quotas, so that they are reached.
            quota: Quota {
                per_user: 2,
                per_ip: 3,
                total: 4,
                max_bitrate: 100_000,
                ..Quota::default()
            },
            relay_ipv6: false,
            ledger: Ledger::default(),
            nonces: Nonces::default(),
        };
        let username = format!("{}:fuzz", UNIX_START + 3600);
        let password = rest_password(SECRET, &username);
        let credentials =
            LongTermKeyCredentials::new(username.clone(), password, REALM.into()).into();
        let client = |transport, port| ClientKey {
            transport,
            listen: addr("127.0.0.1:3478"),
            remote: SocketAddr::new(addr("127.0.0.1:0").ip(), port),
        };
        let mut h = Self {
            server: TurnServer::new(config, now, UNIX_START),
            now,
            udp: client(Transport::Udp, 50000),
            tcp: client(Transport::Tcp, 50001),
            stream: Vec::new(),
            username,
            credentials,
            nonce: String::new(),
            relays: Vec::new(),
            fail_bind: false,
        };
        // An unsigned Allocate gets the nonce, a signed one the relay.
        let transport = RequestedTransport::new(17);
        let ask = stun::request(ALLOCATE, &[0; 12], &[&transport], None, false);
        h.server.handle_client(h.udp, &ask, now);
        h.drain();
        h.signed(
            h.udp,
            ALLOCATE,
            &[&[1; 12][..], &attribute(&transport)].concat(),
        );
        assert_eq!(h.relays.len(), 1, "the harness's allocation is made");
        h
    }

    /// A request from `client` signed as a real client would sign it.
    fn signed(&mut self, client: ClientKey, method: Method, body: &[u8]) {
        let username = Username::new(&self.username).expect("a short username");
        let realm = Realm::new(REALM).expect("a short realm");
        let nonce = Nonce::new(&self.nonce).expect("a short nonce");
        let msg = stun::request(
            method,
            body,
            &[&username, &realm, &nonce],
            Some(&self.credentials),
            false,
        );
        self.client_sent(client, &msg);
    }

    /// Bytes from a client: a datagram over UDP, or more of the stream
    /// over TCP, cut into frames as the runtime cuts them.
    fn client_sent(&mut self, client: ClientKey, data: &[u8]) {
        if client.transport == Transport::Udp {
            self.server.handle_client(client, data, self.now);
            return self.drain();
        }
        self.stream.extend_from_slice(data);
        let mut at = 0;
        loop {
            match frame_len(&self.stream[at..]) {
                Framing::Complete(len) => {
                    let frame = self.stream[at..at + len].to_vec();
                    self.server.handle_client(client, &frame, self.now);
                    self.drain();
                    at += len;
                }
                Framing::NeedMore => break,
                Framing::Garbage => {
                    // The runtime closes the connection.
                    self.server.client_closed(client);
                    self.drain();
                    self.stream.clear();
                    return;
                }
            }
        }
        self.stream.drain(..at);
    }

    /// Carries out the outputs as the runtime would: relays open (or fail
    /// to), and the latest nonce is what the next signed request uses.
    fn drain(&mut self) {
        let mut port = 40000 + self.relays.len() as u16;
        while let Some(out) = self.server.poll_output() {
            match out {
                Output::BindRelay { token } => {
                    let relay = if std::mem::take(&mut self.fail_bind) {
                        Err("no ports left".to_string())
                    } else {
                        port += 1;
                        let relay = SocketAddr::new(addr(SFU).ip(), port);
                        self.relays.push(relay);
                        Ok(relay)
                    };
                    self.server.relay_bound(token, relay, self.now);
                }
                Output::ToClient { data, .. } => {
                    if let Ok(msg) = Message::from_bytes(&data)
                        && let Ok(nonce) = msg.attribute::<Nonce>()
                    {
                        self.nonce = nonce.nonce().to_owned();
                    }
                }
                Output::ToPeer { .. } | Output::ReleaseRelay { .. } => {}
            }
        }
        assert_eq!(self.server.stats().panics, 0, "handling a client panicked");
    }
}

/// An attribute as it is on the wire.
fn attribute(a: &dyn stun_types::attribute::AttributeWrite) -> Vec<u8> {
    let mut b = Message::builder_request(Method::new(0x001), MessageWriteVec::new());
    use stun_types::message::MessageWriteExt;
    b.add_attribute(a).expect("room for one attribute");
    b.finish()[20..].to_vec()
}

/// Records:
/// - flags bits 0-1: 0: the body from a client; 1: a request from a
///   client, signed with valid credentials and the latest nonce (the body:
///   a 16-bit method, then transaction id and attributes as in
///   `stun::request`); 2: the body from a peer to a relay; 3: time passes
///   and the server's timers run;
/// - bit 2: the client is the UDP one (0) or the TCP one (1: its bytes are
///   a stream, cut into STUN and ChannelData frames);
/// - bits 3-4: the relay a peer datagram goes to (the first, the latest, or
///   one that is not ours); bits 5-6: the peer it comes from;
/// - bit 7: the next relay socket the server asks for cannot be opened.
pub fn turn_message(data: &[u8]) {
    let mut h = Harness::new();
    for (flags, body) in Records::new(data) {
        h.fail_bind |= flags & 0x80 != 0;
        let client = if flags & 4 == 0 { h.udp } else { h.tcp };
        match flags & 3 {
            0 => h.client_sent(client, body),
            1 => {
                let method = Method::new(super::u16_of(body) & 0x0fff);
                h.signed(client, method, body.get(2..).unwrap_or_default());
            }
            2 => {
                let relay = match flags >> 3 & 3 {
                    0 => h.relays[0],
                    1 => *h.relays.last().expect("one at least"),
                    _ => addr("127.0.0.1:1"),
                };
                let peer = addr(PEERS[usize::from(flags >> 5 & 3)]);
                h.server.handle_peer(relay, peer, body, h.now);
                h.drain();
            }
            _ => {
                h.now += elapsed(body);
                h.server.handle_timeout(h.now);
                h.drain();
            }
        }
    }
}
