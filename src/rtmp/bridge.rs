//! The WebRTC side of an RTMP publish. Vessel casts the RTMP stream into
//! its live with a str0m session of its own, over the media port on this
//! machine, exactly as a WHIP caster would: the same access rules (the
//! stream key, the admission webhook, told `protocol: "rtmp"`), the same
//! replacement of an older caster, the same viewers, layers and counts.
//! str0m's sender side writes the RTCP sender reports an RTMP source cannot
//! (there is no browser), from one wall clock for both tracks, so viewers
//! keep audio and video in sync.
//!
//! Why a session rather than a door into the `Sfu`: everything that makes a
//! caster (claiming the live, going on air, the events and counts of the
//! pages, NACK repair towards viewers) then applies unchanged, and the
//! extra hop is one SRTP protect and unprotect per packet on loopback.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::access::Admission;
use crate::http::AppState;
use crate::media::JoinOptions;
use crate::sfu::{PeerId, Role};

/// Packets queued from the RTMP connection to its session, at most: a
/// second of a 6 Mbit/s stream. A full queue drops (and counts) rather
/// than hold the RTMP reader.
const QUEUE: usize = 1024;

/// How long the session may take to connect.
const CONNECT_WITHIN: Duration = Duration::from_secs(5);

/// One RTP packet for the live, with the wall-clock time it was captured
/// (both tracks on one clock: RTCP sender reports are made from it).
#[derive(Debug)]
pub enum Media {
    Video {
        payload: Vec<u8>,
        rtp_ts: u32,
        marker: bool,
        captured: Instant,
    },
    Audio {
        payload: Vec<u8>,
        rtp_ts: u32,
        captured: Instant,
    },
}

/// Why a publish was refused or ended.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("{0}")]
    Refused(String),
    #[error("the live's WebRTC session failed: {0}")]
    Failed(String),
}

/// The RTMP side's end of a publish: media in, and whether it still runs.
pub struct Publication {
    pub peer: PeerId,
    tx: mpsc::Sender<Media>,
    /// Packets dropped because the session fell behind.
    pub dropped: u64,
}

impl Publication {
    /// Hands one packet on; false once the session has ended (replaced by
    /// a newer caster, or failed).
    pub fn send(&mut self, media: Media) -> bool {
        match self.tx.try_send(media) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped += 1;
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Checks that `remote` may cast `live` with `key` and opens its session.
/// The connected session runs on its own task until the returned
/// [`Publication`] is dropped or the live takes another caster.
pub async fn publish(
    state: &AppState,
    live: &str,
    key: Option<&str>,
    remote: SocketAddr,
) -> Result<Publication, BridgeError> {
    let refused = |e: String| BridgeError::Refused(e);
    if !crate::http::valid_live_name(live) {
        return Err(refused(format!(
            "'{live}' is not a live name (letters, digits, '-' and '_', up to 64)"
        )));
    }
    if *state.shutdown.borrow() {
        return Err(refused("the server is shutting down".into()));
    }
    state
        .access
        .check_cast(live, key)
        .map_err(|e| refused(e.to_string()))?;
    let client = state.limits.client(remote.ip(), None);
    state
        .limits
        .join(&client)
        .map_err(|e| refused(e.to_string()))?;
    state
        .access
        .admit(&Admission {
            live,
            role: "cast",
            remote,
            forwarded_for: None,
            protocol: "rtmp",
        })
        .await
        .map_err(|e| refused(e.to_string()))?;

    let socket = UdpSocket::bind((IpAddr::V4(Ipv4Addr::LOCALHOST), 0))
        .await
        .map_err(|e| BridgeError::Failed(format!("no local UDP socket: {e}")))?;
    let local = socket
        .local_addr()
        .map_err(|e| BridgeError::Failed(e.to_string()))?;
    let mut rtc = RtcConfig::new()
        .clear_codecs()
        .enable_h264(true)
        .enable_opus(true, false)
        .set_rtp_mode(true)
        .build(Instant::now());
    let candidate =
        Candidate::host(local, "udp").map_err(|e| BridgeError::Failed(e.to_string()))?;
    rtc.add_local_candidate(candidate);
    let mut api = rtc.sdp_api();
    let audio = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let video = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, pending): (_, SdpPendingOffer) = api
        .apply()
        .ok_or_else(|| BridgeError::Failed("no offer".into()))?;
    let joined = state
        .media
        .join_with(
            live,
            Role::Cast,
            offer.to_sdp_string(),
            client,
            JoinOptions {
                replay_gop: true,
                ..JoinOptions::default()
            },
        )
        .await
        .map_err(|e| refused(e.to_string()))?;
    let peer = joined.peer;
    let answer = SdpAnswer::from_sdp_string(&joined.answer)
        .map_err(|e| BridgeError::Failed(format!("bad answer: {e}")))?;
    if let Err(e) = rtc.sdp_api().accept_answer(pending, answer) {
        let _ = state.media.leave(live, Role::Cast, peer).await;
        return Err(BridgeError::Failed(format!("answer refused: {e}")));
    }
    // The key may have been revoked meanwhile, as for WHIP.
    if let Err(denied) = state.access.check_cast(live, key) {
        let _ = state.media.leave(live, Role::Cast, peer).await;
        return Err(refused(denied.to_string()));
    }
    let (tx, rx) = mpsc::channel(QUEUE);
    let session = Session {
        rtc,
        socket,
        local,
        audio,
        video,
        seq: [1000, 1000],
    };
    let (state, live) = (state.clone(), live.to_string());
    tokio::spawn(async move {
        match session.run(rx).await {
            Ok(()) => tracing::info!(%live, peer = %peer.log(), "RTMP publish ended"),
            Err(e) => tracing::warn!(%live, peer = %peer.log(), "RTMP publish ended: {e}"),
        }
        let _ = state.media.leave(&live, Role::Cast, peer).await;
    });
    Ok(Publication {
        peer,
        tx,
        dropped: 0,
    })
}

struct Session {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    audio: Mid,
    video: Mid,
    /// Next sequence number, audio and video.
    seq: [u64; 2],
}

impl Session {
    async fn run(mut self, mut rx: mpsc::Receiver<Media>) -> Result<(), BridgeError> {
        let started = Instant::now();
        let mut connected = false;
        let mut buf = vec![0u8; 2048];
        // Packets that came before the session connected: the first
        // keyframe is among them.
        let mut early: Vec<Media> = Vec::new();
        loop {
            let mut closed = false;
            let timeout = self.flush(&mut connected, &mut closed)?;
            if closed || !self.rtc.is_alive() {
                return Err(BridgeError::Failed(
                    "the session was closed (a newer caster took the live?)".into(),
                ));
            }
            if connected && !early.is_empty() {
                for m in std::mem::take(&mut early) {
                    self.write(m)?;
                }
                continue;
            }
            if !connected && started.elapsed() > CONNECT_WITHIN {
                return Err(BridgeError::Failed(format!(
                    "did not connect to the media port within {CONNECT_WITHIN:?}"
                )));
            }
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => {
                    if let Ok((n, from)) = r {
                        self.receive(&buf[..n], from);
                    }
                }
                m = rx.recv() => match m {
                    None => return Ok(()),
                    Some(m) if connected => self.write(m)?,
                    // Bounded: a few seconds of a stream at most.
                    Some(m) => if early.len() < super::MAX_EARLY_PACKETS { early.push(m) },
                },
                _ = tokio::time::sleep_until(timeout.into()) => {
                    let _ = self.rtc.handle_input(Input::Timeout(Instant::now()));
                }
            }
        }
    }

    /// Sends what str0m has queued; returns when it next wants time.
    fn flush(&mut self, connected: &mut bool, closed: &mut bool) -> Result<Instant, BridgeError> {
        loop {
            match self
                .rtc
                .poll_output()
                .map_err(|e| BridgeError::Failed(e.to_string()))?
            {
                Output::Transmit(t) => {
                    let _ = self.socket.try_send_to(&t.contents, t.destination);
                }
                Output::Timeout(t) => return Ok(t),
                Output::Event(Event::Connected) => *connected = true,
                // The live ended this session (DTLS close_notify: a newer
                // caster took it), or the path to the media port is gone.
                Output::Event(
                    Event::Closed
                    | Event::IceConnectionStateChange(str0m::IceConnectionState::Disconnected),
                ) => *closed = true,
                // An RTMP encoder cannot be asked for a keyframe: viewers
                // start at the next one (hence "keyframe interval 1-2 s").
                Output::Event(_) => {}
            }
        }
    }

    fn receive(&mut self, buf: &[u8], source: SocketAddr) {
        let Ok(contents) = buf.try_into() else {
            return;
        };
        let _ = self.rtc.handle_input(Input::Receive(
            Instant::now(),
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.local,
                contents,
            },
        ));
    }

    /// The payload type the answer gave `codec` on `mid`.
    fn pt(&self, mid: Mid, codec: Codec) -> Option<Pt> {
        let remote = self.rtc.media(mid)?.remote_pts().to_vec();
        self.rtc
            .codec_config()
            .find(|p| remote.contains(&p.pt()) && p.spec().codec == codec)
            .map(|p| p.pt())
    }

    fn write(&mut self, m: Media) -> Result<(), BridgeError> {
        let (mid, codec, k) = match &m {
            Media::Video { .. } => (self.video, Codec::H264, 1),
            Media::Audio { .. } => (self.audio, Codec::Opus, 0),
        };
        let pt = self
            .pt(mid, codec)
            .ok_or_else(|| BridgeError::Failed(format!("the live did not accept {codec}")))?;
        let seq = self.seq[k];
        self.seq[k] += 1;
        let write = match m {
            Media::Video {
                payload,
                rtp_ts,
                marker,
                captured,
            } => RtpWrite::new(pt, seq.into(), rtp_ts, captured, payload)
                .marker(marker)
                .nackable(true),
            Media::Audio {
                payload,
                rtp_ts,
                captured,
            } => RtpWrite::new(pt, seq.into(), rtp_ts, captured, payload),
        };
        let mut api = self.rtc.direct_api();
        let tx = api
            .stream_tx_by_mid(mid, None)
            .ok_or_else(|| BridgeError::Failed("no send stream".into()))?;
        tx.write_rtp(write);
        Ok(())
    }
}
