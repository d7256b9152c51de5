//! One message type for both WebSocket libraries, so [`crate::session`]
//! can run over an axum socket (Twilio), a tokio-tungstenite socket (the
//! model), or plain channels in tests.

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use std::pin::Pin;

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

pub type BoxSink = Pin<Box<dyn Sink<WsOut, Error = SendError> + Send>>;
pub type BoxStream = Pin<Box<dyn Stream<Item = WsIn> + Send>>;

/// Both halves of a socket.
pub struct Link {
    pub tx: BoxSink,
    pub rx: BoxStream,
}

/// WebSocket close code: policy violation.
pub const CLOSE_POLICY: u16 = 1008;
/// WebSocket close code: message too big.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// WebSocket close code: internal error.
pub const CLOSE_ERROR: u16 = 1011;
/// WebSocket close code: normal.
pub const CLOSE_NORMAL: u16 = 1000;

/// Wrap an axum (server side) WebSocket.
pub fn from_axum(socket: axum::extract::ws::WebSocket) -> Link {
    use axum::extract::ws::{CloseFrame, Message};
    let (tx, rx) = socket.split();
    let tx = tx
        .sink_map_err(|e| SendError(e.to_string()))
        .with(|out: WsOut| async move {
            Ok::<_, SendError>(match out {
                WsOut::Text(t) => Message::Text(t.into()),
                WsOut::Close(code, reason) => Message::Close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                })),
            })
        });
    let rx = rx.filter_map(|m| async move {
        match m {
            Ok(Message::Text(t)) => Some(WsIn::Text(Text::Axum(t))),
            Ok(Message::Binary(b)) => Some(WsIn::Binary(b.len())),
            Ok(Message::Close(c)) => Some(WsIn::Close(c.map(|c| (c.code, c.reason.to_string())))),
            Ok(Message::Ping(_) | Message::Pong(_)) => None,
            Err(e) => Some(WsIn::Error(e.to_string())),
        }
    });
    Link {
        tx: Box::pin(tx),
        rx: Box::pin(rx),
    }
}

/// Wrap a tokio-tungstenite (client side) WebSocket.
pub fn from_tungstenite<S>(socket: tokio_tungstenite::WebSocketStream<S>) -> Link
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let (tx, rx) = socket.split();
    let tx = tx
        .sink_map_err(|e| SendError(e.to_string()))
        .with(|out: WsOut| async move {
            Ok::<_, SendError>(match out {
                WsOut::Text(t) => Message::Text(t.into()),
                WsOut::Close(code, reason) => Message::Close(Some(CloseFrame {
                    code: code.into(),
                    reason: reason.into(),
                })),
            })
        });
    let rx = rx.filter_map(|m| async move {
        match m {
            Ok(Message::Text(t)) => Some(WsIn::Text(Text::Tungstenite(t))),
            Ok(Message::Binary(b)) => Some(WsIn::Binary(b.len())),
            Ok(Message::Close(c)) => Some(WsIn::Close(
                c.map(|c| (u16::from(c.code), c.reason.to_string())),
            )),
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => None,
            Err(e) => Some(WsIn::Error(e.to_string())),
        }
    });
    Link {
        tx: Box::pin(tx),
        rx: Box::pin(rx),
    }
}

/// Two linked in-memory links, for tests: what one side sends, the other
/// receives.
pub fn pair() -> (Link, Link) {
    let (a_tx, b_rx) = futures_channel_like();
    let (b_tx, a_rx) = futures_channel_like();
    (Link { tx: a_tx, rx: a_rx }, Link { tx: b_tx, rx: b_rx })
}

fn futures_channel_like() -> (BoxSink, BoxStream) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<WsOut>();
    let sink = futures_util::sink::unfold(tx, |tx, item: WsOut| async move {
        tx.send(item).map_err(|e| SendError(e.to_string()))?;
        Ok::<_, SendError>(tx)
    });
    let stream = futures_util::stream::unfold((rx, false), |(mut rx, closed)| async move {
        if closed {
            return None;
        }
        match rx.recv().await {
            Some(WsOut::Text(t)) => Some((WsIn::Text(Text::Owned(t)), (rx, false))),
            Some(WsOut::Close(code, reason)) => {
                Some((WsIn::Close(Some((code, reason))), (rx, true)))
            }
            None => None,
        }
    });
    (Box::pin(sink), Box::pin(stream))
}

/// A link that never receives anything and discards what is sent: the "media socket" of a
/// SIP connector call, whose audio never reaches this server.
pub fn detached() -> Link {
    let tx = futures_util::sink::drain()
        .sink_map_err(|e: std::convert::Infallible| SendError(e.to_string()));
    Link {
        tx: Box::pin(tx),
        rx: Box::pin(futures_util::stream::pending()),
    }
}
