//! Deadlines on stream connections that carry media framing (ICE-TCP,
//! TURN over TCP/TLS): a connection must say something soon after it opens,
//! finish every frame it starts, and not sit silent for longer than its
//! protocol ever needs. Without them a client holds a task, buffers and a
//! place under the connection cap for as long as it likes.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// How long a stream connection may wait at each point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// From accept (and the TLS handshake) to the first complete frame.
    pub first: Duration,
    /// Between frames once the connection has spoken.
    pub idle: Duration,
    /// From the first byte of a frame to its last.
    pub frame: Duration,
}

impl Deadlines {
    /// ICE-TCP: an ICE agent sends a consent check at least every 5 s
    /// (RFC 7675), so 30 s of silence means it is gone.
    pub const ICE_TCP: Deadlines = Deadlines {
        first: Duration::from_secs(10),
        idle: Duration::from_secs(30),
        frame: Duration::from_secs(10),
    };

    /// TURN over TCP/TLS: a client keeps its permissions alive with a
    /// request at least every 300 s (RFC 8656 §9); silent for longer, it
    /// has nothing left to relay.
    pub const TURN: Deadlines = Deadlines {
        first: Duration::from_secs(10),
        idle: Duration::from_secs(300),
        frame: Duration::from_secs(10),
    };

    /// How long the next read may take: `spoken` once a whole frame has
    /// come, `partial` while a frame is half read.
    pub fn wait(&self, spoken: bool, partial: bool) -> Duration {
        match (spoken, partial) {
            (false, _) => self.first,
            (true, true) => self.frame,
            (true, false) => self.idle,
        }
    }
}

/// Why a stream connection's reading ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The peer closed it, or the socket failed.
    Closed,
    /// A deadline passed: `what` says which, for the log.
    TimedOut(&'static str),
}

impl Ended {
    fn from_elapsed(spoken: bool, partial: bool) -> Self {
        Ended::TimedOut(match (spoken, partial) {
            (false, _) => "said nothing",
            (true, true) => "stalled inside a frame",
            (true, false) => "idle",
        })
    }
}

/// Reads whatever comes within the deadline that applies now.
pub async fn read_within<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    deadlines: &Deadlines,
    spoken: bool,
    partial: bool,
) -> Result<usize, Ended> {
    match tokio::time::timeout(deadlines.wait(spoken, partial), r.read(buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Err(Ended::Closed),
        Ok(Ok(n)) => Ok(n),
        Err(_) => Err(Ended::from_elapsed(spoken, partial)),
    }
}

/// Fills `buf` within the deadline that applies now.
pub async fn read_exact_within<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    deadlines: &Deadlines,
    spoken: bool,
    partial: bool,
) -> Result<(), Ended> {
    match tokio::time::timeout(deadlines.wait(spoken, partial), r.read_exact(buf)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Err(Ended::Closed),
        Ok(Err(_)) => Err(Ended::Closed),
        Err(_) => Err(Ended::from_elapsed(spoken, partial)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn each_point_of_a_connection_has_its_own_wait() {
        let d = Deadlines::ICE_TCP;
        assert_eq!(d.wait(false, false), d.first);
        assert_eq!(d.wait(false, true), d.first);
        assert_eq!(d.wait(true, true), d.frame);
        assert_eq!(d.wait(true, false), d.idle);
        assert!(Deadlines::TURN.idle >= Duration::from_secs(300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_times_out_and_a_talking_one_does_not() {
        let (mut ours, mut theirs) = tokio::io::duplex(64);
        let d = Deadlines::ICE_TCP;
        let start = tokio::time::Instant::now();
        let mut buf = [0u8; 16];
        // Silent from the start: ends after `first`.
        let r = read_within(&mut ours, &mut buf, &d, false, false).await;
        assert_eq!(r, Err(Ended::TimedOut("said nothing")));
        assert_eq!(start.elapsed(), d.first);
        // Talking every 25 s keeps it open past `idle`.
        let talker = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(25)).await;
                theirs.write_all(b"x").await.unwrap();
            }
            theirs
        });
        for _ in 0..3 {
            assert_eq!(
                read_within(&mut ours, &mut buf, &d, true, false).await,
                Ok(1)
            );
        }
        let _theirs = talker.await.unwrap();
        let r = read_within(&mut ours, &mut buf, &d, true, false).await;
        assert_eq!(r, Err(Ended::TimedOut("idle")));
        // Half a frame then nothing: ends after `frame`.
        let before = tokio::time::Instant::now();
        let mut frame = [0u8; 4];
        let r = read_exact_within(&mut ours, &mut frame, &d, true, true).await;
        assert_eq!(r, Err(Ended::TimedOut("stalled inside a frame")));
        assert_eq!(before.elapsed(), d.frame);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_peer_is_closed_not_timed_out() {
        let (mut ours, theirs) = tokio::io::duplex(64);
        drop(theirs);
        let mut buf = [0u8; 4];
        let d = Deadlines::TURN;
        assert_eq!(
            read_within(&mut ours, &mut buf, &d, true, false).await,
            Err(Ended::Closed)
        );
        assert_eq!(
            read_exact_within(&mut ours, &mut buf, &d, true, true).await,
            Err(Ended::Closed)
        );
    }
}
