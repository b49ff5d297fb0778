//! Tests of [`RtmpConn`]: a scripted client (the crate's chunk writer and
//! hand-made AMF0), hostile input, seeded random garbage, and a real FFmpeg
//! publish over loopback.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use scuffle_rtmp::chunk::Chunk;
use scuffle_rtmp::chunk::writer::ChunkWriter;
use scuffle_rtmp::messages::MessageType;

use super::*;
use crate::rtmp::amf::tests::{key, num, string};

fn object(pairs: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut o = vec![0x03];
    for (k, v) in pairs {
        o.extend(key(k));
        o.extend_from_slice(v);
    }
    o.extend([0, 0, 9]);
    o
}

fn command(name: &str, tid: f64, rest: &[Vec<u8>]) -> Vec<u8> {
    let mut o = string(name);
    o.extend(num(tid));
    for r in rest {
        o.extend_from_slice(r);
    }
    o
}

fn chunk(csid: u32, ts: u32, kind: MessageType, stream: u32, payload: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::new();
    ChunkWriter::default()
        .write_chunk(
            &mut out,
            Chunk::new(csid, ts, kind, stream, Bytes::from(payload)),
        )
        .unwrap();
    out
}

fn cmd_chunk(stream: u32, body: Vec<u8>) -> Vec<u8> {
    chunk(3, 0, MessageType::CommandAMF0, stream, body)
}

/// Everything the connection said until it has nothing more.
fn drain(conn: &mut RtmpConn) -> Vec<RtmpOutput> {
    std::iter::from_fn(|| conn.poll_output()).collect()
}

fn sent(outs: &[RtmpOutput]) -> Vec<u8> {
    outs.iter()
        .filter_map(|o| match o {
            RtmpOutput::Send(b) => Some(b.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Handshake (simple: zero digest), connect, createStream, the OBS
/// preamble, and publish "demo?key=abc". Returns the outputs of publish.
fn up_to_publish(conn: &mut RtmpConn, now: Instant) -> Vec<RtmpOutput> {
    let mut c0c1 = vec![3u8];
    c0c1.extend([0u8; 1536]);
    conn.receive(&c0c1, now).unwrap();
    let s = sent(&drain(conn));
    assert_eq!(s.len(), 1 + 1536 * 2, "S0 S1 S2");
    assert_eq!(s[0], 3);
    conn.receive(&[0u8; 1536], now).unwrap();
    drain(conn);

    let connect = object(&[
        ("app", string("live")),
        ("tcUrl", string("rtmp://127.0.0.1/live")),
    ]);
    conn.receive(&cmd_chunk(0, command("connect", 1.0, &[connect])), now)
        .unwrap();
    let s = sent(&drain(conn));
    assert!(contains(&s, "_result") && contains(&s, "NetConnection.Connect.Success"));

    for (name, tid) in [("releaseStream", 2.0), ("FCPublish", 3.0)] {
        let body = command(name, tid, &[vec![0x05], string("demo?key=abc")]);
        conn.receive(&cmd_chunk(0, body), now).unwrap();
    }
    conn.receive(
        &cmd_chunk(0, command("createStream", 4.0, &[vec![0x05]])),
        now,
    )
    .unwrap();
    let s = sent(&drain(conn));
    assert!(contains(&s, "_result"));

    let publish = command(
        "publish",
        5.0,
        &[vec![0x05], string("demo?key=abc"), string("live")],
    );
    conn.receive(&cmd_chunk(1, publish), now).unwrap();
    drain(conn)
}

fn publish_req() -> RtmpOutput {
    RtmpOutput::Publish(PublishRequest {
        app: "live".into(),
        stream: "demo".into(),
        key: Some("abc".into()),
    })
}

#[test]
fn publish_accept_media_metadata_unpublish() {
    let now = Instant::now();
    let mut conn = RtmpConn::new(now);
    assert_eq!(up_to_publish(&mut conn, now), vec![publish_req()]);

    // Media that arrives before the decision is held, not handed out.
    let video = vec![0x17, 1, 0, 0, 0, 0, 0, 0, 1, 0x65];
    conn.receive(&chunk(6, 40, MessageType::Video, 1, video.clone()), now)
        .unwrap();
    assert!(drain(&mut conn).is_empty());

    conn.accept_publish().unwrap();
    let outs = drain(&mut conn);
    assert!(contains(&sent(&outs), "NetStream.Publish.Start"));
    assert!(outs.contains(&RtmpOutput::Video {
        timestamp_ms: 40,
        data: Bytes::from(video)
    }));

    let mut meta = string("@setDataFrame");
    meta.extend(string("onMetaData"));
    meta.extend([0x08, 0, 0, 0, 4]);
    for (k, v) in [("width", 320.0), ("height", 240.0), ("framerate", 30.0)] {
        meta.extend(key(k));
        meta.extend(num(v));
    }
    meta.extend(key("encoder"));
    meta.extend(string("Lavf61"));
    meta.extend([0, 0, 9]);
    conn.receive(&chunk(4, 0, MessageType::DataAMF0, 1, meta), now)
        .unwrap();
    let outs = drain(&mut conn);
    let RtmpOutput::Metadata(m) = &outs[0] else {
        panic!("{outs:?}")
    };
    assert_eq!(
        (m.width, m.height, m.framerate),
        (Some(320.0), Some(240.0), Some(30.0))
    );
    assert_eq!(m.encoder.as_deref(), Some("Lavf61"));

    // Extended timestamp on a message split into 128-byte chunks.
    let big: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    let ts = 0x0100_0005;
    conn.receive(&chunk(4, ts, MessageType::Audio, 1, big.clone()), now)
        .unwrap();
    assert_eq!(
        drain(&mut conn),
        vec![RtmpOutput::Audio {
            timestamp_ms: ts,
            data: Bytes::from(big)
        }]
    );

    conn.receive(
        &cmd_chunk(1, command("FCUnpublish", 6.0, &[vec![0x05]])),
        now,
    )
    .unwrap();
    assert_eq!(
        drain(&mut conn),
        vec![RtmpOutput::Closed(CloseReason::Unpublished)]
    );
    assert_eq!(conn.receive(&[1], now), Err(RtmpError::Closed));
}

#[test]
fn reject_tells_the_client_and_closes() {
    let now = Instant::now();
    let mut conn = RtmpConn::new(now);
    up_to_publish(&mut conn, now);
    conn.reject_publish("unknown stream key");
    let outs = drain(&mut conn);
    let s = sent(&outs);
    assert!(contains(&s, "NetStream.Publish.BadName") && contains(&s, "unknown stream key"));
    assert_eq!(
        outs.last(),
        Some(&RtmpOutput::Closed(CloseReason::Rejected(
            "unknown stream key".into()
        )))
    );
    assert!(conn.accept_publish().is_err());
}

#[test]
fn hostile_messages_are_errors() {
    let now = Instant::now();
    let setup = || {
        let mut c = RtmpConn::new(now);
        up_to_publish(&mut c, now);
        c.accept_publish().unwrap();
        drain(&mut c);
        c
    };

    // Chunk size 2^31.
    let mut c = setup();
    let bad = chunk(
        2,
        0,
        MessageType::SetChunkSize,
        0,
        0x8000_0000u32.to_be_bytes().to_vec(),
    );
    assert_eq!(c.receive(&bad, now), Err(RtmpError::ChunkSize(0x8000_0000)));
    assert!(c.is_closed());

    // A 16 MiB message header: refused before any payload arrives.
    let mut c = setup();
    let header = [0x06, 0, 0, 0, 0xff, 0xff, 0xff, 9, 1, 0, 0, 0];
    assert!(matches!(c.receive(&header, now), Err(RtmpError::Chunk(_))));

    // An AMF0 ECMA array claiming 4 billion entries.
    let mut c = setup();
    let mut body = command("connect", 1.0, &[]);
    body.extend([0x08, 0xff, 0xff, 0xff, 0xff, 0, 0, 9]);
    assert!(matches!(
        c.receive(&cmd_chunk(0, body), now),
        Err(RtmpError::Amf { .. })
    ));

    // Deeply nested objects in metadata.
    let mut c = setup();
    let mut deep = string("onMetaData");
    for _ in 0..5000 {
        deep.extend([0x03, 0, 1, b'a']);
    }
    assert!(matches!(
        c.receive(&chunk(4, 0, MessageType::DataAMF0, 1, deep), now),
        Err(RtmpError::Amf { .. })
    ));

    // Play, and an AMF0 command over 64 KiB.
    let mut c = setup();
    let play = command("play", 7.0, &[vec![0x05], string("demo")]);
    assert!(matches!(
        c.receive(&cmd_chunk(1, play), now),
        Err(RtmpError::Protocol(_))
    ));
    let mut c = setup();
    let huge = command("x", 1.0, &[vec![0x0c, 0, 1, 0, 0], vec![b'a'; 65536]]);
    assert!(matches!(
        c.receive(&cmd_chunk(0, huge), now),
        Err(RtmpError::MessageTooLarge { .. })
    ));

    // Publish before connect.
    let mut c = RtmpConn::new(now);
    let mut hs = vec![3u8];
    hs.extend([0u8; 1536 * 2]);
    c.receive(&hs, now).unwrap();
    let publish = command(
        "publish",
        5.0,
        &[vec![0x05], string("demo"), string("live")],
    );
    let r = c.receive(&cmd_chunk(1, publish), now);
    assert!(matches!(r, Err(RtmpError::Protocol(_))), "{r:?}");

    // A TLS ClientHello on the RTMP port.
    let mut c = RtmpConn::new(now);
    assert_eq!(c.receive(&[0x16, 3, 1], now), Err(RtmpError::NotRtmp(0x16)));
}

#[test]
fn truncated_handshake_times_out() {
    let now = Instant::now();
    let mut c = RtmpConn::new(now);
    c.receive(&[3; 100], now).unwrap();
    assert!(drain(&mut c).is_empty());
    c.handle_timeout(now + Duration::from_secs(5));
    assert!(drain(&mut c).is_empty());
    assert_eq!(c.poll_timeout(), Some(now + SETUP_TIMEOUT));
    c.handle_timeout(now + SETUP_TIMEOUT);
    assert!(matches!(
        drain(&mut c)[..],
        [RtmpOutput::Closed(CloseReason::Timeout(_))]
    ));
}

#[test]
fn undecided_publish_buffers_a_bounded_amount() {
    let now = Instant::now();
    let mut c = RtmpConn::new(now);
    up_to_publish(&mut c, now);
    let block = vec![0u8; 64 << 10];
    let mut result = Ok(());
    for _ in 0..20 {
        result = c.receive(&block, now);
        if result.is_err() {
            break;
        }
    }
    assert!(matches!(result, Err(RtmpError::BufferFull(_))));
}

/// Feeds `data` in random pieces; returns whether the connection ended.
fn feed_randomly(c: &mut RtmpConn, data: &[u8], rng: &mut impl Rng, now: Instant) -> bool {
    let mut pos = 0;
    while pos < data.len() {
        let n = rng.random_range(1..=data.len() - pos).min(4096);
        let r = c.receive(&data[pos..pos + n], now);
        assert!(
            !matches!(r, Err(RtmpError::LibraryPanic(_))),
            "library panicked: {r:?}"
        );
        assert!(c.in_buf.len() <= MAX_BUFFERED_BYTES);
        drain(c);
        if r.is_err() {
            return true;
        }
        pos += n;
    }
    false
}

fn garbage(rng: &mut impl Rng) -> Vec<u8> {
    let len = rng.random_range(1..6000);
    let mut v: Vec<u8> = (0..len).map(|_| rng.random()).collect();
    // Some chunk-looking starts: small csids, type 0 headers.
    if rng.random_bool(0.5) {
        v[0] = rng.random_range(0..8);
    }
    v
}

#[test]
fn seeded_random_garbage_never_panics() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x7274_6d70);
    let now = Instant::now();
    for i in 0..1500 {
        let mut c = RtmpConn::new(now);
        match i % 3 {
            // From the first byte (version byte right, the rest random).
            0 => {
                let mut g = garbage(&mut rng);
                g[0] = 3;
                feed_randomly(&mut c, &g, &mut rng, now);
            }
            // After the handshake.
            1 => {
                let mut hs = vec![3u8];
                hs.extend([0u8; 1536 * 2]);
                c.receive(&hs, now).unwrap();
                feed_randomly(&mut c, &garbage(&mut rng), &mut rng, now);
            }
            // While publishing: valid chunk headers with random bodies and
            // random header fields mixed in.
            _ => {
                up_to_publish(&mut c, now);
                c.accept_publish().unwrap();
                let mut stream = Vec::new();
                for _ in 0..rng.random_range(1..20) {
                    let kind = MessageType(rng.random_range(0..25));
                    let body: Vec<u8> = (0..rng.random_range(0..600))
                        .map(|_| rng.random())
                        .collect();
                    stream.extend(chunk(rng.random_range(2..70), rng.random(), kind, 1, body));
                }
                if rng.random_bool(0.3) {
                    stream.extend(garbage(&mut rng));
                }
                for _ in 0..rng.random_range(0..4) {
                    let at = rng.random_range(0..stream.len());
                    stream[at] = rng.random();
                }
                feed_randomly(&mut c, &stream, &mut rng, now);
            }
        }
    }
}

/// A real FFmpeg publish over loopback, read by a blocking std::net loop.
#[test]
fn ffmpeg_publish() {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::process::{Command, Stdio};

    use crate::rtmp::flv::{AudioTag, VideoTag, parse_audio, parse_video};

    if Command::new("ffmpeg").arg("-version").output().is_err() {
        println!("SKIPPED ffmpeg_publish: ffmpeg is not installed (apt-get install -y ffmpeg)");
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut ffmpeg = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args([
            "-c:v",
            "libx264",
            "-profile:v",
            "baseline",
            "-bf",
            "0",
            "-g",
            "30",
        ])
        .args([
            "-pix_fmt",
            "yuv420p",
            "-tune",
            "zerolatency",
            "-c:a",
            "aac",
            "-t",
            "3",
            "-f",
            "flv",
        ])
        .arg(format!("rtmp://127.0.0.1:{port}/live/demo?key=abc"))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let (mut sock, _) = listener.accept().unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();

    let mut conn = RtmpConn::new(Instant::now());
    let mut publish = None;
    let (mut avc_config, mut keyframes, mut frames) = (None, 0, 0);
    let (mut aac_config, mut aac_frames) = (None, 0);
    let mut metadata = None;
    let mut closed = None;
    let mut buf = vec![0u8; 64 << 10];
    'io: loop {
        let n = match sock.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => panic!("read: {e}"),
        };
        conn.receive(&buf[..n], Instant::now()).unwrap();
        while let Some(o) = conn.poll_output() {
            match o {
                RtmpOutput::Send(b) => sock.write_all(&b).unwrap(),
                RtmpOutput::Publish(p) => {
                    assert_eq!(p.key.as_deref(), Some("abc"));
                    publish = Some(p);
                    conn.accept_publish().unwrap();
                }
                RtmpOutput::Metadata(m) => metadata = Some(m),
                RtmpOutput::Video { data, .. } => match parse_video(&data).unwrap() {
                    VideoTag::AvcConfig(c) => avc_config = Some(c),
                    VideoTag::AvcFrames { keyframe, .. } => {
                        frames += 1;
                        keyframes += usize::from(keyframe);
                    }
                    _ => {}
                },
                RtmpOutput::Audio { data, .. } => match parse_audio(&data).unwrap() {
                    AudioTag::AacConfig(c) => aac_config = Some(c),
                    AudioTag::AacFrame(_) => aac_frames += 1,
                },
                RtmpOutput::Closed(r) => {
                    closed = Some(r);
                    break 'io;
                }
            }
        }
    }
    let _ = ffmpeg.wait();
    let publish = publish.expect("no Publish");
    assert_eq!(
        (publish.app.as_str(), publish.stream.as_str()),
        ("live", "demo")
    );
    let avc = avc_config.expect("no AVC sequence header");
    assert_eq!(avc.profile, 66, "baseline");
    assert!(keyframes >= 2, "keyframes: {keyframes}");
    assert!(frames >= 60, "video frames: {frames}");
    let aac = aac_config.expect("no AAC sequence header");
    assert_eq!((aac.object_type, aac.sample_rate), (2, 48000));
    assert!(aac_frames >= 100, "AAC frames: {aac_frames}");
    let m = metadata.expect("no onMetaData");
    assert_eq!((m.width, m.height), (Some(320.0), Some(240.0)));
    assert_eq!(closed, Some(CloseReason::Unpublished));
}
