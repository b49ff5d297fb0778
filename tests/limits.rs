//! Admission limits on the real binary: over a limit a client gets 429
//! (its own doing) or 503 (the server is full) with Retry-After and a
//! reason naming the flag; the machine itself (127.0.0.1) is exempt from
//! the per-address limits, other loopback addresses stand in for clients
//! elsewhere; a live on air goes on throughout.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Client, Server, http, http_from, live_goes_on, viewer_offer};

fn offer_from(server: &Server, ip: &str, live: &str) -> reqwest::blocking::Response {
    http_from(ip)
        .post(server.url(&format!("/whep/{live}")))
        .header("content-type", "application/sdp")
        .body(viewer_offer())
        .send()
        .unwrap()
}

/// Status, Retry-After and body of a response.
fn refusal(res: reqwest::blocking::Response) -> (u16, Option<u64>, String) {
    let status = res.status().as_u16();
    let retry = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (status, retry, res.text().unwrap())
}

fn refused_total(server: &Server, limit: &str) -> u64 {
    let series = format!("vessel_refused_total{{limit=\"{limit}\"}}");
    common::metric(server, &series).unwrap_or_else(|| panic!("no {series} in /metrics")) as u64
}

#[test]
fn one_address_is_held_to_its_sessions_and_its_rate_while_the_live_goes_on() {
    let server = Server::start_with_args(&[
        "--max-sessions-per-ip",
        "2",
        "--joins-per-ip",
        "1",
        "--join-burst",
        "4",
    ]);
    let mut caster = Client::connect(&server, "/whip/onair");
    let mut viewer = Client::connect(&server, "/whep/onair");
    live_goes_on(&mut caster, &mut viewer);

    // 127.0.0.2 may hold two sessions; the third is its own doing: 429.
    let a = offer_from(&server, "127.0.0.2", "onair");
    assert_eq!(a.status(), 201);
    let a_location = a.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(offer_from(&server, "127.0.0.2", "onair").status(), 201);
    let (status, retry, body) = refusal(offer_from(&server, "127.0.0.2", "onair"));
    assert_eq!(status, 429, "{body}");
    assert!(retry.is_some_and(|s| s >= 1), "Retry-After");
    assert!(body.contains("--max-sessions-per-ip"), "{body}");
    // Another address is not affected, nor is the machine itself.
    assert_eq!(offer_from(&server, "127.0.0.3", "onair").status(), 201);
    let mut local = Client::connect(&server, "/whep/onair");
    // Ending a session frees its place.
    let res = http_from("127.0.0.2")
        .delete(server.url(&a_location))
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(offer_from(&server, "127.0.0.2", "onair").status(), 201);

    // The rate: 127.0.0.4 gets a burst of 4 new things, then 1 per second.
    let from4 = http_from("127.0.0.4");
    for i in 0..4 {
        let res = from4.get(server.url("/api/ice-servers")).send().unwrap();
        assert_eq!(res.status(), 200, "request {i} of the burst");
    }
    let (status, retry, body) = refusal(from4.get(server.url("/api/ice-servers")).send().unwrap());
    assert_eq!(status, 429, "{body}");
    assert!(retry.is_some_and(|s| s >= 1));
    assert!(body.contains("--joins-per-ip"), "{body}");
    // Pages and state are not rate-limited; the exempt machine never is.
    assert_eq!(
        from4
            .get(server.url("/api/lives/onair"))
            .send()
            .unwrap()
            .status(),
        200
    );
    for _ in 0..20 {
        assert_eq!(
            http()
                .get(server.url("/api/ice-servers"))
                .send()
                .unwrap()
                .status(),
            200
        );
    }
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        from4
            .get(server.url("/api/ice-servers"))
            .send()
            .unwrap()
            .status(),
        200
    );

    assert_eq!(refused_total(&server, "sessions_per_ip"), 1);
    assert_eq!(refused_total(&server, "join_rate"), 1);
    live_goes_on(&mut caster, &mut viewer);
    live_goes_on(&mut caster, &mut local);
    let log = server.log_text();
    assert!(
        log.contains("refusing clients over a limit"),
        "one log line says so"
    );
}

#[test]
fn a_full_server_and_a_full_live_say_503() {
    let server = Server::start_with_args(&["--max-sessions", "3", "--max-viewers", "1"]);
    let mut caster = Client::connect(&server, "/whip/onair");
    let mut viewer = Client::connect(&server, "/whep/onair");
    live_goes_on(&mut caster, &mut viewer);
    // The live has its one viewer.
    let (status, retry, body) = refusal(offer_from(&server, "127.0.0.1", "onair"));
    assert_eq!((status, retry), (503, Some(10)), "{body}");
    assert!(body.contains("--max-viewers"), "{body}");
    // Another live's viewer fits; then the server is full.
    assert_eq!(offer_from(&server, "127.0.0.1", "other").status(), 201);
    let (status, _, body) = refusal(offer_from(&server, "127.0.0.1", "other"));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("--max-sessions"), "{body}");
    assert_eq!(refused_total(&server, "viewers_per_live"), 1);
    assert_eq!(refused_total(&server, "sessions"), 1);
    // The sessions gauge counts what is held.
    let metrics = http()
        .get(server.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(metrics.contains("vessel_sessions 3"), "{metrics}");
    live_goes_on(&mut caster, &mut viewer);
}

/// A TCP connection to `server` from `ip`.
fn connect_from(server: &Server, ip: &str) -> TcpStream {
    let addr: SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{ip}:0").parse().unwrap();
    socket.bind(&local.into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

#[test]
fn connections_are_capped_per_address_and_silent_ones_are_closed() {
    let server = Server::start_with_args(&["--max-connections-per-ip", "3", "--idle-timeout", "2"]);
    let held: Vec<TcpStream> = (0..3).map(|_| connect_from(&server, "127.0.0.5")).collect();
    // The fourth gets a reasoned 429 and is closed.
    let mut fourth = connect_from(&server, "127.0.0.5");
    let mut answer = String::new();
    fourth.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("Retry-After:"), "{answer}");
    assert!(answer.contains("--max-connections-per-ip"), "{answer}");
    // Everyone else is served.
    assert_eq!(
        http().get(server.url("/healthz")).send().unwrap().status(),
        200
    );
    assert_eq!(
        http_from("127.0.0.6")
            .get(server.url("/healthz"))
            .send()
            .unwrap()
            .status(),
        200
    );
    // The three say nothing: the idle timeout closes them.
    let start = Instant::now();
    for mut c in held {
        let mut buf = [0u8; 16];
        let n = c.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
    }
    let took = start.elapsed();
    assert!(took < Duration::from_secs(6), "closed after {took:?}");
    // And their places are free again.
    let mut again = connect_from(&server, "127.0.0.5");
    again
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    again.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(refused_total(&server, "connections_per_ip"), 1);
}

#[test]
fn x_forwarded_for_counts_only_from_a_trusted_proxy() {
    let server = Server::start_with_args(&[
        "--joins-per-ip",
        "1",
        "--join-burst",
        "1",
        "--trusted-proxy",
        "127.0.0.7",
    ]);
    let ice = |from: &str, forwarded: &str| {
        http_from(from)
            .get(server.url("/api/ice-servers"))
            .header("x-forwarded-for", forwarded)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    // Behind the proxy, each forwarded client has its own rate.
    assert_eq!(ice("127.0.0.7", "198.51.100.1"), 200);
    assert_eq!(ice("127.0.0.7", "198.51.100.1"), 429);
    assert_eq!(ice("127.0.0.7", "198.51.100.2"), 200);
    // A client that is not a trusted proxy cannot dodge its rate by
    // making up the header.
    assert_eq!(ice("127.0.0.8", "203.0.113.1"), 200);
    assert_eq!(ice("127.0.0.8", "203.0.113.2"), 429);
}

#[test]
fn an_address_guessing_the_admin_token_or_a_key_is_locked_out_right_or_wrong() {
    let server = Server::start_with_args(&["--admin-token", "admin-secret-token"]);
    let admin = |ip: &str, token: &str| {
        http_from(ip)
            .post(server.url("/api/lives"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(r#"{"live": "guarded"}"#)
            .send()
            .unwrap()
    };
    // Ten wrong tokens are mistakes: 401 each.
    for i in 0..10 {
        assert_eq!(admin("127.0.0.2", &format!("guess-{i}")).status(), 401);
    }
    // The eleventh is a guesser: 429 from now on, and the right token too.
    let (status, retry, body) = refusal(admin("127.0.0.2", "guess-10"));
    assert_eq!(
        status, 401,
        "the eleventh still checked, and it locks: {body}"
    );
    let (status, retry_right, body) = refusal(admin("127.0.0.2", "admin-secret-token"));
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("wrong keys or tokens"), "{body}");
    assert!(
        retry_right.is_some_and(|s| (50..=60).contains(&s)),
        "{retry:?} {retry_right:?}"
    );
    // A stream key is a credential too: the same address is refused at WHIP.
    let res = http_from("127.0.0.2")
        .post(server.url("/whip/guarded"))
        .header("authorization", "Bearer some-key")
        .header("content-type", "application/sdp")
        .body(viewer_offer())
        .send()
        .unwrap();
    assert_eq!(res.status(), 429);
    // Another address, and the machine itself, are not held back.
    assert_eq!(admin("127.0.0.3", "admin-secret-token").status(), 201);
    for i in 0..12 {
        assert_eq!(admin("127.0.0.1", &format!("local-{i}")).status(), 401);
    }
    assert_eq!(admin("127.0.0.1", "admin-secret-token").status(), 201);
    assert!(refused_total(&server, "credential_guesses") >= 2);
}
