//! The SFU core, sans-IO: sessions, lives and forwarding as a plain state
//! machine. It takes datagrams, commands and the current time, and hands back
//! datagrams to send, events and the time it next wants to be woken. It owns
//! no socket, thread or clock, so it is tested on simulated time and can be
//! sharded: one `Sfu` per worker.

pub mod codec;
mod direct;
mod drive;
mod effects;
mod fanout;
pub mod forward;
pub mod gop;
pub mod ids;
pub mod keyframe;
mod keyframe_requests;
pub mod lateness;
pub mod layer;
mod live;
mod member;
pub mod offer;
mod peer;
pub mod setup;
pub mod shard;
pub mod simulcast;
mod stats;
pub mod tap;
mod viewing;

pub use direct::{Consumer, DirectError, DirectTransport, Produce, Produced, Producer};
pub use direct::{PreparedDirect, prepare_direct};
pub use member::{
    Answered, MAX_MLINES, MemberError, MemberOffer, PreparedMember, Subscription, prepare_member,
};
pub use stats::SfuStats;

/// How many sessions a worker holds, and how many of them have been
/// connected long enough to cost what a session costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Census {
    pub sessions: usize,
    pub settled: usize,
}
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::bwe::Bitrate;
use str0m::config::DtlsCert;
use str0m::ice::StunMessage;
use str0m::media::{MediaKind, Mid, Rids};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::{Candidate, IceCreds, Input, Output, Rtc, RtcConfig};

use layer::Preference;
use live::Live;
use peer::{Cast, Peer, Play};

/// A session (one caster or viewer connection). Random and unguessable: it
/// is the capability that lets a client end or patch its own session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub(crate) u128);

impl PeerId {
    /// A random id that names the shard owning the session (low byte), so
    /// that commands find it.
    pub fn random_on(shard: usize) -> Self {
        ids::Ids::Entropy.peer_id(shard)
    }

    pub fn shard(&self) -> usize {
        (self.0 & 0xff) as usize
    }
}

/// A session id as logs show it: a short tag that names it without being
/// it (the id is the capability to end or steer the session).
#[derive(Debug, Clone, Copy)]
pub struct LogTag(u32);

impl fmt::Display for LogTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl PeerId {
    /// The tag logs name this session by.
    pub fn log(&self) -> LogTag {
        // SplitMix64 of both halves: well mixed, and 32 bits of a 120-bit
        // random id give nobody the id.
        let mix = |mut z: u64| {
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let h = mix(self.0 as u64 ^ mix((self.0 >> 64) as u64));
        LogTag((h >> 32) as u32)
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl FromStr for PeerId {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        if s.len() != 32 {
            return Err(());
        }
        u128::from_str_radix(s, 16).map(PeerId).map_err(|_| ())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Cast,
    Play,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Cast => "cast",
            Role::Play => "play",
        })
    }
}

/// How often str0m reports per-stream stats (NACKs, loss) for `/metrics`.
const STATS_INTERVAL: Duration = Duration::from_secs(2);

/// A connected caster that sends nothing for this long (no media, no RTCP,
/// no ICE check) is gone: the live goes off air at once, not when ICE
/// gives up.
pub(crate) const CASTER_SILENCE: Duration = Duration::from_millis(2500);

/// Remote candidates a session keeps: a browser gathers a handful; more
/// would only be a client filling the server's memory.
pub(crate) const MAX_REMOTE_CANDIDATES: usize = 32;

/// Addresses a session may be reached at (a browser tries a few
/// candidates; more is a client lying about where it is).
const MAX_ADDRS: usize = 8;

/// A caster's packets fanned out together, at most (see
/// [`Sfu::handle_receive_run`]).
const MAX_RUN: usize = 16;

/// How long a viewer's sent packets are kept for NACKs.
const RTX_CACHE_AGE: Duration = Duration::from_secs(1);
/// Resent bytes, as a share of all the bytes a viewer's track sent in the
/// last second, above which str0m stops resending (its default).
const VIEWER_RTX_CAP: f32 = 0.15;
/// The same for a relay to another node (why: `setup::negotiate`).
const RELAY_RTX_CAP: f32 = 0.5;

#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// Addresses announced as ICE host candidates (the media port).
    pub candidates: Vec<SocketAddr>,
    /// Also announce each address as a passive ICE-TCP candidate (the
    /// runtime listens on the same port over TCP).
    pub ice_tcp: bool,
    /// Minimum spacing of keyframe requests to a caster.
    pub keyframe_interval: Duration,
    /// A session whose ICE/DTLS is not up by then is dropped.
    pub connect_timeout: Duration,
    /// Bandwidth assumed towards a new viewer until its estimate comes in
    /// (bits per second): enough for the top layer of a usual simulcast.
    pub initial_estimate: u64,
    /// This `Sfu`'s shard, and how many there are (at most 64).
    pub shard: usize,
    pub shards: usize,
    /// The DTLS certificate every session presents. Made once, when the
    /// config is: generating a key pair per session would put that work on
    /// the media thread for every join (mediasoup and Janus share one the
    /// same way; each session still has its own DTLS keys).
    pub dtls_cert: Option<DtlsCert>,
    /// Where session ids and ICE credentials come from (a seed: tests only).
    pub ids: ids::Ids,
}

impl SfuConfig {
    pub fn new(candidates: Vec<SocketAddr>) -> Self {
        Self {
            candidates,
            ice_tcp: false,
            keyframe_interval: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(20),
            initial_estimate: 1_500_000,
            shard: 0,
            shards: 1,
            dtls_cert: new_dtls_cert(),
            ids: ids::Ids::Entropy,
        }
    }
}

/// A certificate for [`SfuConfig::dtls_cert`]; `None` (each session then
/// makes its own) if the crypto provider cannot.
fn new_dtls_cert() -> Option<DtlsCert> {
    match str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate()
    {
        Some(cert) => Some(cert),
        None => {
            tracing::warn!("cannot make a DTLS certificate; each session will make its own");
            None
        }
    }
}

/// The public state of a live, as the API and the pages show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveState {
    pub live: String,
    pub on_air: bool,
    pub viewers: usize,
    /// Of `viewers`, the relays to other nodes of a cluster (sessions, not
    /// people: the cluster's total leaves them out, see `board.rs`).
    #[serde(skip)]
    pub relays: usize,
    /// How the caster reaches Vessel when it is not WebRTC (`"rtmp"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingest: Option<&'static str>,
    /// What such a caster sends, as far as known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceInfo>,
    /// Problems with the live viewers should know of (and the streamer
    /// can fix), each with its fix.
    pub warnings: Vec<String>,
}

/// What an RTMP caster sends (from its metadata and codec headers).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceInfo {
    pub video_codec: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub framerate: Option<u32>,
    pub video_kbps: Option<u32>,
    pub audio_codec: Option<String>,
    pub audio_kbps: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SfuEvent {
    /// A live went on or off air, or its viewer count changed.
    Live(LiveState),
    /// A session ended (closed, replaced, timed out or failed).
    SessionEnded {
        peer: PeerId,
        live: String,
        role: Role,
    },
    /// Session `caster` is on air as `live`'s caster (its connection is
    /// up). Told by the caster's shard, as is the matching `CastEnded`, so
    /// the two never cross.
    CastStarted { live: String, caster: PeerId },
    /// Session `caster` is no longer `live`'s caster (it ended, was
    /// replaced, or a room member stopped publishing).
    CastEnded { live: String, caster: PeerId },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub peer: PeerId,
    pub answer: String,
}

/// Why an offer was refused. Nothing live is touched when this is returned.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JoinError {
    #[error("malformed SDP offer: {0}")]
    MalformedOffer(String),
    #[error("the offer was refused: {0}")]
    Refused(String),
    #[error("{0}")]
    NoMedia(&'static str),
    /// Parsed, but it could never connect, or asks for too much.
    #[error("{0}")]
    Unusable(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("no such session")]
pub struct NoSuchSession;

pub struct Sfu {
    config: SfuConfig,
    /// By id: looked up for every viewer of every forwarded packet.
    peers: HashMap<PeerId, Peer, rustc_hash::FxBuildHasher>,
    lives: HashMap<Arc<str>, Live>,
    by_ufrag: HashMap<String, PeerId>,
    by_addr: HashMap<SocketAddr, PeerId>,
    timers: BTreeSet<(Instant, PeerId)>,
    transmits: VecDeque<Transmit>,
    /// When each caster packet fanned out since the last
    /// [`Sfu::take_forwarded`] arrived: its copies are among `transmits`.
    forwarded: Vec<Instant>,
    events: VecDeque<SfuEvent>,
    /// Messages for other shards.
    remote_out: VecDeque<(usize, shard::Remote)>,
    /// Per live, the other shards that have viewers of it (bit per shard).
    interest: HashMap<Arc<str>, u64>,
    /// Caster transports set up without SDP that have not produced yet.
    pending: HashMap<PeerId, direct::PendingCast>,
    stats: SfuStats,
    /// The peer whose `Rtc` runs now: the one a panic is blamed on.
    running: Option<PeerId>,
    /// What polled peers asked of others, for [`Sfu::process`].
    effects: VecDeque<effects::Effects>,
    /// Peers written to since they were last polled.
    dirty: VecDeque<PeerId>,
    /// The caster whose packets wait for the rest of its run (see
    /// [`Sfu::handle_receive_run`]).
    run: Option<PeerId>,
    /// The latest time given: when queued work is due.
    last_now: Instant,
    /// Per live, where its caster's packets are also handed (LL-HLS,
    /// recording), when it casts from this shard.
    taps: HashMap<String, Box<dyn tap::TapSink>>,
}

impl Sfu {
    pub fn new(config: SfuConfig) -> Self {
        Self {
            config,
            peers: HashMap::default(),
            lives: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            timers: BTreeSet::new(),
            transmits: VecDeque::new(),
            forwarded: Vec::new(),
            events: VecDeque::new(),
            remote_out: VecDeque::new(),
            interest: HashMap::new(),
            pending: HashMap::new(),
            stats: SfuStats::default(),
            running: None,
            effects: VecDeque::new(),
            dirty: VecDeque::new(),
            run: None,
            last_now: Instant::now(),
            taps: HashMap::new(),
        }
    }

    /// Hands `live`'s caster packets to `sink` from now on (`None`: no
    /// more), whenever its caster is on this shard.
    pub fn set_tap(&mut self, live: &str, sink: Option<Box<dyn tap::TapSink>>) {
        match sink {
            Some(s) => {
                self.taps.insert(live.to_string(), s);
            }
            None => {
                self.taps.remove(live);
            }
        }
    }

    /// Ends every session, saying goodbye (DTLS close_notify) to each.
    pub fn close_all(&mut self, now: Instant) {
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        for id in ids {
            self.close_peer(id, now);
        }
        let pending: Vec<PeerId> = self.pending.keys().copied().collect();
        for id in pending {
            self.drop_pending(id, "the server is shutting down");
        }
    }

    /// Counters since start, for `/metrics`.
    pub fn stats(&self) -> SfuStats {
        self.stats
    }

    /// What preparing a session for this shard needs.
    pub fn setup(&self) -> setup::Setup {
        self.config.setup()
    }

    pub fn live_state(&self, live: &str) -> Option<LiveState> {
        self.lives.get(live).map(Live::state)
    }

    /// Accepts a caster's or viewer's SDP offer and returns the answer:
    /// [`setup::prepare`] and [`Sfu::admit_prepared`] in one (the runtime
    /// runs the first off the media thread).
    pub fn join(
        &mut self,
        live: &str,
        role: Role,
        offer: &str,
        now: Instant,
    ) -> Result<Joined, JoinError> {
        let prepared = setup::prepare(&self.config.setup(), live, role, offer, now)?;
        Ok(self.admit_prepared(prepared, now))
    }

    /// Makes a session prepared by [`setup::prepare`] (with this shard's
    /// [`SfuConfig::setup`]) part of its live.
    pub fn admit_prepared(&mut self, p: setup::Prepared, now: Instant) -> Joined {
        let id = p.id;
        let live = p.live.as_str();
        self.transmits.extend(p.transmits);
        let (cast, plays) = match p.role {
            Role::Cast => {
                let mut cast = Cast::new(self.live_name(live), self.config.keyframe_interval, now);
                cast.producers = p.producers;
                cast.gop = p.replay_gop.then(gop::GopCache::default);
                (Some(cast), Vec::new())
            }
            Role::Play => {
                let mut play = Play::new(self.live_name(live));
                play.audio = p.audio;
                play.video = p.video;
                play.relay = p.relay;
                (None, vec![play])
            }
        };
        let peer = self.new_peer(id, live, p.rtc, p.ufrag, p.role, cast, plays);
        // The Rtc was drained up to its timeout when it was prepared.
        self.admit(peer, p.rtc_timeout, now);
        tracing::info!(live, peer = %id.log(), role = %p.role, "session created");
        Joined {
            peer: id,
            answer: p.answer,
        }
    }

    /// A session's state before it is admitted.
    #[allow(clippy::too_many_arguments)]
    fn new_peer(
        &mut self,
        id: PeerId,
        live: &str,
        rtc: Rtc,
        ufrag: String,
        role: Role,
        cast: Option<Cast>,
        plays: Vec<Play>,
    ) -> Peer {
        Peer {
            id,
            live: self.live_name(live),
            rtc,
            ufrag,
            addrs: Vec::new(),
            connected: false,
            connect_by: Instant::now(),
            connected_at: None,
            last_heard: Instant::now(),
            timer: None,
            dirty: false,
            role,
            cast,
            plays,
            bwe: (0, 0),
            bwe_seeded: false,
            stats_seen: Default::default(),
            candidates: 0,
            direct: None,
            member: None,
            #[cfg(test)]
            poisoned: false,
        }
    }

    /// The name of `live` as this shard shares it (one `Arc` per live).
    fn live_name(&self, live: &str) -> Arc<str> {
        match self.lives.get_key_value(live) {
            Some((k, _)) => k.clone(),
            None => Arc::from(live),
        }
    }

    /// Makes `peer` a session: its cast takes its live over from any
    /// other, its plays join their lives' audiences. The caller has drained
    /// its `Rtc`'s output up to `rtc_timeout`.
    fn admit(&mut self, mut peer: Peer, rtc_timeout: Instant, now: Instant) {
        let id = peer.id;
        peer.connect_by = now + self.config.connect_timeout;
        peer.last_heard = now;
        let cast_live = peer.cast.as_ref().map(|c| c.live.clone());
        let play_lives: Vec<Arc<str>> = peer.plays.iter().map(|p| p.live.clone()).collect();
        let timeout = peer.next_timeout(rtc_timeout);
        self.by_ufrag.insert(peer.ufrag.clone(), id);
        self.peers.insert(id, peer);
        self.set_timer(id, timeout);
        for live in play_lives {
            self.watch(id, &live);
        }
        if let Some(live) = cast_live {
            if self.caster_on_air(&live) {
                // Proof first: the caster on air stays until this one's
                // media flows (a failed OBS reconnect must not take the
                // live off air).
                tracing::info!(%live, peer = %id.log(), "new caster waits for its media to take over");
            } else {
                self.take_live(id, &live, now);
            }
        }
    }

    /// Someone casts `live` and is on air: here, or on another shard whose
    /// media this shard receives.
    fn caster_on_air(&self, live: &str) -> bool {
        self.lives
            .get(live)
            .is_some_and(|l| (l.caster.is_some() && l.on_air) || l.remote.is_some())
    }

    /// Caster `id`'s first media of `live` arrived. It takes the live, unless
    /// a newer caster has (then it is the one that goes); the other shards
    /// are told, once. False if it lost.
    pub(super) fn claim(&mut self, id: PeerId, live: &Arc<str>, now: Instant) -> bool {
        let Some(since) = self
            .peers
            .get(&id)
            .and_then(|p| p.cast.as_ref())
            .map(|c| c.since)
        else {
            return false;
        };
        let mine = (since, id);
        let entry = self
            .lives
            .entry(live.clone())
            .or_insert_with(|| Live::new(live.clone()));
        let holder = entry.caster.filter(|c| *c != id);
        let newer_elsewhere = entry.newest.is_some_and(|n| n > mine);
        let newer_here = holder
            .and_then(|c| self.peers.get(&c))
            .and_then(|p| p.cast.as_ref())
            .is_some_and(|c| (c.since, holder.expect("some")) > mine);
        if newer_elsewhere || newer_here {
            tracing::info!(%live, peer = %id.log(), "a newer caster took the live first; this one ends");
            self.end_cast(id, live, now);
            return false;
        }
        if holder.is_some() || entry.caster.is_none() {
            self.take_live(id, live, now);
            if self.peers.get(&id).is_some_and(|p| p.connected) {
                self.on_air(id, live, now);
            }
        }
        let announce = self
            .peers
            .get_mut(&id)
            .and_then(|p| p.cast.as_mut())
            .is_some_and(|c| !std::mem::replace(&mut c.announced, true));
        if announce {
            if let Some(l) = self.lives.get_mut(live) {
                l.newest = l.newest.max(Some(mine));
            }
            self.announce_takeover(live, id, since);
        }
        true
    }

    /// Another shard's caster of `live`, newer than `since`-ordered ones,
    /// took it: an older caster here stops.
    pub(super) fn taken_over(
        &mut self,
        live: &Arc<str>,
        caster: PeerId,
        since: Instant,
        now: Instant,
    ) {
        let Some(l) = self.lives.get_mut(live) else {
            return;
        };
        let theirs = (since, caster);
        l.newest = l.newest.max(Some(theirs));
        let Some(holder) = l.caster.filter(|c| *c != caster) else {
            return;
        };
        let older = self
            .peers
            .get(&holder)
            .and_then(|p| p.cast.as_ref())
            .is_some_and(|c| (c.since, holder) < theirs);
        if older {
            tracing::info!(%live, peer = %holder.log(), "caster replaced by a new session on another worker");
            self.end_cast(holder, live, now);
        }
    }

    /// Viewer `id` joins `live`'s audience (its play is already there).
    fn watch(&mut self, id: PeerId, live: &Arc<str>) {
        let entry = self
            .lives
            .entry(live.clone())
            .or_insert_with(|| Live::new(live.clone()));
        let first_viewer = entry.viewers.is_empty();
        entry.viewers.insert(id);
        if first_viewer {
            self.announce_interest(live, true);
        }
    }

    /// Caster `id` (whose cast of `live` is there) takes the live over: the
    /// caster before it stops casting.
    fn take_live(&mut self, id: PeerId, live: &Arc<str>, now: Instant) {
        let entry = self
            .lives
            .entry(live.clone())
            .or_insert_with(|| Live::new(live.clone()));
        let Some(old) = entry.caster.replace(id) else {
            return;
        };
        if old == id {
            return;
        }
        if entry.announced == Some(old) {
            entry.announced = None;
            self.events.push_back(SfuEvent::CastEnded {
                live: live.to_string(),
                caster: old,
            });
        }
        tracing::info!(%live, peer = %old.log(), "caster replaced by a new session");
        self.end_cast(old, live, now);
    }

    /// Session `id` no longer casts `live`: a caster session ends; a room
    /// member stops publishing but keeps watching.
    fn end_cast(&mut self, id: PeerId, live: &str, now: Instant) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if !peer.casts(live) {
            return;
        }
        if peer.member.is_none() {
            self.close_peer(id, now);
            return;
        }
        peer.cast = None;
        tracing::info!(live, peer = %id.log(), "no longer publishing");
        self.release_live(id, live, now);
    }

    /// The host candidates every session announces.
    /// Ends a session at the client's request.
    pub fn leave(
        &mut self,
        live: &str,
        role: Role,
        peer: PeerId,
        now: Instant,
    ) -> Result<(), NoSuchSession> {
        if role == Role::Cast && self.pending_live(peer) == Some(live) {
            self.drop_pending(peer, "ended by the client");
            return Ok(());
        }
        // A live's caster ended from elsewhere (replaced on another shard,
        // kicked by the admin API) may be a room member: it only stops
        // publishing.
        if role == Role::Cast
            && let Some(p) = self.peers.get(&peer)
            && p.member.is_some()
            && p.casts(live)
        {
            self.end_cast(peer, live, now);
            return Ok(());
        }
        self.check(live, role, peer)?;
        tracing::info!(live, peer = %peer.log(), %role, "session ended by the client");
        self.close_peer(peer, now);
        Ok(())
    }

    /// Adds trickled remote candidates. ICE-lite does not need them (the
    /// client's checks reveal its address), but they are kept for str0m.
    pub fn add_remote_candidates(
        &mut self,
        live: &str,
        role: Role,
        peer: PeerId,
        candidates: Vec<Candidate>,
        now: Instant,
    ) -> Result<(), NoSuchSession> {
        self.check(live, role, peer)?;
        for c in candidates {
            let Some(p) = self.peers.get_mut(&peer) else {
                break;
            };
            p.add_remote_candidate(c);
            // Drained after each, as str0m asks of every input.
            self.drive(peer, now);
        }
        Ok(())
    }

    /// Caps the video layer a viewer gets.
    pub fn set_preference(
        &mut self,
        live: &str,
        peer: PeerId,
        preference: Preference,
        now: Instant,
    ) -> Result<(), NoSuchSession> {
        self.check(live, Role::Play, peer)?;
        if let Some(p) = self.peers.get_mut(&peer)
            && let Some(play) = p
                .plays
                .iter_mut()
                .find(|pl| peer::same_live(&pl.live, live))
            && let Some(video) = play.video.as_mut()
            && let Some(estimate) = video.selector.set_preference(preference)
        {
            // Start the estimator again from what the link carried before
            // the cap, as for a viewer that joins.
            p.rtc.bwe().reset(Bitrate::bps(estimate));
        }
        let layers = self.caster_layers(live, now);
        self.choose_layer(peer, live, &layers, None, now);
        Ok(())
    }

    fn check(&self, live: &str, role: Role, peer: PeerId) -> Result<(), NoSuchSession> {
        match self.peers.get(&peer) {
            Some(p) if &*p.live == live && p.role == role && p.member.is_none() => Ok(()),
            _ => Err(NoSuchSession),
        }
    }

    /// A datagram arrived on the media port.
    pub fn handle_receive(
        &mut self,
        now: Instant,
        proto: Protocol,
        source: SocketAddr,
        destination: SocketAddr,
        contents: &[u8],
    ) {
        self.handle_receive_run(now, proto, source, destination, contents);
        self.process(now);
    }

    /// A datagram of a batch read in one go. A caster's packets are fanned
    /// out when its run ends (its frame is complete, a datagram from
    /// someone else arrives, or the caller calls [`Sfu::process`] at the end
    /// of the batch), so each viewer takes a frame's packets in one write
    /// and one poll. Until then they wait: the caller must call `process`
    /// before it sleeps ([`Sfu::poll_timeout`] says "now" while work waits).
    pub fn handle_receive_run(
        &mut self,
        now: Instant,
        proto: Protocol,
        source: SocketAddr,
        destination: SocketAddr,
        contents: &[u8],
    ) {
        let heard = self.isolated(now, |sfu| {
            sfu.receive(now, proto, source, destination, contents)
        });
        match heard.flatten() {
            Some(id)
                if (self.run == Some(id) || self.run.is_none() && self.forwards_of(id))
                    && !self.run_complete() =>
            {
                self.run = Some(id);
            }
            _ => self.process(now),
        }
    }

    /// Whether everything queued is `id`'s packets, waiting for the rest
    /// of its run.
    fn forwards_of(&self, id: PeerId) -> bool {
        self.dirty.is_empty()
            && !self.effects.is_empty()
            && self.effects.iter().all(|fx| fx.peer == id)
    }

    /// A run ends with a video frame (its last packet carries the marker
    /// bit), or at [`MAX_RUN`] packets: what waits behind a longer run
    /// (after the thread was descheduled, say) is not held up for it.
    fn run_complete(&self) -> bool {
        self.effects.back().is_some_and(|fx| {
            fx.forwards.len() >= MAX_RUN
                || fx
                    .forwards
                    .last()
                    .is_some_and(|f| f.marker && f.kind == MediaKind::Video)
        })
    }

    fn receive(
        &mut self,
        now: Instant,
        proto: Protocol,
        source: SocketAddr,
        destination: SocketAddr,
        contents: &[u8],
    ) -> Option<PeerId> {
        let (id, stun) = self.route(source, contents)?;
        if self.run.is_some_and(|r| r != id) {
            // A caster's run ended: its copies go before this is handled.
            self.process(now);
        }
        if self.keep_early(id, proto, source, destination, contents) {
            return None;
        }
        let raw = contents;
        let contents = contents.try_into().ok()?;
        let peer = self.peers.get_mut(&id)?;
        let input = Input::Receive(
            now,
            Receive {
                proto,
                source,
                destination,
                contents,
            },
        );
        if stun {
            // Only a check that passes the integrity test (our password)
            // may move a session to a new address: a forged one must not
            // take a viewer's media elsewhere.
            if !peer.rtc.accepts(&input) {
                return None;
            }
            self.learn_address(id, source);
        }
        let peer = self.peers.get_mut(&id)?;
        peer.last_heard = now;
        self.running = Some(id);
        direct::learn_ufrag(peer, &input, raw);
        if let Err(e) = peer.rtc.handle_input(input) {
            tracing::debug!(peer = %id.log(), "input refused: {e}");
        }
        self.drive(id, now);
        self.running = None;
        Some(id)
    }

    /// Finds the session a datagram belongs to: STUN by ICE username (true
    /// with it: the address is learnt once the check passes), everything
    /// else by remote address.
    fn route(&self, source: SocketAddr, contents: &[u8]) -> Option<(PeerId, bool)> {
        // RFC 7983: only a first byte of 0-3 can be STUN; media and DTLS
        // need not be tried as a STUN message.
        if contents.first().is_some_and(|b| *b < 4)
            && let Ok(stun) = StunMessage::parse(contents)
            && let Some((local, _)) = stun.split_username()
        {
            return self.by_ufrag.get(local).map(|id| (*id, true));
        }
        self.by_addr.get(&source).map(|id| (*id, false))
    }

    /// Session `id` is reachable at `source` (an authenticated check came
    /// from there). A session keeps its last few addresses.
    fn learn_address(&mut self, id: PeerId, source: SocketAddr) {
        if self.by_addr.get(&source) == Some(&id) {
            return;
        }
        if let Some(old) = self.by_addr.insert(source, id)
            && let Some(p) = self.peers.get_mut(&old)
        {
            p.addrs.retain(|a| *a != source);
        }
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        p.addrs.push(source);
        if p.addrs.len() > MAX_ADDRS {
            let oldest = p.addrs.remove(0);
            if self.by_addr.get(&oldest) == Some(&id) {
                self.by_addr.remove(&oldest);
            }
        }
    }

    /// Runs `f`, which may run one peer's `Rtc` (str0m, its DTLS stack, our
    /// code on its behalf). A panic in there ends that peer alone, with an
    /// error log and a count; everything else goes on.
    pub fn isolated<T>(&mut self, now: Instant, f: impl FnOnce(&mut Self) -> T) -> Option<T> {
        self.last_now = self.last_now.max(now);
        match catch_unwind(AssertUnwindSafe(|| f(self))) {
            Ok(v) => Some(v),
            Err(panic) => {
                let why = panic_message(&panic);
                self.stats.peer_panics += 1;
                match self.running.take() {
                    Some(id) => {
                        let live = self.peers.get(&id).map(|p| p.live.to_string());
                        tracing::error!(
                            peer = %id.log(),
                            live = live.as_deref().unwrap_or("?"),
                            "a session failed inside the media engine ({why}); it is closed, \
                             nothing else is affected"
                        );
                        self.evict(id, now);
                    }
                    None => tracing::error!("the media engine failed ({why}); it goes on"),
                }
                None
            }
        }
    }

    /// Removes a session whose `Rtc` cannot be trusted any more (it
    /// panicked): no goodbye, nothing more asked of it.
    fn evict(&mut self, id: PeerId, now: Instant) {
        if let Some(peer) = self.peers.get_mut(&id) {
            // close_peer says goodbye only to a live Rtc.
            peer.rtc.disconnect();
        }
        self.close_peer(id, now);
    }

    /// Time moved on to `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.process(now);
        // Collect first: a peer whose next timeout is `now` again (str0m's
        // pacer does that) is handled once per call, never in a loop.
        let mut due = Vec::new();
        while let Some(&(at, id)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            if let Some(peer) = self.peers.get_mut(&id) {
                peer.timer = None;
                due.push(id);
            }
        }
        for id in due {
            // Each peer on its own: one that fails does not hold the others'
            // timers up.
            self.isolated(now, |sfu| sfu.peer_timeout(id, now));
        }
        self.isolated(now, |sfu| sfu.live_timeouts(now));
        self.process(now);
    }

    fn peer_timeout(&mut self, id: PeerId, now: Instant) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if !peer.connected && now >= peer.connect_by {
            tracing::info!(live = %peer.live, peer = %id.log(), "session never connected; dropped");
            self.close_peer(id, now);
            return;
        }
        if peer.silent(now) {
            tracing::info!(live = %peer.live, peer = %id.log(), "caster silent for 2.5 s; closed");
            self.close_peer(id, now);
            return;
        }
        let prev = self.running.replace(id);
        self.stats.rtc_timeouts += 1;
        if let Err(e) = peer.rtc.handle_input(Input::Timeout(now)) {
            tracing::debug!(peer = %id.log(), "timeout refused: {e}");
        }
        self.drive(id, now);
        self.running = prev;
    }

    fn live_timeouts(&mut self, now: Instant) {
        let due: Vec<Arc<str>> = self
            .lives
            .values()
            .filter(|l| l.next_layer_check.is_some_and(|t| t <= now))
            .map(|l| l.name.clone())
            .collect();
        for live in due {
            self.check_layers(&live, now);
        }
        self.keyframe_timeouts(now);
        self.expire_pending(now);
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Arrival times of the caster packets whose copies to viewers were
    /// queued for sending since the last call: once the runtime has handed
    /// those transmits to the kernel, `now - arrival` is the forwarding
    /// delay. (Copies a viewer's pacer holds back leave later and are not
    /// told apart.)
    pub fn take_forwarded(&mut self) -> std::vec::Drain<'_, Instant> {
        self.forwarded.drain(..)
    }

    /// Whether a caster packet's copies are waiting to be sent.
    pub fn has_forwarded(&self) -> bool {
        !self.forwarded.is_empty()
    }

    pub fn poll_event(&mut self) -> Option<SfuEvent> {
        self.events.pop_front()
    }

    /// When [`Sfu::handle_timeout`] wants to be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.has_work() {
            return Some(self.last_now);
        }
        let peers = self.timers.first().map(|(t, _)| *t);
        let lives = self.lives.values().filter_map(Live::poll_timeout);
        let keyframes = self
            .casters()
            .flat_map(|c| c.video.iter().filter_map(|l| l.keyframes.poll_timeout()));
        let remote_keyframes = self
            .lives
            .values()
            .filter_map(|l| l.remote.as_ref())
            .flat_map(|r| r.video.iter().filter_map(|l| l.keyframes.poll_timeout()));
        let pending = self.pending.values().map(|p| p.expires);
        peers
            .into_iter()
            .chain(pending)
            .chain(lives)
            .chain(keyframes)
            .chain(remote_keyframes)
            .min()
    }

    /// The casters of every live.
    fn casters(&self) -> impl Iterator<Item = &Cast> {
        self.lives
            .values()
            .filter_map(|l| self.peers.get(&l.caster?))
            .filter_map(|p| p.cast.as_ref())
    }

    fn set_timer(&mut self, id: PeerId, at: Instant) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if peer.timer == Some(at) {
            return;
        }
        if let Some(old) = peer.timer.replace(at) {
            self.timers.remove(&(old, id));
        }
        self.timers.insert((at, id));
    }

    /// Sessions held (connected or not), transports still waiting for
    /// their first producer included.
    pub fn session_count(&self) -> usize {
        self.peers.len() + self.pending.len()
    }

    /// Sessions held and, of those, how many have been connected for at
    /// least `settle` (so cost what a session costs). For the load
    /// estimate: once a second, so a walk over the peers is cheap.
    pub fn session_census(&self, now: Instant, settle: Duration) -> Census {
        let settled = now.checked_sub(settle);
        Census {
            sessions: self.session_count(),
            settled: self
                .peers
                .values()
                .filter(|p| matches!((p.connected_at, settled), (Some(at), Some(s)) if at <= s))
                .count(),
        }
    }

    /// Removes a session and everything that points at it.
    fn close_peer(&mut self, id: PeerId, now: Instant) {
        let Some(mut peer) = self.peers.remove(&id) else {
            return;
        };
        // Let str0m say goodbye (DTLS close_notify) if it still can.
        if peer.rtc.is_alive() {
            let _ = peer.rtc.close();
            while let Ok(out) = peer.rtc.poll_output() {
                match out {
                    Output::Transmit(t) => self.transmits.push_back(t),
                    Output::Timeout(_) => break,
                    Output::Event(_) => {}
                }
            }
            peer.rtc.disconnect();
        }
        if let Some(t) = peer.timer {
            self.timers.remove(&(t, id));
        }
        self.by_ufrag.remove(&peer.ufrag);
        for a in &peer.addrs {
            if self.by_addr.get(a) == Some(&id) {
                self.by_addr.remove(a);
            }
        }
        let role = peer.role;
        if let Some(cast) = &peer.cast {
            self.release_live(id, &cast.live.clone(), now);
        }
        for play in &peer.plays {
            self.unwatch(id, &play.live, peer.connected);
        }
        tracing::info!(live = %peer.live, peer = %id.log(), %role, "session closed");
        self.events.push_back(SfuEvent::SessionEnded {
            peer: id,
            live: peer.live.to_string(),
            role,
        });
    }

    /// Caster `id` leaves `live`'s caster slot, if it still holds it.
    fn release_live(&mut self, id: PeerId, live: &str, now: Instant) {
        let Some(l) = self.lives.get_mut(live) else {
            return;
        };
        if l.caster != Some(id) {
            return; // replaced: the live carries on with the new caster
        }
        l.caster = None;
        l.next_layer_check = l.remote.as_ref().map(|_| now + live::LAYER_CHECK);
        let was_on_air = std::mem::replace(&mut l.on_air, false);
        let name = l.name.clone();
        if was_on_air {
            self.events.push_back(SfuEvent::Live(l.state()));
        }
        if l.announced.take() == Some(id) {
            self.events.push_back(SfuEvent::CastEnded {
                live: name.to_string(),
                caster: id,
            });
        }
        if l.is_empty() {
            self.lives.remove(live);
        }
        self.announce_caster_gone(&name, id);
    }

    /// Viewer `id` leaves `live`'s audience.
    fn unwatch(&mut self, id: PeerId, live: &str, connected: bool) {
        let Some(l) = self.lives.get_mut(live) else {
            return;
        };
        if !l.viewers.remove(&id) {
            return;
        }
        if connected {
            l.watching -= 1;
            l.relays.remove(&id);
            self.events.push_back(SfuEvent::Live(l.state()));
        }
        let (unwatched, name) = (l.viewers.is_empty(), l.name.clone());
        if l.is_empty() {
            self.lives.remove(live);
        }
        if unwatched {
            self.announce_interest(&name, false);
        }
    }
}

/// What every session's `Rtc` starts from: ICE-lite (Vessel's address is
/// known), RTP mode (the SFU rewrites each viewer's stream itself),
/// periodic stats for `/metrics`, and its ICE credentials.
fn rtc_config(creds: IceCreds, cert: Option<&DtlsCert>) -> RtcConfig {
    let config = RtcConfig::new()
        .set_ice_lite(true)
        .set_rtp_mode(true)
        .set_stats_interval(Some(STATS_INTERVAL))
        .set_local_ice_credentials(creds);
    match cert {
        Some(cert) => config.set_dtls_cert(cert.clone()),
        None => config,
    }
}

/// What a panic said, for the log.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// What a WHIP caster sends on `mid`, as a producer: the codec it offered
/// first.
fn offered_producer(rtc: &Rtc, mid: Mid) -> Option<direct::Producer> {
    let media = rtc.media(mid)?;
    let spec = media.remote_pts().iter().find_map(|pt| {
        rtc.codec_config()
            .params()
            .iter()
            .find(|p| p.pt() == *pt)
            .map(|p| p.spec())
    })?;
    let simulcast = matches!(media.rids_rx(), Rids::Specific(r) if r.len() > 1);
    Some(direct::Producer::new(media.kind(), spec, simulcast))
}

/// str0m's parse errors span lines and carry a memory address; keep the
/// part a person can use.
fn tidy_sdp_error(e: &str) -> String {
    let parts: Vec<&str> = e
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains("PointerOffset"))
        .collect();
    if parts.is_empty() {
        "not an SDP document".into()
    } else {
        parts.join("; ")
    }
}
