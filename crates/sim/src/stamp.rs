//! A TCP stream that can tell when the kernel received the bytes it last read.
//!
//! The load generator measures the latency the bridge adds as "frame sent" to
//! "frame received" at the other emulator. Near saturation, the load generator's
//! own queue (a message waits in its socket until its one thread gets to it)
//! would be counted as the bridge's latency. With kernel receive timestamps
//! (`SO_TIMESTAMPNS`), "received" is when the bytes reached the emulator's
//! socket, which is what a real Twilio media gateway or model server, not
//! starved of CPU, would see.
//!
//! With timestamps off it is a plain non-blocking TCP stream, read with
//! `recvmsg` instead of `recv`.

use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
use nix::sys::time::TimeSpec;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// A TCP stream for the emulators' WebSockets (see the module doc).
pub struct StampedTcp {
    io: TcpStream,
    /// Control-message space for one timestamp; `None` when timestamps are off, so
    /// the kernel is not asked for them.
    cmsg: Option<Vec<u8>>,
    /// The receive time of the last bytes read so far, on [`crate::realtime::probe`]'s
    /// clock.
    last_rx_us: Option<u32>,
}

/// What a stream knows of when its bytes arrived.
pub trait RxStamp {
    /// Receive time (kernel) of the data read last, on the probe clock, if known.
    fn last_rx_us(&self) -> Option<u32>;
}

impl StampedTcp {
    /// Wrap a connected stream; `stamps` asks the kernel for receive timestamps. A
    /// kernel that refuses them leaves a plain stream (arrivals then fall back to the
    /// reader's clock), never a failed connection.
    pub fn new(io: TcpStream, stamps: bool) -> Self {
        let cmsg = match stamps.then(|| setsockopt(&io, sockopt::ReceiveTimestampns, &true)) {
            Some(Ok(())) => Some(nix::cmsg_space!(TimeSpec)),
            Some(Err(e)) => {
                static ONCE: std::sync::Once = std::sync::Once::new();
                ONCE.call_once(|| {
                    tracing::warn!(error = %e, "SO_TIMESTAMPNS refused: arrivals fall back to read time");
                });
                None
            }
            None => None,
        };
        StampedTcp {
            io,
            cmsg,
            last_rx_us: None,
        }
    }
}

impl RxStamp for StampedTcp {
    fn last_rx_us(&self) -> Option<u32> {
        self.last_rx_us
    }
}

impl RxStamp for tokio_tungstenite::MaybeTlsStream<TcpStream> {
    fn last_rx_us(&self) -> Option<u32> {
        None
    }
}

/// One `recvmsg` into `buf`: the byte count and the timestamp, if one came with it.
fn recv_stamped(
    io: &TcpStream,
    buf: &mut [u8],
    cmsg: Option<&mut Vec<u8>>,
) -> io::Result<(usize, Option<u32>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        io.as_raw_fd(),
        &mut iov,
        cmsg.map(|c| c.as_mut_slice()),
        MsgFlags::empty(),
    )
    .map_err(io::Error::from)?;
    let mut stamp = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmTimestampns(ts) = c {
                let secs = u64::try_from(ts.tv_sec()).unwrap_or(0);
                let nanos = u32::try_from(ts.tv_nsec()).unwrap_or(0);
                stamp = Some(crate::realtime::probe::us_of(secs, nanos));
            }
        }
    }
    Ok((msg.bytes, stamp))
}

impl AsyncRead for StampedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            ready!(this.io.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let len = unfilled.len();
            let mut short = None;
            let io = &this.io;
            let cmsg = this.cmsg.as_mut();
            let r = io.try_io(Interest::READABLE, || {
                let (n, stamp) = recv_stamped(io, unfilled, cmsg)?;
                if n > 0 && n < len {
                    // A short read drained the socket. tokio's own `poll_read` then
                    // forgets the readiness, so the next read waits for the next event
                    // instead of making a `recv` that only says EAGAIN; `try_io` does
                    // that for a WouldBlock, so the data leaves through `short`.
                    short = Some((n, stamp));
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok((n, stamp))
            });
            let (n, stamp) = match (r, short) {
                (_, Some(got)) => got,
                (Ok(got), None) => got,
                (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => continue,
                (Err(e), None) => return Poll::Ready(Err(e)),
            };
            if n > 0 {
                // None when these bytes came without one: the reader falls back to
                // its own clock rather than an older arrival.
                this.last_rx_us = stamp;
            }
            buf.advance(n);
            return Poll::Ready(Ok(()));
        }
    }
}

impl AsyncWrite for StampedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    async fn pair(stamps: bool) -> (StampedTcp, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("io");
        let addr = l.local_addr().expect("io");
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (StampedTcp::new(s.expect("io").0, stamps), c.expect("io"))
    }

    #[tokio::test]
    async fn reads_carry_the_kernel_receive_time() {
        let (mut s, mut peer) = pair(true).await;
        assert_eq!(s.last_rx_us(), None);
        // The kernel turns receive timestamps on for the whole stack from a work
        // queue, a moment after the first socket asks: bytes that arrive before carry
        // none (and the arrival falls back to the read time).
        let mut buf = [0u8; 16];
        for _ in 0..200 {
            peer.write_all(b"x").await.expect("io");
            let _ = s.read(&mut buf).await.expect("io");
            if s.last_rx_us().is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let before = crate::realtime::probe::now_us();
        peer.write_all(b"hello").await.expect("io");
        let sent = crate::realtime::probe::now_us();
        // Arrives now (loopback delivers inside the send), read later: the stamp is
        // the arrival, not the read.
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        let n = s.read(&mut buf).await.expect("io");
        assert_eq!(&buf[..n], b"hello");
        let rx = s.last_rx_us().expect("a timestamp");
        assert!(
            rx.wrapping_sub(before) <= sent.wrapping_sub(before),
            "stamp {rx} outside the send [{before}, {sent}]"
        );
    }

    #[tokio::test]
    async fn without_stamps_it_is_a_plain_stream() {
        let (mut s, mut peer) = pair(false).await;
        peer.write_all(b"ping").await.expect("io");
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.expect("io");
        assert_eq!(&buf, b"ping");
        assert_eq!(s.last_rx_us(), None);
        s.write_all(b"pong").await.expect("io");
        s.shutdown().await.expect("io");
        let mut back = Vec::new();
        peer.read_to_end(&mut back).await.expect("io");
        assert_eq!(back, b"pong");
    }
}
