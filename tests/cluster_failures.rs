//! Failure drills of a cluster of real `vessel` processes and a real
//! `redis-server`: the origin killed with SIGKILL while an edge relays it,
//! packets lost on the relay hop only, and the cluster's viewer totals as
//! viewers come, leave and die with their node. Needs `redis-server` on
//! the PATH (scripts/test installs Debian's).

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::cluster::*;
use common::{Client, Server, http, run_all, run_all_until};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(20);

/// Runs `clients` until `done` holds (checked every 100 ms), or panics
/// after `limit`; returns how long it took.
fn poll_running(
    clients: &mut [&mut Client],
    limit: Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for: {what}");
        run_all(clients, Duration::from_millis(100));
    }
    start.elapsed()
}

/// `live` in `server`'s `/api/lives`, if listed.
fn listed(server: &Server, live: &str) -> Option<Value> {
    let (status, body) = get(server, "/api/lives");
    if status != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    v["lives"]
        .as_array()?
        .iter()
        .find(|l| l["live"] == live)
        .cloned()
}

fn listed_viewers(server: &Server, live: &str) -> Option<u64> {
    listed(server, live).and_then(|l| l["viewers"].as_u64())
}

#[test]
fn every_node_shows_the_clusters_people_without_relays() {
    let redis = Redis::start();
    let a = node(&redis, 100);
    let b = node(&redis, 100);
    let c = node(&redis, 100);
    let id_a = id_of(&a);
    let mut caster = Client::connect(&a, "/whip/show");
    until_origin(&mut caster, &b, "show", &id_a);
    until_origin(&mut caster, &c, "show", &id_a);
    // Cast on A only: every node lists it on air, nobody watching yet.
    poll_running(&mut [&mut caster], LIMIT, "show listed on B and C", || {
        [&b, &c]
            .iter()
            .all(|s| listed(s, "show").is_some_and(|l| l["onAir"] == true))
    });
    let on_b = listed(&b, "show").unwrap();
    assert_eq!(on_b["viewers"], 0, "{on_b}");
    assert_eq!(on_b["viewersHere"], 0, "{on_b}");
    assert_eq!(on_b["viewersScope"], "cluster", "{on_b}");

    // Two viewers on B, one on C: B and C each relay from A.
    let mut v1 = Client::connect(&b, "/whep/show");
    let mut v2 = Client::connect(&b, "/whep/show");
    let mut v3 = Client::connect(&c, "/whep/show");
    run_all_until(
        &mut [&mut caster, &mut v1, &mut v2, &mut v3],
        LIMIT,
        "every viewer plays",
        |c| c[1..].iter().all(|v| v.video().len() > 30),
    );
    let took = poll_running(
        &mut [&mut caster, &mut v1, &mut v2, &mut v3],
        LIMIT,
        "3 viewers on every node",
        || {
            [&a, &b, &c]
                .iter()
                .all(|s| listed_viewers(s, "show") == Some(3) && total_viewers(s, "show") == 3)
        },
    );
    println!("every node showed the 3 viewers {took:?} after they played");
    let on_a = common::live_state(&a, "show");
    assert_eq!(on_a["viewersHere"], 2, "A serves two relays: {on_a}");
    assert_eq!(on_a["relaysHere"], 2, "{on_a}");
    assert_eq!(common::live_state(&b, "show")["viewersHere"], 2);
    assert_eq!(common::live_state(&c, "show")["viewersHere"], 1);

    // The pages' events tell the same total.
    let mut events = http().get(a.url("/api/lives/show/events")).send().unwrap();
    let mut buf = [0u8; 2048];
    let n = events.read(&mut buf).unwrap();
    let first = String::from_utf8_lossy(&buf[..n]).to_string();
    let data = first
        .lines()
        .find_map(|l| l.strip_prefix("data:"))
        .unwrap_or_else(|| panic!("an event: {first}"));
    let state: Value = serde_json::from_str(data.trim()).unwrap();
    assert_eq!(state["viewers"], 3, "{state}");
    drop(events);

    // The cluster's metrics, on any node (no admin token set: loopback).
    let (status, text) = get(&b, "/api/cluster/metrics");
    assert_eq!(status, 200, "{text}");
    for line in [
        "vessel_cluster_nodes 3".to_string(),
        "vessel_cluster_viewers 3".to_string(),
        "vessel_cluster_lives 1".to_string(),
        format!("vessel_cluster_live_viewers{{live=\"show\",node=\"{id_a}\"}} 0"),
        format!(
            "vessel_cluster_node_viewers{{node=\"{id_a}\",url=\"{}\"}} 2",
            a.base
        ),
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
    }
    assert!(text.contains(&format!(
        "vessel_cluster_origin_epoch{{live=\"show\",node=\"{id_a}\"}}"
    )));

    // C's viewer leaves: 2.
    let _ = http().delete(c.url(&v3.location)).send().unwrap();
    let took = poll_running(
        &mut [&mut caster, &mut v1, &mut v2],
        LIMIT,
        "2 viewers on every node",
        || {
            [&a, &b, &c]
                .iter()
                .all(|s| listed_viewers(s, "show") == Some(2))
        },
    );
    println!("every node showed C's viewer gone {took:?} after it left");

    // A viewer on C again, then C dies with it: A and B drop it.
    let mut v4 = Client::connect(&c, "/whep/show");
    poll_running(
        &mut [&mut caster, &mut v1, &mut v2, &mut v4],
        LIMIT,
        "3 viewers again",
        || {
            [&a, &b, &c]
                .iter()
                .all(|s| listed_viewers(s, "show") == Some(3))
        },
    );
    let mut c = c;
    c.kill9();
    let took = poll_running(
        &mut [&mut caster, &mut v1, &mut v2],
        LIMIT,
        "C's viewer gone from the totals",
        || {
            [&a, &b]
                .iter()
                .all(|s| listed_viewers(s, "show") == Some(2))
        },
    );
    println!("A and B dropped the killed node's viewer after {took:?}");
    assert!(
        took < Duration::from_secs(5),
        "a dead node's viewers go with its record (3 s) and the next read (1 s): {took:?}"
    );
}

#[test]
fn without_redis_a_node_shows_its_own_people_and_says_so() {
    let mut redis = Redis::start();
    let port = redis.port;
    let a = node(&redis, 100);
    let b = node(&redis, 100);
    let id_a = id_of(&a);
    let mut caster = Client::connect(&a, "/whip/show");
    until_origin(&mut caster, &b, "show", &id_a);
    let mut here = Client::connect(&a, "/whep/show");
    let mut there = Client::connect(&b, "/whep/show");
    let scoped = |s: &Server, viewers: u64, scope: &str| {
        let state = common::live_state(s, "show");
        state["viewers"] == viewers && state["viewersScope"] == scope
    };
    poll_running(
        &mut [&mut caster, &mut here, &mut there],
        LIMIT,
        "2 viewers in the cluster, on A",
        || scoped(&a, 2, "cluster"),
    );
    redis.kill();
    let took = poll_running(
        &mut [&mut caster, &mut here, &mut there],
        LIMIT,
        "A shows its own viewer only, and says so",
        || scoped(&a, 1, "node"),
    );
    println!("without Redis, A fell back to its own viewers after {took:?}");
    assert_eq!(
        listed(&a, "show").map(|l| l["viewers"].clone()),
        Some(1.into()),
        "its listing too"
    );
    let _redis = Redis::start_on(port);
    let took = poll_running(
        &mut [&mut caster, &mut here, &mut there],
        LIMIT,
        "the cluster's totals again",
        || scoped(&a, 2, "cluster") && scoped(&b, 2, "cluster"),
    );
    println!("with Redis back, the totals were back after {took:?}");
}

#[test]
fn a_killed_origins_edge_viewer_gets_the_new_origin_in_the_same_session() {
    let redis = Redis::start();
    let a = node(&redis, 100);
    let b = node(&redis, 100);
    let c = node(&redis, 100);
    let (id_a, id_c) = (id_of(&a), id_of(&c));
    let mut first = Client::connect(&a, "/whip/show");
    let old_epoch = until_origin(&mut first, &b, "show", &id_a);
    let mut viewer = Client::connect(&b, "/whep/show");
    run_all_until(
        &mut [&mut first, &mut viewer],
        LIMIT,
        "the viewer on B plays A's caster",
        |c| c[1].video().len() > 30,
    );
    let mut a = a;
    a.kill9();
    let killed = Instant::now();
    drop(first);
    // Nobody releases A's claim: it lapses.
    let lapsed = poll_running(&mut [&mut viewer], LIMIT, "A's claim lapses", || {
        origin(&b, "show").is_none()
    });
    println!("the dead origin's claim lapsed {lapsed:?} after the kill");
    assert!(
        lapsed <= Duration::from_millis(vessel::cluster::CLAIM_TTL_MS + 1_500),
        "within the claim's TTL (and a read): {lapsed:?}"
    );
    // The caster comes back on C (as OBS or the SDK reconnecting would).
    let mut second = Client::connect(&c, "/whip/show");
    second.fill = 0x77;
    let cast = Instant::now();
    let mut first_new: Option<Instant> = None;
    run_all_until(
        &mut [&mut second, &mut viewer],
        LIMIT,
        "the viewer on B plays C's caster, in the same session",
        |c| {
            let new = c[1]
                .video()
                .iter()
                .filter(|p| p.fill() == Some(0x77))
                .count();
            if new > 0 && first_new.is_none() {
                first_new = Some(Instant::now());
            }
            new > 60
        },
    );
    let first_new = first_new.unwrap();
    println!(
        "the edge's viewer got the new origin's media {:?} after its caster came, {:?} after the kill",
        first_new - cast,
        first_new - killed
    );
    assert!(!viewer.closed, "the viewer never reconnected");
    let (node, epoch) = origin(&b, "show").unwrap();
    assert_eq!(node, id_c);
    assert!(epoch > old_epoch, "{epoch} > {old_epoch}");
    let new: Vec<_> = viewer
        .video()
        .into_iter()
        .filter(|p| p.fill() == Some(0x77))
        .collect();
    common::assert_continuous(&new[5..]);
    assert!(
        first_new - cast < Duration::from_secs(5),
        "the edge follows the new origin at once: {:?}",
        first_new - cast
    );
}

/// A UDP proxy on loopback that loses a share of the RTP media it carries
/// from its upstream to clients (not STUN, DTLS or RTCP): put in front of
/// an origin's media port, it makes the origin → edge relay hop lossy (the
/// caster only gets RTCP back that way). It loses originals only, on the
/// busiest stream: a retransmission (an RTX stream, or a sequence number
/// sent again) always gets through.
struct LossyProxy {
    stop: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
}

/// Which media packets the proxy loses, by SSRC and sequence number.
#[derive(Default)]
struct Losses {
    seen: HashMap<u32, u64>,
    dropped: std::collections::HashSet<(u32, u16)>,
}

impl Losses {
    /// Whether to lose this datagram.
    fn lose(&mut self, p: &[u8], loss_percent: u32) -> bool {
        let rtp = p.len() > 150 && p[0] >> 6 == 2 && !(200..=207).contains(&p[1]);
        if !rtp {
            return false;
        }
        let ssrc = u32::from_be_bytes([p[8], p[9], p[10], p[11]]);
        let seq = u16::from_be_bytes([p[2], p[3]]);
        let n = *self.seen.entry(ssrc).and_modify(|n| *n += 1).or_insert(1);
        let busiest = self.seen.values().all(|m| *m <= n);
        busiest
            && n > 100
            && !self.dropped.contains(&(ssrc, seq))
            && rand::random::<u32>() % 100 < loss_percent
            && self.dropped.insert((ssrc, seq))
    }
}

impl LossyProxy {
    fn start(listen: SocketAddr, upstream: SocketAddr, loss_percent: u32) -> Self {
        let socket = UdpSocket::bind(listen).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let (stop2, dropped2) = (stop.clone(), dropped.clone());
        std::thread::spawn(move || {
            let mut flows: HashMap<SocketAddr, UdpSocket> = HashMap::new();
            let mut buf = [0u8; 2048];
            while !stop2.load(Ordering::Relaxed) {
                let Ok((n, client)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let up = flows.entry(client).or_insert_with(|| {
                    let up = UdpSocket::bind("127.0.0.1:0").unwrap();
                    up.set_read_timeout(Some(Duration::from_millis(50)))
                        .unwrap();
                    let (back, down) = (socket.try_clone().unwrap(), up.try_clone().unwrap());
                    let (stop, dropped) = (stop2.clone(), dropped2.clone());
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 2048];
                        let mut losses = Losses::default();
                        while !stop.load(Ordering::Relaxed) {
                            let Ok(n) = down.recv(&mut buf) else {
                                continue;
                            };
                            if losses.lose(&buf[..n], loss_percent) {
                                dropped.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            let _ = back.send_to(&buf[..n], client);
                        }
                    });
                    up
                });
                let _ = up.send_to(&buf[..n], upstream);
            }
        });
        LossyProxy { stop, dropped }
    }
}

impl Drop for LossyProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of a `/metrics` series (name and labels as printed).
fn series(server: &Server, name: &str) -> f64 {
    common::metric(server, name).unwrap_or_else(|| panic!("{name} in /metrics"))
}

#[test]
fn packets_lost_on_the_relay_hop_are_repaired() {
    let redis = Redis::start();
    // A announces 127.0.0.2:P, where the lossy proxy listens, and serves
    // media on 127.0.0.1:P: whoever reaches A's media goes through it.
    // The media port is picked here (the proxy must know it), and the HTTP
    // port too (A's node URL must name 127.0.0.1, not its --public-ip):
    // either may be taken before A binds it, and then others are picked.
    let (a, proxy) = (0..3)
        .find_map(|_| {
            let media = free_udp_port();
            let proxy = LossyProxy::start(
                format!("127.0.0.2:{media}").parse().unwrap(),
                format!("127.0.0.1:{media}").parse().unwrap(),
                10,
            );
            let media_addr = format!("127.0.0.1:{media}");
            let web = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let http_addr = format!("127.0.0.1:{web}");
            let node_url = format!("http://{http_addr}");
            let a = std::panic::catch_unwind(|| {
                node_with(
                    &redis,
                    100,
                    &[
                        "--http",
                        &http_addr,
                        "--node-url",
                        &node_url,
                        "--media",
                        &media_addr,
                        "--public-ip",
                        "127.0.0.2",
                    ],
                )
            });
            a.ok().map(|a| (a, proxy))
        })
        .expect("node A starts on a media port of its own");
    let b = node(&redis, 100);
    let id_a = id_of(&a);
    let mut caster = Client::connect(&a, "/whip/show");
    assert!(caster.answer.contains("127.0.0.2"), "A announces the proxy");
    until_origin(&mut caster, &b, "show", &id_a);
    let mut viewer = Client::connect(&b, "/whep/show");
    run_all_until(
        &mut [&mut caster, &mut viewer],
        LIMIT,
        "the viewer on B plays through the lossy hop",
        |c| c[1].video().len() > 60,
    );
    let nacks_before = series(&a, "vessel_nacks_total{direction=\"out\"}");
    let dropped_before = proxy.dropped.load(Ordering::Relaxed);
    // 8 s of the live through the lossy hop; then the caster stops and
    // the repairs still on their way arrive.
    let sent0 = caster.video_seq();
    run_all(&mut [&mut caster, &mut viewer], Duration::from_secs(8));
    let sent = caster.video_seq() - sent0;
    viewer.run(Duration::from_millis(1_000));
    let dropped = proxy.dropped.load(Ordering::Relaxed) - dropped_before;
    let nacks = series(&a, "vessel_nacks_total{direction=\"out\"}") - nacks_before;
    println!(
        "relay hop: {dropped} media packets lost of the {sent} the caster sent; A got {nacks} NACKs"
    );
    assert!(
        dropped * 100 >= sent * 5,
        "the hop lost packets ({dropped} of {sent})"
    );
    assert!(nacks >= 1.0, "the edge asked A to resend ({nacks} NACKs)");
    // Repaired: nothing is missing from the viewer's stream (gaps in its
    // sequence numbers; unrepaired, it would be all the hop lost), and
    // frames (2 packets, 3000 ticks apart) arrive whole. The proxy loses
    // neither NACKs nor retransmissions, so every loss can be repaired.
    // With str0m's default resend cap (15 % of a second's bytes) on the
    // relay's tracks, one run in four missed a few: 10 % random loss at
    // ~50 packets a second crosses 15 % in some second, and str0m then
    // drops every queued resend (see `sfu::RELAY_RTX_CAP`).
    let video = viewer.video();
    let mut seqs: Vec<u64> = video[10..].iter().map(|p| p.seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    let missing: u64 = seqs.windows(2).map(|w| w[1] - w[0] - 1).sum();
    let base = video[10].ts;
    let mut frames: std::collections::BTreeMap<u32, usize> = Default::default();
    for p in &video[10..] {
        *frames.entry(p.ts.wrapping_sub(base)).or_default() += 1;
    }
    // The first frame may have lost a packet to `[10..]`, and the caster
    // may have stopped between the last frame's two packets.
    let mut frames: Vec<(u32, usize)> = frames.into_iter().skip(1).collect();
    frames.pop();
    let span = frames.last().unwrap().0 - frames[0].0;
    let expected = span as usize / 3000 + 1;
    let whole = frames.iter().filter(|(_, n)| *n == 2).count();
    println!(
        "the viewer on B misses {missing} packets of the {dropped} lost; {whole} of {expected} frames whole"
    );
    assert!(expected > 200, "{expected} frames");
    assert!(
        missing == 0,
        "every loss repaired: {missing} of {dropped} still missing"
    );
    assert!(
        whole * 100 >= expected * 98,
        "frames keep arriving whole: {whole} of {expected}"
    );
}
