//! The cluster's viewer totals, moved through Redis: every
//! [`HEARTBEAT_EVERY`], this node publishes its lives (people watching,
//! whether the caster is here: `totals::here`) and reads every node's, and
//! the live board shows each live with what the others add
//! (`LiveBoard::set_elsewhere`). A node that stops publishing drops out of
//! the totals when its record expires (`HEARTBEAT_TTL_MS`).
//!
//! Redis unreachable: the board falls back to this node's people and says
//! so (`viewersScope: "node"` in the API) until a read succeeds again.

use std::sync::Arc;

use tracing::Instrument;

use super::totals::{self, NodeLives};
use super::{Cluster, HEARTBEAT_EVERY, HEARTBEAT_TTL_MS, auth};
use crate::board::LiveBoard;

/// Runs for as long as the node does. `private` tells the lives this
/// node's access rules make private.
pub async fn follow(
    cluster: Arc<Cluster>,
    board: Arc<LiveBoard>,
    private: impl Fn(&str) -> bool + Send + 'static,
) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let span = tracing::debug_span!("audience");
        once(&cluster, &board, &private).instrument(span).await;
    }
}

async fn once(cluster: &Cluster, board: &LiveBoard, private: &impl Fn(&str) -> bool) {
    let now = auth::unix_ms();
    let mine = NodeLives {
        node: cluster.node_id().to_string(),
        seen_ms: now,
        lives: totals::here(&board.active(), |live| cluster.casts_here(live), private),
    };
    // A failed publish or read is logged by `Cluster::call` when Redis
    // stops answering (once, not every second).
    if let Err(e) = cluster.publish_lives(&mine).await {
        tracing::debug!("cannot publish this node's lives: {e}");
    }
    match cluster.all_lives().await {
        Ok(records) => {
            let view = totals::elsewhere(&records, cluster.node_id(), now, HEARTBEAT_TTL_MS);
            board.set_elsewhere(Some(&view));
        }
        Err(e) => {
            tracing::debug!("cannot read the cluster's lives; showing this node's: {e}");
            board.set_elsewhere(None);
        }
    }
}
