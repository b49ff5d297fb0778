//! The TURN server's IO shell: UDP, TCP and TLS listeners, a UDP socket per
//! relay, and a one-second tick, all on one thread. Every socket task hands
//! what it reads straight to the [`TurnServer`] (no channel hop) and then
//! performs the [`Output`]s it returns.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stun_types::message::MessageHeader;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_rustls::TlsAcceptor;
use turn_types::channel::ChannelData;

use super::{ClientKey, Output, Transport, TurnServer, TurnStats};
use crate::limits::stream::{Deadlines, Ended, read_within};
use crate::metrics::Metrics;

/// Stream clients beyond this are refused.
const MAX_STREAMS: usize = 4096;
/// STUN answers waiting for room in a full UDP socket buffer; beyond,
/// answers are dropped (the client retransmits).
const MAX_WAITING_ANSWERS: usize = 1024;
/// Frames queued towards one stream client; beyond, frames are dropped as
/// UDP would lose them, rather than let a slow reader grow memory.
const WRITE_QUEUE: usize = 512;
/// Larger than any STUN message or ChannelData (64 KiB + header).
const MAX_FRAME: usize = 65_536 + 20;
/// Kernel buffers for the shared UDP listener and for each relay. The
/// default (208 KiB) overflows under bursts from many clients, and a TURN
/// server that drops there drops everyone's media. Linux caps these at
/// `net.core.rmem_max`/`wmem_max`.
const LISTENER_BUFFER: usize = 4 << 20;
const RELAY_BUFFER: usize = 1 << 20;

fn set_buffers(socket: &std::net::UdpSocket, bytes: usize) {
    let s = socket2::SockRef::from(socket);
    if let Err(e) = s
        .set_recv_buffer_size(bytes)
        .and(s.set_send_buffer_size(bytes))
    {
        tracing::debug!("TURN socket buffers: {e}");
    }
}

/// One shard's bound listeners, before its thread starts.
pub struct TurnSockets {
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
    tls: Option<(std::net::TcpListener, TlsAcceptor)>,
}

impl TurnSockets {
    /// Binds `shards` sets of listeners on the same ports with
    /// `SO_REUSEPORT`: UDP and TCP on `addr` (the same port, also for port
    /// 0) and, when given, TLS. The kernel keeps each client (by its
    /// addresses) on one shard, and allocations belong to a client, so the
    /// shards share nothing but the quota ledger and the nonce key.
    pub fn bind(
        addr: SocketAddr,
        tls: Option<(SocketAddr, TlsAcceptor)>,
        shards: usize,
    ) -> io::Result<Vec<Self>> {
        let shared = shards > 1;
        let mut attempts = if addr.port() == 0 { 20 } else { 1 };
        let (udp, tcp) = loop {
            let udp = udp_socket(addr, shared)?;
            match tcp_listener(udp.local_addr()?, shared) {
                Ok(tcp) => break (udp, tcp),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && attempts > 1 => attempts -= 1,
                Err(e) => return Err(e),
            }
        };
        let port_addr = udp.local_addr()?;
        let tls_first = match &tls {
            Some((addr, acceptor)) => Some((tcp_listener(*addr, shared)?, acceptor.clone())),
            None => None,
        };
        let tls_addr = match &tls_first {
            Some((l, _)) => Some(l.local_addr()?),
            None => None,
        };
        let mut all = vec![Self {
            udp,
            tcp,
            tls: tls_first,
        }];
        for _ in 1..shards {
            let tls = match (&tls, tls_addr) {
                (Some((_, acceptor)), Some(at)) => {
                    Some((tcp_listener(at, true)?, acceptor.clone()))
                }
                _ => None,
            };
            all.push(Self {
                udp: udp_socket(port_addr, true)?,
                tcp: tcp_listener(port_addr, true)?,
                tls,
            });
        }
        Ok(all)
    }

    /// The UDP and TCP address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }
}

fn udp_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn tcp_listener(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    // As std does: a restarted server may bind while old connections linger.
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// Starts the TURN thread. Relay sockets bind to `relay_ip` (or, when that
/// address is not local, e.g. a 1:1 NAT's public IP, to every interface
/// while `relay_ip` is still what clients are told).
///
/// `own_routes` maps each announced media address of Vessel to the local
/// address of the same socket ([`crate::media::local_routes`]): relayed
/// packets for the SFU go there directly, and its answers are attributed
/// back to the announced address the client gave permission to.
pub fn spawn(
    shards: Vec<(TurnSockets, TurnServer)>,
    relay_ip: IpAddr,
    own_routes: Vec<(SocketAddr, SocketAddr)>,
    metrics: Arc<Metrics>,
) -> io::Result<()> {
    for (i, (sockets, server)) in shards.into_iter().enumerate() {
        spawn_shard(
            i,
            sockets,
            server,
            relay_ip,
            own_routes.clone(),
            metrics.clone(),
        )?;
    }
    Ok(())
}

fn spawn_shard(
    index: usize,
    sockets: TurnSockets,
    server: TurnServer,
    relay_ip: IpAddr,
    own_routes: Vec<(SocketAddr, SocketAddr)>,
    metrics: Arc<Metrics>,
) -> io::Result<()> {
    sockets.udp.set_nonblocking(true)?;
    set_buffers(&sockets.udp, LISTENER_BUFFER);
    sockets.tcp.set_nonblocking(true)?;
    if let Some((l, _)) = &sockets.tls {
        l.set_nonblocking(true)?;
    }
    std::thread::Builder::new()
        .name(format!("vessel-turn-{index}"))
        .spawn(move || {
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, run(sockets, server, relay_ip, own_routes, metrics))
            }));
            // Without TURN some viewers silently cannot connect: exit so a
            // supervisor restarts Vessel, as for the media thread.
            match ran {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!("TURN runtime failed: {e}; exiting");
                    std::process::exit(1);
                }
                Err(_) => {
                    tracing::error!("TURN runtime panicked; exiting");
                    std::process::exit(1);
                }
            }
        })?;
    Ok(())
}

struct Core {
    server: TurnServer,
    udp: Rc<UdpSocket>,
    streams: HashMap<ClientKey, mpsc::Sender<Vec<u8>>>,
    relays: HashMap<SocketAddr, (Rc<UdpSocket>, AbortHandle)>,
    relay_ip: IpAddr,
    /// Announced media address → local address of the same socket.
    own_routes: Vec<(SocketAddr, SocketAddr)>,
    /// (relay, local media address) → the announced address last used, to
    /// attribute the SFU's answers.
    routed: HashMap<(SocketAddr, SocketAddr), SocketAddr>,
    /// One clone per STUN answer waiting for room in the UDP socket.
    waiting_answers: Rc<()>,
}

type Shared = Rc<RefCell<Core>>;

async fn run(
    sockets: TurnSockets,
    server: TurnServer,
    relay_ip: IpAddr,
    own_routes: Vec<(SocketAddr, SocketAddr)>,
    metrics: Arc<Metrics>,
) -> io::Result<()> {
    let listen = sockets.udp.local_addr()?;
    let udp = Rc::new(UdpSocket::from_std(sockets.udp)?);
    let shared: Shared = Rc::new(RefCell::new(Core {
        server,
        udp: udp.clone(),
        streams: HashMap::new(),
        relays: HashMap::new(),
        relay_ip,
        own_routes,
        routed: HashMap::new(),
        waiting_answers: Rc::new(()),
    }));
    let tcp = TcpListener::from_std(sockets.tcp)?;
    tokio::task::spawn_local(accept(shared.clone(), tcp, None));
    if let Some((l, acceptor)) = sockets.tls {
        tokio::task::spawn_local(accept(
            shared.clone(),
            TcpListener::from_std(l)?,
            Some(acceptor),
        ));
    }
    let ticker = shared.clone();
    tokio::task::spawn_local(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut published = TurnStats::default();
        loop {
            tick.tick().await;
            ticker.borrow_mut().server.handle_timeout(Instant::now());
            drive(&ticker);
            // Once a second, what changed goes to /metrics.
            let stats = ticker.borrow().server.stats();
            metrics
                .turn_allocations
                .inc_by(stats.allocations as i64 - published.allocations as i64);
            metrics
                .turn_relayed_bytes
                .inc_by(stats.relayed_bytes.saturating_sub(published.relayed_bytes));
            metrics
                .panics
                .get_or_create(&crate::metrics::TURN)
                .inc_by(stats.panics.saturating_sub(published.panics));
            published = stats;
        }
    });
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, remote) = match udp.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::trace!("TURN udp recv: {e}");
                continue;
            }
        };
        let client = ClientKey {
            transport: Transport::Udp,
            listen,
            remote,
        };
        shared
            .borrow_mut()
            .server
            .handle_client(client, &buf[..n], Instant::now());
        drive(&shared);
    }
}

/// Performs everything the server asked for.
fn drive(shared: &Shared) {
    loop {
        let Some(out) = shared.borrow_mut().server.poll_output() else {
            return;
        };
        match out {
            Output::ToClient { client, data } => {
                let core = shared.borrow();
                if client.transport == Transport::Udp {
                    match core.udp.try_send_to(&data, client.remote) {
                        // A full socket buffer loses relayed data, as the
                        // network could. A STUN answer (first bits 00) is
                        // kept until there is room: a lost Allocate answer
                        // makes the client retry with a new transaction,
                        // which its existing allocation must refuse (437).
                        Err(e)
                            if e.kind() == io::ErrorKind::WouldBlock
                                && data[0] & 0xC0 == 0
                                && Rc::strong_count(&core.waiting_answers)
                                    <= MAX_WAITING_ANSWERS =>
                        {
                            let udp = core.udp.clone();
                            let waiting = core.waiting_answers.clone();
                            tokio::task::spawn_local(async move {
                                let _waiting = waiting;
                                let _ = udp.send_to(&data, client.remote).await;
                            });
                        }
                        _ => {}
                    }
                } else if let Some(tx) = core.streams.get(&client) {
                    let _ = tx.try_send(data);
                }
            }
            Output::ToPeer { relay, peer, data } => {
                let mut core = shared.borrow_mut();
                let to = match core.own_routes.iter().find(|(a, _)| *a == peer) {
                    Some(&(_, local)) => {
                        if local != peer {
                            core.routed.insert((relay, local), peer);
                        }
                        local
                    }
                    None => peer,
                };
                if let Some((socket, _)) = core.relays.get(&relay) {
                    let _ = socket.try_send_to(&data, to);
                }
            }
            Output::BindRelay { token } => {
                let relay_ip = shared.borrow().relay_ip;
                let bound = bind_relay(relay_ip);
                let result = match bound {
                    Ok((socket, addr)) => {
                        let socket = Rc::new(socket);
                        let task =
                            tokio::task::spawn_local(relay(shared.clone(), socket.clone(), addr));
                        shared
                            .borrow_mut()
                            .relays
                            .insert(addr, (socket, task.abort_handle()));
                        Ok(addr)
                    }
                    Err(e) => Err(e.to_string()),
                };
                shared
                    .borrow_mut()
                    .server
                    .relay_bound(token, result, Instant::now());
            }
            Output::ReleaseRelay { relay } => {
                let mut core = shared.borrow_mut();
                core.routed.retain(|(r, _), _| *r != relay);
                if let Some((_, task)) = core.relays.remove(&relay) {
                    task.abort();
                }
            }
        }
    }
}

fn bind_relay(ip: IpAddr) -> io::Result<(UdpSocket, SocketAddr)> {
    let socket = match std::net::UdpSocket::bind((ip, 0)) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => {
            let any: IpAddr = if ip.is_ipv4() {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            };
            std::net::UdpSocket::bind((any, 0))?
        }
        Err(e) => return Err(e),
    };
    socket.set_nonblocking(true)?;
    set_buffers(&socket, RELAY_BUFFER);
    let addr = SocketAddr::new(ip, socket.local_addr()?.port());
    Ok((UdpSocket::from_std(socket)?, addr))
}

/// Reads what peers send to one relay address.
async fn relay(shared: Shared, socket: Rc<UdpSocket>, addr: SocketAddr) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let mut core = shared.borrow_mut();
        let from = core.routed.get(&(addr, from)).copied().unwrap_or(from);
        core.server
            .handle_peer(addr, from, &buf[..n], Instant::now());
        drop(core);
        drive(&shared);
    }
}

async fn accept(shared: Shared, listener: TcpListener, tls: Option<TlsAcceptor>) {
    let transport = if tls.is_some() {
        Transport::Tls
    } else {
        Transport::Tcp
    };
    let Ok(listen) = listener.local_addr() else {
        return;
    };
    // Counts connections from accept to close, TLS handshakes included.
    let open = Rc::new(());
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("TURN {transport:?} accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if Rc::strong_count(&open) > MAX_STREAMS {
            tracing::warn!("TURN: {MAX_STREAMS} stream clients already; refusing {remote}");
            continue;
        }
        let held = open.clone();
        let _ = stream.set_nodelay(true);
        let client = ClientKey {
            transport,
            listen,
            remote,
        };
        let shared = shared.clone();
        let tls = tls.clone();
        tokio::task::spawn_local(async move {
            let _held = held;
            match tls {
                None => serve_stream(shared, stream, client).await,
                Some(acceptor) => {
                    match tokio::time::timeout(Deadlines::TURN.first, acceptor.accept(stream)).await
                    {
                        Ok(Ok(stream)) => serve_stream(shared, stream, client).await,
                        Ok(Err(e)) => tracing::debug!(%remote, "TURN TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%remote, "TURN TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// One TCP or TLS client: STUN messages and ChannelData back to back
/// (RFC 8656 §12.5).
async fn serve_stream<S>(shared: Shared, stream: S, client: ClientKey)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    shared.borrow_mut().streams.insert(client, tx);
    let writer = tokio::task::spawn_local(async move {
        let mut batch = Vec::with_capacity(MAX_FRAME);
        while let Some(frame) = rx.recv().await {
            // Whatever else is queued goes out in the same write: one
            // syscall (and usually one TCP segment) for a burst of frames.
            batch.clear();
            batch.extend_from_slice(&frame);
            while batch.len() < MAX_FRAME {
                match rx.try_recv() {
                    Ok(more) => batch.extend_from_slice(&more),
                    Err(_) => break,
                }
            }
            // A client that takes longer than a frame's deadline to take
            // a write is not reading: stop writing to it.
            let wrote = tokio::time::timeout(Deadlines::TURN.frame, wr.write_all(&batch));
            if !matches!(wrote.await, Ok(Ok(()))) {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut buf: Vec<u8> = Vec::with_capacity(2 * MAX_FRAME);
    let mut chunk = vec![0u8; MAX_FRAME];
    let mut spoken = false;
    let d = Deadlines::TURN;
    'read: loop {
        let n = match read_within(&mut rd, &mut chunk, &d, spoken, !buf.is_empty()).await {
            Ok(n) => n,
            Err(Ended::Closed) => break,
            Err(Ended::TimedOut(why)) => {
                tracing::debug!(remote = %client.remote, "TURN {:?} client {why}; closing", client.transport);
                break;
            }
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        loop {
            match frame_len(&buf[at..]) {
                Framing::Complete(len) => {
                    shared.borrow_mut().server.handle_client(
                        client,
                        &buf[at..at + len],
                        Instant::now(),
                    );
                    drive(&shared);
                    at += len;
                    spoken = true;
                }
                Framing::NeedMore => break,
                Framing::Garbage => {
                    tracing::debug!(remote = %client.remote, "TURN: not STUN over {:?}; closing", client.transport);
                    break 'read;
                }
            }
        }
        buf.drain(..at);
    }
    writer.abort();
    let mut core = shared.borrow_mut();
    core.streams.remove(&client);
    core.server.client_closed(client);
    drop(core);
    drive(&shared);
}

/// What [`frame_len`] finds at the front of a stream buffer.
pub(crate) enum Framing {
    Complete(usize),
    NeedMore,
    Garbage,
}

/// The length of the first frame in `buf`: a STUN message (by its header) or
/// ChannelData padded to 4 bytes.
pub(crate) fn frame_len(buf: &[u8]) -> Framing {
    if buf.len() < 4 {
        return Framing::NeedMore;
    }
    if let Ok((_, len)) = ChannelData::parse_header(buf) {
        let padded = (4 + len + 3) & !3;
        return if buf.len() >= padded {
            Framing::Complete(padded)
        } else {
            Framing::NeedMore
        };
    }
    if buf.len() < MessageHeader::LENGTH {
        return Framing::NeedMore;
    }
    match MessageHeader::from_bytes(&buf[..MessageHeader::LENGTH]) {
        Ok(h) => {
            let len = MessageHeader::LENGTH + h.data_length() as usize;
            if buf.len() >= len {
                Framing::Complete(len)
            } else {
                Framing::NeedMore
            }
        }
        Err(_) => Framing::Garbage,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_cut_by_their_headers() {
        // ChannelData 0x4001 with 5 bytes, padded to 12.
        let mut cd = vec![0x40, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0];
        assert!(matches!(frame_len(&cd[..8]), Framing::NeedMore));
        assert!(matches!(frame_len(&cd), Framing::Complete(12)));
        // A STUN Binding request with no attributes.
        let stun = stun_types::message::Message::builder_request(
            stun_types::message::BINDING,
            stun_types::message::MessageWriteVec::new(),
        );
        let stun = stun_types::message::MessageWrite::finish(stun);
        cd.extend_from_slice(&stun);
        assert!(matches!(frame_len(&cd[12..]), Framing::Complete(20)));
        assert!(matches!(frame_len(&stun[..10]), Framing::NeedMore));
        // A TLS ClientHello on the plain TCP port.
        let hello = [
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0, 0, 0, 0, 0, 0, 0,
            0, 0,
        ];
        assert!(matches!(frame_len(&hello), Framing::Garbage));
    }
}
