//! Where relayed traffic may go. A TURN server that relays anywhere is an
//! open proxy into the server's own network (coturn's `denied-peer-ip`
//! lesson), so Vessel relays only to its own media addresses unless the
//! operator names more.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// An address range such as `203.0.113.0/24` or `2001:db8::/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn new(net: IpAddr, prefix: u8) -> Result<Self, String> {
        let max = if net.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("prefix /{prefix} is longer than {max} bits"));
        }
        Ok(Self {
            net: mask(net, prefix),
            prefix,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_ipv4() == self.net.is_ipv4() && mask(ip, self.prefix) == self.net
    }

    /// Whether every address of `other` is in `self`.
    fn covers(&self, other: &Cidr) -> bool {
        self.prefix <= other.prefix && self.contains(other.net)
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| format!("`{s}` is not an address range like 203.0.113.0/24"))?;
        let prefix = match prefix {
            Some(p) => p
                .parse()
                .map_err(|_| format!("`{s}`: the prefix length must be a number"))?,
            None if ip.is_ipv4() => 32,
            None => 128,
        };
        Cidr::new(canonical(ip), prefix)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix)
            };
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix)
            };
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

/// IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Ranges that are never relayed to unless named explicitly: this host,
/// private networks, link-local, carrier-grade NAT, multicast, reserved.
const SPECIAL: &[(&str, u8)] = &[
    ("0.0.0.0", 8),
    ("10.0.0.0", 8),
    ("100.64.0.0", 10),
    ("127.0.0.0", 8),
    ("169.254.0.0", 16),
    ("172.16.0.0", 12),
    ("192.0.0.0", 24),
    ("192.168.0.0", 16),
    ("198.18.0.0", 15),
    ("224.0.0.0", 4),
    ("240.0.0.0", 4),
    ("::", 128),
    ("::1", 128),
    ("64:ff9b:1::", 48),
    ("fc00::", 7),
    ("fe80::", 10),
    ("ff00::", 8),
];

fn special_ranges() -> impl Iterator<Item = Cidr> {
    SPECIAL
        .iter()
        .map(|(ip, p)| Cidr::new(ip.parse().expect("valid constant"), *p).expect("valid"))
}

/// Decides which peers an allocation may exchange data with.
#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    own: Vec<SocketAddr>,
    allowed: Vec<Cidr>,
}

impl PeerPolicy {
    /// `own`: Vessel's media addresses, always allowed (exact address and
    /// port). `allowed`: operator ranges. A range that lies inside a special
    /// range (say `10.1.0.0/16`) opens it; a wide one (say `0.0.0.0/0`)
    /// opens only public addresses.
    pub fn new(own: Vec<SocketAddr>, allowed: Vec<Cidr>) -> Self {
        Self { own, allowed }
    }

    /// May a permission be installed for this IP? (Permissions are per IP.)
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.own.iter().any(|a| canonical(a.ip()) == ip) || self.range_allows(ip)
    }

    /// May data go to (or come from) this exact address?
    pub fn allows(&self, peer: SocketAddr) -> bool {
        let ip = canonical(peer.ip());
        self.own
            .iter()
            .any(|a| canonical(a.ip()) == ip && a.port() == peer.port())
            || self.range_allows(ip)
    }

    fn range_allows(&self, ip: IpAddr) -> bool {
        let special = special_ranges().find(|s| s.contains(ip));
        self.allowed.iter().any(|range| {
            range.contains(ip)
                && match &special {
                    None => true,
                    Some(s) => s.covers(range),
                }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(own: &[&str], allowed: &[&str]) -> PeerPolicy {
        PeerPolicy::new(
            own.iter().map(|a| a.parse().unwrap()).collect(),
            allowed.iter().map(|c| c.parse().unwrap()).collect(),
        )
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn by_default_only_vessels_own_media_address() {
        let p = policy(&["127.0.0.1:8189"], &[]);
        assert!(p.allows(addr("127.0.0.1:8189")));
        assert!(p.allows_ip("127.0.0.1".parse().unwrap()));
        assert!(!p.allows(addr("127.0.0.1:22")));
        assert!(!p.allows(addr("203.0.113.9:8189")));
        assert!(!p.allows_ip("203.0.113.9".parse().unwrap()));
    }

    #[test]
    fn wide_ranges_never_open_special_addresses() {
        let p = policy(&[], &["0.0.0.0/0", "::/0"]);
        assert!(p.allows(addr("203.0.113.9:5000")));
        assert!(p.allows(addr("[2001:db8::1]:5000")));
        for denied in [
            "127.0.0.1:1",
            "10.1.2.3:1",
            "172.20.0.1:1",
            "192.168.1.1:1",
            "169.254.169.254:80",
            "100.64.0.1:1",
            "224.0.0.251:5353",
            "0.0.0.0:1",
            "[::1]:1",
            "[fe80::1]:1",
            "[fd00::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(!p.allows(addr(denied)), "{denied} must be refused");
        }
    }

    #[test]
    fn a_named_private_range_is_allowed() {
        let p = policy(&[], &["10.77.0.0/16"]);
        assert!(p.allows(addr("10.77.1.2:9")));
        assert!(!p.allows(addr("10.78.1.2:9")));
        assert!(p.allows(addr("[::ffff:10.77.0.1]:9")));
    }

    #[test]
    fn cidr_parsing() {
        assert_eq!(
            "10.1.2.3/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "2001:db8::1".parse::<Cidr>().unwrap().to_string(),
            "2001:db8::1/128"
        );
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("ten/8".parse::<Cidr>().is_err());
        assert!("10.0.0.0/x".parse::<Cidr>().is_err());
    }
}
