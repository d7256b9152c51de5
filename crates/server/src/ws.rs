//! One message type for both WebSocket libraries, so [`crate::session`]
//! can run over an axum socket (Twilio), a tokio-tungstenite socket (the
//! model), or plain channels in tests.

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

/// Text of a received frame, without copying it out of the library's buffer.
#[derive(Debug, Clone)]
pub enum Text {
    Axum(axum::extract::ws::Utf8Bytes),
    Tungstenite(tokio_tungstenite::tungstenite::Utf8Bytes),
    Owned(String),
}

impl Text {
    pub fn as_str(&self) -> &str {
        match self {
            Text::Axum(t) => t.as_str(),
            Text::Tungstenite(t) => t.as_str(),
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

/// A WebSocket library's message type, mapped to ours: axum's (server side, Twilio) and
/// tungstenite's (client side, the model) differ only in their names.
trait LibMessage: Sized {
    /// `None` for control frames the library answers by itself (ping, pong).
    fn into_in(self) -> Option<WsIn>;
    fn from_out(out: WsOut) -> Self;
}

impl LibMessage for axum::extract::ws::Message {
    fn into_in(self) -> Option<WsIn> {
        use axum::extract::ws::Message;
        match self {
            Message::Text(t) => Some(WsIn::Text(Text::Axum(t))),
            Message::Binary(b) => Some(WsIn::Binary(b.len())),
            Message::Close(c) => Some(WsIn::Close(c.map(|c| (c.code, c.reason.to_string())))),
            Message::Ping(_) | Message::Pong(_) => None,
        }
    }
    fn from_out(out: WsOut) -> Self {
        use axum::extract::ws::{CloseFrame, Message};
        match out {
            WsOut::Text(t) => Message::Text(t.into()),
            WsOut::Close(code, reason) => Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })),
        }
    }
}

impl LibMessage for tokio_tungstenite::tungstenite::Message {
    fn into_in(self) -> Option<WsIn> {
        use tokio_tungstenite::tungstenite::Message;
        match self {
            Message::Text(t) => Some(WsIn::Text(Text::Tungstenite(t))),
            Message::Binary(b) => Some(WsIn::Binary(b.len())),
            Message::Close(c) => Some(WsIn::Close(
                c.map(|c| (u16::from(c.code), c.reason.to_string())),
            )),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => None,
        }
    }
    fn from_out(out: WsOut) -> Self {
        use tokio_tungstenite::tungstenite::Message;
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        match out {
            WsOut::Text(t) => Message::Text(t.into()),
            WsOut::Close(code, reason) => Message::Close(Some(CloseFrame {
                code: code.into(),
                reason: reason.into(),
            })),
        }
    }
}

/// A library WebSocket `S` carrying messages `M`, as a [`Duplex`]: the mapping is done
/// inline, with no adapter future per message.
struct LibIo<S, M>(S, PhantomData<fn() -> M>);

impl<S, M, E> Stream for LibIo<S, M>
where
    S: Stream<Item = Result<M, E>> + Unpin,
    M: LibMessage,
    E: std::fmt::Display,
{
    type Item = WsIn;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WsIn>> {
        loop {
            return Poll::Ready(match ready!(self.0.poll_next_unpin(cx)) {
                None => None,
                Some(Ok(m)) => match m.into_in() {
                    Some(m) => Some(m),
                    None => continue,
                },
                Some(Err(e)) => Some(WsIn::Error(e.to_string())),
            });
        }
    }
}

impl<S, M> Sink<WsOut> for LibIo<S, M>
where
    S: Sink<M> + Unpin,
    S::Error: std::fmt::Display,
    M: LibMessage,
{
    type Error = SendError;
    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SendError>> {
        self.0.poll_ready_unpin(cx).map_err(send_error)
    }
    fn start_send(mut self: Pin<&mut Self>, out: WsOut) -> Result<(), SendError> {
        self.0
            .start_send_unpin(M::from_out(out))
            .map_err(send_error)
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

/// Wrap an axum (server side) WebSocket.
pub fn from_axum(socket: axum::extract::ws::WebSocket) -> Link {
    Link::new(LibIo::<_, axum::extract::ws::Message>(socket, PhantomData))
}

/// Wrap a tokio-tungstenite (client side) WebSocket.
pub fn from_tungstenite<S>(socket: tokio_tungstenite::WebSocketStream<S>) -> Link
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    Link::new(LibIo::<_, tokio_tungstenite::tungstenite::Message>(
        socket,
        PhantomData,
    ))
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
