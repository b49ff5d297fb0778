//! HTTPS for `axum::serve`: a listener that yields connections once their
//! TLS handshake is done. Handshakes run in their own tasks, so a slow or
//! silent client never holds up the next one.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client has to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS over the connections of `L` (a TCP listener, or one that applies
/// the connection limits first, so handshakes in flight count).
pub struct TlsListener<Io> {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<Io>, SocketAddr)>,
}

impl<Io> TlsListener<Io>
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    pub fn new<L>(mut inner: L, acceptor: TlsAcceptor) -> io::Result<Self>
    where
        L: axum::serve::Listener<Io = Io, Addr = SocketAddr>,
    {
        let local = inner.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                // Accept errors (out of file descriptors) are retried inside.
                let (stream, remote) = inner.accept().await;
                if tx.is_closed() {
                    return;
                }
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, remote)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%remote, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { local, ready })
    }
}

impl<Io> axum::serve::Listener for TlsListener<Io>
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Io = TlsStream<Io>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept task only ends with the listener: never resolve.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
