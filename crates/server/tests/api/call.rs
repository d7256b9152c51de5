//! Whole calls through the real flow: signed webhook, TwiML, signed media
//! socket, the bridge, the simulated model.

use crate::helpers::*;
use serde_json::Value;
use std::time::Duration;
use voxbridge::hub::{CallEventKind, Speaker};
use voxbridge_sim::caller::{self, CallEnd, CallerStep};
use voxbridge_sim::realtime::SimNotice;

fn of_type<'a>(events: &'a [Value], ty: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == ty).collect()
}

fn conversation_script() -> Vec<CallerStep> {
    vec![
        CallerStep::WaitAgentSpeaking { timeout_ms: 5_000 },
        CallerStep::WaitAgentQuiet {
            quiet_ms: 400,
            timeout_ms: 10_000,
        },
        CallerStep::Speak { ms: 1_400 },
        CallerStep::WaitAgentSpeaking { timeout_ms: 5_000 },
        CallerStep::Silence { ms: 1_000 },
        // Talk over the agent's long answer.
        CallerStep::Speak { ms: 900 },
        CallerStep::WaitAgentSpeaking { timeout_ms: 5_000 },
        CallerStep::WaitAgentQuiet {
            quiet_ms: 400,
            timeout_ms: 10_000,
        },
        CallerStep::Dtmf { digit: '5' },
        CallerStep::WaitAgentSpeaking { timeout_ms: 5_000 },
        CallerStep::WaitAgentQuiet {
            quiet_ms: 400,
            timeout_ms: 10_000,
        },
        CallerStep::Hangup,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_relays_audio_both_ways_with_barge_in_and_dtmf() {
    let app = spawn_app().await;
    let mut hub = app.state.hub.subscribe();
    let mut notices = app.sim.notices();
    let report = caller::run_call(app.caller(conversation_script()))
        .await
        .expect("call runs");
    let hung_up = tokio::time::Instant::now();
    assert_eq!(report.end, CallEnd::Hangup, "{:?}", report.close);
    assert!(
        report.protocol_errors.is_empty(),
        "{:?}",
        report.protocol_errors
    );

    // The model socket closes within 1 s of Twilio's stop.
    assert!(
        eventually(Duration::from_secs(1), || app
            .sim
            .connections()
            .first()
            .is_some_and(|c| c.closed_at.is_some()))
        .await,
        "model socket still open 1 s after stop"
    );
    let conn = &app.sim.connections()[0];
    let closed = conn.closed_at.expect("closed");
    assert!(
        closed.saturating_duration_since(hung_up.into_std()) < Duration::from_secs(1),
        "model closed too late"
    );

    let events = app.sim.events();
    // Caller audio reaches the model intact and in order.
    let appended: Vec<&str> = of_type(&events, "input_audio_buffer.append")
        .iter()
        .map(|e| e["audio"].as_str().expect("audio"))
        .collect();
    let sent: Vec<&str> = report
        .sent_payloads
        .iter()
        .map(|(_, p)| p.as_str())
        .collect();
    assert!(sent.len() > 200, "caller sent {} frames", sent.len());
    assert_eq!(
        appended, sent,
        "appends must equal the caller's frames, in order"
    );

    // The session is configured for the phone before anything else.
    let first = &events[0];
    assert_eq!(first["type"], "session.update");
    assert_eq!(first["session"]["type"], "realtime");
    assert_eq!(
        first["session"]["audio"]["input"]["format"]["type"],
        "audio/pcmu"
    );
    assert_eq!(
        first["session"]["audio"]["output"]["format"]["type"],
        "audio/pcmu"
    );

    // The agent spoke first.
    let creates = of_type(&events, "response.create");
    assert!(!creates.is_empty());
    assert!(creates[0]["response"]["instructions"].is_string());

    // Agent audio arrives paced: 20 ms frames, never much more than the lead buffered.
    assert!(report.received_frames.iter().all(|f| f.len <= 160));
    assert!(
        report.max_buffered_ms <= 160 + 40,
        "Twilio buffered {} ms",
        report.max_buffered_ms
    );
    assert!(report.heard.len() >= 1200 * 8, "greeting heard whole");

    // Barge-in: Twilio was cleared and the model accepted the truncate.
    assert!(!report.clears.is_empty(), "no clear after barge-in");
    let truncates = of_type(&events, "conversation.item.truncate");
    assert_eq!(truncates.len(), 1, "{truncates:?}");
    let mut accepted = 0;
    let mut rejected = Vec::new();
    while let Ok(n) = notices.try_recv() {
        match n {
            SimNotice::TruncateAccepted { audio_end_ms, .. } => {
                accepted += 1;
                assert!(audio_end_ms > 0 && audio_end_ms < 5000, "{audio_end_ms}");
            }
            SimNotice::TruncateRejected { message, .. } => rejected.push(message),
            _ => {}
        }
    }
    assert_eq!((accepted, rejected), (1, Vec::<String>::new()));

    // DTMF reached the model as a user text item.
    let dtmf: Vec<&Value> = of_type(&events, "conversation.item.create")
        .into_iter()
        .filter(|e| e["item"]["content"][0]["text"] == "[caller pressed 5]")
        .collect();
    assert_eq!(dtmf.len(), 1);
    assert_eq!(dtmf[0]["item"]["role"], "user");

    // Transcripts, turns and the end were published on the hub.
    let mut caller_lines = 0;
    let mut agent_lines = 0;
    let mut turns = 0;
    let mut ended = None;
    while let Ok(ev) = hub.try_recv() {
        match ev.kind {
            CallEventKind::Transcript { speaker, .. } => match speaker {
                Speaker::Caller => caller_lines += 1,
                Speaker::Agent => agent_lines += 1,
            },
            CallEventKind::Turn { heard_ms, .. } => {
                turns += 1;
                assert!(heard_ms.is_some());
            }
            CallEventKind::Ended { reason } => ended = Some(reason),
            _ => {}
        }
    }
    assert!(
        caller_lines >= 2 && agent_lines >= 3,
        "{caller_lines} {agent_lines}"
    );
    assert!(turns >= 2, "{turns}");
    assert_eq!(ended.as_deref(), Some("twilio_stop"));
    export_client_events(&app.sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_is_connected_while_the_webhook_is_answered() {
    let app = spawn_app_with(sim_config(), &[("PRECONNECT_TTL_MS", "400")]).await;
    let cfg = app.caller(vec![]);
    let (twiml, stream_url, params) = caller::fetch_twiml(&cfg).await.expect("twiml");
    assert!(twiml.contains("<Connect><Stream"), "{twiml}");
    assert_eq!(stream_url, app.stream_url());
    assert!(!stream_url.contains('?'));
    let names: Vec<&str> = params.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, vec!["call_id", "token"]);
    // No media socket yet, but the model socket is open and configured.
    assert!(
        eventually(Duration::from_secs(2), || {
            app.sim
                .events()
                .iter()
                .any(|e| e["type"] == "session.update")
        })
        .await
    );
    assert_eq!(app.sim.connections().len(), 1);
    // Nobody claims it: it is closed after the TTL.
    assert!(model_sockets_close(&app).await);
    assert_eq!(app.state.active_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_greeting_is_heard_whole() {
    let app = spawn_app().await;
    let script = vec![
        CallerStep::WaitAgentSpeaking { timeout_ms: 5_000 },
        CallerStep::Silence { ms: 200 },
        // Talk over the greeting (1200 ms of audio).
        CallerStep::Speak { ms: 500 },
        CallerStep::WaitAgentQuiet {
            quiet_ms: 600,
            timeout_ms: 15_000,
        },
        CallerStep::Hangup,
    ];
    let report = caller::run_call(app.caller(script)).await.expect("call");
    assert!(report.clears.is_empty(), "the greeting was cleared");
    assert!(report.heard.len() >= 1200 * 8);
    let events = app.sim.events();
    let updates = of_type(&events, "session.update");
    assert_eq!(
        updates[0]["session"]["audio"]["input"]["turn_detection"]["interrupt_response"], false,
        "the server must not cut the greeting either"
    );
    assert!(
        updates.len() >= 2
            && updates[1]["session"]["audio"]["input"]["turn_detection"]["interrupt_response"]
                == true,
        "interruptions restored after the greeting: {updates:?}"
    );
    assert!(of_type(&events, "conversation.item.truncate").is_empty());
    assert!(of_type(&events, "response.cancel").is_empty());
    export_client_events(&app.sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_shape_the_session_and_the_caller_may_speak_first() {
    // The first answer is long, so it is still being generated when the
    // caller talks over it.
    let mut sim = sim_config();
    sim.replies.remove(0);
    let app = spawn_app_with(
        sim,
        &[
            ("AGENT_SPEAKS_FIRST", "false"),
            ("TURN_DETECTION", "semantic_vad"),
            ("VAD_EAGERNESS", "high"),
            ("NOISE_REDUCTION", "near_field"),
            ("TRANSCRIPTION_MODEL", "gpt-4o-transcribe"),
            ("TRANSCRIPTION_LANGUAGE", "en"),
            ("INTERRUPT_RESPONSE", "false"),
            ("VOICE", "cedar"),
            ("INSTRUCTIONS", "You are Max."),
        ],
    )
    .await;
    let script = vec![
        CallerStep::Silence { ms: 600 },
        CallerStep::Speak { ms: 800 },
        CallerStep::WaitAgentSpeaking { timeout_ms: 5_000 },
        CallerStep::Silence { ms: 600 },
        // Interrupt: with interrupt_response false the bridge must cancel.
        CallerStep::Speak { ms: 600 },
        CallerStep::Silence { ms: 800 },
        CallerStep::Hangup,
    ];
    let report = caller::run_call(app.caller(script)).await.expect("call");
    assert_eq!(report.end, CallEnd::Hangup);
    let events = app.sim.events();
    let s = &events[0]["session"];
    assert_eq!(s["instructions"], "You are Max.");
    assert_eq!(s["audio"]["output"]["voice"], "cedar");
    let td = &s["audio"]["input"]["turn_detection"];
    assert_eq!(td["type"], "semantic_vad");
    assert_eq!(td["eagerness"], "high");
    assert_eq!(td["interrupt_response"], false);
    assert_eq!(s["audio"]["input"]["noise_reduction"]["type"], "near_field");
    assert_eq!(
        s["audio"]["input"]["transcription"]["model"],
        "gpt-4o-transcribe"
    );
    assert_eq!(s["audio"]["input"]["transcription"]["language"], "en");
    // The caller spoke first: no response.create was sent before speech.
    let first_create = events.iter().position(|e| e["type"] == "response.create");
    assert!(first_create.is_none(), "agent must not speak first");
    // Barge-in with interrupt_response false: the bridge cancels itself.
    assert_eq!(of_type(&events, "response.cancel").len(), 1);
    assert_eq!(of_type(&events, "conversation.item.truncate").len(), 1);
    assert!(!report.clears.is_empty());
    export_client_events(&app.sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_positions_never_exceed_audio_sent() {
    // Many barge-ins at varied moments: the simulator rejects any truncate
    // past the audio it sent, as the real API does.
    let app = spawn_app().await;
    let mut notices = app.sim.notices();
    let mut script = vec![
        CallerStep::WaitAgentSpeaking { timeout_ms: 5_000 },
        CallerStep::WaitAgentQuiet {
            quiet_ms: 300,
            timeout_ms: 10_000,
        },
    ];
    for wait in [100u32, 400, 700] {
        script.push(CallerStep::Speak { ms: 700 });
        script.push(CallerStep::WaitAgentSpeaking { timeout_ms: 5_000 });
        script.push(CallerStep::Silence { ms: wait });
    }
    script.push(CallerStep::Speak { ms: 600 });
    script.push(CallerStep::Silence { ms: 800 });
    script.push(CallerStep::Hangup);
    let report = caller::run_call(app.caller(script)).await.expect("call");
    assert_eq!(report.end, CallEnd::Hangup);
    let mut accepted = 0;
    while let Ok(n) = notices.try_recv() {
        match n {
            SimNotice::TruncateAccepted { .. } => accepted += 1,
            SimNotice::TruncateRejected { message, .. } => panic!("truncate rejected: {message}"),
            _ => {}
        }
    }
    assert!(accepted >= 2, "{accepted} truncates");
    // Everything the caller heard was agent audio, µ-law, after clears.
    let heard_rms = voxbridge_audio::mulaw_rms(&report.heard);
    assert!(heard_rms > 500.0, "{heard_rms}");
    export_client_events(&app.sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_demo_completes_its_script() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = std::env::temp_dir().join(format!("vb-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let record = dir.join("model_events.jsonl");
    let report = voxbridge::demo::run(voxbridge::demo::DemoOptions {
        record_path: Some(record.clone()),
        quiet: true,
    })
    .await
    .expect("demo runs");
    let summary = voxbridge::demo::summary(&report);
    assert!(report.passed(), "{summary}");
    assert_eq!(report.barge_ins, 1, "{summary}");
    assert_eq!(report.dtmf, vec!["5".to_owned()]);
    assert!(report.turns.len() >= 3, "{summary}");
    assert!(summary.contains("result                ok"));
    // The demo's recording holds every client event the model received.
    let lines = std::fs::read_to_string(&record).expect("record file");
    assert!(lines.lines().count() > 500);
    assert!(lines.contains("conversation.item.truncate"));
}
