use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use vessel::board::LiveBoard;
use vessel::config::{Config, TurnFlags};
use vessel::http::{AppState, router};
use vessel::loadtest::LoadtestArgs;
use vessel::media;
use vessel::sfu::{Sfu, SfuConfig};
use vessel::turn::runtime::TurnSockets;
use vessel::turn::{
    self, Credentials, IceServers, Ledger, Nonces, PeerPolicy, Quota, TurnConfig, TurnServer,
};

/// `vessel` runs the server; `vessel loadtest` measures one.
#[derive(Parser)]
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
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Loadtest(args)) => loadtest(args),
        None => serve(cli.config),
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
    match vessel::loadtest::run(args) {
        Ok(report) if json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).expect("serializable")
            );
        }
        Ok(report) => print!("{report}"),
        Err(e) => {
            eprintln!("loadtest: {e}");
            std::process::exit(1);
        }
    }
}

#[tokio::main]
async fn serve(config: Config) {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("vessel=info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
    if let Err(e) = run(config).await {
        tracing::error!("{e}");
        std::process::exit(1);
    }
}

async fn run(config: Config) -> Result<(), String> {
    str0m::crypto::from_feature_flags().install_process_default();

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
    let sfus = shard_addrs
        .iter()
        .enumerate()
        .map(|(shard, addrs)| {
            let mut sfu_config = SfuConfig::new(addrs.clone());
            sfu_config.ice_tcp = true;
            sfu_config.shard = shard;
            sfu_config.shards = workers;
            Sfu::new(sfu_config)
        })
        .collect();
    let media = media::spawn(shards, sfus, board.clone())
        .map_err(|e| format!("cannot start the media thread: {e}"))?;

    let ice = if config.turn.disabled {
        None
    } else {
        Some(start_turn(&config.turn, &announced, own_routes, workers)?)
    };

    let listener = TcpListener::bind(config.http).await.map_err(|e| {
        format!(
            "cannot listen on {}: {e} (choose another address with --http)",
            config.http
        )
    })?;
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let shutdown_rx_for_timeout = shutdown_rx.clone();
    let app = router(
        AppState {
            media,
            board,
            shutdown: shutdown_rx,
            ice: ice.clone(),
        },
        &config.cors_origin,
    );
    let base = format!("http://{}", config.http);
    tracing::info!(
        "Vessel is running: open {base}/cast/demo to go live and {base}/play/demo to watch \
         (WHIP: {base}/whip/demo, WHEP: {base}/whep/demo; media on udp and tcp {})",
        announced
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
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
    let stopping = async move {
        shutdown().await;
        let _ = shutdown_tx.send(true);
    };
    let serve = axum::serve(listener, app).with_graceful_shutdown(stopping);
    let serve = std::pin::pin!(serve.into_future());
    // Requests in flight get a few seconds to finish once shutdown starts.
    tokio::select! {
        r = serve => r.map_err(|e| format!("HTTP server failed: {e}")),
        _ = async {
            let mut rx = shutdown_rx_for_timeout;
            let _ = rx.wait_for(|down| *down).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        } => {
            tracing::warn!("requests still open after 5 s; exiting anyway");
            Ok(())
        }
    }
}

/// Binds and starts the STUN/TURN server; returns what clients are told.
fn start_turn(
    flags: &TurnFlags,
    announced: &[SocketAddr],
    own_routes: Vec<(SocketAddr, SocketAddr)>,
    workers: usize,
) -> Result<Arc<IceServers>, String> {
    let secret = flags.secret.clone().unwrap_or_else(|| {
        let secret = Credentials::generate_secret();
        tracing::info!(
            "TURN secret for this run: {secret} (set --turn-secret or VESSEL_TURN_SECRET \
             to keep TURN credentials valid across restarts)"
        );
        secret
    });
    let credentials = Credentials::new(secret, flags.static_users()?);
    let tls = match (&flags.tls_cert, &flags.tls_key) {
        (Some(cert), Some(key)) => {
            let acceptor = turn::runtime::load_tls(cert, key)?;
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
    turn::runtime::spawn(shards, relay_ip, own_routes)
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
