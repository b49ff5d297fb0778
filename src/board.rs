//! The live board: what the HTTP side knows of each live (on air, viewer
//! count), fed by the media runtime's events, watched by the API and pages.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

use crate::sfu::LiveState;

#[derive(Default)]
pub struct LiveBoard {
    lives: Mutex<HashMap<String, watch::Sender<LiveState>>>,
}

fn off_air(live: &str) -> LiveState {
    LiveState {
        live: live.to_string(),
        on_air: false,
        viewers: 0,
    }
}

impl LiveBoard {
    pub fn update(&self, state: LiveState) {
        let mut lives = self.lives.lock().unwrap_or_else(|e| e.into_inner());
        match lives.get(&state.live) {
            Some(tx) => {
                tx.send_replace(state.clone());
            }
            None => {
                let name = state.live.clone();
                lives.insert(name, watch::channel(state.clone()).0);
            }
        }
        // Forget idle lives nobody watches, so arbitrary names cannot grow
        // the board without bound.
        if !state.on_air
            && state.viewers == 0
            && let Some(tx) = lives.get(&state.live)
            && tx.receiver_count() == 0
        {
            lives.remove(&state.live);
        }
    }

    pub fn get(&self, live: &str) -> LiveState {
        let lives = self.lives.lock().unwrap_or_else(|e| e.into_inner());
        lives
            .get(live)
            .map(|tx| tx.borrow().clone())
            .unwrap_or_else(|| off_air(live))
    }

    /// Lives on air, by name.
    pub fn on_air(&self) -> Vec<LiveState> {
        let lives = self.lives.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<LiveState> = lives
            .values()
            .map(|tx| tx.borrow().clone())
            .filter(|s| s.on_air)
            .collect();
        v.sort_by(|a, b| a.live.cmp(&b.live));
        v
    }

    pub fn subscribe(&self, live: &str) -> watch::Receiver<LiveState> {
        let mut lives = self.lives.lock().unwrap_or_else(|e| e.into_inner());
        lives
            .entry(live.to_string())
            .or_insert_with(|| watch::channel(off_air(live)).0)
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
        board.update(state("b", true, 2));
        board.update(state("a", true, 0));
        board.update(state("c", false, 1));
        let names: Vec<_> = board.on_air().into_iter().map(|s| s.live).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(board.get("c").viewers, 1);
        assert_eq!(board.get("nope"), state("nope", false, 0));
    }

    #[test]
    fn subscribers_see_changes() {
        let board = LiveBoard::default();
        let mut rx = board.subscribe("x");
        assert!(!rx.borrow().on_air);
        board.update(state("x", true, 1));
        assert!(rx.has_changed().unwrap());
        assert!(rx.borrow_and_update().on_air);
    }
}
