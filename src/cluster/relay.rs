//! An edge's relay of one live from its origin node.
//!
//! Built on the session machinery, as the RTMP bridge is (`rtmp::bridge`):
//! two str0m sessions in one task.
//!
//! - **Upstream**, to the origin's media port: a viewer that receives
//!   every simulcast layer (`a=simulcast:recv q;h;f`, lowest first) and the
//!   audio. The origin's SFU serves it as a relay viewer
//!   (`sfu::setup::prepare_relay`), one layer per rid.
//! - **Downstream**, to this node's own media port over loopback: a caster
//!   that sends the same layers on the same rids, so this node's SFU sees a
//!   simulcast caster and chooses a layer per viewer as for any live.
//!
//! Why sessions and not a stream of packets over HTTP (as OME's OVT is):
//! each leg is a WebRTC leg, so loss and reordering between nodes are
//! repaired as on any other: the upstream session NACKs what it misses
//! (the origin keeps an RTX cache per viewer) and str0m hands the packets
//! on in order of arrival, reordered ones included, each with its own
//! sequence number (the downstream leg keeps them, so the edge SFU's own
//! reordering and NACK logic sees the origin's numbering). A keyframe
//! request of the edge's SFU (a PLI on rid `h`) goes upstream as a PLI on
//! rid `h`, and the origin asks its caster. A TCP stream would instead
//! stall every layer behind one lost segment.
//!
//! The cost is one extra SRTP unprotect + protect per packet on the edge
//! (once per live, not per viewer).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::{Codec, CodecSpec};
use str0m::media::{Direction, MediaKind, Mid, Pt, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};
use tokio::net::UdpSocket;

use crate::http::AppState;
use crate::media::JoinOptions;
use crate::sfu::{PeerId, Role};

/// The rids a relay receives and sends, lowest layer first.
pub const RIDS: [&str; 3] = ["q", "h", "f"];

/// How long the two legs may take to connect.
const CONNECT_WITHIN: Duration = Duration::from_secs(5);

/// The upstream leg sees nothing from the origin for this long: it is gone.
const SILENCE: Duration = Duration::from_secs(3);

/// Why a relay could not start, or ended.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The origin refused (or could not be reached): its words.
    #[error("the origin refused the relay: {0}")]
    Refused(String),
    #[error("this node refused the relay's cast: {0}")]
    Local(String),
    #[error("the relay failed: {0}")]
    Failed(String),
}

/// Signs a request (method, path) with the cluster secret.
pub type Signer = std::sync::Arc<dyn Fn(&str, &str) -> String + Send + Sync>;

/// Where to relay from, and how to ask.
pub struct Upstream {
    /// The origin node's base URL.
    pub url: String,
    /// The `X-Vessel-Cluster` header for `POST {path}`, made by the caller
    /// from the cluster secret (see `cluster::auth`).
    pub auth: Signer,
}

/// The path an edge posts its relay offer to on the origin.
pub fn relay_path(live: &str) -> String {
    format!("/cluster/relay/{live}")
}

/// A relay running: dropping it ends both legs.
pub struct Relay {
    /// The relay's cast session on this node.
    pub peer: PeerId,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::sync::watch::Receiver<bool>,
}

impl Relay {
    /// Ends the relay now.
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// Whether the relay has ended (the origin went away, the cast was
    /// replaced, or it failed).
    pub fn ended(&self) -> bool {
        *self.done.borrow()
    }

    /// Waits until the relay has ended.
    pub async fn wait(&mut self) {
        let _ = self.done.wait_for(|d| *d).await;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Opens the relay of `live` from `upstream` into this node's SFU.
pub async fn open(
    state: &AppState,
    http: &reqwest::Client,
    live: &str,
    upstream: &Upstream,
) -> Result<Relay, RelayError> {
    let failed = |e: String| RelayError::Failed(e);
    // Upstream: the offer to the origin.
    let mut up = RtcConfig::new().set_rtp_mode(true).build(Instant::now());
    let mut api = up.sdp_api();
    let up_audio = api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    let up_video = api.add_media(
        MediaKind::Video,
        Direction::RecvOnly,
        None,
        None,
        Some(simulcast(false)),
    );
    let (offer, pending): (SdpOffer, SdpPendingOffer) =
        api.apply().ok_or_else(|| failed("no offer".into()))?;
    let path = relay_path(live);
    let url = format!("{}{path}", upstream.url.trim_end_matches('/'));
    let response = http
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/sdp")
        .header(super::auth::HEADER, (upstream.auth)("POST", &path))
        .body(offer.to_sdp_string())
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| RelayError::Refused(format!("{url}: {e}")))?;
    let status = response.status();
    let response_location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response
        .text()
        .await
        .map_err(|e| RelayError::Refused(format!("{url}: {e}")))?;
    if !status.is_success() {
        return Err(RelayError::Refused(format!("{status}: {}", body.trim())));
    }
    // Where to end the origin's side (DELETE) when the relay ends, rather
    // than leave it to time out there.
    let location = response_location.filter(|l| l.starts_with(&path));
    let remote = origin_candidate(&body)
        .ok_or_else(|| RelayError::Refused("the answer has no UDP candidate".into()))?;
    let answer =
        SdpAnswer::from_sdp_string(&body).map_err(|e| failed(format!("bad answer: {e}")))?;
    up.sdp_api()
        .accept_answer(pending, answer)
        .map_err(|e| failed(format!("answer refused: {e}")))?;
    // The socket towards the origin, on the address that routes to it.
    let up_socket = bind_towards(remote).await.map_err(failed)?;
    let up_local = up_socket.local_addr().map_err(|e| failed(e.to_string()))?;
    up.add_local_candidate(Candidate::host(up_local, "udp").map_err(|e| failed(e.to_string()))?);

    // Downstream: a simulcast caster into this node's SFU, over loopback.
    let down_socket = UdpSocket::bind((IpAddr::V4(Ipv4Addr::LOCALHOST), 0))
        .await
        .map_err(|e| failed(format!("no local UDP socket: {e}")))?;
    let down_local = down_socket
        .local_addr()
        .map_err(|e| failed(e.to_string()))?;
    let mut down = RtcConfig::new().set_rtp_mode(true).build(Instant::now());
    down.add_local_candidate(
        Candidate::host(down_local, "udp").map_err(|e| failed(e.to_string()))?,
    );
    let mut api = down.sdp_api();
    let down_audio = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let down_video = api.add_media(
        MediaKind::Video,
        Direction::SendOnly,
        None,
        None,
        Some(simulcast(true)),
    );
    let (offer, pending) = api.apply().ok_or_else(|| failed("no offer".into()))?;
    let client = crate::limits::Client {
        ip: remote.ip(),
        exempt: true,
    };
    let joined = state
        .media
        .join_with(
            live,
            Role::Cast,
            offer.to_sdp_string(),
            client,
            JoinOptions::default(),
        )
        .await
        .map_err(|e| RelayError::Local(e.to_string()))?;
    let peer = joined.peer;
    // Before its media flows (and the cast goes on air): a relay's cast
    // claims nothing.
    if let Some(cluster) = &state.cluster {
        cluster.mark_relay_cast(peer, true);
    }
    let answer = SdpAnswer::from_sdp_string(&joined.answer)
        .map_err(|e| failed(format!("bad local answer: {e}")));
    let accepted = answer.and_then(|a| {
        down.sdp_api()
            .accept_answer(pending, a)
            .map_err(|e| failed(format!("local answer refused: {e}")))
    });
    if let Err(e) = accepted {
        let _ = state.media.leave(live, Role::Cast, peer).await;
        return Err(e);
    }

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let task = Task {
        up: Leg::new(up, up_socket, up_local),
        down: Leg::new(down, down_socket, down_local),
        up_audio,
        up_video,
        down_audio,
        down_video,
        pts: Vec::new(),
    };
    let (state, live) = (state.clone(), live.to_string());
    let end_upstream = location.map(|l| {
        let url = format!("{}{l}", upstream.url.trim_end_matches('/'));
        (http.clone(), url, l, upstream.auth.clone())
    });
    tokio::spawn(async move {
        match task.run(stop_rx).await {
            Ok(()) => tracing::info!(%live, peer = %peer.log(), "relay ended"),
            Err(e) => tracing::warn!(%live, peer = %peer.log(), "relay ended: {e}"),
        }
        if let Some((http, url, path, auth)) = end_upstream {
            let _ = http
                .delete(url)
                .header(super::auth::HEADER, auth("DELETE", &path))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
        }
        let _ = state.media.leave(&live, Role::Cast, peer).await;
        if let Some(cluster) = &state.cluster {
            cluster.mark_relay_cast(peer, false);
        }
        let _ = done_tx.send(true);
    });
    Ok(Relay {
        peer,
        stop: Some(stop_tx),
        done: done_rx,
    })
}

/// The relay's simulcast layers, as sent (downstream) or received.
fn simulcast(send: bool) -> Simulcast {
    let layers: Vec<SimulcastLayer> = RIDS.iter().map(|r| SimulcastLayer::new(r)).collect();
    if send {
        Simulcast {
            send: layers,
            recv: vec![],
        }
    } else {
        Simulcast {
            send: vec![],
            recv: layers,
        }
    }
}

/// The origin's first UDP host candidate in its answer.
fn origin_candidate(answer: &str) -> Option<SocketAddr> {
    answer
        .lines()
        .filter_map(|l| l.trim().strip_prefix("a="))
        .filter(|l| l.starts_with("candidate:"))
        .filter_map(|l| Candidate::from_sdp_string(l).ok())
        .find(|c| c.proto() == Protocol::Udp)
        .map(|c| c.addr())
}

/// A UDP socket on the local address that routes to `remote` (connecting
/// a datagram socket only picks the route; nothing is sent).
async fn bind_towards(remote: SocketAddr) -> Result<UdpSocket, String> {
    let any: SocketAddr = match remote {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let probe = UdpSocket::bind(any)
        .await
        .map_err(|e| format!("no UDP socket: {e}"))?;
    probe
        .connect(remote)
        .await
        .map_err(|e| format!("no route to the origin's media port {remote}: {e}"))?;
    let ip = probe.local_addr().map_err(|e| e.to_string())?.ip();
    UdpSocket::bind((ip, 0))
        .await
        .map_err(|e| format!("no UDP socket on {ip}: {e}"))
}

/// One str0m session and its socket.
struct Leg {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    connected: bool,
    closed: bool,
    last_heard: Instant,
}

impl Leg {
    fn new(rtc: Rtc, socket: UdpSocket, local: SocketAddr) -> Self {
        Self {
            rtc,
            socket,
            local,
            connected: false,
            closed: false,
            last_heard: Instant::now(),
        }
    }

    fn receive(&mut self, buf: &[u8], source: SocketAddr) {
        let Ok(contents) = buf.try_into() else {
            return;
        };
        self.last_heard = Instant::now();
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
}

/// An event of one leg the other leg acts on.
// Not boxed: these pass through one reused Vec, and a box would cost an
// allocation per relayed packet.
#[allow(clippy::large_enum_variant)]
enum Moved {
    /// Upstream: a packet of the origin's.
    Packet(str0m::rtp::RtpPacket),
    /// Downstream: the edge's SFU wants a keyframe of a layer.
    Keyframe(Option<Rid>, str0m::media::KeyframeRequestKind),
}

struct Task {
    up: Leg,
    down: Leg,
    up_audio: Mid,
    up_video: Mid,
    down_audio: Mid,
    down_video: Mid,
    /// Upstream payload type → downstream one, resolved once each.
    pts: Vec<(Pt, Option<Pt>)>,
}

impl Task {
    async fn run(mut self, mut stop: tokio::sync::oneshot::Receiver<()>) -> Result<(), RelayError> {
        let started = Instant::now();
        let (mut up_buf, mut down_buf) = (vec![0u8; 2048], vec![0u8; 2048]);
        let mut moved = Vec::new();
        loop {
            let up_timeout = drain(&mut self.up, &mut moved)?;
            let down_timeout = drain(&mut self.down, &mut moved)?;
            if !moved.is_empty() {
                for m in moved.drain(..) {
                    self.carry(m);
                }
                continue;
            }
            if self.up.closed {
                return Err(RelayError::Failed("the origin closed the relay".into()));
            }
            if self.down.closed {
                // A newer caster (or relay) took the live on this node.
                return Ok(());
            }
            let now = Instant::now();
            let both = self.up.connected && self.down.connected;
            if !both && now > started + CONNECT_WITHIN {
                return Err(RelayError::Failed(format!(
                    "did not connect within {CONNECT_WITHIN:?} (origin leg: {}, local leg: {})",
                    self.up.connected, self.down.connected
                )));
            }
            if self.up.connected && now > self.up.last_heard + SILENCE {
                return Err(RelayError::Failed(format!(
                    "nothing from the origin for {SILENCE:?}"
                )));
            }
            let timeout = up_timeout
                .min(down_timeout)
                .min(now + Duration::from_secs(1));
            tokio::select! {
                _ = &mut stop => return Ok(()),
                r = self.up.socket.recv_from(&mut up_buf) => {
                    if let Ok((n, from)) = r {
                        self.up.receive(&up_buf[..n], from);
                    }
                }
                r = self.down.socket.recv_from(&mut down_buf) => {
                    if let Ok((n, from)) = r {
                        self.down.receive(&down_buf[..n], from);
                    }
                }
                _ = tokio::time::sleep_until(timeout.into()) => {
                    let now = Instant::now();
                    let _ = self.up.rtc.handle_input(Input::Timeout(now));
                    let _ = self.down.rtc.handle_input(Input::Timeout(now));
                }
            }
        }
    }

    /// Hands one leg's event to the other.
    fn carry(&mut self, m: Moved) {
        match m {
            Moved::Packet(p) => self.forward(p),
            Moved::Keyframe(rid, kind) => {
                if let Some(rx) = self
                    .up
                    .rtc
                    .direct_api()
                    .stream_rx_by_mid(self.up_video, rid)
                {
                    rx.request_keyframe(kind);
                }
            }
        }
    }

    /// Writes an origin packet on the same track and rid downstream.
    fn forward(&mut self, p: str0m::rtp::RtpPacket) {
        if !self.down.connected || p.payload.is_empty() {
            return;
        }
        let (mid, rid, video) = {
            let mut api = self.up.rtc.direct_api();
            let Some(rx) = api.stream_rx(&p.header.ssrc) else {
                return;
            };
            (rx.mid(), rx.rid(), rx.mid() == self.up_video)
        };
        if mid != self.up_video && mid != self.up_audio {
            return;
        }
        let Some(pt) = self.pt_for(p.header.payload_type, video) else {
            return;
        };
        let down_mid = if video {
            self.down_video
        } else {
            self.down_audio
        };
        let rid = if video { rid } else { None };
        let write = RtpWrite::new(pt, p.seq_no, p.header.timestamp, p.timestamp, p.payload)
            .marker(p.header.marker)
            .nackable(video);
        if let Some(tx) = self.down.rtc.direct_api().stream_tx_by_mid(down_mid, rid) {
            tx.write_rtp(write);
        }
    }

    /// The downstream payload type for upstream payload type `pt`: the same
    /// codec (for H.264, the same packetization mode and profile if the
    /// local answer has it, else any of the mode).
    fn pt_for(&mut self, pt: Pt, video: bool) -> Option<Pt> {
        if let Some((_, out)) = self.pts.iter().find(|(p, _)| *p == pt) {
            return *out;
        }
        let spec = self
            .up
            .rtc
            .codec_config()
            .params()
            .iter()
            .find(|p| p.pt() == pt)
            .map(|p| p.spec());
        let mid = if video {
            self.down_video
        } else {
            self.down_audio
        };
        let out = spec.and_then(|spec| matching_pt(&self.down.rtc, mid, &spec));
        if out.is_none() {
            tracing::warn!(
                ?spec,
                "the relay's local leg did not negotiate the origin's codec"
            );
        }
        self.pts.push((pt, out));
        out
    }
}

fn matching_pt(rtc: &Rtc, mid: Mid, spec: &CodecSpec) -> Option<Pt> {
    let remote = rtc.media(mid)?.remote_pts().to_vec();
    let params: Vec<_> = rtc
        .codec_config()
        .params()
        .iter()
        .filter(|p| remote.contains(&p.pt()))
        .collect();
    params
        .iter()
        .find(|p| crate::sfu::codec::can_carry(spec, &p.spec()))
        .or_else(|| {
            params.iter().find(|p| {
                let s = p.spec();
                s.codec == spec.codec
                    && s.clock_rate == spec.clock_rate
                    && (spec.codec != Codec::H264
                        || s.format.packetization_mode.unwrap_or(0)
                            == spec.format.packetization_mode.unwrap_or(0))
            })
        })
        .map(|p| p.pt())
}

/// Drains a leg's output, sending what it transmits, noting its state and
/// what the other leg must act on; returns when it next wants time.
fn drain(leg: &mut Leg, moved: &mut Vec<Moved>) -> Result<Instant, RelayError> {
    loop {
        let out = leg
            .rtc
            .poll_output()
            .map_err(|e| RelayError::Failed(e.to_string()))?;
        match out {
            Output::Transmit(t) => {
                let _ = leg.socket.try_send_to(&t.contents, t.destination);
            }
            Output::Timeout(t) => return Ok(t),
            Output::Event(Event::Connected) => leg.connected = true,
            Output::Event(
                Event::Closed | Event::IceConnectionStateChange(IceConnectionState::Disconnected),
            ) => leg.closed = true,
            Output::Event(Event::RtpPacket(p)) => moved.push(Moved::Packet(p)),
            Output::Event(Event::KeyframeRequest(r)) => moved.push(Moved::Keyframe(r.rid, r.kind)),
            Output::Event(_) => {}
        }
    }
}
