//! The OpenAI Realtime simulator over real sockets.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use voxbridge_sim::realtime::{RealtimeSim, RealtimeSimConfig, SimNotice, SimReply};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect_with(sim: &RealtimeSim, query: &str, headers: &[(&str, &str)]) -> Ws {
    let mut req = format!("{}{}", sim.ws_url(), query)
        .into_client_request()
        .expect("request");
    for (k, v) in headers {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
                .expect("header name"),
            v.parse().expect("header value"),
        );
    }
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("connect");
    ws
}

async fn connect(sim: &RealtimeSim) -> Ws {
    connect_with(sim, "?model=gpt-realtime", &[]).await
}

/// Next JSON event, or None on close/timeout.
async fn recv(ws: &mut Ws, timeout_ms: u64) -> Option<Value> {
    loop {
        let m = tokio::time::timeout(Duration::from_millis(timeout_ms), ws.next())
            .await
            .ok()??;
        match m {
            Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// Collect events until one of type `ty` arrives (inclusive).
async fn until(ws: &mut Ws, ty: &str) -> Vec<Value> {
    let mut got = Vec::new();
    loop {
        let ev = recv(ws, 5_000)
            .await
            .unwrap_or_else(|| panic!("no {ty}; got {:?}", types(&got)));
        let done = ev["type"] == ty;
        got.push(ev);
        if done {
            return got;
        }
    }
}

fn types(evs: &[Value]) -> Vec<String> {
    evs.iter()
        .map(|e| e["type"].as_str().unwrap_or("?").to_string())
        .collect()
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

fn pcmu_session() -> Value {
    json!({"type": "session.update", "session": {
        "type": "realtime", "model": "gpt-realtime", "output_modalities": ["audio"],
        "instructions": "Be brief.",
        "audio": {
            "input": {"format": {"type": "audio/pcmu"},
                      "transcription": {"model": "gpt-4o-mini-transcribe"},
                      "turn_detection": {"type": "server_vad", "silence_duration_ms": 400}},
            "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"}}}})
}

/// µ-law 200 Hz sine at amplitude 8000 (`speech`) or digital silence.
fn mulaw(ms: usize, speech: bool) -> Vec<u8> {
    (0..ms * 8)
        .map(|i| {
            if speech {
                let t = i as f64 / 8000.0;
                let s = (2.0 * std::f64::consts::PI * 200.0 * t).sin() * 8000.0;
                voxbridge_audio::mulaw_encode(s as i16)
            } else {
                voxbridge_audio::MULAW_SILENCE
            }
        })
        .collect()
}

async fn append(ws: &mut Ws, audio: &[u8]) {
    for chunk in audio.chunks(voxbridge_audio::FRAME_BYTES) {
        send(
            ws,
            json!({"type": "input_audio_buffer.append", "audio": B64.encode(chunk)}),
        )
        .await;
    }
}

fn fast_cfg() -> RealtimeSimConfig {
    RealtimeSimConfig {
        first_delta_delay_ms: 20,
        speed: 20.0,
        replies: vec![SimReply::new("Hello there, how can I help?", 1_000)],
        ..RealtimeSimConfig::default()
    }
}

async fn setup(sim: &RealtimeSim) -> Ws {
    let mut ws = connect(sim).await;
    let created = recv(&mut ws, 2_000).await.expect("session.created");
    assert_eq!(created["type"], "session.created");
    send(&mut ws, pcmu_session()).await;
    let upd = until(&mut ws, "session.updated").await;
    assert_eq!(upd.len(), 1, "{:?}", types(&upd));
    ws
}

fn delta_bytes(evs: &[Value], response_id: &str) -> usize {
    evs.iter()
        .filter(|e| e["type"] == "response.output_audio.delta" && e["response_id"] == response_id)
        .map(|e| {
            B64.decode(e["delta"].as_str().unwrap_or(""))
                .map(|b| b.len())
                .unwrap_or(0)
        })
        .sum()
}

#[tokio::test]
async fn session_created_then_updated_pcmu() {
    let sim = RealtimeSim::start(RealtimeSimConfig::default())
        .await
        .expect("start");
    let mut ws = connect(&sim).await;
    let created = recv(&mut ws, 2_000).await.expect("created");
    assert_eq!(created["type"], "session.created");
    assert!(
        created["event_id"]
            .as_str()
            .expect("id")
            .starts_with("event_")
    );
    let s = &created["session"];
    assert_eq!(s["type"], "realtime");
    assert_eq!(s["object"], "realtime.session");
    assert!(s["id"].as_str().expect("id").starts_with("sess_"));
    assert_eq!(s["model"], "gpt-realtime");
    assert_eq!(
        s["audio"]["input"]["format"],
        json!({"type": "audio/pcm", "rate": 24000})
    );
    assert_eq!(s["audio"]["input"]["turn_detection"]["type"], "server_vad");
    assert_eq!(s["audio"]["output"]["voice"], "alloy");

    send(&mut ws, pcmu_session()).await;
    let upd = recv(&mut ws, 2_000).await.expect("updated");
    assert_eq!(upd["type"], "session.updated", "{upd}");
    let s = &upd["session"];
    assert_eq!(s["audio"]["input"]["format"], json!({"type": "audio/pcmu"}));
    assert_eq!(
        s["audio"]["output"]["format"],
        json!({"type": "audio/pcmu"})
    );
    assert_eq!(s["audio"]["output"]["voice"], "marin");
    assert_eq!(s["instructions"], "Be brief.");
    // turn_detection filled with defaults
    let td = &s["audio"]["input"]["turn_detection"];
    assert_eq!(td["silence_duration_ms"], 400);
    assert_eq!(td["prefix_padding_ms"], 300);
    assert_eq!(td["interrupt_response"], true);
    assert_eq!(sim.connections()[0].model.as_deref(), Some("gpt-realtime"));
    assert_eq!(sim.events_of_type("session.update").len(), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn session_update_errors() {
    let sim = RealtimeSim::start(RealtimeSimConfig::default())
        .await
        .expect("start");
    let mut ws = connect(&sim).await;
    recv(&mut ws, 2_000).await.expect("created");
    // missing session.type
    send(
        &mut ws,
        json!({"type": "session.update", "event_id": "c1", "session": {"instructions": "x"}}),
    )
    .await;
    let e = recv(&mut ws, 2_000).await.expect("error");
    assert_eq!(e["type"], "error");
    assert_eq!(e["error"]["code"], "missing_required_parameter");
    assert_eq!(e["error"]["param"], "session.type");
    assert_eq!(e["error"]["event_id"], "c1");
    // beta-style string format
    send(
        &mut ws,
        json!({"type": "session.update", "session": {"type": "realtime",
        "audio": {"input": {"format": "g711_ulaw"}}}}),
    )
    .await;
    let e = recv(&mut ws, 2_000).await.expect("error");
    assert_eq!(e["error"]["code"], "invalid_type", "{e}");
    // unknown format type
    send(
        &mut ws,
        json!({"type": "session.update", "session": {"type": "realtime",
        "audio": {"output": {"format": {"type": "audio/g711_ulaw"}}}}}),
    )
    .await;
    let e = recv(&mut ws, 2_000).await.expect("error");
    assert_eq!(e["error"]["code"], "invalid_value", "{e}");
    // pcm without rate
    send(
        &mut ws,
        json!({"type": "session.update", "session": {"type": "realtime",
        "audio": {"output": {"format": {"type": "audio/pcm"}}}}}),
    )
    .await;
    let e = recv(&mut ws, 2_000).await.expect("error");
    assert_eq!(
        e["error"]["param"], "session.audio.output.format.rate",
        "{e}"
    );
    // beta key
    send(
        &mut ws,
        json!({"type": "session.update", "session": {"type": "realtime",
        "modalities": ["audio"]}}),
    )
    .await;
    let e = recv(&mut ws, 2_000).await.expect("error");
    assert_eq!(e["error"]["code"], "unknown_parameter", "{e}");
    // still usable
    send(&mut ws, pcmu_session()).await;
    let u = recv(&mut ws, 2_000).await.expect("updated");
    assert_eq!(u["type"], "session.updated");
    sim.shutdown().await;
}

#[tokio::test]
async fn beta_header_gets_error_and_close_4000() {
    let sim = RealtimeSim::start(RealtimeSimConfig::default())
        .await
        .expect("start");
    let mut ws = connect_with(
        &sim,
        "?model=gpt-realtime",
        &[("OpenAI-Beta", "realtime=v1")],
    )
    .await;
    let e = recv(&mut ws, 2_000).await.expect("error");
    assert_eq!(e["type"], "error");
    assert_eq!(e["error"]["code"], "beta_api_shape_disabled");
    let mut code = None;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
        if let Ok(Message::Close(Some(f))) = m {
            code = Some(u16::from(f.code));
            break;
        }
    }
    assert_eq!(code, Some(4000));
    sim.shutdown().await;
}

#[tokio::test]
async fn upgrade_rejections() {
    let sim = RealtimeSim::start(RealtimeSimConfig {
        api_key: Some("sk-good".into()),
        ..RealtimeSimConfig::default()
    })
    .await
    .expect("start");
    let url = format!("{}?model=m", sim.ws_url());
    let r = tokio_tungstenite::connect_async(url.as_str()).await;
    match r {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 401)
        }
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    let mut req = url.as_str().into_client_request().expect("req");
    req.headers_mut().insert(
        "authorization",
        "Bearer sk-bad-key-xyz".parse().expect("hv"),
    );
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 401)
        }
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    let bad_path = sim.ws_url().replace("/v1/realtime", "/v1/other");
    let mut req = bad_path.as_str().into_client_request().expect("req");
    req.headers_mut()
        .insert("authorization", "Bearer sk-good".parse().expect("hv"));
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 404)
        }
        other => panic!("expected 404, got {:?}", other.map(|_| ())),
    }
    let mut ws = connect_with(
        &sim,
        "?model=gpt-realtime-2.1",
        &[("Authorization", "Bearer sk-good")],
    )
    .await;
    let c = recv(&mut ws, 2_000).await.expect("created");
    assert_eq!(c["session"]["model"], "gpt-realtime-2.1");
    assert_eq!(sim.connections().len(), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn speech_turn_then_response_and_truncate() {
    let dir = std::env::temp_dir().join(format!("rtsim-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let rec = dir.join("speech_turn.jsonl");
    let _ = std::fs::remove_file(&rec);
    let sim = RealtimeSim::start(RealtimeSimConfig {
        record_path: Some(rec.clone()),
        caller_transcripts: vec!["I need help.".into()],
        ..fast_cfg()
    })
    .await
    .expect("start");
    let mut ws = setup(&sim).await;
    let mut notices = sim.notices();

    append(&mut ws, &mulaw(300, false)).await;
    append(&mut ws, &mulaw(800, true)).await;
    append(&mut ws, &mulaw(600, false)).await;

    let evs = until(&mut ws, "response.done").await;
    let t = types(&evs);
    let pos = |name: &str| {
        t.iter()
            .position(|x| x == name)
            .unwrap_or_else(|| panic!("{name} missing in {t:?}"))
    };
    assert!(pos("input_audio_buffer.speech_started") < pos("input_audio_buffer.speech_stopped"));
    assert!(pos("input_audio_buffer.speech_stopped") < pos("input_audio_buffer.committed"));
    assert!(
        pos("input_audio_buffer.committed")
            < pos("conversation.item.input_audio_transcription.completed")
    );
    assert!(pos("conversation.item.input_audio_transcription.completed") < pos("response.created"));
    assert!(pos("response.created") < pos("response.output_item.added"));
    assert!(pos("response.content_part.added") < pos("response.output_audio.delta"));
    assert!(pos("response.output_audio.done") < pos("response.output_audio_transcript.done"));
    assert!(pos("response.output_item.done") < pos("response.done"));

    let started = &evs[pos("input_audio_buffer.speech_started")];
    // speech began at 300 ms; minus 300 ms prefix padding
    assert_eq!(started["audio_start_ms"], 0);
    let stopped = &evs[pos("input_audio_buffer.speech_stopped")];
    assert_eq!(stopped["audio_end_ms"], 1_100 + 400);
    let user_item = started["item_id"].as_str().expect("item").to_string();
    assert_eq!(stopped["item_id"], user_item.as_str());
    assert_eq!(
        evs[pos("input_audio_buffer.committed")]["item_id"],
        user_item.as_str()
    );
    let tr = &evs[pos("conversation.item.input_audio_transcription.completed")];
    assert_eq!(tr["transcript"], "I need help.");
    assert_eq!(tr["usage"]["type"], "duration");

    let done = &evs[pos("response.done")];
    let resp = &done["response"];
    assert_eq!(resp["status"], "completed");
    let rid = resp["id"].as_str().expect("rid");
    assert!(rid.starts_with("resp_"));
    assert_eq!(delta_bytes(&evs, rid), 1_000 * 8);
    let u = &resp["usage"];
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["input_tokens"].as_u64().unwrap_or(0) + u["output_tokens"].as_u64().unwrap_or(0))
    );
    assert!(u["input_token_details"]["cached_tokens"].as_u64() <= u["input_tokens"].as_u64());
    assert_eq!(u["output_token_details"]["audio_tokens"], 20);
    let transcript: String = evs
        .iter()
        .filter(|e| e["type"] == "response.output_audio_transcript.delta")
        .map(|e| e["delta"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(transcript, "Hello there, how can I help?");
    let item_id = resp["output"][0]["id"].as_str().expect("item").to_string();
    assert_eq!(resp["output"][0]["content"][0]["type"], "output_audio");

    // truncate past what was sent -> rejected with the real message
    send(
        &mut ws,
        json!({"type": "conversation.item.truncate", "event_id": "tr1",
        "item_id": item_id, "content_index": 0, "audio_end_ms": 1_500}),
    )
    .await;
    let e = recv(&mut ws, 2_000).await.expect("error");
    assert_eq!(e["type"], "error");
    assert_eq!(
        e["error"],
        json!({"type": "invalid_request_error", "code": "invalid_value",
            "message": "Audio content of 1000ms is already shorter than 1500ms",
            "param": "audio_end_ms", "event_id": "tr1"})
    );
    // within -> truncated
    send(
        &mut ws,
        json!({"type": "conversation.item.truncate",
        "item_id": item_id, "content_index": 0, "audio_end_ms": 640}),
    )
    .await;
    let e = recv(&mut ws, 2_000).await.expect("truncated");
    assert_eq!(e["type"], "conversation.item.truncated", "{e}");
    assert_eq!(e["audio_end_ms"], 640);
    // the item is now 640 ms long
    send(
        &mut ws,
        json!({"type": "conversation.item.truncate",
        "item_id": item_id, "content_index": 0, "audio_end_ms": 700}),
    )
    .await;
    let e = recv(&mut ws, 2_000).await.expect("error");
    assert_eq!(
        e["error"]["message"],
        "Audio content of 640ms is already shorter than 700ms"
    );
    // a user item cannot be truncated; unknown items are not found
    send(
        &mut ws,
        json!({"type": "conversation.item.truncate",
        "item_id": user_item, "content_index": 0, "audio_end_ms": 0}),
    )
    .await;
    let e = recv(&mut ws, 2_000).await.expect("error");
    assert_eq!(
        e["error"]["message"],
        "Only model output audio messages can be truncated"
    );
    send(
        &mut ws,
        json!({"type": "conversation.item.truncate",
        "item_id": "item_nope", "content_index": 0, "audio_end_ms": 0}),
    )
    .await;
    let e = recv(&mut ws, 2_000).await.expect("error");
    assert_eq!(e["error"]["code"], "item_not_found");

    let mut accepted = 0;
    let mut rejected = 0;
    while let Ok(n) = notices.try_recv() {
        match n {
            SimNotice::TruncateAccepted { audio_end_ms, .. } => {
                assert_eq!(audio_end_ms, 640);
                accepted += 1;
            }
            SimNotice::TruncateRejected { .. } => rejected += 1,
            _ => {}
        }
    }
    assert_eq!((accepted, rejected), (1, 4));

    ws.close(None).await.expect("close");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let conns = sim.connections();
    assert!(conns[0].closed_at.is_some());
    assert!(
        conns[0]
            .close_reason
            .as_deref()
            .is_some_and(|r| r.starts_with("client closed")),
        "{:?}",
        conns[0].close_reason
    );
    let n_events = sim.events().len();
    sim.shutdown().await;
    let lines = std::fs::read_to_string(&rec).expect("record");
    let recs: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("jsonl"))
        .collect();
    assert_eq!(recs.len(), n_events);
    assert_eq!(recs[0]["conn"], 0);
    assert_eq!(recs[0]["event"]["type"], "session.update");
    assert!(recs[0]["t_ms"].is_u64());
    let _ = std::fs::remove_file(&rec);
}

#[tokio::test]
async fn pcm_output_format_sizes_and_forced_format() {
    let sim = RealtimeSim::start(RealtimeSimConfig {
        faults: voxbridge_sim::realtime::SimFaults {
            force_output_format: Some(json!({"type": "audio/pcm", "rate": 24000})),
            ..Default::default()
        },
        ..fast_cfg()
    })
    .await
    .expect("start");
    let mut ws = connect(&sim).await;
    recv(&mut ws, 2_000).await.expect("created");
    send(&mut ws, pcmu_session()).await;
    let u = recv(&mut ws, 2_000).await.expect("updated");
    assert_eq!(
        u["session"]["audio"]["output"]["format"],
        json!({"type": "audio/pcm", "rate": 24000})
    );
    send(&mut ws, json!({"type": "response.create"})).await;
    let evs = until(&mut ws, "response.done").await;
    let rid = evs[0]["response"]["id"].as_str().expect("rid").to_string();
    assert_eq!(delta_bytes(&evs, &rid), 1_000 * 48);
    sim.shutdown().await;
}

#[tokio::test]
async fn response_cancel_mid_response() {
    let sim = RealtimeSim::start(RealtimeSimConfig {
        speed: 2.0,
        replies: vec![SimReply::new("A long answer that goes on and on.", 4_000)],
        ..fast_cfg()
    })
    .await
    .expect("start");
    let mut ws = setup(&sim).await;
    let mut notices = sim.notices();
    send(
        &mut ws,
        json!({"type": "response.create", "response": {"instructions": "Say hi."}}),
    )
    .await;
    let evs = until(&mut ws, "response.output_audio.delta").await;
    let rid = evs[0]["response"]["id"].as_str().expect("rid").to_string();
    // a second response.create while active is refused
    send(&mut ws, json!({"type": "response.create"})).await;
    send(&mut ws, json!({"type": "response.cancel"})).await;
    let evs = until(&mut ws, "response.done").await;
    let err = evs
        .iter()
        .find(|e| e["type"] == "error")
        .expect("active-response error");
    assert_eq!(
        err["error"]["code"],
        "conversation_already_has_active_response"
    );
    let done = evs.last().expect("done");
    assert_eq!(done["response"]["id"], rid.as_str());
    assert_eq!(done["response"]["status"], "cancelled");
    assert_eq!(
        done["response"]["status_details"],
        json!({"type": "cancelled", "reason": "client_cancelled"})
    );
    // nothing more for that response
    while let Some(ev) = recv(&mut ws, 400).await {
        assert_ne!(ev["type"], "response.output_audio.delta", "late delta {ev}");
    }
    send(&mut ws, json!({"type": "response.cancel"})).await;
    let e = recv(&mut ws, 2_000).await.expect("error");
    assert_eq!(e["error"]["code"], "response_cancel_not_active");
    let mut cancelled = false;
    while let Ok(n) = notices.try_recv() {
        if let SimNotice::ResponseCancelled { response_id, .. } = n {
            assert_eq!(response_id, rid);
            cancelled = true;
        }
    }
    assert!(cancelled);
    sim.shutdown().await;
}

#[tokio::test]
async fn speech_during_response_interrupts_it() {
    let sim = RealtimeSim::start(RealtimeSimConfig {
        speed: 1.0,
        replies: vec![SimReply::new("A long answer.", 5_000)],
        ..fast_cfg()
    })
    .await
    .expect("start");
    let mut ws = setup(&sim).await;
    send(&mut ws, json!({"type": "response.create"})).await;
    let evs = until(&mut ws, "response.output_audio.delta").await;
    let rid = evs[0]["response"]["id"].as_str().expect("rid").to_string();
    append(&mut ws, &mulaw(200, true)).await;
    let evs = until(&mut ws, "response.done").await;
    let t = types(&evs);
    assert!(
        t.contains(&"input_audio_buffer.speech_started".to_string()),
        "{t:?}"
    );
    let done = evs.last().expect("done");
    assert_eq!(done["response"]["id"], rid.as_str());
    assert_eq!(done["response"]["status"], "cancelled");
    assert_eq!(
        done["response"]["status_details"]["reason"],
        "turn_detected"
    );
    let out = &done["response"]["output"][0];
    assert_eq!(out["status"], "incomplete");
    while let Some(ev) = recv(&mut ws, 300).await {
        assert!(
            !(ev["type"] == "response.output_audio.delta" && ev["response_id"] == rid.as_str()),
            "late delta"
        );
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn manual_turns_and_item_create() {
    let sim = RealtimeSim::start(fast_cfg()).await.expect("start");
    let mut ws = setup(&sim).await;
    send(
        &mut ws,
        json!({"type": "session.update", "session": {"type": "realtime",
        "audio": {"input": {"turn_detection": null}}}}),
    )
    .await;
    let u = recv(&mut ws, 2_000).await.expect("updated");
    assert_eq!(
        u["session"]["audio"]["input"]["turn_detection"],
        Value::Null
    );
    // speech does not trigger anything without VAD
    append(&mut ws, &mulaw(40, true)).await;
    send(&mut ws, json!({"type": "input_audio_buffer.commit"})).await;
    let e = recv(&mut ws, 2_000).await.expect("error");
    assert_eq!(e["error"]["code"], "input_audio_buffer_commit_empty", "{e}");
    append(&mut ws, &mulaw(400, true)).await;
    send(&mut ws, json!({"type": "input_audio_buffer.commit"})).await;
    let evs = until(
        &mut ws,
        "conversation.item.input_audio_transcription.completed",
    )
    .await;
    assert_eq!(
        evs[0]["type"],
        "input_audio_buffer.committed",
        "{:?}",
        types(&evs)
    );
    send(
        &mut ws,
        json!({"type": "conversation.item.create", "item": {"type": "message",
        "role": "user", "content": [{"type": "input_text", "text": "Hello"}]}}),
    )
    .await;
    let a = recv(&mut ws, 2_000).await.expect("added");
    assert_eq!(a["type"], "conversation.item.added");
    assert!(a["item"]["id"].as_str().expect("id").starts_with("item_"));
    let d = recv(&mut ws, 2_000).await.expect("done");
    assert_eq!(d["type"], "conversation.item.done");
    // A function_call_output must name a function call of the conversation.
    send(
        &mut ws,
        json!({"type": "conversation.item.create", "item": {
        "type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": "{}"}}),
    )
    .await;
    let a = recv(&mut ws, 2_000).await.expect("added");
    assert_eq!(a["item"]["type"], "function_call");
    recv(&mut ws, 2_000).await.expect("done");
    send(
        &mut ws,
        json!({"type": "conversation.item.create", "item": {
        "type": "function_call_output", "call_id": "call_1", "output": "{\"ok\":true}"}}),
    )
    .await;
    let a = recv(&mut ws, 2_000).await.expect("added");
    assert_eq!(a["item"]["type"], "function_call_output");
    recv(&mut ws, 2_000).await.expect("done");
    send(&mut ws, json!({"type": "input_audio_buffer.clear"})).await;
    let c = recv(&mut ws, 2_000).await.expect("cleared");
    assert_eq!(c["type"], "input_audio_buffer.cleared");
    sim.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_error_events_and_socket_stays_open() {
    let sim = RealtimeSim::start(RealtimeSimConfig::default())
        .await
        .expect("start");
    let mut ws = connect(&sim).await;
    recv(&mut ws, 2_000).await.expect("created");
    ws.send(Message::text("{not json")).await.expect("send");
    let e = recv(&mut ws, 2_000).await.expect("error");
    assert_eq!(e["error"]["code"], "invalid_json");
    send(
        &mut ws,
        json!({"type": "response.audio.delta", "event_id": "x1"}),
    )
    .await;
    let e = recv(&mut ws, 2_000).await.expect("error");
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert_eq!(e["error"]["code"], "invalid_value");
    assert_eq!(e["error"]["event_id"], "x1");
    assert!(
        e["error"]["message"]
            .as_str()
            .expect("msg")
            .starts_with("Invalid value: 'response.audio.delta'. Supported values are: ")
    );
    ws.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send");
    let e = recv(&mut ws, 2_000).await.expect("error");
    assert_eq!(e["type"], "error");
    send(
        &mut ws,
        json!({"type": "input_audio_buffer.append", "audio": "***"}),
    )
    .await;
    let e = recv(&mut ws, 2_000).await.expect("error");
    assert_eq!(e["error"]["code"], "invalid_value");
    send(
        &mut ws,
        json!({"type": "input_audio_buffer.clear", "foo": 1}),
    )
    .await;
    let e = recv(&mut ws, 2_000).await.expect("error");
    assert_eq!(e["error"]["code"], "unknown_parameter");
    send(&mut ws, json!([1, 2])).await;
    let e = recv(&mut ws, 2_000).await.expect("error");
    assert_eq!(e["type"], "error");
    // still alive
    send(&mut ws, pcmu_session()).await;
    let u = recv(&mut ws, 2_000).await.expect("updated");
    assert_eq!(u["type"], "session.updated");
    assert!(sim.connections()[0].closed_at.is_none());
    sim.shutdown().await;
}

#[tokio::test]
async fn faults_close_after_and_error_after() {
    let sim = RealtimeSim::start(RealtimeSimConfig {
        faults: voxbridge_sim::realtime::SimFaults {
            close_after_ms: Some(200),
            ..Default::default()
        },
        ..RealtimeSimConfig::default()
    })
    .await
    .expect("start");
    let mut ws = connect(&sim).await;
    let mut code = None;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
        if let Ok(Message::Close(Some(f))) = m {
            code = Some(u16::from(f.code));
            break;
        }
    }
    assert_eq!(code, Some(1011));
    sim.shutdown().await;

    let sim = RealtimeSim::start(RealtimeSimConfig {
        faults: voxbridge_sim::realtime::SimFaults {
            error_after_ms: Some(100),
            ..Default::default()
        },
        ..RealtimeSimConfig::default()
    })
    .await
    .expect("start");
    let mut ws = connect(&sim).await;
    recv(&mut ws, 2_000).await.expect("created");
    let e = recv(&mut ws, 2_000).await.expect("error");
    assert_eq!(e["error"]["type"], "server_error");
    assert!(recv(&mut ws, 2_000).await.is_none());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        sim.connections()[0].close_reason.as_deref(),
        Some("fault: error_after_ms")
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn many_connections_at_once() {
    let sim = RealtimeSim::start(RealtimeSimConfig {
        speed: 0.0,
        first_delta_delay_ms: 0,
        ..RealtimeSimConfig::default()
    })
    .await
    .expect("start");
    let url = sim.ws_url();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let url = format!("{url}?model=gpt-realtime");
        tasks.spawn(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(url)
                .await
                .expect("connect");
            recv(&mut ws, 2_000).await.expect("created");
            send(&mut ws, pcmu_session()).await;
            send(&mut ws, json!({"type": "response.create"})).await;
            let evs = until(&mut ws, "response.done").await;
            let rid = evs
                .iter()
                .find(|e| e["type"] == "response.created")
                .and_then(|e| e["response"]["id"].as_str())
                .expect("rid")
                .to_string();
            assert_eq!(delta_bytes(&evs, &rid), 3_000 * 8);
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("task");
    }
    assert_eq!(sim.connections().len(), 20);
    sim.shutdown().await;
}
