//! Sessions set up without SDP, the way mediasoup-client sets them up: the
//! client is told our ICE and DTLS parameters, tells us its RTP parameters,
//! and str0m's direct API declares the media on both sides.
//!
//! Two things make this differ from a WHIP/WHEP session:
//! - A caster's `Rtc` can only be built at its first `produce`: the browser
//!   picks the header-extension ids it writes, and str0m fixes the map when
//!   the `Rtc` is built. Until then the transport is a [`PendingCast`] that
//!   holds the DTLS certificate (its fingerprint was already handed out) and
//!   buffers early STUN.
//! - The client never says its ICE username fragment: it is learnt from the
//!   first binding request that passes the integrity check.

use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use str0m::bwe::Bitrate;
use str0m::config::{DtlsCert, Fingerprint};
use str0m::format::{CodecConfig, CodecSpec, PayloadParams};
use str0m::ice::StunMessage;
use str0m::media::{MediaKind, Mid, Pt, Rid};
use str0m::net::Protocol;
use str0m::rtp::{Extension, ExtensionMap};
use str0m::{Candidate, IceCreds, Input, Output, Rtc, RtcConfig};

use super::codec::can_carry;
use super::peer::{Cast, OutTrack, Peer, PeerRole, Play};
use super::{PeerId, RTX_CACHE_AGE, Role, STATS_INTERVAL, Sfu, SfuEvent, new_ice_creds};

/// Datagrams kept for a caster transport whose `Rtc` is not built yet. The
/// browser starts ICE in the same breath as it sends `produce`; without
/// these, the first checks are lost and STUN's retransmit costs ~0.5 s.
const MAX_EARLY: usize = 16;

/// Longest mid and rid str0m takes (its ids are fixed-size).
const MAX_MID: usize = 16;
const MAX_RID: usize = 8;

/// A transport as the client is told of it.
#[derive(Debug, Clone)]
pub struct DirectTransport {
    pub peer: PeerId,
    pub ice: IceCreds,
    pub candidates: Vec<Candidate>,
    pub fingerprint: Fingerprint,
}

/// What a `produce` request declares.
#[derive(Debug, Clone)]
pub struct Produce {
    pub mid: String,
    pub kind: MediaKind,
    /// Its codecs, preferred first, each with its RTX payload type.
    pub codecs: Vec<PayloadParams>,
    /// The header extensions the client writes, with its ids.
    pub exts: Vec<(u8, Extension)>,
    /// Simulcast: the layers' rids. Their SSRCs are learnt from mid/rid.
    pub rids: Vec<String>,
    /// Without simulcast: each stream's SSRC and RTX SSRC.
    pub ssrcs: Vec<(u32, Option<u32>)>,
}

/// One kind of media a caster sends.
#[derive(Debug, Clone)]
pub struct Producer {
    pub id: String,
    pub kind: MediaKind,
    pub spec: CodecSpec,
    pub simulcast: bool,
}

impl Producer {
    pub fn new(peer: PeerId, kind: MediaKind, spec: CodecSpec, simulcast: bool) -> Self {
        Self {
            id: format!("{peer}-{}", kind_name(kind)),
            kind,
            spec,
            simulcast,
        }
    }
}

/// A viewer's track for one producer, as the client must set it up.
#[derive(Debug, Clone)]
pub struct Consumer {
    pub id: String,
    pub producer: Producer,
    /// The mid the client must give the track (the server chooses).
    pub mid: String,
    /// The codec and payload types it is sent on.
    pub params: PayloadParams,
    pub ssrc: u32,
    pub rtx_ssrc: Option<u32>,
    pub cname: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DirectError {
    #[error("no such transport")]
    NoSuchTransport,
    #[error("{0}")]
    Refused(String),
}

fn refused(why: impl Into<String>) -> DirectError {
    DirectError::Refused(why.into())
}

fn kind_name(kind: MediaKind) -> &'static str {
    match kind {
        MediaKind::Audio => "audio",
        MediaKind::Video => "video",
    }
}

/// A caster transport before its first `produce`.
pub(super) struct PendingCast {
    live: Arc<str>,
    creds: IceCreds,
    cert: DtlsCert,
    fingerprint: Option<Fingerprint>,
    early: Vec<(Protocol, SocketAddr, SocketAddr, Vec<u8>)>,
    pub expires: Instant,
}

impl Sfu {
    /// Creates a transport (mediasoup's `create*Transport`). A viewer's
    /// session exists from now on; a caster's once it first produces.
    pub fn open_direct(
        &mut self,
        live: &str,
        role: Role,
        now: Instant,
    ) -> Result<DirectTransport, DirectError> {
        let crypto = str0m::crypto::from_feature_flags();
        let cert = crypto
            .dtls_provider
            .generate_certificate()
            .ok_or_else(|| refused("could not make a DTLS certificate"))?;
        let fingerprint = Fingerprint {
            hash_func: "sha-256".into(),
            bytes: crypto.sha256_provider.sha256(&cert.certificate).to_vec(),
        };
        let id = PeerId::random_on(self.config.shard);
        let creds = new_ice_creds();
        match role {
            Role::Cast => {
                self.by_ufrag.insert(creds.ufrag.clone(), id);
                self.pending.insert(
                    id,
                    PendingCast {
                        live: Arc::from(live),
                        creds: creds.clone(),
                        cert,
                        fingerprint: None,
                        early: Vec::new(),
                        expires: now + self.config.connect_timeout,
                    },
                );
            }
            Role::Play => {
                let mut rtc = self.direct_rtc(
                    &creds,
                    cert,
                    ExtensionMap::standard(),
                    CodecConfig::new_with_defaults(),
                    role,
                    now,
                )?;
                let timeout = self.drain_setup(&mut rtc).map_err(refused)?;
                let play = Play {
                    audio: None,
                    video: None,
                    next_mid: 0,
                };
                let ufrag = creds.ufrag.clone();
                self.admit(
                    id,
                    live,
                    rtc,
                    ufrag,
                    PeerRole::Play(play),
                    timeout,
                    true,
                    now,
                );
            }
        }
        tracing::info!(live, peer = %id, %role, "transport created");
        Ok(DirectTransport {
            peer: id,
            ice: creds,
            candidates: self.local_candidates(),
            fingerprint,
        })
    }

    /// The client's DTLS fingerprint (mediasoup's `connect*Transport`).
    pub fn connect_direct(
        &mut self,
        peer: PeerId,
        fingerprint: Fingerprint,
        now: Instant,
    ) -> Result<(), DirectError> {
        if let Some(p) = self.pending.get_mut(&peer) {
            if p.fingerprint.is_some() {
                return Err(refused("the transport is already connected"));
            }
            p.fingerprint = Some(fingerprint);
            return Ok(());
        }
        let p = self
            .peers
            .get_mut(&peer)
            .ok_or(DirectError::NoSuchTransport)?;
        if p.rtc.direct_api().remote_dtls_fingerprint().is_some() {
            return Err(refused("the transport is already connected"));
        }
        p.rtc.direct_api().set_remote_fingerprint(fingerprint);
        self.drive(peer, now);
        Ok(())
    }

    /// A caster declares one kind of media it sends. The first call builds
    /// the caster's session and makes it the live's caster.
    pub fn produce(
        &mut self,
        peer: PeerId,
        p: Produce,
        now: Instant,
    ) -> Result<Producer, DirectError> {
        check_produce(&p)?;
        let Some(pending) = self.pending.remove(&peer) else {
            let Some(existing) = self.peers.get(&peer) else {
                return Err(DirectError::NoSuchTransport);
            };
            let PeerRole::Cast(cast) = &existing.role else {
                return Err(DirectError::NoSuchTransport);
            };
            check_fits(&existing.rtc, cast, &p)?;
            return self.declare_producer(peer, &p, now);
        };
        self.by_ufrag.remove(&pending.creds.ufrag);
        // The browser's ids, then str0m's own for what it did not name (a
        // later producer of the other kind may write those).
        let mut exts = ExtensionMap::empty();
        for (id, e) in &p.exts {
            exts.set(*id, e.clone());
        }
        for (id, e) in ExtensionMap::standard().iter() {
            if exts.lookup(id).is_none() && exts.id_of(e.clone()).is_none() {
                exts.set(id, e.clone());
            }
        }
        // The produced payload types, then the defaults that do not clash
        // with them (for the other kind's producer).
        let mut params = p.codecs.clone();
        for d in CodecConfig::new_with_defaults().params() {
            if !params.iter().any(|q| clash(q, d)) {
                params.push(*d);
            }
        }
        let codecs = CodecConfig::new_from_payload_params(params);
        let mut rtc = self.direct_rtc(
            &pending.creds,
            pending.cert,
            exts.clone(),
            codecs,
            Role::Cast,
            now,
        )?;
        if let Some(fp) = pending.fingerprint {
            rtc.direct_api().set_remote_fingerprint(fp);
        }
        let timeout = self.drain_setup(&mut rtc).map_err(refused)?;
        let mut cast = Cast::new(self.config.keyframe_interval);
        cast.direct_exts = Some(exts);
        let ufrag = pending.creds.ufrag.clone();
        self.admit(
            peer,
            &pending.live,
            rtc,
            ufrag,
            PeerRole::Cast(cast),
            timeout,
            true,
            now,
        );
        let producer = match self.declare_producer(peer, &p, now) {
            Ok(producer) => producer,
            Err(e) => {
                self.close_peer(peer, now);
                return Err(e);
            }
        };
        for (proto, source, destination, data) in pending.early {
            self.handle_receive(now, proto, source, destination, &data);
        }
        Ok(producer)
    }

    fn declare_producer(
        &mut self,
        id: PeerId,
        p: &Produce,
        now: Instant,
    ) -> Result<Producer, DirectError> {
        let peer = self
            .peers
            .get_mut(&id)
            .ok_or(DirectError::NoSuchTransport)?;
        let PeerRole::Cast(cast) = &mut peer.role else {
            return Err(DirectError::NoSuchTransport);
        };
        if cast.producers.iter().any(|q| q.kind == p.kind) {
            return Err(refused(format!(
                "this transport already produces {}: a caster has one audio and one video producer",
                kind_name(p.kind)
            )));
        }
        let mid = Mid::from(p.mid.as_str());
        if peer.rtc.media(mid).is_some() {
            return Err(refused(format!("mid '{}' is already in use", p.mid)));
        }
        // str0m's direct API panics on setups it does not expect.
        let declared = catch_unwind(AssertUnwindSafe(|| {
            let mut api = peer.rtc.direct_api();
            let media = api.declare_media(mid, p.kind);
            for r in &p.rids {
                media.expect_rid_rx(Rid::from(r.as_str()));
            }
            for (ssrc, rtx) in &p.ssrcs {
                api.expect_stream_rx((*ssrc).into(), rtx.map(Into::into), mid, None);
            }
        }));
        if declared.is_err() {
            return Err(refused("the producer's RTP parameters could not be set up"));
        }
        let producer = Producer::new(id, p.kind, p.codecs[0].spec(), p.rids.len() > 1);
        cast.producers.push(producer.clone());
        tracing::info!(live = %peer.live, peer = %id, producer = %producer.id, "producing");
        self.drive(id, now);
        Ok(producer)
    }

    /// What the caster of `live` on this shard sends.
    pub fn producers(&self, live: &str) -> Vec<Producer> {
        let caster = self.lives.get(live).and_then(|l| l.caster);
        match caster.and_then(|c| self.peers.get(&c)).map(|p| &p.role) {
            Some(PeerRole::Cast(cast)) => cast.producers.clone(),
            _ => Vec::new(),
        }
    }

    /// Gives viewer transport `viewer` a track for `producer`, sent on the
    /// router's payload type, which must be one of `device_pts` (what the
    /// client can receive).
    pub fn consume(
        &mut self,
        viewer: PeerId,
        producer: Producer,
        device_pts: &[u8],
        now: Instant,
    ) -> Result<Consumer, DirectError> {
        let Some(Peer {
            rtc,
            role: PeerRole::Play(play),
            live,
            connected,
            ..
        }) = self.peers.get_mut(&viewer)
        else {
            return Err(DirectError::NoSuchTransport);
        };
        let kind = producer.kind;
        let codec = producer.spec.codec;
        let params = *rtc
            .codec_config()
            .find(|c| can_carry(&producer.spec, &c.spec()))
            .ok_or_else(|| refused(format!("Vessel cannot forward {codec}")))?;
        if !device_pts.contains(&*params.pt()) {
            return Err(refused(format!("this device cannot receive {codec}")));
        }
        if play.track(kind).is_some() {
            return Err(refused(format!(
                "this transport already consumes {}: consume each kind once per transport",
                kind_name(kind)
            )));
        }
        let mid_name = play.next_mid.to_string();
        play.next_mid += 1;
        let mid = Mid::from(mid_name.as_str());
        let mut api = rtc.direct_api();
        api.declare_media(mid, kind);
        let ssrc = api.new_ssrc();
        let rtx = (kind == MediaKind::Video && params.resend().is_some()).then(|| {
            loop {
                let r = api.new_ssrc();
                if r != ssrc {
                    break r;
                }
            }
        });
        // As for WHEP viewers: a retransmission older than a second misses
        // any live player's jitter buffer.
        api.declare_stream_tx(ssrc, rtx, mid, None)
            .set_rtx_cache(1024, RTX_CACHE_AGE, Some(0.15));
        let cname = rtc
            .media(mid)
            .map(|m| m.cname().to_string())
            .unwrap_or_default();
        let mut track = OutTrack::new(mid, ssrc, kind);
        track.allowed_pts = Some(vec![params.pt()]);
        match kind {
            MediaKind::Audio => play.audio = Some(track),
            MediaKind::Video => play.video = Some(track),
        }
        let (live, connected) = (live.clone(), *connected);
        tracing::info!(%live, peer = %viewer, producer = %producer.id, mid = %mid_name, "consuming");
        // Once connected, a video track needs a layer now; before that,
        // connecting chooses one.
        if connected && kind == MediaKind::Video {
            let layers = self.caster_layers(&live, now);
            self.choose_layer(viewer, &layers, None, now);
        }
        self.drive(viewer, now);
        Ok(Consumer {
            id: format!("{viewer}-{mid_name}"),
            producer,
            mid: mid_name,
            params,
            ssrc: *ssrc,
            rtx_ssrc: rtx.map(|r| *r),
            cname,
        })
    }

    /// An `Rtc` for a session set up by the direct API: ICE-lite, and the
    /// DTLS server (mediasoup-client's `role: 'auto'` makes the browser the
    /// client).
    fn direct_rtc(
        &self,
        creds: &IceCreds,
        cert: DtlsCert,
        exts: ExtensionMap,
        codecs: CodecConfig,
        role: Role,
        now: Instant,
    ) -> Result<Rtc, DirectError> {
        let mut config = RtcConfig::new()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .set_stats_interval(Some(STATS_INTERVAL))
            .set_local_ice_credentials(creds.clone())
            .set_dtls_cert(cert)
            .set_extension_map(exts);
        *config.codec_config() = codecs;
        if role == Role::Play {
            config = config.enable_bwe(Some(Bitrate::bps(self.config.initial_estimate)));
        }
        let mut rtc = config.build(now);
        for c in self.local_candidates() {
            rtc.add_local_candidate(c);
        }
        let mut api = rtc.direct_api();
        api.set_ice_controlling(false);
        api.start_dtls(false)
            .map_err(|e| refused(format!("DTLS could not start: {e}")))?;
        if role == Role::Cast {
            // SDP turns this on when the browser offers transport-cc; its
            // bandwidth estimate (and so its simulcast layers) needs it.
            api.enable_twcc_feedback();
        }
        Ok(rtc)
    }

    /// Drains a new `Rtc`'s output, returning when it next wants time.
    pub(super) fn drain_setup(&mut self, rtc: &mut Rtc) -> Result<Instant, String> {
        loop {
            match rtc.poll_output() {
                Ok(Output::Event(_)) => {}
                Ok(Output::Transmit(t)) => self.transmits.push_back(t),
                Ok(Output::Timeout(t)) => return Ok(t),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Keeps a datagram for a caster transport that is not built yet.
    /// False if `id` is not such a transport.
    pub(super) fn keep_early(
        &mut self,
        id: PeerId,
        proto: Protocol,
        source: SocketAddr,
        destination: SocketAddr,
        contents: &[u8],
    ) -> bool {
        let Some(p) = self.pending.get_mut(&id) else {
            return false;
        };
        if p.early.len() < MAX_EARLY {
            p.early
                .push((proto, source, destination, contents.to_vec()));
        }
        true
    }

    /// Ends a caster transport that never produced. False if there was none.
    pub(super) fn drop_pending(&mut self, id: PeerId, why: &str) -> bool {
        let Some(p) = self.pending.remove(&id) else {
            return false;
        };
        self.by_ufrag.remove(&p.creds.ufrag);
        tracing::info!(live = %p.live, peer = %id, "caster transport closed: {why}");
        self.events.push_back(SfuEvent::SessionEnded {
            peer: id,
            live: p.live.to_string(),
            role: Role::Cast,
        });
        true
    }

    pub(super) fn pending_live(&self, id: PeerId) -> Option<&str> {
        self.pending.get(&id).map(|p| &*p.live)
    }

    /// Drops the caster transports that never produced in time.
    pub(super) fn expire_pending(&mut self, now: Instant) {
        let expired: Vec<PeerId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.expires <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.drop_pending(id, "nothing was produced in time");
        }
    }
}

/// Learns the client's ICE ufrag from its first binding request that
/// carries our ufrag and passes the integrity check with our password.
pub(super) fn learn_ufrag(peer: &mut Peer, input: &Input, raw: &[u8]) {
    let Ok(stun) = StunMessage::parse(raw) else {
        return;
    };
    let Some((_, remote)) = stun.split_username() else {
        return;
    };
    if !peer.rtc.accepts(input) {
        return;
    }
    let creds = IceCreds {
        ufrag: remote.to_string(),
        // An ICE-lite agent never sends checks, so never uses it.
        pass: String::new(),
    };
    peer.rtc.direct_api().set_remote_ice_credentials(creds);
    peer.learn_ufrag = false;
}

/// Whether two codecs' payload types overlap.
fn clash(a: &PayloadParams, b: &PayloadParams) -> bool {
    let pts = |p: &PayloadParams| -> Vec<Pt> {
        [Some(p.pt()), p.resend(), p.red()]
            .into_iter()
            .flatten()
            .collect()
    };
    let (a, b) = (pts(a), pts(b));
    a.iter().any(|x| b.contains(x))
}

/// Checks what str0m would otherwise panic on or misread.
fn check_produce(p: &Produce) -> Result<(), DirectError> {
    let id_ok = |s: &str, max: usize| {
        !s.is_empty()
            && s.len() <= max
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !id_ok(&p.mid, MAX_MID) {
        return Err(refused(format!(
            "mid must be 1 to {MAX_MID} letters or digits"
        )));
    }
    if let Some(r) = p.rids.iter().find(|r| !id_ok(r, MAX_RID)) {
        return Err(refused(format!(
            "rid '{r}' must be 1 to {MAX_RID} letters or digits"
        )));
    }
    let Some(first) = p.codecs.first() else {
        return Err(refused(
            "rtpParameters.codecs names no codec Vessel forwards",
        ));
    };
    if first.spec().codec.kind() != p.kind {
        return Err(refused("the first codec is not of the producer's kind"));
    }
    if p.rids.is_empty() && p.ssrcs.is_empty() {
        return Err(refused("rtpParameters.encodings names no ssrc or rid"));
    }
    for (i, a) in p.codecs.iter().enumerate() {
        if p.codecs[i + 1..].iter().any(|b| clash(a, b)) {
            return Err(refused(format!("payload type {} is used twice", *a.pt())));
        }
    }
    let mut ids: Vec<u8> = p.exts.iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) || ids.iter().any(|id| !(1..=14).contains(id)) {
        return Err(refused(
            "header extension ids must be distinct, from 1 to 14",
        ));
    }
    Ok(())
}

/// A second producer must fit the session the first one built: the same
/// ids for what str0m reads to find streams, and known payload types.
fn check_fits(rtc: &Rtc, cast: &Cast, p: &Produce) -> Result<(), DirectError> {
    let Some(exts) = &cast.direct_exts else {
        return Err(DirectError::NoSuchTransport);
    };
    for (id, e) in &p.exts {
        let routing = matches!(
            e,
            Extension::RtpMid
                | Extension::RtpStreamId
                | Extension::RepairedRtpStreamId
                | Extension::TransportSequenceNumber
        );
        if routing && exts.id_of(e.clone()) != Some(*id) {
            // A browser keeps one id per extension on a connection, so
            // only a hand-made client gets here.
            return Err(refused(format!(
                "header extension {} has id {id} here but {} on this transport's first \
                 producer; a transport's producers must share their extension ids",
                e.as_uri(),
                exts.id_of(e.clone()).map_or("none".into(), |i| i.to_string()),
            )));
        }
    }
    for c in &p.codecs {
        let known = rtc.codec_config().params().iter().any(|k| {
            k.pt() == c.pt() && k.resend() == c.resend() && can_carry(&c.spec(), &k.spec())
        });
        if !known {
            return Err(refused(format!(
                "payload type {} does not match this transport's first producer",
                *c.pt()
            )));
        }
    }
    Ok(())
}
