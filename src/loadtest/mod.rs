//! `vessel loadtest`: one caster and many viewers, real WebRTC peers that
//! speak only WHIP/WHEP over HTTP, so it measures Vessel or any other
//! WHIP/WHEP server.
//!
//! The caster sends synthetic VP8 (valid payload descriptors, keyframes on
//! request) and Opus, each packet stamped with its send time; viewers measure
//! join time, delivery, loss and forwarding delay on the same clock. With
//! `--server-pid` the server's CPU time and memory are read from `/proc`.

mod client;
pub mod floor;
pub mod hls;
pub mod probe;
pub mod report;

use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use client::{Totals, ViewerResult, Worker};
use probe::Epoch;
use report::{Histogram, ProcSample, Report, ServerUsage};

#[derive(Debug, Clone, clap::Args)]
pub struct LoadtestArgs {
    /// Base URL of the server: WHIP at {server}/whip/{live}, WHEP at
    /// {server}/whep/{live} (see --whip and --whep for other layouts).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub server: String,

    /// The live to cast and watch.
    #[arg(long, default_value = "loadtest")]
    pub live: String,

    /// WHIP endpoint, when not {server}/whip/{live}.
    #[arg(long)]
    pub whip: Option<String>,

    /// WHEP endpoint, when not {server}/whep/{live}.
    #[arg(long)]
    pub whep: Option<String>,

    /// Stream key for WHIP (`Authorization: Bearer`).
    #[arg(long, env = "VESSEL_LOADTEST_KEY", hide_env_values = true)]
    pub key: Option<String>,

    /// Viewer token for WHEP, for a private live.
    #[arg(long, env = "VESSEL_LOADTEST_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Number of viewers.
    #[arg(long, default_value_t = 100)]
    pub viewers: usize,

    /// Viewers started per second.
    #[arg(long, default_value_t = 50.0)]
    pub ramp: f64,

    /// Length of the measurement window once every viewer has started,
    /// seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,

    /// Video bitrate of the caster, bits per second.
    #[arg(long, default_value_t = 1_000_000)]
    pub bitrate: u64,

    /// Video frames per second.
    #[arg(long, default_value_t = 30)]
    pub fps: u32,

    /// Worker threads for the peers (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,

    /// Local address the peers bind (their only ICE candidate).
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,

    /// PID of a local server, to report its CPU time per viewer and memory
    /// per viewer.
    #[arg(long)]
    pub server_pid: Option<u32>,

    /// Print the report as JSON on stdout (the progress line stays on stderr).
    #[arg(long)]
    pub json: bool,

    /// Measure the floor instead (no server): what each copy of a packet
    /// costs at the least on this machine, SRTP (AES-256-GCM) and
    /// `sendmmsg` to --viewers loopback sockets at the caster's packet
    /// rate for --duration seconds. Compare Vessel's CPU per packet sent
    /// against it (BENCHMARKS.md).
    #[arg(long)]
    pub floor: bool,

    /// LL-HLS instead of WebRTC: --viewers HTTP clients on
    /// {server}/hls/{live}/index.m3u8, each like hls.js in low-latency
    /// mode (blocking reloads, then each part), one keep-alive connection
    /// each. Casts nothing: put an H.264 live on air first (FFmpeg over
    /// RTMP: scripts/bench-hls-load).
    #[arg(long, conflicts_with = "floor")]
    pub hls: bool,

    /// With --hls: every Nth blocking reload asks for a delta update
    /// (`_HLS_skip=YES`); 1 is every reload (hls.js asks whenever the
    /// playlist offers CAN-SKIP-UNTIL), 0 never.
    #[arg(long, default_value_t = 1)]
    pub hls_skip_every: u32,
}

type WorkerResult = (Vec<ViewerResult>, Histogram, Histogram);

/// Runs the load test and prints its report; Err for a test that could not run.
pub fn run(args: LoadtestArgs) -> Result<Report, String> {
    if args.viewers == 0 || args.ramp <= 0.0 || args.fps == 0 {
        return Err("--viewers, --ramp and --fps must be positive".into());
    }
    let server = args.server.trim_end_matches('/').to_string();
    let whip = args
        .whip
        .clone()
        .unwrap_or(format!("{server}/whip/{}", args.live));
    let whep = args
        .whep
        .clone()
        .unwrap_or(format!("{server}/whep/{}", args.live));
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let epoch = Epoch(Instant::now());
    let totals = Arc::new(Totals::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (caster_stop_tx, caster_stop_rx) = watch::channel(false);
    let (go_tx, go_rx) = watch::channel::<Option<Instant>>(None);

    let mut workers = Vec::new();
    for w in 0..threads {
        let totals = totals.clone();
        let stop = stop_rx.clone();
        let caster_stop = caster_stop_rx.clone();
        let mut go = go_rx.clone();
        let (whip, whep) = (whip.clone(), whep.clone());
        let args = args.clone();
        let handle = std::thread::Builder::new()
            .name(format!("loadtest-{w}"))
            .spawn(move || -> Result<WorkerResult, String> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                    let http = reqwest::Client::builder()
                        .timeout(Duration::from_secs(15))
                        .build()
                        .map_err(|e| e.to_string())?;
                    let worker = Rc::new(Worker {
                        epoch,
                        totals,
                        http,
                        bind: args.bind,
                        key: args.key.clone(),
                        token: args.token.clone(),
                        stop,
                        caster_stop,
                        delay: Default::default(),
                        join: Default::default(),
                    });
                    let caster = (w == 0).then(|| {
                        tokio::task::spawn_local(client::cast(
                            worker.clone(),
                            whip,
                            args.bitrate,
                            args.fps,
                        ))
                    });
                    // Viewers start once the caster is on air, `ramp` per second
                    // across all workers.
                    let mut stopping = worker.stop.clone();
                    let start = loop {
                        if let Some(at) = *go.borrow() {
                            break Some(at);
                        }
                        tokio::select! {
                            r = go.changed() => if r.is_err() { break None },
                            _ = stopping.changed() => break None,
                        }
                    };
                    let mut viewers = Vec::new();
                    if let Some(start) = start {
                        for i in (w..args.viewers).step_by(threads) {
                            let at = start + Duration::from_secs_f64(i as f64 / args.ramp);
                            tokio::time::sleep_until(at.into()).await;
                            if *worker.stop.borrow() {
                                break;
                            }
                            viewers.push(tokio::task::spawn_local(client::view(
                                worker.clone(),
                                whep.clone(),
                            )));
                        }
                    }
                    let mut results = Vec::new();
                    for v in viewers {
                        results.push(v.await.unwrap_or_default());
                    }
                    if let Some(c) = caster
                        && let Err(e) = c.await
                    {
                        return Err(format!("caster task: {e}"));
                    }
                    let delay = worker.delay.borrow().clone();
                    let join = worker.join.borrow().clone();
                    Ok((results, delay, join))
                })
            })
            .map_err(|e| e.to_string())?;
        workers.push(handle);
    }

    let stop_all = |workers: Vec<std::thread::JoinHandle<Result<WorkerResult, String>>>| {
        let _ = caster_stop_tx.send(true);
        // Time for the last packets and their repairs to arrive.
        std::thread::sleep(Duration::from_millis(500));
        let _ = stop_tx.send(true);
        workers
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("worker panicked".into())))
            .collect::<Vec<_>>()
    };

    // The caster first: nothing to watch until it is on air.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !totals.caster_connected.load(Ordering::Relaxed) {
        let failed = totals
            .caster_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if failed.is_some() || Instant::now() > deadline || workers.iter().any(|h| h.is_finished())
        {
            let mut errors: Vec<String> = stop_all(workers)
                .into_iter()
                .filter_map(Result::err)
                .collect();
            errors.extend(failed);
            return Err(format!(
                "the caster did not connect to {whip}: {}",
                if errors.is_empty() {
                    "timed out".to_string()
                } else {
                    errors.join("; ")
                }
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let proc_before = args.server_pid.and_then(|p| ProcSample::read(p).ok());
    let ramp_start = Instant::now();
    let _ = go_tx.send(Some(ramp_start));

    // Ramp: until every viewer has started and connected (or given up).
    let ramp = Duration::from_secs_f64(args.viewers as f64 / args.ramp);
    let ramp_deadline = ramp_start + ramp + Duration::from_secs(20);
    loop {
        std::thread::sleep(Duration::from_secs(1));
        progress(&totals, args.viewers, ramp_start, "ramp");
        // Those turned away count as settled: they keep retrying while
        // the server stays full.
        let settled = totals.connected.load(Ordering::Relaxed)
            + totals.failed.load(Ordering::Relaxed)
            + totals.waiting.load(Ordering::Relaxed);
        if (Instant::now() >= ramp_start + ramp && settled >= args.viewers)
            || Instant::now() > ramp_deadline
        {
            break;
        }
    }

    // The measurement window.
    let packets0 = totals.packets.load(Ordering::Relaxed);
    let bytes0 = totals.bytes.load(Ordering::Relaxed);
    let cpu0 = args.server_pid.and_then(|p| ProcSample::read(p).ok());
    totals.measuring.store(true, Ordering::Relaxed);
    let window_s = report::measurement_window(args.duration, || {
        progress(&totals, args.viewers, ramp_start, "measure")
    });
    totals.measuring.store(false, Ordering::Relaxed);
    let packets = totals.packets.load(Ordering::Relaxed) - packets0;
    let bytes = totals.bytes.load(Ordering::Relaxed) - bytes0;
    let cpu1 = args.server_pid.and_then(|p| ProcSample::read(p).ok());
    eprintln!();

    let mut viewers = Vec::new();
    let mut delay = Histogram::default();
    let mut join = Histogram::default();
    let mut errors = Vec::new();
    for r in stop_all(workers) {
        match r {
            Ok((v, d, j)) => {
                viewers.extend(v);
                delay.merge(&d);
                join.merge(&j);
            }
            Err(e) => errors.push(e),
        }
    }
    errors.extend(
        totals
            .caster_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .map(|e| format!("caster: {e}")),
    );
    errors.extend(viewers.iter().filter_map(|v| v.error.clone()));
    errors.truncate(5);
    let connected = viewers.iter().filter(|v| v.connected).count();
    let expected: u64 = viewers.iter().map(|v| v.expected).sum();
    let received: u64 = viewers.iter().map(|v| v.received).sum();
    let server_usage = match (args.server_pid, proc_before, cpu0, cpu1) {
        (Some(pid), Some(before), Some(a), Some(b)) => {
            let hz = report::clock_ticks_per_second() as f64;
            let cpu_s = (b.cpu_ticks - a.cpu_ticks) as f64 / hz;
            let per = cpu_s / window_s / connected.max(1) as f64;
            Some(ServerUsage {
                pid,
                cpu_s,
                cpu_s_per_viewer_s: per,
                viewers_per_core: if per > 0.0 { 1.0 / per } else { f64::INFINITY },
                rss_mib: b.rss_kib as f64 / 1024.0,
                rss_kib_per_viewer: b.rss_kib.saturating_sub(before.rss_kib) as f64
                    / connected.max(1) as f64,
            })
        }
        _ => None,
    };
    Ok(Report {
        server,
        live: args.live.clone(),
        viewers: args.viewers,
        connected,
        refused: totals.refused.load(Ordering::Relaxed),
        receiving: viewers.iter().filter(|v| v.window_packets > 0).count(),
        bitrate: args.bitrate,
        fps: args.fps,
        window_s,
        join_to_first_packet_ms: join.summary_ms(),
        packets_per_s: packets as f64 / window_s,
        bits_per_s: bytes as f64 * 8.0 / window_s,
        min_viewer_packets: viewers.iter().map(|v| v.window_packets).min().unwrap_or(0),
        loss_percent: if expected > 0 {
            100.0 * expected.saturating_sub(received) as f64 / expected as f64
        } else {
            100.0
        },
        forwarding_delay_ms: delay.summary_ms(),
        server_usage,
        errors,
    })
}

fn progress(totals: &Totals, viewers: usize, start: Instant, phase: &str) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "\r{phase:>7} {:>5.0} s  viewers {}/{} connected, {} receiving, {} failed, {} packets  ",
        start.elapsed().as_secs_f64(),
        totals.connected.load(Ordering::Relaxed),
        viewers,
        totals.receiving.load(Ordering::Relaxed),
        totals.failed.load(Ordering::Relaxed),
        totals.packets.load(Ordering::Relaxed),
    );
    let _ = err.flush();
}
