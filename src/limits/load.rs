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

/// One worker's busy time (sans-IO: the runtime says when it waited).
#[derive(Debug)]
pub struct LoadMeter {
    since: Instant,
    idle: Duration,
}

impl LoadMeter {
    pub fn new(now: Instant) -> Self {
        Self {
            since: now,
            idle: Duration::ZERO,
        }
    }

    /// The worker waited for work from `from` to `to`.
    pub fn waited(&mut self, from: Instant, to: Instant) {
        self.idle += to.saturating_duration_since(from);
    }

    /// Once a window has passed: the busy fraction of it, in thousandths,
    /// and a new window starts.
    pub fn poll(&mut self, now: Instant) -> Option<u32> {
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed < WINDOW {
            return None;
        }
        let busy = elapsed.saturating_sub(self.idle);
        let permille = (busy.as_secs_f64() / elapsed.as_secs_f64() * 1000.0).round() as u32;
        self.since = now;
        self.idle = Duration::ZERO;
        Some(permille.min(1000))
    }
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
    /// Thousandths; 0: no limit.
    max: u32,
}

/// Until a worker holds this many sessions, its load says too little of
/// what one costs to share it out.
const MIN_SAMPLE: usize = 4;

impl Loads {
    /// `max_percent` 0 turns the limit off.
    pub fn new(workers: usize, max_percent: u32) -> Self {
        Self {
            permille: (0..workers).map(|_| AtomicU32::new(0)).collect(),
            room: (0..workers).map(|_| AtomicI64::new(i64::MAX / 2)).collect(),
            max: max_percent.min(100) * 10,
        }
    }

    /// Worker `worker` was `permille` busy over the last window, holding
    /// `sessions`: what one costs, and so how many more fit under the
    /// limit.
    pub fn set(&self, worker: usize, permille: u32, sessions: usize) {
        let (Some(p), Some(room)) = (self.permille.get(worker), self.room.get(worker)) else {
            return;
        };
        p.store(permille, Ordering::Relaxed);
        let fits = if sessions < MIN_SAMPLE || permille == 0 {
            i64::MAX / 2
        } else {
            let each = permille as f64 / sessions as f64;
            ((self.max as f64 - permille as f64) / each).floor() as i64
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
    /// none is.
    pub fn pick(&self, start: usize) -> Option<usize> {
        let n = self.permille.len();
        (0..n).map(|k| (start + k) % n).find(|&w| {
            self.max == 0
                || (self.get(w) < self.max && self.room[w].fetch_sub(1, Ordering::Relaxed) > 0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busy_fraction_of_each_window() {
        let t0 = Instant::now();
        let mut m = LoadMeter::new(t0);
        m.waited(t0, t0 + Duration::from_millis(250));
        assert_eq!(m.poll(t0 + Duration::from_millis(900)), None);
        m.waited(
            t0 + Duration::from_millis(900),
            t0 + Duration::from_millis(950),
        );
        assert_eq!(m.poll(t0 + Duration::from_secs(1)), Some(700));
        // A new window: never waiting is fully busy.
        assert_eq!(m.poll(t0 + Duration::from_secs(2)), Some(1000));
    }

    #[test]
    fn new_viewers_go_to_a_worker_under_the_limit_or_nowhere() {
        let loads = Loads::new(3, 90);
        loads.set(0, 950, 100);
        loads.set(1, 400, 2);
        loads.set(2, 850, 100);
        assert_eq!(loads.pick(0), Some(1));
        assert_eq!(loads.pick(2), Some(2));
        loads.set(1, 900, 100);
        loads.set(2, 1000, 100);
        assert_eq!(loads.pick(0), None);
        assert_eq!(Loads::new(2, 0).pick(1), Some(1), "0 is no limit");
    }

    #[test]
    fn a_worker_takes_only_as_many_as_its_load_says_fit() {
        let loads = Loads::new(1, 90);
        // 100 sessions make it 60 % busy: 0.6 % each, so 50 more fit
        // before the next sample, however fast they come.
        loads.set(0, 600, 100);
        assert_eq!((0..80).filter(|_| loads.pick(0).is_some()).count(), 50);
        // The next sample decides again.
        loads.set(0, 880, 146);
        assert_eq!((0..10).filter(|_| loads.pick(0).is_some()).count(), 3);
    }
}
