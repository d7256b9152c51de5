//! The OpenAI Realtime API, GA shape only.
//!
//! The beta shape (the `OpenAI-Beta: realtime=v1` header, flat
//! `input_audio_format`, `response.audio.delta`) was shut down in 2026 and
//! makes the server close the socket, so nothing here can produce it.
//!
//! - [`session`]: the `session.update` payload a phone call needs;
//! - [`client`]: client events, written without a `Value` round trip;
//! - [`server`]: server events parsed in one pass into [`server::ServerEvent`],
//!   borrowing the audio delta, with an explicit `Other` for everything else;
//! - [`connect`]: opening the WebSocket with the right URL and headers.

pub mod client;
pub mod connect;
pub mod server;
pub mod session;

pub use connect::{ConnectError, RealtimeSocket, connect, realtime_url};
pub use server::ServerEvent;
pub use session::SessionConfig;
