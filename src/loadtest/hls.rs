//! `vessel loadtest --hls`: N LL-HLS clients on one live, each behaving like
//! hls.js in low-latency mode, to measure what HTTP delivery costs the
//! server (its CPU time and memory from `/proc`) rather than how a player
//! looks.
//!
//! It casts nothing: LL-HLS needs an H.264 live, which the WebRTC caster
//! (synthetic VP8) is not; put one on air first (FFmpeg over RTMP, see
//! scripts/bench-hls-load). Each client reads the multivariant playlist
//! once and the media playlist once, then loops: a blocking reload for the
//! part its last playlist's preload hint names (`_HLS_msn`/`_HLS_part`,
//! held by the server until that part exists), then a GET of that part.
//! All on one HTTP/1.1 keep-alive connection per client, one request at a
//! time (hls.js may overlap the part and the next reload on two; one keeps
//! the connection count equal to the client count).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use super::LoadtestArgs;
use super::report::{self, Histogram, ProcSample, Quantiles};

/// Counters all clients add to; the window's figures are differences.
#[derive(Default)]
struct Stats {
    playlists: AtomicU64,
    parts: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    /// Clients that have received at least one part.
    receiving: AtomicUsize,
    /// Latencies are recorded only inside the measurement window.
    measuring: AtomicBool,
    /// Blocking reload's return → the part's last byte.
    part_latency: Mutex<Histogram>,
    /// How long the server held each blocking reload.
    reload_hold: Mutex<Histogram>,
    first_errors: Mutex<Vec<String>>,
}

impl Stats {
    fn fail(&self, e: Fail) {
        match e {
            Fail::Timeout => self.timeouts.fetch_add(1, Ordering::Relaxed),
            Fail::Other(_) => self.errors.fetch_add(1, Ordering::Relaxed),
        };
        let mut first = self.first_errors.lock().unwrap_or_else(|e| e.into_inner());
        if first.len() < 5 {
            first.push(match e {
                Fail::Timeout => "timed out".into(),
                Fail::Other(s) => s,
            });
        }
    }

    fn record(&self, h: &Mutex<Histogram>, d: Duration) {
        if self.measuring.load(Ordering::Relaxed) {
            h.lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(d.as_micros() as u64);
        }
    }
}

enum Fail {
    Timeout,
    Other(String),
}

impl From<reqwest::Error> for Fail {
    fn from(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            Fail::Timeout
        } else {
            Fail::Other(e.to_string())
        }
    }
}

/// Per second over the measurement window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HlsReport {
    pub server: String,
    pub live: String,
    pub clients: usize,
    /// Clients that received a part during the run.
    pub receiving: usize,
    pub window_s: f64,
    pub playlists_per_s: f64,
    pub parts_per_s: f64,
    /// Response bodies (playlists and parts), bits per second.
    pub bits_per_s: f64,
    /// Blocking reload's return → the part's bytes received: the server's
    /// delay in handing out a part that already exists.
    pub part_latency_ms: Latency,
    /// How long blocking reloads were held (about a part's duration).
    pub reload_hold_ms: Latency,
    /// Over the whole run (ramp included): non-2xx answers and failed
    /// connections, and requests that got no answer in 10 s.
    pub errors: u64,
    pub timeouts: u64,
    pub server_usage: Option<HlsServerUsage>,
    /// This load test's own CPU over the window, in cores (1.0 = one core
    /// busy): on a shared machine it competes with the server.
    pub loadtest_cpu_cores: f64,
    pub first_errors: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Latency {
    pub samples: u64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    fn of(h: &Histogram) -> Self {
        let ms = |v: u64| v as f64 / 1000.0;
        let Quantiles {
            samples,
            p50,
            p99,
            max,
        } = h.summary_ms();
        Self {
            samples,
            p50,
            p95: ms(h.quantile(0.95)),
            p99,
            max,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HlsServerUsage {
    pub pid: u32,
    pub cpu_s: f64,
    /// CPU seconds per second: 1.0 is one core busy.
    pub cpu_cores: f64,
    /// Server CPU per request (playlist or part), microseconds.
    pub cpu_us_per_request: f64,
    pub rss_mib: f64,
}

/// Runs the HLS load test; Err for a test that could not run.
pub fn run(args: &LoadtestArgs) -> Result<HlsReport, String> {
    if args.viewers == 0 || args.ramp <= 0.0 {
        return Err("--viewers and --ramp must be positive".into());
    }
    let server = args.server.trim_end_matches('/').to_string();
    let mut master = format!("{server}/hls/{}/index.m3u8", args.live);
    if let Some(t) = &args.token {
        master.push_str(&format!("?token={t}"));
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let stats = Arc::new(Stats::default());
    let (stop_tx, stop_rx) = watch::channel(false);

    // One client first: a live that is not on air (or not H.264) fails
    // here, once, not a thousand times.
    rt.block_on(async {
        let http = client()?;
        let text = get_text(&http, &master).await.map_err(|e| match e {
            Fail::Timeout => format!("{master}: timed out"),
            Fail::Other(s) => s,
        })?;
        variant_uri(&text).map(|_| ())
    })
    .map_err(|e| format!("no LL-HLS playlist at {master}: {e}"))?;

    let ramp_start = Instant::now();
    for i in 0..args.viewers {
        let at = ramp_start + Duration::from_secs_f64(i as f64 / args.ramp);
        let (stats, stop, master) = (stats.clone(), stop_rx.clone(), master.clone());
        let skip_every = args.hls_skip_every;
        rt.spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            viewer(stats, stop, master, skip_every).await;
        });
    }
    let ramp = Duration::from_secs_f64(args.viewers as f64 / args.ramp);
    // Ramp, then a warm-up for the last clients to settle into the loop.
    while ramp_start.elapsed() < ramp + Duration::from_secs(2) {
        std::thread::sleep(Duration::from_secs(1));
        progress(&stats, args.viewers, ramp_start, "ramp");
    }

    let (p0, n0, b0) = counters(&stats);
    let me = std::process::id();
    let (own0, cpu0) = (
        ProcSample::read(me).ok(),
        args.server_pid.and_then(|p| ProcSample::read(p).ok()),
    );
    stats.measuring.store(true, Ordering::Relaxed);
    let window_s = report::measurement_window(args.duration, || {
        progress(&stats, args.viewers, ramp_start, "measure")
    });
    stats.measuring.store(false, Ordering::Relaxed);
    let (p1, n1, b1) = counters(&stats);
    let (own1, cpu1) = (
        ProcSample::read(me).ok(),
        args.server_pid.and_then(|p| ProcSample::read(p).ok()),
    );
    eprintln!();
    let _ = stop_tx.send(true);
    // Clients blocked in a reload see the stop only when it returns.
    rt.shutdown_timeout(Duration::from_secs(2));

    let hz = report::clock_ticks_per_second() as f64;
    let cores = |a: ProcSample, b: ProcSample| (b.cpu_ticks - a.cpu_ticks) as f64 / hz / window_s;
    let requests = (p1 - p0) + (n1 - n0);
    let server_usage = match (args.server_pid, cpu0, cpu1) {
        (Some(pid), Some(a), Some(b)) => {
            let cpu_s = (b.cpu_ticks - a.cpu_ticks) as f64 / hz;
            Some(HlsServerUsage {
                pid,
                cpu_s,
                cpu_cores: cores(a, b),
                cpu_us_per_request: cpu_s * 1e6 / requests.max(1) as f64,
                rss_mib: b.rss_kib as f64 / 1024.0,
            })
        }
        _ => None,
    };
    let lock = |h: &Mutex<Histogram>| h.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(HlsReport {
        server,
        live: args.live.clone(),
        clients: args.viewers,
        receiving: stats.receiving.load(Ordering::Relaxed),
        window_s,
        playlists_per_s: (p1 - p0) as f64 / window_s,
        parts_per_s: (n1 - n0) as f64 / window_s,
        bits_per_s: (b1 - b0) as f64 * 8.0 / window_s,
        part_latency_ms: Latency::of(&lock(&stats.part_latency)),
        reload_hold_ms: Latency::of(&lock(&stats.reload_hold)),
        errors: stats.errors.load(Ordering::Relaxed),
        timeouts: stats.timeouts.load(Ordering::Relaxed),
        server_usage,
        loadtest_cpu_cores: match (own0, own1) {
            (Some(a), Some(b)) => cores(a, b),
            _ => 0.0,
        },
        first_errors: stats
            .first_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
    })
}

fn counters(s: &Stats) -> (u64, u64, u64) {
    (
        s.playlists.load(Ordering::Relaxed),
        s.parts.load(Ordering::Relaxed),
        s.bytes.load(Ordering::Relaxed),
    )
}

fn progress(s: &Stats, clients: usize, start: Instant, phase: &str) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "\r{phase:>7} {:>5.0} s  clients {}/{} receiving, {} playlists, {} parts, {} errors, {} timeouts  ",
        start.elapsed().as_secs_f64(),
        s.receiving.load(Ordering::Relaxed),
        clients,
        s.playlists.load(Ordering::Relaxed),
        s.parts.load(Ordering::Relaxed),
        s.errors.load(Ordering::Relaxed),
        s.timeouts.load(Ordering::Relaxed),
    );
    let _ = err.flush();
}

/// A client of its own per viewer: its own pool, so its own connection.
fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(1)
        // Loopback only; a proxy from the environment would measure it.
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())
}

async fn get(http: &reqwest::Client, url: &str) -> Result<bytes::Bytes, Fail> {
    let res = http.get(url).send().await?;
    let status = res.status();
    if !status.is_success() {
        let body = res.text().await.unwrap_or_default();
        return Err(Fail::Other(format!("{url}: {status} {}", body.trim())));
    }
    Ok(res.bytes().await?)
}

async fn get_text(http: &reqwest::Client, url: &str) -> Result<String, Fail> {
    let body = get(http, url).await?;
    String::from_utf8(body.to_vec()).map_err(|_| Fail::Other(format!("{url}: not UTF-8")))
}

/// One viewer: after a failure it starts over (as a player would) a
/// second later, until the test stops.
async fn viewer(stats: Arc<Stats>, stop: watch::Receiver<bool>, master: String, skip_every: u32) {
    let Ok(http) = client() else { return };
    let mut received = false;
    while !*stop.borrow() {
        if let Err(e) = session(&stats, &stop, &http, &master, skip_every, &mut received).await {
            if *stop.borrow() {
                return;
            }
            stats.fail(e);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

async fn session(
    stats: &Stats,
    stop: &watch::Receiver<bool>,
    http: &reqwest::Client,
    master: &str,
    skip_every: u32,
    received: &mut bool,
) -> Result<(), Fail> {
    let playlist = |text: &str| {
        stats.playlists.fetch_add(1, Ordering::Relaxed);
        stats.bytes.fetch_add(text.len() as u64, Ordering::Relaxed);
    };
    let text = get_text(http, master).await?;
    playlist(&text);
    let media = resolve(master, &variant_uri(&text).map_err(Fail::Other)?);
    let mut text = get_text(http, &media).await?;
    playlist(&text);
    let mut reloads: u64 = 0;
    while !*stop.borrow() {
        let hint = preload_hint(&text)
            .ok_or_else(|| Fail::Other(format!("{media}: a playlist without a preload hint")))?;
        let (msn, part) = part_of(&hint)
            .ok_or_else(|| Fail::Other(format!("{media}: a hint not to a part: {hint}")))?;
        reloads += 1;
        let skip = skip_every > 0 && reloads.is_multiple_of(skip_every as u64);
        let sep = if media.contains('?') { '&' } else { '?' };
        let url = format!(
            "{media}{sep}_HLS_msn={msn}&_HLS_part={part}{}",
            if skip { "&_HLS_skip=YES" } else { "" }
        );
        let asked = Instant::now();
        text = get_text(http, &url).await?;
        let listed = Instant::now();
        playlist(&text);
        stats.record(&stats.reload_hold, listed - asked);
        // The part the reload waited for now exists: what follows is the
        // server's cost of handing it out.
        let body = get(http, &resolve(&media, &hint)).await?;
        stats.record(&stats.part_latency, listed.elapsed());
        stats.parts.fetch_add(1, Ordering::Relaxed);
        stats.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
        if !*received {
            *received = true;
            stats.receiving.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// The first variant's URI in a multivariant playlist (the highest: Vessel
/// lists it first, and players start with the first).
fn variant_uri(text: &str) -> Result<String, String> {
    let mut lines = text.lines().map(str::trim);
    while let Some(l) = lines.next() {
        if l.starts_with("#EXT-X-STREAM-INF") {
            return lines
                .find(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string)
                .ok_or_else(|| "a STREAM-INF without a URI".into());
        }
    }
    Err(format!("not a multivariant playlist: {}", text.trim()))
}

/// The URI of the media playlist's `#EXT-X-PRELOAD-HINT:TYPE=PART`.
fn preload_hint(text: &str) -> Option<String> {
    let line = text
        .lines()
        .find(|l| l.starts_with("#EXT-X-PRELOAD-HINT:") && l.contains("TYPE=PART"))?;
    let rest = &line[line.find("URI=\"")? + 5..];
    Some(rest[..rest.find('"')?].to_string())
}

/// (msn, part) of Vessel's `part-{msn}-{part}.m4s[?k=…]`.
fn part_of(uri: &str) -> Option<(u64, u32)> {
    let name = uri.split('?').next()?.rsplit('/').next()?;
    let (m, p) = name
        .strip_prefix("part-")?
        .strip_suffix(".m4s")?
        .split_once('-')?;
    Some((m.parse().ok()?, p.parse().ok()?))
}

/// `uri` relative to the playlist at `base` (absolute URIs as they are).
fn resolve(base: &str, uri: &str) -> String {
    if uri.starts_with("http://") || uri.starts_with("https://") {
        return uri.to_string();
    }
    let base = base.split('?').next().unwrap_or(base);
    let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
    if let Some(root) = uri.strip_prefix('/') {
        // Scheme and authority of base, then the absolute path.
        let after_scheme = base.find("://").map_or(0, |i| i + 3);
        let authority_end = base[after_scheme..]
            .find('/')
            .map_or(base.len(), |i| after_scheme + i);
        return format!("{}/{root}", &base[..authority_end]);
    }
    format!("{dir}{uri}")
}

impl std::fmt::Display for HlsReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let q = |l: &Latency| {
            format!(
                "p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
                l.p50, l.p95, l.p99, l.max, l.samples
            )
        };
        writeln!(
            f,
            "server            {} (live {}, LL-HLS)",
            self.server, self.live
        )?;
        writeln!(
            f,
            "clients           {} asked, {} received parts; measured over {:.1} s",
            self.clients, self.receiving, self.window_s
        )?;
        writeln!(
            f,
            "requests          {:.0} playlists/s, {:.0} parts/s, {:.1} Mbit/s",
            self.playlists_per_s,
            self.parts_per_s,
            self.bits_per_s / 1e6
        )?;
        writeln!(f, "part latency      {}", q(&self.part_latency_ms))?;
        writeln!(f, "reload held       {}", q(&self.reload_hold_ms))?;
        writeln!(
            f,
            "errors            {} errors, {} timeouts (whole run)",
            self.errors, self.timeouts
        )?;
        if let Some(u) = &self.server_usage {
            writeln!(
                f,
                "server process    pid {}: {:.2} CPU s, {:.1} % of a core, {:.1} µs CPU per request; RSS {:.1} MiB",
                u.pid,
                u.cpu_s,
                u.cpu_cores * 100.0,
                u.cpu_us_per_request,
                u.rss_mib
            )?;
        }
        writeln!(
            f,
            "loadtest process  {:.1} % of a core",
            self.loadtest_cpu_cores * 100.0
        )?;
        for e in &self.first_errors {
            writeln!(f, "error             {e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_vessel_playlists_say() {
        let mv =
            "#EXTM3U\n#EXT-X-VERSION:6\n#EXT-X-STREAM-INF:BANDWIDTH=1000\nsrc/index.m3u8?token=t\n";
        assert_eq!(variant_uri(mv).unwrap(), "src/index.m3u8?token=t");
        assert!(variant_uri("#EXTM3U\n").is_err());
        let media = "#EXTM3U\n#EXT-X-PART:DURATION=0.5,URI=\"part-5-0.m4s?k=x\"\n#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part-5-1.m4s?k=x\"\n";
        let hint = preload_hint(media).unwrap();
        assert_eq!(hint, "part-5-1.m4s?k=x");
        assert_eq!(part_of(&hint), Some((5, 1)));
        assert_eq!(part_of("seg-5.m4s"), None);
        let base = "http://127.0.0.1:8080/hls/show/index.m3u8?token=t";
        assert_eq!(
            resolve(base, "src/index.m3u8"),
            "http://127.0.0.1:8080/hls/show/src/index.m3u8"
        );
        assert_eq!(
            resolve(base, "/other/x.m3u8"),
            "http://127.0.0.1:8080/other/x.m3u8"
        );
        assert_eq!(resolve(base, "http://cdn/x"), "http://cdn/x");
    }
}
