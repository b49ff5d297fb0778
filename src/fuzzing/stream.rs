//! ICE-TCP's RFC 4571 framing: the media port's TCP reader, run on the
//! input as the bytes of one connection.
//!
//! The reader stays async (it reads exactly each length, then exactly each
//! frame, holding no buffer between frames: 4096 connections would
//! otherwise hold 4096 read buffers), so it is driven here on a
//! current-thread runtime over the input, which tokio reads as an
//! `AsyncRead` that ends where the input ends.

use std::net::SocketAddr;

use tokio::sync::mpsc;

use crate::limits::stream::Ended;
use crate::media::TcpEvent;
use crate::media::tcp::{frame, read_frames};

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
}

/// Reads `data` as one ICE-TCP connection: its frames, re-framed, must be
/// the input up to where the reading ended, what is left must be a frame
/// cut short, and the reader must end because the input did (its deadlines
/// are not reached: the input is all there at once).
pub fn rfc4571(data: &[u8]) {
    let peer: SocketAddr = "127.0.0.1:1000".parse().expect("a literal address");
    let local: SocketAddr = "127.0.0.1:5000".parse().expect("a literal address");
    let (tx, mut rx) = mpsc::channel(64);
    let reader = async move {
        let ended = read_frames(data, peer, local, &tx).await;
        drop(tx);
        ended
    };
    let collect = async {
        let mut frames = Vec::new();
        while let Some(event) = rx.recv().await {
            match event {
                TcpEvent::Frame { data, .. } => frames.push(data),
                _ => panic!("the reader tells only frames"),
            }
        }
        frames
    };
    let (ended, frames) = RUNTIME.with(|rt| rt.block_on(async { tokio::join!(reader, collect) }));
    assert_eq!(ended, Ended::Closed, "the reader ends with the input");
    let mut read = Vec::with_capacity(data.len());
    for f in &frames {
        read.extend(frame(f).expect("a frame read is at most 64 KiB"));
    }
    assert!(data.starts_with(&read), "the frames are the input's");
    let rest = &data[read.len()..];
    let announced = super::u16_of(rest);
    assert!(
        rest.len() < 2 || rest.len() - 2 < usize::from(announced),
        "only a frame cut short is left: {} bytes, announcing {announced}",
        rest.len()
    );
}
