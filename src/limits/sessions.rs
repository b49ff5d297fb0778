//! How many media sessions are open, in all, per client address and per
//! live: checked before a session is set up, kept by the media workers
//! (a session counts from the moment its worker created it until the
//! worker says it ended, so the books can't drift from what is held).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use super::{Client, Limit, Refusal, Refused};
use crate::sfu::{PeerId, Role};

/// The caps; `0` means no cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionCaps {
    pub total: usize,
    pub per_ip: usize,
    pub viewers_per_live: usize,
    /// Percent of a media worker's time busy past which it takes no new
    /// viewer (see `limits::load`); 0: no limit.
    pub max_load: u32,
}

impl SessionCaps {
    pub const NONE: Self = Self {
        total: 0,
        per_ip: 0,
        viewers_per_live: 0,
        max_load: 0,
    };
}

#[derive(Default)]
struct Book {
    open: HashMap<PeerId, Entry>,
    per_ip: HashMap<IpAddr, usize>,
    viewers: HashMap<String, usize>,
}

struct Entry {
    /// `None` for a client exempt from the per-address cap.
    ip: Option<IpAddr>,
    /// The live it watches, for a viewer.
    watches: Option<String>,
}

pub struct SessionBook {
    caps: SessionCaps,
    book: Mutex<Book>,
    refused: Arc<Refused>,
}

impl SessionBook {
    pub fn new(caps: SessionCaps, refused: Arc<Refused>) -> Self {
        Self {
            caps,
            book: Mutex::new(Book::default()),
            refused,
        }
    }

    pub fn caps(&self) -> SessionCaps {
        self.caps
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a refusal by `limit` decided elsewhere (the media runtime's
    /// load), and hands it back.
    pub fn refuse(&self, limit: Limit) -> Refusal {
        self.refused.count(limit);
        Refusal::new(limit)
    }

    /// Whether `client` may open one more session of `role` on `live`.
    /// Casters are never turned away by the viewer cap (a live needs its
    /// caster), only by the total and the per-address caps.
    pub fn check(&self, client: &Client, live: &str, role: Role) -> Result<(), Refusal> {
        self.over(client, live, role).map_err(|limit| {
            self.refused.count(limit);
            Refusal::new(limit)
        })
    }

    fn over(&self, client: &Client, live: &str, role: Role) -> Result<(), Limit> {
        let book = self.book();
        let full = |cap: usize, n: usize| cap != 0 && n >= cap;
        if full(self.caps.total, book.open.len()) {
            return Err(Limit::Sessions);
        }
        if !client.exempt && full(self.caps.per_ip, *book.per_ip.get(&client.ip).unwrap_or(&0)) {
            return Err(Limit::SessionsPerIp);
        }
        if role == Role::Play
            && full(
                self.caps.viewers_per_live,
                *book.viewers.get(live).unwrap_or(&0),
            )
        {
            return Err(Limit::ViewersPerLive);
        }
        Ok(())
    }

    /// A worker created session `peer` for `client`.
    pub fn opened(&self, peer: PeerId, client: &Client, live: &str, role: Role) {
        let mut book = self.book();
        let ip = (!client.exempt).then_some(client.ip);
        let watches = (role == Role::Play).then(|| live.to_string());
        if let Some(ip) = ip {
            *book.per_ip.entry(ip).or_default() += 1;
        }
        if let Some(live) = &watches {
            *book.viewers.entry(live.clone()).or_default() += 1;
        }
        if let Some(old) = book.open.insert(peer, Entry { ip, watches }) {
            // Ids are random; a repeat would be a bug, not a client's doing.
            release(&mut book, old);
        }
    }

    /// Session `peer` ended (any way). Unknown ids are ignored.
    pub fn ended(&self, peer: PeerId) {
        let mut book = self.book();
        if let Some(entry) = book.open.remove(&peer) {
            release(&mut book, entry);
        }
    }

    pub fn open(&self) -> usize {
        self.book().open.len()
    }

    /// Sessions held by `ip` (exempt clients are not counted per address).
    pub fn of_ip(&self, ip: IpAddr) -> usize {
        *self.book().per_ip.get(&ip).unwrap_or(&0)
    }
}

fn release(book: &mut Book, entry: Entry) {
    if let Some(ip) = entry.ip {
        decrement(&mut book.per_ip, &ip);
    }
    if let Some(live) = entry.watches {
        decrement(&mut book.viewers, &live);
    }
}

/// Counts at zero leave the map: it holds only what is open.
fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(last: u8) -> Client {
        Client {
            ip: IpAddr::from([192, 0, 2, last]),
            exempt: false,
        }
    }

    #[test]
    fn each_cap_binds_and_frees_when_sessions_end() {
        let book = SessionBook::new(
            SessionCaps {
                total: 4,
                per_ip: 2,
                viewers_per_live: 3,
                max_load: 0,
            },
            Arc::default(),
        );
        let (a, b, c) = (client(1), client(2), client(3));
        let ids: Vec<PeerId> = (0..4).map(|_| PeerId::random_on(0)).collect();
        book.opened(ids[0], &a, "show", Role::Play);
        book.opened(ids[1], &a, "show", Role::Play);
        assert_eq!(
            book.check(&a, "other", Role::Cast).unwrap_err().limit,
            Limit::SessionsPerIp
        );
        book.opened(ids[2], &b, "show", Role::Play);
        assert_eq!(
            book.check(&c, "show", Role::Play).unwrap_err().limit,
            Limit::ViewersPerLive
        );
        // A caster of a full live still gets in; another live's viewer too.
        book.check(&c, "show", Role::Cast).unwrap();
        book.check(&c, "other", Role::Play).unwrap();
        book.opened(ids[3], &c, "show", Role::Cast);
        assert_eq!(
            book.check(&c, "other", Role::Play).unwrap_err().limit,
            Limit::Sessions
        );
        // An exempt client is held to the total, not to the address cap.
        assert_eq!(
            book.check(&Client::exempt(a.ip), "x", Role::Cast)
                .unwrap_err()
                .limit,
            Limit::Sessions
        );
        for id in &ids {
            book.ended(*id);
        }
        book.ended(ids[0]); // twice: ignored
        assert_eq!(book.open(), 0);
        assert_eq!(book.of_ip(a.ip), 0);
        let inner = book.book();
        assert!(
            inner.per_ip.is_empty() && inner.viewers.is_empty(),
            "nothing left behind"
        );
    }

    #[test]
    fn no_caps_admit_anything() {
        let book = SessionBook::new(SessionCaps::NONE, Arc::default());
        for _ in 0..1000 {
            book.check(&client(1), "show", Role::Play).unwrap();
            book.opened(PeerId::random_on(0), &client(1), "show", Role::Play);
        }
        assert_eq!(book.of_ip(client(1).ip), 1000);
    }
}
