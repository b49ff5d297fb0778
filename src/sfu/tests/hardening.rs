//! What a hostile or broken peer cannot do to the others: a panic inside
//! one session's handling ends that session alone, and only an
//! authenticated ICE check moves a session to a new address.

use hmac::{Hmac, Mac};
use sha1::Sha1;
use str0m::ice::{StunMessage, TransId};

use super::*;

/// A binding request for client `i`'s session, as its ICE agent words it,
/// signed with `password`.
fn check(net: &mut Net, i: usize, password: &str) -> Vec<u8> {
    let peer = net.clients[i].peer;
    let ufrag = net.sfus[0].peers[&peer].ufrag.clone();
    let client = net.clients[i]
        .rtc
        .direct_api()
        .local_ice_credentials()
        .ufrag;
    let username = format!("{ufrag}:{client}");
    let msg = StunMessage::binding_request(&username, TransId::new(), true, 7, 1_000, false);
    let mut buf = [0u8; 512];
    let n = msg
        .to_bytes(Some(password.as_bytes()), &mut buf, |key, parts| {
            let mut mac = Hmac::<Sha1>::new_from_slice(key).unwrap();
            for p in parts {
                mac.update(p);
            }
            mac.finalize().into_bytes().into()
        })
        .unwrap();
    buf[..n].to_vec()
}

#[test]
fn a_panic_in_one_session_closes_it_alone() {
    let mut net = Net::new();
    let caster = net.join("show", Role::Cast);
    let broken = net.join("show", Role::Play);
    let fine = net.join("show", Role::Play);
    let other = net.join("other", Role::Cast);
    let other_viewer = net.join("other", Role::Play);
    net.run(Duration::from_millis(500));
    let before = net.clients[fine].received.len();
    let broken_peer = net.clients[broken].peer;
    net.sfus[0].peers.get_mut(&broken_peer).unwrap().poisoned = true;

    // Its next poll panics (in the caster's fan-out, on a timer, …).
    net.run(Duration::from_millis(500));
    assert!(net.ended(broken_peer), "the failing session is closed");
    assert_eq!(net.sfus[0].stats().peer_panics, 1, "counted once");
    assert!(
        net.clients[fine].received.len() > before + 20,
        "the live's other viewer keeps receiving"
    );
    assert!(
        !net.clients[other_viewer].received.is_empty(),
        "and so does another live"
    );
    assert_eq!(net.last_state("show").unwrap().viewers, 1);

    // A caster that fails: its live goes off air, nothing else stops.
    let caster_peer = net.clients[caster].peer;
    net.sfus[0].peers.get_mut(&caster_peer).unwrap().poisoned = true;
    let other_before = net.clients[other_viewer].received.len();
    net.run(Duration::from_millis(500));
    assert!(net.ended(caster_peer));
    assert!(!net.last_state("show").unwrap().on_air);
    assert!(net.clients[other_viewer].received.len() > other_before + 20);
    assert_eq!(net.sfus[0].stats().peer_panics, 2);
    let _ = other;
}

#[test]
fn only_an_authenticated_check_moves_a_session() {
    let mut net = Net::new();
    net.join("show", Role::Cast);
    let viewer = net.join("show", Role::Play);
    net.run(Duration::from_millis(300));
    let peer = net.clients[viewer].peer;
    let real = net.clients[viewer].addr;
    let spoofer: SocketAddr = "10.0.0.66:6666".parse().unwrap();
    let now = net.now;

    // A check with the session's ufrag but no password of ours.
    let forged = check(&mut net, viewer, "not-the-password");
    net.sfus[0].handle_receive(now, Protocol::Udp, spoofer, server(0), &forged);
    assert_eq!(
        net.sfus[0].by_addr.get(&spoofer),
        None,
        "no route for the spoofer"
    );
    assert_eq!(net.sfus[0].by_addr.get(&real), Some(&peer));
    let before = net.clients[viewer].received.len();
    net.run(Duration::from_millis(300));
    assert!(
        net.clients[viewer].received.len() > before + 10,
        "media still reaches the viewer"
    );

    // A signed one from another address (the client moved): learnt.
    let password = net.sfus[0]
        .peers
        .get_mut(&peer)
        .unwrap()
        .rtc
        .direct_api()
        .local_ice_credentials()
        .pass;
    let signed = check(&mut net, viewer, &password);
    net.sfus[0].handle_receive(now, Protocol::Udp, spoofer, server(0), &signed);
    assert_eq!(net.sfus[0].by_addr.get(&spoofer), Some(&peer));

    // A session keeps its last few addresses, not every one it was sent from.
    for port in 0..40u16 {
        let from = SocketAddr::new([10, 0, 0, 77].into(), 7000 + port);
        net.sfus[0].handle_receive(now, Protocol::Udp, from, server(0), &signed);
    }
    let held = net.sfus[0].by_addr.values().filter(|p| **p == peer).count();
    assert_eq!(held, MAX_ADDRS);
    assert_eq!(net.sfus[0].peers[&peer].addrs.len(), MAX_ADDRS);
}

#[test]
fn trickled_candidates_are_bounded() {
    let mut net = Net::new();
    let viewer = net.join("show", Role::Play);
    let peer = net.clients[viewer].peer;
    for port in 0..500u16 {
        let c = Candidate::host(SocketAddr::new([10, 9, 9, 9].into(), 1000 + port), "udp").unwrap();
        net.sfus[0]
            .add_remote_candidates("show", Role::Play, peer, vec![c])
            .unwrap();
    }
    assert_eq!(net.sfus[0].peers[&peer].candidates, MAX_REMOTE_CANDIDATES);
}
