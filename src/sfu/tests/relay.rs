//! A relay to another node: a viewer that takes every layer of the caster,
//! each on its own rid, and whose keyframe requests reach the layer asked.

use super::*;

/// Relay (viewer with `a=simulcast:recv q;h;f`) and a simulcast caster.
fn relayed() -> (Net, usize, usize) {
    let mut net = Net::new();
    let caster = net.join_with("show", Role::Cast, true);
    let relay = net.join_with("show", Role::Play, true);
    net.run(Duration::from_secs(2));
    (net, caster, relay)
}

#[test]
fn a_relay_gets_every_layer_each_on_its_rid() {
    let (mut net, _, relay) = relayed();
    let got = &net.clients[relay].received;
    for (i, rid) in RIDS.iter().enumerate() {
        let on_rid: Vec<&Got> = got
            .iter()
            .filter(|g| g.rid == Some(Rid::from(*rid)))
            .collect();
        assert!(on_rid.len() > 50, "rid {rid}: {} packets", on_rid.len());
        assert!(
            on_rid.iter().all(|g| g.layer == i as u8),
            "rid {rid} carries layer {i} only"
        );
        assert!(on_rid[0].starts_keyframe, "rid {rid} starts at a keyframe");
        // Each layer is one stream, as the edge's SFU needs it.
        let seqs: Vec<u64> = on_rid.iter().map(|g| g.seq).collect();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "rid {rid}: {seqs:?}"
        );
    }
    // The relay counts as one of the live's audience.
    assert_eq!(net.last_state("show").map(|s| s.viewers), Some(1));
    net.run(Duration::from_millis(10));
}

#[test]
fn a_relay_keyframe_request_reaches_the_layer_it_names() {
    let (mut net, caster, relay) = relayed();
    // Past the keyframe requests' hold-off.
    net.run(Duration::from_secs(3));
    let before = net.clients[caster].keyframe_requests;
    let video = net.clients[relay].video;
    let c = &mut net.clients[relay];
    c.rtc
        .direct_api()
        .stream_rx_by_mid(video, Some(Rid::from("h")))
        .expect("the relay receives rid h")
        .request_keyframe(str0m::media::KeyframeRequestKind::Pli);
    let n = c.received.len();
    net.run(Duration::from_millis(300));
    assert!(
        net.clients[caster].keyframe_requests > before,
        "the caster was asked"
    );
    let after = &net.clients[relay].received[n..];
    assert!(
        after
            .iter()
            .any(|g| g.rid == Some(Rid::from("h")) && g.starts_keyframe),
        "a keyframe came on rid h"
    );
}

#[test]
fn relays_are_counted_apart_from_people() {
    let (mut net, _, relay) = relayed();
    let person = net.join("show", Role::Play);
    net.run(Duration::from_millis(500));
    let state = net.last_state("show").unwrap();
    assert_eq!((state.viewers, state.relays), (2, 1), "{state:?}");
    // The relay leaves: only the person is left, and no relay.
    let peer = net.clients[relay].peer;
    net.sfus[0]
        .leave("show", Role::Play, peer, net.now)
        .unwrap();
    net.pump();
    let state = net.last_state("show").unwrap();
    assert_eq!((state.viewers, state.relays), (1, 0), "{state:?}");
    assert!(!net.clients[person].received.is_empty());
}
