//! Faithful emulators of the two services voxbridge talks to, for tests,
//! `voxbridge demo` and the load generator. Never used on a production path.
//!
//! They parse what they receive as plain JSON (`serde_json::Value`), not
//! with voxbridge's own typed events, so a field voxbridge gets wrong shows
//! up as a failure here instead of agreeing with itself.

pub mod caller;
pub mod realtime;
pub mod sip;
pub mod twilio_api;
pub mod twiml_exec;
