//! A lossy network on simulated time: NACKs and retransmissions repair
//! what is lost each way, and the loss is counted. The losses come from
//! the run's seed (`VESSEL_SIM_SEED` replays a failing run).

use std::collections::HashSet;

use super::*;

/// What identifies a packet a caster wrote: when it was written, its layer
/// and which part of the frame it is.
fn written(g: &Got) -> (Duration, u8, u64) {
    (g.sent, g.layer, g.seq % 2)
}

#[test]
fn nacks_repair_a_lossy_network_and_the_loss_is_counted() {
    let mut net = Net::new();
    let seed = net.seed;
    net.join("show", Role::Cast);
    let viewers: Vec<usize> = (0..3).map(|_| net.join("show", Role::Play)).collect();
    // Connected on a clean network (a DTLS handshake under loss only takes
    // longer), then 5 % of the datagrams lost each way for 6 s, then a
    // clean second for the last repairs.
    net.run(Duration::from_millis(1000));
    assert!(viewers.iter().all(|&v| net.clients[v].connected));
    let before = net.sfus[0].stats();
    let lossy_from = net.now - net.start;
    net.loss_percent = 5;
    net.run(Duration::from_secs(6));
    let lossy_to = net.now - net.start;
    net.loss_percent = 0;
    net.run(Duration::from_millis(1000));

    // Packets the caster wrote in the lossy window, as one viewer saw them
    // (each has one layer): every viewer must end up with nearly all.
    let frames = (lossy_to - lossy_from).as_millis() / 33;
    for &v in &viewers {
        let got: HashSet<_> = net.clients[v]
            .received
            .iter()
            .filter(|g| g.sent >= lossy_from && g.sent < lossy_to)
            .map(written)
            .collect();
        let expected = frames as usize * 2;
        assert!(
            got.len() * 1000 >= expected * 995,
            "seed {seed}: viewer {v} has {} of ~{expected} packets after repair",
            got.len()
        );
    }
    let stats = net.sfus[0].stats();
    let d = |a: u64, b: u64| a - b;
    assert!(
        d(stats.nacks_sent, before.nacks_sent) > 0,
        "seed {seed}: the caster was asked to resend: {stats:?}"
    );
    assert!(
        d(stats.nacks_received, before.nacks_received) > 0,
        "seed {seed}: viewers asked us to resend: {stats:?}"
    );

    // Repaired in time, nothing counts as lost. A heavier loss leaves holes
    // that repairs (lost too) do not fill: counted each way.
    let before = stats;
    net.loss_percent = 40;
    net.run(Duration::from_secs(3));
    net.loss_percent = 0;
    net.run(STATS_INTERVAL * 2);
    let stats = net.sfus[0].stats();
    assert!(
        d(stats.lost_in, before.lost_in) > 0 && d(stats.lost_out, before.lost_out) > 0,
        "seed {seed}: losses each way are counted: {stats:?}"
    );
}
