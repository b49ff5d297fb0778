//! The media loop of one shard: read datagrams, hand them to the `Sfu`,
//! send what it says, sleep until its next timeout.

use super::*;

pub(super) struct Socket {
    pub(super) socket: tokio::net::UdpSocket,
    pub(super) announced: SocketAddr,
}

pub(super) async fn run(
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
pub(super) fn thread_cpu() -> Duration {
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

/// Hands what the SFU has to send to the kernel (and other shards' media
/// to them), then records how long each forwarded caster packet took.
pub(super) async fn send_transmits(
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

pub(super) async fn flush(
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
