//! The media runtime: the thin IO shell around the sans-IO [`Sfu`]. It owns
//! the UDP sockets, the clock and the thread, and talks to the HTTP side
//! through commands (in) and the [`LiveBoard`] (out).

use std::cell::Cell;
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::select_all;
use str0m::Candidate;
use str0m::net::{Protocol, Transmit};
use tokio::sync::{mpsc, oneshot};

use crate::board::LiveBoard;
use crate::limits::load::{LoadMeter, Loads};
use crate::limits::{Client, Limit, Refusal, SessionBook};
use prometheus_client::metrics::counter::Counter;

use crate::metrics::{self, Metrics};
use crate::sfu::layer::Preference;
use crate::sfu::setup::{self, Prepared, Setup};
use crate::sfu::shard::Remote;
use crate::sfu::{
    Answered, Consumer, DirectError, DirectTransport, JoinError, Joined, MemberError, MemberOffer,
    NoSuchSession, PeerId, PreparedDirect, PreparedMember, Produce, Produced, Producer, Role, Sfu,
    SfuEvent, SfuStats, Subscription,
};
use str0m::config::Fingerprint;

enum Command {
    /// Ends every session (shutdown): peers get a DTLS close_notify.
    CloseAll {
        reply: oneshot::Sender<()>,
    },
    /// A WHIP/WHEP session prepared off the media thread.
    Admit {
        prepared: Box<Prepared>,
        client: Client,
        reply: oneshot::Sender<Joined>,
    },
    Leave {
        live: String,
        role: Role,
        peer: PeerId,
        reply: oneshot::Sender<Result<(), NoSuchSession>>,
    },
    Trickle {
        live: String,
        role: Role,
        peer: PeerId,
        candidates: Vec<Candidate>,
        reply: oneshot::Sender<Result<(), NoSuchSession>>,
    },
    Layer {
        live: String,
        peer: PeerId,
        preference: Preference,
        reply: oneshot::Sender<Result<(), NoSuchSession>>,
    },
    AdmitDirect {
        prepared: Box<PreparedDirect>,
        live: String,
        role: Role,
        client: Client,
        reply: oneshot::Sender<DirectTransport>,
    },
    ConnectDirect {
        peer: PeerId,
        fingerprint: Fingerprint,
        reply: oneshot::Sender<Result<(), DirectError>>,
    },
    Produce {
        peer: PeerId,
        produce: Produce,
        reply: oneshot::Sender<Result<Produced, DirectError>>,
    },
    Producers {
        live: String,
        reply: oneshot::Sender<Vec<Producer>>,
    },
    Consume {
        peer: PeerId,
        producer: Producer,
        device_pts: Vec<u8>,
        reply: oneshot::Sender<Result<Consumer, DirectError>>,
    },
    AdmitMember {
        prepared: Box<PreparedMember>,
        room: String,
        client: Client,
        reply: oneshot::Sender<MemberOffer>,
    },
    Member {
        peer: PeerId,
        op: MemberCommand,
    },
}

/// What a room member's session is asked, once it exists.
enum MemberCommand {
    Answer(String, oneshot::Sender<Result<Answered, MemberError>>),
    Offer(
        Vec<Subscription>,
        oneshot::Sender<Result<Option<String>, MemberError>>,
    ),
    Cast(Option<String>, oneshot::Sender<Result<(), MemberError>>),
    Candidate(Candidate),
    Leave,
}

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error(transparent)]
    Join(#[from] JoinError),
    #[error(transparent)]
    NoSuchSession(#[from] NoSuchSession),
    #[error(transparent)]
    Direct(#[from] DirectError),
    #[error(transparent)]
    Member(#[from] MemberError),
    #[error("the media engine is not running")]
    Down,
    #[error(transparent)]
    Limited(#[from] Refusal),
}

/// The HTTP side's handle on the media runtime (one worker thread per
/// shard). Cheap to clone.
#[derive(Clone)]
pub struct MediaHandle {
    shards: Arc<[mpsc::Sender<Command>]>,
    /// Round-robin placement of new sessions.
    next: Arc<AtomicUsize>,
    /// The caster on air of each live (as the media workers tell).
    casters: Casters,
    /// Every caster session (WHIP, mediasoup producer transports) and its
    /// live, on air or still proving itself.
    cast_sessions: CastSessions,
    /// Sessions held, in all, per client address and per live.
    sessions: Arc<SessionBook>,
    /// What preparing a session needs of each shard.
    setups: Arc<[Setup]>,
    /// Sessions being prepared at once (one per core).
    preparing: Arc<tokio::sync::Semaphore>,
    /// How busy each worker is: new viewers go where there is room.
    loads: Arc<Loads>,
}

/// A session on its way to a worker: counted as joining it (the worker
/// cannot see it yet) until it is held there or has failed.
struct Placement {
    shard: usize,
    loads: Arc<Loads>,
}

impl Drop for Placement {
    fn drop(&mut self) {
        self.loads.joined(self.shard);
    }
}

/// Caster sessions and their lives.
type CastSessions = Arc<Mutex<HashMap<PeerId, String>>>;

impl MediaHandle {
    /// The worker for a new session of `role`: round-robin, skipping
    /// workers past `--max-load` for viewers (503 when all are). The
    /// session counts against the worker's room until the placement drops.
    fn place(&self, role: Role) -> Result<Placement, MediaError> {
        let start = self.next.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        let shard = if role == Role::Cast {
            self.loads.joining(start);
            start
        } else {
            self.loads
                .pick(start)
                .ok_or_else(|| MediaError::from(self.sessions.refuse(Limit::Busy)))?
        };
        Ok(Placement {
            shard,
            loads: self.loads.clone(),
        })
    }

    /// Runs `make` (building a session for `shard`: SDP, the Rtc and its
    /// key shares, certificates) on the blocking pool, a few at a time,
    /// never on the thread that forwards media.
    async fn prepare<T, E>(
        &self,
        shard: usize,
        make: impl FnOnce(&Setup, Instant) -> Result<T, E> + Send + 'static,
    ) -> Result<T, MediaError>
    where
        T: Send + 'static,
        E: Send + 'static,
        MediaError: From<E>,
    {
        let setup = self.setups[shard].clone();
        let _permit = self
            .preparing
            .acquire()
            .await
            .map_err(|_| MediaError::Down)?;
        let made = tokio::task::spawn_blocking(move || make(&setup, Instant::now()))
            .await
            .map_err(|_| MediaError::Down)?;
        Ok(made?)
    }

    /// A WHIP/WHEP session for `client` (within the session caps).
    pub async fn join(
        &self,
        live: &str,
        role: Role,
        offer: String,
        client: Client,
    ) -> Result<Joined, MediaError> {
        self.sessions.check(&client, live, role)?;
        let placed = self.place(role)?;
        let shard = placed.shard;
        let name = live.to_string();
        let prepared = self
            .prepare(shard, move |setup, now| {
                setup::prepare(setup, &name, role, &offer, now)
            })
            .await?;
        let joined = self
            .request(shard, |reply| Command::Admit {
                prepared: Box::new(prepared),
                client,
                reply,
            })
            .await?;
        if role == Role::Cast {
            self.cast_sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(joined.peer, live.to_string());
        }
        Ok(joined)
    }

    /// Whether `peer` is a caster session of `live` (on air or about to be).
    pub fn is_caster(&self, live: &str, peer: PeerId) -> bool {
        self.cast_sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer)
            .is_some_and(|l| l == live)
    }

    /// Every caster session of `live`.
    pub fn cast_sessions_of(&self, live: &str) -> Vec<PeerId> {
        self.cast_sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, l)| *l == live)
            .map(|(p, _)| *p)
            .collect()
    }

    /// A transport for a client that sets up media without SDP
    /// (mediasoup-client).
    pub async fn open_direct(
        &self,
        live: &str,
        role: Role,
        client: Client,
    ) -> Result<DirectTransport, MediaError> {
        self.sessions.check(&client, live, role)?;
        let placed = self.place(role)?;
        let shard = placed.shard;
        let name = live.to_string();
        let prepared = self
            .prepare(shard, move |setup, now| {
                crate::sfu::prepare_direct(setup, &name, role, now)
            })
            .await?;
        let live = live.to_string();
        self.request(shard, |reply| Command::AdmitDirect {
            prepared: Box::new(prepared),
            live,
            role,
            client,
            reply,
        })
        .await
    }

    pub async fn connect_direct(
        &self,
        peer: PeerId,
        fingerprint: Fingerprint,
    ) -> Result<(), MediaError> {
        Ok(self
            .request(peer.shard(), |reply| Command::ConnectDirect {
                peer,
                fingerprint,
                reply,
            })
            .await??)
    }

    /// Caster transport `peer` sends `produce`; its first producer makes it
    /// a caster, which takes the live once its media flows.
    pub async fn produce(
        &self,
        live: &str,
        peer: PeerId,
        produce: Produce,
    ) -> Result<Producer, MediaError> {
        let produced = self
            .request(peer.shard(), |reply| Command::Produce {
                peer,
                produce,
                reply,
            })
            .await??;
        // The live is taken once its media flows (the SFU tells the other
        // workers itself).
        if produced.took_over {
            self.cast_sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(peer, live.to_string());
        }
        Ok(produced.producer)
    }

    /// What `live`'s caster sends (asked of its shard: only it knows).
    pub async fn producers(&self, live: &str) -> Result<Vec<Producer>, MediaError> {
        let Some(caster) = self.caster(live) else {
            return Ok(Vec::new());
        };
        let live = live.to_string();
        self.request(caster.shard(), |reply| Command::Producers { live, reply })
            .await
    }

    pub async fn consume(
        &self,
        peer: PeerId,
        producer: Producer,
        device_pts: Vec<u8>,
    ) -> Result<Consumer, MediaError> {
        Ok(self
            .request(peer.shard(), |reply| Command::Consume {
                peer,
                producer,
                device_pts,
                reply,
            })
            .await??)
    }

    /// The live's caster on air, as the media workers last said.
    pub fn caster(&self, live: &str) -> Option<PeerId> {
        self.casters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(live)
            .copied()
    }

    pub async fn leave(&self, live: &str, role: Role, peer: PeerId) -> Result<(), MediaError> {
        let live = live.to_string();
        Ok(self
            .request(peer.shard(), |reply| Command::Leave {
                live,
                role,
                peer,
                reply,
            })
            .await??)
    }

    pub async fn trickle(
        &self,
        live: &str,
        role: Role,
        peer: PeerId,
        candidates: Vec<Candidate>,
    ) -> Result<(), MediaError> {
        let live = live.to_string();
        Ok(self
            .request(peer.shard(), |reply| Command::Trickle {
                live,
                role,
                peer,
                candidates,
                reply,
            })
            .await??)
    }

    /// Caps the video layer viewer `peer` gets.
    pub async fn set_layer(
        &self,
        live: &str,
        peer: PeerId,
        preference: Preference,
    ) -> Result<(), MediaError> {
        let live = live.to_string();
        Ok(self
            .request(peer.shard(), |reply| Command::Layer {
                live,
                peer,
                preference,
                reply,
            })
            .await??)
    }

    /// A SkyWay SFU room member's session and its first offer.
    pub async fn open_member(
        &self,
        room: &str,
        subs: Vec<Subscription>,
        client: Client,
    ) -> Result<MemberOffer, MediaError> {
        self.sessions.check(&client, room, Role::Play)?;
        let placed = self.place(Role::Play)?;
        let shard = placed.shard;
        let name = room.to_string();
        let prepared = self
            .prepare(shard, move |setup, now| {
                crate::sfu::prepare_member(setup, &name, &subs, now)
            })
            .await?;
        let room = room.to_string();
        self.request(shard, |reply| Command::AdmitMember {
            prepared: Box::new(prepared),
            room,
            client,
            reply,
        })
        .await
    }

    pub async fn member_answer(&self, peer: PeerId, sdp: String) -> Result<Answered, MediaError> {
        Ok(self
            .request(peer.shard(), |reply| Command::Member {
                peer,
                op: MemberCommand::Answer(sdp, reply),
            })
            .await??)
    }

    /// Offers `subs` to a member; `None` if nothing changed.
    pub async fn member_offer(
        &self,
        peer: PeerId,
        subs: Vec<Subscription>,
    ) -> Result<Option<String>, MediaError> {
        Ok(self
            .request(peer.shard(), |reply| Command::Member {
                peer,
                op: MemberCommand::Offer(subs, reply),
            })
            .await??)
    }

    /// A member publishes into `live` (or stops, with `None`).
    pub async fn member_cast(&self, peer: PeerId, live: Option<&str>) -> Result<(), MediaError> {
        let name = live.map(str::to_string);
        self.request(peer.shard(), |reply| Command::Member {
            peer,
            op: MemberCommand::Cast(name, reply),
        })
        .await??;
        Ok(())
    }

    pub async fn member_candidate(&self, peer: PeerId, candidate: Candidate) {
        let op = MemberCommand::Candidate(candidate);
        let _ = self.send(peer.shard(), Command::Member { peer, op }).await;
    }

    pub async fn member_leave(&self, peer: PeerId) {
        let op = MemberCommand::Leave;
        let _ = self.send(peer.shard(), Command::Member { peer, op }).await;
    }

    /// Ends every session on every shard (shutdown).
    pub async fn close_all(&self) {
        for shard in 0..self.shards.len() {
            let _ = self
                .request(shard, |reply| Command::CloseAll { reply })
                .await;
        }
    }

    /// Sends a command that wants no reply.
    async fn send(&self, shard: usize, command: Command) -> Result<(), MediaError> {
        let tx = self.shards.get(shard).ok_or(NoSuchSession)?;
        tx.send(command).await.map_err(|_| MediaError::Down)
    }

    /// Sends a command and waits for the media thread's reply.
    async fn request<T>(
        &self,
        shard: usize,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, MediaError> {
        let Some(tx) = self.shards.get(shard) else {
            return Err(NoSuchSession.into());
        };
        let (reply, rx) = oneshot::channel();
        tx.send(command(reply))
            .await
            .map_err(|_| MediaError::Down)?;
        rx.await.map_err(|_| MediaError::Down)
    }
}

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
fn bind_tcp(sockets: &mut [MediaSocket]) -> io::Result<()> {
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
fn bind(
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
const SOCKET_BUFFER: usize = 4 << 20;

fn set_buffers(socket: &UdpSocket) {
    let s = socket2::SockRef::from(socket);
    if let Err(e) = s
        .set_recv_buffer_size(SOCKET_BUFFER)
        .and(s.set_send_buffer_size(SOCKET_BUFFER))
    {
        tracing::debug!("media socket buffers: {e}");
    }
}

/// Starts the media runtime: one thread per shard, each with its own
/// sockets (`shards[i]`) and `Sfu` (`sfus[i]`).
/// `observer` hears every event but live states (those go to `board`).
pub fn spawn(
    shards: Vec<Vec<MediaSocket>>,
    sfus: Vec<Sfu>,
    board: Arc<LiveBoard>,
    metrics: Arc<Metrics>,
    observer: Option<mpsc::UnboundedSender<SfuEvent>>,
    sessions: Arc<SessionBook>,
) -> io::Result<MediaHandle> {
    assert_eq!(shards.len(), sfus.len(), "one Sfu per shard");
    let setups: Arc<[Setup]> = sfus.iter().map(Sfu::setup).collect();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let casters = Casters::default();
    let cast_sessions = CastSessions::default();
    let loads = Arc::new(Loads::new(shards.len(), sessions.caps().max_load));
    let quota = crate::limits::cpu_quota::cores();
    if let Some(q) = quota {
        tracing::info!("CPU quota: {q:.2} cores; media workers measure their load against it");
    }
    let share = crate::limits::load::worker_share(quota, shards.len());
    let mut commands = Vec::new();
    let mut remotes = Vec::new();
    let mut remote_rxs = Vec::new();
    for _ in 0..shards.len() {
        let (tx, rx) = mpsc::channel(256);
        commands.push((tx, Some(rx)));
        // Media between shards: a full queue drops, as a congested link would.
        let (link, inbox) = shard_link(REMOTE_QUEUE);
        remotes.push(link);
        remote_rxs.push(Some(inbox));
    }
    for (i, (sockets, sfu)) in shards.into_iter().zip(sfus).enumerate() {
        for s in &sockets {
            s.socket.set_nonblocking(true)?;
            set_buffers(&s.socket);
            if let Some(l) = &s.tcp {
                l.set_nonblocking(true)?;
            }
        }
        let rx = commands[i].1.take().expect("once");
        let remote_rx = remote_rxs[i].take().expect("once");
        let remotes = remotes.clone();
        let board = board.clone();
        let metrics = metrics.clone();
        let observer = observer.clone();
        let casters = casters.clone();
        let cast_sessions = cast_sessions.clone();
        let sessions = sessions.clone();
        let loads = loads.clone();
        std::thread::Builder::new()
            .name(format!("vessel-media-{i}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("cannot start the media runtime: {e}");
                        std::process::exit(1);
                    }
                };
                let shard = Shard {
                    index: i,
                    remote_rx,
                    remotes,
                    counters: MediaCounters::new(&metrics),
                    metrics,
                    published: Cell::new(SfuStats::default()),
                    observer,
                    casters,
                    cast_sessions,
                    sessions,
                    loads,
                    share,
                };
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    rt.block_on(run(sockets, sfu, board, rx, shard))
                }));
                match ran {
                    // The HTTP side went away: the process is shutting down.
                    Ok(Ok(())) => {}
                    // Without the media thread every live is lost: say so and
                    // exit, so that a supervisor (systemd, Docker) restarts
                    // Vessel instead of leaving it up but mute.
                    Ok(Err(e)) => {
                        tracing::error!("media runtime failed: {e}; exiting");
                        std::process::exit(1);
                    }
                    Err(_) => {
                        tracing::error!("media runtime panicked; exiting");
                        std::process::exit(1);
                    }
                }
            })?;
    }
    Ok(MediaHandle {
        shards: commands.into_iter().map(|(tx, _)| tx).collect(),
        next: Arc::new(AtomicUsize::new(0)),
        casters,
        cast_sessions,
        sessions,
        setups,
        preparing: Arc::new(tokio::sync::Semaphore::new(cores)),
        loads,
    })
}

/// Media hand-offs queued towards one shard before they are dropped.
const REMOTE_QUEUE: usize = 4096;

/// The way to one shard: media on a bounded queue that drops when full, as
/// a congested link would; control (who watches what, keyframe requests, a
/// caster gone) on one that never drops it — a lost `Interest` would leave
/// that shard's viewers without video until their audience emptied.
#[derive(Clone)]
struct ShardLink {
    media: mpsc::Sender<Remote>,
    control: mpsc::UnboundedSender<Remote>,
}

/// What a shard receives from the others.
struct ShardInbox {
    media: mpsc::Receiver<Remote>,
    control: mpsc::UnboundedReceiver<Remote>,
}

fn shard_link(media_queue: usize) -> (ShardLink, ShardInbox) {
    let (media, media_rx) = mpsc::channel(media_queue);
    let (control, control_rx) = mpsc::unbounded_channel();
    (
        ShardLink { media, control },
        ShardInbox {
            media: media_rx,
            control: control_rx,
        },
    )
}

impl ShardLink {
    /// Passes `msg` on; false if it was media dropped for a full queue.
    fn send(&self, msg: Remote) -> bool {
        match msg {
            Remote::Media { .. } => self.media.try_send(msg).is_ok(),
            control => {
                let _ = self.control.send(control);
                true
            }
        }
    }
}

impl ShardInbox {
    /// The next message: control first, it is small and must not wait
    /// behind a queue of media.
    async fn recv(&mut self) -> Option<Remote> {
        tokio::select! {
            biased;
            Some(m) = self.control.recv() => Some(m),
            Some(m) = self.media.recv() => Some(m),
            else => None,
        }
    }

    fn try_recv(&mut self) -> Option<Remote> {
        self.control
            .try_recv()
            .or_else(|_| self.media.try_recv())
            .ok()
    }
}

/// A media thread's place among the shards.
struct Shard {
    index: usize,
    remote_rx: ShardInbox,
    remotes: Vec<ShardLink>,
    metrics: Arc<Metrics>,
    /// This shard's handles on the per-datagram counters: one atomic add
    /// each per loop turn, no label lookup.
    counters: MediaCounters,
    /// The `Sfu` counters as last added to `metrics`.
    published: Cell<SfuStats>,
    /// Who hears of sessions ending and casts starting and ending.
    observer: Option<mpsc::UnboundedSender<SfuEvent>>,
    /// The handle's caster registry: a caster that ends leaves it.
    casters: Casters,
    cast_sessions: CastSessions,
    /// Where this worker says how busy it is.
    loads: Arc<Loads>,
    /// Cores' worth of CPU this worker may use (its share of a quota).
    share: f64,
    /// Sessions this shard opens and ends are booked here.
    sessions: Arc<SessionBook>,
}

/// The current caster of each live (see [`MediaHandle::caster`]).
type Casters = Arc<Mutex<HashMap<String, PeerId>>>;

/// `peer` no longer casts `live`: it leaves the registry, unless another
/// caster has taken its place there.
fn forget_caster(casters: &Casters, live: &str, peer: PeerId) {
    let mut map = casters.lock().unwrap_or_else(|e| e.into_inner());
    if map.get(live) == Some(&peer) {
        map.remove(live);
    }
}

struct MediaCounters {
    packets_in: Counter,
    bytes_in: Counter,
    packets_out: Counter,
    bytes_out: Counter,
}

impl MediaCounters {
    fn new(m: &Metrics) -> Self {
        Self {
            packets_in: m.packets.get_or_create(&metrics::IN).clone(),
            bytes_in: m.bytes.get_or_create(&metrics::IN).clone(),
            packets_out: m.packets.get_or_create(&metrics::OUT).clone(),
            bytes_out: m.bytes.get_or_create(&metrics::OUT).clone(),
        }
    }
}

struct Socket {
    socket: tokio::net::UdpSocket,
    announced: SocketAddr,
}

async fn run(
    sockets: Vec<MediaSocket>,
    mut sfu: Sfu,
    board: Arc<LiveBoard>,
    mut commands: mpsc::Receiver<Command>,
    mut shard: Shard,
) -> io::Result<()> {
    let (tcp_tx, mut tcp_rx) = mpsc::channel::<TcpEvent>(1024);
    let mut udp = Vec::new();
    for s in sockets {
        if let Some(listener) = s.tcp {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            tokio::spawn(tcp::accept(listener, s.announced, tcp_tx.clone()));
        }
        udp.push(Socket {
            socket: tokio::net::UdpSocket::from_std(s.socket)?,
            announced: s.announced,
        });
    }
    drop(tcp_tx);
    let sockets = udp;
    let mut tcp_conns: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut buf = vec![0u8; 2048];
    let mut load = LoadMeter::new(Instant::now(), thread_cpu(), shard.share);
    loop {
        flush(&mut sfu, &sockets, &tcp_conns, &board, &shard).await;
        let wake = sfu
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        let waiting = Instant::now();
        if let Some(permille) = load.poll(waiting, thread_cpu) {
            let census = sfu.session_census(waiting, crate::limits::load::SETTLE);
            shard
                .loads
                .set(shard.index, permille, census.sessions, census.settled);
        }
        let readable = select_all(sockets.iter().map(|s| Box::pin(s.socket.readable())));
        tokio::select! {
            _ = readable => {
                load.waited(waiting, Instant::now());
                let (mut packets, mut bytes) = (0, 0);
                for s in &sockets {
                    // Drain what is queued; a bounded batch keeps timers fair.
                    for _ in 0..64 {
                        match s.socket.try_recv_from(&mut buf) {
                            Ok((n, source)) => {
                                packets += 1;
                                bytes += n as u64;
                                // A caster's run of packets (a frame) is
                                // fanned out together when it ends.
                                sfu.handle_receive_run(
                                    Instant::now(), Protocol::Udp, source, s.announced, &buf[..n]);
                                // Its copies go out before the rest of the
                                // batch is read: they should not wait for
                                // the viewers' RTCP behind them.
                                if sfu.has_forwarded() {
                                    send_transmits(&mut sfu, &sockets, &tcp_conns, &shard).await;
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) => {
                                // ICMP errors (a viewer went away) surface here.
                                tracing::debug!("media socket: {e}");
                                break;
                            }
                        }
                    }
                }
                // The batch ended: a run still waiting goes out now.
                sfu.process(Instant::now());
                shard.counters.packets_in.inc_by(packets);
                shard.counters.bytes_in.inc_by(bytes);
            }
            Some(event) = tcp_rx.recv() => {
                load.waited(waiting, Instant::now());
                match event {
                    TcpEvent::Open { peer, writer } => {
                        tcp_conns.insert(peer, writer);
                    }
                    TcpEvent::Frame { peer, local, data } => {
                        shard.counters.packets_in.inc();
                        shard.counters.bytes_in.inc_by(data.len() as u64);
                        sfu.handle_receive(Instant::now(), Protocol::Tcp, peer, local, &data);
                    }
                    TcpEvent::Closed { peer } => {
                        tcp_conns.remove(&peer);
                    }
                }
            }
            cmd = commands.recv() => {
                load.waited(waiting, Instant::now());
                match cmd {
                    // The goodbyes (DTLS close_notify) leave before the
                    // reply lets the process exit.
                    Some(Command::CloseAll { reply }) => {
                        sfu.close_all(Instant::now());
                        flush(&mut sfu, &sockets, &tcp_conns, &board, &shard).await;
                        let _ = reply.send(());
                    }
                    // A command that fails inside one session ends that
                    // session; its caller hears the media engine did not
                    // answer.
                    Some(cmd) => {
                        sfu.isolated(Instant::now(), |sfu| handle(sfu, cmd, &shard.sessions));
                        sfu.process(Instant::now());
                    }
                    None => return Ok(()),
                }
            }
            Some(msg) = shard.remote_rx.recv() => {
                load.waited(waiting, Instant::now());
                let now = Instant::now();
                sfu.isolated(now, |sfu| sfu.handle_remote(msg, now));
                // Take what else is queued in the same wake-up.
                while let Some(msg) = shard.remote_rx.try_recv() {
                    sfu.isolated(now, |sfu| sfu.handle_remote(msg, now));
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => load.waited(waiting, Instant::now()),
        }
        sfu.handle_timeout(Instant::now());
    }
}

/// CPU time the calling thread has used (zero if the clock is missing).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `ts` is.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// What the ICE-TCP connections tell the media loop.
pub(crate) enum TcpEvent {
    Open {
        peer: SocketAddr,
        writer: mpsc::Sender<Vec<u8>>,
    },
    Frame {
        peer: SocketAddr,
        local: SocketAddr,
        data: Vec<u8>,
    },
    Closed {
        peer: SocketAddr,
    },
}

/// ICE-TCP connections: RFC 4571 framing (a 16-bit length before each
/// STUN, DTLS or SRTP packet) between a TCP stream and the media loop.
pub(crate) mod tcp {
    use std::net::SocketAddr;
    use std::time::Duration;

    use tokio::io::{AsyncRead, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::net::tcp::OwnedWriteHalf;
    use tokio::sync::mpsc;

    use super::TcpEvent;
    use crate::limits::stream::{Deadlines, Ended, read_exact_within};

    /// Connections beyond this are refused: each costs two tasks.
    const MAX_CONNECTIONS: usize = 4096;
    /// Frames queued towards one connection; beyond, frames are dropped
    /// (as UDP would lose them) rather than let a slow reader grow memory.
    const WRITE_QUEUE: usize = 512;

    pub async fn accept(listener: TcpListener, local: SocketAddr, events: mpsc::Sender<TcpEvent>) {
        let open = std::sync::Arc::new(());
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!("ICE-TCP accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if std::sync::Arc::strong_count(&open) > MAX_CONNECTIONS {
                tracing::warn!(%peer, "too many ICE-TCP connections; refused");
                continue;
            }
            let _ = stream.set_nodelay(true);
            let (read, write) = stream.into_split();
            let (writer, queue) = mpsc::channel(WRITE_QUEUE);
            if events.send(TcpEvent::Open { peer, writer }).await.is_err() {
                return;
            }
            let guard = open.clone();
            tokio::spawn(write_frames(write, queue));
            let events = events.clone();
            tokio::spawn(async move {
                let _guard = guard;
                if let Ended::TimedOut(why) = read_frames(read, peer, local, &events).await {
                    tracing::debug!(%peer, "ICE-TCP connection {why}; closed");
                }
                let _ = events.send(TcpEvent::Closed { peer }).await;
            });
        }
    }

    /// Reads RFC 4571 frames until the peer closes or misses a deadline
    /// ([`Deadlines::ICE_TCP`]).
    pub(crate) async fn read_frames<R: AsyncRead + Unpin>(
        mut read: R,
        peer: SocketAddr,
        local: SocketAddr,
        events: &mpsc::Sender<TcpEvent>,
    ) -> Ended {
        let d = Deadlines::ICE_TCP;
        let mut spoken = false;
        loop {
            let mut len = [0u8; 2];
            if let Err(ended) = read_exact_within(&mut read, &mut len, &d, spoken, false).await {
                return ended;
            }
            let mut data = vec![0u8; u16::from_be_bytes(len) as usize];
            if let Err(ended) = read_exact_within(&mut read, &mut data, &d, spoken, true).await {
                return ended;
            }
            spoken = true;
            let frame = TcpEvent::Frame { peer, local, data };
            if events.send(frame).await.is_err() {
                return Ended::Closed;
            }
        }
    }

    /// Writes queued frames; a peer that takes longer than a frame's
    /// deadline to accept one is not reading, and its writer ends.
    async fn write_frames(mut write: OwnedWriteHalf, mut queue: mpsc::Receiver<Vec<u8>>) {
        while let Some(frame) = queue.recv().await {
            let wrote = tokio::time::timeout(Deadlines::ICE_TCP.frame, write.write_all(&frame));
            if !matches!(wrote.await, Ok(Ok(()))) {
                return;
            }
        }
    }

    /// `packet` with its RFC 4571 length prefix.
    pub fn frame(packet: &[u8]) -> Option<Vec<u8>> {
        let len = u16::try_from(packet.len()).ok()?;
        let mut f = Vec::with_capacity(packet.len() + 2);
        f.extend_from_slice(&len.to_be_bytes());
        f.extend_from_slice(packet);
        Some(f)
    }

    #[cfg(test)]
    mod tests {
        use tokio::io::AsyncWriteExt;

        use super::*;

        #[tokio::test(start_paused = true)]
        async fn a_connection_that_goes_quiet_or_stalls_mid_frame_is_closed() {
            let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
            let (tx, mut rx) = mpsc::channel(8);
            // One frame, then silence: read, then closed after `idle`.
            let (ours, mut theirs) = tokio::io::duplex(256);
            theirs.write_all(&frame(b"check").unwrap()).await.unwrap();
            let start = tokio::time::Instant::now();
            let ended = read_frames(ours, addr, addr, &tx).await;
            assert_eq!(ended, Ended::TimedOut("idle"));
            assert_eq!(start.elapsed(), Deadlines::ICE_TCP.idle);
            assert!(matches!(rx.try_recv(), Ok(TcpEvent::Frame { data, .. }) if data == b"check"));
            // A frame announced at 100 bytes with 3 sent: closed after `first`
            // (it never spoke a whole frame).
            let (ours, mut theirs) = tokio::io::duplex(256);
            theirs.write_all(&[0, 100, 1, 2, 3]).await.unwrap();
            let ended = read_frames(ours, addr, addr, &tx).await;
            assert_eq!(ended, Ended::TimedOut("said nothing"));
            // After a whole frame, half of the next: the frame deadline.
            let (ours, mut theirs) = tokio::io::duplex(256);
            theirs.write_all(&frame(b"check").unwrap()).await.unwrap();
            theirs.write_all(&[0, 100, 1]).await.unwrap();
            let start = tokio::time::Instant::now();
            let ended = read_frames(ours, addr, addr, &tx).await;
            assert_eq!(ended, Ended::TimedOut("stalled inside a frame"));
            assert_eq!(start.elapsed(), Deadlines::ICE_TCP.frame);
            drop(theirs);
        }

        #[test]
        fn frames_carry_a_big_endian_length() {
            assert_eq!(super::frame(&[7, 8, 9]), Some(vec![0, 3, 7, 8, 9]));
            assert_eq!(super::frame(&vec![0; 70_000]), None, "no frame over 64 KiB");
        }
    }
}

fn handle(sfu: &mut Sfu, cmd: Command, sessions: &SessionBook) {
    let now = Instant::now();
    match cmd {
        // The run loop takes this one itself, to flush before replying.
        Command::CloseAll { reply } => {
            sfu.close_all(now);
            let _ = reply.send(());
        }
        Command::Admit {
            prepared,
            client,
            reply,
        } => {
            let (live, role) = (prepared.live().to_string(), prepared.role());
            let joined = sfu.admit_prepared(*prepared, now);
            sessions.opened(joined.peer, &client, &live, role);
            let _ = reply.send(joined);
        }
        Command::Leave {
            live,
            role,
            peer,
            reply,
        } => {
            let _ = reply.send(sfu.leave(&live, role, peer, now));
        }
        Command::Trickle {
            live,
            role,
            peer,
            candidates,
            reply,
        } => {
            let _ = reply.send(sfu.add_remote_candidates(
                &live,
                role,
                peer,
                candidates,
                Instant::now(),
            ));
        }
        Command::Layer {
            live,
            peer,
            preference,
            reply,
        } => {
            let _ = reply.send(sfu.set_preference(&live, peer, preference, now));
        }
        Command::AdmitDirect {
            prepared,
            live,
            role,
            client,
            reply,
        } => {
            let opened = sfu.admit_direct(*prepared, now);
            sessions.opened(opened.peer, &client, &live, role);
            let _ = reply.send(opened);
        }
        Command::ConnectDirect {
            peer,
            fingerprint,
            reply,
        } => {
            let _ = reply.send(sfu.connect_direct(peer, fingerprint, now));
        }
        Command::Produce {
            peer,
            produce,
            reply,
        } => {
            let _ = reply.send(sfu.produce(peer, produce, now));
        }
        Command::Producers { live, reply } => {
            let _ = reply.send(sfu.producers(&live));
        }
        Command::Consume {
            peer,
            producer,
            device_pts,
            reply,
        } => {
            let _ = reply.send(sfu.consume(peer, producer, &device_pts, now));
        }
        Command::AdmitMember {
            prepared,
            room,
            client,
            reply,
        } => {
            let offered = sfu.admit_member(*prepared, now);
            sessions.opened(offered.peer, &client, &room, Role::Play);
            let _ = reply.send(offered);
        }
        Command::Member { peer, op } => match op {
            MemberCommand::Answer(sdp, reply) => {
                let _ = reply.send(sfu.member_answer(peer, &sdp, now));
            }
            MemberCommand::Offer(subs, reply) => {
                let _ = reply.send(sfu.member_offer(peer, &subs, now));
            }
            MemberCommand::Cast(live, reply) => {
                let _ = reply.send(sfu.member_cast(peer, live.as_deref(), now));
            }
            MemberCommand::Candidate(c) => {
                let _ = sfu.member_candidate(peer, c, now);
            }
            MemberCommand::Leave => {
                let _ = sfu.member_leave(peer, now);
            }
        },
    }
}

/// Hands what the SFU has to send to the kernel (and other shards' media
/// to them), then records how long each forwarded caster packet took.
async fn send_transmits(
    sfu: &mut Sfu,
    sockets: &[Socket],
    tcp_conns: &HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
    shard: &Shard,
) {
    while let Some((to, msg)) = sfu.poll_remote() {
        if let Some(link) = shard.remotes.get(to) {
            link.send(msg);
        }
    }
    // UDP datagrams are gathered per socket and sent in batches.
    let mut udp: Vec<Vec<Transmit>> = sockets.iter().map(|_| Vec::new()).collect();
    while let Some(t) = sfu.poll_transmit() {
        if t.proto == Protocol::Tcp {
            if let (Some(conn), Some(frame)) =
                (tcp_conns.get(&t.destination), tcp::frame(&t.contents))
            {
                // A full queue drops the packet, as a congested UDP path would.
                if conn.try_send(frame).is_ok() {
                    shard.counters.packets_out.inc();
                    shard.counters.bytes_out.inc_by(t.contents.len() as u64);
                }
            }
            continue;
        }
        let i = sockets
            .iter()
            .position(|s| s.announced == t.source)
            .unwrap_or(0);
        udp[i].push(t);
    }
    let out = udp.iter().flatten();
    let (packets, bytes) = out.fold((0, 0), |(p, b), t| (p + 1, b + t.contents.len() as u64));
    if packets > 0 {
        shard.counters.packets_out.inc_by(packets);
        shard.counters.bytes_out.inc_by(bytes);
    }
    for (socket, transmits) in sockets.iter().zip(&udp) {
        if transmits.is_empty() {
            continue;
        }
        let datagrams: Vec<(SocketAddr, &[u8])> = transmits
            .iter()
            .map(|t| (t.destination, &t.contents[..]))
            .collect();
        crate::udp_batch::send_all(&socket.socket, &datagrams).await;
    }
    // The copies are with the kernel: how long each caster packet took.
    let sent = Instant::now();
    for arrival in sfu.take_forwarded() {
        let delay = sent.saturating_duration_since(arrival);
        shard.metrics.forwarding_delay.observe(delay.as_secs_f64());
    }
}

async fn flush(
    sfu: &mut Sfu,
    sockets: &[Socket],
    tcp_conns: &HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
    board: &LiveBoard,
    shard: &Shard,
) {
    send_transmits(sfu, sockets, tcp_conns, shard).await;
    let stats = sfu.stats();
    if stats != shard.published.get() {
        shard.metrics.add_sfu(&stats, &shard.published.get());
        shard.published.set(stats);
    }
    while let Some(e) = sfu.poll_event() {
        match e {
            SfuEvent::Live(state) => board.update_from(shard.index, state),
            other => {
                if let SfuEvent::SessionEnded { peer, .. } = &other {
                    shard.sessions.ended(*peer);
                }
                match &other {
                    SfuEvent::CastStarted { live, caster } => {
                        let mut map = shard.casters.lock().unwrap_or_else(|e| e.into_inner());
                        map.insert(live.clone(), *caster);
                    }
                    SfuEvent::SessionEnded {
                        peer,
                        live,
                        role: Role::Cast,
                    } => {
                        forget_caster(&shard.casters, live, *peer);
                        let mut sessions = shard
                            .cast_sessions
                            .lock()
                            .unwrap_or_else(|e| e.into_inner());
                        sessions.remove(peer);
                    }
                    SfuEvent::CastEnded { live, caster: peer } => {
                        forget_caster(&shard.casters, live, *peer)
                    }
                    _ => {}
                }
                if let Some(tx) = &shard.observer {
                    let _ = tx.send(other);
                }
            }
        }
    }
}

#[cfg(test)]
mod routes_tests {
    use super::*;

    #[tokio::test]
    async fn control_between_shards_gets_through_a_full_media_queue() {
        let (link, mut inbox) = shard_link(2);
        let live: Arc<str> = Arc::from("show");
        let media = || Remote::Media {
            live: live.clone(),
            forwards: Arc::from(Vec::new()),
        };
        let sent: Vec<bool> = (0..5).map(|_| link.send(media())).collect();
        assert_eq!(
            sent,
            [true, true, false, false, false],
            "media beyond the queue is dropped"
        );
        assert!(link.send(Remote::Interest {
            live: live.clone(),
            shard: 1,
            watching: true
        }));
        // The control message comes first, then what media fitted.
        assert!(matches!(inbox.recv().await, Some(Remote::Interest { .. })));
        assert!(matches!(inbox.recv().await, Some(Remote::Media { .. })));
        assert!(matches!(inbox.try_recv(), Some(Remote::Media { .. })));
        assert!(inbox.try_recv().is_none());
    }

    #[test]
    fn a_caster_that_ends_leaves_the_registry_unless_replaced() {
        let casters = Casters::default();
        let (a, b) = (PeerId::random_on(0), PeerId::random_on(1));
        casters.lock().unwrap().insert("show".into(), a);
        casters.lock().unwrap().insert("other".into(), b);
        forget_caster(&casters, "other", a);
        assert_eq!(
            casters.lock().unwrap().get("other"),
            Some(&b),
            "another's entry stays"
        );
        forget_caster(&casters, "show", a);
        assert!(!casters.lock().unwrap().contains_key("show"));
    }

    #[test]
    fn announced_public_addresses_route_to_the_local_socket() {
        let public: SocketAddr = "203.0.113.7:0".parse().unwrap();
        let (sockets, announced) =
            bind_udp_and_tcp("127.0.0.1:0".parse().unwrap(), &[public]).unwrap();
        let port = sockets[0].socket.local_addr().unwrap().port();
        assert_eq!(announced, vec![SocketAddr::new(public.ip(), port)]);
        let routes = local_routes(&sockets, &announced).unwrap();
        assert_eq!(
            routes,
            vec![(announced[0], SocketAddr::new([127, 0, 0, 1].into(), port))]
        );
    }
}
