//! Any text frame from Twilio: `media::parse` must return Ok or Err, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voxbridge_twilio::media::{self, Inbound};

fuzz_target!(|text: &str| {
    if let Ok(Inbound::Media(m)) = media::parse(text) {
        // The payload borrows from (or was unescaped out of) the frame.
        assert!(m.payload.len() <= text.len());
    }
});
