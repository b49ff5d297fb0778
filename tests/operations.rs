//! Running Vessel: /metrics, /healthz, draining on SIGTERM, HTTPS, and
//! where settings come from (flags > environment > config file).

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, Server, http, run_all_until};

/// `name{labels} value` lines of the Prometheus text format.
fn scrape(server: &Server) -> HashMap<String, f64> {
    let res = http().get(server.url("/metrics")).send().unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("openmetrics-text")
    );
    res.text()
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("name value");
            (name.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

#[test]
fn metrics_reflect_a_live_with_viewers() {
    let server = Server::start();
    let mut caster = Client::connect(&server, "/whip/metered");
    let mut a = Client::connect(&server, "/whep/metered");
    run_all_until(
        &mut [&mut caster, &mut a],
        Duration::from_secs(15),
        "video",
        |c| c[1].video().len() >= 10,
    );
    // A viewer joining mid-stream needs a keyframe: one request to the caster.
    let mut b = Client::connect(&server, "/whep/metered");
    let mut clients = [&mut caster, &mut a, &mut b];
    run_all_until(
        &mut clients,
        Duration::from_secs(15),
        "both viewers get video",
        |c| c[1].video().len() >= 30 && c[2].video().len() >= 30,
    );
    // Three video packets lost on the way in: Vessel asks the caster for
    // them, the viewers (who see the same gap) ask Vessel. (Loss counts
    // come from str0m's loss fractions, which three packets in thousands
    // may round to zero: not waited for.)
    clients[0].skip_seqs = 3;
    // Counters reach /metrics once a loop turn, stats every 2 s: step the
    // clients until the scrape shows the live.
    let mut last = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let ready = |m: &HashMap<String, f64>| {
        let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
        get("vessel_viewers") == 2.0
            && get("vessel_casters") == 1.0
            && get("vessel_lives") == 1.0
            && get("vessel_media_packets_total{direction=\"in\"}") > 100.0
            && get("vessel_media_packets_total{direction=\"out\"}") > 100.0
            && get("vessel_media_bytes_total{direction=\"out\"}") > 10_000.0
            && get("vessel_keyframe_requests_total{direction=\"in\"}") >= 1.0
            && get("vessel_nacks_total{direction=\"in\"}") >= 1.0
            && get("vessel_nacks_total{direction=\"out\"}") >= 1.0
            // Each forwarded packet's delay is measured (and is not zero).
            && get("vessel_forwarding_delay_seconds_count") > 100.0
            && get("vessel_forwarding_delay_seconds_sum") > 0.0
    };
    while !ready(&last) {
        assert!(
            Instant::now() < deadline,
            "metrics never showed the live: {last:#?}"
        );
        let until = Instant::now() + Duration::from_millis(200);
        run_all_until(&mut clients, Duration::from_secs(5), "time passes", |_| {
            Instant::now() >= until
        });
        last = scrape(&server);
    }
    // On an idle loopback almost every packet is forwarded within 100 ms.
    let count = last["vessel_forwarding_delay_seconds_count"];
    let fast = last["vessel_forwarding_delay_seconds_bucket{le=\"0.1\"}"];
    assert!(fast >= 0.9 * count, "{fast} of {count} within 100 ms");
    // Nothing else happened: no panic, nobody refused, nobody behind.
    for name in [
        "vessel_panics_total{engine=\"media\"}",
        "vessel_refused_total{limit=\"sessions\"}",
        "vessel_viewer_skips_total",
        "vessel_turn_allocations",
    ] {
        assert_eq!(last.get(name), Some(&0.0), "{name}: {last:#?}");
    }
}

#[test]
fn healthz_answers() {
    let server = Server::start();
    let res = http().get(server.url("/healthz")).send().unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = serde_json::from_str(&res.text().unwrap()).unwrap();
    assert_eq!(body["status"], "ok");
}

#[test]
fn sigterm_tells_clients_stops_accepting_and_ends_sessions() {
    let mut server = Server::start_with_args(&["--shutdown-grace", "2"]);
    let mut caster = Client::connect(&server, "/whip/draining");
    let mut viewer = Client::connect(&server, "/whep/draining");
    run_all_until(
        &mut [&mut caster, &mut viewer],
        Duration::from_secs(15),
        "video",
        |c| c[1].video().len() >= 10,
    );
    let mut events = http()
        .get(server.url("/api/lives/draining/events"))
        .send()
        .unwrap();
    let ws_url = server
        .url("/api/lives/draining/chat?name=a")
        .replace("http://", "ws://");
    let (mut chat, _) = tungstenite::connect(ws_url).unwrap();
    let welcome = chat.read().unwrap();
    assert!(welcome.to_text().unwrap().contains("welcome"));

    let _ = Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status();
    // Pages are told: the event stream says `shutdown`, and so does the chat.
    let mut sse = String::new();
    let mut buf = [0u8; 512];
    while !sse.contains("event: shutdown") {
        let n = events.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the event stream ended without a shutdown event: {sse}"
        );
        sse.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    loop {
        let frame = chat.read().expect("the chat says shutdown before closing");
        if frame.to_text().unwrap_or_default().contains("\"shutdown\"") {
            break;
        }
    }
    // New sessions are turned away while the old ones drain.
    let (status, reason) = match Client::try_connect(&server, "/whep/draining", None) {
        Ok(_) => panic!("a new session during the drain"),
        Err(e) => e,
    };
    assert_eq!(status, 503, "{reason}");
    assert_eq!(
        http().get(server.url("/healthz")).send().unwrap().status(),
        503
    );
    // After the grace period the sessions are closed (DTLS close_notify).
    run_all_until(
        &mut [&mut caster, &mut viewer],
        Duration::from_secs(6),
        "sessions closed",
        |c| c[0].closed && c[1].closed,
    );
    let status = server
        .terminate(Duration::from_secs(5))
        .expect("exits after draining");
    assert!(status.success(), "{status:?}");
    assert!(server.log_text().contains("sessions closed"));
}

#[test]
fn https_serves_pages_and_api() {
    let dir = std::env::temp_dir().join(format!("vessel-https-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = common::self_signed_cert(&dir);
    let server = Server::start_with_args(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let addr = server.base.trim_start_matches("http://").to_string();
    let mut client = Command::new("openssl")
        .args(["s_client", "-quiet", "-verify_return_error", "-CAfile"])
        .arg(&cert)
        .args(["-connect", &addr, "-servername", "localhost"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    client
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    client
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut answer)
        .unwrap();
    let _ = client.wait();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"status\":\"ok\""), "{answer}");
    // Plain HTTP on the TLS port gets nowhere.
    assert!(http().get(server.url("/healthz")).send().is_err());
    let _ = std::fs::remove_dir_all(dir);
}

/// Runs `vessel` with `args` and `env` until its first log line; returns
/// that line (or, if it exits, its stderr and exit code).
fn first_log_line(args: &[&str], env: &[(&str, &str)]) -> (String, Option<i32>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vessel"))
        .args([
            "--http",
            "127.0.0.1:0",
            "--media",
            "127.0.0.1:0",
            "--turn",
            "127.0.0.1:0",
            "--rtmp",
            "127.0.0.1:0",
        ])
        .args(args)
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    stderr.read_line(&mut line).unwrap();
    // A refused setting exits at once; a good one keeps running.
    let deadline = Instant::now() + Duration::from_millis(500);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let status = child.wait().unwrap();
    let mut rest = String::new();
    let _ = stderr.read_to_string(&mut rest);
    (line + &rest, status.code())
}

#[test]
fn settings_come_from_flags_then_environment_then_the_config_file() {
    let dir = std::env::temp_dir().join(format!("vessel-settings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("vessel.toml");
    std::fs::write(&config, "log-format = \"json\"\n").unwrap();
    let config = config.to_str().unwrap();
    let is_json =
        |l: &str| serde_json::from_str::<serde_json::Value>(l.lines().next().unwrap()).is_ok();

    let (line, _) = first_log_line(&["--config", config], &[]);
    assert!(is_json(&line), "the file asks for JSON logs: {line}");
    let parsed: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert!(
        parsed["level"].is_string() && parsed["message"].is_string(),
        "{parsed}"
    );
    let (line, _) = first_log_line(&["--config", config], &[("VESSEL_LOG_FORMAT", "text")]);
    assert!(
        !is_json(&line),
        "the environment wins over the file: {line}"
    );
    let (line, _) = first_log_line(
        &["--config", config, "--log-format", "json"],
        &[("VESSEL_LOG_FORMAT", "text")],
    );
    assert!(is_json(&line), "the flag wins over the environment: {line}");

    // Mistakes stop Vessel with the key named.
    std::fs::write(dir.join("bad.toml"), "wokers = 2\n").unwrap();
    let (out, code) = first_log_line(&["--config", dir.join("bad.toml").to_str().unwrap()], &[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("unknown key `wokers`"), "{out}");
    std::fs::write(dir.join("bad.toml"), "shutdown-grace = \"soon\"\n").unwrap();
    let (out, code) = first_log_line(&["--config", dir.join("bad.toml").to_str().unwrap()], &[]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("key `shutdown-grace`") && out.contains("soon"),
        "{out}"
    );
    // An unknown VESSEL_ variable is named, and does not stop Vessel.
    let (out, code) = first_log_line(&[], &[("VESSEL_WOKERS", "2")]);
    assert_eq!(code, None, "still running: {out}");
    assert!(
        out.contains("VESSEL_WOKERS is not a Vessel setting"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
