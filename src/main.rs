use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::collections::HashMap;

use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use axum::serve::{ListenerExt, TapIo};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use vessel::access::{Access, AccessConfig, LiveRules, Webhook};
use vessel::board::LiveBoard;
use vessel::chat::ChatConfig;
use vessel::cluster::{Cluster, Load};
use vessel::config::{self, Config, LimitsFlags, LoadError, LogFormat, TurnFlags};
use vessel::http::peerjs::PeerHub;
use vessel::http::skyway::SkywayHub;
use vessel::http::tls::TlsListener;
use vessel::http::{AppState, ChatHub, SocketIoLayers, router};
use vessel::limits::connections::GuardedListener;
use vessel::limits::{ConnectionCaps, Limits, LimitsConfig, SessionCaps};
use vessel::loadtest::LoadtestArgs;
use vessel::media;
use vessel::metrics::Metrics;
use vessel::peerjs::PeerConfig;
use vessel::sfu::SfuEvent;
use vessel::sfu::{Sfu, SfuConfig};
use vessel::skyway::SkywayConfig;
use vessel::turn::runtime::TurnSockets;
use vessel::turn::{
    self, Credentials, IceServers, Ledger, Nonces, PeerPolicy, Quota, TurnConfig, TurnServer,
};

/// Vessel: a self-hosted live streaming server (WHIP/WHEP, WebRTC SFU,
/// STUN/TURN, built-in pages). `vessel loadtest` measures one.
#[derive(clap::Parser)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: Config,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Load-test a WHIP/WHEP server (this one or any other): one caster,
    /// many viewers, a report of delivery, loss, delay and server cost.
    Loadtest(LoadtestArgs),
}

fn main() {
    let (cli, lives) = match config::parse::<Cli>(std::env::args_os().collect()) {
        Ok(parsed) => parsed,
        Err(LoadError::Clap(e)) => e.exit(),
        Err(LoadError::Invalid(message)) => {
            eprintln!("error: {message}");
            std::process::exit(2);
        }
    };
    if let Err(message) = cli.config.check() {
        eprintln!("error: {message}");
        std::process::exit(2);
    }
    match cli.command {
        Some(Command::Loadtest(args)) => loadtest(args),
        None => serve(cli.config, lives),
    }
}

fn loadtest(args: LoadtestArgs) {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    str0m::crypto::from_feature_flags().install_process_default();
    let json = args.json;
    if args.floor {
        report(
            vessel::loadtest::floor::run(&args),
            json,
            "loadtest --floor",
        );
    } else if args.hls {
        report(vessel::loadtest::hls::run(&args), json, "loadtest --hls");
    } else {
        report(vessel::loadtest::run(args), json, "loadtest");
    }
}

/// Prints a report as text or JSON, or the error and exits 1.
fn report<R: serde::Serialize + std::fmt::Display>(
    result: Result<R, String>,
    json: bool,
    what: &str,
) {
    match result {
        Ok(report) if json => println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("serializable")
        ),
        Ok(report) => print!("{report}"),
        Err(e) => {
            eprintln!("{what}: {e}");
            std::process::exit(1);
        }
    }
}

#[tokio::main]
async fn serve(config: Config, lives: HashMap<String, LiveRules>) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("vessel=info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
        LogFormat::Text => logs
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init(),
    }
    if let Err(e) = run(config, lives).await {
        tracing::error!("{e}");
        std::process::exit(1);
    }
}

async fn run(config: Config, lives: HashMap<String, LiveRules>) -> Result<(), String> {
    str0m::crypto::from_feature_flags().install_process_default();
    let fd_limit = raise_fd_limit();
    vessel::memory::spawn_trimmer(vessel::memory::TRIM_EVERY);

    let workers = config.workers();
    let (shards, shard_addrs) =
        media::bind_shards(config.media, &config.announced_media_addrs(), workers).map_err(
            |e| {
                format!(
                    "cannot bind the media port{} {} (UDP, and TCP for ICE-TCP): {e} \
                     (is another Vessel running? choose another with --media, or fewer \
                     ports with --workers)",
                    if workers > 1 { "s from" } else { "" },
                    config.media
                )
            },
        )?;
    let mut own_routes = Vec::new();
    for (sockets, announced) in shards.iter().zip(&shard_addrs) {
        own_routes.extend(
            media::local_routes(sockets, announced)
                .map_err(|e| format!("media socket address: {e}"))?,
        );
    }
    let announced: Vec<SocketAddr> = shard_addrs.iter().flatten().copied().collect();
    let board = Arc::new(LiveBoard::default());
    let metrics = Arc::new(Metrics::new());
    let sfus = shard_addrs
        .iter()
        .enumerate()
        .map(|(shard, addrs)| {
            let mut sfu_config = SfuConfig::new(addrs.clone());
            sfu_config.ice_tcp = true;
            sfu_config.shard = shard;
            sfu_config.shards = workers;
            sfu_config.connect_timeout = Duration::from_secs(config.limits.connect_timeout);
            Sfu::new(sfu_config)
        })
        .collect();
    // The SkyWay signaling and the cluster hear when casts start and end.
    let (observer, media_events, cluster_events) =
        observers(!config.skyway.disabled, config.cluster.cluster.is_some());
    let limits = Arc::new(Limits::with_metrics(
        limits_config(&config.limits, workers, fd_limit),
        &metrics,
    ));
    let media = media::spawn(
        shards,
        sfus,
        board.clone(),
        metrics.clone(),
        observer,
        limits.sessions.clone(),
    )
    .map_err(|e| format!("cannot start the media thread: {e}"))?;
    // Rate state of addresses gone quiet is forgotten.
    let tidy = limits.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(30)).await;
            tidy.tidy();
        }
    });

    let ice = if config.turn.disabled {
        None
    } else {
        Some(start_turn(
            &config.turn,
            &announced,
            own_routes,
            workers,
            metrics.clone(),
        )?)
    };

    let access = Arc::new(access(&config, lives)?);
    let tls = match (&config.http_tls_cert, &config.http_tls_key) {
        (Some(cert), Some(key)) => Some(vessel::tls::acceptor(cert, key, &[b"http/1.1"])?),
        _ => None,
    };
    let listener = TcpListener::bind(config.http).await.map_err(|e| {
        format!(
            "cannot listen on {}: {e} (choose another address with --http)",
            config.http
        )
    })?;
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let hls = (!config.hls.hls_disabled).then(|| {
        let mut hls = vessel::hls::hub::HlsConfig::default();
        hls.segmenter.part_target = Duration::from_secs_f64(config.hls.hls_part);
        hls.record = config.hls.record.clone();
        hls.record_every = Duration::from_secs(config.hls.record_every_minutes * 60);
        hls.record_dir = Some(config.hls.record_dir.clone());
        hls.record_keep = config
            .hls
            .record_keep_days
            .map(|d| Duration::from_secs(u64::from(d) * 86_400));
        hls.record_webhook = config.hls.record_webhook.clone();
        vessel::hls::hub::Hub::new(hls, media.clone())
    });
    if let Some(hub) = &hls {
        tokio::spawn(hub.clone().record_lives(board.clone(), access.clone()));
    }
    if config.hls.record.is_some() && hls.is_none() {
        return Err("--record writes what LL-HLS packages: it cannot run with --no-hls".into());
    }
    // The URL other nodes reach this one at needs the port bound above.
    let http = listener.local_addr().unwrap_or(config.http);
    let cluster = match (&config.cluster.cluster, cluster_events) {
        (Some(_), Some(events)) => {
            let node = Node {
                media: &media,
                metrics: &metrics,
                board: &board,
                access: &access,
            };
            Some(join_cluster(&config, http, tls.is_some(), node, events).await?)
        }
        _ => None,
    };
    let chat = match &cluster {
        Some(cluster) => {
            // A node enforces the admin API's keys and settings from the
            // start (unless Redis is away: then as soon as it answers).
            match vessel::cluster::rules::load(cluster, &access).await {
                Ok(n) => tracing::info!(lives = n, "live rules read from the cluster's Redis"),
                Err(e) => tracing::warn!("live rules not read yet: {e}"),
            }
            tokio::spawn(vessel::cluster::rules::follow(
                cluster.clone(),
                access.clone(),
                media.clone(),
            ));
            ChatHub::clustered(ChatConfig::default(), cluster.clone())
        }
        None => Arc::new(ChatHub::new(ChatConfig::default())),
    };
    let state = AppState {
        cluster: cluster.clone(),
        hls,
        media: media.clone(),
        board: board.clone(),
        shutdown: shutdown_rx.clone(),
        ice: ice.clone(),
        access: access.clone(),
        chat,
        metrics,
        peerjs: (!config.peerjs.disabled).then(|| {
            PeerHub::start(
                PeerConfig {
                    key: config.peerjs.key.clone(),
                    max_peers: config.peerjs.max_peers,
                    alive_timeout: Duration::from_secs(config.peerjs.alive_timeout),
                    ..PeerConfig::default()
                },
                config.peerjs.discovery,
                cluster.clone(),
            )
        }),
        skyway: (!config.skyway.disabled).then(|| {
            SkywayHub::new(
                SkywayConfig {
                    keys: config.skyway_keys(),
                    max_peers: config.skyway.max_peers,
                    ..SkywayConfig::default()
                },
                config.skyway.discovery,
                config.cors_origin.clone(),
            )
        }),
        limits: limits.clone(),
    };
    // Viewers on this node of lives cast on another: relayed from there.
    if let Some(cluster) = &state.cluster {
        tokio::spawn(cluster.relays.clone().watch_viewers(state.clone()));
    }

    let mut layers = SocketIoLayers::default();
    let mut socket_ios = Vec::new();
    if !config.mediasoup.disabled {
        let (layer, io) = vessel::http::mediasoup::layer(state.clone(), &config.mediasoup.path);
        layers.mediasoup = Some(layer);
        socket_ios.push(io);
    }
    if !config.skyway.disabled {
        let (layer, io) =
            vessel::http::skyway::layer(state.clone(), &config.skyway.path, media_events);
        layers.skyway = Some((layer, config.skyway.path.clone()));
        socket_ios.push(io);
    }
    let rtmp = if config.rtmp.rtmp_disabled {
        None
    } else {
        let listener = TcpListener::bind(config.rtmp.rtmp_listen)
            .await
            .map_err(|e| {
                format!(
                    "cannot listen for RTMP on {}: {e} (is nginx-rtmp or another RTMP server \
                 running? choose another address with --rtmp, or run without RTMP with --no-rtmp)",
                    config.rtmp.rtmp_listen
                )
            })?;
        let addr = listener.local_addr().unwrap_or(config.rtmp.rtmp_listen);
        let ingest = vessel::rtmp::ingest::IngestConfig {
            opus_bitrate: config.rtmp.rtmp_opus_kbps * 1000,
        };
        tokio::spawn(vessel::rtmp::ingest::serve(listener, state.clone(), ingest));
        Some(addr)
    };
    let app = router(state, &config.cors_origin, &config.peerjs.path, layers);
    let scheme = if tls.is_some() { "https" } else { "http" };
    // `http` is the bound address: with port 0 (as tests use) the system
    // chose it.
    let base = format!("{scheme}://{http}");
    tracing::info!(
        "Vessel is running: open {base}/cast/demo to go live and {base}/play/demo to watch \
         (WHIP: {base}/whip/demo, WHEP: {base}/whep/demo; media on udp and tcp {})",
        announced
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(addr) = rtmp {
        tracing::info!(
            "RTMP on {addr}: OBS Server rtmp://{addr}/{app}, Stream Key demo (a keyed live: \
             demo?key=KEY); FFmpeg: -f flv rtmp://{addr}/{app}/demo",
            app = vessel::rtmp::ingest::APP
        );
    }
    if let Some(ice) = &ice {
        tracing::info!(
            "STUN/TURN on udp and tcp {}{}; clients get credentials from the WHIP/WHEP \
             answers and {base}/api/ice-servers",
            ice.hosts.join(", "),
            if ice.tls_hosts.is_empty() {
                String::new()
            } else {
                format!(", TLS {}", ice.tls_hosts.join(", "))
            }
        );
    }
    if !config.skyway.disabled {
        match config.skyway_keys().as_slice() {
            [] => tracing::warn!(
                "SkyWay: no --skyway-key is set and this server is reachable from other \
                 machines, so skyway-js pages are refused; set one (a lower-case UUID)"
            ),
            keys if config.skyway.keys.is_empty() => tracing::info!(
                "SkyWay: skyway-js pages connect with new Peer({{key: '{}', host: '{}', port: {}, \
                 secure: {}}})",
                keys[0],
                http.ip(),
                http.port(),
                tls.is_some()
            ),
            keys => tracing::info!(
                "SkyWay: skyway-js pages connect with {} API key(s)",
                keys.len()
            ),
        }
    }
    if access.is_open() && !config.local_only() {
        tracing::warn!(
            "open = true on a server reachable from other machines: anyone can cast any live \
             without a stream key"
        );
    } else if !access.is_open() {
        tracing::info!("casting needs a stream key (the server is reachable from other machines)");
    }
    let grace = Duration::from_secs(config.shutdown_grace);
    let stopping = async move {
        shutdown().await;
        // Tell everyone (SSE `shutdown`, chat `shutdown`, 503 for new
        // sessions and /healthz), give sessions the grace period to end, then
        // close the rest with a DTLS close_notify.
        let _ = shutdown_tx.send(true);
        let deadline = tokio::time::Instant::now() + grace;
        while !board.active().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        media.close_all().await;
        // Open socket.io connections would hold up the graceful shutdown.
        for io in socket_ios {
            io.close().await;
        }
        tracing::info!("sessions closed");
        // Requests still in flight get a few seconds more.
        tokio::spawn(async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            tracing::warn!("requests still open 5 s after shutdown; exiting anyway");
            std::process::exit(0);
        });
    };
    let result = match tls {
        Some(acceptor) => {
            // Limits first: a TLS handshake in flight holds its slot.
            let listener = GuardedListener::new(listener, limits);
            let listener =
                TlsListener::new(listener, acceptor).map_err(|e| format!("HTTPS listener: {e}"))?;
            // Small answers (SDP, JSON) go out at once.
            let listener = listener.tap_io(|tls| {
                let _ = tls.get_ref().0.get_ref().set_nodelay(true);
            });
            serve_until(listener, app, stopping).await
        }
        None => {
            let listener = GuardedListener::new(listener, limits).tap_io(|tcp| {
                let _ = tcp.get_ref().set_nodelay(true);
            });
            serve_until(listener, app, stopping).await
        }
    };
    result.map_err(|e| format!("HTTP server failed: {e}"))
}

/// The media engine's event channel (`None`: nobody listens), fanned out
/// to the SkyWay signaling and the cluster as each is on.
#[allow(clippy::type_complexity)]
fn observers(
    skyway: bool,
    cluster: bool,
) -> (
    Option<UnboundedSender<SfuEvent>>,
    Option<UnboundedReceiver<SfuEvent>>,
    Option<UnboundedReceiver<SfuEvent>>,
) {
    match (skyway, cluster) {
        (false, false) => (None, None, None),
        (true, false) => {
            let (tx, rx) = unbounded_channel();
            (Some(tx), Some(rx), None)
        }
        (false, true) => {
            let (tx, rx) = unbounded_channel();
            (Some(tx), None, Some(rx))
        }
        (true, true) => {
            let (tx, mut rx) = unbounded_channel::<SfuEvent>();
            let (skyway_tx, skyway_rx) = unbounded_channel();
            let (cluster_tx, cluster_rx) = unbounded_channel();
            tokio::spawn(async move {
                while let Some(event) = rx.recv().await {
                    let _ = skyway_tx.send(event.clone());
                    let _ = cluster_tx.send(event);
                }
            });
            (Some(tx), Some(skyway_rx), Some(cluster_rx))
        }
    }
}

/// What a node joining the cluster reads its load and lives from.
struct Node<'a> {
    media: &'a media::MediaHandle,
    metrics: &'a Arc<Metrics>,
    board: &'a Arc<LiveBoard>,
    access: &'a Arc<Access>,
}

/// Joins the cluster (`--cluster`): the heartbeat reads this node's
/// viewers from the live board (relays included: they cost as much to
/// serve), egress and worker load from the metrics and the media engine;
/// casts here claim their lives (`cluster::casts`); lives and their
/// people are published for the cluster's totals (`cluster::audience`).
async fn join_cluster(
    config: &Config,
    http: SocketAddr,
    tls: bool,
    node: Node<'_>,
    events: UnboundedReceiver<SfuEvent>,
) -> Result<Arc<Cluster>, String> {
    let Node {
        media,
        metrics,
        board,
        access,
    } = node;
    let mut flags = config.cluster.clone();
    flags.node_capacity = Some(flags.capacity(config.workers()));
    let url = flags.node_url(http, &config.public_ip, tls);
    // Read from the board, not the `vessel_viewers` gauge: that one is set
    // only when `/metrics` is scraped.
    let lives = board.clone();
    let egress = metrics.bytes.get_or_create(&vessel::metrics::OUT).clone();
    let busy = media.clone();
    let load = move || Load {
        viewers: lives.active().iter().map(|l| l.viewers as u64).sum(),
        egress_bytes: egress.get(),
        cpu_percent: busy.busy_percent(),
    };
    let cluster = Cluster::connect(&flags, url, load)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(vessel::cluster::casts::follow(
        cluster.clone(),
        media.clone(),
        events,
    ));
    let access = access.clone();
    tokio::spawn(vessel::cluster::audience::follow(
        cluster.clone(),
        board.clone(),
        move |live| access.is_private(live),
    ));
    Ok(cluster)
}

/// Serves until `stopping` is done and the requests in flight have ended.
async fn serve_until<L, F>(
    listener: TapIo<L, F>,
    app: axum::Router,
    stopping: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
    F: FnMut(&mut L::Io) + Send + 'static,
{
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(stopping)
        .await
}

/// Raises the soft open-files limit to the hard one (systemd's usual soft
/// limit, 1024, is a few hundred viewers' worth of sockets); returns it.
fn raise_fd_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!("cannot raise the open-files limit: {e}");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    }
}

/// The admission limits from the flags; `fd_limit` bounds the connections.
fn limits_config(flags: &LimitsFlags, workers: usize, fd_limit: u64) -> LimitsConfig {
    // A quarter of the descriptors stays free for media and TURN sockets,
    // ICE-TCP, files and the connections the limits refuse.
    let fd_room = usize::try_from(fd_limit / 4 * 3)
        .unwrap_or(usize::MAX)
        .max(64);
    let connections = flags.max_connections.unwrap_or(fd_room);
    if connections > fd_room {
        tracing::warn!(
            "--max-connections {connections} is above three quarters of the open-files limit \
             ({fd_limit}): past it, accepts fail instead of being refused with a reason"
        );
    }
    LimitsConfig {
        sessions: SessionCaps {
            total: flags.max_sessions.unwrap_or(500 * workers),
            per_ip: flags.max_sessions_per_ip,
            viewers_per_live: flags.max_viewers,
            max_load: flags.max_load,
        },
        connections: ConnectionCaps {
            total: connections,
            per_ip: flags.max_connections_per_ip,
            idle: Duration::from_secs(flags.idle_timeout),
        },
        joins_per_ip: flags.joins_per_ip,
        join_burst: flags.join_burst,
        trusted_proxies: flags.trusted_proxy.clone(),
        exempt: flags.exempt_ip.clone(),
    }
}

/// Who may cast and watch, from the flags and the config file's lives.
fn access(config: &Config, lives: HashMap<String, LiveRules>) -> Result<Access, String> {
    let flags = &config.access;
    let webhook = match &flags.admission_webhook {
        Some(url) if url.starts_with("http://") => Some(Webhook::new(url.clone())),
        Some(url) => {
            return Err(format!(
                "admission-webhook `{url}` must be an http:// URL (run the webhook on the \
                 same host or private network, or behind a local proxy)"
            ));
        }
        None => None,
    };
    let private_without_secret: Vec<&String> = lives
        .iter()
        .filter(|(_, r)| r.private)
        .map(|(n, _)| n)
        .collect();
    if flags.viewer_token_secret.is_none() && !private_without_secret.is_empty() {
        return Err(format!(
            "lives {private_without_secret:?} are private but no viewer-token-secret is set to \
             check viewer tokens with"
        ));
    }
    Ok(Access::new(AccessConfig {
        open: flags.open || config.local_only(),
        local_only: config.local_only(),
        admin_token: flags.admin_token.clone(),
        viewer_token_secret: flags.viewer_token_secret.clone(),
        lives,
        webhook,
    }))
}

/// Binds and starts the STUN/TURN server; returns what clients are told.
fn start_turn(
    flags: &TurnFlags,
    announced: &[SocketAddr],
    own_routes: Vec<(SocketAddr, SocketAddr)>,
    workers: usize,
    metrics: Arc<Metrics>,
) -> Result<Arc<IceServers>, String> {
    let secret = flags.secret.clone().unwrap_or_else(|| {
        let secret = Credentials::generate_secret();
        // Never logged: whoever reads the logs could mint credentials.
        tracing::info!(
            "TURN credentials use a random secret for this run (set --turn-secret or \
             VESSEL_TURN_SECRET to keep them valid across restarts, or to mint them elsewhere)"
        );
        secret
    });
    let credentials = Credentials::new(secret, flags.static_users()?);
    let tls = match (&flags.tls_cert, &flags.tls_key) {
        (Some(cert), Some(key)) => {
            let acceptor = vessel::tls::acceptor(cert, key, &[])?;
            let addr = flags
                .tls_listen
                .unwrap_or_else(|| SocketAddr::new(flags.listen.ip(), 5349));
            Some((addr, acceptor))
        }
        _ => None,
    };
    let tls_wanted = tls.as_ref().map(|(a, _)| *a);
    let shards = TurnSockets::bind(flags.listen, tls, workers).map_err(|e| {
        format!(
            "cannot bind the STUN/TURN port {} (UDP and TCP){}: {e} (is coturn or another \
             Vessel running? choose another address with --turn, or run without TURN with --no-turn)",
            flags.listen,
            tls_wanted.map(|a| format!(" or TLS {a}")).unwrap_or_default()
        )
    })?;
    let port = shards[0]
        .local_addr()
        .map_err(|e| format!("TURN socket: {e}"))?
        .port();
    let relay_ip = flags.relay_ip(announced);
    let quota = Quota {
        per_user: flags.user_quota,
        per_ip: flags.ip_quota,
        total: flags.total_quota,
        max_bitrate: flags.max_bitrate,
        max_lifetime: Duration::from_secs(flags.max_lifetime),
    };
    let config = TurnConfig {
        realm: flags.realm.clone(),
        credentials: credentials.clone(),
        policy: PeerPolicy::new(announced.to_vec(), flags.allow_peer.clone()),
        quota,
        relay_ipv6: relay_ip.is_ipv6(),
        ledger: Ledger::default(),
        nonces: Nonces::default(),
    };
    let unix_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let hosts = flags.public_hosts(port, announced);
    let tls_hosts = shards[0]
        .tls_addr()
        .map(|a| flags.public_hosts(a.port(), announced))
        .unwrap_or_default();
    let now = Instant::now();
    let shards = shards
        .into_iter()
        .map(|sockets| (sockets, TurnServer::new(config.clone(), now, unix_now)))
        .collect();
    turn::runtime::spawn(shards, relay_ip, own_routes, metrics)
        .map_err(|e| format!("cannot start the TURN thread: {e}"))?;
    Ok(Arc::new(IceServers {
        hosts,
        tls_hosts,
        credentials,
        ttl: Duration::from_secs(flags.credential_ttl),
    }))
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
