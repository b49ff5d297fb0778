//! One client's relay: its permissions, channels and bandwidth budget.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use stun_types::message::{IntegrityKey, TransactionId};

use super::ClientKey;

/// RFC 8656 §9: permissions last 300 s, channel bindings 600 s.
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// Channel numbers a client may bind: RFC 8656 §12 narrowed them to
/// 0x4000-0x4FFF, but RFC 5766 clients (coturn's among them) still pick up
/// to 0x7FFE, and both fit ChannelData's 0b01 prefix.
pub const CHANNEL_NUMBERS: std::ops::RangeInclusive<u16> = 0x4000..=0x7FFE;
/// Enough for an ICE agent (one per remote candidate), small enough that one
/// allocation cannot grow without bound.
pub const MAX_PERMISSIONS: usize = 64;
pub const MAX_CHANNELS: usize = 64;

#[derive(Debug)]
pub struct Allocation {
    pub client: ClientKey,
    pub relay: SocketAddr,
    pub username: String,
    /// The long-term key the allocation was created with. Refreshes keep
    /// working with it after a REST username expires, so a viewer's stream
    /// outlives its credential; new allocations need fresh credentials.
    pub key: IntegrityKey,
    pub expires: Instant,
    /// The Allocate transaction and our answer, resent on retransmission.
    pub created_by: (TransactionId, Vec<u8>),
    permissions: Vec<(IpAddr, Instant)>,
    channels: Vec<Channel>,
    pub budget: Budget,
}

#[derive(Debug, Clone, Copy)]
struct Channel {
    number: u16,
    peer: SocketAddr,
    expires: Instant,
}

/// Why a channel could not be bound.
#[derive(Debug, PartialEq, Eq)]
pub enum BindRefusal {
    /// The number or the peer is already bound to something else.
    Conflict,
    TooMany,
}

impl Allocation {
    pub fn new(
        client: ClientKey,
        relay: SocketAddr,
        username: String,
        key: IntegrityKey,
        expires: Instant,
        created_by: (TransactionId, Vec<u8>),
        budget: Budget,
    ) -> Self {
        Self {
            client,
            relay,
            username,
            key,
            expires,
            created_by,
            permissions: Vec::new(),
            channels: Vec::new(),
            budget,
        }
    }

    pub fn permits(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions
            .iter()
            .any(|(p, expires)| *p == ip && *expires > now)
    }

    /// Installs or refreshes permissions; all or nothing.
    pub fn permit(&mut self, ips: &[IpAddr], now: Instant) -> Result<(), BindRefusal> {
        self.prune(now);
        let new = ips.iter().filter(|ip| !self.permits(**ip, now)).count();
        if self.permissions.len() + new > MAX_PERMISSIONS {
            return Err(BindRefusal::TooMany);
        }
        let expires = now + PERMISSION_LIFETIME;
        for ip in ips {
            match self.permissions.iter_mut().find(|(p, _)| p == ip) {
                Some(entry) => entry.1 = expires,
                None => self.permissions.push((*ip, expires)),
            }
        }
        Ok(())
    }

    /// Binds `number` to `peer` (or refreshes the binding), and refreshes the
    /// permission for the peer's IP, as RFC 8656 §12.2 requires.
    pub fn bind_channel(
        &mut self,
        number: u16,
        peer: SocketAddr,
        now: Instant,
    ) -> Result<(), BindRefusal> {
        self.prune(now);
        let by_number = self.channels.iter().position(|c| c.number == number);
        let by_peer = self.channels.iter().position(|c| c.peer == peer);
        let expires = now + CHANNEL_LIFETIME;
        match (by_number, by_peer) {
            (Some(a), Some(b)) if a == b => self.channels[a].expires = expires,
            (None, None) if self.channels.len() >= MAX_CHANNELS => {
                return Err(BindRefusal::TooMany);
            }
            (None, None) => self.channels.push(Channel {
                number,
                peer,
                expires,
            }),
            _ => return Err(BindRefusal::Conflict),
        }
        self.permit(&[peer.ip()], now)
    }

    pub fn channel_peer(&self, number: u16, now: Instant) -> Option<SocketAddr> {
        self.channels
            .iter()
            .find(|c| c.number == number && c.expires > now)
            .map(|c| c.peer)
    }

    pub fn channel_for(&self, peer: SocketAddr, now: Instant) -> Option<u16> {
        self.channels
            .iter()
            .find(|c| c.peer == peer && c.expires > now)
            .map(|c| c.number)
    }

    /// Drops expired permissions and channels (their numbers become free).
    pub fn prune(&mut self, now: Instant) {
        self.permissions.retain(|(_, expires)| *expires > now);
        self.channels.retain(|c| c.expires > now);
    }
}

/// A token bucket over relayed bytes, both directions together. One second
/// of burst, so a keyframe passes but a sustained flood does not.
#[derive(Debug, Clone)]
pub struct Budget {
    bytes_per_sec: u64,
    tokens: u64,
    last: Instant,
}

impl Budget {
    /// `bits_per_sec == 0` means no limit.
    pub fn new(bits_per_sec: u64, now: Instant) -> Self {
        let bytes_per_sec = bits_per_sec / 8;
        Self {
            bytes_per_sec,
            tokens: bytes_per_sec,
            last: now,
        }
    }

    /// Takes `len` bytes from the budget; false means drop the packet.
    pub fn spend(&mut self, len: usize, now: Instant) -> bool {
        if self.bytes_per_sec == 0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last);
        let refill = (elapsed.as_micros() as u64).saturating_mul(self.bytes_per_sec) / 1_000_000;
        if refill > 0 {
            self.tokens = (self.tokens + refill).min(self.bytes_per_sec);
            self.last = now;
        }
        let len = len as u64;
        if self.tokens >= len {
            self.tokens -= len;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::Transport;
    use stun_types::message::IntegrityAlgorithm;
    use stun_types::message::LongTermKeyCredentials;

    fn allocation(now: Instant) -> Allocation {
        let key = LongTermKeyCredentials::new("u".into(), "p".into(), "r".into())
            .make_key(IntegrityAlgorithm::Sha1);
        Allocation::new(
            ClientKey {
                transport: Transport::Udp,
                listen: "127.0.0.1:3478".parse().unwrap(),
                remote: "127.0.0.1:5000".parse().unwrap(),
            },
            "127.0.0.1:40000".parse().unwrap(),
            "u".into(),
            key,
            now + Duration::from_secs(600),
            (TransactionId::generate(), vec![]),
            Budget::new(0, now),
        )
    }

    #[test]
    fn permissions_expire_after_five_minutes() {
        let now = Instant::now();
        let mut a = allocation(now);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(!a.permits(ip, now));
        a.permit(&[ip], now).unwrap();
        assert!(a.permits(ip, now + Duration::from_secs(299)));
        assert!(!a.permits(ip, now + Duration::from_secs(300)));
    }

    #[test]
    fn channels_bind_one_to_one_and_refresh_the_permission() {
        let now = Instant::now();
        let mut a = allocation(now);
        let peer: SocketAddr = "127.0.0.1:8189".parse().unwrap();
        let other: SocketAddr = "127.0.0.1:8190".parse().unwrap();
        a.bind_channel(0x4000, peer, now).unwrap();
        assert!(a.permits(peer.ip(), now));
        assert_eq!(a.channel_peer(0x4000, now), Some(peer));
        assert_eq!(a.channel_for(peer, now), Some(0x4000));
        // Same pair again: a refresh.
        a.bind_channel(0x4000, peer, now).unwrap();
        assert_eq!(
            a.bind_channel(0x4000, other, now),
            Err(BindRefusal::Conflict)
        );
        assert_eq!(
            a.bind_channel(0x4001, peer, now),
            Err(BindRefusal::Conflict)
        );
        let later = now + CHANNEL_LIFETIME;
        assert_eq!(a.channel_peer(0x4000, later), None);
        a.bind_channel(0x4000, other, later).unwrap();
    }

    #[test]
    fn permissions_are_capped() {
        let now = Instant::now();
        let mut a = allocation(now);
        let ips: Vec<IpAddr> = (0..MAX_PERMISSIONS as u32)
            .map(|i| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)))
            .collect();
        a.permit(&ips, now).unwrap();
        a.permit(&ips[..3], now).unwrap();
        assert_eq!(
            a.permit(&["192.0.2.1".parse().unwrap()], now),
            Err(BindRefusal::TooMany)
        );
    }

    #[test]
    fn budget_allows_a_second_of_burst_then_the_rate() {
        let now = Instant::now();
        let mut b = Budget::new(8_000, now); // 1000 bytes/s
        assert!(b.spend(1000, now));
        assert!(!b.spend(1, now));
        assert!(b.spend(500, now + Duration::from_millis(500)));
        assert!(!b.spend(100, now + Duration::from_millis(500)));
        let mut unlimited = Budget::new(0, now);
        assert!(unlimited.spend(usize::MAX, now));
    }
}
