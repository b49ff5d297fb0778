//! The cluster as Prometheus text (`GET /api/cluster/metrics`), without
//! IO: every node's load from its heartbeat, labelled by node, and every
//! live's people per node and origin. Any node renders the same figures
//! from the same Redis records, so one scrape target covers the cluster
//! (each node's own `/metrics` stays per node).

use std::collections::BTreeMap;
use std::fmt::Write;

use super::registry::{Claim, NodeId, NodeInfo};
use super::totals::LiveCount;

/// What the cluster view is made of, as read from Redis.
pub struct View<'a> {
    pub nodes: &'a [NodeInfo],
    /// Fresh records only (`totals::by_live`).
    pub lives: &'a BTreeMap<String, BTreeMap<NodeId, LiveCount>>,
    pub origins: &'a BTreeMap<String, Claim>,
    pub now_ms: u64,
    pub heartbeat_ttl_ms: u64,
}

/// A label value as the text format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP vessel_cluster_{name} {help}");
    let _ = writeln!(out, "# TYPE vessel_cluster_{name} gauge");
}

pub fn render(v: &View) -> String {
    let mut out = String::new();
    let fresh: Vec<&NodeInfo> = v
        .nodes
        .iter()
        .filter(|n| n.fresh(v.now_ms, v.heartbeat_ttl_ms))
        .collect();
    family(&mut out, "nodes", "Nodes with a fresh heartbeat");
    let _ = writeln!(out, "vessel_cluster_nodes {}", fresh.len());

    type Figure = fn(&NodeInfo, u64) -> f64;
    let per_node: [(&str, &str, Figure); 5] = [
        (
            "node_viewers",
            "Viewer sessions a node serves (relays to edges included), from its heartbeat",
            |n, _| n.viewers as f64,
        ),
        (
            "node_capacity",
            "Viewers a node takes before new ones go elsewhere (--node-capacity)",
            |n, _| n.capacity as f64,
        ),
        (
            "node_egress_bits_per_second",
            "Media a node sends, bits per second over its last heartbeat period",
            |n, _| n.egress_bps as f64,
        ),
        (
            "node_cpu_percent",
            "How busy a node's media workers are, percent (their mean)",
            |n, _| n.cpu_percent as f64,
        ),
        (
            "node_heartbeat_age_seconds",
            "Seconds since a node's last heartbeat (by the clocks of this node and that one)",
            |n, now| now.saturating_sub(n.seen_ms) as f64 / 1000.0,
        ),
    ];
    for (name, help, figure) in per_node {
        family(&mut out, name, help);
        for n in &fresh {
            let _ = writeln!(
                out,
                "vessel_cluster_{name}{{node=\"{}\",url=\"{}\"}} {}",
                escape(&n.node),
                escape(&n.url),
                figure(n, v.now_ms)
            );
        }
    }

    let on_air = v
        .lives
        .values()
        .filter(|by_node| by_node.values().any(|c| c.cast))
        .count();
    family(
        &mut out,
        "lives",
        "Lives whose caster is on a node of the cluster",
    );
    let _ = writeln!(out, "vessel_cluster_lives {on_air}");
    let people: u64 = v
        .lives
        .values()
        .flat_map(|m| m.values())
        .map(|c| c.viewers)
        .sum();
    family(
        &mut out,
        "viewers",
        "People watching on every node (relays between nodes left out)",
    );
    let _ = writeln!(out, "vessel_cluster_viewers {people}");
    family(
        &mut out,
        "live_viewers",
        "People watching a live on a node (relays between nodes left out)",
    );
    for (live, by_node) in v.lives {
        for (node, c) in by_node {
            let _ = writeln!(
                out,
                "vessel_cluster_live_viewers{{live=\"{}\",node=\"{}\"}} {}",
                escape(live),
                escape(node),
                c.viewers
            );
        }
    }
    family(
        &mut out,
        "origin_epoch",
        "A live's origin (the node its caster is on) and its claim's epoch",
    );
    for (live, claim) in v.origins {
        let _ = writeln!(
            out,
            "vessel_cluster_origin_epoch{{live=\"{}\",node=\"{}\"}} {}",
            escape(live),
            escape(&claim.node),
            claim.epoch
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, seen_ms: u64) -> NodeInfo {
        NodeInfo {
            node: id.into(),
            url: format!("http://{id}:8080"),
            viewers: 4,
            egress_bps: 2_000_000,
            cpu_percent: 12,
            capacity: 100,
            seen_ms,
        }
    }

    #[test]
    fn renders_every_fresh_node_and_live_with_labels() {
        let nodes = [node("a", 10_000), node("b", 9_500), node("gone", 1_000)];
        let mut lives = BTreeMap::new();
        lives.insert(
            "show\"x".to_string(),
            BTreeMap::from([
                (
                    "a".to_string(),
                    LiveCount {
                        viewers: 1,
                        cast: true,
                        private: false,
                    },
                ),
                (
                    "b".to_string(),
                    LiveCount {
                        viewers: 2,
                        cast: false,
                        private: false,
                    },
                ),
            ]),
        );
        let origins = BTreeMap::from([(
            "show\"x".to_string(),
            Claim {
                node: "a".into(),
                url: "http://a:8080".into(),
                epoch: 7,
            },
        )]);
        let text = render(&View {
            nodes: &nodes,
            lives: &lives,
            origins: &origins,
            now_ms: 10_000,
            heartbeat_ttl_ms: 3_000,
        });
        for line in [
            "vessel_cluster_nodes 2",
            "vessel_cluster_node_viewers{node=\"a\",url=\"http://a:8080\"} 4",
            "vessel_cluster_node_egress_bits_per_second{node=\"b\",url=\"http://b:8080\"} 2000000",
            "vessel_cluster_node_cpu_percent{node=\"a\",url=\"http://a:8080\"} 12",
            "vessel_cluster_node_heartbeat_age_seconds{node=\"b\",url=\"http://b:8080\"} 0.5",
            "vessel_cluster_lives 1",
            "vessel_cluster_viewers 3",
            "vessel_cluster_live_viewers{live=\"show\\\"x\",node=\"b\"} 2",
            "vessel_cluster_origin_epoch{live=\"show\\\"x\",node=\"a\"} 7",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
        assert!(!text.contains("gone"), "a stale node is left out");
        // Every sample belongs to a family declared before it.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} gauge")), "{l}");
        }
    }
}
