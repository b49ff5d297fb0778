//! Vessel's built-in STUN/TURN server (RFC 8489, RFC 8656), so that viewers
//! behind strict NATs and firewalls still connect.
//!
//! [`TurnServer`] is a sans-IO state machine like the SFU: it takes
//! datagrams, stream frames and `Instant`s and returns [`Output`]s; it opens
//! no socket. STUN messages are parsed and built with `stun-types` and the
//! TURN attributes come from `turn-types`. [`runtime`] owns the sockets.

pub mod allocation;
pub mod credentials;
pub mod ice_servers;
pub mod ledger;
pub mod policy;
pub mod runtime;
mod server;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::time::Duration;

pub use credentials::{Credentials, Nonces};
pub use ice_servers::{IceServer, IceServers};
pub use ledger::Ledger;
pub use policy::{Cidr, PeerPolicy};
pub use server::{TurnServer, TurnStats};

/// How a client reaches the TURN server. Relays themselves are always UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// Stream transports need ChannelData padded to 4 bytes (RFC 8656 §12.5).
    pub fn is_stream(self) -> bool {
        !matches!(self, Transport::Udp)
    }
}

/// The 5-tuple that identifies a client and its allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub transport: Transport,
    /// Our listening address the client talks to.
    pub listen: SocketAddr,
    /// The client's address as we see it.
    pub remote: SocketAddr,
}

/// Limits that keep one user, or everyone together, from exhausting the
/// server.
#[derive(Debug, Clone)]
pub struct Quota {
    /// Allocations one username may hold at once (a browser makes one per
    /// local interface and transport).
    pub per_user: usize,
    /// Allocations one client address may hold, whatever its usernames
    /// (0: no cap).
    pub per_ip: usize,
    /// Allocations the whole server may hold.
    pub total: usize,
    /// Relayed bits per second per allocation, both directions; 0 = no limit.
    pub max_bitrate: u64,
    /// The longest lifetime an Allocate or Refresh may ask for.
    pub max_lifetime: Duration,
}

impl Default for Quota {
    fn default() -> Self {
        Self {
            per_user: 16,
            per_ip: 32,
            total: 2000,
            max_bitrate: 20_000_000,
            max_lifetime: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TurnConfig {
    pub realm: String,
    pub credentials: Credentials,
    pub policy: PeerPolicy,
    pub quota: Quota,
    /// Relays are of one family: the family of the relay address.
    pub relay_ipv6: bool,
    /// Shared by every shard: allocation counts for the quotas, and the key
    /// nonces are made with.
    pub ledger: Ledger,
    pub nonces: Nonces,
}

/// What the runtime must do for the server.
#[derive(Debug)]
pub enum Output {
    /// Send to a client over the transport it came in on.
    ToClient { client: ClientKey, data: Vec<u8> },
    /// Send from a relay socket to a peer.
    ToPeer {
        relay: SocketAddr,
        peer: SocketAddr,
        data: Vec<u8>,
    },
    /// Open a relay socket and report it with [`TurnServer::relay_bound`].
    BindRelay { token: u64 },
    /// Close a relay socket.
    ReleaseRelay { relay: SocketAddr },
}
