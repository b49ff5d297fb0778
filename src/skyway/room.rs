//! A room: its kind, its members in the order they joined, its log, and
//! for an SFU room each member's media negotiation.

use std::collections::{HashMap, VecDeque};
use std::fmt;

use super::member::MemberMedia;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Members connect to each other; the server relays their signaling.
    Mesh,
    /// Members connect to Vessel's SFU, which offers.
    Sfu,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Mesh => "mesh",
            Mode::Sfu => "sfu",
        })
    }
}

pub(super) struct Room {
    pub mode: Mode,
    pub members: Vec<String>,
    /// `ROOM_GET_LOGS`: JSON strings, oldest first.
    pub log: VecDeque<String>,
    /// SFU rooms: per member, its session with the SFU.
    pub media: HashMap<String, MemberMedia>,
}

impl Room {
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            members: Vec::new(),
            log: VecDeque::new(),
            media: HashMap::new(),
        }
    }
}
