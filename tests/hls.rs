//! LL-HLS on the real binary: FFmpeg publishes over RTMP (H.264 + AAC);
//! the playlists are checked against the spec's rules, blocking reload
//! against the clock, the media against ffprobe; VP8 lives and private
//! lives get what they should.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn get(server: &Server, path: &str) -> (u16, String, reqwest::header::HeaderMap) {
    let res = http().get(server.url(path)).send().unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, res.text().unwrap(), headers)
}

fn wait_on_air(server: &Server, live: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while live_state(server, live)["onAir"] != true {
        assert!(Instant::now() < deadline, "{live} not on air");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of `KEY=` in a tag line.
fn attr(line: &str, key: &str) -> Option<String> {
    line.split([':', ','])
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .map(|v| v.trim_matches('"').to_string())
}

fn tag<'a>(playlist: &'a str, name: &str) -> Option<&'a str> {
    playlist.lines().find(|l| l.starts_with(name))
}

/// The part the preload hint names: (msn, part).
fn preload_hint(playlist: &str) -> (u64, u32) {
    let uri = attr(
        tag(playlist, "#EXT-X-PRELOAD-HINT").expect("a preload hint"),
        "URI",
    )
    .unwrap();
    let rest = uri
        .strip_prefix("part-")
        .unwrap()
        .strip_suffix(".m4s")
        .unwrap();
    let (m, p) = rest.split_once('-').unwrap();
    (m.parse().unwrap(), p.parse().unwrap())
}

#[test]
fn an_rtmp_live_is_served_as_ll_hls_by_the_rules() {
    let _one = ENCODING.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start();
    let mut ffmpeg = ffmpeg_rtmp(&format!("rtmp://{}/live/show", rtmp_addr(&server)), 20);
    wait_on_air(&server, "show");

    let (status, body, headers) = get(&server, "/hls/show/index.m3u8");
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["content-type"], "application/vnd.apple.mpegurl");
    let inf = tag(&body, "#EXT-X-STREAM-INF").expect("a variant");
    // RTMP lives keep their AAC (WebRTC viewers get an Opus transcode).
    assert!(inf.contains("avc1.") && inf.contains("mp4a.40.2"), "{inf}");
    assert!(inf.contains("RESOLUTION=320x240"), "{inf}");
    assert!(body.lines().any(|l| l == "main/index.m3u8"), "{body}");

    // Long enough for a delta update (CAN-SKIP-UNTIL is 6 target durations).
    std::thread::sleep(Duration::from_secs(9));
    let (status, media, headers) = get(&server, "/hls/show/main/index.m3u8");
    assert_eq!(status, 200, "{media}");
    assert_eq!(headers["cache-control"], "max-age=1");
    let part_target: f64 = attr(tag(&media, "#EXT-X-PART-INF").unwrap(), "PART-TARGET")
        .unwrap()
        .parse()
        .unwrap();
    let control = tag(&media, "#EXT-X-SERVER-CONTROL").unwrap();
    assert!(control.contains("CAN-BLOCK-RELOAD=YES"), "{control}");
    let hold: f64 = attr(control, "PART-HOLD-BACK").unwrap().parse().unwrap();
    assert!(hold >= 3.0 * part_target - 1e-9, "{control}"); // 3 × 0.2 is 0.6000000000000001
    let target: f64 = tag(&media, "#EXT-X-TARGETDURATION:")
        .unwrap()
        .trim_start_matches("#EXT-X-TARGETDURATION:")
        .parse()
        .unwrap();
    let skip_until: f64 = attr(control, "CAN-SKIP-UNTIL").unwrap().parse().unwrap();
    assert!(skip_until >= 6.0 * target, "{control}");
    for l in media.lines().filter(|l| l.starts_with("#EXT-X-PART:")) {
        let d: f64 = attr(l, "DURATION").unwrap().parse().unwrap();
        assert!(d <= part_target * 1.01, "{l} longer than {part_target}");
    }
    for l in media.lines().filter(|l| l.starts_with("#EXTINF:")) {
        let d: f64 = l[8..].trim_end_matches(',').parse().unwrap();
        assert!(d <= target + 0.5, "{l} past the target duration {target}");
    }
    assert!(tag(&media, "#EXT-X-PROGRAM-DATE-TIME:").is_some());
    let segments = media.lines().filter(|l| l.starts_with("#EXTINF")).count();
    assert!(segments >= 5, "{media}");

    // Blocking reload: the part after the preload hint's (the hint's may
    // be done by the time the request is sent) is asked for before it
    // exists; the answer comes when it does, listing it.
    let (_, media, _) = get(&server, "/hls/show/main/index.m3u8");
    let (msn, part) = preload_hint(&media);
    let part = part + 1;
    let asked = Instant::now();
    let (status, blocked, headers) = get(
        &server,
        &format!("/hls/show/main/index.m3u8?_HLS_msn={msn}&_HLS_part={part}"),
    );
    let held = asked.elapsed();
    assert_eq!(status, 200, "{blocked}");
    assert!(
        held > Duration::from_millis(20) && held < Duration::from_millis(2000),
        "held {held:?}"
    );
    // That part, or (past the end of its segment) the next segment's first.
    assert!(
        blocked.contains(&format!("part-{msn}-{part}.m4s"))
            || blocked.contains(&format!("part-{}-0.m4s", msn + 1)),
        "{blocked}"
    );
    assert_eq!(headers["cache-control"], "max-age=6");
    // The part itself, asked for as the preload hint of the newest
    // playlist: held until it exists too.
    let (msn, part) = preload_hint(&blocked);
    let (status, _, headers) = get(&server, &format!("/hls/show/main/part-{msn}-{part}.m4s"));
    assert_eq!(status, 200);
    assert_eq!(headers["cache-control"], "public, max-age=3600, immutable");

    // Requests the spec refuses.
    for (query, why) in [
        (format!("_HLS_msn={}", msn + 10), "far ahead"),
        ("_HLS_part=1".to_string(), "part without msn"),
        ("_HLS_msn=abc".to_string(), "not a number"),
    ] {
        let (status, body, _) = get(&server, &format!("/hls/show/main/index.m3u8?{query}"));
        assert_eq!(status, 400, "{why}: {body}");
    }

    // A delta update skips the oldest segments.
    let (status, delta, _) = get(&server, "/hls/show/main/index.m3u8?_HLS_skip=YES");
    assert_eq!(status, 200);
    let skipped: usize = attr(
        tag(&delta, "#EXT-X-SKIP").unwrap_or_else(|| panic!("EXT-X-SKIP in\n{delta}")),
        "SKIPPED-SEGMENTS",
    )
    .unwrap()
    .parse()
    .unwrap();
    let (_, full, _) = get(&server, "/hls/show/main/index.m3u8");
    let count = |p: &str| p.lines().filter(|l| l.starts_with("#EXTINF")).count();
    assert!(skipped >= 1, "{delta}");
    assert!(
        count(&delta) + skipped >= count(&full) - 1,
        "{delta}\n---\n{full}"
    );

    // The media: init + a segment read by ffprobe as H.264 and AAC.
    let init = http()
        .get(server.url("/hls/show/main/init-0.mp4"))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    let first = full
        .lines()
        .find(|l| l.starts_with("seg-"))
        .expect("a segment")
        .to_string();
    let seg = http()
        .get(server.url(&format!("/hls/show/main/{first}")))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("vessel-hls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("one.mp4");
    std::fs::write(&file, [&init[..], &seg[..]].concat()).unwrap();
    let (out, duration) = probe(&file);
    assert!(
        out.contains("codec_name=h264") && out.contains("codec_name=aac"),
        "{out}"
    );
    assert!((0.9..=2.1).contains(&duration), "{out}");
    let _ = std::fs::remove_dir_all(&dir);

    // Unknown names and lives not on air.
    assert_eq!(get(&server, "/hls/show/main/seg-x.m4s").0, 404);
    assert_eq!(get(&server, "/hls/show/nope/index.m3u8").0, 404);
    assert_eq!(get(&server, "/hls/quiet/index.m3u8").0, 404);
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();
}

#[test]
fn a_vp8_live_is_webrtc_only_and_says_so() {
    let server = Server::start();
    let mut caster = Client::connect(&server, "/whip/vp8");
    caster.run_until(Duration::from_secs(5), "on air", |_| {
        live_state(&server, "vp8")["onAir"] == true
    });
    let handle = std::thread::spawn({
        let url = server.url("/hls/vp8/index.m3u8");
        move || {
            let res = http().get(url).send().unwrap();
            (res.status().as_u16(), res.text().unwrap())
        }
    });
    // The caster keeps sending while the request waits for its video.
    while !handle.is_finished() {
        caster.run(Duration::from_millis(50));
    }
    let (status, body) = handle.join().unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("VP8") && body.contains("H.264"), "{body}");
}

#[test]
fn a_private_lives_playlists_need_a_token_and_its_media_the_playlists_k() {
    let _one = ENCODING.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start_with_args(&[
        "--admin-token",
        "admin-secret-1234",
        "--viewer-token-secret",
        "viewer-secret-123456789",
    ]);
    let post = |path: &str, body: serde_json::Value| -> serde_json::Value {
        let res = http()
            .post(server.url(path))
            .header("authorization", "Bearer admin-secret-1234")
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap();
        serde_json::from_str(&res.text().unwrap()).unwrap()
    };
    let key = post("/api/lives", json!({"live": "vip", "private": true}))["key"]
        .as_str()
        .unwrap()
        .to_string();
    let token = post("/api/lives/vip/tokens", json!({"ttl": 600}))["token"]
        .as_str()
        .unwrap()
        .to_string();
    let mut ffmpeg = ffmpeg_rtmp(
        &format!("rtmp://{}/live/vip?key={key}", rtmp_addr(&server)),
        12,
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let (multi, headers) = loop {
        let (status, multi, headers) = get(&server, &format!("/hls/vip/index.m3u8?token={token}"));
        if status == 200 {
            break (multi, headers);
        }
        assert!(Instant::now() < deadline, "{status} {multi}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(get(&server, "/hls/vip/index.m3u8").0, 401);
    assert!(
        headers["cache-control"]
            .to_str()
            .unwrap()
            .starts_with("private")
    );
    // The variant's URI carries the viewer's token on.
    let uri = multi.lines().find(|l| l.starts_with("main/")).unwrap();
    assert!(uri.ends_with(&format!("?token={token}")), "{uri}");
    // Held until a first segment is complete.
    let (status, media, _) = get(&server, &format!("/hls/vip/{uri}&_HLS_msn=1"));
    assert_eq!(status, 200, "{media}");
    // Media URIs carry the live's k=, the same for everyone, not the token.
    let seg = media.lines().find(|l| l.starts_with("seg-")).unwrap();
    assert!(seg.contains("?k=") && !seg.contains(&token), "{seg}");
    assert_eq!(get(&server, &format!("/hls/vip/main/{seg}")).0, 200);
    let bare = seg.split('?').next().unwrap();
    assert_eq!(get(&server, &format!("/hls/vip/main/{bare}")).0, 403);
    assert_eq!(get(&server, &format!("/hls/vip/main/{bare}?k=00")).0, 403);
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();
}

/// ffprobe's view of a file: (codec names, duration in seconds).
fn probe(file: &std::path::Path) -> (String, f64) {
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name:format=duration",
        ])
        .args(["-of", "compact"])
        .arg(file)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&probe.stdout).to_string();
    assert!(probe.status.success(), "{out}");
    let duration = out
        .lines()
        .find_map(|l| l.split("duration=").nth(1))
        .and_then(|d| d.parse().ok())
        .unwrap_or(0.0);
    (out, duration)
}

#[test]
fn a_recording_cut_by_kill_9_plays_up_to_its_last_second_and_a_new_caster_starts_a_new_file() {
    let _one = ENCODING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join(format!("vessel-record-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut server = Server::start_with_args(&["--record", dir.to_str().unwrap()]);
    let url = format!("rtmp://{}/live/rec", rtmp_addr(&server));
    let files = || -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(&dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    // The first caster for 4 s, then a second one replaces it.
    let mut first = ffmpeg_rtmp(&url, 4);
    wait_on_air(&server, "rec");
    let deadline = Instant::now() + Duration::from_secs(10);
    while files().is_empty() {
        assert!(
            Instant::now() < deadline,
            "no recording file:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let started = Instant::now();
    let _ = first.wait();
    let mut second = ffmpeg_rtmp(&url, 30);
    let deadline = Instant::now() + Duration::from_secs(10);
    while files().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "no second file:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let second_started = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    // Killed mid-recording, as a crash would.
    unsafe { libc::kill(server.pid() as i32, libc::SIGKILL) };
    let killed = Instant::now();
    let _ = server.terminate(Duration::from_secs(5));
    let _ = second.kill();
    let _ = second.wait();

    let files = files();
    assert_eq!(files.len(), 2, "{files:?}");
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("rec-2") && n.ends_with(".mp4")),
        "{names:?}"
    );
    // The replaced caster's file is complete and whole, with the AAC
    // the caster sent.
    let (out, duration) = probe(&files[0]);
    assert!(
        out.contains("codec_name=h264") && out.contains("codec_name=aac"),
        "{out}"
    );
    let wall = (second_started - started).as_secs_f64();
    assert!(
        duration > 2.0 && duration < wall + 1.0,
        "{duration} s of {wall} s: {out}"
    );
    // The killed one plays up to (about) its last second.
    let (out, duration) = probe(&files[1]);
    assert!(out.contains("codec_name=h264"), "{out}");
    let wall = (killed - second_started).as_secs_f64();
    assert!(
        duration >= wall - 2.0 && duration < wall + 1.0,
        "{duration} s of {wall} s: {out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// An FFmpeg caster with x264's default B-frames (no zerolatency) and AAC.
fn ffmpeg_with_bframes(url: &str, secs: u32) -> Child {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"])
        .args([
            "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "30", "-bf", "2",
        ])
        .args(["-sc_threshold", "0", "-c:a", "aac", "-ac", "2"])
        .args(["-t", &secs.to_string(), "-f", "flv", url])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ffmpeg runs (scripts/test installs it)")
}

#[test]
fn an_rtmp_live_with_bframes_and_aac_is_packaged_as_sent() {
    let _one = ENCODING.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start();
    let mut ffmpeg = ffmpeg_with_bframes(&format!("rtmp://{}/live/bf", rtmp_addr(&server)), 20);
    wait_on_air(&server, "bf");
    let (status, multi, _) = get(&server, "/hls/bf/index.m3u8");
    assert_eq!(status, 200, "{multi}");
    let inf = tag(&multi, "#EXT-X-STREAM-INF").expect("a variant");
    assert!(
        inf.contains("avc1.64") && inf.contains("mp4a.40.2"),
        "{inf}"
    );
    // Until three segments are complete.
    let deadline = Instant::now() + Duration::from_secs(15);
    let media = loop {
        let (status, media, _) = get(&server, "/hls/bf/main/index.m3u8");
        assert_eq!(status, 200, "{media}");
        if media.lines().filter(|l| l.starts_with("#EXTINF")).count() >= 3 {
            break media;
        }
        assert!(Instant::now() < deadline, "{media}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut file = http()
        .get(server.url("/hls/bf/main/init-0.mp4"))
        .send()
        .unwrap()
        .bytes()
        .unwrap()
        .to_vec();
    let mut lines = media.lines();
    let mut seconds = 0.0;
    let mut segments = 0;
    while let Some(l) = lines.next() {
        let Some(d) = l.strip_prefix("#EXTINF:") else {
            continue;
        };
        let uri = lines.by_ref().find(|l| l.starts_with("seg-")).unwrap();
        seconds += d.trim_end_matches(',').parse::<f64>().unwrap();
        segments += 1;
        let seg = http()
            .get(server.url(&format!("/hls/bf/main/{uri}")))
            .send()
            .unwrap()
            .bytes()
            .unwrap();
        file.extend_from_slice(&seg);
    }
    assert!(segments >= 3, "{media}");
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();
    let dir = std::env::temp_dir().join(format!("vessel-hls-bf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bf.mp4");
    std::fs::write(&path, &file).unwrap();
    let (out, _) = probe(&path);
    assert!(
        out.contains("codec_name=h264") && out.contains("codec_name=aac"),
        "{out}"
    );
    // Every picture of the segments decodes, without a complaint, and
    // there are as many as the playlist's durations say (30 fps).
    let decode = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&path)
        .args(["-map", "0:v", "-f", "framemd5", "-"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&decode.stderr);
    assert!(decode.status.success() && stderr.is_empty(), "{stderr}");
    let frames = String::from_utf8_lossy(&decode.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .count();
    let expected = (seconds * 30.0).round() as usize;
    assert!(
        frames.abs_diff(expected) <= 1,
        "{frames} pictures decoded, {expected} in {seconds} s of segments"
    );
    // The audio decodes too.
    let decode = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&path)
        .args(["-map", "0:a", "-f", "null", "-"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&decode.stderr);
    assert!(decode.status.success() && stderr.is_empty(), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
