//! Several media workers (`--workers 3`): sessions are spread round-robin
//! over the shards, so casters and viewers land on different threads and
//! ports; media, keyframe requests, viewer counts and caster replacement
//! must cross between them.

mod common;

use std::time::Duration;

use common::{Client, Server, assert_continuous, http, live_state, run_all_until};

const LIMIT: Duration = Duration::from_secs(20);

fn media_port(client: &Client) -> String {
    client
        .answer
        .lines()
        .find(|l| l.starts_with("a=candidate") && l.to_lowercase().contains(" udp "))
        .and_then(|l| l.split_whitespace().nth(5))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn viewers_on_every_shard_watch_a_caster_on_one_and_survive_its_replacement_from_another() {
    let server = Server::start_with_args(&["--workers", "3"]);
    // Round-robin placement: viewer a → shard 0, caster 1 → shard 1, b → 2, c → 0.
    let mut a = Client::connect(&server, "/whep/spread");
    let mut first = Client::connect(&server, "/whip/spread");
    let mut b = Client::connect(&server, "/whep/spread");
    let mut c = Client::connect(&server, "/whep/spread");
    let ports: Vec<String> = [&a, &first, &b].iter().map(|c| media_port(c)).collect();
    assert!(
        ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2],
        "three shards, three media ports: {ports:?}"
    );
    assert_eq!(
        media_port(&c),
        ports[0],
        "the fourth session is back on shard 0"
    );
    run_all_until(
        &mut [&mut a, &mut b, &mut c, &mut first],
        LIMIT,
        "every viewer gets video and audio from the caster on shard 1",
        |all| {
            all[..3]
                .iter()
                .all(|v| v.video().len() >= 60 && v.audio().len() >= 20)
        },
    );
    let state = live_state(&server, "spread");
    assert_eq!(state["onAir"], true);
    assert_eq!(
        state["viewers"], 3,
        "viewers summed over the shards: {state}"
    );

    // d → shard 1; then the new caster lands on shard 2, away from the old one.
    let mut d = Client::connect(&server, "/whep/spread");
    let mut second = Client::connect(&server, "/whip/spread");
    second.fill = 0x77;
    let from_second = |v: &Client| v.video().iter().filter(|p| p.fill() == Some(0x77)).count();
    run_all_until(
        &mut [&mut a, &mut b, &mut c, &mut d, &mut second, &mut first],
        LIMIT,
        "every viewer gets video from the second caster",
        |all| all[..4].iter().all(|v| from_second(v) >= 60),
    );
    let res = http().delete(server.url(&first.location)).send().unwrap();
    assert_eq!(
        res.status(),
        404,
        "the first caster was ended on its own shard"
    );
    // Each viewer saw the replacement as one stream going on.
    for v in [&a, &b, &c, &d] {
        assert_continuous(&v.video());
        assert_continuous(&v.audio());
    }

    let res = http().delete(server.url(&second.location)).send().unwrap();
    assert_eq!(res.status(), 200);
    a.run(Duration::from_millis(300));
    let state = live_state(&server, "spread");
    assert_eq!(state["onAir"], false);
    assert_eq!(state["viewers"], 4);
}
