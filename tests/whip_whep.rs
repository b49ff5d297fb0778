//! The real binary, real UDP: WHIP casters and WHEP viewers built on str0m.

mod common;

use std::time::Duration;

use common::{Client, Server, assert_continuous, http, live_state, run_all_until};

const LIMIT: Duration = Duration::from_secs(15);

#[test]
fn viewer_before_caster_plays_and_survives_caster_replacement() {
    let server = Server::start();
    // The viewer comes first: it gets its tracks at once.
    let mut viewer = Client::connect(&server, "/whep/demo");
    viewer.run_until(LIMIT, "viewer connects", |c| c.connected);
    assert_eq!(live_state(&server, "demo")["onAir"], false);

    let mut first = Client::connect(&server, "/whip/demo");
    run_all_until(
        &mut [&mut viewer, &mut first],
        LIMIT,
        "60 video packets from the first caster",
        |c| c[0].video().len() >= 60 && c[0].audio().len() >= 20,
    );
    let state = live_state(&server, "demo");
    assert_eq!(state["onAir"], true);
    assert_eq!(state["viewers"], 1);

    // The streamer reconnects: a new WHIP session replaces the old one,
    // with entirely new SSRC, sequence numbers and timestamps.
    let mut second = Client::connect(&server, "/whip/demo");
    second.fill = 0x77;
    let from_second = |c: &Client| c.video().iter().filter(|p| p.fill() == Some(0x77)).count();
    run_all_until(
        &mut [&mut viewer, &mut second, &mut first],
        LIMIT,
        "60 video packets from the second caster",
        |c| from_second(c[0]) >= 60,
    );
    assert_continuous(&viewer.video());
    assert_continuous(&viewer.audio());
    assert_eq!(live_state(&server, "demo")["onAir"], true);

    // The old caster's session is gone.
    let res = http().delete(server.url(&first.location)).send().unwrap();
    assert_eq!(res.status(), 404, "the replaced session no longer exists");

    // Ending the live turns it off air; the viewer stays.
    let res = http().delete(server.url(&second.location)).send().unwrap();
    assert_eq!(res.status(), 200);
    viewer.run(Duration::from_millis(200));
    let state = live_state(&server, "demo");
    assert_eq!(state["onAir"], false);
    assert_eq!(state["viewers"], 1);
}

#[test]
fn a_joining_viewer_gets_a_keyframe_quickly() {
    let server = Server::start();
    let mut caster = Client::connect(&server, "/whip/kf");
    caster.run_until(LIMIT, "caster connects", |c| c.connected);
    // Let the caster's own first keyframe go by.
    caster.run(Duration::from_millis(500));
    let requests = caster.keyframe_requests;
    let mut viewers: Vec<Client> = (0..3)
        .map(|_| Client::connect(&server, "/whep/kf"))
        .collect();
    let mut all: Vec<&mut Client> = viewers.iter_mut().collect();
    all.push(&mut caster);
    run_all_until(
        &mut all,
        LIMIT,
        "every viewer's stream begins with a keyframe",
        |c| {
            // By sequence number, not arrival: on a loaded machine loopback
            // UDP can drop the keyframe's first packet, which NACK repairs.
            c[..3].iter().all(|v| {
                let video = v.video();
                video.len() >= 10
                    && video
                        .iter()
                        .min_by_key(|p| p.seq)
                        .is_some_and(|p| p.payload[0] & 0x10 != 0 && p.payload[4] & 1 == 0)
            })
        },
    );
    // Three joins inside the throttle interval: coalesced, not one each.
    let asked = caster.keyframe_requests - requests;
    assert!((1..=2).contains(&asked), "keyframe requests: {asked}");
}

#[test]
fn lives_on_air_are_listed() {
    let server = Server::start();
    let mut caster = Client::connect(&server, "/whip/listed");
    caster.run_until(LIMIT, "caster connects", |c| c.connected);
    caster.run(Duration::from_millis(100));
    let body: serde_json::Value = serde_json::from_str(
        &http()
            .get(server.url("/api/lives"))
            .send()
            .unwrap()
            .text()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(body["lives"][0]["live"], "listed");
    assert_eq!(body["lives"][0]["onAir"], true);
}

#[test]
fn answers_suit_non_trickle_and_ssrc_routing_clients() {
    let server = Server::start();
    let viewer = Client::connect(&server, "/whep/sdp");
    let caster = Client::connect(&server, "/whip/sdp");
    for (who, answer) in [("WHEP", &viewer.answer), ("WHIP", &caster.answer)] {
        // Clients that never PATCH (OBS, FFmpeg) need the server's
        // candidates in the answer.
        assert!(
            answer.contains("a=candidate:"),
            "{who} answer has candidates:\n{answer}"
        );
        assert!(answer.contains("a=ice-lite"), "{who} answer says ice-lite");
        // ICE-TCP (RFC 6544) for networks that block UDP.
        assert!(
            answer.contains(" tcp ") && answer.contains("tcptype passive"),
            "{who} answer has a passive TCP candidate:\n{answer}"
        );
    }
    // libdatachannel-based players route by SSRC: every m-line Vessel sends
    // on must announce its SSRCs.
    let sections: Vec<&str> = viewer.answer.split("\r\nm=").skip(1).collect();
    assert_eq!(sections.len(), 2, "audio and video");
    for m in sections {
        assert!(m.contains("a=sendonly"), "viewer tracks are sendonly:\n{m}");
        assert!(m.contains("a=ssrc:"), "SSRC announced:\n{m}");
    }
}

#[test]
fn a_viewer_caps_its_layer_through_the_whep_layer_extension() {
    let server = Server::start();
    let viewer = Client::connect(&server, "/whep/layers");
    let layer_url = format!("{}/layer", viewer.location);
    let link = format!("<{layer_url}>; rel=\"urn:ietf:params:whep:ext:core:layer\"");
    assert!(viewer.links.contains(&link), "{:?}", viewer.links);
    for layer in ["low", "medium", "high", "auto"] {
        let res = http()
            .post(server.url(&layer_url))
            .header("content-type", "application/json")
            .body(format!("{{\"layer\":\"{layer}\"}}"))
            .send()
            .unwrap();
        assert_eq!(res.status(), 204, "{layer}");
    }
    let caster = Client::connect(&server, "/whip/layers");
    assert!(
        caster.links.iter().all(|l| !l.contains("layer")),
        "casters have no layer URL"
    );
}
