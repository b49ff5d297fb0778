//! The TURN state machine: authentication, allocations, permissions,
//! channels and relaying (RFC 8656), plus plain STUN Binding (RFC 8489).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use stun_types::attribute::{
    AttributeStaticType, AttributeWrite, ErrorCode, MessageIntegrity, MessageIntegritySha256,
    Nonce, Realm, Software, Username, XorMappedAddress,
};
use stun_types::message::{
    BINDING, IntegrityAlgorithm, IntegrityKey, LongTermKeyCredentials, Message, MessageClass,
    MessageType, MessageWrite, MessageWriteExt, MessageWriteVec, TransactionId,
};
use turn_types::AddressFamily;
use turn_types::attribute::{
    ChannelNumber, Data, Lifetime, RequestedAddressFamily, RequestedTransport, ReservationToken,
    XorPeerAddress, XorRelayedAddress,
};
use turn_types::channel::ChannelData;
use turn_types::message::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, DATA, REFRESH, SEND};

use super::allocation::{Allocation, BindRefusal, Budget, CHANNEL_NUMBERS};
use super::credentials::Nonces;
use super::ledger::Full;
use super::{ClientKey, Output, TurnConfig};

/// RFC 8656 §2: allocations live 10 minutes unless refreshed.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
const UDP: u8 = 17;
const SOFTWARE: &str = concat!("Vessel ", env!("CARGO_PKG_VERSION"));

/// A request that passed the long-term credential check.
struct Auth {
    username: String,
    key: IntegrityKey,
}

/// An Allocate waiting for the runtime to open its relay socket.
struct Pending {
    client: ClientKey,
    transaction: TransactionId,
    username: String,
    key: IntegrityKey,
    lifetime: Duration,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TurnStats {
    pub allocations: usize,
    pub relayed_packets: u64,
    pub relayed_bytes: u64,
    /// Packets dropped for an allocation's bandwidth quota.
    pub over_quota: u64,
    /// Allocations ended because handling them panicked.
    pub panics: u64,
}

pub struct TurnServer {
    config: TurnConfig,
    nonces: Nonces,
    /// An `Instant` and the Unix time at that instant, for REST expiries.
    epoch: (Instant, u64),
    allocations: HashMap<ClientKey, Allocation>,
    by_relay: HashMap<SocketAddr, ClientKey>,
    pending: HashMap<u64, Pending>,
    next_token: u64,
    stats: TurnStats,
    out: VecDeque<Output>,
}

impl TurnServer {
    /// `unix_now` is the wall-clock time (seconds) at `now`.
    pub fn new(config: TurnConfig, now: Instant, unix_now: u64) -> Self {
        Self {
            nonces: config.nonces.clone(),
            config,
            epoch: (now, unix_now),
            allocations: HashMap::new(),
            by_relay: HashMap::new(),
            pending: HashMap::new(),
            next_token: 0,
            stats: TurnStats::default(),
            out: VecDeque::new(),
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    pub fn stats(&self) -> TurnStats {
        TurnStats {
            allocations: self.allocations.len(),
            ..self.stats
        }
    }

    fn unix(&self, now: Instant) -> u64 {
        self.epoch.1 + now.saturating_duration_since(self.epoch.0).as_secs()
    }

    /// A datagram or stream frame from a client. A panic in handling it
    /// ends that client's allocation alone.
    pub fn handle_client(&mut self, client: ClientKey, data: &[u8], now: Instant) {
        self.isolated(Some(client), |s| s.client_message(client, data, now));
    }

    /// Runs `f` for one client (if known); a panic in it ends that client's
    /// allocation, with an error log and a count, and the server goes on.
    fn isolated(&mut self, client: Option<ClientKey>, f: impl FnOnce(&mut Self)) {
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self)));
        if ran.is_err() {
            self.stats.panics += 1;
            tracing::error!(
                client = ?client.map(|c| c.remote),
                "TURN failed handling a client; its allocation is ended, nothing else is affected"
            );
            if let Some(client) = client {
                self.remove_allocation(&client);
            }
        }
    }

    fn client_message(&mut self, client: ClientKey, data: &[u8], now: Instant) {
        #[cfg(test)]
        if data == b"panic, as a bug would" {
            panic!("injected failure");
        }
        // RFC 8656 §12: ChannelData starts with 0b01, STUN with 0b00.
        if data.first().is_some_and(|b| b & 0xC0 == 0x40) {
            self.channel_data_from_client(client, data, now);
            return;
        }
        let Ok(msg) = Message::from_bytes(data) else {
            tracing::trace!(?client, "not STUN or ChannelData; dropped");
            return;
        };
        match (msg.class(), msg.method()) {
            (MessageClass::Request, BINDING) => {
                let reply = success(
                    &msg,
                    &[&XorMappedAddress::new(client.remote, msg.transaction_id())],
                    None,
                );
                self.send_to_client(client, reply);
            }
            (MessageClass::Request, ALLOCATE) => self.allocate(client, &msg, now),
            (MessageClass::Request, REFRESH) => {
                self.authenticated(client, &msg, now, Self::refresh)
            }
            (MessageClass::Request, CREATE_PERMISSION) => {
                self.authenticated(client, &msg, now, Self::create_permission)
            }
            (MessageClass::Request, CHANNEL_BIND) => {
                self.authenticated(client, &msg, now, Self::channel_bind)
            }
            (MessageClass::Request, _) => {
                let reply = error(
                    &msg,
                    ErrorCode::BAD_REQUEST,
                    "unsupported request",
                    &[],
                    None,
                );
                self.send_to_client(client, reply);
            }
            (MessageClass::Indication, SEND) => self.send_indication(client, &msg, now),
            _ => {}
        }
    }

    /// A datagram that a peer sent to one of our relay addresses.
    pub fn handle_peer(&mut self, relay: SocketAddr, from: SocketAddr, data: &[u8], now: Instant) {
        let client = self.by_relay.get(&relay).copied();
        self.isolated(client, |s| s.peer_datagram(relay, from, data, now));
    }

    fn peer_datagram(&mut self, relay: SocketAddr, from: SocketAddr, data: &[u8], now: Instant) {
        let Some(client) = self.by_relay.get(&relay) else {
            return;
        };
        let Some(allocation) = self.allocations.get_mut(client) else {
            return;
        };
        if !allocation.permits(from.ip(), now) || !allowed_peer(&self.config, from) {
            return;
        }
        if !allocation.budget.spend(data.len(), now) {
            self.stats.over_quota += 1;
            return;
        }
        let client = allocation.client;
        let reply = match allocation.channel_for(from, now) {
            Some(number) => {
                let pad = if client.transport.is_stream() {
                    (4 - data.len() % 4) % 4
                } else {
                    0
                };
                let mut buf = vec![0; 4 + data.len() + pad];
                ChannelData::new(number, data).write_into_unchecked(&mut buf[..4 + data.len()]);
                buf
            }
            None => {
                let mut b = Message::builder_indication(
                    DATA,
                    MessageWriteVec::with_capacity(data.len() + 48),
                );
                let peer = XorPeerAddress::new(from, b.transaction_id());
                add(&mut b, &peer);
                add(&mut b, &Data::new(data));
                b.finish()
            }
        };
        self.stats.relayed_packets += 1;
        self.stats.relayed_bytes += data.len() as u64;
        self.send_to_client(client, reply);
    }

    /// The runtime's answer to [`Output::BindRelay`].
    pub fn relay_bound(&mut self, token: u64, relay: Result<SocketAddr, String>, now: Instant) {
        let Some(p) = self.pending.remove(&token) else {
            // The client went away meanwhile.
            if let Ok(relay) = relay {
                self.out.push_back(Output::ReleaseRelay { relay });
            }
            return;
        };
        let relay = match relay {
            Ok(relay) => relay,
            Err(e) => {
                tracing::warn!(client = %p.client.remote, "cannot open a TURN relay socket: {e}");
                self.release_user(&p.username, p.client.remote.ip());
                let reply = error_reply(
                    ALLOCATE,
                    p.transaction,
                    ErrorCode::INSUFFICIENT_CAPACITY,
                    "cannot open a relay port",
                    &[],
                    Some(&p.key),
                );
                self.send_to_client(p.client, reply);
                return;
            }
        };
        let mut b = Message::builder(
            MessageType::from_class_method(MessageClass::Success, ALLOCATE),
            p.transaction,
            MessageWriteVec::with_capacity(128),
        );
        add(&mut b, &XorRelayedAddress::new(relay, p.transaction));
        add(&mut b, &Lifetime::new(p.lifetime.as_secs() as u32));
        add(
            &mut b,
            &XorMappedAddress::new(p.client.remote, p.transaction),
        );
        let reply = sign(b, Some(&p.key));
        tracing::debug!(
            client = %p.client.remote, transport = ?p.client.transport, %relay,
            username = %p.username, "TURN allocation created"
        );
        self.allocations.insert(
            p.client,
            Allocation::new(
                p.client,
                relay,
                p.username,
                p.key,
                now + p.lifetime,
                (p.transaction, reply.clone()),
                Budget::new(self.config.quota.max_bitrate, now),
            ),
        );
        self.by_relay.insert(relay, p.client);
        self.config.ledger.relay(relay, true);
        self.send_to_client(p.client, reply);
    }

    /// A stream client disconnected: its allocation goes with it.
    pub fn client_closed(&mut self, client: ClientKey) {
        self.remove_allocation(&client);
        let gone: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.client == client)
            .map(|(t, _)| *t)
            .collect();
        for token in gone {
            if let Some(p) = self.pending.remove(&token) {
                self.release_user(&p.username, p.client.remote.ip());
            }
        }
    }

    /// Expires allocations; call about once a second.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<ClientKey> = self
            .allocations
            .values()
            .filter(|a| a.expires <= now)
            .map(|a| a.client)
            .collect();
        for client in expired {
            tracing::debug!(client = %client.remote, "TURN allocation expired");
            self.remove_allocation(&client);
        }
        for a in self.allocations.values_mut() {
            a.prune(now);
        }
    }

    fn allocate(&mut self, client: ClientKey, msg: &Message, now: Instant) {
        let auth = match self.authenticate(client, msg, now) {
            Ok(auth) => auth,
            Err(reply) => return self.send_to_client(client, reply),
        };
        if let Some(a) = self.allocations.get(&client) {
            let reply = if a.created_by.0 == msg.transaction_id() {
                a.created_by.1.clone() // a retransmission: same answer
            } else {
                error(
                    msg,
                    ErrorCode::ALLOCATION_MISMATCH,
                    "this client already has an allocation",
                    &[],
                    Some(&auth.key),
                )
            };
            return self.send_to_client(client, reply);
        }
        if self.pending.values().any(|p| p.client == client) {
            return; // a retransmission while the relay is being opened
        }
        if let Err((code, reason)) = self.check_allocate(msg) {
            let reply = error(msg, code, &reason, &[], Some(&auth.key));
            return self.send_to_client(client, reply);
        }
        let ip = client.remote.ip();
        if let Err(full) = self
            .config
            .ledger
            .take(&auth.username, ip, &self.config.quota)
        {
            let quota = &self.config.quota;
            let (code, reason) = match full {
                Full::User => (
                    ErrorCode::ALLOCATION_QUOTA_REACHED,
                    format!("at most {} allocations per user", quota.per_user),
                ),
                Full::Address => (
                    ErrorCode::ALLOCATION_QUOTA_REACHED,
                    format!("at most {} allocations per client address", quota.per_ip),
                ),
                Full::Server => (
                    ErrorCode::INSUFFICIENT_CAPACITY,
                    "the server holds as many allocations as it allows".to_string(),
                ),
            };
            let reply = error(msg, code, &reason, &[], Some(&auth.key));
            return self.send_to_client(client, reply);
        }
        let lifetime = self.lifetime(msg);
        let token = self.next_token;
        self.next_token += 1;
        self.pending.insert(
            token,
            Pending {
                client,
                transaction: msg.transaction_id(),
                username: auth.username,
                key: auth.key,
                lifetime,
            },
        );
        self.out.push_back(Output::BindRelay { token });
    }

    fn check_allocate(&self, msg: &Message) -> Result<(), (u16, String)> {
        match msg.attribute::<RequestedTransport>() {
            Err(_) => {
                return Err((
                    ErrorCode::BAD_REQUEST,
                    "REQUESTED-TRANSPORT is required".into(),
                ));
            }
            Ok(t) if t.protocol() != UDP => {
                return Err((
                    ErrorCode::UNSUPPORTED_TRANSPORT_PROTOCOL,
                    "Vessel relays UDP only".into(),
                ));
            }
            Ok(_) => {}
        }
        if msg.has_attribute(ReservationToken::TYPE) {
            return Err((
                ErrorCode::INSUFFICIENT_CAPACITY,
                "port reservations are not supported".into(),
            ));
        }
        let want_v6 = msg
            .attribute::<RequestedAddressFamily>()
            .is_ok_and(|f| f.family() == AddressFamily::IPV6);
        if want_v6 != self.config.relay_ipv6 {
            return Err((
                ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED,
                format!(
                    "this server relays over {} only",
                    if self.config.relay_ipv6 {
                        "IPv6"
                    } else {
                        "IPv4"
                    }
                ),
            ));
        }
        Ok(())
    }

    /// RFC 8656 §7.2: min(requested, maximum), but at least the default.
    fn lifetime(&self, msg: &Message) -> Duration {
        let max = self.config.quota.max_lifetime;
        let requested = msg
            .attribute::<Lifetime>()
            .map(|l| Duration::from_secs(l.seconds().into()))
            .unwrap_or(DEFAULT_LIFETIME);
        requested.min(max).max(DEFAULT_LIFETIME.min(max))
    }

    /// Runs `handler` for a request that passed authentication and has an
    /// allocation; answers 401/438/437 otherwise.
    fn authenticated(
        &mut self,
        client: ClientKey,
        msg: &Message,
        now: Instant,
        handler: fn(&mut Self, ClientKey, &Message, &IntegrityKey, Instant) -> Vec<u8>,
    ) {
        let reply = match self.authenticate(client, msg, now) {
            Err(reply) => reply,
            Ok(auth) if !self.allocations.contains_key(&client) => error(
                msg,
                ErrorCode::ALLOCATION_MISMATCH,
                "no allocation for this client",
                &[],
                Some(&auth.key),
            ),
            Ok(auth) => handler(self, client, msg, &auth.key, now),
        };
        self.send_to_client(client, reply);
    }

    fn refresh(
        &mut self,
        client: ClientKey,
        msg: &Message,
        key: &IntegrityKey,
        now: Instant,
    ) -> Vec<u8> {
        let zero = msg.attribute::<Lifetime>().is_ok_and(|l| l.seconds() == 0);
        if zero {
            tracing::debug!(client = %client.remote, "TURN allocation deleted by its client");
            self.remove_allocation(&client);
            return success(msg, &[&Lifetime::new(0)], Some(key));
        }
        let lifetime = self.lifetime(msg);
        if let Some(a) = self.allocations.get_mut(&client) {
            a.expires = now + lifetime;
        }
        success(msg, &[&Lifetime::new(lifetime.as_secs() as u32)], Some(key))
    }

    fn create_permission(
        &mut self,
        client: ClientKey,
        msg: &Message,
        key: &IntegrityKey,
        now: Instant,
    ) -> Vec<u8> {
        let peers: Vec<SocketAddr> = (0..)
            .map_while(|n| msg.nth_attribute::<XorPeerAddress>(n).ok())
            .map(|p| p.addr(msg.transaction_id()))
            .collect();
        if peers.is_empty() {
            return error(
                msg,
                ErrorCode::BAD_REQUEST,
                "XOR-PEER-ADDRESS is required",
                &[],
                Some(key),
            );
        }
        for peer in &peers {
            if let Err((code, reason)) = self.check_peer(peer.ip(), None) {
                return error(msg, code, reason, &[], Some(key));
            }
        }
        let ips: Vec<IpAddr> = peers.iter().map(|p| p.ip()).collect();
        let allocation = self
            .allocations
            .get_mut(&client)
            .expect("checked by caller");
        match allocation.permit(&ips, now) {
            Ok(()) => success(msg, &[], Some(key)),
            Err(_) => error(
                msg,
                ErrorCode::INSUFFICIENT_CAPACITY,
                "too many permissions on this allocation",
                &[],
                Some(key),
            ),
        }
    }

    fn channel_bind(
        &mut self,
        client: ClientKey,
        msg: &Message,
        key: &IntegrityKey,
        now: Instant,
    ) -> Vec<u8> {
        let (Ok(number), Ok(peer)) = (
            msg.attribute::<ChannelNumber>(),
            msg.attribute::<XorPeerAddress>(),
        ) else {
            return error(
                msg,
                ErrorCode::BAD_REQUEST,
                "CHANNEL-NUMBER and XOR-PEER-ADDRESS are required",
                &[],
                Some(key),
            );
        };
        let number = number.channel();
        let peer = peer.addr(msg.transaction_id());
        if !CHANNEL_NUMBERS.contains(&number) {
            return error(
                msg,
                ErrorCode::BAD_REQUEST,
                "channel numbers are 0x4000 to 0x7FFE",
                &[],
                Some(key),
            );
        }
        if let Err((code, reason)) = self.check_peer(peer.ip(), Some(peer)) {
            return error(msg, code, reason, &[], Some(key));
        }
        let allocation = self
            .allocations
            .get_mut(&client)
            .expect("checked by caller");
        match allocation.bind_channel(number, peer, now) {
            Ok(()) => success(msg, &[], Some(key)),
            Err(BindRefusal::Conflict) => error(
                msg,
                ErrorCode::BAD_REQUEST,
                "that channel or peer is already bound to another",
                &[],
                Some(key),
            ),
            Err(BindRefusal::TooMany) => error(
                msg,
                ErrorCode::INSUFFICIENT_CAPACITY,
                "too many channels on this allocation",
                &[],
                Some(key),
            ),
        }
    }

    fn check_peer(&self, ip: IpAddr, addr: Option<SocketAddr>) -> Result<(), (u16, &'static str)> {
        let ip_v6 = ip.is_ipv6() && ip.to_canonical().is_ipv6();
        if ip_v6 != self.config.relay_ipv6 {
            return Err((
                ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH,
                "the peer's address family differs from the relay's",
            ));
        }
        let allowed = match addr {
            Some(addr) => allowed_peer(&self.config, addr),
            None => self.config.policy.allows_ip(ip) || self.config.ledger.has_relay_on(ip),
        };
        if !allowed {
            return Err((
                ErrorCode::FORBIDDEN,
                "Vessel relays only to its own media address; the operator can allow more with --turn-allow-peer",
            ));
        }
        Ok(())
    }

    fn send_indication(&mut self, client: ClientKey, msg: &Message, now: Instant) {
        let Some(allocation) = self.allocations.get_mut(&client) else {
            return;
        };
        let (Ok(peer), Ok(data)) = (msg.attribute::<XorPeerAddress>(), msg.attribute::<Data>())
        else {
            return;
        };
        let peer = peer.addr(msg.transaction_id());
        if allocation.permits(peer.ip(), now) && allowed_peer(&self.config, peer) {
            self.relay_to_peer(client, peer, data.data(), now);
        }
    }

    fn channel_data_from_client(&mut self, client: ClientKey, data: &[u8], now: Instant) {
        let Ok(channel) = ChannelData::parse(data) else {
            return;
        };
        let Some(allocation) = self.allocations.get_mut(&client) else {
            return;
        };
        let Some(peer) = allocation.channel_peer(channel.id(), now) else {
            return;
        };
        if allocation.permits(peer.ip(), now) {
            self.relay_to_peer(client, peer, channel.data(), now);
        }
    }

    /// Sends from `client`'s relay to `peer`, within its bandwidth budget.
    fn relay_to_peer(&mut self, client: ClientKey, peer: SocketAddr, data: &[u8], now: Instant) {
        let Some(allocation) = self.allocations.get_mut(&client) else {
            return;
        };
        if !allocation.budget.spend(data.len(), now) {
            self.stats.over_quota += 1;
            return;
        }
        let relay = allocation.relay;
        self.stats.relayed_packets += 1;
        self.stats.relayed_bytes += data.len() as u64;
        self.out.push_back(Output::ToPeer {
            relay,
            peer,
            data: data.to_vec(),
        });
    }

    /// The long-term credential mechanism (RFC 8489 §9.2).
    fn authenticate(
        &self,
        client: ClientKey,
        msg: &Message,
        now: Instant,
    ) -> Result<Auth, Vec<u8>> {
        let unix = self.unix(now);
        let challenge = |code: u16, reason: &str| {
            let realm = Realm::new(&self.config.realm).expect("realm is short");
            let nonce =
                Nonce::new(&self.nonces.issue(client.remote.ip(), unix)).expect("nonce is short");
            error(msg, code, reason, &[&realm, &nonce], None)
        };
        if !msg.has_attribute(MessageIntegrity::TYPE)
            && !msg.has_attribute(MessageIntegritySha256::TYPE)
        {
            return Err(challenge(ErrorCode::UNAUTHORIZED, "credentials required"));
        }
        let (Ok(username), Ok(_), Ok(nonce)) = (
            msg.attribute::<Username>(),
            msg.attribute::<Realm>(),
            msg.attribute::<Nonce>(),
        ) else {
            return Err(error(
                msg,
                ErrorCode::BAD_REQUEST,
                "USERNAME, REALM and NONCE are required with MESSAGE-INTEGRITY",
                &[],
                None,
            ));
        };
        if !self
            .nonces
            .is_fresh(nonce.nonce(), client.remote.ip(), unix)
        {
            return Err(challenge(ErrorCode::STALE_NONCE, "stale nonce"));
        }
        let username = username.username();
        let existing = self.allocations.get(&client);
        let key = match existing {
            Some(a) if a.username == username => a.key.clone(),
            _ => match self.config.credentials.password(username, unix) {
                Ok(password) => LongTermKeyCredentials::new(
                    username.to_owned(),
                    password,
                    self.config.realm.clone(),
                )
                .make_key(IntegrityAlgorithm::Sha1),
                Err(refusal) => {
                    tracing::debug!(client = %client.remote, %username, "TURN credentials refused: {refusal}");
                    return Err(challenge(ErrorCode::UNAUTHORIZED, &refusal.to_string()));
                }
            },
        };
        if msg.validate_integrity_with_key(&key).is_err() {
            tracing::debug!(client = %client.remote, %username, "TURN message integrity check failed");
            return Err(challenge(ErrorCode::UNAUTHORIZED, "wrong password"));
        }
        if existing.is_some_and(|a| a.username != username) {
            return Err(error(
                msg,
                ErrorCode::WRONG_CREDENTIALS,
                "the allocation belongs to another username",
                &[],
                Some(&key),
            ));
        }
        Ok(Auth {
            username: username.to_owned(),
            key,
        })
    }

    fn remove_allocation(&mut self, client: &ClientKey) {
        if let Some(a) = self.allocations.remove(client) {
            self.by_relay.remove(&a.relay);
            self.config.ledger.relay(a.relay, false);
            self.release_user(&a.username, client.remote.ip());
            self.out.push_back(Output::ReleaseRelay { relay: a.relay });
        }
    }

    fn release_user(&mut self, username: &str, ip: std::net::IpAddr) {
        self.config.ledger.give_back(username, ip);
    }

    fn send_to_client(&mut self, client: ClientKey, data: Vec<u8>) {
        self.out.push_back(Output::ToClient { client, data });
    }
}

/// May data go to (or come from) `peer`: what the policy allows, or
/// another allocation's relay address on this server.
fn allowed_peer(config: &TurnConfig, peer: SocketAddr) -> bool {
    config.policy.allows(peer) || config.ledger.is_relay(peer)
}

fn add(b: &mut MessageWriteVec, attr: &dyn AttributeWrite) {
    b.add_attribute(attr).expect("each attribute is added once");
}

/// Finishes a message: MESSAGE-INTEGRITY when authenticated, then
/// FINGERPRINT.
fn sign(mut b: MessageWriteVec, key: Option<&IntegrityKey>) -> Vec<u8> {
    if let Some(key) = key {
        b.add_message_integrity_with_key(key, IntegrityAlgorithm::Sha1)
            .expect("integrity is added once");
    }
    b.add_fingerprint().expect("fingerprint is added once");
    b.finish()
}

fn success(msg: &Message, attrs: &[&dyn AttributeWrite], key: Option<&IntegrityKey>) -> Vec<u8> {
    let mut b = Message::builder_success(msg, MessageWriteVec::with_capacity(96));
    for a in attrs {
        add(&mut b, *a);
    }
    add(&mut b, &Software::new(SOFTWARE).expect("short"));
    sign(b, key)
}

fn error(
    msg: &Message,
    code: u16,
    reason: &str,
    attrs: &[&dyn AttributeWrite],
    key: Option<&IntegrityKey>,
) -> Vec<u8> {
    error_reply(msg.method(), msg.transaction_id(), code, reason, attrs, key)
}

fn error_reply(
    method: stun_types::message::Method,
    transaction: TransactionId,
    code: u16,
    reason: &str,
    attrs: &[&dyn AttributeWrite],
    key: Option<&IntegrityKey>,
) -> Vec<u8> {
    let mut b = Message::builder(
        MessageType::from_class_method(MessageClass::Error, method),
        transaction,
        MessageWriteVec::with_capacity(128),
    );
    let code = ErrorCode::builder(code)
        .reason(reason)
        .build()
        .expect("reason is short");
    add(&mut b, &code);
    for a in attrs {
        add(&mut b, *a);
    }
    add(&mut b, &Software::new(SOFTWARE).expect("short"));
    sign(b, key)
}
