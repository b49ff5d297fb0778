//! Allocation counts shared by every TURN shard, so that the quotas hold for
//! the server as a whole and not per thread; and the relay addresses of
//! every shard, so that two allocations of this server may reach each
//! other (two browsers both behind strict NATs, in a mesh room).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::Quota;

/// Why an allocation may not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    User,
    Server,
}

#[derive(Debug, Clone, Default)]
pub struct Ledger {
    inner: Arc<Mutex<Counts>>,
}

#[derive(Debug, Default)]
struct Counts {
    per_user: HashMap<String, usize>,
    total: usize,
    relays: HashSet<SocketAddr>,
}

impl Ledger {
    /// Counts one more allocation of `username` if the quota allows.
    pub fn take(&self, username: &str, quota: &Quota) -> Result<(), Full> {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if c.per_user.get(username).copied().unwrap_or(0) >= quota.per_user {
            return Err(Full::User);
        }
        if c.total >= quota.total {
            return Err(Full::Server);
        }
        *c.per_user.entry(username.to_owned()).or_default() += 1;
        c.total += 1;
        Ok(())
    }

    /// A relay address of this server is in use (or, `false`, no longer).
    pub fn relay(&self, addr: SocketAddr, live: bool) {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if live {
            c.relays.insert(addr);
        } else {
            c.relays.remove(&addr);
        }
    }

    /// Whether `addr` is a relay address of this server.
    pub fn is_relay(&self, addr: SocketAddr) -> bool {
        let c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        c.relays.contains(&addr)
    }

    /// Whether any relay address of this server is on `ip`.
    pub fn has_relay_on(&self, ip: std::net::IpAddr) -> bool {
        let c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        c.relays.iter().any(|a| a.ip() == ip)
    }

    /// One allocation of `username` ended.
    pub fn give_back(&self, username: &str) {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = c.per_user.get_mut(username) {
            *n -= 1;
            if *n == 0 {
                c.per_user.remove(username);
            }
            c.total -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_count_across_clones() {
        let quota = Quota {
            per_user: 2,
            total: 3,
            ..Quota::default()
        };
        let a = Ledger::default();
        let b = a.clone(); // another shard
        assert_eq!(a.take("u", &quota), Ok(()));
        assert_eq!(b.take("u", &quota), Ok(()));
        assert_eq!(a.take("u", &quota), Err(Full::User));
        assert_eq!(b.take("v", &quota), Ok(()));
        assert_eq!(a.take("w", &quota), Err(Full::Server));
        b.give_back("u");
        assert_eq!(a.take("w", &quota), Ok(()));
        a.give_back("nobody");
        assert_eq!(a.take("x", &quota), Err(Full::Server));
    }
}
