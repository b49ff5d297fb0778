//! Credential guessing: an address that keeps presenting wrong admin
//! tokens or stream keys is refused for a while, right or wrong, so that
//! guessing even a weak token by hand-picked words takes years, not hours.
//! Only wrong credentials count: a site minting viewer tokens through the
//! admin API as fast as it likes is never slowed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Wrong credentials one address may present: this many at once …
pub const BURST: u32 = 10;
/// … and one more each this often.
pub const REFILL: Duration = Duration::from_secs(6);
/// Past that, every credential it presents is refused for this long.
pub const LOCKOUT: Duration = Duration::from_secs(60);

/// Locked-out addresses held at most: a flood from many addresses must
/// not grow the table without bound (the oldest lockouts go first).
const MAX_LOCKED: usize = 65_536;

pub struct Guesses {
    wrong: DefaultKeyedRateLimiter<IpAddr>,
    locked: Mutex<HashMap<IpAddr, Instant>>,
}

impl Default for Guesses {
    fn default() -> Self {
        let burst = NonZeroU32::new(BURST).expect("BURST > 0");
        let quota = Quota::with_period(REFILL)
            .expect("REFILL > 0")
            .allow_burst(burst);
        Self {
            wrong: RateLimiter::keyed(quota),
            locked: Mutex::new(HashMap::new()),
        }
    }
}

impl Guesses {
    /// Whether `ip` may present a credential now; `Err` with how long it
    /// must wait.
    pub fn allowed(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let locked = self.locked.lock().expect("guesses lock");
        match locked.get(&ip) {
            Some(until) if *until > now => Err(*until - now),
            _ => Ok(()),
        }
    }

    /// `ip` presented a wrong credential.
    pub fn wrong(&self, ip: IpAddr, now: Instant) {
        if self.wrong.check_key(&ip).is_ok() {
            return;
        }
        let mut locked = self.locked.lock().expect("guesses lock");
        if locked.len() >= MAX_LOCKED {
            locked.retain(|_, until| *until > now);
            if locked.len() >= MAX_LOCKED
                && let Some(oldest) = locked.iter().min_by_key(|(_, u)| **u).map(|(ip, _)| *ip)
            {
                locked.remove(&oldest);
            }
        }
        locked.insert(ip, now + LOCKOUT);
        tracing::warn!(%ip, "too many wrong keys or tokens: refusing this address's credentials for {} s", LOCKOUT.as_secs());
    }

    /// Forgets expired lockouts and quiet addresses.
    pub fn tidy(&self, now: Instant) {
        self.locked
            .lock()
            .expect("guesses lock")
            .retain(|_, until| *until > now);
        self.wrong.retain_recent();
        self.wrong.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_that_keeps_guessing_is_locked_out_and_others_are_not() {
        let g = Guesses::default();
        let guesser: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let now = Instant::now();
        for _ in 0..BURST {
            assert!(g.allowed(guesser, now).is_ok());
            g.wrong(guesser, now);
        }
        assert!(g.allowed(guesser, now).is_ok(), "the burst is allowed");
        g.wrong(guesser, now);
        let wait = g.allowed(guesser, now).unwrap_err();
        assert_eq!(wait, LOCKOUT);
        assert!(g.allowed(other, now).is_ok(), "only the guesser");
        assert!(g.allowed(guesser, now + LOCKOUT).is_ok(), "for a while");
        g.tidy(now + LOCKOUT);
        assert!(g.locked.lock().unwrap().is_empty());
    }
}
