//! What one shard's media thread holds besides its `Sfu`: the links to
//! the other shards, its counters, the casters registry.

use super::*;

/// Media hand-offs queued towards one shard before they are dropped.
pub(super) const REMOTE_QUEUE: usize = 4096;

/// The way to one shard: media on a bounded queue that drops when full, as
/// a congested link would; control (who watches what, keyframe requests, a
/// caster gone) on one that never drops it — a lost `Interest` would leave
/// that shard's viewers without video until their audience emptied.
#[derive(Clone)]
pub(super) struct ShardLink {
    pub(super) media: mpsc::Sender<Remote>,
    pub(super) control: mpsc::UnboundedSender<Remote>,
}

/// What a shard receives from the others.
pub(super) struct ShardInbox {
    pub(super) media: mpsc::Receiver<Remote>,
    pub(super) control: mpsc::UnboundedReceiver<Remote>,
}

pub(super) fn shard_link(media_queue: usize) -> (ShardLink, ShardInbox) {
    let (media, media_rx) = mpsc::channel(media_queue);
    let (control, control_rx) = mpsc::unbounded_channel();
    (
        ShardLink { media, control },
        ShardInbox {
            media: media_rx,
            control: control_rx,
        },
    )
}

impl ShardLink {
    /// Passes `msg` on; false if it was media dropped for a full queue.
    pub(super) fn send(&self, msg: Remote) -> bool {
        match msg {
            Remote::Media { .. } => self.media.try_send(msg).is_ok(),
            control => {
                let _ = self.control.send(control);
                true
            }
        }
    }
}

impl ShardInbox {
    /// The next message: control first, it is small and must not wait
    /// behind a queue of media.
    pub(super) async fn recv(&mut self) -> Option<Remote> {
        tokio::select! {
            biased;
            Some(m) = self.control.recv() => Some(m),
            Some(m) = self.media.recv() => Some(m),
            else => None,
        }
    }

    pub(super) fn try_recv(&mut self) -> Option<Remote> {
        self.control
            .try_recv()
            .or_else(|_| self.media.try_recv())
            .ok()
    }
}

/// A media thread's place among the shards.
pub(super) struct Shard {
    pub(super) index: usize,
    pub(super) remote_rx: ShardInbox,
    pub(super) remotes: Vec<ShardLink>,
    pub(super) metrics: Arc<Metrics>,
    /// This shard's handles on the per-datagram counters: one atomic add
    /// each per loop turn, no label lookup.
    pub(super) counters: MediaCounters,
    /// The `Sfu` counters as last added to `metrics`.
    pub(super) published: Cell<SfuStats>,
    /// Who hears of sessions ending and casts starting and ending.
    pub(super) observer: Option<mpsc::UnboundedSender<SfuEvent>>,
    /// The handle's caster registry: a caster that ends leaves it.
    pub(super) casters: Casters,
    pub(super) cast_sessions: CastSessions,
    /// Where this worker says how busy it is.
    pub(super) loads: Arc<Loads>,
    /// Cores' worth of CPU this worker may use (its share of a quota).
    pub(super) share: f64,
    /// Sessions this shard opens and ends are booked here.
    pub(super) sessions: Arc<SessionBook>,
}

/// The current caster of each live (see [`MediaHandle::caster`]).
pub(super) type Casters = Arc<Mutex<HashMap<String, PeerId>>>;

/// `peer` no longer casts `live`: it leaves the registry, unless another
/// caster has taken its place there.
pub(super) fn forget_caster(casters: &Casters, live: &str, peer: PeerId) {
    let mut map = casters.lock().unwrap_or_else(|e| e.into_inner());
    if map.get(live) == Some(&peer) {
        map.remove(live);
    }
}

pub(super) struct MediaCounters {
    pub(super) packets_in: Counter,
    pub(super) bytes_in: Counter,
    pub(super) packets_out: Counter,
    pub(super) bytes_out: Counter,
}

impl MediaCounters {
    pub(super) fn new(m: &Metrics) -> Self {
        Self {
            packets_in: m.packets.get_or_create(&metrics::IN).clone(),
            bytes_in: m.bytes.get_or_create(&metrics::IN).clone(),
            packets_out: m.packets.get_or_create(&metrics::OUT).clone(),
            bytes_out: m.bytes.get_or_create(&metrics::OUT).clone(),
        }
    }
}
