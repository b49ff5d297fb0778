//! Allocation counts shared by every TURN shard, so that the quotas hold for
//! the server as a whole and not per thread; and the relay addresses of
//! every shard, so that two allocations of this server may reach each
//! other (two browsers both behind strict NATs, in a mesh room).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use super::Quota;

/// Why an allocation may not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    User,
    /// The client's address holds its share: minting fresh usernames
    /// (`/api/ice-servers` gives one per call) does not get around it.
    Address,
    Server,
}

#[derive(Debug, Clone, Default)]
pub struct Ledger {
    inner: Arc<Mutex<Counts>>,
}

#[derive(Debug, Default)]
struct Counts {
    per_user: HashMap<String, usize>,
    per_ip: HashMap<IpAddr, usize>,
    total: usize,
    relays: HashSet<SocketAddr>,
}

impl Ledger {
    /// Counts one more allocation of `username` from `ip` if the quota
    /// allows.
    pub fn take(&self, username: &str, ip: IpAddr, quota: &Quota) -> Result<(), Full> {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if c.per_user.get(username).copied().unwrap_or(0) >= quota.per_user {
            return Err(Full::User);
        }
        if quota.per_ip != 0 && c.per_ip.get(&ip).copied().unwrap_or(0) >= quota.per_ip {
            return Err(Full::Address);
        }
        if c.total >= quota.total {
            return Err(Full::Server);
        }
        *c.per_user.entry(username.to_owned()).or_default() += 1;
        *c.per_ip.entry(ip).or_default() += 1;
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

    /// One allocation of `username` from `ip` ended.
    pub fn give_back(&self, username: &str, ip: IpAddr) {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = c.per_user.get_mut(username) {
            *n -= 1;
            if *n == 0 {
                c.per_user.remove(username);
            }
            c.total -= 1;
            if let Some(n) = c.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    c.per_ip.remove(&ip);
                }
            }
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
        let ip = IpAddr::from([192, 0, 2, 1]);
        let a = Ledger::default();
        let b = a.clone(); // another shard
        assert_eq!(a.take("u", ip, &quota), Ok(()));
        assert_eq!(b.take("u", ip, &quota), Ok(()));
        assert_eq!(a.take("u", ip, &quota), Err(Full::User));
        assert_eq!(b.take("v", ip, &quota), Ok(()));
        assert_eq!(a.take("w", ip, &quota), Err(Full::Server));
        b.give_back("u", ip);
        assert_eq!(a.take("w", ip, &quota), Ok(()));
        a.give_back("nobody", ip);
        assert_eq!(a.take("x", ip, &quota), Err(Full::Server));
    }

    #[test]
    fn fresh_usernames_from_one_address_hit_its_quota() {
        let quota = Quota {
            per_ip: 3,
            ..Quota::default()
        };
        let ledger = Ledger::default();
        let (ip, other) = (IpAddr::from([192, 0, 2, 1]), IpAddr::from([192, 0, 2, 2]));
        for n in 0..3 {
            assert_eq!(ledger.take(&format!("user{n}"), ip, &quota), Ok(()));
        }
        assert_eq!(ledger.take("user9", ip, &quota), Err(Full::Address));
        assert_eq!(ledger.take("user9", other, &quota), Ok(()));
        ledger.give_back("user0", ip);
        assert_eq!(ledger.take("user9", ip, &quota), Ok(()));
        for n in 1..=3 {
            ledger.give_back(&format!("user{n}"), ip);
        }
        ledger.give_back("user9", ip);
        ledger.give_back("user9", other);
        let c = ledger.inner.lock().unwrap();
        assert!(c.per_ip.is_empty() && c.per_user.is_empty() && c.total == 0);
    }
}
