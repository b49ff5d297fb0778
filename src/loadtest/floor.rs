//! The floor: what one outgoing media packet costs on this machine at the
//! least, to compare Vessel's cost per packet against (`vessel loadtest
//! --floor`).
//!
//! A sender thread does what any SFU must for each copy of a packet and
//! nothing else: write a 12-byte RTP header, SRTP-protect the packet with
//! AEAD_AES_256_GCM (what str0m negotiates here, through the same aws-lc
//! code) under the viewer's own key, and hand the copies to the kernel with
//! the same `sendmmsg` batching Vessel uses, one datagram per viewer socket
//! on loopback. Receiver sockets are drained on another thread (pinned to
//! another core when there is one), as the load generator's viewers are.
//! The sender's CPU time (user and system, from `getrusage`) over the
//! copies it sent is the floor.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use serde::Serialize;

use super::LoadtestArgs;

/// The size of a full video packet on the wire, before SRTP's tag.
const PACKET: usize = 1200;
/// AES-GCM's tag.
const TAG: usize = 16;

#[derive(Debug, Serialize)]
pub struct FloorReport {
    pub viewers: usize,
    /// Packets of the live per second (each sent to every viewer).
    pub packets_per_s: f64,
    pub window_s: f64,
    /// Copies handed to the kernel, and how many the receivers got.
    pub copies: u64,
    pub received: u64,
    /// The sender's CPU time, split as the kernel reports it.
    pub user_s: f64,
    pub system_s: f64,
    /// The floor: sender CPU per copy, microseconds.
    pub us_per_copy: f64,
    /// Of which SRTP and our own loop (user) and the kernel (system).
    pub user_us_per_copy: f64,
    pub system_us_per_copy: f64,
}

impl std::fmt::Display for FloorReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "floor: {} viewers, {:.0} packets/s each, {:.1} s",
            self.viewers, self.packets_per_s, self.window_s
        )?;
        writeln!(
            f,
            "copies            {} sent, {} received",
            self.copies, self.received
        )?;
        writeln!(
            f,
            "cost per copy     {:.2} µs ({:.2} µs user: SRTP and the loop; {:.2} µs system: sendmmsg and loopback delivery)",
            self.us_per_copy, self.user_us_per_copy, self.system_us_per_copy
        )
    }
}

/// The packets per second of the loadtest's caster at `bitrate` and `fps`:
/// video in packets of [`PACKET`] bytes (at least one per frame) plus
/// 50/s of audio, all counted as full-size copies (the conservative floor).
fn packet_rate(bitrate: u64, fps: u32) -> f64 {
    let fps = f64::from(fps.max(1));
    let frame = bitrate as f64 / 8.0 / fps;
    (frame / (PACKET - 12) as f64).ceil().max(1.0) * fps + 50.0
}

pub fn run(args: &LoadtestArgs) -> Result<FloorReport, String> {
    let viewers = args.viewers.max(1);
    let receivers: Vec<UdpSocket> = (0..viewers)
        .map(|_| {
            let s = UdpSocket::bind((args.bind, 0))?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .collect::<std::io::Result<_>>()
        .map_err(|e| format!("cannot bind {viewers} receiver sockets: {e} (raise ulimit -n?)"))?;
    let addrs: Vec<SocketAddr> = receivers
        .iter()
        .map(|s| s.local_addr())
        .collect::<std::io::Result<_>>()
        .map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    let drain = {
        let (stop, received) = (stop.clone(), received.clone());
        std::thread::Builder::new()
            .name("floor-receivers".into())
            .spawn(move || {
                if cores > 1 {
                    pin_to(1);
                }
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    let mut got = 0;
                    for s in &receivers {
                        while s.recv(&mut buf).is_ok() {
                            got += 1;
                        }
                    }
                    received.fetch_add(got, Ordering::Relaxed);
                    if got == 0 {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
            })
            .map_err(|e| e.to_string())?
    };

    let rate = packet_rate(args.bitrate, args.fps);
    let window = Duration::from_secs_f64(args.duration.max(0.5));
    let bind = args.bind;
    let sender = std::thread::Builder::new()
        .name("floor-sender".into())
        .spawn(move || send(bind, &addrs, rate, window))
        .map_err(|e| e.to_string())?;
    let sent = sender
        .join()
        .map_err(|_| "the sender panicked".to_string())?;
    // Let the last copies land before counting.
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let _ = drain.join();
    let (copies, window_s, user, system) = sent?;
    let per = |s: f64| s * 1e6 / copies.max(1) as f64;
    Ok(FloorReport {
        viewers,
        packets_per_s: rate,
        window_s,
        copies,
        received: received.load(Ordering::Relaxed),
        user_s: user,
        system_s: system,
        us_per_copy: per(user + system),
        user_us_per_copy: per(user),
        system_us_per_copy: per(system),
    })
}

/// The sender: `rate` packets a second for `window`, each protected for and
/// sent to every address. Returns copies sent, the window, and its own user
/// and system CPU seconds.
fn send(
    bind: std::net::IpAddr,
    addrs: &[SocketAddr],
    rate: f64,
    window: Duration,
) -> Result<(u64, f64, f64, f64), String> {
    pin_to(0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let socket = std::net::UdpSocket::bind((bind, 0)).map_err(|e| e.to_string())?;
        socket.set_nonblocking(true).map_err(|e| e.to_string())?;
        let socket = tokio::net::UdpSocket::from_std(socket).map_err(|e| e.to_string())?;
        // One key per viewer, as each DTLS session derives its own.
        let keys: Vec<LessSafeKey> = (0..addrs.len())
            .map(|i| {
                let mut k = [0u8; 32];
                k[..8].copy_from_slice(&(i as u64).to_be_bytes());
                LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &k).expect("32-byte key"))
            })
            .collect();
        let payload = vec![0x5au8; PACKET - 12];
        let mut bufs: Vec<Vec<u8>> = vec![Vec::with_capacity(PACKET + TAG); addrs.len()];
        let interval = Duration::from_secs_f64(1.0 / rate);
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let (u0, s0) = thread_usage();
        let start = Instant::now();
        let mut copies = 0u64;
        let mut seq: u16 = 0;
        while start.elapsed() < window {
            ticks.tick().await;
            seq = seq.wrapping_add(1);
            for ((buf, key), _) in bufs.iter_mut().zip(&keys).zip(addrs) {
                buf.clear();
                let header = rtp_header(seq, u32::from(seq) * 3000, 0x1234_5678);
                buf.extend_from_slice(&header);
                buf.extend_from_slice(&payload);
                // SRTP AEAD: the header is the associated data, the IV is
                // the salt XOR (SSRC, ROC, SEQ); a counter stands in here.
                let mut iv = [0u8; 12];
                iv[10..].copy_from_slice(&seq.to_be_bytes());
                let nonce = Nonce::assume_unique_for_key(iv);
                let (head, body) = buf.split_at_mut(12);
                let tag = key
                    .seal_in_place_separate_tag(nonce, Aad::from(&*head), body)
                    .map_err(|e| e.to_string())?;
                buf.extend_from_slice(tag.as_ref());
            }
            let datagrams: Vec<(SocketAddr, &[u8])> =
                addrs.iter().zip(&bufs).map(|(a, b)| (*a, &b[..])).collect();
            crate::udp_batch::send_all(&socket, &datagrams).await;
            copies += datagrams.len() as u64;
        }
        let window_s = start.elapsed().as_secs_f64();
        let (u1, s1) = thread_usage();
        Ok((copies, window_s, u1 - u0, s1 - s0))
    })
}

fn rtp_header(seq: u16, ts: u32, ssrc: u32) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0] = 0x80;
    h[1] = 96;
    h[2..4].copy_from_slice(&seq.to_be_bytes());
    h[4..8].copy_from_slice(&ts.to_be_bytes());
    h[8..12].copy_from_slice(&ssrc.to_be_bytes());
    h
}

/// This thread's user and system CPU seconds.
fn thread_usage() -> (f64, f64) {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) } != 0 {
        return (0.0, 0.0);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(u.ru_utime), secs(u.ru_stime))
}

/// Pins the calling thread to `cpu` (best effort: a machine or cgroup
/// without it runs unpinned).
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let _ = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loadtests_caster_rate() {
        // 1 Mbit/s at 30 fps: 4167-byte frames in 4 packets, plus audio.
        assert_eq!(packet_rate(1_000_000, 30), 4.0 * 30.0 + 50.0);
        assert_eq!(packet_rate(0, 30), 30.0 + 50.0);
    }

    #[test]
    fn a_short_floor_run_sends_and_counts_every_copy() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: LoadtestArgs,
        }
        let Cli { args } = clap::Parser::try_parse_from([
            "floor",
            "--floor",
            "--viewers",
            "20",
            "--duration",
            "0.5",
        ])
        .expect("arguments");
        let r = run(&args).expect("floor run");
        assert_eq!(r.copies % 20, 0);
        assert!(r.copies >= 20 * 50, "{r:?}");
        assert!(r.received > r.copies / 2, "{r:?}");
        assert!(r.us_per_copy > 0.0, "{r:?}");
    }
}
