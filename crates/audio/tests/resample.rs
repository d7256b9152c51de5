//! Quality and streaming checks of `voxbridge_audio::resample`.
//!
//! Tones are measured with a single-bin DFT over a whole number of periods,
//! after dropping the `delay_samples()` the resampler reports.

use std::f64::consts::PI;

use voxbridge_audio::resample::{
    Downsampler24to8, Upsampler8to24, mulaw_to_pcm24k, pcm24k_to_mulaw,
};
use voxbridge_audio::{mulaw_decode, mulaw_encode};

const FS_8K: f64 = 8_000.0;
const FS_24K: f64 = 24_000.0;

fn sine(freq: f64, rate: f64, n: usize, amp: f64) -> Vec<i16> {
    (0..n)
        .map(|i| (amp * (2.0 * PI * freq * i as f64 / rate).sin()).round() as i16)
        .collect()
}

/// Amplitude of the `freq` component of `x` (single DFT bin; exact when the
/// window holds a whole number of periods).
fn tone_amp(x: &[i16], freq: f64, rate: f64) -> f64 {
    let (mut re, mut im) = (0.0, 0.0);
    for (i, &s) in x.iter().enumerate() {
        let p = 2.0 * PI * freq * i as f64 / rate;
        re += f64::from(s) * p.cos();
        im += f64::from(s) * p.sin();
    }
    2.0 * (re * re + im * im).sqrt() / x.len() as f64
}

fn rms(x: &[i16]) -> f64 {
    (x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
}

fn db(ratio: f64) -> f64 {
    20.0 * ratio.log10()
}

fn zero_crossings(x: &[i16]) -> usize {
    x.windows(2)
        .filter(|w| (w[0] < 0 && w[1] >= 0) || (w[0] >= 0 && w[1] < 0))
        .count()
}

/// SNR of `got` against `want` (same length), in dB.
fn snr_db(want: &[i16], got: &[i16]) -> f64 {
    assert_eq!(want.len(), got.len());
    let signal: f64 = want.iter().map(|&s| f64::from(s).powi(2)).sum();
    let noise: f64 = want
        .iter()
        .zip(got)
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
        .sum();
    10.0 * (signal / noise.max(1e-9)).log10()
}

fn upsample_all(x: &[i16]) -> (Vec<i16>, usize) {
    let mut up = Upsampler8to24::new().expect("upsampler");
    let mut out = Vec::new();
    up.process(x, &mut out);
    up.flush(&mut out);
    (out, up.delay_samples())
}

fn downsample_all(x: &[i16]) -> (Vec<i16>, usize) {
    let mut down = Downsampler24to8::new().expect("downsampler");
    let mut out = Vec::new();
    down.process(x, &mut out);
    down.flush(&mut out);
    (out, down.delay_samples())
}

/// A deterministic speech-like signal at 8 kHz: a gliding glottal pitch
/// (110–200 Hz) with all its harmonics up to 3.4 kHz, shaped by three moving
/// formants and a spectral tilt, under a 4 Hz syllable envelope with pauses.
fn speech_like(n: usize) -> Vec<i16> {
    let mut phase = 0.0f64;
    let mut raw = Vec::with_capacity(n);
    for i in 0..n {
        let t = i as f64 / FS_8K;
        let f0 = 150.0 + 35.0 * (2.0 * PI * 0.7 * t).sin() + 12.0 * (2.0 * PI * 3.1 * t).sin();
        phase += 2.0 * PI * f0 / FS_8K;
        let formants = [
            (500.0 + 200.0 * (2.0 * PI * 1.3 * t).sin(), 90.0, 1.0),
            (1_500.0 + 400.0 * (2.0 * PI * 0.9 * t).sin(), 120.0, 0.5),
            (2_500.0 + 150.0 * (2.0 * PI * 0.4 * t).sin(), 160.0, 0.25),
        ];
        let mut v = 0.0;
        let mut k = 1;
        while f64::from(k) * f0 < 3_400.0 {
            let f = f64::from(k) * f0;
            let shape: f64 = formants
                .iter()
                .map(|&(fc, bw, g)| g / (1.0 + ((f - fc) / bw).powi(2)))
                .sum::<f64>()
                + 0.02;
            let tilt = 1.0 / (1.0 + f / 1_000.0);
            // Fade harmonics out smoothly between 3.0 and 3.4 kHz so none
            // switches on or off abruptly as the pitch glides.
            let fade = ((3_400.0 - f) / 400.0).clamp(0.0, 1.0);
            v += shape * tilt * fade * (f64::from(k) * phase).sin();
            k += 1;
        }
        let syllable = (0.5 - 0.5 * (2.0 * PI * 4.0 * t).cos()).powf(0.7);
        let pause = if (t % 1.5) > 1.2 { 0.05 } else { 1.0 };
        raw.push(v * syllable * pause);
    }
    let peak = raw.iter().fold(0.0f64, |m, &v| m.max(v.abs()));
    raw.iter()
        .map(|&v| (v / peak * 16_000.0).round() as i16)
        .collect()
}

#[test]
fn upsampled_1khz_keeps_frequency_amplitude_and_phase() {
    let amp = 10_000.0;
    let x = sine(1_000.0, FS_8K, 8_000, amp); // 1 s
    let (out, delay) = upsample_all(&x);
    assert_eq!(delay, 240);
    assert_eq!(out.len(), delay + 3 * x.len());
    let aligned = &out[delay..];

    // 0.8 s in the middle: 800 periods, 57 600 ... 2 400..21 600.
    let window = &aligned[2_400..21_600];
    let got = tone_amp(window, 1_000.0, FS_24K);
    assert!(
        db(got / amp).abs() < 1.0,
        "1 kHz level {:.3} dB",
        db(got / amp)
    );
    let zc = zero_crossings(window);
    eprintln!("1 kHz: level {:.4} dB, {zc} zero crossings", db(got / amp));
    assert!((1_599..=1_601).contains(&zc), "zero crossings {zc}");
    // No energy anywhere else: the images at 7 and 9 kHz are gone.
    for f in [7_000.0, 9_000.0, 15_000.0, 17_000.0] {
        let image = tone_amp(window, f, FS_24K);
        assert!(
            db(image / amp) < -60.0,
            "image at {f} Hz: {:.1} dB",
            db(image / amp)
        );
    }
    // And after the reported delay the waveform is the ideal 24 kHz sine.
    let ideal = sine(1_000.0, FS_24K, aligned.len(), amp);
    let snr = snr_db(&ideal[2_400..21_600], window);
    eprintln!("1 kHz: SNR vs ideal 24 kHz sine {snr:.1} dB");
    assert!(snr > 60.0, "waveform SNR vs ideal sine {snr:.1} dB");
}

#[test]
fn upsampled_3500hz_tone_survives() {
    let amp = 10_000.0;
    let x = sine(3_500.0, FS_8K, 8_000, amp);
    let (out, delay) = upsample_all(&x);
    let window = &out[delay + 2_400..delay + 21_600]; // 2 800 periods
    let got = tone_amp(window, 3_500.0, FS_24K);
    eprintln!("3.5 kHz: level {:.3} dB", db(got / amp));
    assert!(
        db(got / amp) > -0.5,
        "3.5 kHz level {:.3} dB (measured -0.14 dB)",
        db(got / amp)
    );
    let zc = zero_crossings(window);
    assert!((5_599..=5_601).contains(&zc), "zero crossings {zc}");
    // Its image at 8 - 3.5 = 4.5 kHz must not appear at 24 kHz.
    let image = tone_amp(window, 4_500.0, FS_24K);
    assert!(db(image / amp) < -60.0, "image {:.1} dB", db(image / amp));
}

#[test]
fn downsampling_keeps_the_telephone_band() {
    for freq in [300.0, 1_000.0, 3_000.0, 3_400.0, 3_500.0] {
        let amp = 10_000.0;
        let x = sine(freq, FS_24K, 24_000, amp);
        let (out, delay) = downsample_all(&x);
        assert_eq!(delay, 80);
        assert_eq!(out.len(), delay + x.len() / 3);
        let window = &out[delay + 800..delay + 7_200];
        let level = db(tone_amp(window, freq, FS_8K) / amp);
        assert!(level > -0.5 && level < 0.1, "{freq} Hz: {level:.3} dB");
    }
}

#[test]
fn downsampling_attenuates_everything_above_4khz_by_40db() {
    let amp = 16_000.0;
    for freq in [
        3_900.0, 4_000.0, 4_200.0, 4_500.0, 5_000.0, 6_000.0, 8_000.0, 9_500.0, 11_000.0, 11_900.0,
    ] {
        let x = sine(freq, FS_24K, 24_000, amp);
        let (out, delay) = downsample_all(&x);
        let window = &out[delay + 800..delay + 7_200];
        let level = db(rms(window).max(1e-3) / rms(&x));
        eprintln!("{freq} Hz at 24 kHz -> 8 kHz: {level:.1} dB");
        assert!(level <= -40.0, "{freq} Hz leaks through at {level:.1} dB");
    }
}

#[test]
fn an_11khz_tone_does_not_alias_to_3khz() {
    // 1 kHz speech band content plus an 11 kHz tone, which a naive
    // decimator would fold to 11 - 8 = 3 kHz.
    let (wanted, unwanted) = (8_000.0, 16_000.0);
    let a = sine(1_000.0, FS_24K, 24_000, wanted);
    let b = sine(11_000.0, FS_24K, 24_000, unwanted);
    let x: Vec<i16> = a.iter().zip(&b).map(|(&p, &q)| p + q).collect();
    let (out, delay) = downsample_all(&x);
    let window = &out[delay + 800..delay + 7_200];
    let kept = tone_amp(window, 1_000.0, FS_8K);
    let alias = tone_amp(window, 3_000.0, FS_8K);
    eprintln!(
        "11 kHz alias at 3 kHz: {:.1} dB",
        db(alias.max(1e-9) / unwanted)
    );
    assert!(
        db(kept / wanted).abs() < 0.1,
        "1 kHz {:.2} dB",
        db(kept / wanted)
    );
    assert!(
        db(alias / unwanted) <= -40.0,
        "11 kHz aliased to 3 kHz at {:.1} dB",
        db(alias / unwanted)
    );
}

#[test]
fn round_trip_8k_24k_8k_of_speech_like_audio_has_snr_above_30db() {
    let x = speech_like(24_000); // 3 s
    let (up, up_delay) = upsample_all(&x);
    let (back, down_delay) = downsample_all(&up);
    // 240 samples at 24 kHz = 80 at 8 kHz, plus the downsampler's own 80.
    let delay = up_delay / 3 + down_delay;
    assert_eq!(delay, 160);
    assert_eq!(back.len(), delay + x.len());
    let aligned = &back[delay..];
    let whole = snr_db(&x, aligned);
    let middle = snr_db(&x[160..x.len() - 160], &aligned[160..x.len() - 160]);
    eprintln!("speech-like round trip: SNR {whole:.1} dB (middle {middle:.1} dB)");
    assert!(whole >= 30.0, "round-trip SNR {whole:.1} dB");
    assert!(middle >= 30.0, "round-trip SNR (middle) {middle:.1} dB");
}

#[test]
fn mulaw_helpers_match_the_linear_path_and_round_trip() {
    let speech = speech_like(16_000);
    let mulaw: Vec<u8> = speech.iter().map(|&s| mulaw_encode(s)).collect();
    let decoded: Vec<i16> = mulaw.iter().map(|&b| mulaw_decode(b)).collect();

    let mut up = Upsampler8to24::new().expect("upsampler");
    let mut pcm = Vec::new();
    for frame in mulaw.chunks(160) {
        mulaw_to_pcm24k(&mut up, frame, &mut pcm);
    }
    up.flush(&mut pcm);
    assert_eq!(pcm, upsample_all(&decoded).0, "helper == decode + process");

    let mut down = Downsampler24to8::new().expect("downsampler");
    let mut back = Vec::new();
    for frame in pcm.chunks(480) {
        pcm24k_to_mulaw(&mut down, frame, &mut back);
    }
    down.flush_to_mulaw(&mut back);
    let linear: Vec<u8> = downsample_all(&pcm)
        .0
        .iter()
        .map(|&s| mulaw_encode(s))
        .collect();
    assert_eq!(back, linear, "helper == process + encode");

    // µ-law → 24 kHz → µ-law: the second µ-law quantisation dominates.
    let aligned: Vec<i16> = back[160..].iter().map(|&b| mulaw_decode(b)).collect();
    let snr = snr_db(&decoded, &aligned);
    eprintln!("µ-law round trip: SNR {snr:.1} dB");
    assert!(snr >= 30.0, "µ-law round-trip SNR {snr:.1} dB");
}

fn feed_up(x: &[i16], step: usize) -> (Vec<i16>, usize) {
    let mut up = Upsampler8to24::new().expect("upsampler");
    let mut out = Vec::new();
    for part in x.chunks(step) {
        up.process(part, &mut out);
        assert!(up.buffered() < Upsampler8to24::CHUNK_IN);
        assert_eq!(out.len() % Upsampler8to24::CHUNK_OUT, 0);
    }
    let streamed = out.len();
    up.flush(&mut out);
    (out, streamed)
}

fn feed_down(x: &[i16], step: usize) -> (Vec<i16>, usize) {
    let mut down = Downsampler24to8::new().expect("downsampler");
    let mut out = Vec::new();
    for part in x.chunks(step) {
        down.process(part, &mut out);
        assert!(down.buffered() < Downsampler24to8::CHUNK_IN);
        assert_eq!(out.len() % Downsampler24to8::CHUNK_OUT, 0);
    }
    let streamed = out.len();
    down.flush(&mut out);
    (out, streamed)
}

#[test]
fn output_does_not_depend_on_how_the_input_is_split() {
    let x = speech_like(5_003); // not a multiple of 160
    let reference = feed_up(&x, x.len());
    assert_eq!(reference.1, 5_003 / 160 * 480);
    for step in [1, 7, 160, 1_000] {
        assert_eq!(feed_up(&x, step), reference, "upsampler, step {step}");
    }

    let y = upsample_all(&x).0; // 15 249 samples, not a multiple of 480
    let reference = feed_down(&y, y.len());
    for step in [1, 7, 160, 480, 1_000] {
        assert_eq!(feed_down(&y, step), reference, "downsampler, step {step}");
    }

    // Irregular splits, as network frames arrive.
    let mut up = Upsampler8to24::new().expect("upsampler");
    let mut out = Vec::new();
    let mut rest = &x[..];
    for step in [0, 3, 159, 1, 161, 400, 0, 2].iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (head, tail) = rest.split_at((*step).min(rest.len()));
        up.process(head, &mut out);
        rest = tail;
    }
    up.flush(&mut out);
    assert_eq!(out, feed_up(&x, x.len()).0);
}

#[test]
fn any_input_length_is_accepted_and_flush_returns_the_documented_length() {
    let x = speech_like(1_000);
    let mut up = Upsampler8to24::new().expect("upsampler");
    let mut down = Downsampler24to8::new().expect("downsampler");
    for n in 0..=1_000 {
        // The same resampler is reused: flush resets it.
        let mut out = Vec::new();
        up.process(&x[..n], &mut out);
        up.flush(&mut out);
        let want = if n == 0 { 0 } else { 240 + 3 * n };
        assert_eq!(out.len(), want, "upsampler, n = {n}");
        assert_eq!(up.buffered(), 0);

        let mut out = Vec::new();
        down.process(&x[..n], &mut out);
        down.flush(&mut out);
        let want = if n == 0 { 0 } else { 80 + n.div_ceil(3) };
        assert_eq!(out.len(), want, "downsampler, n = {n}");
    }
    // Flushing twice, or with nothing fed, emits nothing.
    let mut out = Vec::new();
    up.flush(&mut out);
    up.flush(&mut out);
    down.flush(&mut out);
    assert!(out.is_empty());
    // And a reused resampler gives what a fresh one gives.
    let mut out = Vec::new();
    up.process(&x, &mut out);
    up.flush(&mut out);
    assert_eq!(out, upsample_all(&x).0);
}

#[test]
fn reset_drops_buffered_input() {
    let x = speech_like(2_000);
    let mut up = Upsampler8to24::new().expect("upsampler");
    let mut out = Vec::new();
    up.process(&x[..100], &mut out);
    assert!(out.is_empty());
    assert_eq!(up.buffered(), 100);
    up.reset();
    assert_eq!(up.buffered(), 0);
    up.process(&x, &mut out);
    up.flush(&mut out);
    assert_eq!(out, upsample_all(&x).0);
}

#[test]
fn silence_in_silence_out() {
    for n in [1, 159, 160, 161, 480, 4_000] {
        let zeros = vec![0i16; n];
        let (up, _) = upsample_all(&zeros);
        assert_eq!(up.len(), 240 + 3 * n);
        assert!(up.iter().all(|&s| s == 0), "upsampler, n = {n}");
        let (down, _) = downsample_all(&zeros);
        assert_eq!(down.len(), 80 + n.div_ceil(3));
        assert!(down.iter().all(|&s| s == 0), "downsampler, n = {n}");
    }
    // µ-law silence (0xFF) → zero PCM → µ-law silence.
    let mut up = Upsampler8to24::new().expect("upsampler");
    let mut pcm = Vec::new();
    mulaw_to_pcm24k(&mut up, &[0xFF; 1_600], &mut pcm);
    assert_eq!(pcm.len(), 4_800);
    assert!(pcm.iter().all(|&s| s == 0));
    let mut down = Downsampler24to8::new().expect("downsampler");
    let mut mulaw = Vec::new();
    pcm24k_to_mulaw(&mut down, &pcm, &mut mulaw);
    assert_eq!(mulaw.len(), 1_600);
    assert!(mulaw.iter().all(|&b| b == 0xFF));
}

#[test]
fn full_scale_input_saturates_instead_of_wrapping() {
    // A full-scale square wave overshoots (Gibbs); the output must clamp.
    let x: Vec<i16> = (0..8_000)
        .map(|i| {
            if (i / 20) % 2 == 0 {
                i16::MAX
            } else {
                i16::MIN
            }
        })
        .collect();
    let (up, delay) = upsample_all(&x);
    let aligned = &up[delay..delay + 3 * x.len()];
    assert!(aligned.contains(&i16::MAX));
    assert!(aligned.contains(&i16::MIN));
    // Wrapping would put large negative values where the input is high.
    let mid_high = aligned[30];
    assert!(mid_high > 20_000, "got {mid_high}");
}
