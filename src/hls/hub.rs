//! The IO side of LL-HLS: one muxer task per live that someone asks for,
//! fed by the SFU's tap through a bounded queue (it drops and counts rather
//! than slow the media thread), and the shared state HTTP requests read and
//! block on. An RTMP publish hands its frames to the same queue
//! ([`super::rtmp_sink`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::{mpsc, watch};

use super::feed::Feed;
use super::playlist_cache::PlaylistCache;
use super::record::Recorder;
use super::rtmp_source::RtmpInput;
use super::segmenter::Ready;
use super::segmenter::SegmenterConfig;
use crate::media::MediaHandle;
use crate::record::WebmRecorder;
use crate::sfu::tap::{TapPacket, TapSink};

/// How LL-HLS is cut and kept.
#[derive(Debug, Clone)]
pub struct HlsConfig {
    pub segmenter: SegmenterConfig,
    /// A live nobody has asked anything of for this long stops being
    /// packaged.
    pub idle: Duration,
    /// `--record DIR`: every live on air is recorded there.
    pub record: Option<std::path::PathBuf>,
    /// A new recording file at the first keyframe after this long.
    pub record_every: Duration,
    /// `--record-dir DIR`: where lives with `record = true` are recorded
    /// when `--record` is not given.
    pub record_dir: Option<std::path::PathBuf>,
    /// `--record-keep-days`: finished recordings older than this are
    /// deleted.
    pub record_keep: Option<Duration>,
    /// `--record-webhook URL`: told of every complete recording file.
    pub record_webhook: Option<String>,
}

impl HlsConfig {
    /// Where recordings go: `--record`'s directory, else `--record-dir`'s.
    pub fn recordings_dir(&self) -> Option<&std::path::Path> {
        self.record.as_deref().or(self.record_dir.as_deref())
    }
}

impl Default for HlsConfig {
    fn default() -> Self {
        Self {
            segmenter: SegmenterConfig {
                // CAN-SKIP-UNTIL is at least 6 target durations: a delta
                // update saves something only on a longer playlist, and an
                // encoder's irregular keyframes (scene cuts) can make the
                // target 2 s. ~15 s of media per rendition in memory.
                window: 15,
                ..SegmenterConfig::default()
            },
            idle: Duration::from_secs(30),
            record: None,
            record_every: Duration::from_secs(3600),
            record_dir: None,
            record_keep: None,
            record_webhook: None,
        }
    }
}

/// Runs of packets queued between the media thread and a live's muxer
/// (a run is a frame or less: ~4 s at 60 runs per second).
const QUEUE: usize = 256;

/// The least time between two keyframe requests of the muxer (the SFU's
/// own per-layer limit applies too).
const KEYFRAME_EVERY: Duration = Duration::from_millis(500);

/// Every live being packaged.
pub struct Hub {
    config: HlsConfig,
    media: MediaHandle,
    lives: Mutex<HashMap<String, Arc<HlsLive>>>,
    /// Signs the resource URIs of private lives (see [`Hub::media_key`]).
    key: [u8; 32],
    /// Tap runs dropped because a muxer fell behind.
    pub dropped: Arc<AtomicU64>,
    /// Recordings (see [`super::recordings`]): files being written, errors.
    pub recordings: super::recordings::Recordings,
}

/// One live's LL-HLS state.
pub struct HlsLive {
    pub feed: Mutex<Feed>,
    /// Bumped whenever a part or segment is ready: blocked requests wait
    /// on it.
    pub version: watch::Sender<u64>,
    /// Media playlists as last rendered (locked after `feed`).
    pub playlists: Mutex<PlaylistCache>,
    touched: Mutex<Instant>,
    /// Recorded (`--record`): set while the live is on air.
    recording: std::sync::atomic::AtomicBool,
    /// The muxer's queue, for an RTMP publish's frames (weak: the muxer
    /// ends when the tap does, as without).
    pub(super) direct: mpsc::WeakSender<Queued>,
}

/// What a live's muxer is handed.
pub(super) enum Queued {
    /// A run of the SFU tap's packets.
    Tap(Vec<TapPacket>),
    /// One frame of an RTMP publish, as it came.
    Rtmp(RtmpInput),
}

impl HlsLive {
    /// Someone asked for this live: it stays packaged.
    pub fn touch(&self) {
        *self.touched.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }
}

struct QueueSink {
    tx: mpsc::Sender<Queued>,
    dropped: Arc<AtomicU64>,
}

impl TapSink for QueueSink {
    fn offer(&mut self, packets: Vec<TapPacket>) -> bool {
        match self.tx.try_send(Queued::Tap(packets)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

impl Hub {
    pub fn new(config: HlsConfig, media: MediaHandle) -> Arc<Self> {
        Arc::new(Self {
            media,
            lives: Mutex::new(HashMap::new()),
            key: rand::random(),
            dropped: Arc::new(AtomicU64::new(0)),
            recordings: super::recordings::Recordings::new(config.record_webhook.clone()),
            config,
        })
    }

    pub fn config(&self) -> &HlsConfig {
        &self.config
    }

    /// The signature a private live's segments, parts and init segments
    /// carry (`?k=`): the same for every viewer, so a CDN caches one copy
    /// of each, while only someone who was given a playlist (which needs a
    /// viewer token) knows it.
    pub fn media_key(&self, live: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("any key size");
        mac.update(b"vessel-hls\0");
        mac.update(live.as_bytes());
        let tag = mac.finalize().into_bytes();
        tag[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The live's LL-HLS state, packaging it from now on if it was not.
    pub async fn open(
        self: &Arc<Self>,
        live: &str,
    ) -> Result<Arc<HlsLive>, crate::media::MediaError> {
        if let Some(l) = self.get(live) {
            l.touch();
            return Ok(l);
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let hls = Arc::new(HlsLive {
            feed: Mutex::new(Feed::new(self.config.segmenter.clone())),
            version: watch::Sender::new(0),
            playlists: Mutex::new(PlaylistCache::default()),
            touched: Mutex::new(Instant::now()),
            recording: std::sync::atomic::AtomicBool::new(false),
            direct: tx.downgrade(),
        });
        {
            let mut lives = self.lives.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(l) = lives.get(live) {
                return Ok(l.clone());
            }
            lives.insert(live.to_string(), hls.clone());
        }
        let dropped = self.dropped.clone();
        self.media
            .tap(live, || {
                Some(Box::new(QueueSink {
                    tx: tx.clone(),
                    dropped: dropped.clone(),
                }))
            })
            .await?;
        drop(tx);
        tracing::info!(%live, "LL-HLS packaging started");
        tokio::spawn(self.clone().run(live.to_string(), hls.clone(), rx));
        Ok(hls)
    }

    /// Packages (and so records) every live on air that is to be recorded
    /// (all with `--record`, else those whose rules say `record`),
    /// checking the board and the rules every second; a live off air, or
    /// whose recording was turned off, has its file closed. Sweeps old
    /// recordings with `--record-keep-days`.
    pub async fn record_lives(
        self: Arc<Self>,
        board: Arc<crate::board::LiveBoard>,
        access: Arc<crate::access::Access>,
    ) {
        let Some(dir) = self.config.recordings_dir().map(|d| d.to_path_buf()) else {
            return;
        };
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut next_sweep = Instant::now();
        loop {
            tick.tick().await;
            let on_air = board.on_air();
            for state in &on_air {
                let wanted = self.config.record.is_some() || access.rules(&state.live).record;
                if !wanted {
                    if let Some(l) = self.get(&state.live) {
                        l.recording.store(false, Ordering::Relaxed);
                    }
                    continue;
                }
                match self.open(&state.live).await {
                    Ok(l) => l.recording.store(true, Ordering::Relaxed),
                    Err(e) => tracing::warn!(live = %state.live, "cannot record: {e}"),
                }
            }
            let packaged: Vec<(String, Arc<HlsLive>)> = self
                .lives
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (live, l) in packaged {
                if !on_air.iter().any(|s| s.live == live) {
                    l.recording.store(false, Ordering::Relaxed);
                }
            }
            if let Some(keep) = self.config.record_keep
                && Instant::now() >= next_sweep
            {
                next_sweep = Instant::now() + Duration::from_secs(600);
                let writing = self.recordings.writing();
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || super::recordings::sweep(&dir, keep, &writing));
            }
        }
    }

    /// Problems with a live's packaging or recording, for its state's
    /// `warnings`.
    pub fn warnings(&self, live: &str) -> Vec<String> {
        let mut w: Vec<String> = self.recordings.failure(live).into_iter().collect();
        if let Some(l) = self.get(live)
            && let Some(refused) = l.feed.lock().unwrap_or_else(|e| e.into_inner()).refused
        {
            let recorded = l.recording.load(Ordering::Relaxed);
            w.push(if recorded {
                format!("{refused}. It is recorded as WebM (VP8 and Opus), not MP4.")
            } else {
                refused.to_string()
            });
        }
        w
    }

    /// The live's state if it is being packaged.
    pub fn get(&self, live: &str) -> Option<Arc<HlsLive>> {
        self.lives
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(live)
            .cloned()
    }

    /// The muxer of one live: takes the tap's runs until nobody has asked
    /// for the live for a while.
    async fn run(self: Arc<Self>, live: String, hls: Arc<HlsLive>, mut rx: mpsc::Receiver<Queued>) {
        let mut last_keyframe_request: Option<Instant> = None;
        let mut recorder = self
            .config
            .recordings_dir()
            .map(|dir| Recorder::new(dir, &live, self.config.record_every));
        // VP8 lives are recorded as WebM (the fMP4 recorder gets nothing
        // from the feed for them).
        let mut webm = self
            .config
            .recordings_dir()
            .map(|dir| WebmRecorder::new(dir, &live, self.config.record_every));
        // A new muxer tries again: an earlier failure is forgotten.
        self.recordings.clear_failure(&live);
        loop {
            let next = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await;
            let (packets, rtmp) = match next {
                Ok(Some(Queued::Tap(p))) => (p, None),
                Ok(Some(Queued::Rtmp(f))) => (Vec::new(), Some(f)),
                Ok(None) => break,
                Err(_) => (Vec::new(), None),
            };
            let (ready, wants_keyframe) = {
                let mut feed = hls.feed.lock().unwrap_or_else(|e| e.into_inner());
                let wall = SystemTime::now();
                let mut ready = Vec::new();
                for p in &packets {
                    ready.extend(feed.push(p, wall));
                }
                if let Some(f) = &rtmp {
                    ready.extend(feed.push_rtmp(f, wall));
                }
                if let Some(r) = recorder.as_mut()
                    && hls.recording.load(Ordering::Relaxed)
                {
                    record(r, &feed, &ready, wall, &live);
                }
                (
                    !ready.is_empty(),
                    feed.wants_keyframe() && !packets.is_empty(),
                )
            };
            if let Some(r) = recorder.as_mut() {
                if !hls.recording.load(Ordering::Relaxed) {
                    r.close();
                }
                self.recordings.after(&live, r);
            }
            if ready {
                hls.version.send_modify(|v| *v += 1);
            }
            let webm_keyframe = match webm.as_mut() {
                Some(w) => {
                    let wants = if hls.recording.load(Ordering::Relaxed) {
                        record_webm(w, &packets, SystemTime::now(), &live)
                    } else {
                        let _ = w.close(SystemTime::now());
                        false
                    };
                    self.recordings.after(&live, w);
                    wants
                }
                None => false,
            };
            let wants_keyframe = wants_keyframe || webm_keyframe;
            let now = Instant::now();
            if wants_keyframe && last_keyframe_request.is_none_or(|t| now >= t + KEYFRAME_EVERY) {
                last_keyframe_request = Some(now);
                let _ = self.media.request_keyframes(&live).await;
            }
            let touched = *hls.touched.lock().unwrap_or_else(|e| e.into_inner());
            if now >= touched + self.config.idle {
                break;
            }
        }
        if let Some(r) = recorder.as_mut() {
            r.close();
            self.recordings.after(&live, r);
        }
        if let Some(w) = webm.as_mut() {
            let _ = w.close(SystemTime::now());
            self.recordings.after(&live, w);
        }
        // The tap first: a request meanwhile still finds this live (and
        // the next one opens a new one), never a new tap then removed.
        let _ = self.media.tap(&live, || None).await;
        self.lives
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&live);
        tracing::info!(%live, "LL-HLS packaging ended (nobody asked for it)");
    }
}

/// Appends the parts just made of the recorded rendition (the largest
/// picture) to the live's recording.
fn record(r: &mut Recorder, feed: &Feed, ready: &[(usize, Ready)], wall: SystemTime, live: &str) {
    let recorded = r
        .rendition()
        .and_then(|name| feed.renditions.iter().position(|x| x.name == name))
        .or_else(|| feed.largest());
    for (i, what) in ready {
        let Ready::Part { msn, part } = what else {
            continue;
        };
        if Some(*i) != recorded {
            continue;
        }
        let rendition = &feed.renditions[*i];
        let Some(seg) = rendition.segmenter.as_ref() else {
            continue;
        };
        if let Err(e) = r.on_part(&rendition.name, seg, *msn, *part, wall) {
            tracing::error!(
                %live,
                "recording stopped: {e}: check that the recording directory exists, that \
                 Vessel's user may write to it and that its disk has free space; the live \
                 goes on, and its next cast is recorded again"
            );
        }
    }
}

/// A live's packets to its WebM recording, which takes VP8 (H.264 goes
/// to `record`); no packets for a second writes out what is pending.
/// Returns whether it wants a keyframe.
fn record_webm(w: &mut WebmRecorder, packets: &[TapPacket], wall: SystemTime, live: &str) -> bool {
    let result = if packets.is_empty() {
        w.flush(wall)
    } else {
        packets.iter().try_for_each(|p| w.push(p, wall))
    };
    if let Err(e) = result {
        tracing::error!(%live, "WebM recording stopped: {e} (the live goes on)");
    }
    !packets.is_empty() && w.wants_keyframe(wall)
}
