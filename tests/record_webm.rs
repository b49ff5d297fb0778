//! Recording a VP8 live as WebM on the real binary: FFmpeg encodes real
//! VP8 and Opus to RTP on loopback, a str0m WHIP caster sends those
//! payloads to Vessel, and ffprobe/ffmpeg judge the files: both codecs,
//! the duration of what was cast, decodable without an error, one file
//! per caster, and a file cut by `kill -9` still whole up to its last
//! second.

mod common;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// FFmpeg casting `secs` of 640x360 VP8 (a keyframe every 0.5 s) and
/// stereo Opus as RTP; returns it, the payloads as they come
/// (video?, ts, marker, payload), and when the last one came.
fn ffmpeg_rtp(
    secs: u32,
) -> (
    Child,
    mpsc::Receiver<FedPacket>,
    Arc<Mutex<Option<Instant>>>,
) {
    let (tx, rx) = mpsc::channel::<FedPacket>();
    let last = Arc::new(Mutex::new(None));
    let mut ports = Vec::new();
    for video in [true, false] {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        ports.push(socket.local_addr().unwrap().port());
        let (tx, last) = (tx.clone(), last.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2000];
            while let Ok(n) = socket.recv(&mut buf) {
                if let Some((ts, marker, payload)) = rtp(&buf[..n]) {
                    *last.lock().unwrap() = Some(Instant::now());
                    if tx.send((video, ts, marker, payload.to_vec())).is_err() {
                        return;
                    }
                }
            }
        });
    }
    let secs = secs.to_string();
    let child = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-re"])
        .args([
            "-t",
            &secs,
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=640x360:rate=30",
        ])
        .args(["-t", &secs, "-f", "lavfi"])
        .args(["-i", "sine=frequency=440:sample_rate=48000"])
        .args(["-map", "0:v", "-c:v", "libvpx", "-deadline", "realtime"])
        .args(["-cpu-used", "8", "-b:v", "500k", "-g", "15"])
        .args(["-f", "rtp", "-pkt_size", "1100"])
        .arg(format!("rtp://127.0.0.1:{}", ports[0]))
        .args(["-map", "1:a", "-c:a", "libopus", "-ac", "2", "-b:a", "64k"])
        .args(["-f", "rtp", "-pkt_size", "1100"])
        .arg(format!("rtp://127.0.0.1:{}", ports[1]))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ffmpeg runs (scripts/test installs it)");
    (child, rx, last)
}

/// An RTP packet's timestamp, marker and payload (RTCP and junk: `None`).
fn rtp(p: &[u8]) -> Option<(u32, bool, &[u8])> {
    if p.len() < 12 || p[0] >> 6 != 2 || (200..=204).contains(&p[1]) {
        return None;
    }
    let mut at = 12 + 4 * usize::from(p[0] & 0x0f);
    if p[0] & 0x10 != 0 {
        let len = u16::from_be_bytes([*p.get(at + 2)?, *p.get(at + 3)?]);
        at += 4 + 4 * usize::from(len);
    }
    let mut end = p.len();
    if p[0] & 0x20 != 0 {
        end = end.checked_sub(usize::from(*p.last()?))?;
    }
    let ts = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
    Some((ts, p[1] & 0x80 != 0, p.get(at..end)?))
}

/// ffprobe's view of a file: (codec names, each stream's span in
/// seconds, in stream order). A live WebM has no Duration element: a
/// stream's duration is its packets' span.
fn probe(file: &Path) -> (String, Vec<f64>) {
    let probe = Command::new("ffprobe")
        .args(["-v", "error"])
        .args([
            "-show_entries",
            "stream=codec_name:packet=stream_index,pts_time,duration_time",
        ])
        .args(["-of", "compact"])
        .arg(file)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&probe.stdout).to_string();
    assert!(probe.status.success(), "{out}");
    let mut spans: Vec<(f64, f64)> = Vec::new();
    for line in out.lines().filter(|l| l.starts_with("packet")) {
        let field = |k: &str| -> Option<f64> {
            line.split('|')
                .find_map(|f| f.strip_prefix(k))
                .and_then(|v| v.parse().ok())
        };
        let (Some(i), Some(pts), d) = (
            field("stream_index="),
            field("pts_time="),
            field("duration_time="),
        ) else {
            continue;
        };
        let i = i as usize;
        if spans.len() <= i {
            spans.resize(i + 1, (f64::MAX, 0.0));
        }
        spans[i].0 = spans[i].0.min(pts);
        spans[i].1 = spans[i].1.max(pts + d.unwrap_or(0.0));
    }
    let streams: String = out
        .lines()
        .filter(|l| l.starts_with("stream"))
        .collect::<Vec<_>>()
        .join(" ");
    let spans = spans.iter().map(|(a, b)| (b - a).max(0.0)).collect();
    (streams, spans)
}

/// Decodes the whole file: what ffmpeg complains of (empty when clean).
fn decode_errors(file: &Path) -> String {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(file)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Runs the caster until what is pending was written out: Vessel writes
/// it a second after the packets stop (`ended`), so until the file has
/// been left alone a while after that.
fn until_written(caster: &mut Client, file: &Path, ended: Instant) {
    caster.run_until(Duration::from_secs(10), "the file written out", |_| {
        Instant::now() >= ended + Duration::from_millis(1300)
            && std::fs::metadata(file)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() >= Duration::from_millis(300))
    });
}

#[test]
fn a_vp8_live_records_as_webm_one_file_per_caster_whole_after_kill_9() {
    let dir = std::env::temp_dir().join(format!("vessel-webm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut server = Server::start_with_args(&["--record", dir.to_str().unwrap()]);

    // The first caster: 7 s of VP8 + Opus.
    let (mut first_ffmpeg, media, last) = ffmpeg_rtp(7);
    let mut first = Client::connect(&server, "/whip/cam");
    first.media = Some(media);
    first.run_until(Duration::from_secs(10), "a recording file", |_| {
        !files(&dir).is_empty()
    });
    // The file is made at the first keyframe recorded: its time 0.
    let started = Instant::now();
    first.run_until(Duration::from_secs(15), "the first cast's end", |_| {
        matches!(first_ffmpeg.try_wait(), Ok(Some(_)))
    });
    let ended = last.lock().unwrap().expect("media was sent");
    let file = files(&dir).remove(0);
    until_written(&mut first, &file, ended);
    let name = file.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        name.starts_with("cam-2") && name.ends_with(".webm"),
        "{name}"
    );
    let (out, spans) = probe(&file);
    assert!(
        out.contains("codec_name=vp8") && out.contains("codec_name=opus"),
        "{out}"
    );
    // Each track, video and audio, lasts what was cast.
    let wall = (ended - started).as_secs_f64();
    assert_eq!(spans.len(), 2, "{out}");
    for span in &spans {
        assert!(
            (span - wall).abs() <= wall * 0.02,
            "{spans:?} s recorded of {wall} s cast: {out}"
        );
    }
    assert_eq!(decode_errors(&file), "", "{}", file.display());
    // The recordings API says the same.
    let listed: serde_json::Value = serde_json::from_str(
        &http()
            .get(server.url("/api/recordings?live=cam"))
            .send()
            .unwrap()
            .text()
            .unwrap(),
    )
    .unwrap();
    let entry = &listed["recordings"][0];
    assert_eq!(entry["file"], name.as_str(), "{listed}");
    assert_eq!(entry["codec"], "vp8,opus", "{listed}");
    let listed_duration = entry["duration"].as_f64().unwrap_or_default();
    assert!(
        (listed_duration - wall).abs() <= wall * 0.02,
        "{listed_duration} s listed of {wall} s cast: {listed}"
    );

    // A second caster replaces the first: a second file.
    let (mut second_ffmpeg, media, _) = ffmpeg_rtp(30);
    let mut second = Client::connect(&server, "/whip/cam");
    second.media = Some(media);
    second.run_until(Duration::from_secs(10), "a second file", |_| {
        files(&dir).len() == 2
    });
    let second_started = Instant::now();
    second.run(Duration::from_secs(4));
    // Killed mid-recording, as a crash would be.
    unsafe { libc::kill(server.pid() as i32, libc::SIGKILL) };
    let killed = Instant::now();
    let _ = server.terminate(Duration::from_secs(5));
    let _ = second_ffmpeg.kill();
    let _ = second_ffmpeg.wait();
    drop(first);

    let all = files(&dir);
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[0], file, "the first file stays as it was");
    let (out, spans) = probe(&all[1]);
    let duration = spans.iter().cloned().fold(0.0, f64::max);
    assert!(
        out.contains("codec_name=vp8") && out.contains("codec_name=opus"),
        "{out}"
    );
    // Up to about its last second (a Cluster is written when complete).
    let wall = (killed - second_started).as_secs_f64();
    assert!(
        duration >= wall - 1.3 && duration <= wall + 0.1,
        "{duration} s recorded of {wall} s before kill -9: {out}"
    );
    assert_eq!(decode_errors(&all[1]), "", "{}", all[1].display());
    let _ = std::fs::remove_dir_all(&dir);
}
