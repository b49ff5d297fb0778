//! Settings: command-line flags, their `VESSEL_*` environment twins, and
//! the config file (`--config vessel.toml`, see `file.rs`). Flags win over
//! the environment, which wins over the file, which wins over defaults.

mod file;

pub use file::{LiveFile, LoadError, parse};

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Parser;

use crate::turn::Cidr;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "vessel",
    version,
    about = "Vessel: a self-hosted live streaming server (WHIP/WHEP, WebRTC SFU, built-in pages)",
    after_help = "Every flag can also be set by its environment variable (e.g. VESSEL_HTTP=0.0.0.0:8080)\n\
                  or by the same key in the --config file (http = \"0.0.0.0:8080\"); flags win over the\n\
                  environment, which wins over the file. See vessel.example.toml.\n\
                  Logs: RUST_LOG=vessel=debug for more detail."
)]
pub struct Config {
    /// Config file (TOML): any flag below as `name = value`, plus per-live
    /// `[lives.<name>]` tables with `key` and `private`.
    #[arg(long, env = "VESSEL_CONFIG")]
    pub config: Option<PathBuf>,

    /// HTTP listen address (pages, WHIP/WHEP, API).
    #[arg(long, env = "VESSEL_HTTP", default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,

    /// The one UDP address that carries every peer's media.
    #[arg(long, env = "VESSEL_MEDIA", default_value = "127.0.0.1:8189")]
    pub media: SocketAddr,

    /// Media worker threads, each with its own port: --media's port, the
    /// next one, and so on (port 0: any free ports). Default: one per core.
    #[arg(long, env = "VESSEL_WORKERS", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: Option<u16>,

    /// Address announced in ICE candidates (repeatable), e.g. the server's
    /// public IP behind a 1:1 NAT. Default: the --media address, or every
    /// interface address when --media is 0.0.0.0.
    #[arg(long = "public-ip", env = "VESSEL_PUBLIC_IP", value_delimiter = ',')]
    pub public_ip: Vec<IpAddr>,

    /// Origins allowed to call WHIP/WHEP and the API from a browser
    /// (repeatable; `*` for any).
    #[arg(
        long = "cors-origin",
        env = "VESSEL_CORS_ORIGIN",
        value_delimiter = ',',
        default_value = "*"
    )]
    pub cors_origin: Vec<String>,

    /// HTTPS: PEM certificate chain (browsers grant the camera only on a
    /// secure origin other than localhost).
    #[arg(long = "tls-cert", env = "VESSEL_TLS_CERT", requires = "http_tls_key")]
    pub http_tls_cert: Option<PathBuf>,

    /// HTTPS: PEM private key.
    #[arg(long = "tls-key", env = "VESSEL_TLS_KEY", requires = "http_tls_cert")]
    pub http_tls_key: Option<PathBuf>,

    /// Log lines as text or as JSON objects (one per line).
    #[arg(
        long = "log-format",
        env = "VESSEL_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// On SIGTERM: seconds to wait for sessions to end after clients are
    /// told, before closing what is left.
    #[arg(
        long = "shutdown-grace",
        env = "VESSEL_SHUTDOWN_GRACE",
        default_value_t = 5
    )]
    pub shutdown_grace: u64,

    #[command(flatten)]
    pub access: AccessFlags,

    #[command(flatten)]
    pub peerjs: PeerJsFlags,

    #[command(flatten)]
    pub mediasoup: MediasoupFlags,

    #[command(flatten)]
    pub skyway: SkywayFlags,

    #[command(flatten)]
    pub turn: TurnFlags,

    #[command(flatten)]
    pub rtmp: RtmpFlags,

    #[command(flatten)]
    pub hls: HlsFlags,

    #[command(flatten)]
    pub limits: LimitsFlags,

    #[command(flatten)]
    pub cluster: ClusterFlags,
}

/// Several Vessel nodes as one service, coordinated through Redis. See
/// "Running a cluster" in the README.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Cluster")]
pub struct ClusterFlags {
    /// Join a cluster of Vessel nodes through this Redis, e.g.
    /// redis://10.0.0.5:6379/0 (off by default: a single node needs
    /// nothing). Nodes start and serve their own lives while it is down.
    #[arg(long = "cluster", env = "VESSEL_CLUSTER", value_name = "REDIS_URL",
          value_parser = redis_url, hide_env_values = true)]
    pub cluster: Option<String>,

    /// The base URL clients and other nodes reach this node at, e.g.
    /// https://node2.example.com. Default: http://{--public-ip or the
    /// --http address}:{the --http port}.
    #[arg(long = "node-url", env = "VESSEL_NODE_URL", value_parser = node_url)]
    pub node_url: Option<String>,

    /// Secret every node of the cluster shares; it signs their requests to
    /// one another. Required with --cluster.
    #[arg(
        long = "cluster-secret",
        env = "VESSEL_CLUSTER_SECRET",
        hide_env_values = true
    )]
    pub cluster_secret: Option<String>,

    /// Viewers this node takes before the route API sends new ones to
    /// other nodes. Default: 500 per media worker, as --max-sessions.
    #[arg(long = "node-capacity", env = "VESSEL_NODE_CAPACITY")]
    pub node_capacity: Option<u64>,

    /// Send a WHIP caster that reaches this node while its live is cast on
    /// another (live) node there, with a 307 (OBS and FFmpeg follow it).
    /// Off (`--cast-redirect=false`): the newest caster takes the live
    /// where it landed, and the live moves.
    #[arg(long = "cast-redirect", env = "VESSEL_CAST_REDIRECT",
          action = clap::ArgAction::Set, default_value_t = true, value_name = "BOOL")]
    pub cast_redirect: bool,
}

fn redis_url(url: &str) -> Result<String, String> {
    if url.starts_with("redis://") || url.starts_with("redis+unix://") || url.starts_with("unix://")
    {
        Ok(url.to_string())
    } else if url.starts_with("rediss://") {
        Err(
            "rediss:// (TLS) is not supported: reach Redis over a private network, a \
             VPN or a local TLS tunnel (stunnel) with redis://"
                .into(),
        )
    } else {
        Err("a Redis URL such as redis://127.0.0.1:6379/0".into())
    }
}

fn node_url(url: &str) -> Result<String, String> {
    let trimmed = url.trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains('/') => Ok(trimmed.to_string()),
        _ => Err("a base URL such as https://node2.example.com or http://10.0.0.2:8080".into()),
    }
}

impl ClusterFlags {
    /// The viewers this node takes, with `workers` media workers.
    pub fn capacity(&self, workers: usize) -> u64 {
        self.node_capacity.unwrap_or(500 * workers as u64)
    }

    /// This node's URL: `--node-url`, or one made of the address it
    /// listens on (`http`, with the port it got) and the first
    /// `--public-ip`.
    pub fn node_url(&self, http: SocketAddr, public_ip: &[IpAddr], tls: bool) -> String {
        if let Some(url) = &self.node_url {
            return url.clone();
        }
        let ip = public_ip.first().copied().unwrap_or(http.ip());
        let scheme = if tls { "https" } else { "http" };
        format!("{scheme}://{}", SocketAddr::new(ip, http.port()))
    }
}

/// What one client address, and everyone together, may open. `0` turns a
/// limit off. See "Limits and hardening" in the README.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Limits")]
pub struct LimitsFlags {
    /// Media sessions (WHIP, WHEP, socket.io transports, SkyWay members) in
    /// all; newcomers beyond get 503. Default: 500 per media worker, about
    /// what one core forwards a 1 Mbit/s live to (BENCHMARKS.md).
    #[arg(long = "max-sessions", env = "VESSEL_MAX_SESSIONS")]
    pub max_sessions: Option<usize>,

    /// Viewers of one live (0: only --max-sessions bounds them).
    #[arg(long = "max-viewers", env = "VESSEL_MAX_VIEWERS", default_value_t = 0)]
    pub max_viewers: usize,

    /// Percent of a media worker's time busy (over the last second) past
    /// which it takes no new viewer; when every worker is that busy, new
    /// viewers get 503 and those watching keep a live stream (0: no limit).
    /// Casters are never refused for load.
    #[arg(long = "max-load", env = "VESSEL_MAX_LOAD", default_value_t = 90)]
    pub max_load: u32,

    /// Media sessions one client address may hold.
    #[arg(
        long = "max-sessions-per-ip",
        env = "VESSEL_MAX_SESSIONS_PER_IP",
        default_value_t = 20
    )]
    pub max_sessions_per_ip: usize,

    /// New sessions, socket.io/WebSocket connections, event streams and
    /// TURN credentials per second from one address (after a burst of
    /// --join-burst).
    #[arg(
        long = "joins-per-ip",
        env = "VESSEL_JOINS_PER_IP",
        default_value_t = 5
    )]
    pub joins_per_ip: u32,

    #[arg(long = "join-burst", env = "VESSEL_JOIN_BURST", default_value_t = 30)]
    pub join_burst: u32,

    /// HTTP connections (WebSockets and event streams included) in all.
    /// Default: three quarters of the open-files limit (which Vessel raises
    /// to the hard limit at start).
    #[arg(long = "max-connections", env = "VESSEL_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// HTTP connections from one client address.
    #[arg(
        long = "max-connections-per-ip",
        env = "VESSEL_MAX_CONNECTIONS_PER_IP",
        default_value_t = 64
    )]
    pub max_connections_per_ip: usize,

    /// Seconds an HTTP connection may stay silent (nothing read or
    /// written) before it is closed.
    #[arg(
        long = "idle-timeout",
        env = "VESSEL_IDLE_TIMEOUT",
        default_value_t = 75
    )]
    pub idle_timeout: u64,

    /// Seconds a new media session has to complete ICE and DTLS.
    #[arg(long = "connect-timeout", env = "VESSEL_CONNECT_TIMEOUT", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=120))]
    pub connect_timeout: u64,

    /// Reverse proxies (addresses or CIDR networks) whose X-Forwarded-For
    /// names the client. Without it the header is ignored for limits.
    #[arg(long = "trusted-proxy", env = "VESSEL_TRUSTED_PROXY", value_delimiter = ',',
          value_parser = crate::limits::client::parse_net)]
    pub trusted_proxy: Vec<ipnet::IpNet>,

    /// Client addresses (or CIDR networks) no per-address limit applies
    /// to. Default: the machine itself (127.0.0.1, ::1).
    #[arg(
        long = "exempt-ip",
        env = "VESSEL_EXEMPT_IP",
        value_delimiter = ',',
        value_parser = crate::limits::client::parse_net,
        default_values_t = [
            "127.0.0.1/32".parse::<ipnet::IpNet>().expect("a network"),
            "::1/128".parse::<ipnet::IpNet>().expect("a network"),
        ]
    )]
    pub exempt_ip: Vec<ipnet::IpNet>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The PeerJS PeerServer protocol, for pages written for `peerjs`.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "PeerJS PeerServer")]
pub struct PeerJsFlags {
    /// Where the PeerServer protocol is served (PeerJS's `path` option).
    #[arg(id = "peerjs_path", long = "peerjs-path", env = "VESSEL_PEERJS_PATH", default_value = "/peer",
          value_parser = signaling_path)]
    pub path: String,

    /// The PeerServer API key clients pass (PeerJS's `key` option).
    #[arg(
        id = "peerjs_key",
        long = "peerjs-key",
        env = "VESSEL_PEERJS_KEY",
        default_value = "peerjs"
    )]
    pub key: String,

    /// Let clients list connected peer ids (`GET {path}/{key}/peers`).
    #[arg(
        id = "peerjs_discovery",
        long = "peerjs-discovery",
        env = "VESSEL_PEERJS_DISCOVERY"
    )]
    pub discovery: bool,

    /// PeerJS peers connected at once.
    #[arg(
        id = "peerjs_max_peers",
        long = "peerjs-max-peers",
        env = "VESSEL_PEERJS_MAX_PEERS",
        default_value_t = 5000
    )]
    pub max_peers: usize,

    /// Seconds without a message (clients send a heartbeat every 5 s)
    /// before a peer is dropped.
    #[arg(id = "peerjs_alive_timeout", long = "peerjs-alive-timeout", env = "VESSEL_PEERJS_ALIVE_TIMEOUT", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub alive_timeout: u64,

    /// Run without the PeerServer protocol.
    #[arg(id = "no_peerjs", long = "no-peerjs", env = "VESSEL_NO_PEERJS")]
    pub disabled: bool,
}

/// The seed's socket.io "Vessel" protocol, for clients written for
/// mediasoup-client.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "mediasoup-client (socket.io)")]
pub struct MediasoupFlags {
    /// Where the socket.io protocol is served (socket.io's `path` option).
    #[arg(id = "mediasoup_path", long = "mediasoup-path", env = "VESSEL_MEDIASOUP_PATH", default_value = "/media",
          value_parser = signaling_path)]
    pub path: String,

    /// Run without the socket.io protocol.
    #[arg(
        id = "no_mediasoup",
        long = "no-mediasoup",
        env = "VESSEL_NO_MEDIASOUP"
    )]
    pub disabled: bool,
}

/// The key a loopback-only server accepts from skyway-js pages when no
/// `--skyway-key` is given (it has the SDK's required shape).
pub const DEFAULT_SKYWAY_KEY: &str = "vessel00-0000-4000-8000-000000000000";

/// The legacy SkyWay SDK's signaling (npm `skyway-js` 4.4.5), for pages
/// written for SkyWay.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "SkyWay (skyway-js)")]
pub struct SkywayFlags {
    /// API key skyway-js pages open with (`new Peer({key})`; repeatable), in
    /// the SDK's shape: a lower-case UUID such as
    /// 3f2504e0-4f89-41d3-9a0c-0305e82c3301. On a loopback-only server
    /// without one, vessel00-0000-4000-8000-000000000000 works.
    #[arg(id = "skyway_key", long = "skyway-key", env = "VESSEL_SKYWAY_KEY", value_delimiter = ',',
          value_parser = skyway_key, hide_env_values = true)]
    pub keys: Vec<String>,

    /// Where the SkyWay socket.io endpoint is served. skyway-js always uses
    /// socket.io's default, /socket.io; change it only behind a proxy that
    /// maps it.
    #[arg(id = "skyway_path", long = "skyway-path", env = "VESSEL_SKYWAY_PATH", default_value = "/socket.io",
          value_parser = signaling_path)]
    pub path: String,

    /// Let pages list connected peer ids (`peer.listAllPeers()`).
    #[arg(
        id = "skyway_discovery",
        long = "skyway-discovery",
        env = "VESSEL_SKYWAY_DISCOVERY"
    )]
    pub discovery: bool,

    /// SkyWay peers connected at once.
    #[arg(
        id = "skyway_max_peers",
        long = "skyway-max-peers",
        env = "VESSEL_SKYWAY_MAX_PEERS",
        default_value_t = 5000
    )]
    pub max_peers: usize,

    /// Run without the SkyWay protocol.
    #[arg(id = "no_skyway", long = "no-skyway", env = "VESSEL_NO_SKYWAY")]
    pub disabled: bool,
}

/// A SkyWay API key: the SDK refuses any other shape before connecting.
fn skyway_key(key: &str) -> Result<String, String> {
    let groups: Vec<&str> = key.split('-').collect();
    let shape = [8, 4, 4, 4, 12];
    let ok = groups.len() == 5
        && groups.iter().zip(shape).all(|(g, n)| {
            g.len() == n
                && g.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        });
    if ok {
        Ok(key.to_string())
    } else {
        Err(
            "skyway-js accepts only keys shaped like a lower-case UUID, e.g. \
             3f2504e0-4f89-41d3-9a0c-0305e82c3301 (try: uuidgen | tr A-Z a-z)"
                .into(),
        )
    }
}

impl Config {
    /// Settings that are each fine but clash with one another.
    pub fn check(&self) -> Result<(), String> {
        if self.cluster.cluster.is_some()
            && self
                .cluster
                .cluster_secret
                .as_deref()
                .is_none_or(|s| s.trim().is_empty())
        {
            return Err(
                "--cluster needs --cluster-secret (or VESSEL_CLUSTER_SECRET): the same \
                        secret on every node, e.g. from `openssl rand -hex 32`"
                    .into(),
            );
        }
        if self.cluster.cluster.is_some()
            && self.cluster.node_url.is_none()
            && self.public_ip.is_empty()
            && self.http.ip().is_unspecified()
        {
            return Err(format!(
                "--cluster with --http {} cannot tell other nodes where to reach this one: \
                 set --node-url (e.g. http://10.0.0.2:{}) or --public-ip",
                self.http,
                self.http.port()
            ));
        }
        let mut paths = Vec::new();
        if !self.peerjs.disabled {
            paths.push(("--peerjs-path", &self.peerjs.path));
        }
        if !self.mediasoup.disabled {
            paths.push(("--mediasoup-path", &self.mediasoup.path));
        }
        if !self.skyway.disabled {
            paths.push(("--skyway-path", &self.skyway.path));
        }
        let inside = |a: &str, b: &str| a == b || a.starts_with(&format!("{b}/"));
        for (i, (fa, a)) in paths.iter().enumerate() {
            for (fb, b) in &paths[i + 1..] {
                if inside(a, b) || inside(b, a) {
                    return Err(format!(
                        "{fa} {a} and {fb} {b} overlap; give them separate paths"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The API keys skyway-js pages may use: the flags', or on a
    /// loopback-only server the default one.
    pub fn skyway_keys(&self) -> Vec<String> {
        if self.skyway.keys.is_empty() && self.local_only() {
            vec![DEFAULT_SKYWAY_KEY.to_string()]
        } else {
            self.skyway.keys.clone()
        }
    }
}

/// A path for a signaling protocol: not one of Vessel's own routes.
fn signaling_path(path: &str) -> Result<String, String> {
    let ok = path.starts_with('/')
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b));
    // Vessel's own routes (src/http): a clash would make the router panic.
    let reserved = [
        "/api",
        "/whip",
        "/whep",
        "/cast",
        "/play",
        "/assets",
        "/metrics",
        "/healthz",
        "/vessel.js",
    ];
    let trimmed = path.trim_end_matches('/');
    if !ok {
        Err("a URL path such as /signal".into())
    } else if trimmed.is_empty()
        || reserved
            .iter()
            .any(|r| trimmed == *r || trimmed.starts_with(&format!("{r}/")))
    {
        Err(format!(
            "{path} is taken by Vessel's own routes; choose e.g. /signal"
        ))
    } else {
        Ok(trimmed.to_string())
    }
}

/// Who may cast and watch.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Access")]
pub struct AccessFlags {
    /// Let anyone cast any live that has no stream key, even when Vessel is
    /// reachable from other machines. (On loopback-only servers this is the
    /// default.)
    #[arg(long, env = "VESSEL_OPEN")]
    pub open: bool,

    /// Token for the admin API (`Authorization: Bearer ...`): stream keys and
    /// viewer tokens. Without it the admin API answers only on loopback-only
    /// servers.
    #[arg(
        long = "admin-token",
        env = "VESSEL_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,

    /// HS256 secret that signs viewer tokens (JWT, claims `live` and `exp`)
    /// for private lives.
    #[arg(
        long = "viewer-token-secret",
        env = "VESSEL_VIEWER_TOKEN_SECRET",
        hide_env_values = true
    )]
    pub viewer_token_secret: Option<String>,

    /// URL asked before every cast and play (POST, JSON: live, role, remote,
    /// forwarded_for, protocol); a 2xx answer admits, anything else denies.
    #[arg(long = "admission-webhook", env = "VESSEL_ADMISSION_WEBHOOK")]
    pub admission_webhook: Option<String>,
}

/// RTMP ingest: OBS, FFmpeg and hardware encoders publish a live over
/// RTMP (H.264 + AAC); WebRTC viewers get it with Opus audio.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "RTMP")]
pub struct RtmpFlags {
    /// RTMP listen address (port 0: any free port). OBS: Server
    /// rtmp://HOST:1935/live, Stream Key the live's name (a keyed live:
    /// NAME?key=KEY).
    #[arg(long = "rtmp", env = "VESSEL_RTMP", default_value = "127.0.0.1:1935")]
    pub rtmp_listen: SocketAddr,

    /// Run without the RTMP listener.
    #[arg(long = "no-rtmp", env = "VESSEL_NO_RTMP")]
    pub rtmp_disabled: bool,

    /// Bit rate of the Opus audio transcoded from an RTMP stream's AAC,
    /// kbit/s (stereo).
    #[arg(
        long = "rtmp-opus-bitrate",
        env = "VESSEL_RTMP_OPUS_BITRATE",
        default_value_t = 128,
        value_parser = clap::value_parser!(u32).range(6..=510)
    )]
    pub rtmp_opus_kbps: u32,
}

/// LL-HLS: every H.264 live also as low-latency HLS at /hls/{live}/index.m3u8,
/// for players WebRTC cannot reach and for CDNs.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "HLS")]
pub struct HlsFlags {
    /// Serve no HLS.
    #[arg(long = "no-hls", env = "VESSEL_NO_HLS")]
    pub hls_disabled: bool,

    /// LL-HLS part duration, seconds (0.2 to 2). The default, 0.2, measured
    /// 0.75 s glass to glass in hls.js (0.5: 1.6 s; BENCHMARKS.md "LL-HLS")
    /// and divides a second at 24, 25, 30, 50 and 60 fps into whole frames.
    #[arg(
        long = "hls-part",
        env = "VESSEL_HLS_PART",
        default_value_t = 0.2,
        value_parser = parse_part
    )]
    pub hls_part: f64,

    /// Record every live on air into DIR, as fragmented MP4 (H.264 lives;
    /// playable up to the last part even after a crash).
    #[arg(long = "record", env = "VESSEL_RECORD", value_name = "DIR")]
    pub record: Option<std::path::PathBuf>,

    /// Start a new recording file after this many minutes (at a keyframe).
    #[arg(long = "record-every", env = "VESSEL_RECORD_EVERY", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=1440))]
    pub record_every_minutes: u64,

    /// Where lives with `record = true` (config file or admin API) are
    /// recorded when --record (every live) is not given.
    #[arg(
        long = "record-dir",
        env = "VESSEL_RECORD_DIR",
        value_name = "DIR",
        default_value = "recordings"
    )]
    pub record_dir: std::path::PathBuf,

    /// Delete finished recordings older than this many days (checked every
    /// 10 minutes). Default: keep them all.
    #[arg(long = "record-keep-days", env = "VESSEL_RECORD_KEEP_DAYS", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub record_keep_days: Option<u32>,

    /// POST a JSON `recording.complete` notice to URL whenever a recording
    /// file is closed.
    #[arg(
        long = "record-webhook",
        env = "VESSEL_RECORD_WEBHOOK",
        value_name = "URL"
    )]
    pub record_webhook: Option<String>,
}

fn parse_part(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if (0.2..=2.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} s is outside 0.2 to 2 s"))
    }
}

/// The built-in STUN/TURN server.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "STUN/TURN")]
pub struct TurnFlags {
    /// STUN/TURN listen address, UDP and TCP (port 0: any free port).
    #[arg(long = "turn", env = "VESSEL_TURN", default_value = "127.0.0.1:3478")]
    pub listen: SocketAddr,

    /// Run without the STUN/TURN server (clients get no ICE servers).
    #[arg(long = "no-turn", env = "VESSEL_NO_TURN")]
    pub disabled: bool,

    /// Host (and port) announced in TURN URLs, e.g. turn.example.com or
    /// 203.0.113.7:3478. Default: the --turn address, or each announced
    /// media address when --turn is 0.0.0.0.
    #[arg(long = "turn-public-addr", env = "VESSEL_TURN_PUBLIC_ADDR")]
    pub public_addr: Option<String>,

    /// Shared secret of the TURN REST API credentials. Default: a random one
    /// per run, logged at start.
    #[arg(
        long = "turn-secret",
        env = "VESSEL_TURN_SECRET",
        hide_env_values = true
    )]
    pub secret: Option<String>,

    /// A static TURN user `name:password` (repeatable), e.g. for testing.
    #[arg(
        long = "turn-user",
        env = "VESSEL_TURN_USER",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub users: Vec<String>,

    /// How long minted TURN credentials may start new allocations, seconds.
    #[arg(
        long = "turn-credential-ttl",
        env = "VESSEL_TURN_CREDENTIAL_TTL",
        default_value_t = 86_400
    )]
    pub credential_ttl: u64,

    /// PEM certificate chain for TURN over TLS (turns:).
    #[arg(
        long = "turn-tls-cert",
        env = "VESSEL_TURN_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for TURN over TLS.
    #[arg(
        long = "turn-tls-key",
        env = "VESSEL_TURN_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// TURN-over-TLS listen address. Default: the --turn IP, port 5349.
    #[arg(long = "turn-tls", env = "VESSEL_TURN_TLS")]
    pub tls_listen: Option<SocketAddr>,

    /// IP that relay sockets use and announce. Default: the --turn IP, or the
    /// first announced media address when --turn is 0.0.0.0.
    #[arg(long = "turn-relay-ip", env = "VESSEL_TURN_RELAY_IP")]
    pub relay_ip: Option<IpAddr>,

    /// Peers that relays may also reach, as CIDR (repeatable). By default
    /// relays reach only Vessel's own media address. Private, loopback and
    /// link-local addresses open only when named by a range inside them.
    #[arg(
        long = "turn-allow-peer",
        env = "VESSEL_TURN_ALLOW_PEER",
        value_delimiter = ','
    )]
    pub allow_peer: Vec<Cidr>,

    /// TURN realm.
    #[arg(
        long = "turn-realm",
        env = "VESSEL_TURN_REALM",
        default_value = "vessel"
    )]
    pub realm: String,

    /// Allocations one TURN username may hold at once.
    #[arg(
        long = "turn-user-quota",
        env = "VESSEL_TURN_USER_QUOTA",
        default_value_t = 16
    )]
    pub user_quota: usize,

    /// Allocations one client address may hold, whatever usernames it got
    /// (0: no cap).
    #[arg(
        long = "turn-ip-quota",
        env = "VESSEL_TURN_IP_QUOTA",
        default_value_t = 32
    )]
    pub ip_quota: usize,

    /// Allocations the TURN server may hold in total.
    #[arg(
        long = "turn-total-quota",
        env = "VESSEL_TURN_TOTAL_QUOTA",
        default_value_t = 2000
    )]
    pub total_quota: usize,

    /// Relayed bits per second per allocation (0: no limit).
    #[arg(
        long = "turn-max-bitrate",
        env = "VESSEL_TURN_MAX_BITRATE",
        default_value_t = 20_000_000
    )]
    pub max_bitrate: u64,

    /// Longest allocation lifetime a client may request, seconds.
    #[arg(
        long = "turn-max-lifetime",
        env = "VESSEL_TURN_MAX_LIFETIME",
        default_value_t = 3600
    )]
    pub max_lifetime: u64,
}

impl TurnFlags {
    /// The IP relays use, given the media addresses announced to clients.
    pub fn relay_ip(&self, announced_media: &[SocketAddr]) -> IpAddr {
        self.relay_ip
            .unwrap_or_else(|| self.concrete_ip(announced_media))
    }

    /// `host:port`s for TURN URLs, given the port actually bound: the
    /// `--turn-public-addr`, else the `--turn` IP, else (for `0.0.0.0`) every
    /// announced media IP of the same family, as the media candidates do.
    pub fn public_hosts(&self, port: u16, announced_media: &[SocketAddr]) -> Vec<String> {
        match &self.public_addr {
            Some(addr)
                if addr.contains(':')
                    && !addr.starts_with('[')
                    && addr.parse::<IpAddr>().is_ok() =>
            {
                vec![format!("[{addr}]:{port}")] // a bare IPv6 address
            }
            Some(addr)
                if addr
                    .rsplit_once(':')
                    .is_some_and(|(_, p)| p.parse::<u16>().is_ok()) =>
            {
                vec![addr.clone()]
            }
            Some(host) => vec![format!("{host}:{port}")],
            None if !self.listen.ip().is_unspecified() => {
                vec![SocketAddr::new(self.listen.ip(), port).to_string()]
            }
            None => {
                let mut hosts: Vec<String> = announced_media
                    .iter()
                    .filter(|a| a.is_ipv4() == self.listen.is_ipv4())
                    .map(|a| SocketAddr::new(a.ip(), port).to_string())
                    .collect();
                hosts.dedup();
                if hosts.is_empty() {
                    hosts
                        .push(SocketAddr::new(self.concrete_ip(announced_media), port).to_string());
                }
                hosts
            }
        }
    }

    fn concrete_ip(&self, announced_media: &[SocketAddr]) -> IpAddr {
        if !self.listen.ip().is_unspecified() {
            return self.listen.ip();
        }
        announced_media
            .iter()
            .map(|a| a.ip())
            .find(|ip| ip.is_ipv4() == self.listen.is_ipv4())
            .unwrap_or(self.listen.ip())
    }

    /// Static users from `name:password` pairs.
    pub fn static_users(&self) -> Result<HashMap<String, String>, String> {
        self.users
            .iter()
            .map(|u| {
                u.split_once(':')
                    .map(|(n, p)| (n.to_string(), p.to_string()))
                    .ok_or_else(|| format!("--turn-user `{u}` must be name:password"))
            })
            .collect()
    }
}

impl Config {
    /// True when every listener is on loopback and nothing public is
    /// announced: only this machine can reach Vessel, so casting needs no key.
    pub fn local_only(&self) -> bool {
        let mut ips = vec![self.http.ip(), self.media.ip()];
        ips.extend(&self.public_ip);
        if !self.turn.disabled {
            ips.push(self.turn.listen.ip());
            ips.extend(self.turn.tls_listen.map(|a| a.ip()));
        }
        ips.iter().all(IpAddr::is_loopback)
    }

    pub fn workers(&self) -> usize {
        self.workers
            .map(usize::from)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(64)))
    }

    /// The media addresses announced to clients as ICE host candidates.
    pub fn announced_media_addrs(&self) -> Vec<SocketAddr> {
        let port = self.media.port();
        if !self.public_ip.is_empty() {
            return self
                .public_ip
                .iter()
                .map(|ip| SocketAddr::new(*ip, port))
                .collect();
        }
        if !self.media.ip().is_unspecified() {
            return vec![self.media];
        }
        let v4 = self.media.is_ipv4();
        let mut addrs: Vec<SocketAddr> = if_addrs::get_if_addrs()
            .unwrap_or_default()
            .into_iter()
            .map(|i| i.ip())
            .filter(|ip| ip.is_ipv4() == v4 && !ip.is_loopback())
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
        if addrs.is_empty() {
            let lo: IpAddr = if v4 {
                IpAddr::from([127, 0, 0, 1])
            } else {
                IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
            };
            addrs.push(SocketAddr::new(lo, port));
        }
        addrs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peerjs_path_cannot_take_vessel_s_own_routes() {
        for taken in ["/metrics", "/api", "/whep/x", "/", "/vessel.js"] {
            let e = Config::try_parse_from(["vessel", "--peerjs-path", taken]).unwrap_err();
            assert!(e.to_string().contains("--peerjs-path"), "{taken}: {e}");
        }
        let c = Config::try_parse_from(["vessel", "--peerjs-path", "/signal/"]).unwrap();
        assert_eq!(c.peerjs.path, "/signal");
        let e = Config::try_parse_from(["vessel", "--mediasoup-path", "/api/media"]).unwrap_err();
        assert!(e.to_string().contains("--mediasoup-path"), "{e}");
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Config::command().debug_assert();
    }

    #[test]
    fn defaults_stay_on_loopback() {
        let c = Config::try_parse_from(["vessel"]).unwrap();
        assert_eq!(c.http, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.media, "127.0.0.1:8189".parse().unwrap());
        assert_eq!(c.announced_media_addrs(), vec![c.media]);
    }

    #[test]
    fn turn_defaults_to_loopback_3478() {
        let c = Config::try_parse_from(["vessel"]).unwrap();
        let media = c.announced_media_addrs();
        assert_eq!(c.turn.listen, "127.0.0.1:3478".parse().unwrap());
        assert_eq!(c.turn.public_hosts(3478, &media), ["127.0.0.1:3478"]);
        assert_eq!(
            c.turn.relay_ip(&media),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn turn_public_addr_forms() {
        let parse = |a: &str| {
            Config::try_parse_from(["vessel", "--turn-public-addr", a])
                .unwrap()
                .turn
                .public_hosts(3478, &[])
                .join(",")
        };
        assert_eq!(parse("turn.example.com"), "turn.example.com:3478");
        assert_eq!(parse("turn.example.com:443"), "turn.example.com:443");
        assert_eq!(parse("203.0.113.7"), "203.0.113.7:3478");
        assert_eq!(parse("2001:db8::1"), "[2001:db8::1]:3478");
        assert_eq!(parse("[2001:db8::1]:3479"), "[2001:db8::1]:3479");
    }

    #[test]
    fn turn_on_all_interfaces_announces_the_media_ip() {
        let c = Config::try_parse_from(["vessel", "--turn", "0.0.0.0:3478"]).unwrap();
        let media = vec![
            "198.51.100.4:8189".parse().unwrap(),
            "203.0.113.9:8189".parse().unwrap(),
        ];
        assert_eq!(
            c.turn.public_hosts(3478, &media),
            ["198.51.100.4:3478", "203.0.113.9:3478"]
        );
        assert_eq!(
            c.turn.relay_ip(&media),
            "198.51.100.4".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn bad_turn_flags_are_refused_with_the_flag_named() {
        let e = Config::try_parse_from(["vessel", "--turn-allow-peer", "10.0.0.0/40"]).unwrap_err();
        assert!(e.to_string().contains("--turn-allow-peer"), "{e}");
        let e = Config::try_parse_from(["vessel", "--turn-tls-cert", "c.pem"]).unwrap_err();
        assert!(e.to_string().contains("--turn-tls-key"), "{e}");
        let c = Config::try_parse_from(["vessel", "--turn-user", "nopassword"]).unwrap();
        assert!(c.turn.static_users().unwrap_err().contains("name:password"));
    }

    #[test]
    fn cluster_is_off_by_default_and_needs_a_secret() {
        let c = Config::try_parse_from(["vessel"]).unwrap();
        assert!(c.cluster.cluster.is_none());
        assert!(c.check().is_ok());
        let c =
            Config::try_parse_from(["vessel", "--cluster", "redis://127.0.0.1:6379/0"]).unwrap();
        let e = c.check().unwrap_err();
        assert!(e.contains("--cluster-secret"), "{e}");
        let c = Config::try_parse_from([
            "vessel",
            "--cluster",
            "redis://127.0.0.1:6379/0",
            "--cluster-secret",
            "s3cret",
        ])
        .unwrap();
        assert!(c.check().is_ok());
        assert_eq!(c.cluster.capacity(2), 1000);
        let e = Config::try_parse_from(["vessel", "--cluster", "rediss://db:6379"]).unwrap_err();
        assert!(e.to_string().contains("TLS"), "{e}");
        let e = Config::try_parse_from(["vessel", "--node-url", "ftp://x"]).unwrap_err();
        assert!(e.to_string().contains("--node-url"), "{e}");
    }

    #[test]
    fn the_node_url_defaults_to_the_http_address() {
        let c = Config::try_parse_from(["vessel", "--node-capacity", "7"]).unwrap();
        let http: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        assert_eq!(
            c.cluster.node_url(http, &[], false),
            "http://127.0.0.1:9000"
        );
        let public = ["203.0.113.7".parse().unwrap()];
        assert_eq!(
            c.cluster.node_url(http, &public, true),
            "https://203.0.113.7:9000"
        );
        assert_eq!(c.cluster.capacity(4), 7);
        let c =
            Config::try_parse_from(["vessel", "--node-url", "https://n2.example.com/"]).unwrap();
        assert_eq!(
            c.cluster.node_url(http, &public, false),
            "https://n2.example.com"
        );
        // On every interface without a public IP, the URL must be given.
        let c = Config::try_parse_from([
            "vessel",
            "--http",
            "0.0.0.0:8080",
            "--cluster",
            "redis://db:6379",
            "--cluster-secret",
            "x",
        ])
        .unwrap();
        assert!(c.check().unwrap_err().contains("--node-url"));
    }

    #[test]
    fn public_ips_replace_the_announced_address() {
        let c = Config::try_parse_from([
            "vessel",
            "--media",
            "0.0.0.0:9000",
            "--public-ip",
            "203.0.113.7",
            "--public-ip",
            "198.51.100.1",
        ])
        .unwrap();
        assert_eq!(
            c.announced_media_addrs(),
            vec![
                "203.0.113.7:9000".parse().unwrap(),
                "198.51.100.1:9000".parse().unwrap()
            ]
        );
    }
}
