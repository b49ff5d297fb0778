//! Sending many datagrams in one system call. An SFU sends the same packet
//! to hundreds of addresses; `sendmmsg` pays the syscall entry once per
//! batch instead of once per viewer.

use std::io;
use std::net::SocketAddr;

use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams per system call (the kernel's `UIO_MAXIOV` is 1024).
pub const BATCH: usize = 64;

/// Sends every datagram, waiting while the socket buffer is full. A
/// datagram the kernel refuses (no route, bad address) is skipped, as the
/// network would drop it.
pub async fn send_all(socket: &UdpSocket, datagrams: &[(SocketAddr, &[u8])]) {
    let mut rest = datagrams;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(BATCH)];
        match socket.try_io(Interest::WRITABLE, || send_some(socket, chunk)) {
            Ok(n) => rest = &rest[n.max(1)..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if socket.writable().await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(to = %rest[0].0, "send failed: {e}");
                rest = &rest[1..];
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn send_some(socket: &UdpSocket, batch: &[(SocketAddr, &[u8])]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let addrs: Vec<socket2::SockAddr> = batch.iter().map(|(a, _)| (*a).into()).collect();
    let mut iovs: Vec<libc::iovec> = batch
        .iter()
        .map(|(_, d)| libc::iovec {
            iov_base: d.as_ptr() as *mut libc::c_void,
            iov_len: d.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = addrs
        .iter()
        .zip(iovs.iter_mut())
        .map(|(addr, iov)| {
            // SAFETY: msghdr is plain data; all-zero is a valid empty header.
            let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
            hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
            hdr.msg_namelen = addr.len();
            hdr.msg_iov = iov;
            hdr.msg_iovlen = 1;
            libc::mmsghdr {
                msg_hdr: hdr,
                msg_len: 0,
            }
        })
        .collect();
    // SAFETY: every pointer in `msgs` points into `addrs`, `iovs` and
    // `batch`, which outlive the call; the count matches the array.
    let sent = unsafe {
        libc::sendmmsg(
            socket.as_raw_fd(),
            msgs.as_mut_ptr(),
            msgs.len() as libc::c_uint,
            0,
        )
    };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

#[cfg(not(target_os = "linux"))]
fn send_some(socket: &UdpSocket, batch: &[(SocketAddr, &[u8])]) -> io::Result<usize> {
    let (to, data) = batch[0];
    socket.try_send_to(data, to).map(|_| 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_reaches_every_address_in_order() {
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (aa, ba) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let payloads: Vec<Vec<u8>> = (0..150u8).map(|i| vec![i; 10 + i as usize]).collect();
        let datagrams: Vec<(SocketAddr, &[u8])> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| (if i % 2 == 0 { aa } else { ba }, p.as_slice()))
            .collect();
        send_all(&tx, &datagrams).await;
        let mut buf = [0u8; 512];
        for i in (0..150u8).step_by(2) {
            let n = a.recv(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], &payloads[i as usize][..]);
            let n = b.recv(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], &payloads[i as usize + 1][..]);
        }
    }

    #[tokio::test]
    async fn an_unreachable_address_does_not_stop_the_batch() {
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let bad: SocketAddr = "[::1]:9".parse().unwrap(); // wrong family for this socket
        let datagrams = [
            (bad, &b"lost"[..]),
            (rx.local_addr().unwrap(), &b"kept"[..]),
        ];
        send_all(&tx, &datagrams).await;
        let mut buf = [0u8; 16];
        let n = rx.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"kept");
    }
}
