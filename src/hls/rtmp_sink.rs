//! An RTMP publish's hand-off to its live's LL-HLS muxer: the frames as
//! they came in the FLV tags (original AAC, B-frames in decode order), into
//! the same bounded queue as the SFU tap's packets, under the same rule:
//! never wait, drop and count when the muxer is behind. The RTMP side holds
//! one whether or not the live is being packaged (by a viewer's request or
//! `--record`); frames go nowhere until it is.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::mpsc;

use super::hub::{Hub, Queued};
use super::rtmp_source::{RtmpFrame, RtmpInput};
use crate::rtmp::{AacConfig, AvcConfig};
use crate::sfu::PeerId;

/// One RTMP publish's way to its live's muxer.
pub struct RtmpSink {
    hub: Arc<Hub>,
    live: String,
    caster: PeerId,
    /// The muxer's queue, while it runs.
    tx: Option<mpsc::Sender<Queued>>,
    /// The sequence headers seen last: a muxer that starts (or a queue
    /// that dropped one) mid-publish needs them before any frame.
    video_config: Option<AvcConfig>,
    audio_config: Option<AacConfig>,
    /// The headers must be handed over (again) before the next frame.
    resend: bool,
}

impl Hub {
    /// The hand-off for the RTMP session `caster` publishing `live`.
    pub fn rtmp_sink(self: &Arc<Self>, live: &str, caster: PeerId) -> RtmpSink {
        RtmpSink {
            hub: self.clone(),
            live: live.to_string(),
            caster,
            tx: None,
            video_config: None,
            audio_config: None,
            resend: true,
        }
    }
}

impl RtmpSink {
    /// Hands one frame to the live's muxer if it runs; never waits.
    pub fn offer(&mut self, frame: RtmpFrame, arrival: Instant) {
        match &frame {
            RtmpFrame::VideoConfig(c) => self.video_config = Some(c.clone()),
            RtmpFrame::AudioConfig(c) => self.audio_config = Some(c.clone()),
            _ => {}
        }
        if self.tx.as_ref().is_none_or(mpsc::Sender::is_closed) {
            self.tx = None;
            let Some(hls) = self.hub.get(&self.live) else {
                return;
            };
            let Some(tx) = hls.direct.upgrade() else {
                return;
            };
            // From now on the feed takes this caster's media from here,
            // not from the tap (whose packets may be queued already).
            hls.feed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .expect_rtmp(self.caster);
            self.tx = Some(tx);
            self.resend = true;
        }
        if std::mem::take(&mut self.resend) {
            let headers = [
                self.video_config.clone().map(RtmpFrame::VideoConfig),
                self.audio_config.clone().map(RtmpFrame::AudioConfig),
            ];
            for h in headers.into_iter().flatten() {
                if h != frame {
                    self.send(h, arrival);
                }
            }
        }
        self.send(frame, arrival);
    }

    fn send(&mut self, frame: RtmpFrame, arrival: Instant) {
        let Some(tx) = &self.tx else { return };
        let input = RtmpInput {
            caster: self.caster,
            arrival,
            frame,
        };
        match tx.try_send(Queued::Rtmp(input)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.hub.dropped.fetch_add(1, Ordering::Relaxed);
                // It may have been a header.
                self.resend = true;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.tx = None,
        }
    }
}
