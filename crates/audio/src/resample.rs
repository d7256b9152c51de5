//! Streaming sample-rate conversion between telephone audio (8 kHz) and the
//! 24 kHz PCM16 that OpenAI Realtime uses for `audio/pcm`.
//!
//! Both directions wrap rubato's synchronous FFT resampler ([`rubato::Fft`],
//! Blackman-Harris² anti-aliasing window) and work in 20 ms chunks:
//! 160 samples at 8 kHz ↔ 480 samples at 24 kHz. The public API takes and
//! returns `i16` (the f32 conversion is internal), accepts input of **any**
//! length and buffers it until a whole chunk is available, so output always
//! arrives in whole 20 ms chunks until [`Upsampler8to24::flush`] /
//! [`Downsampler24to8::flush`] drains the tail.
//!
//! # Delay
//!
//! The resampler delays its output by [`Upsampler8to24::delay_samples`]
//! output samples (10 ms: 240 at 24 kHz, 80 at 8 kHz). The streamed output is
//! *not* trimmed: sample `i` of the output corresponds to input time
//! `i - delay`. Callers that need alignment (recordings that mix two legs,
//! tests) drop the first `delay_samples()` output samples.
//!
//! # Frequency response
//!
//! Measured (both directions, the filter is the same): flat within 0.01 dB
//! to 3.4 kHz, −0.14 dB at 3.5 kHz, −2 dB at 3.6 kHz, −10 dB at 3.7 kHz,
//! −29 dB at 3.8 kHz, −65 dB at 3.9 kHz. When downsampling, tones at or above
//! 4 kHz (the 8 kHz Nyquist) come out below one LSB, so nothing aliases into
//! the telephone band. `tests/resample.rs` checks these figures.
//!
//! The resampler runs off the relay hot path: path A keeps `audio/pcmu`
//! end to end, so this is for recordings and PCM16 models.

use audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler as _};

use crate::g711::{mulaw_decode, mulaw_encode};

/// Input sample rate of [`Upsampler8to24`] and output rate of [`Downsampler24to8`].
pub const RATE_8K: usize = 8_000;
/// Output sample rate of [`Upsampler8to24`] and input rate of [`Downsampler24to8`].
pub const RATE_24K: usize = 24_000;
/// Samples in one 20 ms chunk at 8 kHz.
pub const CHUNK_8K: usize = 160;
/// Samples in one 20 ms chunk at 24 kHz.
pub const CHUNK_24K: usize = 480;

/// Why a resampler could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResampleError {
    /// rubato refused the parameters.
    #[error("cannot construct the {direction} resampler: {source}")]
    Construction {
        /// `"8k->24k"` or `"24k->8k"`.
        direction: &'static str,
        /// rubato's reason.
        source: rubato::ResamplerConstructionError,
    },
    /// rubato chose chunk sizes other than the 20 ms chunks this module is
    /// built around (a change in rubato's sizing rules would show up here).
    #[error(
        "the {direction} resampler uses chunks of {input} in / {output} out, expected {expected_in} / {expected_out}"
    )]
    ChunkSize {
        /// `"8k->24k"` or `"24k->8k"`.
        direction: &'static str,
        /// Input frames per chunk rubato asked for.
        input: usize,
        /// Output frames per chunk rubato produces.
        output: usize,
        /// Input frames per chunk we expected.
        expected_in: usize,
        /// Output frames per chunk we expected.
        expected_out: usize,
    },
}

/// i16 → f32 in [-1, 1).
#[inline]
fn to_f32(s: i16) -> f32 {
    f32::from(s) * (1.0 / 32_768.0)
}

/// f32 → i16, rounded and saturated (the filters can overshoot full scale).
#[inline]
fn to_i16(x: f32) -> i16 {
    // `as` saturates and maps NaN to 0, so this never panics.
    (x * 32_768.0).round().clamp(-32_768.0, 32_767.0) as i16
}

/// The shared streaming engine: one mono rubato `Fft` with fixed input and
/// output chunks, plus the partial input chunk collected so far.
struct Stream {
    direction: &'static str,
    resampler: Fft<f32>,
    chunk_in: usize,
    chunk_out: usize,
    /// The input chunk being collected; `fill` samples of it are valid.
    input: Vec<f32>,
    fill: usize,
    /// One chunk of output from rubato.
    output: Vec<f32>,
    /// Input samples accepted since construction or the last flush/reset.
    total_in: u64,
    /// Output samples emitted since construction or the last flush/reset.
    total_out: u64,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("direction", &self.direction)
            .field("chunk_in", &self.chunk_in)
            .field("chunk_out", &self.chunk_out)
            .field("buffered", &self.fill)
            .field("delay", &self.resampler.output_delay())
            .field("total_in", &self.total_in)
            .field("total_out", &self.total_out)
            .finish()
    }
}

impl Stream {
    fn new(
        direction: &'static str,
        rate_in: usize,
        rate_out: usize,
        chunk_in: usize,
        chunk_out: usize,
    ) -> Result<Self, ResampleError> {
        let resampler = Fft::<f32>::new(rate_in, rate_out, chunk_in, 1, FixedSync::Both)
            .map_err(|source| ResampleError::Construction { direction, source })?;
        let (input, output) = (
            resampler.input_frames_next(),
            resampler.output_frames_next(),
        );
        if input != chunk_in || output != chunk_out || resampler.output_frames_max() != chunk_out {
            return Err(ResampleError::ChunkSize {
                direction,
                input,
                output,
                expected_in: chunk_in,
                expected_out: chunk_out,
            });
        }
        Ok(Self {
            direction,
            resampler,
            chunk_in,
            chunk_out,
            input: vec![0.0; chunk_in],
            fill: 0,
            output: vec![0.0; chunk_out],
            total_in: 0,
            total_out: 0,
        })
    }

    fn delay(&self) -> usize {
        self.resampler.output_delay()
    }

    /// Output samples that a flush leaves in total: the delay plus the
    /// resampled length of everything fed in (rounded up).
    fn flushed_len(&self) -> u64 {
        if self.total_in == 0 {
            return 0;
        }
        let (num, den) = (self.chunk_out as u64, self.chunk_in as u64);
        self.delay() as u64 + (self.total_in * num).div_ceil(den)
    }

    /// Resample the (full) input chunk and hand the output chunk to `sink`.
    fn run_chunk(&mut self, sink: &mut impl FnMut(&[f32])) {
        self.fill = 0;
        let result = match (
            InterleavedSlice::new(&self.input[..], 1, self.chunk_in),
            InterleavedSlice::new_mut(&mut self.output[..], 1, self.chunk_out),
        ) {
            (Ok(input), Ok(mut output)) => self
                .resampler
                .process_into_buffer(&input, &mut output, None)
                .ok(),
            _ => None,
        };
        if result != Some((self.chunk_in, self.chunk_out)) {
            // Unreachable: the buffers are sized from the resampler's own
            // chunk sizes, checked in `new`. Keep the timing anyway by
            // emitting a chunk of silence rather than panicking.
            self.output.fill(0.0);
        }
        self.total_out += self.chunk_out as u64;
        sink(&self.output);
    }

    fn push(&mut self, samples: impl IntoIterator<Item = f32>, mut sink: impl FnMut(&[f32])) {
        for s in samples {
            self.input[self.fill] = s;
            self.fill += 1;
            self.total_in += 1;
            if self.fill == self.chunk_in {
                self.run_chunk(&mut sink);
            }
        }
    }

    /// Pad the partial chunk with silence and run until every input sample
    /// has come out (delay included), emitting exactly [`Self::flushed_len`]
    /// samples in total; then reset for a new stream.
    fn flush(&mut self, mut sink: impl FnMut(&[f32])) {
        let target = self.flushed_len();
        while self.total_out < target {
            let want = usize::try_from(target - self.total_out).unwrap_or(usize::MAX);
            self.input[self.fill..].fill(0.0);
            self.fill = self.chunk_in;
            self.run_chunk(&mut |chunk: &[f32]| sink(&chunk[..want.min(chunk.len())]));
        }
        self.reset();
    }

    fn reset(&mut self) {
        self.resampler.reset();
        self.input.fill(0.0);
        self.fill = 0;
        self.total_in = 0;
        self.total_out = 0;
    }
}

macro_rules! resampler_type {
    (
        $(#[$meta:meta])*
        $name:ident, $direction:literal, $rate_in:expr, $rate_out:expr, $chunk_in:expr, $chunk_out:expr
    ) => {
        $(#[$meta])*
        #[derive(Debug)]
        pub struct $name {
            stream: Stream,
        }

        impl $name {
            /// Input samples per 20 ms chunk.
            pub const CHUNK_IN: usize = $chunk_in;
            /// Output samples per 20 ms chunk.
            pub const CHUNK_OUT: usize = $chunk_out;

            /// Build the resampler (allocates; reuse one per stream).
            pub fn new() -> Result<Self, ResampleError> {
                Ok(Self {
                    stream: Stream::new($direction, $rate_in, $rate_out, $chunk_in, $chunk_out)?,
                })
            }

            /// Resample `input` (any length, even empty), appending every
            /// completed 20 ms output chunk to `out`. Samples that do not
            /// fill a chunk yet are kept for the next call or [`Self::flush`].
            /// The output depends only on the concatenated input, not on how
            /// it was split into calls.
            pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
                out.reserve((self.stream.fill + input.len()) / $chunk_in * $chunk_out);
                self.stream.push(input.iter().map(|&s| to_f32(s)), |chunk| {
                    out.extend(chunk.iter().map(|&x| to_i16(x)))
                });
            }

            /// End of stream: pad the buffered partial chunk with silence and
            /// drain the filter, so `out` receives everything still owed.
            /// After a flush the stream has produced exactly
            /// `delay_samples() + ceil(n * rate_out / rate_in)` samples for `n`
            /// input samples (nothing at all if `n == 0`), and the resampler
            /// is reset, ready for a new stream.
            pub fn flush(&mut self, out: &mut Vec<i16>) {
                self.stream
                    .flush(|chunk| out.extend(chunk.iter().map(|&x| to_i16(x))));
            }

            /// Forget buffered input and filter state without emitting anything.
            pub fn reset(&mut self) {
                self.stream.reset();
            }

            /// Delay of the output, in output samples, as reported by rubato
            /// (half the FFT block: 10 ms).
            pub fn delay_samples(&self) -> usize {
                self.stream.delay()
            }

            /// Input samples held back, waiting for a full chunk (< `CHUNK_IN`).
            pub fn buffered(&self) -> usize {
                self.stream.fill
            }
        }
    };
}

resampler_type!(
    /// Streaming 8 kHz → 24 kHz resampler: 160 samples in, 480 out per 20 ms
    /// chunk. Output delay: 240 samples (10 ms).
    Upsampler8to24,
    "8k->24k",
    RATE_8K,
    RATE_24K,
    CHUNK_8K,
    CHUNK_24K
);

resampler_type!(
    /// Streaming 24 kHz → 8 kHz resampler with anti-aliasing: 480 samples
    /// in, 160 out per 20 ms chunk. Output delay: 80 samples (10 ms).
    Downsampler24to8,
    "24k->8k",
    RATE_24K,
    RATE_8K,
    CHUNK_24K,
    CHUNK_8K
);

impl Upsampler8to24 {
    /// Like [`Self::process`], but the input is 8 kHz µ-law bytes, decoded on
    /// the fly (no intermediate buffer).
    pub fn process_mulaw(&mut self, mulaw: &[u8], out: &mut Vec<i16>) {
        out.reserve((self.stream.fill + mulaw.len()) / CHUNK_8K * CHUNK_24K);
        self.stream
            .push(mulaw.iter().map(|&b| to_f32(mulaw_decode(b))), |chunk| {
                out.extend(chunk.iter().map(|&x| to_i16(x)))
            });
    }
}

impl Downsampler24to8 {
    /// Like [`Self::process`], but the 8 kHz output is µ-law encoded.
    pub fn process_to_mulaw(&mut self, pcm: &[i16], out: &mut Vec<u8>) {
        out.reserve((self.stream.fill + pcm.len()) / CHUNK_24K * CHUNK_8K);
        self.stream.push(pcm.iter().map(|&s| to_f32(s)), |chunk| {
            out.extend(chunk.iter().map(|&x| mulaw_encode(to_i16(x))))
        });
    }

    /// Like [`Self::flush`], but the tail is µ-law encoded.
    pub fn flush_to_mulaw(&mut self, out: &mut Vec<u8>) {
        self.stream
            .flush(|chunk| out.extend(chunk.iter().map(|&x| mulaw_encode(to_i16(x)))));
    }
}

/// Decode 8 kHz µ-law and upsample it to 24 kHz PCM16, appending completed
/// 20 ms chunks to `out` (see [`Upsampler8to24::process`]). Any length.
pub fn mulaw_to_pcm24k(up: &mut Upsampler8to24, mulaw: &[u8], out: &mut Vec<i16>) {
    up.process_mulaw(mulaw, out);
}

/// Downsample 24 kHz PCM16 to 8 kHz and encode it as µ-law, appending
/// completed 20 ms chunks to `out` (see [`Downsampler24to8::process`]).
/// Any length.
pub fn pcm24k_to_mulaw(down: &mut Downsampler24to8, pcm: &[i16], out: &mut Vec<u8>) {
    down.process_to_mulaw(pcm, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_and_delays_are_the_documented_ones() {
        let up = Upsampler8to24::new().expect("upsampler");
        let down = Downsampler24to8::new().expect("downsampler");
        assert_eq!(up.delay_samples(), 240);
        assert_eq!(down.delay_samples(), 80);
        assert_eq!(Upsampler8to24::CHUNK_IN, 160);
        assert_eq!(Upsampler8to24::CHUNK_OUT, 480);
        assert_eq!(Downsampler24to8::CHUNK_IN, 480);
        assert_eq!(Downsampler24to8::CHUNK_OUT, 160);
    }

    #[test]
    fn conversion_saturates_and_round_trips() {
        assert_eq!(to_i16(2.0), i16::MAX);
        assert_eq!(to_i16(-2.0), i16::MIN);
        assert_eq!(to_i16(f32::NAN), 0);
        for s in [i16::MIN, -1, 0, 1, 12_345, i16::MAX] {
            assert_eq!(to_i16(to_f32(s)), s);
        }
    }
}
