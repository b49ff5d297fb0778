//! The live board: what the HTTP side knows of each live (on air, viewer
//! count), fed by the media runtime's events, watched by the API and pages.
//!
//! Two views of each live. The node's own ([`LiveBoard::get`], `on_air`,
//! `active`): what this node's media shards serve, relays to other nodes
//! included; the node's own work (LL-HLS, recording, relays, shutdown,
//! `/metrics`) reads it. And the shown one ([`LiveBoard::shown`],
//! `shown_on_air`, `watch`): what `/api/lives` and the pages' events
//! tell. On one node they are the same figures; in a cluster the shown
//! one is the cluster's (see [`Shown`]), from what the other nodes publish
//! (`cluster/audience.rs` calls [`LiveBoard::set_elsewhere`]).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;

use crate::sfu::{LiveState, PeerId, SourceInfo};

#[derive(Default)]
pub struct LiveBoard {
    lives: Mutex<HashMap<String, Entry>>,
    /// A [`Mode`], as a byte.
    mode: AtomicU8,
}

/// What the other nodes of a cluster add to a live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Elsewhere {
    /// People watching it there (relays between nodes left out).
    pub viewers: usize,
    /// Its caster is on another node.
    pub on_air: bool,
    /// Another node's access rules make it private: this node, which may
    /// not know it as private, shows only its own figures of it.
    pub private: bool,
}

/// Whose viewers the shown counts are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No cluster: this node's.
    Single = 0,
    /// The cluster's: every node's, as they last published them.
    Cluster = 1,
    /// A cluster whose totals cannot be read now (Redis is unreachable):
    /// this node's people only, and the API says so.
    ClusterLocal = 2,
}

impl Mode {
    fn from_u8(b: u8) -> Self {
        match b {
            1 => Mode::Cluster,
            2 => Mode::ClusterLocal,
            _ => Mode::Single,
        }
    }
}

/// A live as `/api/lives` and the pages' events show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Shown {
    /// `viewers` and `onAir` are the cluster's in a cluster: people
    /// watching on every node (the relays that carry the live between
    /// nodes are not people), and on air if its caster is on any node.
    #[serde(flatten)]
    pub state: LiveState,
    /// Sessions watching on this node, relays to other nodes included (the
    /// figure `viewers` was before clusters counted).
    pub viewers_here: usize,
    /// Of those, relays to other nodes (left out when none).
    #[serde(skip_serializing_if = "is_zero")]
    pub relays_here: usize,
    /// In a cluster: `"cluster"` when `viewers` is the cluster's total,
    /// `"node"` while the cluster's Redis is unreachable and it is this
    /// node's people only. Absent on a single node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub viewers_scope: Option<&'static str>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The shown state of a live from this node's (`here`) and the others'.
fn shown(here: &LiveState, elsewhere: Elsewhere, mode: Mode) -> Shown {
    let mut state = here.clone();
    let scope = match mode {
        Mode::Single => None,
        Mode::Cluster | Mode::ClusterLocal => {
            let elsewhere = if elsewhere.private {
                Elsewhere::default()
            } else {
                elsewhere
            };
            state.viewers = here.viewers.saturating_sub(here.relays) + elsewhere.viewers;
            state.on_air |= elsewhere.on_air;
            Some(if mode == Mode::Cluster {
                "cluster"
            } else {
                "node"
            })
        }
    };
    Shown {
        state,
        viewers_here: here.viewers,
        relays_here: here.relays,
        viewers_scope: scope,
    }
}

/// A live as each media shard sees it, and the sum the pages are shown.
struct Entry {
    /// This node's view: the shards' states summed.
    tx: watch::Sender<LiveState>,
    /// The shown view.
    shown: watch::Sender<Shown>,
    shards: HashMap<usize, LiveState>,
    notes: Option<Notes>,
    elsewhere: Elsewhere,
}

/// What a caster outside WebRTC (RTMP) tells of its live.
struct Notes {
    /// The caster's session: only it may change or clear them.
    by: PeerId,
    ingest: &'static str,
    source: SourceInfo,
    warnings: Vec<String>,
}

fn off_air(live: &str) -> LiveState {
    LiveState {
        live: live.to_string(),
        ..Default::default()
    }
}

impl Entry {
    fn new(live: &str, mode: Mode) -> Self {
        Entry {
            tx: watch::channel(off_air(live)).0,
            shown: watch::channel(shown(&off_air(live), Elsewhere::default(), mode)).0,
            shards: HashMap::new(),
            notes: None,
            elsewhere: Elsewhere::default(),
        }
    }

    /// The shards' states summed, with the notes; both views sent if
    /// changed.
    fn publish(&self, live: &str, mode: Mode) -> LiveState {
        let total = LiveState {
            live: live.to_string(),
            on_air: self.shards.values().any(|s| s.on_air),
            viewers: self.shards.values().map(|s| s.viewers).sum(),
            relays: self.shards.values().map(|s| s.relays).sum(),
            ingest: self.notes.as_ref().map(|n| n.ingest),
            source: self.notes.as_ref().map(|n| n.source.clone()),
            warnings: self
                .notes
                .as_ref()
                .map(|n| n.warnings.clone())
                .unwrap_or_default(),
        };
        if *self.tx.borrow() != total {
            self.tx.send_replace(total.clone());
        }
        let view = shown(&total, self.elsewhere, mode);
        if *self.shown.borrow() != view {
            self.shown.send_replace(view);
        }
        total
    }

    /// Nothing here, nothing elsewhere, nobody watching the entry.
    fn idle(&self, total: &LiveState) -> bool {
        !total.on_air
            && total.viewers == 0
            && self.notes.is_none()
            && self.elsewhere == Elsewhere::default()
            && self.tx.receiver_count() == 0
            && self.shown.receiver_count() == 0
    }
}

impl LiveBoard {
    fn mode(&self) -> Mode {
        Mode::from_u8(self.mode.load(Ordering::Relaxed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.lives.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A live's state as seen by one media shard: the live is on air if its
    /// caster's shard says so, and its viewers are summed over the shards.
    pub fn update_from(&self, shard: usize, state: LiveState) {
        let mode = self.mode();
        let mut lives = self.lock();
        let name = state.live.clone();
        let entry = lives
            .entry(name.clone())
            .or_insert_with(|| Entry::new(&name, mode));
        entry.shards.insert(shard, state);
        entry.shards.retain(|_, s| s.on_air || s.viewers > 0);
        let total = entry.publish(&name, mode);
        // Forget idle lives nobody watches, so arbitrary names cannot grow
        // the board without bound.
        if entry.idle(&total) {
            lives.remove(&name);
        }
    }

    /// What the other nodes of the cluster add to each live, as just read
    /// (lives not in `view` have nothing elsewhere); `None` when it cannot
    /// be read (Redis unreachable): the shown counts fall back to this
    /// node's until it can. Only a node in a cluster calls this.
    pub fn set_elsewhere(&self, view: Option<&HashMap<String, Elsewhere>>) {
        let mode = if view.is_some() {
            Mode::Cluster
        } else {
            Mode::ClusterLocal
        };
        self.mode.store(mode as u8, Ordering::Relaxed);
        let mut lives = self.lock();
        // Lives only elsewhere get an entry (so `/api/lives` lists them);
        // the names come from the cluster's own nodes.
        for (name, e) in view.into_iter().flatten() {
            if *e != Elsewhere::default() && !lives.contains_key(name) {
                lives.insert(name.clone(), Entry::new(name, mode));
            }
        }
        lives.retain(|name, entry| {
            entry.elsewhere = view.and_then(|v| v.get(name).copied()).unwrap_or_default();
            let total = entry.publish(name, mode);
            !entry.idle(&total)
        });
    }

    /// What caster `by` (an RTMP publish) tells of `live`: replaces what it
    /// told before; another caster's notes are replaced too (the newest
    /// caster is the live's).
    pub fn set_notes(
        &self,
        live: &str,
        by: PeerId,
        ingest: &'static str,
        source: SourceInfo,
        warnings: Vec<String>,
    ) {
        let mode = self.mode();
        let mut lives = self.lock();
        let entry = lives
            .entry(live.to_string())
            .or_insert_with(|| Entry::new(live, mode));
        entry.notes = Some(Notes {
            by,
            ingest,
            source,
            warnings,
        });
        entry.publish(live, mode);
    }

    /// Caster `by` ended: its notes go (not a newer caster's).
    pub fn clear_notes(&self, live: &str, by: PeerId) {
        let mode = self.mode();
        let mut lives = self.lock();
        let Some(entry) = lives.get_mut(live) else {
            return;
        };
        if entry.notes.as_ref().is_some_and(|n| n.by == by) {
            entry.notes = None;
            let total = entry.publish(live, mode);
            if entry.idle(&total) {
                lives.remove(live);
            }
        }
    }

    /// A live's state on this node.
    pub fn get(&self, live: &str) -> LiveState {
        let lives = self.lock();
        lives
            .get(live)
            .map(|e| e.tx.borrow().clone())
            .unwrap_or_else(|| off_air(live))
    }

    /// A live's state as shown (the cluster's, in a cluster).
    pub fn shown(&self, live: &str) -> Shown {
        let lives = self.lock();
        lives
            .get(live)
            .map(|e| e.shown.borrow().clone())
            .unwrap_or_else(|| shown(&off_air(live), Elsewhere::default(), self.mode()))
    }

    /// Lives on air anywhere (in a cluster, on any node), as shown, by
    /// name.
    pub fn shown_on_air(&self) -> Vec<Shown> {
        let lives = self.lock();
        let mut v: Vec<Shown> = lives
            .values()
            .map(|e| e.shown.borrow().clone())
            .filter(|s| s.state.on_air)
            .collect();
        v.sort_by(|a, b| a.state.live.cmp(&b.state.live));
        v
    }

    /// Lives on air on this node, by name.
    pub fn on_air(&self) -> Vec<LiveState> {
        self.matching(|s| s.on_air)
    }

    /// Lives with a caster or viewers on this node, by name.
    pub fn active(&self) -> Vec<LiveState> {
        self.matching(|s| s.on_air || s.viewers > 0)
    }

    fn matching(&self, keep: impl Fn(&LiveState) -> bool) -> Vec<LiveState> {
        let lives = self.lock();
        let mut v: Vec<LiveState> = lives
            .values()
            .map(|e| e.tx.borrow().clone())
            .filter(|s| keep(s))
            .collect();
        v.sort_by(|a, b| a.live.cmp(&b.live));
        v
    }

    /// Entries held now (for tests and bounds).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A live's shown state as a stream, for as long as it is held:
    /// dropping it forgets the live if nothing else keeps it (an event
    /// stream opened on a made-up name must not stay behind).
    pub fn watch(self: &Arc<Self>, live: &str) -> LiveWatch {
        let mode = self.mode();
        let rx = self
            .lock()
            .entry(live.to_string())
            .or_insert_with(|| Entry::new(live, mode))
            .shown
            .subscribe();
        LiveWatch {
            inner: Some(WatchStream::new(rx)),
            board: self.clone(),
            live: live.to_string(),
        }
    }

    /// Forgets `live` if it is idle.
    fn release(&self, live: &str) {
        let mut lives = self.lock();
        if let Some(e) = lives.get(live) {
            let total = e.tx.borrow().clone();
            if e.idle(&total) {
                lives.remove(live);
            }
        }
    }

    /// A live's state on this node, as it changes.
    pub fn subscribe(&self, live: &str) -> watch::Receiver<LiveState> {
        let mode = self.mode();
        self.lock()
            .entry(live.to_string())
            .or_insert_with(|| Entry::new(live, mode))
            .tx
            .subscribe()
    }
}

/// A live's state as a stream (see [`LiveBoard::watch`]).
pub struct LiveWatch {
    inner: Option<WatchStream<Shown>>,
    board: Arc<LiveBoard>,
    live: String,
}

impl Stream for LiveWatch {
    type Item = Shown;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Shown>> {
        match self.inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_next(cx),
            None => Poll::Ready(None),
        }
    }
}

impl Drop for LiveWatch {
    fn drop(&mut self) {
        // The receiver first, so that it no longer counts.
        self.inner.take();
        self.board.release(&self.live);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn state(live: &str, on_air: bool, viewers: usize) -> LiveState {
        LiveState {
            live: live.into(),
            on_air,
            viewers,
            ..Default::default()
        }
    }

    #[test]
    fn lists_only_lives_on_air() {
        let board = LiveBoard::default();
        board.update_from(0, state("b", true, 2));
        board.update_from(0, state("a", true, 0));
        board.update_from(0, state("c", false, 1));
        let names: Vec<_> = board.on_air().into_iter().map(|s| s.live).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(board.get("c").viewers, 1);
        assert_eq!(board.get("nope"), state("nope", false, 0));
    }

    #[test]
    fn shards_add_up() {
        let board = LiveBoard::default();
        let mut rx = board.subscribe("x");
        board.update_from(0, state("x", true, 2));
        board.update_from(1, state("x", false, 3));
        assert_eq!(board.get("x"), state("x", true, 5));
        board.update_from(0, state("x", false, 1));
        assert_eq!(*rx.borrow_and_update(), state("x", false, 4));
        board.update_from(1, state("x", false, 0));
        board.update_from(0, state("x", false, 0));
        assert_eq!(board.get("x"), state("x", false, 0));
    }

    #[test]
    fn watching_made_up_names_leaves_nothing_behind() {
        let board = Arc::new(LiveBoard::default());
        let watches: Vec<LiveWatch> = (0..100).map(|i| board.watch(&format!("x{i}"))).collect();
        assert_eq!(board.len(), 100);
        let keep = board.watch("x7");
        drop(watches);
        assert_eq!(board.len(), 1, "only what is still watched");
        // A live on air stays when its last watcher goes.
        board.update_from(0, state("x7", true, 0));
        drop(keep);
        assert_eq!(board.len(), 1);
        board.update_from(0, state("x7", false, 0));
        assert!(board.is_empty());
    }

    #[test]
    fn subscribers_see_changes() {
        let board = LiveBoard::default();
        let mut rx = board.subscribe("x");
        assert!(!rx.borrow().on_air);
        board.update_from(0, state("x", true, 1));
        assert!(rx.has_changed().unwrap());
        assert!(rx.borrow_and_update().on_air);
    }

    fn relayed(live: &str, on_air: bool, viewers: usize, relays: usize) -> LiveState {
        LiveState {
            relays,
            ..state(live, on_air, viewers)
        }
    }

    fn elsewhere(entries: &[(&str, usize, bool)]) -> HashMap<String, Elsewhere> {
        entries
            .iter()
            .map(|(l, viewers, on_air)| {
                (
                    l.to_string(),
                    Elsewhere {
                        viewers: *viewers,
                        on_air: *on_air,
                        private: false,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn one_node_shows_its_own_figures() {
        let board = LiveBoard::default();
        board.update_from(0, state("x", true, 2));
        let shown = board.shown("x");
        assert_eq!(shown.state, state("x", true, 2));
        assert_eq!((shown.viewers_here, shown.viewers_scope), (2, None));
        let json = serde_json::to_value(&shown).unwrap();
        assert_eq!(json["viewers"], 2);
        assert_eq!(json["onAir"], true);
        assert!(json.get("relaysHere").is_none() && json.get("viewersScope").is_none());
    }

    #[test]
    fn a_cluster_shows_every_nodes_people_and_no_relays() {
        let board = LiveBoard::default();
        // The origin: its caster, one person and two edges' relays here.
        board.update_from(0, relayed("x", true, 3, 2));
        board.set_elsewhere(Some(&elsewhere(&[("x", 4, false)])));
        let shown = board.shown("x");
        assert_eq!(shown.state.viewers, 1 + 4, "people here and elsewhere");
        assert_eq!((shown.viewers_here, shown.relays_here), (3, 2));
        assert_eq!(shown.viewers_scope, Some("cluster"));
        // This node's own figures are unchanged.
        assert_eq!(board.get("x").viewers, 3);
        let json = serde_json::to_value(&shown).unwrap();
        assert_eq!(json["viewersHere"], 3);
        assert_eq!(json["relaysHere"], 2);
    }

    #[test]
    fn a_live_cast_elsewhere_is_listed_until_it_ends_there() {
        let board = Arc::new(LiveBoard::default());
        let mut events = board.watch("y");
        board.set_elsewhere(Some(&elsewhere(&[("y", 2, true), ("z", 0, false)])));
        let listed: Vec<_> = board.shown_on_air().into_iter().map(|s| s.state).collect();
        assert_eq!(listed, [state("y", true, 2)]);
        assert!(board.on_air().is_empty(), "not on air on this node");
        assert_eq!(
            board.len(),
            1,
            "nothing is kept of a live with nothing anywhere"
        );
        let first = futures_util::FutureExt::now_or_never(events.next()).flatten();
        assert_eq!(first.map(|s| s.state.viewers), Some(2));
        board.set_elsewhere(Some(&HashMap::new()));
        assert!(board.shown_on_air().is_empty());
        drop(events);
        assert!(
            board.is_empty(),
            "forgotten once it ended and nobody watches"
        );
    }

    #[test]
    fn without_the_clusters_figures_a_node_shows_its_own_people() {
        let board = LiveBoard::default();
        board.update_from(0, relayed("x", true, 3, 1));
        board.set_elsewhere(Some(&elsewhere(&[("x", 5, false)])));
        assert_eq!(board.shown("x").state.viewers, 7);
        board.set_elsewhere(None);
        let shown = board.shown("x");
        assert_eq!(shown.state.viewers, 2);
        assert_eq!(shown.viewers_scope, Some("node"));
    }

    #[test]
    fn a_live_private_elsewhere_shows_only_this_nodes_figures() {
        let board = LiveBoard::default();
        let private = Elsewhere {
            viewers: 4,
            on_air: true,
            private: true,
        };
        board.set_elsewhere(Some(&HashMap::from([("p".to_string(), private)])));
        assert!(board.shown_on_air().is_empty(), "not listed");
        assert_eq!(board.shown("p").state, state("p", false, 0));
    }
}
