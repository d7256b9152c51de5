//! G.711 codecs and the frame constants of a Twilio Media Stream.
//!
//! Nothing here knows about sockets or JSON: the call bridge relays µ-law
//! untouched, and only the recording, the simulator's voice activity
//! detector and the benchmarks decode it.

pub mod g711;
pub mod resample;
pub mod wav;

pub use g711::{alaw_decode, alaw_encode, mulaw_decode, mulaw_encode};

/// Sample rate of telephone audio (Twilio Media Streams, `audio/pcmu`).
pub const SAMPLE_RATE: u32 = 8_000;
/// µ-law bytes in one millisecond of 8 kHz mono audio.
pub const BYTES_PER_MS: usize = 8;
/// Length of one Twilio media frame.
pub const FRAME_MS: u64 = 20;
/// Bytes in one 20 ms µ-law frame.
pub const FRAME_BYTES: usize = 160;
/// The µ-law code for digital silence (positive zero).
pub const MULAW_SILENCE: u8 = 0xFF;
/// The A-law code for digital silence.
pub const ALAW_SILENCE: u8 = 0xD5;

/// Milliseconds of audio in `bytes` of 8 kHz µ-law (or A-law).
pub fn mulaw_ms(bytes: usize) -> u64 {
    (bytes / BYTES_PER_MS) as u64
}

/// Root-mean-square level of a µ-law buffer, in linear 16-bit units.
/// Used by the simulator's energy VAD and by diagnostics.
pub fn mulaw_rms(buf: &[u8]) -> f64 {
    if buf.is_empty() {
        return 0.0;
    }
    // Integer sum (exact, and it vectorises; a float sum is sequential): each square is
    // below 2^30, so a u64 holds the sum of 2^34 of them.
    let sum: u64 = buf
        .iter()
        .map(|&b| {
            let s = i64::from(mulaw_decode(b));
            (s * s) as u64
        })
        .sum();
    (sum as f64 / buf.len() as f64).sqrt()
}
