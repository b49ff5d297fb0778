//! How busy each media worker is, and the shard a new viewer goes to.
//!
//! A worker past its CPU can only queue: the kernel holds what it has not
//! read yet (megabytes, seconds of media, for every viewer at once). So a
//! worker that has been busy more than `--max-load` of the last second
//! takes no new viewer, and when every worker is that busy a newcomer gets
//! 503: those already watching keep a live stream, rather than everyone
//! getting a late one. Casters are never refused for load (a live needs
//! its caster, and a reconnecting one must get back on air).

use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The window the busy fraction is measured over.
pub const WINDOW: Duration = Duration::from_secs(1);

/// How long a session must have been connected before its cost counts as
/// what a session costs. A new viewer costs less for its first seconds
/// (it waits for a keyframe, its bandwidth estimate is still ramping up):
/// measured on one worker, 65 viewers a second old looked 0.25 % each,
/// while at 133 that had settled each cost 0.75 %.
pub const SETTLE: Duration = Duration::from_secs(3);

/// One worker's busy time (sans-IO: the runtime says when it waited and
/// how much CPU its thread has used).
///
/// Busy is the larger of two readings: the time not spent waiting for
/// work, and the thread's CPU time against its share of a CPU quota. On a
/// core of its own the two agree. Under a cgroup quota (`--cpus 0.25`)
/// the first reads low until the quota runs out and then jumps to 100 %
/// (throttled mid-work is not waiting), while the second grows with the
/// work: 65 viewers read 17 % on the first and 65 % on the second on a
/// quarter of a core.
#[derive(Debug)]
pub struct LoadMeter {
    since: Instant,
    idle: Duration,
    /// The thread's CPU time at `since`.
    cpu: Duration,
    /// Cores' worth of CPU this worker may use (1: a whole core).
    share: f64,
}

impl LoadMeter {
    /// `share`: cores' worth of CPU this worker may use (1.0 without a
    /// quota; see [`worker_share`]); `cpu`: the thread's CPU time now.
    pub fn new(now: Instant, cpu: Duration, share: f64) -> Self {
        Self {
            since: now,
            idle: Duration::ZERO,
            cpu,
            share: share.clamp(0.01, 1.0),
        }
    }

    /// The worker waited for work from `from` to `to`.
    pub fn waited(&mut self, from: Instant, to: Instant) {
        self.idle += to.saturating_duration_since(from);
    }

    /// Once a window has passed: the busy fraction of it, in thousandths,
    /// and a new window starts. `cpu` reads the thread's CPU time (a
    /// system call, so only once a window, not every loop turn).
    pub fn poll(&mut self, now: Instant, cpu: impl FnOnce() -> Duration) -> Option<u32> {
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed < WINDOW {
            return None;
        }
        let cpu = cpu();
        let wall = elapsed.as_secs_f64();
        let busy = elapsed.saturating_sub(self.idle).as_secs_f64() / wall;
        let used = cpu.saturating_sub(self.cpu).as_secs_f64() / (wall * self.share);
        self.since = now;
        self.idle = Duration::ZERO;
        self.cpu = cpu;
        Some(((busy.max(used) * 1000.0).round() as u32).min(1000))
    }
}

/// Each worker's share of `quota` cores (the process's CPU quota, if it
/// has one) when `workers` share them: at most one core each.
pub fn worker_share(quota: Option<f64>, workers: usize) -> f64 {
    quota.map_or(1.0, |q| (q / workers.max(1) as f64).min(1.0))
}

/// Every worker's latest load, and the most a worker may have to take a
/// new viewer.
#[derive(Debug)]
pub struct Loads {
    permille: Vec<AtomicU32>,
    /// New sessions each worker may still take before its next sample:
    /// the load lags the joins (a viewer costs once it receives), so a
    /// join storm must not fill a worker far past its limit in one window.
    room: Vec<AtomicI64>,
    /// Sessions placed on each worker and still being prepared (off the
    /// worker, on the blocking pool): the worker cannot count them yet.
    joining: Vec<AtomicI64>,
    /// Thousandths; 0: no limit.
    max: u32,
}

/// Until a worker holds this many settled sessions, its load says too
/// little of what one costs to share it out...
const MIN_SAMPLE: usize = 4;

/// ...so until then it takes at most this many new sessions a window: a
/// storm of joins on an idle server is let in a window at a time, each
/// window's measured by the next (those refused get 503 with Retry-After,
/// which `vessel.js` honours by retrying).
const FIRST_BURST: i64 = 64;

impl Loads {
    /// `max_percent` 0 turns the limit off.
    pub fn new(workers: usize, max_percent: u32) -> Self {
        Self {
            permille: (0..workers).map(|_| AtomicU32::new(0)).collect(),
            room: (0..workers).map(|_| AtomicI64::new(FIRST_BURST)).collect(),
            joining: (0..workers).map(|_| AtomicI64::new(0)).collect(),
            max: max_percent.min(100) * 10,
        }
    }

    /// Worker `worker` was `permille` busy over the last window, holding
    /// `sessions` of which `settled` have been connected for [`SETTLE`]: what
    /// one settled session costs, and so how many more fit under the limit.
    /// The others (connecting, or connected only just) and those
    /// still being prepared cost less than they will within a second or
    /// two, so they count as settled ones: otherwise a ramp of joins that
    /// outpaces the sample (each window sees part of the load of the
    /// viewers that joined in it) fills a worker far past its limit. The
    /// load of the unsettled makes the cost per session look higher, which
    /// errs on the side of refusing.
    pub fn set(&self, worker: usize, permille: u32, sessions: usize, settled: usize) {
        let (Some(p), Some(room)) = (self.permille.get(worker), self.room.get(worker)) else {
            return;
        };
        p.store(permille, Ordering::Relaxed);
        let joining = self.joining[worker].load(Ordering::Relaxed).max(0);
        let connecting = sessions.saturating_sub(settled) as i64 + joining;
        let fits = if settled < MIN_SAMPLE || permille == 0 {
            FIRST_BURST - connecting
        } else {
            let each = permille as f64 / settled as f64;
            ((self.max as f64 - permille as f64) / each).floor() as i64 - connecting
        };
        room.store(fits, Ordering::Relaxed);
    }

    pub fn get(&self, worker: usize) -> u32 {
        self.permille
            .get(worker)
            .map_or(0, |p| p.load(Ordering::Relaxed))
    }

    /// The worker for a new viewer, looking from `start` round the ring:
    /// the first under the limit with room left (which it takes). `None`:
    /// none is. The session counts as joining `worker` until [`Self::joined`].
    pub fn pick(&self, start: usize) -> Option<usize> {
        let n = self.permille.len();
        let w = (0..n).map(|k| (start + k) % n).find(|&w| {
            self.max == 0
                || (self.get(w) < self.max && self.room[w].fetch_sub(1, Ordering::Relaxed) > 0)
        })?;
        self.joining(w);
        Some(w)
    }

    /// A session (a caster: never refused) is joining `worker`.
    pub fn joining(&self, worker: usize) {
        if let Some(j) = self.joining.get(worker) {
            j.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A session placed on `worker` is now held by it, or failed.
    pub fn joined(&self, worker: usize) {
        if let Some(j) = self.joining.get(worker) {
            j.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn the_busy_fraction_of_each_window() {
        let t0 = Instant::now();
        let mut m = LoadMeter::new(t0, MS(0), 1.0);
        m.waited(t0, t0 + MS(250));
        assert_eq!(m.poll(t0 + MS(900), || MS(600)), None);
        m.waited(t0 + MS(900), t0 + MS(950));
        assert_eq!(m.poll(t0 + MS(1000), || MS(700)), Some(700));
        // A new window: never waiting is fully busy.
        assert_eq!(m.poll(t0 + MS(2000), || MS(1700)), Some(1000));
    }

    #[test]
    fn under_a_quota_cpu_time_counts_against_the_share() {
        let t0 = Instant::now();
        // A quarter of a core: 160 ms of CPU in a second is 64 % of it,
        // though the worker waited for work 84 % of the time.
        let mut m = LoadMeter::new(t0, MS(0), worker_share(Some(0.25), 1));
        m.waited(t0, t0 + MS(840));
        assert_eq!(m.poll(t0 + MS(1000), || MS(160)), Some(640));
        // Throttled mid-work: never waiting is fully busy whatever the CPU.
        assert_eq!(m.poll(t0 + MS(2000), || MS(410)), Some(1000));
        assert_eq!(worker_share(None, 4), 1.0);
        assert_eq!(worker_share(Some(3.0), 2), 1.0);
        assert_eq!(worker_share(Some(1.0), 4), 0.25);
    }

    #[test]
    fn new_viewers_go_to_a_worker_under_the_limit_or_nowhere() {
        let loads = Loads::new(3, 90);
        loads.set(0, 950, 100, 100);
        loads.set(1, 400, 2, 2);
        loads.set(2, 850, 100, 100);
        assert_eq!(loads.pick(0), Some(1));
        assert_eq!(loads.pick(2), Some(2));
        loads.set(1, 900, 100, 100);
        loads.set(2, 1000, 100, 100);
        assert_eq!(loads.pick(0), None);
        assert_eq!(Loads::new(2, 0).pick(1), Some(1), "0 is no limit");
    }

    #[test]
    fn a_worker_takes_only_as_many_as_its_load_says_fit() {
        let loads = Loads::new(1, 90);
        // 100 sessions make it 60 % busy: 0.6 % each, so 50 more fit
        // before the next sample, however fast they come.
        loads.set(0, 600, 100, 100);
        assert_eq!((0..80).filter(|_| loads.pick(0).is_some()).count(), 50);
        // The worker holds them by the next sample, which decides again.
        (0..50).for_each(|_| loads.joined(0));
        loads.set(0, 880, 146, 146);
        assert_eq!((0..10).filter(|_| loads.pick(0).is_some()).count(), 3);
    }

    #[test]
    fn sessions_still_connecting_count_as_much_as_connected_ones() {
        let loads = Loads::new(1, 90);
        // 100 settled make it 60 % busy (0.6 % each): 50 fit, but 40
        // joined in the last window and have not cost a full window yet.
        loads.set(0, 600, 140, 100);
        assert_eq!((0..80).filter(|_| loads.pick(0).is_some()).count(), 10);
        // More connecting than fit: nobody more until they settle.
        loads.set(0, 600, 200, 100);
        assert_eq!(loads.pick(0), None);
    }

    #[test]
    fn an_idle_worker_takes_a_bounded_burst_until_it_has_measured() {
        let loads = Loads::new(1, 90);
        assert_eq!((0..1000).filter(|_| loads.pick(0).is_some()).count(), 64);
        // Those 64 are still connecting at the next sample: none more yet.
        loads.set(0, 50, 64, 0);
        assert_eq!(loads.pick(0), None);
        // Sessions still being prepared count too, until the worker holds them.
        let loads = Loads::new(1, 90);
        loads.set(0, 600, 100, 100); // 50 fit
        let placed: Vec<_> = (0..30).filter_map(|_| loads.pick(0)).collect();
        assert_eq!(placed.len(), 30);
        loads.set(0, 600, 100, 100);
        assert_eq!((0..80).filter(|_| loads.pick(0).is_some()).count(), 20);
        // Unlimited stays unlimited.
        let open = Loads::new(1, 0);
        assert_eq!((0..1000).filter(|_| open.pick(0).is_some()).count(), 1000);
    }
}
