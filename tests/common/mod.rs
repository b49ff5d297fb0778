//! Test harness: the real `vessel` binary, and WHIP/WHEP clients built on
//! str0m that cast synthetic VP8 and watch what comes back.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, Ssrc};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

pub mod chat;
pub mod cluster;
pub mod peerjs;
pub mod socketio;

pub struct Server {
    child: Child,
    pub base: String,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// On a free HTTP port; the media port is Vessel's choice (port 0):
    /// clients learn it from the answer.
    pub fn start() -> Self {
        Self::start_with_media("127.0.0.1:0")
    }

    pub fn start_with_media(media: &str) -> Self {
        Self::start_with_args(&["--media", media])
    }

    /// With extra flags, which replace the defaults `--http 127.0.0.1:0`,
    /// `--media 127.0.0.1:0`, `--turn 127.0.0.1:0` and `--rtmp 127.0.0.1:0`
    /// when they name the same flag.
    pub fn start_with_args(extra: &[&str]) -> Self {
        Self::start_full("127.0.0.1", extra, &[])
    }

    /// HTTP on `bind_ip` (clients still connect over 127.0.0.1), with extra
    /// flags and environment variables.
    /// The HTTP port is the system's choice (port 0), read back from the
    /// server's "running" line: a port picked here and bound there could be
    /// taken in between by a test running alongside.
    pub fn start_full(bind_ip: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let bind = format!("{bind_ip}:0");
        let mut args = Vec::new();
        for (flag, default) in [
            ("--http", bind.as_str()),
            ("--media", "127.0.0.1:0"),
            ("--turn", "127.0.0.1:0"),
            ("--rtmp", "127.0.0.1:0"),
        ] {
            if !extra.contains(&flag) {
                args.extend([flag, default]);
            }
        }
        args.extend(extra);
        let mut child = Command::new(env!("CARGO_BIN_EXE_vessel"))
            .args(&args)
            .env("RUST_LOG", "vessel=debug")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("vessel binary starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let running_on = || {
            log.lock().unwrap().iter().find_map(|line| {
                let url = line.split("Vessel is running: open ").nth(1)?;
                let host = url.split("://").nth(1)?.split('/').next()?;
                let port = host.rsplit(':').next()?;
                Some(format!("127.0.0.1:{port}"))
            })
        };
        let http = loop {
            if let Some(http) = running_on()
                && TcpStream::connect(&http).is_ok()
            {
                break http;
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "vessel {args:?} exited with {status}:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
            assert!(Instant::now() < deadline, "vessel did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        };
        str0m::crypto::from_feature_flags().install_process_default();
        Server {
            child,
            base: format!("http://{http}"),
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends SIGKILL (a crash or a power cut: no graceful end, nothing
    /// released) and waits for the process to be gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits up to `limit` for the process to exit.
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() || std::env::var_os("VESSEL_TEST_LOG").is_some() {
            eprintln!("--- vessel log ---\n{}", self.log_text());
        }
    }
}

/// `GET /api/lives/{live}` as JSON.
pub fn live_state(server: &Server, live: &str) -> serde_json::Value {
    let body = http()
        .get(server.url(&format!("/api/lives/{live}")))
        .send()
        .unwrap()
        .text()
        .unwrap();
    serde_json::from_str(&body).unwrap()
}

/// A viewer's WHEP offer (from a client that is then dropped).
pub fn viewer_offer() -> String {
    Client::offer(false).1
}

/// An HTTP client whose connections come from `ip` (any of 127.0.0.0/8
/// reaches a server on 127.0.0.1): another "client address" for limits.
pub fn http_from(ip: &str) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .local_address(ip.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// The value of `series` (name and labels, as printed) in `/metrics`.
pub fn metric(server: &Server, series: &str) -> Option<f64> {
    let text = http()
        .get(server.url("/metrics"))
        .send()
        .ok()?
        .text()
        .ok()?;
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[derive(Debug, Clone)]
pub struct Received {
    pub kind: MediaKind,
    pub ssrc: Ssrc,
    pub seq: u64,
    pub ts: u32,
    pub marker: bool,
    pub payload: Vec<u8>,
}

impl Received {
    /// Video: the byte the caster filled its payload with (`Client::fill`),
    /// which tells casters apart.
    pub fn fill(&self) -> Option<u8> {
        self.payload.get(5).copied()
    }
}

/// Sequence numbers of one SSRC, contiguous once sorted (NACKed packets
/// come late); timestamps never go back by much or jump: one stream, as a
/// decoder needs it, whatever happened upstream.
pub fn assert_continuous(pkts: &[&Received]) {
    let ssrc = pkts[0].ssrc;
    assert!(
        pkts.iter().all(|p| p.ssrc == ssrc),
        "the viewer sees one SSRC"
    );
    let mut sorted: Vec<_> = pkts.to_vec();
    sorted.sort_by_key(|p| p.seq);
    for w in sorted.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1, "no gap in sequence numbers");
        let step = w[1].ts.wrapping_sub(w[0].ts);
        assert!(step < 90_000 * 5, "timestamp went back or jumped: {step}");
    }
}

/// A WHIP caster or WHEP viewer over real UDP on loopback.
pub struct Client {
    pub rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    pub location: String,
    pub received: Vec<Received>,
    pub connected: bool,
    /// The server ended the session (DTLS close_notify).
    pub closed: bool,
    /// The server's SDP answer, as received.
    pub answer: String,
    /// The `Link` headers of the answer.
    pub links: Vec<String>,
    video: Option<Mid>,
    audio: Option<Mid>,
    // Caster state for synthetic VP8 + Opus.
    seq: u64,
    ts: u32,
    audio_seq: u64,
    picture_id: u16,
    frame: u64,
    keyframe_requested: bool,
    pub keyframe_requests: usize,
    next_frame: Instant,
    /// Caster: the byte its video payloads are filled with.
    pub fill: u8,
    /// Caster: video sequence numbers to leave out before the next frame,
    /// as if those packets were lost on the way.
    pub skip_seqs: u64,
    /// Caster: real media to send instead of the synthetic frames, as it
    /// comes: (video?, RTP timestamp, marker, payload).
    pub media: Option<std::sync::mpsc::Receiver<FedPacket>>,
}

/// Real media for a caster to send: (video?, RTP timestamp, marker,
/// payload).
pub type FedPacket = (bool, u32, bool, Vec<u8>);

impl Client {
    /// Builds a client and its offer: a caster sends, a viewer receives.
    pub fn offer(cast: bool) -> (Self, String, SdpPendingOffer) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        // A real client has a machine of its own; here clients share two
        // cores with the server and whatever a test floods it with, so
        // their sockets get room for a few seconds of media.
        let _ = socket2::SockRef::from(&socket).set_recv_buffer_size(4 << 20);
        let local = socket.local_addr().unwrap();
        let mut rtc = RtcConfig::new().set_rtp_mode(true).build(Instant::now());
        rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
        let dir = if cast {
            Direction::SendOnly
        } else {
            Direction::RecvOnly
        };
        let mut api = rtc.sdp_api();
        let audio = api.add_media(MediaKind::Audio, dir, None, None, None);
        let video = api.add_media(MediaKind::Video, dir, None, None, None);
        let (offer, pending) = api.apply().unwrap();
        let client = Client {
            rtc,
            socket,
            local,
            location: String::new(),
            received: Vec::new(),
            connected: false,
            closed: false,
            answer: String::new(),
            links: Vec::new(),
            video: Some(video),
            audio: Some(audio),
            // Random, but below 2^16: a first sequence number past the
            // rollover makes str0m use SRTP ROC 1, which a receiver cannot
            // know, and every video packet fails authentication.
            seq: 1000 + rand::random::<u16>() as u64 % 30_000,
            ts: rand::random(),
            audio_seq: 1,
            picture_id: rand::random::<u16>() & 0x7fff,
            frame: 0,
            keyframe_requested: false,
            keyframe_requests: 0,
            next_frame: Instant::now(),
            fill: 0x42,
            skip_seqs: 0,
            media: None,
        };
        (client, offer.to_sdp_string(), pending)
    }

    /// POSTs the offer to `path` (`/whip/x` or `/whep/x`) and applies the answer.
    pub fn connect(server: &Server, path: &str) -> Self {
        Self::try_connect(server, path, None)
            .unwrap_or_else(|(status, body)| panic!("POST {path}: {status} {body}"))
    }

    /// As `connect`, with `Authorization: Bearer <bearer>`; a refusal comes
    /// back as (status, body).
    pub fn try_connect(
        server: &Server,
        path: &str,
        bearer: Option<&str>,
    ) -> Result<Self, (u16, String)> {
        let cast = path.starts_with("/whip/");
        let (mut client, offer, pending) = Self::offer(cast);
        let mut req = http()
            .post(server.url(path))
            .header("content-type", "application/sdp");
        if let Some(token) = bearer {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let res = req.body(offer).send().unwrap();
        if res.status() != 201 {
            return Err((res.status().as_u16(), res.text().unwrap_or_default()));
        }
        client.location = res
            .headers()
            .get("location")
            .expect("Location header")
            .to_str()
            .unwrap()
            .to_string();
        assert!(client.location.starts_with(path), "{}", client.location);
        client.links = res
            .headers()
            .get_all("link")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        client.answer = res.text().unwrap();
        let answer = SdpAnswer::from_sdp_string(&client.answer).unwrap();
        client.rtc.sdp_api().accept_answer(pending, answer).unwrap();
        Ok(client)
    }

    fn pt(&self, mid: Mid, codec: Codec) -> Pt {
        let remote = self.rtc.media(mid).unwrap().remote_pts().to_vec();
        self.rtc
            .codec_config()
            .find(|p| remote.contains(&p.pt()) && p.spec().codec == codec)
            .expect("negotiated codec")
            .pt()
    }

    /// Caster: writes the media due by now (30 fps VP8, 50 pps Opus).
    fn write_media(&mut self, now: Instant) {
        if self.media.is_some() {
            self.write_fed_media(now);
            // str0m's pacer sends what its last timeout saw queued: a
            // timeout now sends these at once (else they waited for the
            // next one, a keyframe's packets a few steps).
            let _ = self.rtc.handle_input(Input::Timeout(now));
            return;
        }
        if !self.connected || now < self.next_frame {
            return;
        }
        self.next_frame = now + Duration::from_millis(33);
        let video = self.video.unwrap();
        let audio = self.audio.unwrap();
        let key = self.frame.is_multiple_of(90) || std::mem::take(&mut self.keyframe_requested);
        let (vpt, apt) = (self.pt(video, Codec::Vp8), self.pt(audio, Codec::Opus));
        self.seq += std::mem::take(&mut self.skip_seqs);
        for part in 0..2u8 {
            let mut payload = vec![
                0x80 | if part == 0 { 0x10 } else { 0 },
                0x80,
                0x80 | (self.picture_id >> 8) as u8,
                self.picture_id as u8,
            ];
            payload.push(if key { 0x00 } else { 0x01 });
            payload.extend_from_slice(&[self.fill; 200]);
            let mut api = self.rtc.direct_api();
            let tx = api.stream_tx_by_mid(video, None).unwrap();
            tx.write_rtp(
                RtpWrite::new(vpt, self.seq.into(), self.ts, now, payload)
                    .marker(part == 1)
                    .nackable(true),
            );
            self.seq += 1;
        }
        self.ts = self.ts.wrapping_add(3000);
        self.picture_id = (self.picture_id + 1) & 0x7fff;
        self.frame += 1;
        let mut api = self.rtc.direct_api();
        let tx = api.stream_tx_by_mid(audio, None).unwrap();
        tx.write_rtp(RtpWrite::new(
            apt,
            self.audio_seq.into(),
            (self.audio_seq * 960) as u32,
            now,
            vec![0xfc, 0xff, 0xfe],
        ));
        self.audio_seq += 1;
    }

    /// Caster: sends what came on `media` (once connected).
    fn write_fed_media(&mut self, now: Instant) {
        if !self.connected {
            // A caster sends nothing it captured before it connected: sent
            // late in a burst, it would stretch the media's timeline past
            // the wall clock.
            if let Some(rx) = &self.media {
                while rx.try_recv().is_ok() {}
            }
            return;
        }
        let (video, audio) = (self.video.unwrap(), self.audio.unwrap());
        let (vpt, apt) = (self.pt(video, Codec::Vp8), self.pt(audio, Codec::Opus));
        while let Some(Ok((is_video, ts, marker, payload))) =
            self.media.as_ref().map(|rx| rx.try_recv())
        {
            let (mid, pt, seq) = if is_video {
                self.seq += 1;
                (video, vpt, self.seq)
            } else {
                self.audio_seq += 1;
                (audio, apt, self.audio_seq)
            };
            let mut api = self.rtc.direct_api();
            let tx = api.stream_tx_by_mid(mid, None).unwrap();
            tx.write_rtp(
                RtpWrite::new(pt, seq.into(), ts, now, payload)
                    .marker(marker)
                    .nackable(is_video),
            );
        }
    }

    /// Runs the client's IO for `d`.
    pub fn run(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.step(end);
        }
    }

    /// Runs until `done(self)` or panics after `limit`.
    pub fn run_until(&mut self, limit: Duration, what: &str, mut done: impl FnMut(&Self) -> bool) {
        let end = Instant::now() + limit;
        while !done(self) {
            assert!(Instant::now() < end, "timed out waiting for: {what}");
            self.step(Instant::now() + Duration::from_millis(50));
        }
    }

    fn step(&mut self, until: Instant) {
        if self.closed || !self.rtc.is_alive() {
            self.closed = true;
            std::thread::sleep(Duration::from_millis(1));
            return;
        }
        let now = Instant::now();
        self.write_media(now);
        let timeout = loop {
            let Ok(output) = self.rtc.poll_output() else {
                self.closed = true;
                return;
            };
            match output {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    self.socket.send_to(&t.contents, t.destination).unwrap();
                }
                Output::Event(e) => self.on_event(e),
            }
        };
        // A caster fed real media sends it as it comes: every 2 ms.
        let fed = Instant::now() + Duration::from_millis(2);
        let wait = timeout
            .min(until)
            .min(self.next_frame)
            .min(if self.media.is_some() { fed } else { until })
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        self.socket.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 2000];
        let input = match self.socket.recv_from(&mut buf) {
            Ok((n, source)) => {
                let contents = buf[..n].try_into().unwrap();
                self.rtc.handle_input(Input::Receive(
                    Instant::now(),
                    Receive {
                        proto: Protocol::Udp,
                        source,
                        destination: self.local,
                        contents,
                    },
                ))
            }
            Err(_) => self.rtc.handle_input(Input::Timeout(Instant::now())),
        };
        input.unwrap();
    }

    fn on_event(&mut self, e: Event) {
        match e {
            Event::Connected => self.connected = true,
            Event::Closed => self.closed = true,
            Event::KeyframeRequest(_) => {
                self.keyframe_requested = true;
                self.keyframe_requests += 1;
            }
            Event::RtpPacket(p) => {
                let mid = self
                    .rtc
                    .direct_api()
                    .stream_rx(&p.header.ssrc)
                    .map(|s| s.mid());
                let kind = if mid == self.video {
                    MediaKind::Video
                } else {
                    MediaKind::Audio
                };
                self.received.push(Received {
                    kind,
                    ssrc: p.header.ssrc,
                    seq: *p.seq_no,
                    ts: p.header.timestamp,
                    marker: p.header.marker,
                    payload: p.payload.to_vec(),
                });
            }
            _ => {}
        }
    }

    /// Caster: the next video sequence number it will send (its count of
    /// packets sent, from an unknown start).
    pub fn video_seq(&self) -> u64 {
        self.seq
    }

    pub fn video(&self) -> Vec<&Received> {
        self.received
            .iter()
            .filter(|r| r.kind == MediaKind::Video)
            .collect()
    }

    pub fn audio(&self) -> Vec<&Received> {
        self.received
            .iter()
            .filter(|r| r.kind == MediaKind::Audio)
            .collect()
    }
}

/// Runs several clients' IO together for `d`.
pub fn run_all(clients: &mut [&mut Client], d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        for c in clients.iter_mut() {
            c.step(Instant::now() + Duration::from_millis(2));
        }
    }
}

/// Runs several clients until `done` holds, or panics after `limit`.
pub fn run_all_until(
    clients: &mut [&mut Client],
    limit: Duration,
    what: &str,
    mut done: impl FnMut(&[&mut Client]) -> bool,
) {
    let end = Instant::now() + limit;
    while !done(clients) {
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        for c in clients.iter_mut() {
            c.step(Instant::now() + Duration::from_millis(2));
        }
    }
}

/// A self-signed certificate for localhost and 127.0.0.1 in `dir`, made by
/// openssl: (cert.pem, key.pem).
pub fn self_signed_cert(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(made.success());
    (cert, key)
}

/// A webhook that admits casters and denies viewers, and records what it
/// was told.
pub fn webhook() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/admit", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let request: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let allow = request["role"] == "cast";
            sink.lock().unwrap().push(request);
            let answer = if allow {
                "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n".to_string()
            } else {
                let reason = "viewers from there are not allowed";
                format!(
                    "HTTP/1.1 403 Forbidden\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reason}",
                    reason.len()
                )
            };
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    (url, seen)
}

/// The caster and viewer of a live keep going: 30 more video packets.
pub fn live_goes_on(caster: &mut Client, viewer: &mut Client) {
    let before = viewer.video().len();
    run_all_until(
        &mut [caster, viewer],
        Duration::from_secs(10),
        "the live goes on",
        |c| c[1].video().len() >= before + 30,
    );
}

/// The RTMP address from the server's log ("RTMP on 127.0.0.1:PORT: ...").
pub fn rtmp_addr(server: &Server) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(addr) = server.log_text().lines().find_map(|l| {
            let rest = l.split("RTMP on ").nth(1)?;
            Some(rest.split(':').take(2).collect::<Vec<_>>().join(":"))
        }) {
            return addr;
        }
        assert!(Instant::now() < deadline, "no RTMP line in the log");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// FFmpeg publishing a 320x240 test pattern and a 440 Hz tone over RTMP to
/// `url` for `secs`, in real time: H.264 (no B-frames, zerolatency) + AAC.
pub fn ffmpeg_rtmp(url: &str, secs: u32) -> Child {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        // Keyframes exactly every second (no scene-cut ones between).
        .args([
            "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "30", "-bf", "0",
        ])
        .args(["-sc_threshold", "0"])
        .args(["-tune", "zerolatency", "-c:a", "aac", "-ac", "2"])
        .args(["-t", &secs.to_string(), "-f", "flv", url])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ffmpeg runs (scripts/test installs it)")
}

/// One publisher at a time: each encodes in real time.
pub static ENCODING: std::sync::Mutex<()> = std::sync::Mutex::new(());
