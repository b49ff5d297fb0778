//! The one place the media engine's casts meet the cluster: a caster on air
//! here claims its live; its end releases the claim; a claim taken by
//! another node's newer caster ends the cast here, as a newer caster on the
//! same node replaces an older one. Fed by the media engine's events
//! (`CastStarted`/`CastEnded`), so every face that casts (WHIP, RTMP,
//! socket.io, SkyWay, PeerJS) is covered without a call in each.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};
use tracing::Instrument;

use super::{ClaimEvent, Cluster};
use crate::media::MediaHandle;
use crate::sfu::{PeerId, Role, SfuEvent};

/// Runs until the media engine's events end. `events` hears every media
/// event; only casts starting and ending matter here.
pub async fn follow(
    cluster: Arc<Cluster>,
    media: MediaHandle,
    mut events: mpsc::UnboundedReceiver<SfuEvent>,
) {
    // The caster on air of each live cast here: only its end releases the
    // claim (a replaced caster's end comes after its successor's start).
    let mut casters: HashMap<String, PeerId> = HashMap::new();
    let mut lost = cluster.claim_events();
    loop {
        tokio::select! {
            event = events.recv() => match event {
                // A relay's cast is the origin's live seen here: no claim
                // (and the cast it replaced, if any, was ours to release).
                Some(SfuEvent::CastStarted { live, caster }) if cluster.is_relay_cast(caster) => {
                    if let Some(old) = casters.remove(&live) {
                        tracing::debug!(%live, peer = %old.log(), "cast replaced by a relay");
                        release_held(&cluster, &live).await;
                    }
                }
                Some(SfuEvent::CastStarted { live, caster }) => {
                    casters.insert(live.clone(), caster);
                    let span = tracing::info_span!("cluster", %live, peer = %caster.log());
                    if let Err(e) = cluster.claim(&live).instrument(span.clone()).await {
                        // The cast goes on here; the claim is made when
                        // Redis answers again.
                        span.in_scope(|| tracing::warn!("cannot claim the live's origin: {e}"));
                    }
                }
                Some(SfuEvent::CastEnded { live, caster }) => {
                    if casters.get(&live) == Some(&caster) {
                        casters.remove(&live);
                        release_held(&cluster, &live).await;
                    }
                }
                Some(_) => {}
                None => return,
            },
            event = lost.recv() => match event {
                Ok(ClaimEvent::Lost { live, by, .. }) => {
                    if let Some(caster) = casters.remove(&live) {
                        tracing::info!(%live, peer = %caster.log(), origin = %by.node,
                            "cast ended: a newer caster of this live is on another node");
                        let _ = media.leave(&live, Role::Cast, caster).await;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!("missed {n} claim events");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// Drops the claim this node holds for `live` (epoch 0 if it never reached
/// Redis).
async fn release_held(cluster: &Cluster, live: &str) {
    let epoch = cluster.held(live).map_or(0, |c| c.epoch);
    cluster.release(live, epoch).await;
}
