//! Audio codec and resampler benchmarks, one 20 ms frame per iteration.
//!
//! All in criterion group `codec` (distinct from the server's `g711` group,
//! which shares `target/criterion/`):
//!
//! * `mulaw_decode_160`, `mulaw_encode_160`: µ-law decode (table lookup) /
//!   encode of 160 samples (8 kHz, 20 ms).
//! * `upsample_8k_to_24k_160`: `Upsampler8to24::process` of 160 i16 samples
//!   → 480 (one rubato FFT chunk, i16↔f32 conversion included).
//! * `downsample_24k_to_8k_480`: `Downsampler24to8::process` of 480 → 160.
//! * `mulaw_to_pcm24k_160`, `pcm24k_to_mulaw_480`: the helpers, i.e. the
//!   above with the µ-law decode / encode fused in.
//!
//! Output vectors are reused (cleared each iteration), so no allocation is
//! measured. Frames are fed whole, so every iteration runs exactly one
//! resampler chunk.
//!
//! Run: `cargo bench -p voxbridge-audio --bench codec -- --warm-up-time 1
//! --measurement-time 3`. Results are in `docs/BENCHMARKS.md`.

use std::f64::consts::PI;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use voxbridge_audio::resample::{
    CHUNK_8K, CHUNK_24K, Downsampler24to8, Upsampler8to24, mulaw_to_pcm24k, pcm24k_to_mulaw,
};
use voxbridge_audio::{mulaw_decode, mulaw_encode};

/// A 440 Hz tone over a 150 Hz one at `rate`, `n` samples.
fn pcm(rate: f64, n: usize) -> Vec<i16> {
    (0..n)
        .map(|i| {
            let t = i as f64 / rate;
            (6_000.0 * (2.0 * PI * 440.0 * t).sin() + 3_000.0 * (2.0 * PI * 150.0 * t).sin()) as i16
        })
        .collect()
}

fn g711(c: &mut Criterion) {
    let linear = pcm(8_000.0, CHUNK_8K);
    let codes: Vec<u8> = linear.iter().map(|&s| mulaw_encode(s)).collect();
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    let mut out_pcm: Vec<i16> = Vec::with_capacity(CHUNK_8K);
    g.bench_function("mulaw_decode_160", |b| {
        b.iter(|| {
            out_pcm.clear();
            out_pcm.extend(black_box(&codes).iter().map(|&c| mulaw_decode(c)));
            black_box(&out_pcm);
        })
    });
    let mut out_codes: Vec<u8> = Vec::with_capacity(CHUNK_8K);
    g.bench_function("mulaw_encode_160", |b| {
        b.iter(|| {
            out_codes.clear();
            out_codes.extend(black_box(&linear).iter().map(|&s| mulaw_encode(s)));
            black_box(&out_codes);
        })
    });
    g.finish();
}

fn resample(c: &mut Criterion) {
    let in_8k = pcm(8_000.0, CHUNK_8K);
    let in_8k_mulaw: Vec<u8> = in_8k.iter().map(|&s| mulaw_encode(s)).collect();
    let in_24k = pcm(24_000.0, CHUNK_24K);
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));

    let mut up = Upsampler8to24::new().expect("upsampler");
    let mut out = Vec::with_capacity(CHUNK_24K);
    g.bench_function("upsample_8k_to_24k_160", |b| {
        b.iter(|| {
            out.clear();
            up.process(black_box(&in_8k), &mut out);
            black_box(&out);
        })
    });
    g.bench_function("mulaw_to_pcm24k_160", |b| {
        b.iter(|| {
            out.clear();
            mulaw_to_pcm24k(&mut up, black_box(&in_8k_mulaw), &mut out);
            black_box(&out);
        })
    });

    let mut down = Downsampler24to8::new().expect("downsampler");
    let mut out = Vec::with_capacity(CHUNK_8K);
    g.bench_function("downsample_24k_to_8k_480", |b| {
        b.iter(|| {
            out.clear();
            down.process(black_box(&in_24k), &mut out);
            black_box(&out);
        })
    });
    let mut out = Vec::with_capacity(CHUNK_8K);
    g.bench_function("pcm24k_to_mulaw_480", |b| {
        b.iter(|| {
            out.clear();
            pcm24k_to_mulaw(&mut down, black_box(&in_24k), &mut out);
            black_box(&out);
        })
    });
    g.finish();
}

criterion_group!(benches, g711, resample);
criterion_main!(benches);
