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
//! - [`connect`]: opening the WebSocket with the right URL and headers
//!   (a model session, or the sideband socket of a SIP call);
//! - [`io`]: a stream adapter that sends vectored writes as one `send`;
//! - [`calls`]: the Realtime Calls API (accept / reject / refer / hangup a
//!   call that reached OpenAI's SIP connector);
//! - [`webhooks`]: Standard Webhooks verification of OpenAI webhooks and the
//!   `realtime.call.incoming` event.

pub mod calls;
pub mod client;
pub mod connect;
pub mod io;
pub mod server;
pub mod session;
pub mod webhooks;

pub use calls::{AcceptSession, CallsClient, CallsError, FunctionTool, ToolChoice};
pub use connect::{
    ConnectError, RealtimeSocket, connect, connect_sideband, realtime_url, sideband_url,
};
pub use server::ServerEvent;
pub use session::SessionConfig;
pub use webhooks::{IncomingCall, SipHeader, WebhookError, WebhookEvent, WebhookVerifier};
