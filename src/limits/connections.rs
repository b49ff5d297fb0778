//! HTTP connections: a cap in all (below the process's file descriptor
//! limit, so `/healthz` and new sessions still get a socket) and per client
//! address, and an idle timeout. A listener wrapper applies them under
//! `axum::serve` (and under TLS, so handshakes in flight count too).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::{Limit, Limits, Refusal, Refused, client::canonical};

/// `0` means no cap; a zero `idle` no timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCaps {
    pub total: usize,
    pub per_ip: usize,
    pub idle: Duration,
}

impl ConnectionCaps {
    pub const NONE: Self = Self {
        total: 0,
        per_ip: 0,
        idle: Duration::ZERO,
    };
}

pub struct Connections {
    caps: ConnectionCaps,
    open: Mutex<Open>,
    refused: Arc<Refused>,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

impl Connections {
    pub(super) fn new(caps: ConnectionCaps, refused: Arc<Refused>) -> Self {
        Self {
            caps,
            open: Mutex::new(Open::default()),
            refused,
        }
    }

    fn open(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection from `peer` (not held to the per-address cap if
    /// `exempt`): its slot, released when dropped.
    pub fn try_open(self: &Arc<Self>, peer: IpAddr, exempt: bool) -> Result<Slot, Refusal> {
        let mut open = self.open();
        let full = |cap: usize, n: usize| cap != 0 && n >= cap;
        let refuse = |limit| {
            self.refused.count(limit);
            Err(Refusal::new(limit))
        };
        if full(self.caps.total, open.total) {
            return refuse(Limit::Connections);
        }
        let ip = (!exempt).then_some(canonical(peer));
        if let Some(ip) = ip {
            let n = open.per_ip.entry(ip).or_default();
            if full(self.caps.per_ip, *n) {
                if *n == 0 {
                    open.per_ip.remove(&ip);
                }
                return refuse(Limit::ConnectionsPerIp);
            }
            *n += 1;
        }
        open.total += 1;
        Ok(Slot {
            connections: self.clone(),
            ip,
        })
    }

    /// Connections open now.
    pub fn count(&self) -> usize {
        self.open().total
    }

    /// Addresses with connections open (exempt ones not counted).
    pub fn addresses(&self) -> usize {
        self.open().per_ip.len()
    }

    pub fn idle(&self) -> Duration {
        self.caps.idle
    }
}

/// One open connection's place; dropping it frees the place.
pub struct Slot {
    connections: Arc<Connections>,
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.connections.open();
        open.total = open.total.saturating_sub(1);
        if let Some(ip) = self.ip
            && let Some(n) = open.per_ip.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                open.per_ip.remove(&ip);
            }
        }
    }
}

/// A listener whose connections hold a [`Slot`] and time out when idle.
/// Connections over a cap get a one-shot `503`/`429` (if the socket takes
/// it at once) and are closed.
pub struct GuardedListener<L> {
    inner: L,
    limits: Arc<Limits>,
}

impl<L> GuardedListener<L> {
    pub fn new(inner: L, limits: Arc<Limits>) -> Self {
        Self { inner, limits }
    }
}

impl<L> axum::serve::Listener for GuardedListener<L>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
    L::Io: Unpin,
{
    type Io = Guarded<L::Io>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (mut io, addr) = self.inner.accept().await;
            let exempt = self.limits.exempt_peer(addr.ip());
            match self.limits.connections.try_open(addr.ip(), exempt) {
                Ok(slot) => {
                    let idle = self.limits.connections.idle();
                    return (Guarded::new(io, slot, idle), addr);
                }
                Err(refusal) => {
                    // Best effort, never waiting: the socket is new, its
                    // send buffer empty.
                    let answer = refusal_response(&refusal);
                    let _ = io.write_all(answer.as_bytes()).now_or_never();
                    let _ = io.shutdown().now_or_never();
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

fn refusal_response(refusal: &Refusal) -> String {
    let status = if refusal.limit.per_client() {
        "429 Too Many Requests"
    } else {
        "503 Service Unavailable"
    };
    let body = format!("{refusal}\n");
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nRetry-After: {}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        refusal.retry_after.as_secs().max(1),
        body.len()
    )
}

/// A connection that holds its slot and fails with `TimedOut` once nothing
/// has been read or written for `idle`.
pub struct Guarded<Io> {
    io: Io,
    _slot: Slot,
    idle: Duration,
    last_active: Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<Io> Guarded<Io> {
    fn new(io: Io, slot: Slot, idle: Duration) -> Self {
        let now = Instant::now();
        Self {
            io,
            _slot: slot,
            idle,
            last_active: now,
            timer: (!idle.is_zero()).then(|| Box::pin(tokio::time::sleep_until(now + idle))),
        }
    }

    pub fn get_ref(&self) -> &Io {
        &self.io
    }

    /// Whether the connection has been idle too long. Registers the waker
    /// with the timer otherwise, so a silent connection is noticed.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(timer) = self.timer.as_mut() else {
            return false;
        };
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            let due = self.last_active + self.idle;
            if Instant::now() >= due {
                return true;
            }
            timer.as_mut().reset(due);
        }
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection idle too long")
}

impl<Io: AsyncRead + Unpin> AsyncRead for Guarded<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.last_active = Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Guarded<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.last_active = Instant::now();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // A reader that takes nothing for this long is gone too.
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, bufs))?;
        if n > 0 {
            self.last_active = Instant::now();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::LimitsConfig;
    use tokio::io::AsyncReadExt;

    fn limits(caps: ConnectionCaps) -> Arc<Limits> {
        Arc::new(Limits::new(LimitsConfig {
            connections: caps,
            exempt: vec!["127.0.0.1/32".parse().unwrap()],
            ..LimitsConfig::none()
        }))
    }

    #[test]
    fn slots_are_capped_in_all_and_per_address_and_freed_on_drop() {
        let l = limits(ConnectionCaps {
            total: 3,
            per_ip: 2,
            idle: Duration::ZERO,
        });
        let c = &l.connections;
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = c.try_open(a, false).unwrap();
        let _s2 = c.try_open(a, false).unwrap();
        assert_eq!(
            c.try_open(a, false).err().unwrap().limit,
            Limit::ConnectionsPerIp
        );
        let _s3 = c.try_open(b, false).unwrap();
        assert_eq!(c.try_open(b, true).err().unwrap().limit, Limit::Connections);
        drop(s1);
        assert_eq!(c.count(), 2);
        let _s4 = c.try_open(a, false).unwrap();
        drop((_s2, _s3, _s4));
        assert_eq!((c.count(), c.addresses()), (0, 0), "nothing left behind");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_times_out_and_a_busy_one_does_not() {
        let l = limits(ConnectionCaps {
            total: 0,
            per_ip: 0,
            idle: Duration::from_secs(30),
        });
        let (mut client, server) = tokio::io::duplex(64);
        let slot = l
            .connections
            .try_open("192.0.2.1".parse().unwrap(), false)
            .unwrap();
        let mut guarded = Guarded::new(server, slot, Duration::from_secs(30));
        let mut buf = [0u8; 8];
        // Bytes every 20 s keep it open past the idle time...
        for _ in 0..3 {
            client.write_all(b"x").await.unwrap();
            let n = tokio::time::timeout(Duration::from_secs(25), guarded.read(&mut buf))
                .await
                .expect("read")
                .unwrap();
            assert_eq!(n, 1);
            tokio::time::sleep(Duration::from_secs(20)).await;
        }
        // ...silence ends it.
        let err = guarded.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(guarded);
        assert_eq!(l.connections.count(), 0);
    }

    #[test]
    fn a_refusal_is_an_http_answer_with_retry_after() {
        let r = refusal_response(&Refusal::new(Limit::ConnectionsPerIp));
        assert!(r.starts_with("HTTP/1.1 429 "));
        assert!(r.contains("Retry-After: 2\r\n"));
        assert!(refusal_response(&Refusal::new(Limit::Connections)).starts_with("HTTP/1.1 503 "));
    }
}
