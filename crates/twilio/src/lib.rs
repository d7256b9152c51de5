//! Twilio: Media Streams WebSocket messages, TwiML, and request signatures.
//!
//! Knows nothing of OpenAI. The message parser borrows the base64 payload
//! from the frame so the bridge can relay it without copying or decoding.

pub mod media;
pub mod rest;
pub mod signature;
pub mod twiml;
