//! A caster transport before its first `produce`: the DTLS certificate
//! whose fingerprint the client already has, the client's fingerprint, and
//! the first ICE checks, kept until the `Rtc` can be built.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use str0m::IceCreds;
use str0m::config::{DtlsCert, Fingerprint};
use str0m::net::Protocol;

use crate::sfu::{PeerId, Role, Sfu, SfuEvent};

/// Datagrams kept for a caster transport whose `Rtc` is not built yet. The
/// browser starts ICE in the same breath as it sends `produce`; without
/// these, the first checks are lost and STUN's retransmit costs ~0.5 s.
const MAX_EARLY: usize = 16;

/// A caster transport before its first `produce`.
pub(in crate::sfu) struct PendingCast {
    pub live: Arc<str>,
    pub creds: IceCreds,
    pub cert: DtlsCert,
    pub fingerprint: Option<Fingerprint>,
    pub early: Vec<(Protocol, SocketAddr, SocketAddr, Vec<u8>)>,
    pub expires: Instant,
}

impl Sfu {
    /// Keeps a datagram for a caster transport that is not built yet.
    /// False if `id` is not such a transport.
    pub(in crate::sfu) fn keep_early(
        &mut self,
        id: PeerId,
        proto: Protocol,
        source: SocketAddr,
        destination: SocketAddr,
        contents: &[u8],
    ) -> bool {
        // Every datagram passes here: no hashing when nothing is pending.
        if self.pending.is_empty() {
            return false;
        }
        let Some(p) = self.pending.get_mut(&id) else {
            return false;
        };
        if p.early.len() < MAX_EARLY {
            p.early
                .push((proto, source, destination, contents.to_vec()));
        }
        true
    }

    /// Ends a caster transport that never produced. False if there was none.
    pub(in crate::sfu) fn drop_pending(&mut self, id: PeerId, why: &str) -> bool {
        let Some(p) = self.pending.remove(&id) else {
            return false;
        };
        self.by_ufrag.remove(&p.creds.ufrag);
        self.transport_ended(id, &p.live, why);
        true
    }

    /// A caster transport that never became a session is gone.
    pub(in crate::sfu) fn transport_ended(&mut self, id: PeerId, live: &str, why: &str) {
        tracing::info!(live, peer = %id.log(), "caster transport closed: {why}");
        self.events.push_back(SfuEvent::SessionEnded {
            peer: id,
            live: live.to_string(),
            role: Role::Cast,
        });
    }

    pub(in crate::sfu) fn pending_live(&self, id: PeerId) -> Option<&str> {
        self.pending.get(&id).map(|p| &*p.live)
    }

    /// Drops the caster transports that never produced in time.
    pub(in crate::sfu) fn expire_pending(&mut self, now: Instant) {
        let expired: Vec<PeerId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.expires <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.drop_pending(id, "nothing was produced in time");
        }
    }
}
