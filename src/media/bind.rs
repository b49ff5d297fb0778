//! Binding the media sockets (UDP, and TCP for ICE-TCP) and the routes
//! that say which local address a public one arrives at.

use super::*;

/// A bound media socket and the candidate address its datagrams arrive at.
pub struct MediaSocket {
    pub socket: UdpSocket,
    /// The TCP twin on the same address and port (ICE-TCP, RFC 6544).
    pub tcp: Option<TcpListener>,
    /// What str0m is told the destination was: the announced candidate.
    pub announced: SocketAddr,
}

/// Binds the media sockets of `workers` shards: shard `k` on `--media`'s
/// port + `k` (or any free port for port 0). Returns each shard's sockets
/// and announced addresses.
#[allow(clippy::type_complexity)]
pub fn bind_shards(
    media: SocketAddr,
    announced: &[SocketAddr],
    workers: usize,
) -> io::Result<(Vec<Vec<MediaSocket>>, Vec<Vec<SocketAddr>>)> {
    let mut shards = Vec::new();
    let mut addrs = Vec::new();
    for k in 0..workers {
        let port = match media.port() {
            0 => 0,
            base => base.checked_add(k as u16).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "media ports run past 65535")
            })?,
        };
        let (sockets, announced) = bind_udp_and_tcp(SocketAddr::new(media.ip(), port), announced)?;
        shards.push(sockets);
        addrs.push(announced);
    }
    Ok((shards, addrs))
}

/// For each announced media address, the local address that reaches the same
/// socket from this host. Behind a 1:1 NAT (`--public-ip`) the announced
/// address may not even be routable from inside, so the TURN relays use
/// these to hand packets for Vessel's own SFU straight to it.
pub fn local_routes(
    sockets: &[MediaSocket],
    announced: &[SocketAddr],
) -> io::Result<Vec<(SocketAddr, SocketAddr)>> {
    let mut routes = Vec::new();
    for a in announced {
        let socket = match sockets.iter().find(|s| s.announced == *a) {
            Some(s) => s,
            None if sockets.len() == 1 => &sockets[0],
            None => continue,
        };
        let mut local = socket.socket.local_addr()?;
        if local.ip().is_unspecified() {
            local.set_ip(if local.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        routes.push((*a, local));
    }
    Ok(routes)
}

/// Binds the TCP twin of every UDP media socket (same address, same port).
pub(super) fn bind_tcp(sockets: &mut [MediaSocket]) -> io::Result<()> {
    for s in sockets {
        s.tcp = Some(TcpListener::bind(s.socket.local_addr()?)?);
    }
    Ok(())
}

/// Binds the media port over UDP and TCP. With port 0, tries ports until
/// one is free for both (the system picks UDP ports without a look at TCP).
pub fn bind_udp_and_tcp(
    media: SocketAddr,
    announced: &[SocketAddr],
) -> io::Result<(Vec<MediaSocket>, Vec<SocketAddr>)> {
    let mut attempts = if media.port() == 0 { 20 } else { 1 };
    loop {
        let (mut sockets, announced) = bind(media, announced)?;
        match bind_tcp(&mut sockets) {
            Ok(()) => return Ok((sockets, announced)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && attempts > 1 => attempts -= 1,
            Err(e) => return Err(e),
        }
    }
}

/// Binds the media sockets: `--media` itself, or, for an unspecified
/// address, one socket per announced interface address, so every datagram's
/// destination is known without IP_PKTINFO. Returns the sockets and the
/// addresses to announce, with the port actually bound (for `--media :0`).
pub(super) fn bind(
    media: SocketAddr,
    announced: &[SocketAddr],
) -> io::Result<(Vec<MediaSocket>, Vec<SocketAddr>)> {
    let same_family = |a: &&SocketAddr| a.is_ipv4() == media.is_ipv4();
    let per_interface = media.ip().is_unspecified()
        && !announced.iter().any(|a| a.ip().is_unspecified())
        && announced.iter().filter(same_family).all(|a| {
            // Only if the announced addresses are ours (not --public-ip
            // behind a NAT): probe by binding.
            UdpSocket::bind(SocketAddr::new(a.ip(), 0)).is_ok()
        });
    if !per_interface {
        let socket = UdpSocket::bind(media)?;
        let port = socket.local_addr()?.port();
        let announced: Vec<SocketAddr> = announced
            .iter()
            .map(|a| SocketAddr::new(a.ip(), port))
            .collect();
        let first = announced
            .iter()
            .find(same_family)
            .copied()
            .unwrap_or(socket.local_addr()?);
        return Ok((
            vec![MediaSocket {
                socket,
                tcp: None,
                announced: first,
            }],
            announced,
        ));
    }
    let mut port = media.port();
    let mut sockets = Vec::new();
    for a in announced.iter().filter(same_family) {
        let socket = UdpSocket::bind(SocketAddr::new(a.ip(), port))?;
        let local = socket.local_addr()?;
        // With port 0, the first socket picks the port for all.
        port = local.port();
        sockets.push(MediaSocket {
            socket,
            tcp: None,
            announced: local,
        });
    }
    let announced = sockets.iter().map(|s| s.announced).collect();
    Ok((sockets, announced))
}

/// Kernel buffers for each media socket. With the default (208 KiB, about
/// 150 datagrams) a media thread held up for 50 ms by a burst of noise or
/// of joins overflows, and the kernel drops casters' packets with the
/// noise. Linux caps these at `net.core.rmem_max`/`wmem_max`.
pub(super) const SOCKET_BUFFER: usize = 4 << 20;

pub(super) fn set_buffers(socket: &UdpSocket) {
    let s = socket2::SockRef::from(socket);
    if let Err(e) = s
        .set_recv_buffer_size(SOCKET_BUFFER)
        .and(s.set_send_buffer_size(SOCKET_BUFFER))
    {
        tracing::debug!("media socket buffers: {e}");
    }
}
