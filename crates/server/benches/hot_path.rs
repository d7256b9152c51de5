//! Hot-path benchmarks: the per-frame work of the bridge, without sockets.
//!
//! * `uplink`: a Twilio `media` text frame (20 ms, 160 µ-law bytes) is
//!   parsed and turned into an `input_audio_buffer.append` event.
//! * `downlink`: a `response.output_audio.delta` of 100 ms (800 bytes, five
//!   20 ms frames) is parsed, queued, paced out as five Twilio `media`
//!   frames plus their `mark`, and the mark echo is handled. Throughput is
//!   set to 5 elements, so "per frame" is the time divided by five.
//! * `g711`: µ-law encode / decode of one 20 ms frame (160 samples).
//! * `signature`: `X-Twilio-Signature` validation of a voice webhook with
//!   15 form parameters (once per call, not per frame; for scale).
//!
//! Run: `cargo bench -p voxbridge --bench hot_path`. Results and the
//! machine they were taken on are in `docs/BENCHMARKS.md`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;
use tokio::time::Instant;
use voxbridge::playback::{Outbox, PacerConfig, Playback};
use voxbridge::session::Uplink;
use voxbridge_audio::{FRAME_BYTES, mulaw_decode, mulaw_encode};
use voxbridge_realtime::server::{self as rt, ServerEvent};
use voxbridge_twilio::media::{self, Inbound};
use voxbridge_twilio::signature::{compute_signature, validate_signature};

const STREAM_SID: &str = "MZ18ad3ab5a668481ce02b83e7395059f0";
const RESPONSE_ID: &str = "resp_CFzTq2dVtYxkQ8m1Jb0aW";
const ITEM_ID: &str = "item_CFzTq3Hc9Xb2LrN7vK1sE";
/// Frames of caller audio cycled through by the uplink bench (10 s).
const UPLINK_FRAMES: usize = 500;
/// Audio in one model delta.
const DELTA_MS: u64 = 100;
const FRAMES_PER_DELTA: u64 = DELTA_MS / 20;

/// 8 kHz linear PCM: a 440 Hz tone over a 150 Hz one, `n` samples from `start`.
fn pcm(start: usize, n: usize) -> Vec<i16> {
    (start..start + n)
        .map(|i| {
            let t = i as f64 / 8_000.0;
            let s = 6_000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()
                + 3_000.0 * (2.0 * std::f64::consts::PI * 150.0 * t).sin();
            s as i16
        })
        .collect()
}

fn mulaw(start: usize, n: usize) -> Vec<u8> {
    pcm(start, n).into_iter().map(mulaw_encode).collect()
}

/// Twilio `media` frames as Twilio sends them (field order included).
fn twilio_media_frames() -> Vec<String> {
    (0..UPLINK_FRAMES)
        .map(|i| {
            let payload = B64.encode(mulaw(i * FRAME_BYTES, FRAME_BYTES));
            format!(
                r#"{{"event":"media","sequenceNumber":"{seq}","media":{{"track":"inbound","chunk":"{chunk}","timestamp":"{ts}","payload":"{payload}"}},"streamSid":"{STREAM_SID}"}}"#,
                seq = i + 2,
                chunk = i + 1,
                ts = i * 20,
            )
        })
        .collect()
}

/// A GA `response.output_audio.delta` of `DELTA_MS` of audio.
fn audio_delta_event() -> String {
    let delta = B64.encode(mulaw(0, (DELTA_MS as usize) * 8));
    format!(
        r#"{{"type":"response.output_audio.delta","event_id":"event_CFzTqAa1b2C3d4E5f6G7h","response_id":"{RESPONSE_ID}","item_id":"{ITEM_ID}","output_index":0,"content_index":0,"delta":"{delta}"}}"#
    )
}

fn bench_uplink(c: &mut Criterion) {
    let frames = twilio_media_frames();
    let mut g = c.benchmark_group("uplink");
    g.throughput(Throughput::Elements(1));

    // What the session does for each caller frame: parse, check the track,
    // check the base64 and write the append event.
    g.bench_function("media_to_append", |b| {
        let mut uplink = Uplink::default();
        let mut out: Vec<String> = Vec::with_capacity(4);
        let mut i = 0usize;
        b.iter(|| {
            out.clear();
            let text = frames[i].as_str();
            i = (i + 1) % frames.len();
            match media::parse(black_box(text)) {
                Ok(Inbound::Media(m)) if m.track == "inbound" => {
                    if uplink
                        .on_media(m.timestamp_ms, &m.payload, &mut out)
                        .is_err()
                    {
                        panic!("bad payload");
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
            black_box(&out);
        });
    });

    // The parse alone, for the breakdown.
    g.bench_function("parse_only", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let text = frames[i].as_str();
            i = (i + 1) % frames.len();
            black_box(media::parse(black_box(text)).is_ok())
        });
    });
    g.finish();
}

fn bench_downlink(c: &mut Criterion) {
    let event = audio_delta_event();
    let mut g = c.benchmark_group("downlink");
    g.throughput(Throughput::Elements(FRAMES_PER_DELTA));

    // One delta of 100 ms: parse, queue, pace out five media frames (the
    // clock is advanced by the delta's length, so all five are due) plus the
    // mark every 100 ms, then handle Twilio's echo of that mark. The echo is
    // parsed from the mark frame we sent (Twilio's echo carries the same
    // fields plus a `sequenceNumber`).
    g.bench_function(BenchmarkId::new("delta_to_media", "100ms_5_frames"), |b| {
        let mut pb = Playback::new(PacerConfig::default());
        pb.start(STREAM_SID);
        pb.response_created(RESPONSE_ID);
        let mut now = Instant::now();
        let mut out = Outbox::default();
        let mut echo_out = Outbox::default();
        b.iter(|| {
            out.twilio.clear();
            echo_out.notes.clear();
            match rt::parse(black_box(event.as_str())) {
                Ok(ServerEvent::AudioDelta {
                    response_id,
                    item_id,
                    content_index,
                    delta,
                }) => {
                    if !pb.audio_delta(&response_id, &item_id, content_index, &delta) {
                        panic!("delta dropped");
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
            now += Duration::from_millis(DELTA_MS);
            pb.pump(now, &mut out);
            let mut media_frames = 0u64;
            for msg in &out.twilio {
                if msg.starts_with(r#"{"event":"media""#) {
                    media_frames += 1;
                    continue;
                }
                match media::parse(msg) {
                    Ok(Inbound::Mark { name }) => pb.mark_echo(&name, &mut echo_out),
                    other => panic!("unexpected {other:?}"),
                }
            }
            debug_assert_eq!(media_frames, FRAMES_PER_DELTA);
            black_box((&out, &echo_out, media_frames));
        });
        assert!(!pb.is_playing() || pb.queued_ms() == 0, "pacer fell behind");
        assert!(
            echo_out
                .notes
                .iter()
                .all(|n| !matches!(n, voxbridge::playback::Note::UnknownMark { .. })),
            "mark echo not matched: {:?}",
            echo_out.notes
        );
    });

    // The parse alone, for the breakdown.
    g.bench_function(BenchmarkId::new("parse_only", "100ms_5_frames"), |b| {
        b.iter(|| black_box(rt::parse(black_box(event.as_str())).is_ok()));
    });
    g.finish();
}

fn bench_g711(c: &mut Criterion) {
    let samples = pcm(0, FRAME_BYTES);
    let codes = mulaw(0, FRAME_BYTES);
    let mut g = c.benchmark_group("g711");
    g.throughput(Throughput::Elements(1));
    g.bench_function("mulaw_encode_160", |b| {
        let mut out = [0u8; FRAME_BYTES];
        b.iter(|| {
            for (o, &s) in out.iter_mut().zip(black_box(&samples[..])) {
                *o = mulaw_encode(s);
            }
            black_box(&out);
        });
    });
    g.bench_function("mulaw_decode_160", |b| {
        let mut out = [0i16; FRAME_BYTES];
        b.iter(|| {
            for (o, &c) in out.iter_mut().zip(black_box(&codes[..])) {
                *o = mulaw_decode(c);
            }
            black_box(&out);
        });
    });
    g.finish();
}

/// A voice webhook as Twilio posts it: 15 form parameters.
fn voice_webhook_params() -> Vec<(String, String)> {
    [
        ("AccountSid", "AC0123456789abcdef0123456789abcdef"),
        ("ApiVersion", "2010-04-01"),
        ("CallSid", "CA5f2b8d0e1c3a4b6d7e8f9a0b1c2d3e4f"),
        ("CallStatus", "ringing"),
        ("Called", "+14155550100"),
        ("CalledCountry", "US"),
        ("CalledState", "CA"),
        ("Caller", "+14155550123"),
        ("CallerCountry", "US"),
        ("CallerState", "CA"),
        ("Direction", "inbound"),
        ("From", "+14155550123"),
        ("FromCountry", "US"),
        ("To", "+14155550100"),
        ("ToCountry", "US"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn bench_signature(c: &mut Criterion) {
    let token = "12345678901234567890123456789012";
    let url = "https://voxbridge.example.com/twilio/voice";
    let params = voice_webhook_params();
    let sig = compute_signature(token, url, &params);
    assert!(validate_signature(token, url, &params, &sig));
    let mut g = c.benchmark_group("signature");
    g.throughput(Throughput::Elements(1));
    g.bench_function("validate_voice_webhook_15_params", |b| {
        b.iter(|| {
            black_box(validate_signature(
                black_box(token),
                black_box(url),
                black_box(&params),
                black_box(&sig),
            ))
        });
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_uplink,
    bench_downlink,
    bench_g711,
    bench_signature
);
criterion_main!(benches);
