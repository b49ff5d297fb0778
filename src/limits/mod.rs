//! Admission limits: how much one client address, and everyone together,
//! may open — HTTP connections, new sessions and streams per second,
//! sessions held. Over a limit a request gets `429` (this client: slow
//! down) or `503` (the server is full) with `Retry-After` and a reason; a
//! metric counts it and one log line per limit and ten seconds says so.
//!
//! The faces ask; nothing here does I/O. Rates are kept by `governor`.

pub mod client;
pub mod connections;
pub mod cpu_quota;
pub mod guesses;
pub mod load;
pub mod sessions;
pub mod stream;

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;
use prometheus_client::metrics::counter::Counter;

use crate::metrics::{LimitLabel, Metrics};

pub use client::Client;
pub use connections::{ConnectionCaps, Connections};
pub use sessions::{SessionBook, SessionCaps};

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// New sessions, streams and credentials per second from one address.
    JoinRate,
    /// Media sessions held by one address.
    SessionsPerIp,
    /// Media sessions in all.
    Sessions,
    /// Viewers of one live.
    ViewersPerLive,
    /// HTTP connections from one address.
    ConnectionsPerIp,
    /// HTTP connections in all.
    Connections,
    /// Wrong keys and tokens from one address.
    Guesses,
    /// Every media worker is past its CPU (`--max-load`).
    Busy,
}

impl Limit {
    pub const ALL: [Limit; 8] = [
        Limit::JoinRate,
        Limit::SessionsPerIp,
        Limit::Sessions,
        Limit::ViewersPerLive,
        Limit::ConnectionsPerIp,
        Limit::Connections,
        Limit::Guesses,
        Limit::Busy,
    ];

    /// The metric label and the name in logs.
    pub fn name(self) -> &'static str {
        match self {
            Limit::JoinRate => "join_rate",
            Limit::SessionsPerIp => "sessions_per_ip",
            Limit::Sessions => "sessions",
            Limit::ViewersPerLive => "viewers_per_live",
            Limit::ConnectionsPerIp => "connections_per_ip",
            Limit::Connections => "connections",
            Limit::Guesses => "credential_guesses",
            Limit::Busy => "cpu",
        }
    }

    /// Whether it is this client's doing (429) or the server's (503).
    pub fn per_client(self) -> bool {
        matches!(
            self,
            Limit::JoinRate | Limit::SessionsPerIp | Limit::ConnectionsPerIp | Limit::Guesses
        )
    }

    /// What to tell the client, and its operator.
    pub fn reason(self) -> &'static str {
        match self {
            Limit::JoinRate => {
                "too many new sessions or streams from your address: slow down and retry \
                 (--joins-per-ip)"
            }
            Limit::SessionsPerIp => {
                "your address holds too many sessions: end some first (--max-sessions-per-ip)"
            }
            Limit::Sessions => "the server is full: try again later (--max-sessions)",
            Limit::ViewersPerLive => "this live has as many viewers as it takes (--max-viewers)",
            Limit::ConnectionsPerIp => {
                "too many connections from your address (--max-connections-per-ip)"
            }
            Limit::Connections => "the server has too many connections (--max-connections)",
            Limit::Guesses => {
                "too many wrong keys or tokens from your address: check the credential and \
                 try again in a minute"
            }
            Limit::Busy => {
                "the server is at its CPU limit: try again later, or watch from another \
                 server (--max-load)"
            }
        }
    }
}

/// A refusal: the limit, and when trying again makes sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub limit: Limit,
    pub retry_after: Duration,
}

impl Refusal {
    pub fn new(limit: Limit) -> Self {
        let retry_after = match limit {
            Limit::JoinRate => Duration::from_secs(1),
            Limit::Connections | Limit::ConnectionsPerIp => Duration::from_secs(2),
            Limit::Busy => Duration::from_secs(5),
            _ => Duration::from_secs(10),
        };
        Self { limit, retry_after }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.limit.reason())
    }
}

impl std::error::Error for Refusal {}

/// The limits' settings (from the flags); `0` means no limit.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    pub sessions: SessionCaps,
    pub connections: ConnectionCaps,
    /// New sessions and streams per second per address, and the burst.
    pub joins_per_ip: u32,
    pub join_burst: u32,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Addresses no per-address limit applies to.
    pub exempt: Vec<IpNet>,
}

impl LimitsConfig {
    /// No limits at all (tests, internal use).
    pub fn none() -> Self {
        Self {
            sessions: SessionCaps::NONE,
            connections: ConnectionCaps::NONE,
            joins_per_ip: 0,
            join_burst: 0,
            trusted_proxies: Vec::new(),
            exempt: Vec::new(),
        }
    }
}

pub struct Limits {
    config: LimitsConfig,
    joins: Option<DefaultKeyedRateLimiter<IpAddr>>,
    pub sessions: Arc<SessionBook>,
    pub connections: Arc<Connections>,
    guesses: guesses::Guesses,
    refused: Arc<Refused>,
}

impl Limits {
    /// Limits whose refusals are counted in `metrics` (`vessel_refused`).
    pub fn with_metrics(config: LimitsConfig, metrics: &Metrics) -> Self {
        let refused = Refused {
            counts: Limit::ALL.map(|l| {
                metrics
                    .refused
                    .get_or_create(&LimitLabel { limit: l.name() })
                    .clone()
            }),
            ..Refused::default()
        };
        Self::counted(config, Arc::new(refused))
    }

    pub fn new(config: LimitsConfig) -> Self {
        Self::counted(config, Arc::new(Refused::default()))
    }

    fn counted(config: LimitsConfig, refused: Arc<Refused>) -> Self {
        let joins = NonZeroU32::new(config.joins_per_ip).map(|rate| {
            let burst = NonZeroU32::new(config.join_burst.max(config.joins_per_ip)).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Self {
            sessions: Arc::new(SessionBook::new(config.sessions, refused.clone())),
            connections: Arc::new(Connections::new(config.connections, refused.clone())),
            joins,
            guesses: guesses::Guesses::default(),
            config,
            refused,
        }
    }

    pub fn none() -> Self {
        Self::new(LimitsConfig::none())
    }

    pub fn config(&self) -> &LimitsConfig {
        &self.config
    }

    /// The client of a request from `peer` with `forwarded_for`.
    pub fn client(&self, peer: IpAddr, forwarded_for: Option<&str>) -> Client {
        let ip = client::client_ip(peer, forwarded_for, &self.config.trusted_proxies);
        Client {
            ip,
            exempt: client::is_in(ip, &self.config.exempt),
        }
    }

    /// Whether a TCP peer is exempt from the per-address connection cap:
    /// an exempt address, or a trusted proxy (which carries many clients).
    pub fn exempt_peer(&self, peer: IpAddr) -> bool {
        let peer = client::canonical(peer);
        client::is_in(peer, &self.config.exempt)
            || client::is_in(peer, &self.config.trusted_proxies)
    }

    /// One new session, stream or credential for `client`: within its rate?
    pub fn join(&self, client: &Client) -> Result<(), Refusal> {
        let Some(joins) = &self.joins else {
            return Ok(());
        };
        if client.exempt {
            return Ok(());
        }
        joins.check_key(&client.ip).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let refusal = Refusal {
                limit: Limit::JoinRate,
                retry_after: wait.max(Duration::from_secs(1)),
            };
            self.refused(refusal)
        })
    }

    /// Checks a credential `client` presented (`check`), unless its address
    /// has presented too many wrong ones lately; a wrong one counts.
    /// `presented`: whether there was a credential at all (asking without
    /// one is no guess).
    pub fn credential<T, E>(
        &self,
        client: &Client,
        presented: bool,
        check: impl FnOnce() -> Result<T, E>,
        is_wrong: impl FnOnce(&E) -> bool,
    ) -> Result<Result<T, E>, Refusal> {
        if !presented || client.exempt {
            return Ok(check());
        }
        let now = Instant::now();
        if let Err(wait) = self.guesses.allowed(client.ip, now) {
            return Err(self.refused(Refusal {
                limit: Limit::Guesses,
                retry_after: wait.max(Duration::from_secs(1)),
            }));
        }
        let result = check();
        if let Err(e) = &result
            && is_wrong(e)
        {
            self.guesses.wrong(client.ip, now);
        }
        Ok(result)
    }

    /// Counts and logs a refusal (by any limit), and hands it back.
    pub fn refused(&self, refusal: Refusal) -> Refusal {
        self.refused.count(refusal.limit);
        refusal
    }

    /// Refusals per limit since start, for `/metrics`.
    pub fn refusals(&self) -> Vec<(Limit, u64)> {
        self.refused.counts()
    }

    /// Forgets the rate state of addresses that have gone quiet: call now
    /// and then, so the table holds only recent clients.
    pub fn tidy(&self) {
        self.guesses.tidy(Instant::now());
        if let Some(joins) = &self.joins {
            joins.retain_recent();
            joins.shrink_to_fit();
        }
    }

    /// Addresses with rate state held.
    pub fn rate_entries(&self) -> usize {
        self.joins.as_ref().map_or(0, |j| j.len())
    }
}

/// Refusal counts, and one log line per limit per ten seconds.
#[derive(Default)]
pub struct Refused {
    counts: [Counter; 8],
    /// Per limit: when it was last logged (ms since `epoch`), and how many
    /// refusals since.
    logged_at: [AtomicU64; 8],
    since_log: [AtomicU64; 8],
    epoch: std::sync::OnceLock<Instant>,
}

const LOG_EVERY: Duration = Duration::from_secs(10);

impl Refused {
    pub fn count(&self, limit: Limit) {
        let i = Limit::ALL.iter().position(|l| *l == limit).unwrap_or(0);
        self.counts[i].inc();
        let held = self.since_log[i].fetch_add(1, Ordering::Relaxed) + 1;
        let epoch = *self.epoch.get_or_init(Instant::now);
        let now = epoch.elapsed().as_millis() as u64 + 1;
        let last = self.logged_at[i].load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= LOG_EVERY.as_millis() as u64;
        if due
            && self.logged_at[i]
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.since_log[i].store(0, Ordering::Relaxed);
            tracing::warn!(
                limit = limit.name(),
                refused = held,
                "refusing clients over a limit: {}",
                limit.reason()
            );
        }
    }

    pub fn counts(&self) -> Vec<(Limit, u64)> {
        Limit::ALL
            .iter()
            .zip(&self.counts)
            .map(|(l, c)| (*l, c.get()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: u32, burst: u32) -> Limits {
        Limits::new(LimitsConfig {
            joins_per_ip: rate,
            join_burst: burst,
            exempt: vec!["127.0.0.1/32".parse().unwrap()],
            trusted_proxies: vec!["10.0.0.1/32".parse().unwrap()],
            ..LimitsConfig::none()
        })
    }

    #[test]
    fn the_join_rate_binds_per_address_after_the_burst() {
        let l = limits(1, 5);
        let a = l.client("192.0.2.1".parse().unwrap(), None);
        let b = l.client("192.0.2.2".parse().unwrap(), None);
        for _ in 0..5 {
            l.join(&a).unwrap();
        }
        let refusal = l.join(&a).unwrap_err();
        assert_eq!(refusal.limit, Limit::JoinRate);
        assert!(refusal.retry_after >= Duration::from_secs(1));
        // Another address is not held back by the first.
        l.join(&b).unwrap();
        let counts = l.refusals();
        assert_eq!(
            counts
                .iter()
                .find(|(k, _)| *k == Limit::JoinRate)
                .unwrap()
                .1,
            1
        );
        assert_eq!(l.rate_entries(), 2);
    }

    #[test]
    fn exempt_addresses_and_proxied_clients() {
        let l = limits(1, 1);
        let local = l.client("127.0.0.1".parse().unwrap(), None);
        assert!(local.exempt);
        for _ in 0..100 {
            l.join(&local).unwrap();
        }
        // Behind the trusted proxy, each forwarded client has its own rate.
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let x = l.client(proxy, Some("198.51.100.7"));
        let y = l.client(proxy, Some("198.51.100.8"));
        assert_eq!(x.ip, "198.51.100.7".parse::<IpAddr>().unwrap());
        l.join(&x).unwrap();
        l.join(&y).unwrap();
        assert!(l.join(&x).is_err());
        assert!(l.exempt_peer(proxy));
        assert!(!l.exempt_peer("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn no_rate_means_no_limit() {
        let l = Limits::none();
        let a = l.client("192.0.2.1".parse().unwrap(), None);
        for _ in 0..1000 {
            l.join(&a).unwrap();
        }
    }
}
