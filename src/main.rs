use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use vessel::board::LiveBoard;
use vessel::config::Config;
use vessel::http::{AppState, router};
use vessel::media;
use vessel::sfu::{Sfu, SfuConfig};

#[tokio::main]
async fn main() {
    let config = Config::parse();
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

    let (sockets, announced) =
        media::bind_udp_and_tcp(config.media, &config.announced_media_addrs()).map_err(|e| {
            format!(
                "cannot bind the media port {} (UDP, and TCP for ICE-TCP): {e} \
                 (is another Vessel running? choose another with --media)",
                config.media
            )
        })?;
    let board = Arc::new(LiveBoard::default());
    let mut sfu_config = SfuConfig::new(announced.clone());
    sfu_config.ice_tcp = true;
    let sfu = Sfu::new(sfu_config);
    let media = media::spawn(sockets, sfu, board.clone())
        .map_err(|e| format!("cannot start the media thread: {e}"))?;

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
