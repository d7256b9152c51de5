//! The call's two sockets (Twilio media, the model) as one small message type, so
//! [`crate::session`] runs the same over tokio-websockets sockets or plain channels in
//! tests.

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

/// Text of a received frame, without copying it out of the library's buffer.
#[derive(Debug, Clone)]
pub enum Text {
    /// A tokio-websockets text message (its payload was checked as UTF-8 on receipt).
    Tws(tokio_websockets::Message),
    Owned(String),
}

impl Text {
    pub fn as_str(&self) -> &str {
        match self {
            Text::Tws(m) => m.as_text().unwrap_or_default(),
            Text::Owned(t) => t.as_str(),
        }
    }
}

/// A received frame.
#[derive(Debug, Clone)]
pub enum WsIn {
    Text(Text),
    /// A binary frame (neither peer should send one); its length.
    Binary(usize),
    /// The peer closed (code and reason, if any).
    Close(Option<(u16, String)>),
    /// The socket failed (reset, protocol error, message too big…).
    Error(String),
}

/// A frame to send.
#[derive(Debug, Clone, PartialEq)]
pub enum WsOut {
    Text(String),
    Close(u16, String),
}

/// The sending error type of every socket half.
#[derive(Debug, thiserror::Error)]
#[error("websocket send failed: {0}")]
pub struct SendError(pub String);

/// A socket: frames in, frames out. One object rather than split halves: the session
/// reads and writes from one task, one after the other, and a split (futures' `BiLock`)
/// costs an atomic lock and waker registration on every frame in either direction.
pub trait Duplex: Stream<Item = WsIn> + Sink<WsOut, Error = SendError> + Send {}
impl<T> Duplex for T where T: Stream<Item = WsIn> + Sink<WsOut, Error = SendError> + Send {}

/// A socket of either library (or a test channel).
pub struct Link(Pin<Box<dyn Duplex>>);

impl Link {
    pub fn new(io: impl Duplex + 'static) -> Link {
        Link(Box::pin(io))
    }
    /// The next frame; `None` once the socket is finished.
    pub async fn next(&mut self) -> Option<WsIn> {
        self.0.next().await
    }
    /// Queue a frame (written by `flush`, or when the library's buffer is full).
    pub async fn feed(&mut self, out: WsOut) -> Result<(), SendError> {
        self.0.feed(out).await
    }
    pub async fn flush(&mut self) -> Result<(), SendError> {
        self.0.flush().await
    }
    /// Queue and flush one frame.
    pub async fn send(&mut self, out: WsOut) -> Result<(), SendError> {
        self.0.send(out).await
    }
}

/// WebSocket close code: policy violation.
pub const CLOSE_POLICY: u16 = 1008;
/// WebSocket close code: message too big.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// WebSocket close code: internal error.
pub const CLOSE_ERROR: u16 = 1011;
/// WebSocket close code: normal.
pub const CLOSE_NORMAL: u16 = 1000;

/// A received tokio-websockets message as ours; `None` for control frames the library
/// answers by itself (ping, pong).
fn received(m: tokio_websockets::Message) -> Option<WsIn> {
    if m.is_text() {
        Some(WsIn::Text(Text::Tws(m)))
    } else if m.is_binary() {
        Some(WsIn::Binary(m.as_payload().len()))
    } else if let Some((code, reason)) = m.as_close() {
        let code = u16::from(code);
        // 1005: the close frame carried no status (RFC 6455 §7.1.5).
        Some(WsIn::Close(
            (code != 1005).then(|| (code, reason.to_owned())),
        ))
    } else {
        None
    }
}

/// Ours as a tokio-websockets message.
fn to_message(out: WsOut) -> tokio_websockets::Message {
    use tokio_websockets::{CloseCode, Message};
    match out {
        WsOut::Text(t) => Message::text(t),
        WsOut::Close(code, reason) => {
            // The library panics on a code that may not be sent or a reason over the
            // protocol's 123 bytes: send what is valid instead.
            match CloseCode::try_from(code) {
                Ok(code) if !code.is_reserved() => {
                    Message::close(Some(code), truncate_utf8(&reason, 123))
                }
                _ => Message::close(None, ""),
            }
        }
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A tokio-websockets socket as a [`Duplex`]: the mapping is done inline, with no
/// adapter future per message.
struct Tws<S>(tokio_websockets::WebSocketStream<S>);

impl<S> Stream for Tws<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    type Item = WsIn;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WsIn>> {
        loop {
            return Poll::Ready(match ready!(self.0.poll_next_unpin(cx)) {
                None => None,
                Some(Ok(m)) => match received(m) {
                    Some(m) => Some(m),
                    None => continue,
                },
                Some(Err(e)) => Some(WsIn::Error(e.to_string())),
            });
        }
    }
}

impl<S> Sink<WsOut> for Tws<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    type Error = SendError;
    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        self.0.poll_ready_unpin(cx).map_err(send_error)
    }
    fn start_send(mut self: Pin<&mut Self>, out: WsOut) -> Result<(), SendError> {
        self.0.start_send_unpin(to_message(out)).map_err(send_error)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        self.0.poll_flush_unpin(cx).map_err(send_error)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        self.0.poll_close_unpin(cx).map_err(send_error)
    }
}

fn send_error(e: impl std::fmt::Display) -> SendError {
    SendError(e.to_string())
}

/// Wrap a tokio-websockets socket (either role).
pub fn from_tws<S>(socket: tokio_websockets::WebSocketStream<S>) -> Link
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    Link::new(Tws(socket))
}

/// Two linked in-memory links, for tests: what one side sends, the other
/// receives.
pub fn pair() -> (Link, Link) {
    let (a_tx, b_rx) = tokio::sync::mpsc::unbounded_channel::<WsOut>();
    let (b_tx, a_rx) = tokio::sync::mpsc::unbounded_channel::<WsOut>();
    (
        Link::new(ChannelIo {
            tx: a_tx,
            rx: a_rx,
            closed: false,
        }),
        Link::new(ChannelIo {
            tx: b_tx,
            rx: b_rx,
            closed: false,
        }),
    )
}

/// One end of [`pair`].
struct ChannelIo {
    tx: tokio::sync::mpsc::UnboundedSender<WsOut>,
    rx: tokio::sync::mpsc::UnboundedReceiver<WsOut>,
    /// A close frame was received: the stream is over.
    closed: bool,
}

impl Stream for ChannelIo {
    type Item = WsIn;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WsIn>> {
        if self.closed {
            return Poll::Ready(None);
        }
        Poll::Ready(match ready!(self.rx.poll_recv(cx)) {
            Some(WsOut::Text(t)) => Some(WsIn::Text(Text::Owned(t))),
            Some(WsOut::Close(code, reason)) => {
                self.closed = true;
                Some(WsIn::Close(Some((code, reason))))
            }
            None => None,
        })
    }
}

impl Sink<WsOut> for ChannelIo {
    type Error = SendError;
    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        Poll::Ready(Ok(()))
    }
    fn start_send(self: Pin<&mut Self>, out: WsOut) -> Result<(), SendError> {
        self.tx.send(out).map_err(send_error)
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        Poll::Ready(Ok(()))
    }
}

/// A link that never receives anything and discards what is sent: the "media socket" of a
/// SIP connector call, whose audio never reaches this server.
pub fn detached() -> Link {
    Link::new(Detached)
}

struct Detached;

impl Stream for Detached {
    type Item = WsIn;
    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<WsIn>> {
        Poll::Pending
    }
}

impl Sink<WsOut> for Detached {
    type Error = SendError;
    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        Poll::Ready(Ok(()))
    }
    fn start_send(self: Pin<&mut Self>, _: WsOut) -> Result<(), SendError> {
        Ok(())
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_websockets::Message;

    #[test]
    fn close_frames_that_the_library_would_panic_on_are_sent_valid() {
        // 1005 may not be sent; 999 is not a close code at all: an empty close instead.
        for code in [1005, 999] {
            let m = to_message(WsOut::Close(code, "why".into()));
            assert!(m.is_close());
            assert!(m.as_payload().is_empty(), "code {code}");
        }
        // A reason over 123 bytes is cut at a character boundary.
        let long = "é".repeat(100); // 200 bytes
        let m = to_message(WsOut::Close(CLOSE_POLICY, long));
        let (code, reason) = m.as_close().expect("close");
        assert_eq!(u16::from(code), CLOSE_POLICY);
        assert_eq!(reason.len(), 122);
        assert!(reason.chars().all(|c| c == 'é'));
    }

    #[test]
    fn received_messages_map_to_ours() {
        let text = received(Message::text(String::from(r#"{"event":"media"}"#)));
        assert!(matches!(text, Some(WsIn::Text(t)) if t.as_str() == r#"{"event":"media"}"#));
        assert!(matches!(
            received(Message::binary(vec![1u8, 2, 3])),
            Some(WsIn::Binary(3))
        ));
        assert!(received(Message::ping(&b"x"[..])).is_none());
        let close = Message::close(Some(tokio_websockets::CloseCode::NORMAL_CLOSURE), "bye");
        assert!(matches!(received(close), Some(WsIn::Close(Some((1000, r))))  if r == "bye"));
        assert!(matches!(
            received(Message::close(None, "")),
            Some(WsIn::Close(None))
        ));
    }
}
