//! Socket I/O shared by the call path's WebSockets.

use std::cell::RefCell;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest batch of buffers gathered into one write; larger batches pass through as a
/// vectored write.
const GATHER_MAX: usize = 16 * 1024;

thread_local! {
    /// The gather buffer: one per thread, not one per socket, so it stays in cache and
    /// costs no memory per call.
    static GATHER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A stream whose vectored writes are sent as one plain `write` (`send(2)`), gathered
/// in a per-thread buffer.
///
/// tokio-websockets writes each frame as two buffers (header, payload), so every audio
/// frame became a `writev(2)`, whose VFS write path and iovec import showed in the
/// bridge's profile at 3 % of its samples (docs/BENCHMARKS.md); copying a few hundred
/// bytes into a warm buffer costs tens of nanoseconds. Stateless between calls: a
/// partial or pending write is simply retried by the caller with the buffers it still
/// holds.
#[derive(Debug)]
pub struct OneWrite<S> {
    inner: S,
}

impl<S> OneWrite<S> {
    pub fn new(inner: S) -> Self {
        OneWrite { inner }
    }
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for OneWrite<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for OneWrite<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let non_empty = bufs.iter().filter(|b| !b.is_empty()).count();
        let inner = Pin::new(&mut self.inner);
        if non_empty <= 1 {
            let one = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            return inner.poll_write(cx, one);
        }
        if total > GATHER_MAX {
            return inner.poll_write_vectored(cx, bufs);
        }
        GATHER.with(|cell| match cell.try_borrow_mut() {
            Ok(mut gather) => {
                gather.clear();
                for b in bufs {
                    gather.extend_from_slice(b);
                }
                inner.poll_write(cx, &gather)
            }
            // Only if a write re-entered this one on the same thread (none does).
            Err(_) => inner.poll_write_vectored(cx, bufs),
        })
    }

    fn is_write_vectored(&self) -> bool {
        // Ask for every buffer at once: they are gathered into one write.
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A writer that records each write call and accepts at most `limit` bytes per call.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        vectored_calls: usize,
        limit: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.limit);
            self.writes.push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            self.vectored_calls += 1;
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            let n = all.len().min(self.limit);
            self.writes.push(all[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn vectored_writes_become_one_write_and_partial_writes_resume() {
        let mut w = OneWrite::new(Recorder {
            limit: usize::MAX,
            ..Recorder::default()
        });
        let n = w
            .write_vectored(&[IoSlice::new(b"\x81\x03"), IoSlice::new(b"abc")])
            .await
            .expect("write");
        assert_eq!(n, 5);
        assert_eq!(w.inner.writes, vec![b"\x81\x03abc".to_vec()]);
        assert_eq!(w.inner.vectored_calls, 0);

        // A short write reports what was taken; the caller resends the rest.
        w.inner = Recorder {
            limit: 3,
            ..Recorder::default()
        };
        let mut bufs = chain::Chain::new(&[b"\x81\x03", b"abc"]);
        while !bufs.is_empty() {
            let n = w.write_vectored(&bufs.slices()).await.expect("write");
            bufs.advance(n);
        }
        assert_eq!(w.inner.writes.concat(), b"\x81\x03abc".to_vec());

        // Above the gather limit, the vectored write passes through.
        w.inner = Recorder {
            limit: usize::MAX,
            ..Recorder::default()
        };
        let big = vec![7u8; GATHER_MAX];
        let n = w
            .write_vectored(&[IoSlice::new(b"\x82\x7f"), IoSlice::new(&big)])
            .await
            .expect("write");
        assert_eq!(n, 2 + GATHER_MAX);
        assert_eq!(w.inner.vectored_calls, 1);
    }

    /// Just enough of a buffer chain to replay partial writes.
    mod chain {
        use std::io::IoSlice;
        pub struct Chain {
            parts: Vec<Vec<u8>>,
        }
        impl Chain {
            pub fn new(parts: &[&[u8]]) -> Self {
                Chain {
                    parts: parts.iter().map(|p| p.to_vec()).collect(),
                }
            }
            pub fn is_empty(&self) -> bool {
                self.parts.iter().all(Vec::is_empty)
            }
            pub fn slices(&self) -> Vec<IoSlice<'_>> {
                self.parts.iter().map(|p| IoSlice::new(p)).collect()
            }
            pub fn advance(&mut self, mut n: usize) {
                for p in &mut self.parts {
                    let k = n.min(p.len());
                    p.drain(..k);
                    n -= k;
                }
            }
        }
    }

    #[tokio::test]
    async fn reads_pass_through() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = OneWrite::new(a);
        b.write_all(b"hello").await.expect("write");
        let mut got = [0u8; 5];
        a.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"hello");
    }
}
