//! ICE-TCP connections: RFC 4571 framing (a 16-bit length before each
//! STUN, DTLS or SRTP packet) between a TCP stream and the media loop.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

use crate::limits::stream::{Deadlines, Ended, read_exact_within};

/// What the ICE-TCP connections tell the media loop.
pub(crate) enum TcpEvent {
    Open {
        peer: SocketAddr,
        writer: mpsc::Sender<Vec<u8>>,
    },
    Frame {
        peer: SocketAddr,
        local: SocketAddr,
        data: Vec<u8>,
    },
    Closed {
        peer: SocketAddr,
    },
}

/// Connections beyond this are refused: each costs two tasks.
const MAX_CONNECTIONS: usize = 4096;
/// Frames queued towards one connection; beyond, frames are dropped
/// (as UDP would lose them) rather than let a slow reader grow memory.
const WRITE_QUEUE: usize = 512;

pub async fn accept(listener: TcpListener, local: SocketAddr, events: mpsc::Sender<TcpEvent>) {
    let open = std::sync::Arc::new(());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("ICE-TCP accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if std::sync::Arc::strong_count(&open) > MAX_CONNECTIONS {
            tracing::warn!(%peer, "too many ICE-TCP connections; refused");
            continue;
        }
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        let (writer, queue) = mpsc::channel(WRITE_QUEUE);
        if events.send(TcpEvent::Open { peer, writer }).await.is_err() {
            return;
        }
        let guard = open.clone();
        tokio::spawn(write_frames(write, queue));
        let events = events.clone();
        tokio::spawn(async move {
            let _guard = guard;
            if let Ended::TimedOut(why) = read_frames(read, peer, local, &events).await {
                tracing::debug!(%peer, "ICE-TCP connection {why}; closed");
            }
            let _ = events.send(TcpEvent::Closed { peer }).await;
        });
    }
}

/// Reads RFC 4571 frames until the peer closes or misses a deadline
/// ([`Deadlines::ICE_TCP`]).
pub(crate) async fn read_frames<R: AsyncRead + Unpin>(
    mut read: R,
    peer: SocketAddr,
    local: SocketAddr,
    events: &mpsc::Sender<TcpEvent>,
) -> Ended {
    let d = Deadlines::ICE_TCP;
    let mut spoken = false;
    loop {
        let mut len = [0u8; 2];
        if let Err(ended) = read_exact_within(&mut read, &mut len, &d, spoken, false).await {
            return ended;
        }
        let mut data = vec![0u8; u16::from_be_bytes(len) as usize];
        if let Err(ended) = read_exact_within(&mut read, &mut data, &d, spoken, true).await {
            return ended;
        }
        spoken = true;
        let frame = TcpEvent::Frame { peer, local, data };
        if events.send(frame).await.is_err() {
            return Ended::Closed;
        }
    }
}

/// Writes queued frames; a peer that takes longer than a frame's
/// deadline to accept one is not reading, and its writer ends.
async fn write_frames(mut write: OwnedWriteHalf, mut queue: mpsc::Receiver<Vec<u8>>) {
    while let Some(frame) = queue.recv().await {
        let wrote = tokio::time::timeout(Deadlines::ICE_TCP.frame, write.write_all(&frame));
        if !matches!(wrote.await, Ok(Ok(()))) {
            return;
        }
    }
}

/// `packet` with its RFC 4571 length prefix.
pub fn frame(packet: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(packet.len()).ok()?;
    let mut f = Vec::with_capacity(packet.len() + 2);
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(packet);
    Some(f)
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_goes_quiet_or_stalls_mid_frame_is_closed() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        // One frame, then silence: read, then closed after `idle`.
        let (ours, mut theirs) = tokio::io::duplex(256);
        theirs.write_all(&frame(b"check").unwrap()).await.unwrap();
        let start = tokio::time::Instant::now();
        let ended = read_frames(ours, addr, addr, &tx).await;
        assert_eq!(ended, Ended::TimedOut("idle"));
        assert_eq!(start.elapsed(), Deadlines::ICE_TCP.idle);
        assert!(matches!(rx.try_recv(), Ok(TcpEvent::Frame { data, .. }) if data == b"check"));
        // A frame announced at 100 bytes with 3 sent: closed after `first`
        // (it never spoke a whole frame).
        let (ours, mut theirs) = tokio::io::duplex(256);
        theirs.write_all(&[0, 100, 1, 2, 3]).await.unwrap();
        let ended = read_frames(ours, addr, addr, &tx).await;
        assert_eq!(ended, Ended::TimedOut("said nothing"));
        // After a whole frame, half of the next: the frame deadline.
        let (ours, mut theirs) = tokio::io::duplex(256);
        theirs.write_all(&frame(b"check").unwrap()).await.unwrap();
        theirs.write_all(&[0, 100, 1]).await.unwrap();
        let start = tokio::time::Instant::now();
        let ended = read_frames(ours, addr, addr, &tx).await;
        assert_eq!(ended, Ended::TimedOut("stalled inside a frame"));
        assert_eq!(start.elapsed(), Deadlines::ICE_TCP.frame);
        drop(theirs);
    }

    #[test]
    fn frames_carry_a_big_endian_length() {
        assert_eq!(super::frame(&[7, 8, 9]), Some(vec![0, 3, 7, 8, 9]));
        assert_eq!(super::frame(&vec![0; 70_000]), None, "no frame over 64 KiB");
    }
}
