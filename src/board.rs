//! The live board: what the HTTP side knows of each live (on air, viewer
//! count), fed by the media runtime's events, watched by the API and pages.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;

use crate::sfu::{LiveState, PeerId, SourceInfo};

#[derive(Default)]
pub struct LiveBoard {
    lives: Mutex<HashMap<String, Entry>>,
}

/// A live as each media shard sees it, and the sum the pages are shown.
struct Entry {
    tx: watch::Sender<LiveState>,
    shards: HashMap<usize, LiveState>,
    notes: Option<Notes>,
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
    fn new(live: &str) -> Self {
        Entry {
            tx: watch::channel(off_air(live)).0,
            shards: HashMap::new(),
            notes: None,
        }
    }

    /// The shards' states summed, with the notes; sent if changed.
    fn publish(&self, live: &str) -> LiveState {
        let total = LiveState {
            live: live.to_string(),
            on_air: self.shards.values().any(|s| s.on_air),
            viewers: self.shards.values().map(|s| s.viewers).sum(),
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
        total
    }

    fn idle(&self, total: &LiveState) -> bool {
        !total.on_air && total.viewers == 0 && self.notes.is_none() && self.tx.receiver_count() == 0
    }
}

impl LiveBoard {
    /// A live's state as seen by one media shard: the live is on air if its
    /// caster's shard says so, and its viewers are summed over the shards.
    pub fn update_from(&self, shard: usize, state: LiveState) {
        let mut lives = self.lives.lock().unwrap_or_else(|e| e.into_inner());
        let name = state.live.clone();
        let entry = lives
            .entry(name.clone())
            .or_insert_with(|| Entry::new(&name));
        entry.shards.insert(shard, state);
        entry.shards.retain(|_, s| s.on_air || s.viewers > 0);
        let total = entry.publish(&name);
        // Forget idle lives nobody watches, so arbitrary names cannot grow
        // the board without bound.
        if entry.idle(&total) {
            lives.remove(&name);
        }
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
        let mut lives = self.lives.lock().unwrap_or_else(|e| e.into_inner());
        let entry = lives
            .entry(live.to_string())
            .or_insert_with(|| Entry::new(live));
        entry.notes = Some(Notes {
            by,
            ingest,
            source,
            warnings,
        });
        entry.publish(live);
    }

    /// Caster `by` ended: its notes go (not a newer caster's).
    pub fn clear_notes(&self, live: &str, by: PeerId) {
        let mut lives = self.lives.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = lives.get_mut(live) else {
            return;
        };
        if entry.notes.as_ref().is_some_and(|n| n.by == by) {
            entry.notes = None;
            let total = entry.publish(live);
            if entry.idle(&total) {
                lives.remove(live);
            }
        }
    }

    pub fn get(&self, live: &str) -> LiveState {
        let lives = self.lives.lock().unwrap_or_else(|e| e.into_inner());
        lives
            .get(live)
            .map(|e| e.tx.borrow().clone())
            .unwrap_or_else(|| off_air(live))
    }

    /// Lives on air, by name.
    pub fn on_air(&self) -> Vec<LiveState> {
        self.matching(|s| s.on_air)
    }

    /// Lives with a caster or viewers, by name.
    pub fn active(&self) -> Vec<LiveState> {
        self.matching(|s| s.on_air || s.viewers > 0)
    }

    fn matching(&self, keep: impl Fn(&LiveState) -> bool) -> Vec<LiveState> {
        let lives = self.lives.lock().unwrap_or_else(|e| e.into_inner());
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
        self.lives.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A live's state as a stream, for as long as it is held: dropping it
    /// forgets the live if nothing else keeps it (an event stream opened on
    /// a made-up name must not stay behind).
    pub fn watch(self: &Arc<Self>, live: &str) -> LiveWatch {
        LiveWatch {
            inner: Some(WatchStream::new(self.subscribe(live))),
            board: self.clone(),
            live: live.to_string(),
        }
    }

    /// Forgets `live` if it is off air, unwatched and nobody subscribes.
    fn release(&self, live: &str) {
        let mut lives = self.lives.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = lives.get(live) {
            let s = e.tx.borrow();
            let idle =
                !s.on_air && s.viewers == 0 && e.notes.is_none() && e.tx.receiver_count() == 0;
            drop(s);
            if idle {
                lives.remove(live);
            }
        }
    }

    pub fn subscribe(&self, live: &str) -> watch::Receiver<LiveState> {
        let mut lives = self.lives.lock().unwrap_or_else(|e| e.into_inner());
        lives
            .entry(live.to_string())
            .or_insert_with(|| Entry::new(live))
            .tx
            .subscribe()
    }
}

/// A live's state as a stream (see [`LiveBoard::watch`]).
pub struct LiveWatch {
    inner: Option<WatchStream<LiveState>>,
    board: Arc<LiveBoard>,
    live: String,
}

impl Stream for LiveWatch {
    type Item = LiveState;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<LiveState>> {
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
}
