//! RTMP ingest on the real binary, with Debian's FFmpeg as the publisher
//! (as OBS would publish) and str0m WHEP viewers: H.264 re-packetized for
//! RTP, AAC transcoded to Opus, the access rules of WHIP, replacement of
//! casters both ways, the B-frame warning, and garbage on the port.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// FFmpeg publishing a test pattern and a tone, in real time, for `secs`.
fn ffmpeg(url: &str, rate: u32, video: &[&str], secs: u32) -> Child {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=30"])
        .args([
            "-f",
            "lavfi",
            "-i",
            &format!("sine=frequency=440:sample_rate={rate}"),
        ])
        .args(["-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "30"])
        .args(video)
        .args(["-c:a", "aac", "-ac", "2", "-ar", &rate.to_string()])
        .args(["-t", &secs.to_string(), "-f", "flv", url])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ffmpeg runs (scripts/test installs it)")
}

/// One publisher at a time: each encodes in real time, and several at
/// once on a 2-core machine starve the server they publish to.
static ENCODING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ENCODING.lock().unwrap_or_else(|e| e.into_inner())
}

const NO_BFRAMES: &[&str] = &["-profile:v", "high", "-bf", "0", "-tune", "zerolatency"];

/// Waits until `live` is on air.
fn wait_on_air(server: &Server, live: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while live_state(server, live)["onAir"] != true {
        assert!(
            Instant::now() < deadline,
            "{live} not on air:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// H.264 NAL unit type of an RTP payload (FU-A: of the fragment's unit;
/// STAP-A: of its first unit).
fn nal_type(payload: &[u8]) -> u8 {
    match payload[0] & 0x1f {
        28 => payload[1] & 0x1f,
        24 => payload[3] & 0x1f,
        t => t,
    }
}

/// Video frames (distinct timestamps) a viewer got: 45 are 1.5 s, more
/// than a keyframe interval of the publishers here.
fn frames(viewer: &Client) -> usize {
    let ts: std::collections::HashSet<u32> = viewer.video().iter().map(|p| p.ts).collect();
    ts.len()
}

/// Checks what a viewer got of an RTMP live: RTP as a WebRTC decoder
/// needs it.
fn assert_playable(viewer: &Client) {
    let mut video: Vec<&Received> = viewer.video();
    video.sort_by_key(|p| p.seq);
    assert!(video.len() > 60, "video packets: {}", video.len());
    // Frames: marker on the last packet only, timestamps never going back
    // (no B-frames), and SPS + PPS before every IDR. Judged on frames whose
    // packets all came, between two markers (on a machine this loaded, a
    // packet may still be on its way, or a late viewer skip ahead).
    let mut frames: Vec<Vec<&Received>> = Vec::new();
    for p in &video {
        match frames.last_mut() {
            Some(f) if f[0].ts == p.ts => f.push(p),
            _ => frames.push(vec![p]),
        }
    }
    let whole = |i: usize| {
        let f = &frames[i];
        i > 0
            && frames[i - 1].last().unwrap().seq + 1 == f[0].seq
            && frames[i - 1].last().unwrap().marker
            && f.windows(2).all(|w| w[1].seq == w[0].seq + 1)
            && f.last().unwrap().marker
    };
    let complete: Vec<usize> = (0..frames.len()).filter(|&i| whole(i)).collect();
    assert!(
        complete.len() * 10 >= (frames.len() - 2) * 8,
        "most frames arrive whole: {} of {}",
        complete.len(),
        frames.len()
    );
    let (mut idrs, mut jumps) = (0, 0);
    for &i in &complete {
        let f = &frames[i];
        let step = f[0].ts.wrapping_sub(frames[i - 1][0].ts);
        assert!(
            step > 0 && step < 90_000 * 3,
            "timestamps move forward: {step}"
        );
        jumps += usize::from(step > 9_000);
        // Two frames on one timestamp (a publisher's millisecond clock can
        // give two the same) look like one with a marker inside.
        jumps += usize::from(f[..f.len() - 1].iter().any(|p| p.marker));
    }
    // Every keyframe the viewer got (its first frame is one: a viewer
    // starts at a keyframe) carries SPS and PPS before its IDR slice.
    for f in &frames {
        let types: Vec<u8> = f.iter().map(|p| nal_type(&p.payload)).collect();
        assert!(!types.contains(&9), "access unit delimiters are dropped");
        if let Some(i) = types.iter().position(|t| *t == 5) {
            idrs += 1;
            let before = &types[..i];
            assert!(
                before.contains(&7) && before.contains(&8),
                "SPS and PPS before the IDR: {types:?}"
            );
        }
    }
    assert!(idrs >= 1, "the viewer got a keyframe");
    // A jump is a viewer skipping ahead to a keyframe (its pacer fell
    // 300 ms behind, see `lateness`): rare, not the rule.
    assert!(jumps <= 2, "timestamps jumped {jumps} times");
    // Opus: 20 ms frames at 48 kHz.
    let mut audio: Vec<&Received> = viewer.audio();
    audio.sort_by_key(|p| p.seq);
    assert!(audio.len() > 40, "audio packets: {}", audio.len());
    let steps: Vec<u32> = audio
        .windows(2)
        .filter(|w| w[1].seq == w[0].seq + 1)
        .map(|w| w[1].ts.wrapping_sub(w[0].ts))
        .collect();
    let at_960 = steps.iter().filter(|s| **s == 960).count();
    assert!(
        at_960 * 10 >= steps.len() * 9,
        "Opus timestamps advance 960 a packet: {steps:?}"
    );
}

fn rtmp_to_webrtc(rate: u32) {
    let _serial = one_at_a_time();
    let server = Server::start();
    let addr = rtmp_addr(&server);
    let mut publisher = ffmpeg(&format!("rtmp://{addr}/live/demo"), rate, NO_BFRAMES, 8);
    wait_on_air(&server, "demo");
    let mut viewer = Client::connect(&server, "/whep/demo");
    viewer.run_until(Duration::from_secs(8), "video and audio", |v| {
        frames(v) > 45 && v.audio().len() > 60
    });
    assert_playable(&viewer);
    assert_eq!(live_state(&server, "demo")["viewers"], 1);
    let _ = publisher.kill();
    let _ = publisher.wait();
}

#[test]
fn ffmpeg_over_rtmp_reaches_a_whep_viewer_as_h264_and_opus() {
    rtmp_to_webrtc(48_000);
}

#[test]
fn aac_at_44_1_khz_is_resampled_to_opus_at_48_khz() {
    rtmp_to_webrtc(44_100);
}

#[test]
fn a_keyed_live_refuses_a_wrong_key_and_the_live_goes_on() {
    let _serial = one_at_a_time();
    const ADMIN: &str = "admin-secret";
    let server = Server::start_with_args(&["--admin-token", ADMIN]);
    let res = http()
        .post(server.url("/api/lives"))
        .header("authorization", format!("Bearer {ADMIN}"))
        .header("content-type", "application/json")
        .body(serde_json::json!({"live": "keyed"}).to_string())
        .send()
        .unwrap();
    assert_eq!(res.status(), 201);
    let body: serde_json::Value = serde_json::from_str(&res.text().unwrap()).unwrap();
    let key = body["key"].as_str().unwrap().to_string();
    let addr = rtmp_addr(&server);

    let mut good = ffmpeg(
        &format!("rtmp://{addr}/live/keyed?key={key}"),
        48_000,
        NO_BFRAMES,
        12,
    );
    wait_on_air(&server, "keyed");
    let mut viewer = Client::connect(&server, "/whep/keyed");
    viewer.run_until(Duration::from_secs(8), "video", |v| v.video().len() > 30);

    for url in [
        format!("rtmp://{addr}/live/keyed?key=wrong"),
        format!("rtmp://{addr}/live/keyed"),
    ] {
        let mut bad = ffmpeg(&url, 48_000, NO_BFRAMES, 3);
        let status = bad.wait().unwrap();
        assert!(!status.success(), "{url} is refused");
    }
    let log = server.log_text();
    assert!(log.contains("wrong stream key"), "{log}");
    // The live went on all along.
    let before = viewer.video().len();
    viewer.run(Duration::from_secs(1));
    assert!(viewer.video().len() > before + 30, "the live goes on");
    assert!(!viewer.closed);
    let _ = good.kill();
    let _ = good.wait();
}

#[test]
fn rtmp_and_whip_casters_replace_each_other_and_viewers_keep_watching() {
    let _serial = one_at_a_time();
    let server = Server::start();
    let addr = rtmp_addr(&server);
    let mut whip = Client::connect(&server, "/whip/swap");
    let mut viewer = Client::connect(&server, "/whep/swap");
    run_all_until(
        &mut [&mut whip, &mut viewer],
        Duration::from_secs(8),
        "VP8 from WHIP",
        |c| c[1].video().len() > 30,
    );
    // RTMP takes over: the WHIP session ends, the viewer gets H.264.
    let mut publisher = ffmpeg(&format!("rtmp://{addr}/live/swap"), 48_000, NO_BFRAMES, 30);
    let seen = viewer.video().len();
    run_all_until(
        &mut [&mut whip, &mut viewer],
        Duration::from_secs(10),
        "H.264 from RTMP",
        |c| {
            c[1].video()[seen..]
                .iter()
                .filter(|p| nal_type(&p.payload) == 5)
                .count()
                > 0
        },
    );
    run_all_until(
        &mut [&mut whip, &mut viewer],
        Duration::from_secs(5),
        "the WHIP caster is closed",
        |c| c[0].closed,
    );
    // And WHIP takes it back: FFmpeg's connection is closed.
    let mut whip2 = Client::connect(&server, "/whip/swap");
    let seen = viewer.video().len();
    run_all_until(
        &mut [&mut whip2, &mut viewer],
        Duration::from_secs(10),
        "VP8 again",
        |c| c[1].video().len() > seen + 60,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while publisher.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "FFmpeg is disconnected once replaced:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!viewer.closed);
}

#[test]
fn b_frames_raise_a_warning_with_the_fix() {
    let _serial = one_at_a_time();
    let server = Server::start();
    let addr = rtmp_addr(&server);
    let mut publisher = ffmpeg(
        &format!("rtmp://{addr}/live/bframes"),
        48_000,
        &["-profile:v", "high", "-bf", "3"],
        6,
    );
    wait_on_air(&server, "bframes");
    let deadline = Instant::now() + Duration::from_secs(8);
    while !server.log_text().contains("B-frames") {
        assert!(Instant::now() < deadline, "{}", server.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = server.log_text();
    assert!(log.contains("bframes=0") && log.contains("WHIP"), "{log}");
    let state = live_state(&server, "bframes");
    let warnings = state["warnings"]
        .as_array()
        .expect("warnings in the live's state");
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap_or("").contains("B-frames")),
        "{state}"
    );
    let _ = publisher.kill();
    let _ = publisher.wait();
}

#[test]
fn garbage_on_the_rtmp_port_closes_that_connection_only() {
    let _serial = one_at_a_time();
    let server = Server::start();
    let addr = rtmp_addr(&server);
    let mut publisher = ffmpeg(
        &format!("rtmp://{addr}/live/steady"),
        48_000,
        NO_BFRAMES,
        20,
    );
    wait_on_air(&server, "steady");
    let mut viewer = Client::connect(&server, "/whep/steady");
    viewer.run_until(Duration::from_secs(8), "video", |v| v.video().len() > 30);

    // Random bytes; a handshake cut short; a valid handshake then a chunk
    // size of 2^31 and an absurd message length.
    let mut c0c1 = vec![3u8];
    c0c1.extend(std::iter::repeat_n(0u8, 1536));
    let attacks: Vec<Vec<u8>> = vec![
        (0..4096).map(|i| (i * 7919 % 251) as u8).collect(),
        vec![3u8, 0, 0, 0],
        {
            let mut v = c0c1.clone();
            v.extend(std::iter::repeat_n(0u8, 1536)); // C2
            // Set Chunk Size (type 1) to 2^31 - 1, then a header claiming a
            // 16 MiB message.
            v.extend([
                0x02, 0, 0, 0, 0, 0, 4, 0x01, 0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff,
            ]);
            v.extend([0x03, 0, 0, 0, 0xff, 0xff, 0xff, 0x14, 0, 0, 0, 0]);
            v
        },
    ];
    for bytes in attacks {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = s.write_all(&bytes);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // The server closes it (EOF or reset) rather than waiting forever.
        let mut buf = [0u8; 8192];
        let deadline = Instant::now() + Duration::from_secs(12);
        loop {
            match std::io::Read::read(&mut s, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => assert!(Instant::now() < deadline, "the connection stays open"),
            }
        }
    }
    let before = viewer.video().len();
    viewer.run(Duration::from_secs(2));
    let got = viewer.video().len() - before;
    assert!(got > 60, "the live went on: {got} packets in 2 s");
    assert!(
        publisher.try_wait().unwrap().is_none(),
        "FFmpeg still publishing"
    );
    let _ = publisher.kill();
    let _ = publisher.wait();
}

#[test]
fn gstreamer_rtmp2sink_is_a_second_publisher() {
    let _serial = one_at_a_time();
    let server = Server::start();
    let addr = rtmp_addr(&server);
    let pipeline = format!(
        "videotestsrc is-live=true num-buffers=450 ! video/x-raw,width=320,height=240,framerate=30/1 ! \
         x264enc tune=zerolatency bframes=0 key-int-max=30 bitrate=1000 ! h264parse ! \
         flvmux name=m streamable=true ! rtmp2sink location=rtmp://{addr}/live/gst \
         audiotestsrc is-live=true ! audio/x-raw,rate=44100,channels=2 ! avenc_aac ! aacparse ! m."
    );
    let mut gst = Command::new("gst-launch-1.0")
        .arg("-q")
        .args(pipeline.split_whitespace())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gst-launch-1.0 runs (scripts/test installs GStreamer)");
    wait_on_air(&server, "gst");
    let mut viewer = Client::connect(&server, "/whep/gst");
    viewer.run_until(Duration::from_secs(10), "video and audio", |v| {
        frames(v) > 45 && v.audio().len() > 60
    });
    assert_playable(&viewer);
    let state = live_state(&server, "gst");
    assert_eq!(state["ingest"], "rtmp", "{state}");
    assert_eq!(state["source"]["width"], 320, "{state}");
    let _ = gst.kill();
    let _ = gst.wait();
}
