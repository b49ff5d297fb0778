//! The RTMP listener: one task per connection, turning what OBS or FFmpeg
//! publishes into RTP for the live's WebRTC session ([`super::bridge`]).
//! Video goes through as it is (H.264, re-packetized); AAC audio is
//! transcoded to Opus, which is all WebRTC can play. The live's LL-HLS and
//! recordings get the frames as they came instead (AAC, B-frames in decode
//! order), through the HLS hub's hand-off ([`crate::hls::rtmp_sink`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::bridge::{self, Media, Publication};
use super::flv::{self, AudioTag, VideoTag};
use super::{AacToOpus, H264Packetizer, RtmpConn, RtmpOutput};
use crate::board::LiveBoard;
use crate::hls::rtmp_sink::RtmpSink;
use crate::hls::rtmp_source::RtmpFrame;
use crate::http::AppState;
use crate::sfu::SourceInfo;

/// Connections served at once, at most (each costs a task and, once
/// publishing, a transcoder).
const MAX_CONNECTIONS: usize = 256;

/// A write to the client that takes longer than this ends the connection.
const WRITE_WITHIN: Duration = Duration::from_secs(10);

/// The application part of the URL: `rtmp://HOST:1935/live/NAME`.
pub const APP: &str = "live";

/// Settings of the RTMP face.
#[derive(Debug, Clone, Copy)]
pub struct IngestConfig {
    /// Opus bit rate of the transcoded audio, bit/s.
    pub opus_bitrate: u32,
}

/// Accepts RTMP connections until the listener fails.
pub async fn serve(listener: TcpListener, state: AppState, config: IngestConfig) {
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("RTMP accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            tracing::warn!(%remote, "RTMP connection refused: {MAX_CONNECTIONS} already open");
            continue;
        }
        let _ = stream.set_nodelay(true);
        let (state, open) = (state.clone(), open.clone());
        open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            connection(stream, remote, state, config).await;
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn connection(
    mut stream: TcpStream,
    remote: SocketAddr,
    state: AppState,
    config: IngestConfig,
) {
    let span = tracing::info_span!("rtmp", %remote);
    let mut conn = RtmpConn::new(Instant::now());
    let mut publishing: Option<Pipeline> = None;
    let mut last_metadata = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while let Some(out) = conn.poll_output() {
            match out {
                RtmpOutput::Send(bytes) => {
                    match tokio::time::timeout(WRITE_WITHIN, stream.write_all(&bytes)).await {
                        Ok(Ok(())) => {}
                        _ => {
                            tracing::info!(parent: &span, "RTMP client stopped reading; closed");
                            return;
                        }
                    }
                }
                RtmpOutput::Publish(req) => {
                    let live = req.stream.clone();
                    if req.app != APP {
                        let why = format!(
                            "unknown application '{}': publish to rtmp://HOST:PORT/{APP} with the live's name as the stream key",
                            req.app
                        );
                        tracing::info!(parent: &span, %live, "RTMP publish refused: {why}");
                        conn.reject_publish(&why);
                        continue;
                    }
                    match bridge::publish(&state, &live, req.key.as_deref(), remote).await {
                        Ok(p) => {
                            if let Err(e) = conn.accept_publish() {
                                tracing::info!(parent: &span, %live, "RTMP connection failed: {e}");
                                return;
                            }
                            tracing::info!(parent: &span, %live, peer = %p.peer.log(), "RTMP publish started");
                            let pipeline = Pipeline::new(live, p, config, &state);
                            pipeline.announce();
                            publishing = Some(pipeline);
                        }
                        Err(e) => {
                            tracing::info!(parent: &span, %live, "RTMP publish refused: {e}");
                            conn.reject_publish(&e.to_string());
                        }
                    }
                }
                // GStreamer's flvmux repeats it every few frames.
                RtmpOutput::Metadata(m) if last_metadata.as_ref() == Some(&m) => {}
                RtmpOutput::Metadata(m) => {
                    tracing::info!(parent: &span, width = ?m.width, height = ?m.height, fps = ?m.framerate,
                        video_kbps = ?m.video_kbps, encoder = ?m.encoder, "RTMP stream metadata");
                    last_metadata = Some(m.clone());
                    if let Some(p) = publishing.as_mut() {
                        let whole = |v: Option<f64>| {
                            v.filter(|v| v.is_finite() && *v > 0.0 && *v < 1e6)
                                .map(|v| v.round() as u32)
                        };
                        p.source.width = whole(m.width);
                        p.source.height = whole(m.height);
                        p.source.framerate = whole(m.framerate);
                        p.source.video_kbps = whole(m.video_kbps);
                        p.source.audio_kbps = whole(m.audio_kbps);
                        p.announce();
                    }
                }
                RtmpOutput::Video { timestamp_ms, data } => {
                    if let Some(p) = publishing.as_mut() {
                        p.video(timestamp_ms, &data);
                    }
                }
                RtmpOutput::Audio { timestamp_ms, data } => {
                    if let Some(p) = publishing.as_mut() {
                        p.audio(timestamp_ms, &data);
                    }
                }
                RtmpOutput::Closed(reason) => {
                    let _ = stream.flush().await;
                    tracing::info!(parent: &span, "RTMP connection closed: {reason:?}");
                    return;
                }
            }
        }
        if let Some(p) = &publishing
            && p.publication.is_closed()
        {
            tracing::info!(parent: &span, live = %p.live,
                "RTMP publish ended on the WebRTC side (a newer caster took the live?); connection closed");
            return;
        }
        let wake = conn
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) => {
                    tracing::info!(parent: &span, "RTMP client closed the connection");
                    return;
                }
                Ok(n) => {
                    if let Err(e) = conn.receive(&buf[..n], Instant::now()) {
                        tracing::info!(parent: &span, "RTMP connection closed: {e}");
                        return;
                    }
                }
                Err(e) => {
                    tracing::info!(parent: &span, "RTMP connection lost: {e}");
                    return;
                }
            },
            _ = tokio::time::sleep_until(wake.into()) => conn.handle_timeout(Instant::now()),
        }
    }
}

/// One publish: FLV tags in, RTP for the bridge out.
struct Pipeline {
    live: String,
    publication: Publication,
    board: Arc<LiveBoard>,
    metrics: Arc<crate::metrics::Metrics>,
    /// What the API and pages are told of the stream.
    source: SourceInfo,
    warnings: Vec<String>,
    config: IngestConfig,
    clock: Clock,
    video: Option<H264Packetizer>,
    audio: Option<Audio>,
    /// The frames as they came, for the live's LL-HLS (`None` with
    /// `--no-hls`).
    hls: Option<RtmpSink>,
    /// Errors already logged (once each kind).
    told: Vec<String>,
}

struct Audio {
    transcoder: AacToOpus,
    /// When the first AAC frame was captured (on the stream's clock).
    origin: Option<Instant>,
    /// The last frame's RTP time, and the samples since the first (RTP
    /// time wraps after a day at 48 kHz; this does not).
    last_ts: u32,
    samples: u64,
}

impl Pipeline {
    fn new(live: String, publication: Publication, config: IngestConfig, state: &AppState) -> Self {
        state.metrics.rtmp_publishing.inc();
        let hls = state
            .hls
            .as_ref()
            .map(|hub| hub.rtmp_sink(&live, publication.peer));
        Self {
            live,
            publication,
            board: state.board.clone(),
            metrics: state.metrics.clone(),
            source: SourceInfo::default(),
            warnings: Vec::new(),
            config,
            clock: Clock::default(),
            video: None,
            audio: None,
            hls,
            told: Vec::new(),
        }
    }

    /// Tells the API and the pages what the stream is.
    fn announce(&self) {
        self.board.set_notes(
            &self.live,
            self.publication.peer,
            "rtmp",
            self.source.clone(),
            self.warnings.clone(),
        );
    }

    /// Logs a problem with the stream once per kind.
    fn tell(&mut self, what: String) {
        if !self.told.contains(&what) && self.told.len() < 32 {
            tracing::warn!(live = %self.live, "RTMP stream: {what}");
            self.told.push(what);
        }
    }

    fn video(&mut self, ts_ms: u32, body: &Bytes) {
        match flv::parse_video(body) {
            Ok(VideoTag::AvcConfig(config)) => {
                if let Some(hls) = self.hls.as_mut() {
                    hls.offer(RtmpFrame::VideoConfig(config.clone()), Instant::now());
                }
                match &mut self.video {
                    Some(p) => p.set_config(&config),
                    None => self.video = Some(H264Packetizer::new(&config, 0)),
                }
                self.source.video_codec = Some(format!(
                    "H.264 {} level {}.{}",
                    h264_profile(config.profile),
                    config.level / 10,
                    config.level % 10
                ));
                self.announce();
            }
            Ok(VideoTag::AvcFrames {
                composition_offset_ms,
                data,
                ..
            }) => {
                if let Some(hls) = self.hls.as_mut() {
                    let frame = RtmpFrame::Video {
                        dts_ms: ts_ms,
                        composition_offset_ms,
                        data: data.clone(),
                    };
                    hls.offer(frame, Instant::now());
                }
                let Some(p) = self.video.as_mut() else {
                    self.tell("video before its AVC sequence header; skipped".into());
                    return;
                };
                let packets = match p.packetize(ts_ms, composition_offset_ms, &data) {
                    Ok(packets) => packets,
                    Err(e) => {
                        self.tell(format!("a video frame could not be read: {e}"));
                        return;
                    }
                };
                let bframes = p.saw_bframes();
                let captured = self
                    .clock
                    .at(ts_ms.wrapping_add(composition_offset_ms as u32));
                for out in packets {
                    self.publication.send(Media::Video {
                        payload: out.payload.to_vec(),
                        rtp_ts: out.rtp_ts,
                        marker: out.marker,
                        captured,
                    });
                }
                if bframes && !self.warnings.iter().any(|w| w == BFRAMES) {
                    self.metrics.rtmp_bframes.inc();
                    tracing::warn!(live = %self.live, "{BFRAMES}");
                    self.warnings.push(BFRAMES.into());
                    self.announce();
                }
            }
            Ok(VideoTag::AvcEndOfSequence | VideoTag::Command) => {}
            Err(e) => self.tell(format!("{e}")),
        }
    }

    fn audio(&mut self, ts_ms: u32, body: &Bytes) {
        match flv::parse_audio(body) {
            Ok(AudioTag::AacConfig(config)) => {
                if let Some(hls) = self.hls.as_mut() {
                    hls.offer(RtmpFrame::AudioConfig(config.clone()), Instant::now());
                }
                self.source.audio_codec = Some(format!(
                    "AAC {} Hz, {} ch, played as Opus {} kbit/s",
                    config.sample_rate,
                    config.channels,
                    self.config.opus_bitrate / 1000
                ));
                self.announce();
                match AacToOpus::new(&config, self.config.opus_bitrate, 0) {
                    Ok(transcoder) => {
                        self.audio = Some(Audio {
                            transcoder,
                            origin: None,
                            last_ts: 0,
                            samples: 0,
                        })
                    }
                    Err(e) => self.tell(format!("audio not played: {e}")),
                }
            }
            Ok(AudioTag::AacFrame(frame)) => {
                if let Some(hls) = self.hls.as_mut() {
                    let direct = RtmpFrame::Audio {
                        ts_ms,
                        data: frame.clone(),
                    };
                    hls.offer(direct, Instant::now());
                }
                let Some(audio) = self.audio.as_mut() else {
                    return;
                };
                let origin = *audio.origin.get_or_insert_with(|| self.clock.at(ts_ms));
                match audio.transcoder.push(&frame, ts_ms) {
                    Ok(frames) => {
                        for f in frames {
                            audio.samples += u64::from(f.rtp_ts.wrapping_sub(audio.last_ts));
                            audio.last_ts = f.rtp_ts;
                            let captured =
                                origin + Duration::from_micros(audio.samples * 1000 / 48);
                            self.publication.send(Media::Audio {
                                payload: f.payload.to_vec(),
                                rtp_ts: f.rtp_ts,
                                captured,
                            });
                        }
                    }
                    Err(e) => self.tell(format!("an audio frame could not be decoded: {e}")),
                }
            }
            Err(e) => self.tell(format!("{e}")),
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.metrics.rtmp_publishing.dec();
        self.board.clear_notes(&self.live, self.publication.peer);
    }
}

/// What B-frames do to WebRTC viewers, and the fix.
const BFRAMES: &str = "the RTMP stream has B-frames, which WebRTC players show as a frozen or \
    stuttering picture: set B-frames to 0 in the encoder (OBS with x264: Settings > Output > \
    Streaming, x264 Options bframes=0 or Tune zerolatency; OBS with NVENC/AMF/QSV: Max B-frames 0; \
    FFmpeg: -bf 0 or -x264-params bframes=0), or cast with WHIP";

/// The name of an H.264 `profile_idc`.
fn h264_profile(idc: u8) -> String {
    match idc {
        66 => "Baseline".into(),
        77 => "Main".into(),
        88 => "Extended".into(),
        100 => "High".into(),
        110 => "High 10".into(),
        122 => "High 4:2:2".into(),
        244 => "High 4:4:4".into(),
        other => format!("profile {other}"),
    }
}

/// The stream's clock: RTMP milliseconds mapped onto this machine's clock
/// from the first message on.
#[derive(Default)]
struct Clock {
    origin: Option<(Instant, u32)>,
}

impl Clock {
    fn at(&mut self, ms: u32) -> Instant {
        let (t0, ms0) = *self.origin.get_or_insert((Instant::now(), ms));
        let d = ms.wrapping_sub(ms0) as i32;
        if d >= 0 {
            t0 + Duration::from_millis(d as u64)
        } else {
            t0.checked_sub(Duration::from_millis(u64::from(d.unsigned_abs())))
                .unwrap_or(t0)
        }
    }
}
