//! The live board: what the HTTP side knows of each live (on air, viewer
//! count), fed by the media runtime's events, watched by the API and pages.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

use crate::sfu::LiveState;

#[derive(Default)]
pub struct LiveBoard {
    lives: Mutex<HashMap<String, Entry>>,
}

/// A live as each media shard sees it, and the sum the pages are shown.
struct Entry {
    tx: watch::Sender<LiveState>,
    shards: HashMap<usize, LiveState>,
}

fn off_air(live: &str) -> LiveState {
    LiveState {
        live: live.to_string(),
        on_air: false,
        viewers: 0,
    }
}

impl LiveBoard {
    /// A live's state as seen by one media shard: the live is on air if its
    /// caster's shard says so, and its viewers are summed over the shards.
    pub fn update_from(&self, shard: usize, state: LiveState) {
        let mut lives = self.lives.lock().unwrap_or_else(|e| e.into_inner());
        let name = state.live.clone();
        let entry = lives.entry(name.clone()).or_insert_with(|| Entry {
            tx: watch::channel(off_air(&name)).0,
            shards: HashMap::new(),
        });
        entry.shards.insert(shard, state);
        entry.shards.retain(|_, s| s.on_air || s.viewers > 0);
        let total = LiveState {
            live: name.clone(),
            on_air: entry.shards.values().any(|s| s.on_air),
            viewers: entry.shards.values().map(|s| s.viewers).sum(),
        };
        if *entry.tx.borrow() != total {
            entry.tx.send_replace(total.clone());
        }
        // Forget idle lives nobody watches, so arbitrary names cannot grow
        // the board without bound.
        if !total.on_air && total.viewers == 0 && entry.tx.receiver_count() == 0 {
            lives.remove(&name);
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

    pub fn subscribe(&self, live: &str) -> watch::Receiver<LiveState> {
        let mut lives = self.lives.lock().unwrap_or_else(|e| e.into_inner());
        lives
            .entry(live.to_string())
            .or_insert_with(|| Entry {
                tx: watch::channel(off_air(live)).0,
                shards: HashMap::new(),
            })
            .tx
            .subscribe()
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
    fn subscribers_see_changes() {
        let board = LiveBoard::default();
        let mut rx = board.subscribe("x");
        assert!(!rx.borrow().on_air);
        board.update_from(0, state("x", true, 1));
        assert!(rx.has_changed().unwrap());
        assert!(rx.borrow_and_update().on_air);
    }
}
