//! Where session ids and ICE credentials come from: the operating system's
//! entropy in a server; a seeded generator in simulated-time tests, so that
//! a failing run replays with the same ids (and so the same hash-map
//! orders, the same viewer order in a fan-out).

use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use str0m::IceCreds;

use super::PeerId;

#[derive(Clone, Default)]
pub enum Ids {
    /// Unguessable: ids are capabilities (they end or patch a session).
    #[default]
    Entropy,
    /// Replayable, for tests only: anyone who knows the seed knows the ids.
    Seeded(Arc<Mutex<StdRng>>),
}

impl std::fmt::Debug for Ids {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ids::Entropy => f.write_str("Entropy"),
            Ids::Seeded(_) => f.write_str("Seeded"),
        }
    }
}

impl Ids {
    pub fn seeded(seed: u64) -> Self {
        Ids::Seeded(Arc::new(Mutex::new(StdRng::seed_from_u64(seed))))
    }

    fn with<T>(&self, f: impl FnOnce(&mut dyn rand::RngCore) -> T) -> T {
        match self {
            Ids::Entropy => f(&mut rand::rng()),
            Ids::Seeded(rng) => {
                let mut rng = rng.lock().unwrap_or_else(|e| e.into_inner());
                f(&mut *rng)
            }
        }
    }

    /// A new session id that names the shard owning the session (low
    /// byte), so that commands find it.
    pub fn peer_id(&self, shard: usize) -> PeerId {
        let r: u128 = self.with(|rng| rng.random());
        PeerId((r & !0xff) | (shard as u128 & 0xff))
    }

    /// A fresh pair of local ICE credentials.
    pub fn ice_creds(&self) -> IceCreds {
        self.with(|rng| IceCreds {
            ufrag: format!("{:016x}", rng.random::<u64>()),
            pass: format!("{:032x}", rng.random::<u128>()),
        })
    }

    /// A random 64-bit name (a producer id).
    pub fn name64(&self) -> u64 {
        self.with(|rng| rng.random())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_and_entropy_does_not_repeat() {
        let (a, b) = (Ids::seeded(7), Ids::seeded(7));
        assert_eq!(a.peer_id(3), b.peer_id(3));
        assert_eq!(a.ice_creds().pass, b.ice_creds().pass);
        assert_eq!(a.peer_id(3).shard(), 3);
        let e = Ids::Entropy;
        assert_ne!(e.peer_id(0), e.peer_id(0));
    }
}
