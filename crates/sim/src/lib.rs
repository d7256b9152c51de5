//! Faithful emulators of the two services voxbridge talks to, for tests,
//! `voxbridge demo` and the load generator. Never used on a production path.
//!
//! They parse what they receive as plain JSON (`serde_json::Value`), not
//! with voxbridge's own typed events, so a field voxbridge gets wrong shows
//! up as a failure here instead of agreeing with itself.

pub mod caller;
pub mod realtime;
pub mod sip;
pub mod stamp;
pub mod twilio_api;
pub mod twiml_exec;

/// WebSocket settings of the emulators' sockets. tungstenite zero-fills the free part of
/// its read buffer (up to this size) before every read, 128 KiB by default; every message
/// here (a 20 ms Twilio frame, a 100 ms model delta) is a few hundred bytes to about a KiB,
/// and the buffer grows on demand for a larger one. With the default, zero-filling was the
/// load generator's largest cost.
pub fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(2 * 1024)
        .write_buffer_size(8 * 1024)
}
