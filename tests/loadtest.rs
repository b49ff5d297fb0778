//! `vessel loadtest` against the real server, at small scale: every viewer
//! connects and receives, nothing is lost. Throughput figures are for
//! BENCHMARKS.md, not for tests.

mod common;

use std::process::Command;

use common::Server;

/// The server's CPU time so far, in seconds, read here independently of
/// the loadtest (utime + stime, fields 14 and 15 of /proc/<pid>/stat).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

#[test]
fn twenty_viewers_receive_everything() {
    let server = Server::start();
    let cpu_before = cpu_seconds(server.pid());
    let out = Command::new(env!("CARGO_BIN_EXE_vessel"))
        .args(["loadtest", "--server", &server.base, "--live", "small"])
        .args([
            "--viewers",
            "20",
            "--ramp",
            "40",
            "--duration",
            "3",
            "--bitrate",
            "500000",
        ])
        .args(["--server-pid", &server.pid().to_string(), "--json"])
        .output()
        .expect("vessel loadtest runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "loadtest failed:\n{stderr}\n{stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}\n{stderr}"));
    assert_eq!(report["connected"], 20, "{report:#}");
    assert_eq!(report["receiving"], 20, "{report:#}");
    assert_eq!(report["loss_percent"], 0.0, "{report:#}");
    assert!(
        report["errors"].as_array().unwrap().is_empty(),
        "{report:#}"
    );
    // 500 kbit/s at 30 fps is 2 packets a frame: about 60 video packets a
    // second, so 3 s give every viewer well over 100.
    assert!(
        report["min_viewer_packets"].as_u64().unwrap() > 100,
        "{report:#}"
    );
    assert!(
        report["forwarding_delay_ms"]["samples"].as_u64().unwrap() > 20 * 100,
        "{report:#}"
    );
    assert!(
        report["join_to_first_packet_ms"]["samples"] == 20,
        "{report:#}"
    );
    // The server's cost over the measurement window: some of what the
    // whole run cost it (read here independently), most of it even, as the
    // window is most of the run; and per viewer-second, that divided out.
    let total = cpu_seconds(server.pid()) - cpu_before;
    let usage = &report["server_usage"];
    let cpu = usage["cpu_s"].as_f64().unwrap();
    assert!(
        cpu > 0.25 * total && cpu <= total + 0.02,
        "window {cpu} s of {total} s in all: {report:#}"
    );
    let window = report["window_s"].as_f64().unwrap();
    let per = usage["cpu_s_per_viewer_s"].as_f64().unwrap();
    assert!(
        (per - cpu / window / 20.0).abs() < 1e-9,
        "per viewer-second: {report:#}"
    );
    let rss = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let rss_mib = rss
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap()
        / 1024.0;
    let reported = usage["rss_mib"].as_f64().unwrap();
    assert!(
        reported > 0.5 * rss_mib && reported < 2.0 * rss_mib,
        "RSS {reported} MiB reported, {rss_mib} MiB now: {report:#}"
    );
}

#[test]
fn an_unreachable_server_is_an_error_not_a_hang() {
    let out = Command::new(env!("CARGO_BIN_EXE_vessel"))
        .args([
            "loadtest",
            "--server",
            "http://127.0.0.1:9",
            "--viewers",
            "1",
        ])
        .output()
        .expect("vessel loadtest runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the caster did not connect"), "{stderr}");
}

#[test]
fn a_private_live_with_a_key_is_load_tested_with_key_and_token() {
    let server = Server::start_full(
        "0.0.0.0",
        &["--admin-token", "adm-token", "--viewer-token-secret", "vts"],
        &[],
    );
    let post = |path: &str, body: &str| -> serde_json::Value {
        let res = common::http()
            .post(server.url(path))
            .header("authorization", "Bearer adm-token")
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap();
        serde_json::from_str(&res.text().unwrap()).unwrap()
    };
    let key = post("/api/lives", r#"{"live": "keyed", "private": true}"#)["key"]
        .as_str()
        .unwrap()
        .to_string();
    let token = post("/api/lives/keyed/tokens", "{}")["token"]
        .as_str()
        .unwrap()
        .to_string();
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_vessel"))
            .args(["loadtest", "--server", &server.base, "--live", "keyed"])
            .args(["--viewers", "2", "--duration", "1", "--json"])
            .args(extra)
            .output()
            .expect("vessel loadtest runs")
    };
    let refused = run(&[]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("401"), "{stderr}");

    let out = run(&["--key", &key, "--token", &token]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["receiving"], 2, "{report:#}");
}

/// `--hls`: 20 hls.js-like clients on an RTMP live from FFmpeg for 5 s, all
/// of them getting parts, none failing. How many requests a second the
/// server carries is for BENCHMARKS.md (scripts/bench-hls-load).
#[test]
fn twenty_ll_hls_clients_get_parts_without_errors() {
    let server = Server::start();
    let url = format!("rtmp://{}/live/hlsload", common::rtmp_addr(&server));
    let mut ffmpeg = common::ffmpeg_rtmp(&url, 30);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while common::live_state(&server, "hlsload")["onAir"] != true {
        assert!(std::time::Instant::now() < deadline, "not on air");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_vessel"))
        .args(["loadtest", "--hls", "--server", &server.base])
        .args(["--live", "hlsload", "--viewers", "20", "--ramp", "40"])
        .args(["--duration", "5", "--json"])
        .args(["--server-pid", &server.pid().to_string()])
        .output()
        .expect("vessel loadtest runs");
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "loadtest failed:\n{stderr}\n{stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}\n{stderr}"));
    assert_eq!(report["clients"], 20, "{report:#}");
    assert_eq!(report["receiving"], 20, "{report:#}");
    assert_eq!(report["errors"], 0, "{report:#}");
    assert_eq!(report["timeouts"], 0, "{report:#}");
    // At 0.5 s parts each client gets about two parts and two playlists
    // a second; at least half of that, whatever the machine's load.
    assert!(report["parts_per_s"].as_f64().unwrap() > 20.0, "{report:#}");
    assert!(
        report["playlists_per_s"].as_f64().unwrap() > 20.0,
        "{report:#}"
    );
    assert!(report["bits_per_s"].as_f64().unwrap() > 0.0, "{report:#}");
    let latency = &report["part_latency_ms"];
    assert!(latency["samples"].as_u64().unwrap() > 20, "{report:#}");
    assert!(
        latency["p50"].as_f64().unwrap() <= latency["p95"].as_f64().unwrap(),
        "{report:#}"
    );
    let usage = &report["server_usage"];
    assert!(usage["cpu_s"].as_f64().unwrap() > 0.0, "{report:#}");
    assert!(usage["rss_mib"].as_f64().unwrap() > 0.0, "{report:#}");
}
