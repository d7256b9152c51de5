//! Any text frame from the Realtime API: `server::parse` must return Ok or Err, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voxbridge_realtime::server::{self, ServerEvent};

fuzz_target!(|text: &str| {
    match server::parse(text) {
        Ok(ServerEvent::AudioDelta { delta, .. }) => assert!(delta.len() <= text.len()),
        Ok(_) | Err(_) => {}
    }
});
