//! A peer: one WebRTC session (str0m `Rtc`) in the role of caster or viewer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::Rtc;
use str0m::format::CodecSpec;
use str0m::media::{ExtensionValues, MediaKind, Mid, Pt, Rid};
use str0m::rtp::{ExtensionMap, RtpWrite, Ssrc};

use super::PeerId;
use super::codec::{can_carry, can_play};
use super::direct::Producer;
use super::forward::{MediaPacket, TrackRewriter, Verdict};
use super::lateness::{Gate, Lateness};
use super::layer::LayerSelector;
use super::simulcast::Layers;

pub(super) struct Peer {
    pub id: PeerId,
    /// The live (a room's name, for a member) the session was opened for.
    pub live: Arc<str>,
    pub rtc: Rtc,
    pub ufrag: String,
    /// Remote addresses seen for this peer, for demultiplexing.
    pub addrs: Vec<SocketAddr>,
    /// ICE + DTLS are up. Until then, `connect_by` bounds the wait.
    pub connected: bool,
    pub connect_by: Instant,
    /// When it connected: the load estimate counts a session as costing
    /// what a connected one does only after a full load window of it.
    pub connected_at: Option<Instant>,
    /// When it last sent anything.
    pub last_heard: Instant,
    /// The key of this peer in the SFU's timer set.
    pub timer: Option<Instant>,
    /// Written to since it was last polled: queued for [`super::Sfu::process`].
    pub dirty: bool,
    /// What the session was opened as: a caster (WHIP, a mediasoup
    /// producer transport) or a viewer (WHEP, a consumer transport, a
    /// room member).
    pub role: super::Role,
    /// What it casts: always for a caster session, while it publishes for a
    /// room member.
    pub cast: Option<Cast>,
    /// What it watches, one per live: one for a viewer session, one per
    /// other publisher for a room member.
    pub plays: Vec<Play>,
    /// The (minimum, desired) bitrates last given to str0m's BWE, all
    /// video tracks together.
    pub bwe: (u64, u64),
    /// Its bandwidth estimate has been started from what the live needs
    /// (see `Sfu::choose_layer`), or str0m has measured one.
    pub bwe_seeded: bool,
    pub stats_seen: super::stats::StatsSeen,
    /// Remote candidates given to str0m (bounded: ICE-lite needs none).
    pub candidates: usize,
    /// Set up without SDP (mediasoup-client).
    pub direct: Option<DirectPeer>,
    /// Set up by server offers (SkyWay SFU rooms).
    pub member: Option<Box<super::member::Negotiation>>,
    /// Tests: the next poll of this peer panics, as a bug in str0m or its
    /// DTLS stack would.
    #[cfg(test)]
    pub poisoned: bool,
}

/// What a session set up without SDP still has to learn.
pub(super) struct DirectPeer {
    /// The client never says its ICE username fragment: take it from its
    /// first authenticated binding request.
    pub learn_ufrag: bool,
    /// `connect*Transport` gave the client's DTLS fingerprint (once only).
    pub fingerprint_set: bool,
    /// The header-extension ids the session was built with (a caster's
    /// first producer fixed them; later ones must keep them).
    pub exts: ExtensionMap,
}

impl Peer {
    pub fn next_timeout(&self, rtc_timeout: Instant) -> Instant {
        if !self.connected {
            rtc_timeout.min(self.connect_by)
        } else if self.cast.is_some() {
            rtc_timeout.min(self.last_heard + super::CASTER_SILENCE)
        } else {
            rtc_timeout
        }
    }

    /// A connected caster that has sent nothing (media, RTCP, ICE) for
    /// [`super::CASTER_SILENCE`]: its process or link is gone.
    pub fn silent(&self, now: Instant) -> bool {
        self.connected && self.cast.is_some() && now >= self.last_heard + super::CASTER_SILENCE
    }

    /// A trickled candidate, up to [`super::MAX_REMOTE_CANDIDATES`] (ICE-lite
    /// learns addresses from the client's checks; str0m is told all the same).
    pub fn add_remote_candidate(&mut self, c: str0m::Candidate) {
        if self.candidates < super::MAX_REMOTE_CANDIDATES {
            self.candidates += 1;
            self.rtc.add_remote_candidate(c);
        }
    }

    /// What it watches of `live`.
    pub fn play_of(&self, live: &str) -> Option<&Play> {
        self.plays.iter().find(|p| same_live(&p.live, live))
    }

    /// Its caster session is `live`'s caster (a member's cast may have
    /// been taken over).
    pub fn casts(&self, live: &str) -> bool {
        self.cast.as_ref().is_some_and(|c| same_live(&c.live, live))
    }
}

pub(super) fn same_live(a: &Arc<str>, b: &str) -> bool {
    **a == *b
}

/// What a caster sends.
pub(super) struct Cast {
    /// The live it casts.
    pub live: Arc<str>,
    /// When the session began: of two casters of a live, the newer wins.
    pub since: Instant,
    /// Its media flowed and the other shards were told it took the live.
    pub announced: bool,
    /// Incoming streams seen so far, by SSRC.
    streams: Vec<(Ssrc, MediaKind, Option<Rid>)>,
    /// The caster's payload types resolved to codecs (and whether the
    /// payload type is the codec's RED wrapping).
    codecs: Vec<(Pt, Option<(CodecSpec, bool)>)>,
    /// Its video layers (one without simulcast).
    pub video: Layers,
    /// What it sends, as mediasoup-client consumers ask for it.
    pub producers: Vec<Producer>,
    /// Its current group of pictures, for a caster that cannot make a
    /// keyframe when asked (RTMP): new viewers start from it.
    pub gop: Option<super::gop::GopCache>,
}

impl Cast {
    pub fn new(live: Arc<str>, keyframe_interval: std::time::Duration, since: Instant) -> Self {
        Self {
            live,
            since,
            announced: false,
            streams: Vec::new(),
            codecs: Vec::new(),
            video: Layers::new(keyframe_interval),
            producers: Vec::new(),
            gop: None,
        }
    }

    /// Kind and rid of an incoming stream, looked up once per SSRC.
    pub fn stream(&mut self, rtc: &mut Rtc, ssrc: Ssrc) -> Option<(MediaKind, Option<Rid>)> {
        if let Some((_, kind, rid)) = self.streams.iter().find(|(s, _, _)| *s == ssrc) {
            return Some((*kind, *rid));
        }
        let (mid, rid) = {
            let mut api = rtc.direct_api();
            let rx = api.stream_rx(&ssrc)?;
            (rx.mid(), rx.rid())
        };
        let kind = rtc.media(mid)?.kind();
        self.streams.push((ssrc, kind, rid));
        Some((kind, rid))
    }

    /// The codec of payload type `pt`, and whether it is RED-wrapped.
    pub fn codec(&mut self, rtc: &Rtc, pt: Pt) -> Option<(CodecSpec, bool)> {
        if let Some((_, spec)) = self.codecs.iter().find(|(p, _)| *p == pt) {
            return *spec;
        }
        let spec = rtc.codec_config().params().iter().find_map(|p| {
            if p.pt() == pt {
                Some((p.spec(), false))
            } else if p.red() == Some(pt) {
                Some((p.spec(), true))
            } else {
                None
            }
        });
        self.codecs.push((pt, spec));
        spec
    }
}

/// What a viewer receives of one live: at most one audio and one video
/// track, which live as long as the viewer session, whoever casts.
pub(super) struct Play {
    pub live: Arc<str>,
    pub audio: Option<OutTrack>,
    pub video: Option<OutTrack>,
    /// The next mid to give a consumer (mediasoup-client takes the
    /// server's; WHEP viewers have theirs from the SDP).
    pub next_mid: u32,
    /// A relay to another node takes every video layer, each on its own
    /// rid, lowest first (and `video` is `None`).
    pub relay: Vec<(Rid, OutTrack)>,
}

impl Play {
    pub fn new(live: Arc<str>) -> Self {
        Self {
            live,
            audio: None,
            video: None,
            next_mid: 0,
            relay: Vec::new(),
        }
    }

    /// The tracks packets of `kind` may go out on: one, or for video to a
    /// relay, one per layer (each takes only its own layer's packets).
    pub fn tracks(&mut self, kind: MediaKind) -> impl Iterator<Item = &mut OutTrack> {
        let (one, layers) = match kind {
            MediaKind::Audio => (self.audio.as_mut(), &mut [][..]),
            MediaKind::Video => (self.video.as_mut(), &mut self.relay[..]),
        };
        one.into_iter().chain(layers.iter_mut().map(|(_, t)| t))
    }

    /// Every video track: the one, or a relay's per layer.
    pub fn video_tracks(&self) -> impl Iterator<Item = &OutTrack> {
        self.video.iter().chain(self.relay.iter().map(|(_, t)| t))
    }
}

/// One caster packet, prepared once and sent to every viewer (on every
/// shard: cloning shares the payload).
#[derive(Clone)]
pub struct Forward {
    pub kind: MediaKind,
    /// The simulcast layer's rid, when the caster names its layers.
    pub rid: Option<Rid>,
    pub media: MediaPacket,
    pub spec: CodecSpec,
    pub pt: Pt,
    pub marker: bool,
    pub exts: ExtensionValues,
    pub payload: Arc<[u8]>,
    /// The payload is RED-wrapped (RFC 2198).
    pub red: bool,
    /// For a RED-wrapped packet, its primary block: what a viewer without
    /// RED gets.
    pub primary: Option<Arc<[u8]>>,
}

/// The longest a replayed group of pictures may take to drain before the
/// viewer counts as behind.
const MAX_REPLAY_GRACE: Duration = Duration::from_secs(5);

pub(super) struct OutTrack {
    pub mid: Mid,
    pub ssrc: Ssrc,
    rewriter: TrackRewriter,
    /// Video: which caster layer this viewer should get.
    pub selector: LayerSelector,
    /// Video: the layer (SSRC) chosen; spliced in at its next keyframe.
    pub target: Option<u32>,
    /// Video: the link is full; stop the current layer while the chosen
    /// (lower) one's keyframe is on its way.
    pub pause_current: bool,
    /// Video: the (minimum, desired) bitrates last given to str0m's BWE.
    pub bwe: (u64, u64),
    /// The viewer's payload type for a caster's, resolved once per caster.
    pts: Vec<(PeerId, Pt, Option<OutPt>)>,
    /// The one payload type of a consumer made without SDP. Negotiated by
    /// SDP, the allowed ones are the media's remote ones; a direct media
    /// has none there.
    pub direct_pt: Option<Pt>,
    /// How far behind the viewer is.
    lateness: Lateness,
    /// Video: the group of pictures last replayed to it (source and first
    /// sequence number), never replayed twice.
    replayed: Option<(super::forward::SourceId, u64)>,
}

/// What became of one packet for one viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Queued in the viewer's session.
    Queued,
    /// Not for this viewer (another layer, before a splice point, …).
    Dropped,
    /// The viewer waits for a keyframe of this packet's layer.
    NeedKeyframe,
    /// Dropped because the viewer is behind; `started` on the first.
    Late { started: bool },
}

impl OutTrack {
    pub fn new(mid: Mid, ssrc: Ssrc, kind: MediaKind) -> Self {
        let rewriter = match kind {
            MediaKind::Audio => TrackRewriter::audio(),
            MediaKind::Video => TrackRewriter::video(),
        };
        Self {
            mid,
            ssrc,
            rewriter,
            selector: LayerSelector::default(),
            target: None,
            pause_current: false,
            bwe: (0, 0),
            pts: Vec::new(),
            direct_pt: None,
            lateness: Lateness::default(),
            replayed: None,
        }
    }

    /// Video: waits to be spliced into `layer` (an SSRC), which the group
    /// of pictures `group` of that layer could do now.
    pub fn waits_for(&self, group: &[Forward]) -> bool {
        let Some(first) = group.first() else {
            return false;
        };
        let source = first.media.source;
        self.target == Some(source.ssrc)
            && self.source() != Some(source)
            && self.replayed != Some((source, first.media.seq))
            && first.media.keyframe
    }

    /// Video: splices in a layer from its kept group of pictures
    /// (see [`super::gop`]): the whole group queued at once, its frames'
    /// timestamps squeezed so that the viewer catches up to the live edge
    /// as fast as it receives them. Returns the packets queued.
    pub fn replay(&mut self, rtc: &mut Rtc, group: &[Forward], now: Instant) -> usize {
        let Some(first) = group.first() else {
            return 0;
        };
        self.replayed = Some((first.media.source, first.media.seq));
        let mut queued = 0;
        for (f, adjust) in group.iter().zip(super::gop::squeeze(group)) {
            if let Verdict::Send(_) = self.write(rtc, f, adjust, now) {
                self.lateness.queued(f.media.keyframe, f.media.ts, now);
                queued += 1;
            }
        }
        // The backlog drains at the pacer's rate while live packets queue
        // behind it: not late, up to a bound.
        let grace = (super::gop::span(group) + Duration::from_secs(1)).min(MAX_REPLAY_GRACE);
        self.lateness.grace(now + grace);
        queued
    }

    /// The caster stream this track is fed from now.
    pub fn source(&self) -> Option<super::forward::SourceId> {
        self.rewriter.source()
    }

    /// Rewrites `f` for this viewer and queues it in the viewer's `Rtc`,
    /// unless the viewer is too far behind.
    pub fn send(&mut self, rtc: &mut Rtc, f: &Forward, now: Instant) -> Sent {
        // Another layer's packet is none of this track's business: it
        // neither costs a look at the queue nor counts for lateness (whose
        // frame-by-frame dropping follows this track's own frames).
        if !self.carries(f) {
            return Sent::Dropped;
        }
        // str0m samples its queue at each pacer update; a stale sample
        // that still holds packets means the pacer has not run since, so
        // they are at least as late as it says.
        let oldest = rtc
            .direct_api()
            .stream_tx(&self.ssrc)
            .and_then(|s| s.queue_info())
            .filter(|q| q.packet_count() > 0)
            .and_then(|q| q.first_unsent());
        match self.lateness.check(oldest, now, f.media.ts) {
            Gate::Pass => {}
            Gate::Drop { started } => {
                if started {
                    self.rewriter.resync();
                }
                return Sent::Late { started };
            }
        }
        match self.write(rtc, f, 0, f.media.arrival) {
            Verdict::Send(_) => {
                self.lateness.queued(f.media.keyframe, f.media.ts, now);
                Sent::Queued
            }
            Verdict::Drop => Sent::Dropped,
            Verdict::NeedKeyframe => Sent::NeedKeyframe,
        }
    }

    /// Rewrites and queues `f`, its timestamp moved on by `ts_adjust`,
    /// with `wallclock` as its capture time for str0m's sender reports.
    fn write(&mut self, rtc: &mut Rtc, f: &Forward, ts_adjust: u32, wallclock: Instant) -> Verdict {
        if !self.carries(f) {
            return Verdict::Drop;
        }
        let Some(out) = self.pt_for(rtc, f) else {
            return Verdict::Drop;
        };
        let payload = match (out.unwrap_red, &f.primary) {
            (false, _) => f.payload.clone(),
            (true, Some(primary)) => primary.clone(),
            (true, None) => return Verdict::Drop,
        };
        let verdict = self.rewriter.rewrite(&f.media);
        if let Verdict::Send(r) = verdict {
            let ts = r.ts.wrapping_add(ts_adjust);
            let mut write = RtpWrite::new(out.pt, r.seq.into(), ts, wallclock, payload)
                .marker(f.marker)
                .ext_vals(f.exts.clone())
                .nackable(f.kind == MediaKind::Video);
            if let Some(patch) = r.vp8_patch {
                write = write.vp8_patch(patch);
            }
            if let Some(stream) = rtc.direct_api().stream_tx(&self.ssrc) {
                stream.write_rtp(write);
            }
        }
        verdict
    }

    /// Video comes in layers: the current one flows until the chosen one
    /// can be spliced in; any other is not for this track.
    fn carries(&self, f: &Forward) -> bool {
        f.kind != MediaKind::Video
            || self.target == Some(f.media.source.ssrc)
            || (self.rewriter.source() == Some(f.media.source) && !self.pause_current)
    }

    fn pt_for(&mut self, rtc: &Rtc, f: &Forward) -> Option<OutPt> {
        let caster = f.media.source.peer;
        if let Some((_, _, out)) = self
            .pts
            .iter()
            .find(|(p, pt, _)| *p == caster && *pt == f.pt)
        {
            return *out;
        }
        // Forget the payload types of casters gone by.
        self.pts.retain(|(p, _, _)| *p == caster);
        let remote = match self.direct_pt {
            Some(pt) => vec![pt],
            None => rtc
                .media(self.mid)
                .map(|m| m.remote_pts().to_vec())
                .unwrap_or_default(),
        };
        // The exact match first; for H.264 any profile of the same mode
        // otherwise (see `can_play`).
        let params = rtc
            .codec_config()
            .find(|p| remote.contains(&p.pt()) && can_carry(&f.spec, &p.spec()))
            .or_else(|| {
                rtc.codec_config()
                    .find(|p| remote.contains(&p.pt()) && can_play(&f.spec, &p.spec()))
            });
        let out = params.map(|p| {
            let red = (f.red).then(|| p.red()).flatten();
            OutPt {
                pt: red.unwrap_or(p.pt()),
                unwrap_red: f.red && red.is_none(),
            }
        });
        if out.is_none() {
            tracing::warn!(codec = ?f.spec.codec, "viewer did not negotiate the caster's codec");
        }
        self.pts.push((caster, f.pt, out));
        out
    }
}

/// The payload type a viewer gets a caster's packets on.
#[derive(Debug, Clone, Copy)]
struct OutPt {
    pt: Pt,
    /// The caster sends RED but this viewer did not negotiate it: send the
    /// primary block alone.
    unwrap_red: bool,
}
