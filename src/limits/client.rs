//! Who a request comes from: the TCP peer, or, when that peer is a reverse
//! proxy the operator trusts (`--trusted-proxy`), the address the proxy
//! put in `X-Forwarded-For`. Without a trusted proxy the header is a
//! client's claim and counts for nothing.

use std::net::IpAddr;

use ipnet::IpNet;

/// A client as the limits see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Client {
    pub ip: IpAddr,
    /// Exempt from the per-address limits (`--exempt-ip`, by default the
    /// machine itself): its own tools, a local proxy that does not say who
    /// it forwards for.
    pub exempt: bool,
}

impl Client {
    /// A client no per-address limit applies to (internal callers, tests).
    pub fn exempt(ip: IpAddr) -> Self {
        Self { ip, exempt: true }
    }
}

/// The client address of a request from `peer` carrying `forwarded_for`
/// (the `X-Forwarded-For` header, if any).
///
/// Each proxy appends the address it got the request from, so the header
/// is read from the right: addresses of trusted proxies are skipped and
/// the first other one is the client. Anything left of it was written by
/// the client itself and is not believed.
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if !is_in(peer, trusted) {
        return peer;
    }
    let Some(header) = forwarded_for else {
        return peer;
    };
    let mut client = peer;
    for hop in header.rsplit(',') {
        let Some(ip) = parse_hop(hop.trim()) else {
            // A garbled entry: stop at the last address we can vouch for.
            return client;
        };
        client = ip;
        if !is_in(ip, trusted) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, maybe with a port (`1.2.3.4:5`,
/// `[::1]:5`), as some proxies write it.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    hop.parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| canonical(a.ip()))
}

/// IPv4 clients of a dual-stack socket arrive as `::ffff:a.b.c.d`.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A network from the command line: `10.0.0.0/8`, or one address.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("'{s}' is not an address or a network such as 10.0.0.0/8"))
}

pub fn is_in(ip: IpAddr, nets: &[IpNet]) -> bool {
    nets.iter().any(|n| n.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_header_counts_only_from_a_trusted_proxy() {
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(ip("203.0.113.9"), Some("1.2.3.4"), &trusted),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(ip("10.0.0.2"), Some("1.2.3.4"), &trusted),
            ip("1.2.3.4")
        );
        assert_eq!(client_ip(ip("10.0.0.2"), None, &trusted), ip("10.0.0.2"));
        assert_eq!(
            client_ip(ip("10.0.0.2"), Some("1.2.3.4"), &[]),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_hop() {
        let trusted = nets(&["10.0.0.0/8"]);
        // The client wrote "6.6.6.6" itself; the proxies appended the rest.
        let header = "6.6.6.6, 1.2.3.4, 10.1.1.1";
        assert_eq!(
            client_ip(ip("10.0.0.2"), Some(header), &trusted),
            ip("1.2.3.4")
        );
        // Ports and brackets, as some proxies write them.
        assert_eq!(
            client_ip(ip("10.0.0.2"), Some("1.2.3.4:555"), &trusted),
            ip("1.2.3.4")
        );
        assert_eq!(
            client_ip(ip("10.0.0.2"), Some("[2001:db8::1]:5"), &trusted),
            ip("2001:db8::1")
        );
        // Garbage stops the walk at the last address vouched for.
        assert_eq!(
            client_ip(ip("10.0.0.2"), Some("1.2.3.4, junk"), &trusted),
            ip("10.0.0.2")
        );
        // Every hop trusted: the leftmost is as far as we can see.
        assert_eq!(
            client_ip(ip("10.0.0.2"), Some("10.9.9.9"), &trusted),
            ip("10.9.9.9")
        );
    }

    #[test]
    fn networks_or_single_addresses() {
        assert_eq!(parse_net("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_net("192.0.2.7").unwrap().to_string(), "192.0.2.7/32");
        assert_eq!(parse_net("::1").unwrap().to_string(), "::1/128");
        assert!(
            parse_net("example.com")
                .unwrap_err()
                .contains("not an address")
        );
    }

    #[test]
    fn mapped_ipv4_is_ipv4() {
        assert_eq!(canonical(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
        // Raw membership does not unmap; client_ip (below) does.
        assert!(!is_in(ip("::ffff:127.0.0.1"), &nets(&["127.0.0.1/32"])));
        assert_eq!(
            client_ip(ip("::ffff:127.0.0.1"), None, &[]),
            ip("127.0.0.1")
        );
    }
}
