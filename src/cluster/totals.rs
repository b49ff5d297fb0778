//! Cluster-wide viewer totals, without IO: what a node publishes of its
//! lives (people watching each, whether its caster is here), and what the
//! other nodes' records add to each live. `audience.rs` moves the records
//! through Redis; the live board (`board.rs`) shows the sums.
//!
//! A relay from an origin to an edge is a viewer session on the origin but
//! not a person: nodes publish their viewers without relays, so each
//! person counts once, on the node they watch on.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::registry::NodeId;
use crate::board::Elsewhere;
use crate::sfu::LiveState;

/// One live on one node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveCount {
    /// People watching it there (relays to other nodes left out).
    pub viewers: u64,
    /// Its caster is there (the node is its origin); an edge's relay cast
    /// is not.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cast: bool,
    /// The live is private by this node's access rules: nodes that do not
    /// know it as private show only their own figures of it (and so list
    /// nothing of it they did not before).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub private: bool,
}

/// What a node publishes of its lives, with its heartbeat's lifetime: a
/// node that stops publishing drops out of every total within seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLives {
    pub node: NodeId,
    /// When it was published, Unix ms (the publisher's clock).
    pub seen_ms: u64,
    /// Lives with people or a caster there, by name.
    pub lives: BTreeMap<String, LiveCount>,
}

impl NodeLives {
    fn fresh(&self, now_ms: u64, ttl_ms: u64) -> bool {
        now_ms.saturating_sub(self.seen_ms) <= ttl_ms
    }
}

/// This node's record from its own view of its lives (`LiveBoard::active`):
/// `cast_here` tells the lives whose caster is here (not a relay's),
/// `private` those its access rules make private.
pub fn here(
    states: &[LiveState],
    cast_here: impl Fn(&str) -> bool,
    private: impl Fn(&str) -> bool,
) -> BTreeMap<String, LiveCount> {
    states
        .iter()
        .map(|s| {
            let count = LiveCount {
                viewers: s.viewers.saturating_sub(s.relays) as u64,
                cast: s.on_air && cast_here(&s.live),
                private: private(&s.live),
            };
            (s.live.clone(), count)
        })
        .filter(|(_, c)| c.viewers > 0 || c.cast)
        .collect()
}

/// What the other nodes' fresh records add to each live, for node `me`.
/// A record older than `ttl_ms` (a node that stopped, read just before it
/// expired) adds nothing.
pub fn elsewhere(
    records: &[NodeLives],
    me: &str,
    now_ms: u64,
    ttl_ms: u64,
) -> HashMap<String, Elsewhere> {
    let mut out: HashMap<String, Elsewhere> = HashMap::new();
    for r in records
        .iter()
        .filter(|r| r.node != me && r.fresh(now_ms, ttl_ms))
    {
        for (live, c) in &r.lives {
            let e = out.entry(live.clone()).or_default();
            e.viewers += c.viewers as usize;
            e.on_air |= c.cast;
            e.private |= c.private;
        }
    }
    out
}

/// Every fresh record's lives, by live then node: (people, cast there).
pub fn by_live(
    records: &[NodeLives],
    now_ms: u64,
    ttl_ms: u64,
) -> BTreeMap<String, BTreeMap<NodeId, LiveCount>> {
    let mut out: BTreeMap<String, BTreeMap<NodeId, LiveCount>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.fresh(now_ms, ttl_ms)) {
        for (live, c) in &r.lives {
            out.entry(live.clone())
                .or_default()
                .insert(r.node.clone(), *c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(live: &str, on_air: bool, viewers: usize, relays: usize) -> LiveState {
        LiveState {
            live: live.into(),
            on_air,
            viewers,
            relays,
            ..Default::default()
        }
    }

    fn record(node: &str, seen_ms: u64, lives: &[(&str, u64, bool)]) -> NodeLives {
        NodeLives {
            node: node.into(),
            seen_ms,
            lives: lives
                .iter()
                .map(|(l, viewers, cast)| {
                    (
                        l.to_string(),
                        LiveCount {
                            viewers: *viewers,
                            cast: *cast,
                            private: false,
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn a_node_publishes_people_not_relays_and_only_its_own_casts() {
        let states = [
            // Origin of "a": a person and two relays.
            state("a", true, 3, 2),
            // An edge of "b": on air through a relay cast, two people.
            state("b", true, 2, 0),
            // Only relays: nothing to publish.
            state("c", false, 1, 1),
        ];
        let lives = here(&states, |l| l == "a", |l| l == "b");
        let mut expected = record("n", 0, &[("a", 1, true), ("b", 2, false)]).lives;
        expected.get_mut("b").unwrap().private = true;
        assert_eq!(lives, expected);
    }

    #[test]
    fn other_fresh_nodes_add_up() {
        let records = [
            record("me", 10_000, &[("a", 5, false)]),
            record("b", 10_000, &[("a", 2, true), ("x", 1, false)]),
            record("c", 9_900, &[("a", 1, false)]),
            // Stopped: its record is older than the TTL.
            record("dead", 10_000 - 3_001, &[("a", 100, false)]),
        ];
        let e = elsewhere(&records, "me", 10_000, 3_000);
        assert_eq!(
            e.get("a"),
            Some(&Elsewhere {
                viewers: 3,
                on_air: true,
                private: false,
            }),
            "not my own, not the dead node's"
        );
        assert_eq!(
            e.get("x"),
            Some(&Elsewhere {
                viewers: 1,
                on_air: false,
                private: false,
            })
        );
        assert_eq!(e.len(), 2);
        let all = by_live(&records, 10_000, 3_000);
        assert_eq!(all["a"].len(), 3);
        assert_eq!(all["a"]["me"].viewers, 5);
    }

    #[test]
    fn records_without_casts_stay_small_and_read_back() {
        let r = record("n", 5, &[("a", 2, false), ("b", 0, true)]);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"node":"n","seen_ms":5,"lives":{"a":{"viewers":2},"b":{"viewers":0,"cast":true}}}"#
        );
        assert_eq!(serde_json::from_str::<NodeLives>(&json).unwrap(), r);
    }
}
