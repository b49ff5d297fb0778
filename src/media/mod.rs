//! The media runtime: the thin IO shell around the sans-IO [`Sfu`]. It owns
//! the UDP sockets, the clock and the thread, and talks to the HTTP side
//! through commands (in) and the [`LiveBoard`] (out).

use std::cell::Cell;
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::select_all;
use str0m::Candidate;
use str0m::net::{Protocol, Transmit};
use tokio::sync::{mpsc, oneshot};

use crate::board::LiveBoard;
use crate::limits::load::{LoadMeter, Loads};
use crate::limits::{Client, Limit, Refusal, SessionBook};
use prometheus_client::metrics::counter::Counter;

use crate::metrics::{self, Metrics};
use crate::sfu::layer::Preference;
use crate::sfu::setup::{self, Prepared, Setup};
use crate::sfu::shard::Remote;
use crate::sfu::{
    Answered, Consumer, DirectError, DirectTransport, JoinError, Joined, MemberError, MemberOffer,
    NoSuchSession, PeerId, PreparedDirect, PreparedMember, Produce, Produced, Producer, Role, Sfu,
    SfuEvent, SfuStats, Subscription,
};
use str0m::config::Fingerprint;

mod bind;
mod command;
mod handle;
mod run;
mod shard;
pub(crate) mod tcp;
#[cfg(test)]
mod tests;

pub use bind::*;
use command::*;
pub use handle::*;
use run::*;
use shard::*;
pub(crate) use tcp::TcpEvent;

/// How a session is set up, beyond its SDP.
#[derive(Debug, Clone, Copy, Default)]
pub struct JoinOptions {
    /// A caster that cannot make a keyframe when asked (RTMP): its viewers
    /// start from its kept group of pictures (`sfu::gop`).
    pub replay_gop: bool,
    /// A viewer that is another node's relay: every video layer, each on
    /// the rid its offer receives it on (`sfu::setup::prepare_relay`).
    /// Only for requests signed with the cluster secret.
    pub relay: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error(transparent)]
    Join(#[from] JoinError),
    #[error(transparent)]
    NoSuchSession(#[from] NoSuchSession),
    #[error(transparent)]
    Direct(#[from] DirectError),
    #[error(transparent)]
    Member(#[from] MemberError),
    #[error("the media engine is not running")]
    Down,
    #[error(transparent)]
    Limited(#[from] Refusal),
}

/// Starts the media runtime: one thread per shard, each with its own
/// sockets (`shards[i]`) and `Sfu` (`sfus[i]`).
/// `observer` hears every event but live states (those go to `board`).
pub fn spawn(
    shards: Vec<Vec<MediaSocket>>,
    sfus: Vec<Sfu>,
    board: Arc<LiveBoard>,
    metrics: Arc<Metrics>,
    observer: Option<mpsc::UnboundedSender<SfuEvent>>,
    sessions: Arc<SessionBook>,
) -> io::Result<MediaHandle> {
    assert_eq!(shards.len(), sfus.len(), "one Sfu per shard");
    let setups: Arc<[Setup]> = sfus.iter().map(Sfu::setup).collect();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let casters = Casters::default();
    let cast_sessions = CastSessions::default();
    let loads = Arc::new(Loads::new(shards.len(), sessions.caps().max_load));
    let quota = crate::limits::cpu_quota::cores();
    if let Some(q) = quota {
        tracing::info!("CPU quota: {q:.2} cores; media workers measure their load against it");
    }
    let share = crate::limits::load::worker_share(quota, shards.len());
    let mut commands = Vec::new();
    let mut remotes = Vec::new();
    let mut remote_rxs = Vec::new();
    for _ in 0..shards.len() {
        let (tx, rx) = mpsc::channel(256);
        commands.push((tx, Some(rx)));
        // Media between shards: a full queue drops, as a congested link would.
        let (link, inbox) = shard_link(REMOTE_QUEUE);
        remotes.push(link);
        remote_rxs.push(Some(inbox));
    }
    for (i, (sockets, sfu)) in shards.into_iter().zip(sfus).enumerate() {
        for s in &sockets {
            s.socket.set_nonblocking(true)?;
            set_buffers(&s.socket);
            if let Some(l) = &s.tcp {
                l.set_nonblocking(true)?;
            }
        }
        let rx = commands[i].1.take().expect("once");
        let remote_rx = remote_rxs[i].take().expect("once");
        let remotes = remotes.clone();
        let board = board.clone();
        let metrics = metrics.clone();
        let observer = observer.clone();
        let casters = casters.clone();
        let cast_sessions = cast_sessions.clone();
        let sessions = sessions.clone();
        let loads = loads.clone();
        std::thread::Builder::new()
            .name(format!("vessel-media-{i}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("cannot start the media runtime: {e}");
                        std::process::exit(1);
                    }
                };
                let shard = Shard {
                    index: i,
                    remote_rx,
                    remotes,
                    counters: MediaCounters::new(&metrics),
                    metrics,
                    published: Cell::new(SfuStats::default()),
                    observer,
                    casters,
                    cast_sessions,
                    sessions,
                    loads,
                    share,
                };
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    rt.block_on(run(sockets, sfu, board, rx, shard))
                }));
                match ran {
                    // The HTTP side went away: the process is shutting down.
                    Ok(Ok(())) => {}
                    // Without the media thread every live is lost: say so and
                    // exit, so that a supervisor (systemd, Docker) restarts
                    // Vessel instead of leaving it up but mute.
                    Ok(Err(e)) => {
                        tracing::error!("media runtime failed: {e}; exiting");
                        std::process::exit(1);
                    }
                    Err(_) => {
                        tracing::error!("media runtime panicked; exiting");
                        std::process::exit(1);
                    }
                }
            })?;
    }
    Ok(MediaHandle {
        shards: commands.into_iter().map(|(tx, _)| tx).collect(),
        next: Arc::new(AtomicUsize::new(0)),
        casters,
        cast_sessions,
        sessions,
        setups,
        preparing: Arc::new(tokio::sync::Semaphore::new(cores)),
        loads,
    })
}
