//! Recordings as a product, on the real binary: per-live recording turned
//! on through the admin API, the listing, the file with HTTP Range, the VOD
//! playlist played end to end by FFmpeg, the webhook, who may read what,
//! and a recording that cannot be written (the live goes on, and says so).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vessel-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&dir);
    dir
}

fn json_of(res: reqwest::blocking::Response) -> (u16, serde_json::Value) {
    let status = res.status().as_u16();
    let text = res.text().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| json!({ "text": text })),
    )
}

fn wait_for(what: &str, server: &Server, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_live_recorded_through_the_api_is_listed_served_by_ranges_and_plays_as_vod() {
    let _one = ENCODING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp_dir("recordings");
    let (hook, notices) = webhook();
    let server = Server::start_with_args(&[
        "--record-dir",
        dir.to_str().unwrap(),
        "--record-webhook",
        &hook,
    ]);
    // Turned on for one live (loopback: the admin API needs no token).
    let (status, body) = json_of(
        http()
            .patch(server.url("/api/lives/show"))
            .header("content-type", "application/json")
            .body(r#"{"record": true}"#)
            .send()
            .unwrap(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["record"], true);
    let rtmp = rtmp_addr(&server);
    // Another live on air meanwhile is not recorded.
    let mut other = ffmpeg_rtmp(&format!("rtmp://{rtmp}/live/other"), 8);
    let mut caster = ffmpeg_rtmp(&format!("rtmp://{rtmp}/live/show"), 6);
    let listing = || json_of(http().get(server.url("/api/recordings")).send().unwrap()).1;
    wait_for(
        "a recording being written",
        &server,
        Duration::from_secs(15),
        || listing()["recordings"][0]["complete"] == false,
    );
    let _ = caster.wait();
    // Off air: the file is closed, complete.
    wait_for(
        "the recording complete",
        &server,
        Duration::from_secs(10),
        || listing()["recordings"][0]["complete"] == true,
    );
    let _ = other.wait();
    let all = listing();
    let recs = all["recordings"].as_array().unwrap();
    assert_eq!(recs.len(), 1, "only the live marked record: {all}");
    let (status, only) = json_of(
        http()
            .get(server.url("/api/recordings?live=show"))
            .send()
            .unwrap(),
    );
    assert_eq!(status, 200);
    assert_eq!(only["recordings"], all["recordings"]);
    let rec = &recs[0];
    let file = rec["file"].as_str().unwrap().to_string();
    assert!(
        file.starts_with("show-2") && file.ends_with(".mp4"),
        "{rec}"
    );
    assert_eq!(rec["live"], "show");
    assert!(rec["start"].as_str().unwrap().ends_with('Z'), "{rec}");
    let duration = rec["duration"].as_f64().unwrap();
    assert!((3.0..=6.5).contains(&duration), "{rec}");
    let codec = rec["codec"].as_str().unwrap();
    assert!(
        // An RTMP caster: its own AAC is recorded.
        codec.starts_with("avc1.") && codec.ends_with(",mp4a.40.2"),
        "{rec}"
    );
    let size = std::fs::metadata(dir.join(&file)).unwrap().len();
    assert_eq!(rec["size"], size);
    assert_eq!(rec["url"], format!("/recordings/{file}"));
    let stem = file.trim_end_matches(".mp4");
    assert_eq!(rec["playlist"], format!("/recordings/{stem}.m3u8"));

    // The file, whole and by ranges.
    let res = http()
        .get(server.url(&format!("/recordings/{file}")))
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "video/mp4");
    assert_eq!(res.headers()["accept-ranges"], "bytes");
    assert_eq!(res.bytes().unwrap().len() as u64, size);
    let res = http()
        .get(server.url(&format!("/recordings/{file}")))
        .header("range", "bytes=100-199")
        .send()
        .unwrap();
    assert_eq!(res.status(), 206);
    assert_eq!(
        res.headers()["content-range"],
        format!("bytes 100-199/{size}").as_str()
    );
    let on_disk = std::fs::read(dir.join(&file)).unwrap();
    assert_eq!(&res.bytes().unwrap()[..], &on_disk[100..200]);
    let res = http()
        .get(server.url(&format!("/recordings/{file}")))
        .header("range", format!("bytes={}-{}", size + 10, size + 20))
        .send()
        .unwrap();
    assert_eq!(res.status(), 416);
    // Names that are not recordings' are refused before any file is looked at.
    for (path, want) in [
        ("/recordings/..%2F..%2Fetc%2Fpasswd", 400),
        // (No "/recordings/..": URL parsers resolve it, and %2E%2E, to "/".)
        ("/recordings/show.mp4", 400),
        ("/recordings/show-20261204-123456.txt", 400),
        ("/recordings/show-20990101-000000.mp4", 404),
        ("/recordings/show-20990101-000000.m3u8", 404),
        ("/api/recordings?live=..%2Fx", 400),
    ] {
        let (status, body) = json_of(http().get(server.url(path)).send().unwrap());
        assert_eq!(status, want, "{path}: {body}");
    }

    // The VOD playlist parses, addresses the file, and plays end to end.
    let playlist_url = server.url(&format!("/recordings/{stem}.m3u8"));
    let res = http().get(&playlist_url).send().unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().unwrap();
    let playlist = m3u8_rs::parse_media_playlist_res(text.as_bytes()).expect(&text);
    assert_eq!(
        playlist.playlist_type,
        Some(m3u8_rs::MediaPlaylistType::Vod)
    );
    assert!(playlist.end_list, "{text}");
    assert!(playlist.segments.len() >= 3, "{text}");
    assert!(playlist.segments.iter().all(|s| s.uri == file), "{text}");
    let listed: f64 = playlist.segments.iter().map(|s| s.duration as f64).sum();
    assert!((listed - duration).abs() < 0.1, "{listed} vs {duration}");
    let played = Command::new("ffmpeg")
        .args(["-hide_banner", "-v", "error", "-i", &playlist_url])
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    let errors = String::from_utf8_lossy(&played.stderr);
    assert!(
        played.status.success() && errors.trim().is_empty(),
        "{errors}"
    );
    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "format=duration"])
        .args(["-of", "default=nw=1:nk=1", &playlist_url])
        .output()
        .unwrap();
    let probed: f64 = String::from_utf8_lossy(&probe.stdout)
        .trim()
        .parse()
        .unwrap_or(0.0);
    assert!((probed - duration).abs() < 0.5, "{probed} vs {duration}");

    // The webhook was told of the complete file.
    wait_for(
        "the webhook notice",
        &server,
        Duration::from_secs(5),
        || !notices.lock().unwrap().is_empty(),
    );
    let notice = notices.lock().unwrap()[0].clone();
    assert_eq!(notice["event"], "recording.complete", "{notice}");
    assert_eq!(notice["file"], file.as_str());
    assert_eq!(notice["live"], "show");
    assert_eq!(notice["size"], size);
    assert_eq!(notice["url"], format!("/recordings/{file}"));
    assert!(notice["duration"].as_f64().unwrap() > 3.0, "{notice}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_recording_that_cannot_be_written_stops_warns_and_counts_while_the_live_goes_on() {
    let _one = ENCODING.lock().unwrap_or_else(|e| e.into_inner());
    // The record "directory" is an existing file: nothing can be created
    // in it, even as root (which a chmod 0555 directory would not stop).
    let blocked = temp_dir("record-blocked");
    std::fs::write(&blocked, b"a file, not a directory").unwrap();
    let server = Server::start_with_args(&["--record", blocked.to_str().unwrap()]);
    let mut caster = ffmpeg_rtmp(&format!("rtmp://{}/live/show", rtmp_addr(&server)), 30);
    wait_for("the warning", &server, Duration::from_secs(15), || {
        live_state(&server, "show")["warnings"]
            .as_array()
            .is_some_and(|w| {
                w.iter()
                    .any(|w| w.as_str().unwrap_or("").contains("recording stopped"))
            })
    });
    let state = live_state(&server, "show");
    assert_eq!(state["onAir"], true, "{state}");
    let warning = state["warnings"].to_string();
    assert!(warning.contains("free space"), "{warning}");
    assert_eq!(
        metric(&server, "vessel_recording_errors_total"),
        Some(1.0),
        "{}",
        server.log_text()
    );
    assert_eq!(metric(&server, "vessel_recordings_active"), Some(0.0));
    assert!(server.log_text().contains("recording stopped"));
    // HLS viewers still get media.
    let res = http()
        .get(server.url("/hls/show/main/index.m3u8?_HLS_msn=2"))
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    let media = res.text().unwrap();
    let seg = media
        .lines()
        .find(|l| l.starts_with("seg-"))
        .unwrap_or_else(|| panic!("{media}"));
    let res = http()
        .get(server.url(&format!("/hls/show/main/{seg}")))
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.bytes().unwrap().len() > 1000);
    // And so do WebRTC viewers.
    let mut viewer = Client::connect(&server, "/whep/show");
    viewer.run_until(
        Duration::from_secs(10),
        "video and audio for a WHEP viewer",
        |v| v.video().len() > 30 && v.audio().len() > 20,
    );
    let _ = caster.kill();
    let _ = caster.wait();
    let _ = std::fs::remove_file(&blocked);
}

#[test]
fn a_recorded_vp8_live_says_it_is_not_packaged() {
    let dir = temp_dir("record-vp8");
    let server = Server::start_with_args(&["--record", dir.to_str().unwrap()]);
    let mut caster = Client::connect(&server, "/whip/vp8");
    caster.run_until(Duration::from_secs(10), "the VP8 warning", |_| {
        live_state(&server, "vp8")["warnings"]
            .as_array()
            .is_some_and(|w| w.iter().any(|w| w.as_str().unwrap_or("").contains("VP8")))
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn who_may_read_recordings() {
    // A fake recording is enough: access is decided on the name.
    let dir = temp_dir("record-access");
    std::fs::create_dir_all(&dir).unwrap();
    for live in ["pub", "vip"] {
        std::fs::write(dir.join(format!("{live}-20261204-120000.mp4")), b"not mp4").unwrap();
    }
    // Keys in use: the admin only.
    let server = Server::start_with_args(&[
        "--record-dir",
        dir.to_str().unwrap(),
        "--admin-token",
        "admin-secret-1234",
        "--viewer-token-secret",
        "viewer-secret-123456789",
    ]);
    let (status, body) = json_of(http().get(server.url("/api/recordings")).send().unwrap());
    assert_eq!(status, 401, "{body}");
    assert!(body.to_string().contains("admin"), "{body}");
    let (status, body) = json_of(
        http()
            .get(server.url("/api/recordings"))
            .bearer_auth("admin-secret-1234")
            .send()
            .unwrap(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["recordings"].as_array().unwrap().len(), 2, "{body}");
    assert_eq!(body["recordings"][0]["duration"], serde_json::Value::Null);
    let file = "/recordings/pub-20261204-120000.mp4";
    assert_eq!(http().get(server.url(file)).send().unwrap().status(), 401);
    let res = http()
        .get(server.url(&format!("{file}?token=admin-secret-1234")))
        .send()
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().unwrap().as_ref(), b"not mp4");
    drop(server);

    // An open server: as for playing; a private live needs its token.
    let server = Server::start_with_args(&[
        "--record-dir",
        dir.to_str().unwrap(),
        "--viewer-token-secret",
        "viewer-secret-123456789",
    ]);
    let post = |path: &str, body: serde_json::Value| {
        json_of(
            http()
                .post(server.url(path))
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .unwrap(),
        )
    };
    assert_eq!(
        post("/api/lives", json!({"live": "vip", "private": true})).0,
        201
    );
    let token = post("/api/lives/vip/tokens", json!({"ttl": 600})).1["token"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, body) = json_of(http().get(server.url("/api/recordings")).send().unwrap());
    assert_eq!(status, 200);
    let lives: Vec<&str> = body["recordings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["live"].as_str().unwrap())
        .collect();
    assert_eq!(lives, ["pub"], "the private live's are left out");
    let vip = "/recordings/vip-20261204-120000.mp4";
    assert_eq!(http().get(server.url(vip)).send().unwrap().status(), 401);
    assert_eq!(
        http()
            .get(server.url(&format!("{vip}?token=wrong")))
            .send()
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        http()
            .get(server.url(&format!("{vip}?token={token}")))
            .send()
            .unwrap()
            .status(),
        200
    );
    let (status, body) = json_of(
        http()
            .get(server.url(&format!("/api/recordings?live=vip&token={token}")))
            .send()
            .unwrap(),
    );
    assert_eq!(status, 200);
    assert_eq!(body["recordings"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(
        http().get(server.url(file)).send().unwrap().status(),
        200,
        "a public live's recording is open"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
