//! A cluster of three real `vessel` processes and a real `redis-server`
//! (started here, on a free loopback port): heartbeats, the route API,
//! origin claims handed over between nodes, and Redis going away and
//! coming back. Needs `redis-server` on the PATH (scripts/test installs
//! Debian's).

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::{
    Redis, fresh_nodes, get, id_of, json, node, node_with, origin, poll, until_origin, viewers,
};
use common::{Client, Server, http, live_goes_on, run_all_until};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(15);

/// For tests of a live moving between nodes: a caster on a node that is not
/// the live's origin takes the live there, instead of being sent to the
/// origin with a 307.
const MOVES: &[&str] = &["--cast-redirect=false"];

#[test]
fn clustering_needs_a_secret() {
    let out = Command::new(env!("CARGO_BIN_EXE_vessel"))
        .args([
            "--cluster",
            "redis://127.0.0.1:1/0",
            "--http",
            "127.0.0.1:0",
        ])
        .env_remove("VESSEL_CLUSTER_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("--cluster-secret"), "{text}");
}

#[test]
fn single_node_routes_to_itself() {
    let server = Server::start();
    let v = json(&server, "/api/route?live=show");
    let url = v["url"].as_str().unwrap();
    assert_eq!(url, server.base);
    assert_eq!(v["whep"], format!("{}/whep/show", server.base));
    let (status, _) = get(&server, "/api/route?live=bad%20name");
    assert_eq!(status, 400);
    assert_eq!(json(&server, "/api/cluster")["cluster"], false);
}

#[test]
fn heartbeats_and_routes_by_load_and_capacity() {
    let redis = Redis::start();
    let a = node(&redis, 100);
    let b = node(&redis, 100);
    let full = node(&redis, 0);
    let ids = [id_of(&a), id_of(&b), id_of(&full)];
    let mut all = ids.to_vec();
    all.sort();
    for server in [&a, &b, &full] {
        poll(LIMIT, "every node's heartbeat on every node", || {
            fresh_nodes(server) == all
        });
    }
    let v = json(&a, "/api/cluster");
    let me = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == ids[0].as_str())
        .unwrap()
        .clone();
    assert_eq!(
        me["url"],
        a.base.as_str(),
        "the node URL defaults to --http"
    );
    assert_eq!(me["capacity"], 100);

    let (status, _) = get(&b, "/api/route?live=bad%20name");
    assert_eq!(status, 400);

    // A live on A with two viewers there: new viewers go to B, never to
    // the full node, whichever node is asked.
    let mut caster = Client::connect(&a, "/whip/show");
    let mut v1 = Client::connect(&a, "/whep/show");
    let mut v2 = Client::connect(&a, "/whep/show");
    run_all_until(
        &mut [&mut caster, &mut v1, &mut v2],
        LIMIT,
        "both viewers play",
        |c| c[1].video().len() > 10 && c[2].video().len() > 10,
    );
    let deadline = Instant::now() + LIMIT;
    loop {
        let answers: Vec<Value> = [&a, &b, &full]
            .iter()
            .map(|s| json(s, "/api/route?live=show"))
            .collect();
        for v in &answers {
            assert_ne!(v["node"], ids[2].as_str(), "a full node is skipped: {v}");
        }
        if answers.iter().all(|v| v["node"] == ids[1].as_str()) {
            let v = &answers[0];
            assert_eq!(v["url"], b.base.as_str());
            assert_eq!(v["whep"], format!("{}/whep/show", b.base));
            assert_eq!(v["origin"], false, "B is an edge of show: {v}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "viewers on A should send new ones to B: {answers:?}"
        );
        common::run_all(
            &mut [&mut caster, &mut v1, &mut v2],
            Duration::from_millis(200),
        );
    }
}

#[test]
fn the_newest_caster_takes_the_live_across_nodes() {
    let redis = Redis::start();
    let a = node_with(&redis, 100, MOVES);
    let b = node_with(&redis, 100, MOVES);
    let (id_a, id_b) = (id_of(&a), id_of(&b));

    let mut first = Client::connect(&a, "/whip/show");
    first.run_until(LIMIT, "caster on A connects", |c| c.connected);
    let mut on_a = None;
    let deadline = Instant::now() + LIMIT;
    while on_a.is_none() {
        first.run(Duration::from_millis(100));
        on_a = origin(&b, "show").filter(|(n, _)| *n == id_a);
        assert!(Instant::now() < deadline, "origin of show on A");
    }
    let (_, epoch_a) = on_a.unwrap();
    // Any node answers the route with the origin flagged.
    let v = json(&b, "/api/route?live=show");
    assert_eq!(v["origin"], v["node"] == id_a.as_str(), "{v}");

    // The streamer moves to B: B becomes the origin with a newer epoch and
    // A's cast ends, as a replaced caster's does on one node.
    let mut second = Client::connect(&b, "/whip/show");
    run_all_until(
        &mut [&mut first, &mut second],
        LIMIT,
        "A's caster ended by B's claim",
        |c| c[0].closed && c[1].connected,
    );
    let (node, epoch_b) = origin(&a, "show").expect("an origin");
    assert_eq!(node, id_b);
    assert!(epoch_b > epoch_a, "{epoch_b} > {epoch_a}");
    assert!(
        a.log_text().contains("another node's caster took the live"),
        "A says why its cast ended"
    );
    // B keeps it (its claim is refreshed past the 5 s TTL).
    second.run(Duration::from_secs(6));
    assert_eq!(origin(&a, "show"), Some((id_b.clone(), epoch_b)));
    // The cast ends: the claim goes with it.
    let _ = http().delete(b.url(&second.location)).send().unwrap();
    poll(LIMIT, "the claim released", || origin(&a, "show").is_none());
}

#[test]
fn redis_going_away_pauses_the_cluster_but_not_the_lives() {
    let mut redis = Redis::start();
    let port = redis.port;
    let a = node(&redis, 100);
    let b = node(&redis, 100);
    let mut all = vec![id_of(&a), id_of(&b)];
    all.sort();
    poll(LIMIT, "both heartbeats", || fresh_nodes(&a) == all);

    let mut caster = Client::connect(&a, "/whip/show");
    let mut viewer = Client::connect(&a, "/whep/show");
    live_goes_on(&mut caster, &mut viewer);
    poll(LIMIT, "origin on A", || origin(&b, "show").is_some());

    redis.kill();
    let (status, body) = get(&b, "/api/route?live=show");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("Redis is unreachable"), "{body}");
    let (status, _) = get(&a, "/api/cluster");
    assert_eq!(status, 503);
    // The live on A goes on for its viewer meanwhile.
    live_goes_on(&mut caster, &mut viewer);
    common::run_all(&mut [&mut caster, &mut viewer], Duration::from_secs(2));
    live_goes_on(&mut caster, &mut viewer);

    // Redis is back, empty: the nodes re-register and A claims its live
    // again, by themselves.
    let _redis = Redis::start_on(port);
    let back = Instant::now();
    let deadline = back + Duration::from_secs(10);
    loop {
        common::run_all(&mut [&mut caster, &mut viewer], Duration::from_millis(100));
        if fresh_nodes(&b) == all && origin(&b, "show").is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nodes re-register after Redis is back"
        );
    }
    eprintln!("re-registered {:?} after Redis came back", back.elapsed());
    assert!(json(&b, "/api/route?live=show")["whep"].as_str().is_some());
    live_goes_on(&mut caster, &mut viewer);
}

/// The library API the relay builds on, against the same real Redis: a
/// node that starts while Redis is down starts anyway and joins once it is
/// up; an edge's `watch_origin` follows the origin as it moves; the old
/// origin hears `ClaimEvent::Lost`; a release clears the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_api_follows_claims_and_waits_for_redis() {
    use vessel::cluster::{ClaimEvent, Cluster, ClusterError, Load};
    use vessel::config::ClusterFlags;

    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let flags = ClusterFlags {
        cluster: Some(format!("redis://127.0.0.1:{port}/0")),
        cluster_secret: Some("s3cret".into()),
        node_capacity: Some(10),
        node_url: None,
        cast_redirect: true,
    };
    let load = || Load {
        viewers: 1,
        egress_bytes: 0,
        cpu_percent: 3,
    };
    // Redis is not there yet: joining still works, calls say why they fail.
    let a = Cluster::connect(&flags, "http://127.0.0.1:1".into(), load)
        .await
        .expect("a node starts without Redis");
    match a.route("show", None).await {
        Err(ClusterError::Unavailable(reason)) => assert!(!reason.is_empty()),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(a.claim("show").await.is_err());

    let _redis = tokio::task::spawn_blocking(move || Redis::start_on(port))
        .await
        .unwrap();
    let b = Cluster::connect(&flags, "http://127.0.0.1:2".into(), load)
        .await
        .unwrap();
    let deadline = Instant::now() + LIMIT;
    while a.nodes().await.map_or(0, |n| n.len()) < 2 {
        assert!(
            Instant::now() < deadline,
            "both nodes register once Redis is up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let nodes = a.nodes().await.unwrap();
    assert!(
        nodes
            .iter()
            .all(|n| n.viewers == 1 && n.cpu_percent == 3 && n.capacity == 10)
    );
    assert_eq!(a.secret(), b"s3cret");
    assert_ne!(a.node_id(), b.node_id());

    // A's claim (made while Redis was down) is made by its refresh loop.
    let mut on_b = b.watch_origin("show");
    let deadline = Instant::now() + LIMIT;
    while on_b.borrow().as_ref().map(|c| c.node.as_str()) != Some(a.node_id()) {
        assert!(Instant::now() < deadline, "B's watch sees A's claim");
        let _ = tokio::time::timeout(Duration::from_millis(200), on_b.changed()).await;
    }
    let first = a.held("show").expect("A holds show");
    assert_eq!(b.origin("show").await.unwrap(), Some(first.clone()));
    let route = b.route("show", None).await.unwrap();
    assert_eq!(route.origin, route.node == a.node_id());

    // B's caster is newer: A hears it lost, B's watchers see B at once.
    let mut lost = a.claim_events();
    let mut on_a = a.watch_origin("show");
    let second = b.claim("show").await.unwrap();
    assert!(second.epoch > first.epoch);
    let event = tokio::time::timeout(LIMIT, lost.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        event,
        ClaimEvent::Lost {
            live: "show".into(),
            ours: first.clone(),
            by: second.clone()
        }
    );
    assert_eq!(a.held("show"), None);
    tokio::time::timeout(LIMIT, on_a.wait_for(|c| c.as_ref() == Some(&second)))
        .await
        .unwrap()
        .unwrap();
    // A's late release of its old claim leaves B's alone.
    a.release("show", first.epoch).await;
    assert_eq!(a.origin("show").await.unwrap(), Some(second.clone()));
    b.release("show", second.epoch).await;
    tokio::time::timeout(LIMIT, on_a.wait_for(Option::is_none))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.origin("show").await.unwrap(), None);
}

#[test]
fn an_edge_relays_the_live_from_its_origin_while_it_has_viewers() {
    let redis = Redis::start();
    let a = node(&redis, 100);
    let b = node(&redis, 100);
    let id_a = id_of(&a);
    let mut caster = Client::connect(&a, "/whip/show");
    until_origin(&mut caster, &b, "show", &id_a);
    // A viewer on B: B relays from A (one relay viewer on A).
    let mut viewer = Client::connect(&b, "/whep/show");
    run_all_until(
        &mut [&mut caster, &mut viewer],
        LIMIT,
        "the viewer on B gets video and audio from A",
        |c| c[1].video().len() > 60 && c[1].audio().len() > 60,
    );
    common::assert_continuous(&viewer.video()[10..]);
    assert_eq!(viewers(&a, "show"), 1, "A serves one relay");
    assert!(b.log_text().contains("relaying from the origin"));
    // A second viewer on B shares the relay.
    let mut second = Client::connect(&b, "/whep/show");
    run_all_until(
        &mut [&mut caster, &mut viewer, &mut second],
        LIMIT,
        "the second viewer on B plays",
        |c| c[2].video().len() > 30,
    );
    assert_eq!(viewers(&a, "show"), 1, "still one relay");
    // Keyframe requests travel back: each viewer started at a keyframe
    // the caster made when asked.
    assert!(caster.keyframe_requests >= 1);
    // Both leave: the relay ends a few seconds later, and A's relay
    // viewer with it.
    let _ = http().delete(b.url(&viewer.location)).send().unwrap();
    let _ = http().delete(b.url(&second.location)).send().unwrap();
    let left = Instant::now();
    let deadline = left + Duration::from_secs(30);
    while viewers(&a, "show") > 0 {
        caster.run(Duration::from_millis(200));
        assert!(Instant::now() < deadline, "A's relay viewer ends");
    }
    let took = left.elapsed();
    println!("relay gone from the origin {took:?} after the last viewer left");
    assert!(took >= Duration::from_secs(4), "it lingers: {took:?}");
    // ...then the edge ends it on the origin at once (no connection
    // timeout there).
    assert!(
        took < Duration::from_secs(9),
        "it ends soon after: {took:?}"
    );
    assert!(a.log_text().contains("relay to an edge ended by the edge"));
    assert!(b.log_text().contains("no viewer left: relay closed"));
}

#[test]
fn a_relay_needs_the_cluster_secret() {
    let redis = Redis::start();
    let a = node(&redis, 100);
    let mut caster = Client::connect(&a, "/whip/show");
    caster.run(Duration::from_millis(500));
    let offer = common::viewer_offer();
    for header in [None, Some("1.deadbeef"), Some("garbage")] {
        let mut req = http()
            .post(a.url("/cluster/relay/show"))
            .header("content-type", "application/sdp")
            .body(offer.clone());
        if let Some(h) = header {
            req = req.header("x-vessel-cluster", h);
        }
        let res = req.send().unwrap();
        assert_eq!(res.status().as_u16(), 401, "{header:?}");
        assert!(res.text().unwrap().contains("cluster"));
    }
    // Signed with another secret: 401 too.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let wrong = vessel::cluster::auth::sign(b"not-the-secret", "POST", "/cluster/relay/show", now);
    let res = http()
        .post(a.url("/cluster/relay/show"))
        .header("content-type", "application/sdp")
        .header("x-vessel-cluster", wrong)
        .body(offer)
        .send()
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    // Nor can anyone end one.
    let res = http()
        .delete(a.url("/cluster/relay/show/abc"))
        .send()
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    // Nothing was opened.
    caster.run(Duration::from_millis(300));
    assert_eq!(viewers(&a, "show"), 0);
}

#[test]
fn an_edge_follows_the_origin_when_the_caster_moves() {
    let redis = Redis::start();
    let a = node_with(&redis, 100, MOVES);
    let b = node_with(&redis, 100, MOVES);
    let c = node_with(&redis, 100, MOVES);
    let (id_a, id_b) = (id_of(&a), id_of(&b));
    let mut first = Client::connect(&a, "/whip/show");
    until_origin(&mut first, &c, "show", &id_a);
    let mut viewer = Client::connect(&c, "/whep/show");
    run_all_until(
        &mut [&mut first, &mut viewer],
        LIMIT,
        "the viewer on C plays A's caster",
        |c| c[1].video().len() > 30,
    );
    // The caster moves to B (a new session there, as OBS or the SDK
    // reconnecting would open).
    let mut second = Client::connect(&b, "/whip/show");
    second.fill = 0x77;
    let moved = Instant::now();
    run_all_until(
        &mut [&mut first, &mut second, &mut viewer],
        Duration::from_secs(20),
        "the viewer on C plays B's caster, in the same session",
        |c| {
            c[2].video()
                .iter()
                .filter(|p| p.fill() == Some(0x77))
                .count()
                > 30
        },
    );
    println!(
        "the edge's viewer saw the new origin {:?} after the move",
        moved.elapsed()
    );
    assert!(first.closed, "A's cast ended");
    assert_eq!(origin(&c, "show").map(|(n, _)| n), Some(id_b));
    assert!(!viewer.closed, "the viewer never reconnected");
}

#[test]
fn a_caster_is_sent_to_the_lives_origin_and_viewers_away_from_a_dead_node() {
    let redis = Redis::start();
    let a = node(&redis, 100);
    let b = node(&redis, 100);
    let (id_a, id_b) = (id_of(&a), id_of(&b));
    let mut all = vec![id_a.clone(), id_b.clone()];
    all.sort();
    poll(LIMIT, "both heartbeats", || fresh_nodes(&a) == all);

    // Off air: a caster casts where it lands, and the route says so.
    let cast_route = json(&b, "/api/route?live=show&cast=1");
    assert_eq!(cast_route["node"], id_b.as_str(), "{cast_route}");
    let mut caster = Client::connect(&a, "/whip/show");
    until_origin(&mut caster, &b, "show", &id_a);

    // On air on A: a WHIP caster reaching B is sent to A, with a reason.
    let (_, offer, _) = Client::offer(true);
    let no_follow = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = no_follow
        .post(b.url("/whip/show"))
        .header("content-type", "application/sdp")
        .body(offer)
        .send()
        .unwrap();
    assert_eq!(res.status(), 307);
    let location = res.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(location, a.url("/whip/show"));
    assert!(res.text().unwrap().contains(&id_a));
    // The SDK asks instead (browsers drop Authorization on a cross-origin
    // redirect): the same answer.
    let cast_route = json(&b, "/api/route?live=show&cast=1");
    assert_eq!(cast_route["whip"], a.url("/whip/show").as_str());
    // A client that follows it (reqwest, as FFmpeg and OBS do) casts on A:
    // the live stays there, its new caster replacing the old one.
    let epoch = origin(&b, "show").unwrap().1;
    let mut second = Client::connect(&b, "/whip/show");
    run_all_until(
        &mut [&mut caster, &mut second],
        LIMIT,
        "the redirected caster replaced the first on A",
        |c| c[0].closed && c[1].connected,
    );
    poll(LIMIT, "A claims the live again", || {
        origin(&b, "show").is_some_and(|(n, e)| n == id_a && e > epoch)
    });
    assert!(b.log_text().contains("caster sent to the live's origin"));

    // A viewer whose node died asks with `avoid`: another node, while the
    // dead one's heartbeat has not expired yet; `nodes` lists both.
    let route = json(&b, "/api/route?live=show");
    let first_choice = route["node"].as_str().unwrap().to_string();
    assert_eq!(route["nodes"].as_array().unwrap().len(), 2, "{route}");
    let route = json(&b, &format!("/api/route?live=show&avoid={first_choice}"));
    assert_ne!(route["node"].as_str().unwrap(), first_choice, "{route}");
}

/// The seed's socket.io face on an edge: a consumer on B of a live cast on
/// A gets A's producers through B's relay (the consumer transport opens
/// it; `consume` waits for it instead of answering "not on air").
#[test]
fn a_socket_io_consumer_on_an_edge_gets_the_live_through_a_relay() {
    let redis = Redis::start();
    let a = node(&redis, 100);
    let b = node(&redis, 100);
    let id_a = id_of(&a);
    let mut caster = Client::connect(&a, "/whip/show");
    until_origin(&mut caster, &b, "show", &id_a);
    // Keep the caster's media flowing while the socket talks.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let casting = std::thread::spawn(move || {
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            caster.run(Duration::from_millis(50));
        }
    });

    let mut io = common::socketio::Ws::open(&b, "/media", 4, "live=show").unwrap();
    io.raw("40");
    while !io
        .frame()
        .expect("socket.io connect answer")
        .starts_with("40")
    {}
    io.send("createConsumerTransport", Value::Null);
    let transport = io.expect("re:createConsumerTransport");
    assert!(transport["id"].is_string(), "{transport}");
    let caps = serde_json::json!({
        "codecs": [
            {"kind": "video", "mimeType": "video/VP8", "clockRate": 90000, "preferredPayloadType": 96},
            {"kind": "audio", "mimeType": "audio/opus", "clockRate": 48000, "channels": 2, "preferredPayloadType": 111}
        ],
        "headerExtensions": []
    });
    io.send("consume", serde_json::json!({ "rtpCapabilities": caps }));
    let consumer = io.expect("re:consume");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    casting.join().unwrap();
    assert!(consumer.get("error").is_none(), "{consumer}");
    assert_eq!(consumer["kind"], "video", "{consumer}");
    assert!(b.log_text().contains("relaying from the origin"));
}
