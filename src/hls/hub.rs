//! The IO side of LL-HLS: one muxer task per live that someone asks for,
//! fed by the SFU's tap through a bounded queue (it drops and counts rather
//! than slow the media thread), and the shared state HTTP requests read and
//! block on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::{mpsc, watch};

use super::feed::Feed;
use super::record::Recorder;
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
}

/// One live's LL-HLS state.
pub struct HlsLive {
    pub feed: Mutex<Feed>,
    /// Bumped whenever a part or segment is ready: blocked requests wait
    /// on it.
    pub version: watch::Sender<u64>,
    touched: Mutex<Instant>,
    /// Recorded (`--record`): set while the live is on air.
    recording: std::sync::atomic::AtomicBool,
}

impl HlsLive {
    /// Someone asked for this live: it stays packaged.
    pub fn touch(&self) {
        *self.touched.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }
}

struct QueueSink {
    tx: mpsc::Sender<Vec<TapPacket>>,
    dropped: Arc<AtomicU64>,
}

impl TapSink for QueueSink {
    fn offer(&mut self, packets: Vec<TapPacket>) -> bool {
        match self.tx.try_send(packets) {
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
            config,
            media,
            lives: Mutex::new(HashMap::new()),
            key: rand::random(),
            dropped: Arc::new(AtomicU64::new(0)),
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
            touched: Mutex::new(Instant::now()),
            recording: std::sync::atomic::AtomicBool::new(false),
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

    /// With `--record`: packages (and so records) every live on air,
    /// checking the board every second.
    pub async fn record_lives(self: Arc<Self>, board: Arc<crate::board::LiveBoard>) {
        if self.config.record.is_none() {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            for state in board.on_air() {
                match self.open(&state.live).await {
                    Ok(l) => l.recording.store(true, Ordering::Relaxed),
                    Err(e) => tracing::warn!(live = %state.live, "cannot record: {e}"),
                }
            }
        }
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
    async fn run(
        self: Arc<Self>,
        live: String,
        hls: Arc<HlsLive>,
        mut rx: mpsc::Receiver<Vec<TapPacket>>,
    ) {
        let mut last_keyframe_request: Option<Instant> = None;
        let mut recorder = self
            .config
            .record
            .as_deref()
            .map(|dir| Recorder::new(dir, &live, self.config.record_every));
        // VP8 lives are recorded as WebM (the fMP4 recorder gets nothing
        // from the feed for them).
        let mut webm = self
            .config
            .record
            .as_deref()
            .map(|dir| WebmRecorder::new(dir, &live, self.config.record_every));
        loop {
            let next = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await;
            let packets = match next {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(_) => Vec::new(),
            };
            let (ready, wants_keyframe) = {
                let mut feed = hls.feed.lock().unwrap_or_else(|e| e.into_inner());
                let wall = SystemTime::now();
                let mut ready = Vec::new();
                for p in &packets {
                    ready.extend(feed.push(p, wall));
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
            if ready {
                hls.version.send_modify(|v| *v += 1);
            }
            let webm_keyframe = match webm.as_mut() {
                Some(w) if hls.recording.load(Ordering::Relaxed) => {
                    record_webm(w, &packets, SystemTime::now(), &live)
                }
                _ => false,
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
        if let Some(w) = webm.as_mut() {
            let _ = w.close(SystemTime::now());
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
            tracing::error!(%live, "recording stopped: {e} (the live goes on)");
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
