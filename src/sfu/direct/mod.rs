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

mod check;
mod pending;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use str0m::bwe::Bitrate;
use str0m::config::{DtlsCert, Fingerprint};
use str0m::format::{CodecConfig, CodecSpec, PayloadParams};
use str0m::ice::StunMessage;
use str0m::media::{MediaKind, Mid, Rid};
use str0m::net::Transmit;
use str0m::rtp::{Extension, ExtensionMap};
use str0m::{Candidate, IceCreds, Input, Output, Rtc};

use super::codec::can_carry;
use super::peer::{Cast, DirectPeer, OutTrack, Peer, Play};
use super::setup::Setup;
use super::{PeerId, RTX_CACHE_AGE, Role, Sfu};
pub(super) use pending::PendingCast;

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
    /// A producer id is handed to every viewer, so it is random: the
    /// caster's session id is a capability and must not leak.
    pub fn new(kind: MediaKind, spec: CodecSpec, simulcast: bool) -> Self {
        Self {
            id: format!("{kind}-{:016x}", rand::random::<u64>()),
            kind,
            spec,
            simulcast,
        }
    }
}

/// What `produce` did.
#[derive(Debug, Clone)]
pub struct Produced {
    pub producer: Producer,
    /// This was the transport's first producer: it is the live's caster now.
    pub took_over: bool,
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

/// A transport made off the media thread: its DTLS certificate and, for a
/// viewer, its `Rtc` (key shares included), waiting for its shard.
pub struct PreparedDirect {
    id: PeerId,
    live: String,
    role: Role,
    creds: IceCreds,
    fingerprint: Fingerprint,
    candidates: Vec<Candidate>,
    setup: DirectSetup,
}

enum DirectSetup {
    /// A caster's `Rtc` waits for its first producer.
    Cast(DtlsCert),
    Play {
        rtc: Box<Rtc>,
        /// Its output is drained up to here.
        timeout: Instant,
        transmits: Vec<Transmit>,
    },
}

/// Makes a transport (mediasoup's `create*Transport`). Needs nothing of
/// the `Sfu`'s state, so it runs where the caller likes (the runtime: the
/// blocking pool). A panic inside str0m is a refusal, never more.
pub fn prepare_direct(
    setup: &Setup,
    live: &str,
    role: Role,
    now: Instant,
) -> Result<PreparedDirect, DirectError> {
    catch_unwind(AssertUnwindSafe(|| build_direct(setup, live, role, now)))
        .unwrap_or_else(|_| Err(refused("the transport could not be made")))
}

fn build_direct(
    setup: &Setup,
    live: &str,
    role: Role,
    now: Instant,
) -> Result<PreparedDirect, DirectError> {
    let crypto = str0m::crypto::from_feature_flags();
    let cert = crypto
        .dtls_provider
        .generate_certificate()
        .ok_or_else(|| refused("could not make a DTLS certificate"))?;
    let fingerprint = Fingerprint {
        hash_func: "sha-256".into(),
        bytes: crypto.sha256_provider.sha256(&cert.certificate).to_vec(),
    };
    let creds = setup.ids.ice_creds();
    let direct = match role {
        Role::Cast => DirectSetup::Cast(cert),
        Role::Play => {
            let mut rtc = direct_rtc(
                setup,
                &creds,
                cert,
                ExtensionMap::standard(),
                CodecConfig::new_with_defaults(),
                role,
                now,
            )?;
            let (timeout, transmits) = super::setup::drain(&mut rtc).map_err(refused)?;
            DirectSetup::Play {
                rtc: Box::new(rtc),
                timeout,
                transmits,
            }
        }
    };
    Ok(PreparedDirect {
        id: setup.ids.peer_id(setup.shard),
        live: live.to_string(),
        role,
        creds,
        fingerprint,
        candidates: setup.candidates.clone(),
        setup: direct,
    })
}

/// A direct session's `Rtc`: ICE-lite, DTLS passive, `exts` and `codecs`
/// fixed (a caster's are the browser's).
fn direct_rtc(
    setup: &Setup,
    creds: &IceCreds,
    cert: DtlsCert,
    exts: ExtensionMap,
    codecs: CodecConfig,
    role: Role,
    now: Instant,
) -> Result<Rtc, DirectError> {
    let mut config = super::rtc_config(creds.clone(), setup.dtls_cert.as_ref())
        .set_dtls_cert(cert)
        .set_extension_map(exts);
    *config.codec_config() = codecs;
    if role == Role::Play {
        config = config.enable_bwe(Some(Bitrate::bps(setup.initial_estimate)));
    }
    let mut rtc = config.build(now);
    for c in &setup.candidates {
        rtc.add_local_candidate(c.clone());
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

impl Sfu {
    /// Creates a transport here and now (the runtime prepares it off the
    /// media thread instead). A viewer's session exists from now on; a
    /// caster's once it first produces.
    pub fn open_direct(
        &mut self,
        live: &str,
        role: Role,
        now: Instant,
    ) -> Result<DirectTransport, DirectError> {
        let prepared = prepare_direct(&self.config.setup(), live, role, now)?;
        Ok(self.admit_direct(prepared, now))
    }

    /// Makes a transport prepared by [`prepare_direct`] (with this shard's
    /// [`super::SfuConfig::setup`]) part of its live.
    pub fn admit_direct(&mut self, p: PreparedDirect, now: Instant) -> DirectTransport {
        let PreparedDirect {
            id,
            live,
            role,
            creds,
            fingerprint,
            candidates,
            setup,
        } = p;
        match setup {
            DirectSetup::Cast(cert) => {
                self.by_ufrag.insert(creds.ufrag.clone(), id);
                self.pending.insert(
                    id,
                    PendingCast {
                        live: Arc::from(live.as_str()),
                        creds: creds.clone(),
                        cert,
                        fingerprint: None,
                        early: Vec::new(),
                        expires: now + self.config.connect_timeout,
                    },
                );
            }
            DirectSetup::Play {
                rtc,
                timeout,
                transmits,
            } => {
                self.transmits.extend(transmits);
                let play = Play::new(self.live_name(&live));
                let ufrag = creds.ufrag.clone();
                let mut peer = self.new_peer(id, &live, *rtc, ufrag, role, None, vec![play]);
                peer.direct = Some(DirectPeer {
                    learn_ufrag: true,
                    fingerprint_set: false,
                    exts: ExtensionMap::standard(),
                });
                self.admit(peer, timeout, now);
            }
        }
        tracing::info!(live, peer = %id.log(), %role, "transport created");
        DirectTransport {
            peer: id,
            ice: creds,
            candidates,
            fingerprint,
        }
    }

    /// The client's DTLS fingerprint (mediasoup's `connect*Transport`).
    pub fn connect_direct(
        &mut self,
        peer: PeerId,
        fingerprint: Fingerprint,
        now: Instant,
    ) -> Result<(), DirectError> {
        let already = || refused("the transport is already connected");
        if let Some(p) = self.pending.get_mut(&peer) {
            if p.fingerprint.is_some() {
                return Err(already());
            }
            p.fingerprint = Some(fingerprint);
            return Ok(());
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            return Err(DirectError::NoSuchTransport);
        };
        let Some(direct) = p.direct.as_mut() else {
            return Err(DirectError::NoSuchTransport); // a WHIP/WHEP session
        };
        if std::mem::replace(&mut direct.fingerprint_set, true) {
            return Err(already());
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
    ) -> Result<Produced, DirectError> {
        check::check_produce(&p)?;
        let Some(pending) = self.pending.remove(&peer) else {
            let Some(Peer {
                rtc,
                cast: Some(cast),
                live,
                direct: Some(direct),
                ..
            }) = self.peers.get_mut(&peer)
            else {
                return Err(DirectError::NoSuchTransport);
            };
            check::check_fits(rtc, &direct.exts, &p)?;
            let producer = declare(rtc, cast, &p)?;
            tracing::info!(%live, peer = %peer.log(), producer = %producer.id, "producing");
            self.drive(peer, now);
            return Ok(Produced {
                producer,
                took_over: false,
            });
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
            if !params.iter().any(|q| check::clash(q, d)) {
                params.push(*d);
            }
        }
        let codecs = CodecConfig::new_from_payload_params(params);
        let built = direct_rtc(
            &self.config.setup(),
            &pending.creds,
            pending.cert,
            exts.clone(),
            codecs,
            Role::Cast,
            now,
        );
        let mut cast = Cast::new(
            self.live_name(&pending.live),
            self.config.keyframe_interval,
            now,
        );
        // Declared before the session takes the live: a producer that fails
        // here must not have ended the caster before it.
        let setup = built.and_then(|mut rtc| {
            let producer = declare(&mut rtc, &mut cast, &p)?;
            let timeout = self.drain_setup(&mut rtc).map_err(refused)?;
            Ok((rtc, producer, timeout))
        });
        let (mut rtc, producer, timeout) = match setup {
            Ok(ok) => ok,
            Err(e) => {
                self.transport_ended(peer, &pending.live, "its first producer failed");
                return Err(e);
            }
        };
        let fingerprint_set = pending.fingerprint.is_some();
        if let Some(fp) = pending.fingerprint {
            rtc.direct_api().set_remote_fingerprint(fp);
        }
        let ufrag = pending.creds.ufrag.clone();
        let mut session = self.new_peer(
            peer,
            &pending.live,
            rtc,
            ufrag,
            Role::Cast,
            Some(cast),
            Vec::new(),
        );
        session.direct = Some(DirectPeer {
            learn_ufrag: true,
            fingerprint_set,
            exts,
        });
        self.admit(session, timeout, now);
        tracing::info!(live = %pending.live, peer = %peer.log(), producer = %producer.id, "producing");
        self.drive(peer, now);
        for (proto, source, destination, data) in pending.early {
            self.handle_receive(now, proto, source, destination, &data);
        }
        Ok(Produced {
            producer,
            took_over: true,
        })
    }

    /// What the caster of `live` on this shard sends.
    pub fn producers(&self, live: &str) -> Vec<Producer> {
        let caster = self.lives.get(live).and_then(|l| l.caster);
        caster
            .and_then(|c| self.peers.get(&c))
            .and_then(|p| p.cast.as_ref())
            .map(|cast| cast.producers.clone())
            .unwrap_or_default()
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
            plays,
            live,
            connected,
            direct: Some(_),
            ..
        }) = self.peers.get_mut(&viewer)
        else {
            return Err(DirectError::NoSuchTransport);
        };
        let Some(play) = plays.first_mut() else {
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
        if play.tracks(kind).next().is_some() {
            return Err(refused(format!(
                "this transport already consumes {}: consume each kind once per transport",
                kind
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
        track.direct_pt = Some(params.pt());
        match kind {
            MediaKind::Audio => play.audio = Some(track),
            MediaKind::Video => play.video = Some(track),
        }
        let (live, connected) = (live.clone(), *connected);
        tracing::info!(%live, peer = %viewer.log(), producer = %producer.id, mid = %mid_name, "consuming");
        // Once connected, a video track needs a layer now; before that,
        // connecting chooses one.
        if connected && kind == MediaKind::Video {
            let layers = self.caster_layers(&live, now);
            self.choose_layer(viewer, &live, &layers, None, now);
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
}

/// Declares producer `p` on a caster's session.
fn declare(rtc: &mut Rtc, cast: &mut Cast, p: &Produce) -> Result<Producer, DirectError> {
    check::check_free(rtc, cast, p)?;
    let mid = Mid::from(p.mid.as_str());
    // Media first: str0m panics on streams of an undeclared mid.
    let mut api = rtc.direct_api();
    let media = api.declare_media(mid, p.kind);
    for r in &p.rids {
        media.expect_rid_rx(Rid::from(r.as_str()));
    }
    for (ssrc, rtx) in &p.ssrcs {
        api.expect_stream_rx((*ssrc).into(), rtx.map(Into::into), mid, None);
    }
    let producer = Producer::new(p.kind, p.codecs[0].spec(), p.rids.len() > 1);
    cast.producers.push(producer.clone());
    Ok(producer)
}

/// Learns the client's ICE ufrag from its first binding request that
/// carries our ufrag and passes the integrity check with our password.
pub(super) fn learn_ufrag(peer: &mut Peer, input: &Input, raw: &[u8]) {
    if !peer.direct.as_ref().is_some_and(|d| d.learn_ufrag) {
        return;
    }
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
    if let Some(d) = peer.direct.as_mut() {
        d.learn_ufrag = false;
    }
}
