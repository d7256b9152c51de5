//! voxbridge: lets an AI agent hold real phone calls by bridging Twilio
//! Media Streams to the OpenAI Realtime API.
//!
//! - [`app`]: the axum application (`/health`, `/twilio/voice`, `/twilio/media`);
//! - [`session`]: one call, one task, owning both sockets;
//! - [`playback`]: the outbound pacer, marks and barge-in state machine;
//! - [`config`]: `voxbridge.toml` + environment variables;
//! - [`hub`]: in-process call events;
//! - [`demo`]: a whole call offline, against the emulators;
//! - [`campaign`]: outbound campaigns: import, calling rules, the dialing worker, REST;
//! - [`loadtest`]: many concurrent emulated calls, latency, loss, CPU, memory.

pub mod agents;
pub mod api;
pub mod app;
pub mod campaign;
pub mod cluster;
pub mod config;
pub mod control;
pub mod demo;
pub mod hub;
pub mod loadtest;
pub mod persist;
pub mod playback;
pub mod provider;
pub mod session;
pub mod sip;
pub mod token;
pub mod tools;
pub mod upgrade;
pub mod ws;

pub use app::{App, AppState};
pub use config::Config;
