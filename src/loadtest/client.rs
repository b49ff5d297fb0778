//! The load test's peers: a WHIP caster and WHEP viewers on str0m, each a
//! task on a worker thread's single-threaded runtime, so one thread carries
//! hundreds of real WebRTC sessions (ICE, DTLS, SRTP, RTCP with NACK and
//! TWCC feedback).

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, Ssrc};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::probe::{self, Epoch, Vp8Source};
use super::report::Histogram;

/// Counters every worker adds to; read by the progress line and the report.
#[derive(Default)]
pub struct Totals {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    pub connected: AtomicUsize,
    pub receiving: AtomicUsize,
    pub failed: AtomicUsize,
    /// Viewers the server turned away for now (429/503), waiting to retry.
    pub waiting: AtomicUsize,
    /// 429/503 answers to viewers' offers.
    pub refused: AtomicU64,
    pub caster_connected: AtomicBool,
    /// Why the caster could not start or went away.
    pub caster_error: std::sync::Mutex<Option<String>>,
    /// Forwarding delays are recorded only inside the measurement window.
    pub measuring: AtomicBool,
}

/// What one worker thread shares among its peers.
pub struct Worker {
    pub epoch: Epoch,
    pub totals: Arc<Totals>,
    pub http: reqwest::Client,
    pub bind: IpAddr,
    /// `Authorization: Bearer` for WHIP (a stream key) and WHEP (a viewer token).
    pub key: Option<String>,
    pub token: Option<String>,
    pub stop: watch::Receiver<bool>,
    /// The caster stops first, so that viewers get (or repair) everything
    /// it sent before they stop.
    pub caster_stop: watch::Receiver<bool>,
    pub delay: RefCell<Histogram>,
    pub join: RefCell<Histogram>,
}

/// One viewer's outcome.
#[derive(Debug, Default, Clone)]
pub struct ViewerResult {
    pub connected: bool,
    pub expected: u64,
    pub received: u64,
    /// Video packets received inside the measurement window.
    pub window_packets: u64,
    pub error: Option<String>,
}

/// Extended sequence numbers seen on one stream, for loss: duplicates
/// (retransmissions that raced the original) count once.
#[derive(Debug, Default)]
struct SeqTrack {
    first: Option<u64>,
    max: u64,
    received: u64,
    /// Bit `i`: `max - i` was received.
    recent: u128,
}

impl SeqTrack {
    fn on(&mut self, seq: u64) {
        let Some(_) = self.first else {
            (self.first, self.max, self.received, self.recent) = (Some(seq), seq, 1, 1);
            return;
        };
        if seq > self.max {
            let shift = seq - self.max;
            self.recent = if shift >= 128 {
                0
            } else {
                self.recent << shift
            };
            self.recent |= 1;
            self.max = seq;
            self.received += 1;
        } else {
            let back = self.max - seq;
            if back < 128 && self.recent & (1 << back) == 0 {
                self.recent |= 1 << back;
                self.received += 1;
            }
        }
    }

    fn expected(&self) -> u64 {
        self.first.map_or(0, |f| self.max - f + 1)
    }
}

/// Why a session did not open.
#[derive(Debug)]
pub enum OpenError {
    /// 429/503: the server is full for now; try again after this long.
    Refused(Duration, String),
    Failed(String),
}

impl From<String> for OpenError {
    fn from(e: String) -> Self {
        Self::Failed(e)
    }
}

impl From<OpenError> for String {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::Refused(_, e) | OpenError::Failed(e) => e,
        }
    }
}

/// POSTs an SDP offer; returns the answer and the session URL.
async fn exchange(
    http: &reqwest::Client,
    url: &str,
    bearer: Option<&str>,
    offer: String,
) -> Result<(String, String), OpenError> {
    let mut req = http.post(url).header("content-type", "application/sdp");
    if let Some(b) = bearer {
        req = req.header("authorization", format!("Bearer {b}"));
    }
    let res = req
        .body(offer)
        .send()
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    let status = res.status();
    let location = res
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let retry_after = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let body = res.text().await.unwrap_or_default();
    let error = format!("POST {url}: {status}: {}", body.trim());
    if matches!(status.as_u16(), 429 | 503) {
        let after = Duration::from_secs(retry_after.unwrap_or(5).clamp(1, 60));
        return Err(OpenError::Refused(after, error));
    }
    if status.as_u16() != 201 {
        return Err(OpenError::Failed(error));
    }
    let base = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
    let location = match location {
        Some(l) => base.join(&l).map_err(|e| e.to_string())?.to_string(),
        None => String::new(),
    };
    Ok((body, location))
}

struct Session {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    location: String,
    audio: Mid,
    video: Mid,
}

impl Session {
    async fn open(worker: &Worker, url: &str, cast: bool) -> Result<Self, OpenError> {
        let socket = UdpSocket::bind((worker.bind, 0))
            .await
            .map_err(|e| e.to_string())?;
        let local = socket.local_addr().map_err(|e| e.to_string())?;
        let mut rtc = RtcConfig::new()
            .set_rtp_mode(true)
            .set_stats_interval(None)
            .build(Instant::now());
        let candidate = Candidate::host(local, "udp").map_err(|e| e.to_string())?;
        rtc.add_local_candidate(candidate);
        let dir = if cast {
            Direction::SendOnly
        } else {
            Direction::RecvOnly
        };
        let mut api = rtc.sdp_api();
        let audio = api.add_media(MediaKind::Audio, dir, None, None, None);
        let video = api.add_media(MediaKind::Video, dir, None, None, None);
        let (offer, pending): (_, SdpPendingOffer) = api
            .apply()
            .ok_or_else(|| OpenError::Failed("no offer".into()))?;
        let bearer = if cast { &worker.key } else { &worker.token };
        let (answer, location) =
            exchange(&worker.http, url, bearer.as_deref(), offer.to_sdp_string()).await?;
        let answer = SdpAnswer::from_sdp_string(&answer)
            .map_err(|e| OpenError::Failed(format!("bad answer: {e}")))?;
        rtc.sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| OpenError::Failed(format!("answer refused: {e}")))?;
        Ok(Self {
            rtc,
            socket,
            local,
            location,
            audio,
            video,
        })
    }

    /// Sends what str0m has queued; returns when it next wants time.
    fn flush(&mut self, mut on_event: impl FnMut(&mut Rtc, Event)) -> Result<Instant, String> {
        loop {
            match self.rtc.poll_output().map_err(|e| e.to_string())? {
                Output::Transmit(t) => {
                    // A full socket buffer loses the datagram, as a network would.
                    let _ = self.socket.try_send_to(&t.contents, t.destination);
                }
                Output::Timeout(t) => return Ok(t),
                Output::Event(e) => on_event(&mut self.rtc, e),
            }
        }
    }

    fn receive(&mut self, buf: &[u8], source: SocketAddr, now: Instant) {
        let Ok(contents) = buf.try_into() else {
            return;
        };
        let _ = self.rtc.handle_input(Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.local,
                contents,
            },
        ));
    }

    fn pt(&self, mid: Mid, codec: Codec) -> Option<Pt> {
        let remote = self.rtc.media(mid)?.remote_pts().to_vec();
        self.rtc
            .codec_config()
            .find(|p| remote.contains(&p.pt()) && p.spec().codec == codec)
            .map(|p| p.pt())
    }

    async fn close(self, http: &reqwest::Client) {
        if !self.location.is_empty() {
            let _ = http.delete(&self.location).send().await;
        }
    }
}

/// The caster: VP8 at `bitrate` and `fps`, Opus every 20 ms, until stopped.
/// A failure is noted in [`Totals::caster_error`].
pub async fn cast(worker: Rc<Worker>, url: String, bitrate: u64, fps: u32) {
    if let Err(e) = cast_until_stopped(&worker, url, bitrate, fps).await {
        let mut slot = worker
            .totals
            .caster_error
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(e);
    }
}

async fn cast_until_stopped(
    worker: &Rc<Worker>,
    url: String,
    bitrate: u64,
    fps: u32,
) -> Result<(), String> {
    let mut s = Session::open(worker, &url, true)
        .await
        .map_err(String::from)?;
    let mut stop = worker.caster_stop.clone();
    let mut source = Vp8Source::new(bitrate, fps, Duration::from_secs(2));
    let mut frames = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(fps.max(1))));
    let mut audio = tokio::time::interval(Duration::from_millis(20));
    // Below 2^16: str0m would otherwise start SRTP at rollover count 1.
    let mut seq: u64 = 1000 + u64::from(rand::random::<u16>()) % 30_000;
    let mut audio_seq: u64 = 1;
    let mut ts: u32 = rand::random();
    let ts_step = 90_000 / fps.max(1);
    let mut connected = false;
    let mut keyframe = false;
    let mut buf = vec![0u8; 2048];
    loop {
        let timeout = s.flush(|_, e| match e {
            Event::Connected => connected = true,
            Event::KeyframeRequest(_) => keyframe = true,
            _ => {}
        })?;
        if connected {
            worker
                .totals
                .caster_connected
                .store(true, Ordering::Relaxed);
        }
        if std::mem::take(&mut keyframe) {
            source.request_keyframe();
        }
        tokio::select! {
            _ = stop.changed() => break,
            r = s.socket.recv_from(&mut buf) => {
                if let Ok((n, from)) = r {
                    s.receive(&buf[..n], from, Instant::now());
                }
            }
            _ = frames.tick(), if connected => {
                let now = Instant::now();
                let frame = source.next_frame(worker.epoch, now);
                let pt = s.pt(s.video, Codec::Vp8).ok_or("the server did not accept VP8")?;
                let last = frame.payloads.len() - 1;
                let mut api = s.rtc.direct_api();
                let tx = api.stream_tx_by_mid(s.video, None).ok_or("no video stream")?;
                for (i, payload) in frame.payloads.into_iter().enumerate() {
                    tx.write_rtp(
                        RtpWrite::new(pt, seq.into(), ts, now, payload)
                            .marker(i == last)
                            .nackable(true),
                    );
                    seq += 1;
                }
                ts = ts.wrapping_add(ts_step);
            }
            _ = audio.tick(), if connected => {
                let now = Instant::now();
                let pt = s.pt(s.audio, Codec::Opus).ok_or("the server did not accept Opus")?;
                let mut api = s.rtc.direct_api();
                let tx = api.stream_tx_by_mid(s.audio, None).ok_or("no audio stream")?;
                tx.write_rtp(RtpWrite::new(
                    pt,
                    audio_seq.into(),
                    (audio_seq * 960) as u32,
                    now,
                    probe::opus_packet(worker.epoch, now),
                ));
                audio_seq += 1;
            }
            _ = tokio::time::sleep_until(timeout.into()) => {
                let _ = s.rtc.handle_input(Input::Timeout(Instant::now()));
            }
        }
    }
    s.close(&worker.http).await;
    Ok(())
}

/// One viewer, from its WHEP POST until stopped.
pub async fn view(worker: Rc<Worker>, url: String) -> ViewerResult {
    let mut result = ViewerResult::default();
    let started = Instant::now();
    // Turned away (429/503: the server is full), a viewer waits as long
    // as it is told and tries again until the test ends, as vessel.js does.
    let mut s = loop {
        match Session::open(&worker, &url, false).await {
            Ok(s) => break s,
            Err(OpenError::Refused(after, e)) => {
                worker.totals.refused.fetch_add(1, Ordering::Relaxed);
                worker.totals.waiting.fetch_add(1, Ordering::Relaxed);
                let jitter = Duration::from_millis(rand::random::<u64>() % 1000);
                let mut stop = worker.stop.clone();
                let stopped = tokio::select! {
                    _ = tokio::time::sleep(after + jitter) => *stop.borrow(),
                    _ = stop.changed() => true,
                };
                worker.totals.waiting.fetch_sub(1, Ordering::Relaxed);
                if stopped {
                    result.error = Some(e);
                    return result;
                }
            }
            Err(OpenError::Failed(e)) => {
                worker.totals.failed.fetch_add(1, Ordering::Relaxed);
                result.error = Some(e);
                return result;
            }
        }
    };
    let totals = worker.totals.clone();
    let mut stop = worker.stop.clone();
    let mut kinds: Vec<(Ssrc, MediaKind)> = Vec::new();
    let mut video = SeqTrack::default();
    let mut audio = SeqTrack::default();
    let mut first_packet = false;
    let mut buf = vec![0u8; 2048];
    let video_mid = s.video;
    loop {
        let flushed = s.flush(|rtc, e| match e {
            Event::Connected => {
                result.connected = true;
                totals.connected.fetch_add(1, Ordering::Relaxed);
            }
            Event::RtpPacket(p) => {
                let kind = match kinds.iter().find(|(ssrc, _)| *ssrc == p.header.ssrc) {
                    Some((_, k)) => *k,
                    None => {
                        let mid = rtc.direct_api().stream_rx(&p.header.ssrc).map(|r| r.mid());
                        let k = if mid == Some(video_mid) {
                            MediaKind::Video
                        } else {
                            MediaKind::Audio
                        };
                        kinds.push((p.header.ssrc, k));
                        k
                    }
                };
                totals.packets.fetch_add(1, Ordering::Relaxed);
                totals
                    .bytes
                    .fetch_add(p.payload.len() as u64 + 12, Ordering::Relaxed);
                let measuring = totals.measuring.load(Ordering::Relaxed);
                let offset = match kind {
                    MediaKind::Video => {
                        video.on(*p.seq_no);
                        if measuring {
                            result.window_packets += 1;
                        }
                        if !first_packet {
                            first_packet = true;
                            totals.receiving.fetch_add(1, Ordering::Relaxed);
                            let join = p.timestamp.saturating_duration_since(started);
                            worker.join.borrow_mut().record(join.as_micros() as u64);
                        }
                        probe::VP8_PROBE_OFFSET
                    }
                    MediaKind::Audio => {
                        audio.on(*p.seq_no);
                        probe::OPUS_PROBE_OFFSET
                    }
                };
                if measuring && let Some(sent) = probe::read_probe(&p.payload, offset) {
                    let delay = worker.epoch.micros(p.timestamp).saturating_sub(sent);
                    worker.delay.borrow_mut().record(delay);
                }
            }
            _ => {}
        });
        let timeout = match flushed {
            Ok(t) => t,
            Err(e) => {
                result.error = Some(format!("session failed: {e}"));
                break;
            }
        };
        tokio::select! {
            _ = stop.changed() => break,
            r = s.socket.recv_from(&mut buf) => {
                if let Ok((n, from)) = r {
                    s.receive(&buf[..n], from, Instant::now());
                }
            }
            _ = tokio::time::sleep_until(timeout.into()) => {
                let _ = s.rtc.handle_input(Input::Timeout(Instant::now()));
            }
        }
    }
    result.expected = video.expected() + audio.expected();
    result.received = video.received + audio.received;
    s.close(&worker.http).await;
    result
}

#[cfg(test)]
mod tests {
    use super::SeqTrack;

    #[test]
    fn sequence_tracking_counts_losses_once_and_duplicates_never() {
        let mut t = SeqTrack::default();
        for seq in [10, 11, 13, 14, 12, 12, 15] {
            t.on(seq);
        }
        assert_eq!((t.expected(), t.received), (6, 6));
        t.on(20);
        assert_eq!((t.expected(), t.received), (11, 7));
        t.on(1000);
        t.on(20);
        assert_eq!((t.expected(), t.received), (991, 8));
    }
}
