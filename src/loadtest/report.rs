//! What a load test measured: latency histograms, the server process's CPU
//! and memory, and the report (a table for people, JSON for scripts).

use std::fmt;

use serde::Serialize;

/// Values (µs) in logarithmic buckets 1 % wide: enough for percentiles,
/// constant memory however many packets arrive.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

const GROWTH: f64 = 1.01;

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; 2048],
            total: 0,
            max: 0,
        }
    }
}

impl Histogram {
    fn index(v: u64) -> usize {
        if v == 0 {
            0
        } else {
            ((v as f64).ln() / GROWTH.ln()) as usize + 1
        }
    }

    pub fn record(&mut self, v: u64) {
        let i = Self::index(v).min(self.counts.len() - 1);
        self.counts[i] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The value below which a fraction `q` of the samples lie (the upper
    /// edge of its bucket, so at most 1 % high).
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let edge = if i == 0 {
                    0
                } else {
                    GROWTH.powi(i as i32).ceil() as u64
                };
                return edge.min(self.max);
            }
        }
        self.max
    }

    pub fn summary_ms(&self) -> Quantiles {
        let ms = |v: u64| v as f64 / 1000.0;
        Quantiles {
            samples: self.total,
            p50: ms(self.quantile(0.50)),
            p99: ms(self.quantile(0.99)),
            max: ms(self.max),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Quantiles {
    pub samples: u64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// CPU time and memory of a process, from `/proc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSample {
    /// User + system time of all its threads, in clock ticks.
    pub cpu_ticks: u64,
    pub rss_kib: u64,
}

impl ProcSample {
    pub fn read(pid: u32) -> std::io::Result<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        Self::parse(&stat, &status)
            .ok_or_else(|| std::io::Error::other(format!("unreadable /proc/{pid}/stat")))
    }

    fn parse(stat: &str, status: &str) -> Option<Self> {
        // The command name may hold spaces and parentheses: fields start
        // after the last ')'. utime and stime are fields 14 and 15.
        let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())?;
        Some(Self {
            cpu_ticks: utime + stime,
            rss_kib,
        })
    }
}

/// Sleeps through the measurement window of `secs` (at least 0.1),
/// calling `each_second` about once a second (progress lines); returns
/// how long it really lasted, in seconds.
pub fn measurement_window(secs: f64, mut each_second: impl FnMut()) -> f64 {
    let start = std::time::Instant::now();
    let window = std::time::Duration::from_secs_f64(secs.max(0.1));
    while start.elapsed() < window {
        std::thread::sleep(
            window
                .saturating_sub(start.elapsed())
                .min(std::time::Duration::from_secs(1)),
        );
        each_second();
    }
    start.elapsed().as_secs_f64()
}

pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as u64 } else { 100 }
}

/// The server's resource use over the measurement window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServerUsage {
    pub pid: u32,
    /// CPU seconds the server used during the window.
    pub cpu_s: f64,
    /// CPU seconds per second per viewer.
    pub cpu_s_per_viewer_s: f64,
    /// Viewers one core would carry at this rate: 1 / `cpu_s_per_viewer_s`.
    pub viewers_per_core: f64,
    pub rss_mib: f64,
    /// Resident memory gained since before the viewers joined, per viewer.
    pub rss_kib_per_viewer: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub server: String,
    pub live: String,
    pub viewers: usize,
    pub connected: usize,
    /// 429/503 answers to viewers (each retried after its Retry-After).
    pub refused: u64,
    /// Viewers that received video during the measurement window.
    pub receiving: usize,
    pub bitrate: u64,
    pub fps: u32,
    /// Length of the measurement window (after the ramp), seconds.
    pub window_s: f64,
    pub join_to_first_packet_ms: Quantiles,
    /// Media packets and bits delivered to all viewers, per second.
    pub packets_per_s: f64,
    pub bits_per_s: f64,
    /// The fewest video packets any viewer received in the window.
    pub min_viewer_packets: u64,
    /// Packets the viewers never got (after NACK repair), percent.
    pub loss_percent: f64,
    /// Caster send → viewer receive, on one clock.
    pub forwarding_delay_ms: Quantiles,
    pub server_usage: Option<ServerUsage>,
    /// The first few failures (joins refused, connections that never came up).
    pub errors: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = |q: &Quantiles| {
            format!(
                "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                q.p50, q.p99, q.max
            )
        };
        writeln!(f, "server            {} (live {})", self.server, self.live)?;
        writeln!(
            f,
            "stream            {} kbit/s at {} fps, measured over {:.1} s",
            self.bitrate / 1000,
            self.fps,
            self.window_s
        )?;
        writeln!(
            f,
            "viewers           {} asked, {} connected, {} receiving (fewest packets: {}), {} times turned away",
            self.viewers, self.connected, self.receiving, self.min_viewer_packets, self.refused
        )?;
        writeln!(f, "join → 1st packet {}", q(&self.join_to_first_packet_ms))?;
        writeln!(
            f,
            "delivered         {:.0} packets/s, {:.1} Mbit/s",
            self.packets_per_s,
            self.bits_per_s / 1e6
        )?;
        writeln!(f, "loss              {:.3} %", self.loss_percent)?;
        writeln!(f, "forwarding delay  {}", q(&self.forwarding_delay_ms))?;
        if let Some(u) = &self.server_usage {
            writeln!(
                f,
                "server process    pid {}: {:.2} CPU s, {:.1} µs CPU per viewer-second → {:.0} viewers per core; RSS {:.1} MiB, {:.0} KiB per viewer",
                u.pid,
                u.cpu_s,
                u.cpu_s_per_viewer_s * 1e6,
                u.viewers_per_core,
                u.rss_mib,
                u.rss_kib_per_viewer
            )?;
        }
        for e in &self.errors {
            writeln!(f, "error             {e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_a_percent() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        let p50 = h.quantile(0.5) as f64;
        assert!((5000.0..=5050.0).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99) as f64;
        assert!((9900.0..=10_000.0).contains(&p99), "{p99}");
        assert_eq!(h.quantile(1.0), 10_000);
        let mut other = Histogram::default();
        other.record(50_000);
        h.merge(&other);
        assert_eq!(h.count(), 10_001);
        assert_eq!(h.summary_ms().max, 50.0);
        assert_eq!(Histogram::default().quantile(0.5), 0);
    }

    #[test]
    fn proc_stat_parsing_survives_odd_command_names() {
        let stat =
            "4242 (vessel (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1 2 3";
        let status = "Name:\tvessel\nVmRSS:\t  20480 kB\n";
        assert_eq!(
            ProcSample::parse(stat, status),
            Some(ProcSample {
                cpu_ticks: 300,
                rss_kib: 20480
            })
        );
        let me = ProcSample::read(std::process::id()).unwrap();
        assert!(me.rss_kib > 0);
        assert!(clock_ticks_per_second() >= 100);
    }
}
