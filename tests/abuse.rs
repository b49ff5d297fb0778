//! The abuse suite: one live on air with viewers on the machine itself
//! while strangers (127.0.0.2 – 127.0.0.21, each its own client address)
//! flood every face at once — WHEP offers that never connect and damaged
//! ones, `/api/ice-servers`, event streams on made-up lives, garbage on the
//! chat, PeerJS, mediasoup and SkyWay sockets, noise on the media and TURN
//! ports, stalled ICE-TCP and HTTP connections. The live's viewers must
//! lose nothing, and once the flood ends the server must let go of what it
//! took: sessions, connections and memory.

mod common;

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{
    Client, Received, Server, http, http_from, live_goes_on, metric, run_all, viewer_offer,
};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// Strangers' addresses: each is a client address of its own to the limits.
const STRANGERS: u8 = 20;
const FLOOD: Duration = Duration::from_secs(12);
const SKYWAY_KEY: &str = "vessel00-0000-4000-8000-000000000000";

fn stranger(i: u64) -> IpAddr {
    IpAddr::from([127, 0, 0, 2 + (i % STRANGERS as u64) as u8])
}

/// One HTTP client per stranger (each keeps its connections, as a real
/// client would; building one per request would load this process more
/// than the server).
fn strangers_http() -> Vec<reqwest::blocking::Client> {
    (0..STRANGERS as u64)
        .map(|i| http_from(&stranger(i).to_string()))
        .collect()
}

/// The kernel's UDP counters: (receive buffer errors, send buffer errors).
fn udp_buffer_errors() -> (u64, u64) {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next().unwrap(), udp.next().unwrap());
    let field = |name: &str| {
        let at = names.split_whitespace().position(|n| n == name).unwrap();
        values.split_whitespace().nth(at).unwrap().parse().unwrap()
    };
    (field("RcvbufErrors"), field("SndbufErrors"))
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// A TCP connection to `to` from `from`.
fn tcp_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::new(from, 0).into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(2))?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    Ok(s)
}

/// What one flood did, by outcome ("201", "429", "ws-open", "sent", ...).
#[derive(Default)]
struct Tally(std::sync::Mutex<std::collections::BTreeMap<String, u64>>);

impl Tally {
    fn add(&self, what: impl Into<String>) {
        *self.0.lock().unwrap().entry(what.into()).or_default() += 1;
    }
    fn get(&self, what: &str) -> u64 {
        self.0.lock().unwrap().get(what).copied().unwrap_or(0)
    }
    fn total(&self) -> u64 {
        self.0.lock().unwrap().values().sum()
    }
}

impl std::fmt::Debug for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{:?}", self.0.lock().unwrap())
    }
}

struct Flood {
    name: &'static str,
    tally: Arc<Tally>,
    thread: JoinHandle<()>,
}

/// Runs `step(i, rng, tally)` over and over until `stop`, at most `per_s`
/// times a second.
fn flood(
    name: &'static str,
    stop: &Arc<AtomicBool>,
    per_s: u32,
    seed: u64,
    mut step: impl FnMut(u64, &mut StdRng, &Tally) + Send + 'static,
) -> Flood {
    let tally = Arc::new(Tally::default());
    let (stop, t) = (stop.clone(), tally.clone());
    let thread = std::thread::spawn(move || {
        let mut rng = StdRng::seed_from_u64(seed);
        let start = Instant::now();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let due = start + Duration::from_secs_f64(i as f64 / per_s as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            step(i, &mut rng, &t);
            i += 1;
        }
    });
    Flood {
        name,
        tally,
        thread,
    }
}

fn junk(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let n = rng.random_range(1..=max);
    (0..n).map(|_| rng.random()).collect()
}

/// An offer with damage of some kind: too many m-lines, cut short, huge,
/// or not SDP.
fn damaged_offer(rng: &mut StdRng) -> Vec<u8> {
    let offer = viewer_offer();
    match rng.random_range(0..4) {
        0 => {
            let video = &offer[offer.find("m=video").unwrap()..];
            let mut many = offer.clone();
            for _ in 0..40 {
                many.push_str(video);
            }
            many.into_bytes()
        }
        1 => offer.as_bytes()[..rng.random_range(1..offer.len())].to_vec(),
        2 => vec![b'a'; 200_000],
        _ => junk(rng, 3000),
    }
}

/// A WebSocket from `from` to `path`, which sends `frames` and goes.
fn websocket_garbage(
    base: &str,
    from: IpAddr,
    path: &str,
    frames: &[tungstenite::Message],
    tally: &Tally,
) {
    let addr: SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let Ok(stream) = tcp_from(from, addr) else {
        tally.add("tcp-refused");
        return;
    };
    let url = format!("ws://{addr}{path}");
    match tungstenite::client(url.as_str(), stream) {
        Ok((mut ws, _)) => {
            tally.add("ws-open");
            for f in frames {
                if ws.send(f.clone()).is_err() {
                    tally.add("ws-closed-by-server");
                    return;
                }
            }
            // Read whatever the server says (errors, a close) for a moment.
            let deadline = Instant::now() + Duration::from_millis(200);
            while Instant::now() < deadline {
                if ws.read().is_err() {
                    break;
                }
            }
            let _ = ws.close(None);
        }
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(res))) => {
            tally.add(res.status().as_u16().to_string())
        }
        Err(_) => tally.add("ws-failed"),
    }
}

fn garbage_frames(rng: &mut StdRng) -> Vec<tungstenite::Message> {
    use tungstenite::Message;
    let mut frames = vec![
        Message::text("{\"type\":\"HEARTBEAT\"".to_string()),
        Message::text("42[\"produce\"]".to_string()),
        Message::text("42[\"createWebRtcTransport\",{\"x\":".to_string()),
        Message::text(format!(
            "{{\"type\":\"OFFER\",\"dst\":\"{}\",\"payload\":{}}}",
            rng.random::<u32>(),
            "[".repeat(200)
        )),
        Message::text("4".repeat(100_000)),
        Message::binary(junk(rng, 5000)),
    ];
    frames.push(Message::text(
        String::from_utf8_lossy(&junk(rng, 500)).into_owned(),
    ));
    frames
}

/// The media UDP port Vessel answered the caster with.
fn media_port(answer: &str) -> u16 {
    answer
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (l.starts_with("a=candidate") && f.get(2)?.eq_ignore_ascii_case("udp"))
                .then(|| f[5].parse().ok())?
        })
        .expect("a UDP candidate in the answer")
}

/// Packets missing from a viewer's video and audio: sequence numbers
/// between the first and the last received that never came (even after
/// NACK), and the count received.
fn missing(received: &[&Received]) -> (u64, u64) {
    let mut seqs: Vec<u64> = received.iter().map(|r| r.seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    let (Some(first), Some(last)) = (seqs.first(), seqs.last()) else {
        return (0, 0);
    };
    let gaps: Vec<(u64, u64)> = seqs
        .windows(2)
        .filter(|w| w[1] > w[0] + 1)
        .map(|w| (w[0] - first, w[1] - w[0] - 1))
        .take(10)
        .collect();
    if !gaps.is_empty() {
        println!("gaps (after packet, missing): {gaps:?} of {}", last - first);
    }
    (last - first + 1 - seqs.len() as u64, seqs.len() as u64)
}

#[test]
fn a_live_on_air_loses_nothing_while_every_face_is_flooded_and_the_server_lets_go_after() {
    let seed: u64 = std::env::var("VESSEL_ABUSE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("VESSEL_ABUSE_SEED={seed}");
    let server = Server::start_with_args(&["--turn-secret", "abuse-secret"]);
    let pid = server.pid();
    let mut caster = Client::connect(&server, "/whip/onair");
    let mut viewers: Vec<Client> = (0..3)
        .map(|_| Client::connect(&server, "/whep/onair"))
        .collect();
    for v in viewers.iter_mut() {
        live_goes_on(&mut caster, v);
    }
    let media: SocketAddr = ([127, 0, 0, 1], media_port(&caster.answer)).into();
    let ice: serde_json::Value = serde_json::from_str(
        &http()
            .get(server.url("/api/ice-servers"))
            .send()
            .unwrap()
            .text()
            .unwrap(),
    )
    .unwrap();
    let stun = ice["iceServers"][0]["urls"][0].as_str().unwrap();
    let turn: SocketAddr = (
        [127, 0, 0, 1],
        stun.rsplit(':').next().unwrap().parse().unwrap(),
    )
        .into();
    let http_addr: SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();

    // Warm up, then the baseline: the live on air, its viewers watching.
    {
        let mut all: Vec<&mut Client> = std::iter::once(&mut caster)
            .chain(viewers.iter_mut())
            .collect();
        run_all(&mut all, Duration::from_secs(3));
    }
    let (rss_before, fds_before) = (rss_kib(pid), fds(pid));
    let sessions_before = metric(&server, "vessel_sessions").unwrap();
    let udp_errors_before = udp_buffer_errors();
    let counted_from: Vec<usize> = viewers.iter().map(|v| v.received.len()).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let mut floods = Vec::new();
    // WHEP offers that never connect, from every stranger, and damaged ones.
    let base = server.base.clone();
    let clients = strangers_http();
    floods.push(flood("whep offers", &stop, 60, seed, move |i, rng, t| {
        let body = if i % 3 == 0 {
            damaged_offer(rng)
        } else {
            viewer_offer().into_bytes()
        };
        match clients[(i % STRANGERS as u64) as usize]
            .post(format!("{base}/whep/onair"))
            .header("content-type", "application/sdp")
            .body(body)
            .send()
        {
            Ok(r) => t.add(r.status().as_u16().to_string()),
            Err(_) => t.add("error"),
        }
    }));
    let base = server.base.clone();
    let clients = strangers_http();
    floods.push(flood(
        "ice-servers",
        &stop,
        200,
        seed + 1,
        move |i, _, t| match clients[(i % STRANGERS as u64) as usize]
            .get(format!("{base}/api/ice-servers"))
            .send()
        {
            Ok(r) => t.add(r.status().as_u16().to_string()),
            Err(_) => t.add("error"),
        },
    ));
    // Event streams on made-up lives, each held for a moment.
    let base = server.base.clone();
    let clients = strangers_http();
    floods.push(flood(
        "event streams",
        &stop,
        60,
        seed + 2,
        move |i, rng, t| {
            let live: u32 = rng.random();
            match clients[(i % STRANGERS as u64) as usize]
                .get(format!("{base}/api/lives/x{live}/events"))
                .send()
            {
                Ok(r) => {
                    t.add(r.status().as_u16().to_string());
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(_) => t.add("error"),
            }
        },
    ));
    // Garbage on every WebSocket face.
    let faces = [
        "/api/lives/onair/chat".to_string(),
        "/peer/peerjs?key=peerjs&id=ID&token=tok".to_string(),
        "/media/?EIO=4&transport=websocket".to_string(),
        format!("/socket.io/?EIO=3&transport=websocket&apiKey={SKYWAY_KEY}&token=tok"),
    ];
    for (n, face) in faces.into_iter().enumerate() {
        let server_base = server.base.clone();
        floods.push(flood(
            "websockets",
            &stop,
            15,
            seed + 10 + n as u64,
            move |i, rng, t| {
                let path = face.replace("ID", &rng.random::<u32>().to_string());
                let frames = garbage_frames(rng);
                websocket_garbage(&server_base, stranger(i), &path, &frames, t);
            },
        ));
    }
    // Noise on the media and TURN ports: random bytes, and STUN-shaped.
    for (n, to) in [media, turn].into_iter().enumerate() {
        let sockets: Vec<UdpSocket> = (0..STRANGERS as u64)
            .map(|i| UdpSocket::bind(SocketAddr::new(stranger(i), 0)).unwrap())
            .collect();
        floods.push(flood(
            "udp noise",
            &stop,
            2000,
            seed + 20 + n as u64,
            move |i, rng, t| {
                let mut d = junk(rng, 1200);
                if i % 2 == 0 && d.len() >= 20 {
                    d[0] = 0;
                    d[1] = 1;
                    d[4..8].copy_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
                }
                if sockets[(i % STRANGERS as u64) as usize]
                    .send_to(&d, to)
                    .is_ok()
                {
                    t.add("sent");
                }
            },
        ));
    }
    // Stalled stream connections: half a frame on ICE-TCP and TURN TCP,
    // half a request on HTTP, each held open.
    for (n, to) in [media, turn, http_addr].into_iter().enumerate() {
        let mut held = Vec::new();
        floods.push(flood(
            "stalled connections",
            &stop,
            40,
            seed + 30 + n as u64,
            move |i, rng, t| match tcp_from(stranger(i), to) {
                Ok(mut s) => {
                    let start: &[u8] = match n {
                        0 => &[0x05, 0xdc, 0, 1],
                        1 => &[0, 1, 0, 0x50, 0x21, 0x12],
                        _ => b"GET / HTTP/1.1\r\nHost: x\r\n",
                    };
                    let _ = s.write_all(start);
                    if rng.random_bool(0.3) {
                        let _ = s.write_all(&junk(rng, 100));
                    }
                    t.add("open");
                    held.push(s);
                    if held.len() > 300 {
                        held.remove(0);
                    }
                }
                Err(_) => t.add("refused"),
            },
        ));
    }

    // The live goes on through the flood.
    let end = Instant::now() + FLOOD;
    while Instant::now() < end {
        let mut all: Vec<&mut Client> = std::iter::once(&mut caster)
            .chain(viewers.iter_mut())
            .collect();
        run_all(&mut all, Duration::from_millis(200));
    }
    let rss_peak = rss_kib(pid);
    stop.store(true, Ordering::Relaxed);
    let mut report = Vec::new();
    for f in floods {
        f.thread.join().unwrap();
        report.push(format!("{}: {:?}", f.name, f.tally));
        assert!(f.tally.total() > 0, "{} did nothing", f.name);
        // What can be refused was, and some got through first: the
        // flood met the server, not a closed door.
        let (through, refused) = match f.name {
            "whep offers" => (f.tally.get("201"), f.tally.get("429")),
            "ice-servers" | "event streams" => (f.tally.get("200"), f.tally.get("429")),
            "websockets" => (f.tally.get("ws-open"), f.tally.get("429")),
            _ => continue,
        };
        assert!(through > 0 && refused > 0, "{}: {:?}", f.name, f.tally);
    }
    // ... and for a few seconds after, to let NACKs fill any gap.
    {
        let mut all: Vec<&mut Client> = std::iter::once(&mut caster)
            .chain(viewers.iter_mut())
            .collect();
        run_all(&mut all, Duration::from_secs(2));
    }
    println!("{}", report.join("\n"));
    let udp_errors = udp_buffer_errors();
    println!(
        "UDP buffer errors during the flood (the whole machine): receive {}, send {}",
        udp_errors.0 - udp_errors_before.0,
        udp_errors.1 - udp_errors_before.1
    );

    for (v, from) in viewers.iter().zip(&counted_from) {
        let rest: Vec<&Received> = v.received[*from..].iter().collect();
        let video: Vec<&Received> = rest
            .iter()
            .copied()
            .filter(|r| r.kind == str0m::media::MediaKind::Video)
            .collect();
        let audio: Vec<&Received> = rest
            .iter()
            .copied()
            .filter(|r| r.kind == str0m::media::MediaKind::Audio)
            .collect();
        let (video_lost, video_got) = missing(&video);
        let (audio_lost, audio_got) = missing(&audio);
        println!(
            "viewer: video {video_got} received, {video_lost} lost; audio {audio_got} received, {audio_lost} lost"
        );
        // ~14 s of the test caster: ~50 video and ~25 audio packets a second.
        assert!(video_got > 500, "video kept flowing: {video_got} packets");
        assert!(audio_got > 250, "audio kept flowing: {audio_got} packets");
        assert_eq!(video_lost, 0, "no video lost");
        assert_eq!(audio_lost, 0, "no audio lost");
    }
    assert!(
        server.log_text().matches("panicked").count() == 0,
        "no panic"
    );
    assert_eq!(
        metric(&server, "vessel_panics_total{engine=\"sfu\"}").unwrap_or(0.0),
        0.0
    );

    // The server let go: the sessions that never connected expired (10 s),
    // connections closed, memory back near where it was.
    let deadline = Instant::now() + Duration::from_secs(25);
    let (mut sessions, mut rss, mut open) = (f64::MAX, u64::MAX, usize::MAX);
    while Instant::now() < deadline {
        {
            let mut all: Vec<&mut Client> = std::iter::once(&mut caster)
                .chain(viewers.iter_mut())
                .collect();
            run_all(&mut all, Duration::from_millis(500));
        }
        sessions = metric(&server, "vessel_sessions").unwrap();
        rss = rss_kib(pid);
        open = fds(pid);
        if sessions == sessions_before && rss < rss_before + 16 * 1024 && open <= fds_before + 8 {
            break;
        }
    }
    println!(
        "RSS {rss_before} KiB before, {rss_peak} KiB at the end of the flood, {rss} KiB after; fds {fds_before} before, {open} after; sessions {sessions_before} before, {sessions} after"
    );
    assert_eq!(sessions, sessions_before, "every stranger's session ended");
    assert!(
        open <= fds_before + 8,
        "connections closed: {open} fds, {fds_before} before"
    );
    assert!(
        rss < rss_before + 16 * 1024,
        "RSS back near its baseline: {rss} KiB, {rss_before} KiB before"
    );
    for v in viewers.iter_mut() {
        live_goes_on(&mut caster, v);
    }
}
