//! The cluster's rules, without IO: node heartbeats and their freshness,
//! where a new viewer goes, and live origin claims with epochs. The Redis
//! side (`redis.rs`) stores and fetches these records; every decision made
//! on them is here, on explicit times, so that it can be tested without a
//! Redis or a clock.

use serde::{Deserialize, Serialize};

/// A node's id: random per process run (see `Cluster::connect`), so that a
/// restarted node never mistakes its predecessor's claims for its own.
pub type NodeId = String;

/// What a node tells of itself in each heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node: NodeId,
    /// The base URL clients and other nodes reach it at (`--node-url`).
    pub url: String,
    /// Viewers it serves now.
    pub viewers: u64,
    /// Media it sends, bits per second (over the last heartbeat period).
    pub egress_bps: u64,
    /// How busy its media workers are, percent (their mean).
    pub cpu_percent: u32,
    /// Viewers it takes before new ones are sent elsewhere (`--node-capacity`).
    pub capacity: u64,
    /// When it sent this heartbeat, Unix milliseconds (its own clock).
    pub seen_ms: u64,
}

impl NodeInfo {
    /// A heartbeat older than `ttl_ms` (Redis expires it then too; this
    /// guards against a record read just before it expired, and against a
    /// node whose clock stopped) is not a candidate for anything.
    pub fn fresh(&self, now_ms: u64, ttl_ms: u64) -> bool {
        now_ms.saturating_sub(self.seen_ms) <= ttl_ms
    }

    pub fn has_room(&self) -> bool {
        self.viewers < self.capacity
    }

    /// Share of its capacity in use, in millionths (integer: the order
    /// between nodes is then exact and deterministic).
    fn fill_ppm(&self) -> u64 {
        if self.capacity == 0 {
            return u64::MAX;
        }
        self.viewers.saturating_mul(1_000_000) / self.capacity
    }
}

/// Where a new viewer of a live should play.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// This node (its info as last heard).
    Node(NodeInfo),
    /// Every fresh node is at its capacity.
    Full,
    /// No node has a fresh heartbeat (not even this one yet).
    NoNodes,
}

/// The least-loaded fresh node with room: the lowest share of its capacity
/// in use, then the lowest CPU, then (on a tie) the live's origin (an edge
/// would cost a relay from it), then the lowest node id, so that every
/// node answers the same for the same records. The origin gets no other
/// preference: filling it first would put every viewer on one machine
/// until it is full, which is what a cluster is for avoiding.
///
/// `avoid` is a node the client could not reach (it died a moment ago, and
/// its heartbeat has not expired yet): it is chosen only if no other fresh
/// node has room.
pub fn place(
    nodes: &[NodeInfo],
    origin: Option<&str>,
    avoid: Option<&str>,
    now_ms: u64,
    ttl_ms: u64,
) -> Placement {
    let fresh: Vec<&NodeInfo> = nodes.iter().filter(|n| n.fresh(now_ms, ttl_ms)).collect();
    if fresh.is_empty() {
        return Placement::NoNodes;
    }
    let others: Vec<&NodeInfo> = fresh
        .iter()
        .copied()
        .filter(|n| Some(n.node.as_str()) != avoid)
        .collect();
    if let Some(n) = least_loaded(&others, origin) {
        return Placement::Node(n.clone());
    }
    least_loaded(&fresh, origin).map_or(Placement::Full, |n| Placement::Node(n.clone()))
}

fn least_loaded<'a>(fresh: &[&'a NodeInfo], origin: Option<&str>) -> Option<&'a NodeInfo> {
    fresh
        .iter()
        .copied()
        .filter(|n| n.has_room())
        .min_by_key(|n| {
            (
                n.fill_ppm(),
                n.cpu_percent,
                Some(n.node.as_str()) != origin,
                n.node.clone(),
            )
        })
}

/// Bits per second between two readings of a byte counter.
pub fn bit_rate(before: (u64, u64), after: (u64, u64)) -> u64 {
    let (t0, b0) = before;
    let (t1, b1) = after;
    let ms = t1.saturating_sub(t0);
    if ms == 0 {
        return 0;
    }
    b1.saturating_sub(b0).saturating_mul(8_000) / ms
}

/// A live's origin: the node its caster is on. Written unconditionally by
/// the node whose caster is the newest (the newest caster wins, as on one
/// node), stamped with an epoch that only grows for that live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub node: NodeId,
    pub url: String,
    pub epoch: u64,
}

impl Claim {
    /// Whether `self` replaces `known` in a node's picture of the cluster:
    /// a higher epoch does; an older or equal one does not (a pub/sub
    /// message or a read that arrives after a newer one must not move an
    /// edge back to an old origin).
    pub fn supersedes(&self, known: Option<&Claim>) -> bool {
        known.is_none_or(|k| self.epoch > k.epoch)
    }
}

/// What the node holding `ours` makes of the claim stored now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// The stored claim is ours: keep casting.
    Held,
    /// Another claim is stored: another node's caster is newer (the claim
    /// write is unconditional, so anything other than ours came after it).
    /// End the local cast.
    Lost(Claim),
    /// Nothing is stored: the claim expired (this node could not refresh
    /// it in time) or Redis lost it (restarted without persistence). The
    /// local caster is still the newest anyone knows of: claim again.
    Vacant,
}

/// Whether `ours` still holds, given what is `stored`. Node and epoch must
/// both match: the same node with another epoch is a newer (or older) cast
/// on this node, and a claim is one cast's.
pub fn standing(ours: &Claim, stored: Option<&Claim>) -> Standing {
    match stored {
        None => Standing::Vacant,
        Some(s) if s.node == ours.node && s.epoch == ours.epoch => Standing::Held,
        Some(s) => Standing::Lost(s.clone()),
    }
}

/// A node's view of origins: the newest claim it has heard of per live,
/// fed by pub/sub messages and reads. A read that finds nothing clears the
/// entry (so a Redis that restarted with its counters reset is believed
/// again once the old claim is gone).
#[derive(Debug, Default)]
pub struct Origins {
    known: std::collections::HashMap<String, Claim>,
}

impl Origins {
    /// Takes `claim` if it supersedes what is known; true if it did.
    pub fn heard(&mut self, live: &str, claim: Claim) -> bool {
        if claim.supersedes(self.known.get(live)) {
            self.known.insert(live.to_string(), claim);
            true
        } else {
            false
        }
    }

    /// A read found no claim, or a release was announced for `epoch`:
    /// forget the live's origin if it is that one (or older). True if it
    /// was forgotten.
    pub fn gone(&mut self, live: &str, epoch: Option<u64>) -> bool {
        match (self.known.get(live), epoch) {
            (Some(k), Some(e)) if k.epoch > e => false,
            (Some(_), _) => {
                self.known.remove(live);
                true
            }
            (None, _) => false,
        }
    }

    pub fn get(&self, live: &str) -> Option<&Claim> {
        self.known.get(live)
    }

    /// The highest epoch known for `live` (0: none): a claim made now must
    /// be above it, even if Redis lost its counter.
    pub fn floor(&self, live: &str) -> u64 {
        self.known.get(live).map_or(0, |c| c.epoch)
    }
}

/// A claim change announced on the `vessel:claims` channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Announcement {
    Claimed {
        live: String,
        claim: Claim,
    },
    Released {
        live: String,
        node: NodeId,
        epoch: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: u64 = 3_000;

    fn node(id: &str, viewers: u64, capacity: u64, cpu: u32, seen_ms: u64) -> NodeInfo {
        NodeInfo {
            node: id.into(),
            url: format!("http://{id}:8080"),
            viewers,
            egress_bps: 0,
            cpu_percent: cpu,
            capacity,
            seen_ms,
        }
    }

    fn claim(node: &str, epoch: u64) -> Claim {
        Claim {
            node: node.into(),
            url: format!("http://{node}:8080"),
            epoch,
        }
    }

    fn placed(p: Placement) -> String {
        match p {
            Placement::Node(n) => n.node,
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn a_heartbeat_older_than_the_ttl_is_stale() {
        let n = node("a", 0, 10, 0, 10_000);
        assert!(n.fresh(10_000, TTL));
        assert!(n.fresh(13_000, TTL));
        assert!(!n.fresh(13_001, TTL));
        // A clock a little behind the writer's is still fresh.
        assert!(n.fresh(9_000, TTL));
    }

    #[test]
    fn viewers_go_to_the_least_filled_fresh_node() {
        let now = 50_000;
        let nodes = [
            node("a", 30, 100, 5, now),
            node("b", 10, 100, 50, now),
            node("c", 0, 100, 0, now - 5_000), // stale
        ];
        assert_eq!(placed(place(&nodes, None, None, now, TTL)), "b");
        // Share of capacity, not the count: 30/1000 is emptier than 10/100.
        let nodes = [node("a", 30, 1000, 0, now), node("b", 10, 100, 0, now)];
        assert_eq!(placed(place(&nodes, None, None, now, TTL)), "a");
    }

    #[test]
    fn a_full_node_is_skipped_and_all_full_is_said() {
        let now = 1_000;
        let nodes = [node("a", 5, 5, 0, now), node("b", 9, 10, 90, now)];
        assert_eq!(placed(place(&nodes, None, None, now, TTL)), "b");
        let nodes = [node("a", 5, 5, 0, now), node("b", 0, 0, 0, now)];
        assert_eq!(place(&nodes, None, None, now, TTL), Placement::Full);
        assert_eq!(place(&[], None, None, now, TTL), Placement::NoNodes);
        let stale = [node("a", 0, 5, 0, now)];
        assert_eq!(
            place(&stale, None, None, now + TTL + 1, TTL),
            Placement::NoNodes
        );
    }

    #[test]
    fn ties_go_to_lower_cpu_then_the_origin_then_the_lowest_id() {
        let now = 1_000;
        let nodes = [
            node("c", 1, 10, 20, now),
            node("b", 1, 10, 10, now),
            node("a", 1, 10, 10, now),
        ];
        assert_eq!(placed(place(&nodes, None, None, now, TTL)), "a");
        assert_eq!(placed(place(&nodes, Some("b"), None, now, TTL)), "b");
        // The origin wins only ties: a less loaded edge is preferred.
        assert_eq!(placed(place(&nodes, Some("c"), None, now, TTL)), "a");
        // The order of the records does not matter.
        let mut reversed = nodes.clone();
        reversed.reverse();
        assert_eq!(placed(place(&reversed, None, None, now, TTL)), "a");
    }

    #[test]
    fn a_node_the_client_could_not_reach_is_the_last_resort() {
        let now = 1_000;
        let nodes = [node("a", 0, 10, 0, now), node("b", 5, 10, 0, now)];
        assert_eq!(placed(place(&nodes, None, Some("a"), now, TTL)), "b");
        // The other node is full: the avoided one is still better than none.
        let nodes = [node("a", 0, 10, 0, now), node("b", 10, 10, 0, now)];
        assert_eq!(placed(place(&nodes, None, Some("a"), now, TTL)), "a");
        // Alone and full: full.
        let nodes = [node("a", 10, 10, 0, now)];
        assert_eq!(place(&nodes, None, Some("a"), now, TTL), Placement::Full);
    }

    #[test]
    fn bit_rate_from_two_counter_readings() {
        assert_eq!(bit_rate((1_000, 0), (2_000, 125_000)), 1_000_000);
        assert_eq!(bit_rate((1_000, 100), (1_000, 200)), 0, "no time passed");
        assert_eq!(bit_rate((1_000, 200), (2_000, 100)), 0, "counter reset");
    }

    #[test]
    fn a_higher_epoch_supersedes() {
        assert!(claim("a", 1).supersedes(None));
        assert!(claim("b", 2).supersedes(Some(&claim("a", 1))));
        assert!(!claim("a", 1).supersedes(Some(&claim("b", 2))));
        assert!(!claim("a", 2).supersedes(Some(&claim("a", 2))));
    }

    #[test]
    fn a_node_sees_its_claim_is_stale() {
        let ours = claim("a", 4);
        assert_eq!(standing(&ours, Some(&claim("a", 4))), Standing::Held);
        assert_eq!(
            standing(&ours, Some(&claim("b", 5))),
            Standing::Lost(claim("b", 5))
        );
        // A newer cast on the same node is another claim: this one is done.
        assert_eq!(
            standing(&ours, Some(&claim("a", 5))),
            Standing::Lost(claim("a", 5))
        );
        // Whatever is stored and is not ours came later (writes are
        // unconditional), even with a lower epoch (a Redis that restarted).
        assert_eq!(
            standing(&ours, Some(&claim("b", 1))),
            Standing::Lost(claim("b", 1))
        );
        assert_eq!(standing(&ours, None), Standing::Vacant);
    }

    #[test]
    fn origins_follow_the_newest_claim_and_forget_released_ones() {
        let mut o = Origins::default();
        assert!(o.heard("x", claim("a", 1)));
        assert!(o.heard("x", claim("b", 3)));
        assert!(
            !o.heard("x", claim("a", 2)),
            "a late message of an old claim"
        );
        assert_eq!(o.get("x"), Some(&claim("b", 3)));
        assert_eq!(o.floor("x"), 3);
        assert!(!o.gone("x", Some(2)), "an older claim's release");
        assert!(o.gone("x", Some(3)));
        assert_eq!(o.get("x"), None);
        assert_eq!(o.floor("x"), 0);
        o.heard("x", claim("b", 7));
        assert!(o.gone("x", None), "a read found nothing");
        assert!(!o.gone("y", None));
    }

    #[test]
    fn announcements_round_trip_as_json() {
        let a = Announcement::Claimed {
            live: "x".into(),
            claim: claim("a", 2),
        };
        let text = serde_json::to_string(&a).unwrap();
        assert!(text.contains("\"kind\":\"claimed\""), "{text}");
        assert_eq!(serde_json::from_str::<Announcement>(&text).unwrap(), a);
        let r = Announcement::Released {
            live: "x".into(),
            node: "a".into(),
            epoch: 2,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Announcement>(&text).unwrap(), r);
    }
}
