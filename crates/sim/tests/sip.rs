//! The SIP connector emulator over real sockets: signed webhooks (checked
//! against the openai and standardwebhooks packages when available), the
//! Calls REST API, the sideband and the caller script.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::{Recv, Ws, check_server_events_with_openai, connect, of_type, recv, recv_any, send};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use voxbridge_sim::realtime::{RealtimeSimConfig, SimReply};
use voxbridge_sim::sip::{
    PlaceCall, SipCallState, SipCallerScript, SipConnector, SipConnectorConfig, WebhookKind,
};

const KEY: &str = "sk-sip-test";

/// What the webhook receiver got: (headers, body).
type Got = Arc<Mutex<Vec<(Vec<(String, String)>, String)>>>;

/// A stand-in for voxbridge's `/openai/webhook`: records every delivery and,
/// when `accept` is set, accepts the call with that body before answering.
#[derive(Clone, Default)]
struct Hook {
    got: Got,
    accept: Arc<Mutex<Option<(String, Value)>>>,
}

async fn hook(State(h): State<Hook>, headers: HeaderMap, body: String) -> StatusCode {
    let hs = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    h.got.lock().expect("lock").push((hs, body.clone()));
    let accept = h.accept.lock().expect("lock").clone();
    if let Some((api_base, session)) = accept {
        let ev: Value = serde_json::from_str(&body).expect("json");
        let call_id = ev["data"]["call_id"].as_str().expect("call_id");
        let r = reqwest::Client::new()
            .post(format!("{api_base}/realtime/calls/{call_id}/accept"))
            .bearer_auth(KEY)
            .json(&session)
            .send()
            .await
            .expect("accept");
        assert_eq!(
            r.status().as_u16(),
            200,
            "{}",
            r.text().await.unwrap_or_default()
        );
    }
    StatusCode::OK
}

async fn start_hook(h: Hook) -> String {
    let app = axum::Router::new()
        .route("/openai/webhook", axum::routing::post(hook))
        .with_state(h);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    format!("http://{addr}/openai/webhook")
}

fn model() -> RealtimeSimConfig {
    RealtimeSimConfig {
        api_key: Some(KEY.into()),
        first_delta_delay_ms: 10,
        speed: 20.0,
        replies: vec![
            SimReply::new("Hi, this is Ava, an AI assistant. How can I help?", 1_200),
            SimReply::new("I can cancel that for you.", 800),
            SimReply::new("It is cancelled. Goodbye!", 600),
        ],
        ..RealtimeSimConfig::default()
    }
    .with_tool_call(1, "cancel_order", json!({"order": "A-17"}))
}

async fn connector(model: RealtimeSimConfig) -> (SipConnector, Hook) {
    let c = SipConnector::start(SipConnectorConfig {
        realtime: model,
        ..SipConnectorConfig::default()
    })
    .await
    .expect("start");
    let h = Hook::default();
    c.set_webhook_url(start_hook(h.clone()).await);
    (c, h)
}

fn accept_body() -> Value {
    json!({"type": "realtime", "model": "gpt-realtime-2.1", "instructions": "You are Ava.",
        "audio": {"input": {"transcription": {"model": "gpt-4o-mini-transcribe"},
                            "turn_detection": {"type": "server_vad", "create_response": true}},
                  "output": {"voice": "marin"}},
        "tools": [{"type": "function", "name": "cancel_order", "description": "Cancel",
                   "parameters": {"type": "object", "properties": {"order": {"type": "string"}}}}]})
}

async fn post(
    c: &SipConnector,
    call_id: &str,
    action: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut rb = reqwest::Client::new().post(format!(
        "{}/realtime/calls/{call_id}/{action}",
        c.api_base()
    ));
    if let Some(k) = key {
        rb = rb.bearer_auth(k);
    }
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.expect("post");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn header<'a>(hs: &'a [(String, String)], name: &str) -> &'a str {
    hs.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} header"))
}

fn hmac_b64(secret: &str, id: &str, ts: &str, body: &str) -> String {
    let key = B64
        .decode(secret.strip_prefix("whsec_").expect("whsec_"))
        .expect("base64 secret");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("key");
    mac.update(format!("{id}.{ts}.{body}").as_bytes());
    B64.encode(mac.finalize().into_bytes())
}

/// Whether the delivery's signature is right for its own headers and body.
fn signature_ok(secret: &str, hs: &[(String, String)], body: &str) -> bool {
    let want = hmac_b64(
        secret,
        header(hs, "webhook-id"),
        header(hs, "webhook-timestamp"),
        body,
    );
    header(hs, "webhook-signature")
        .split(' ')
        .any(|s| s.strip_prefix("v1,") == Some(want.as_str()))
}

const PY_WEBHOOKS: &str = r#"
import json, sys
from openai import OpenAI
from openai.types.webhooks import RealtimeCallIncomingWebhookEvent
from standardwebhooks.webhooks import Webhook

secret, path = sys.argv[1], sys.argv[2]
deliveries = json.load(open(path))
client = OpenAI(api_key="sk-unused", webhook_secret=secret)
std = Webhook(secret)
verdicts = []
for d in deliveries:
    v = []
    try:
        client.webhooks.verify_signature(d["body"], d["headers"])
        v.append("ok")
    except Exception:
        v.append("bad")
    try:
        std.verify(d["body"], d["headers"])
        v.append("ok")
    except Exception:
        v.append("bad")
    verdicts.append("/".join(v))
first = deliveries[0]
ev = RealtimeCallIncomingWebhookEvent.model_validate_json(first["body"], strict=True)
extra = dict(ev.__pydantic_extra__ or {})
extra.update(ev.data.__pydantic_extra__ or {})
for h in ev.data.sip_headers:
    extra.update(h.__pydantic_extra__ or {})
assert not extra, f"unknown fields: {extra}"
unwrapped = client.webhooks.unwrap(first["body"], first["headers"])
assert type(unwrapped).__name__ == "RealtimeCallIncomingWebhookEvent", type(unwrapped)
print(" ".join(verdicts))
"#;

#[tokio::test]
async fn webhook_is_signed_and_shaped_like_the_openai_event() {
    let (c, h) = connector(model()).await;
    let call_id = c
        .place_call_with(PlaceCall {
            to: "+18005551212".into(),
            from: "+14155550100".into(),
            display_name: Some("Ana".into()),
            extra_headers: vec![("X-Conference".into(), "conf-1".into())],
            script: SipCallerScript::default(),
        })
        .await
        .expect("place");
    assert!(call_id.starts_with("rtc_"), "{call_id}");
    let call = c.call(&call_id).expect("call");
    assert_eq!(call.state, SipCallState::Incoming);
    assert_eq!(call.deliveries.len(), 1);
    assert_eq!(call.deliveries[0].status, Some(200));
    assert!(call.deliveries[0].latency < Duration::from_secs(5));

    let (hs, body) = h.got.lock().expect("lock")[0].clone();
    assert_eq!(body, call.webhook_body);
    assert!(header(&hs, "content-type").starts_with("application/json"));
    assert!(header(&hs, "webhook-id").starts_with("wh_"));
    let ts: i64 = header(&hs, "webhook-timestamp").parse().expect("ts");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("now")
        .as_secs() as i64;
    assert!((now - ts).abs() < 10);
    assert!(signature_ok(c.webhook_secret(), &hs, &body));

    let ev: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(ev["object"], "event");
    assert_eq!(ev["type"], "realtime.call.incoming");
    assert!(ev["id"].as_str().expect("id").starts_with("evt_"));
    assert!(ev["created_at"].is_i64());
    assert_eq!(ev["data"]["call_id"], call_id.as_str());
    let sip: Vec<(String, String)> = ev["data"]["sip_headers"]
        .as_array()
        .expect("sip_headers")
        .iter()
        .map(|h| {
            (
                h["name"].as_str().expect("name").to_string(),
                h["value"].as_str().expect("value").to_string(),
            )
        })
        .collect();
    assert_eq!(sip[0].0, "From");
    assert!(
        sip[0]
            .1
            .starts_with("\"Ana\" <sip:+14155550100@pstn.twilio.com>;tag="),
        "{}",
        sip[0].1
    );
    assert_eq!(
        sip[1],
        ("To".into(), "<sip:+18005551212@sip.api.openai.com>".into())
    );
    assert_eq!(sip[2].0, "Call-ID");
    assert_eq!(sip[3], ("X-Conference".into(), "conf-1".into()));

    // Redeliveries and attacks.
    for kind in [
        WebhookKind::Redelivery,
        WebhookKind::Replay,
        WebhookKind::Tampered,
        WebhookKind::Expired,
        WebhookKind::WrongSecret,
    ] {
        let d = c.deliver_webhook(&call_id, kind).await.expect("deliver");
        assert_eq!(d.status, Some(200), "{kind:?}");
    }
    let got = h.got.lock().expect("lock").clone();
    assert_eq!(got.len(), 6);
    let id = header(&got[0].0, "webhook-id");
    for (hs, _) in &got {
        assert_eq!(
            header(hs, "webhook-id"),
            id,
            "same webhook-id on every delivery"
        );
    }
    let secret = c.webhook_secret();
    // Redelivery: same body, valid signature.
    assert_eq!(got[1].1, body);
    assert!(signature_ok(secret, &got[1].0, &got[1].1));
    // Replay: byte-identical headers.
    assert_eq!(got[2].0, got[0].0);
    assert_eq!(got[2].1, body);
    // Tampered: another call_id, signature of the original body.
    assert_ne!(got[3].1, body);
    assert!(!got[3].1.contains(&call_id));
    assert!(!signature_ok(secret, &got[3].0, &got[3].1));
    // Expired: correctly signed, 10 minutes old.
    assert!(signature_ok(secret, &got[4].0, &got[4].1));
    let old: i64 = header(&got[4].0, "webhook-timestamp").parse().expect("ts");
    assert!(now - old >= 590, "{}", now - old);
    // Wrong secret.
    assert!(!signature_ok(secret, &got[5].0, &got[5].1));
    assert_eq!(c.call(&call_id).expect("call").deliveries.len(), 6);

    // The official packages agree.
    let deliveries: Vec<Value> = got
        .iter()
        .map(|(hs, body)| {
            let headers: serde_json::Map<String, Value> = hs
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            json!({"headers": headers, "body": body})
        })
        .collect();
    let path = std::env::temp_dir().join(format!(
        "voxbridge-sim-webhooks-{}.json",
        std::process::id()
    ));
    std::fs::write(&path, Value::Array(deliveries).to_string()).expect("write");
    let verdicts = common::run_python(PY_WEBHOOKS, &[secret, path.to_str().expect("path")]);
    let _ = std::fs::remove_file(&path);
    if let Some(v) = verdicts {
        assert_eq!(v.trim(), "ok/ok ok/ok ok/ok bad/bad bad/bad bad/bad");
    }
    c.shutdown().await;
}

#[tokio::test]
async fn calls_api_auth_validation_and_sideband_gate() {
    let (c, _h) = connector(model()).await;
    let call_id = c
        .place_call("+18005551212", "+14155550100", SipCallerScript::default())
        .await
        .expect("place");

    // Auth.
    let (s, e) = post(&c, &call_id, "accept", None, Some(accept_body())).await;
    assert_eq!(s, 401, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("didn't provide an API key")
    );
    let (s, e) = post(
        &c,
        &call_id,
        "accept",
        Some("sk-wrong-key"),
        Some(accept_body()),
    )
    .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    assert!(matches!(
        connect(&c.sideband_url(&call_id), Some("sk-wrong-key")).await,
        Err(401)
    ));

    // Unknown call, unknown action.
    let (s, e) = post(&c, "rtc_nope", "accept", Some(KEY), Some(accept_body())).await;
    assert_eq!(s, 404);
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert!(
        e["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("rtc_nope")
    );
    assert_eq!(c.unknown_call_requests().len(), 1);
    let (s, _) = post(&c, &call_id, "answer", Some(KEY), None).await;
    assert_eq!(s, 404);
    assert!(matches!(
        connect(&c.sideband_url("rtc_nope"), Some(KEY)).await,
        Err(404)
    ));

    // Not yet accepted: no sideband.
    assert!(matches!(
        connect(&c.sideband_url(&call_id), Some(KEY)).await,
        Err(400)
    ));

    // Forbidden and invalid session fields.
    let cases = [
        (
            "/audio/input/format",
            json!({"type": "audio/pcmu"}),
            "session.audio.input.format",
        ),
        (
            "/audio/output/format",
            json!({"type": "audio/pcmu"}),
            "session.audio.output.format",
        ),
        (
            "/audio/input/turn_detection/threshold",
            json!(0.6),
            "session.audio.input.turn_detection.threshold",
        ),
        (
            "/audio/input/turn_detection/prefix_padding_ms",
            json!(300),
            "session.audio.input.turn_detection.prefix_padding_ms",
        ),
        (
            "/audio/input/turn_detection/silence_duration_ms",
            json!(500),
            "session.audio.input.turn_detection.silence_duration_ms",
        ),
    ];
    for (ptr, v, param) in cases {
        let mut body = accept_body();
        let (parent, leaf) = ptr.rsplit_once('/').expect("ptr");
        body.pointer_mut(parent)
            .expect("parent")
            .as_object_mut()
            .expect("object")
            .insert(leaf.to_string(), v);
        let (s, e) = post(&c, &call_id, "accept", Some(KEY), Some(body)).await;
        assert_eq!(s, 400, "{param}: {e}");
        assert_eq!(e["error"]["code"], "unknown_parameter");
        assert_eq!(e["error"]["param"], param);
        assert_eq!(
            e["error"]["message"],
            format!("Unknown parameter: '{param}'.")
        );
    }
    let (s, e) = post(
        &c,
        &call_id,
        "accept",
        Some(KEY),
        Some(json!({"instructions": "x"})),
    )
    .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (400, Some("missing_required_parameter"))
    );
    assert_eq!(e["error"]["param"], "session.type");
    let (s, e) = post(
        &c,
        &call_id,
        "accept",
        Some(KEY),
        Some(json!({"type": "realtime", "voice": "x"})),
    )
    .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (400, Some("unknown_parameter"))
    );
    let r = reqwest::Client::new()
        .post(format!("{}/realtime/calls/{call_id}/accept", c.api_base()))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(
        c.call(&call_id).expect("call").state,
        SipCallState::Incoming
    );

    // Accepted.
    let (s, _) = post(&c, &call_id, "accept", Some(KEY), Some(accept_body())).await;
    assert_eq!(s, 200);
    let call = c.call(&call_id).expect("call");
    assert_eq!(call.state, SipCallState::Accepted);
    assert_eq!(call.accept_body, Some(accept_body()));
    assert!(call.accepted_after.is_some());
    let session = call.session.expect("session");
    assert_eq!(session["audio"]["input"]["format"]["type"], "audio/pcmu");
    assert_eq!(session["audio"]["output"]["voice"], "marin");
    assert_eq!(session["model"], "gpt-realtime-2.1");
    // 7 refused accepts + the good one (the bad-JSON one is refused before it is recorded).
    assert_eq!(
        call.requests
            .iter()
            .filter(|r| r.action == "accept")
            .count(),
        8
    );
    let (s, _) = post(&c, &call_id, "accept", Some(KEY), Some(accept_body())).await;
    assert_eq!(s, 400, "a second accept is refused");
    let (s, _) = post(&c, &call_id, "reject", Some(KEY), None).await;
    assert_eq!(s, 400, "an accepted call cannot be rejected");

    // The sideband opens with the accepted session; no audio on it.
    let mut ws = connect(&c.sideband_url(&call_id), Some(KEY))
        .await
        .expect("sideband");
    let created = recv(&mut ws, 2_000).await.expect("created");
    assert_eq!(created["type"], "session.created");
    assert_eq!(created["session"]["instructions"], "You are Ava.");
    assert_eq!(created["session"]["tools"][0]["name"], "cancel_order");
    send(
        &mut ws,
        json!({"type": "input_audio_buffer.append", "audio": "AAAA"}),
    )
    .await;
    let e = recv(&mut ws, 2_000).await.expect("error");
    assert_eq!(e["type"], "error");
    send(
        &mut ws,
        json!({"type": "session.update", "session": {"type": "realtime",
            "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 0.7}}}}}),
    )
    .await;
    let e = recv(&mut ws, 2_000).await.expect("error");
    assert_eq!(
        e["error"]["param"],
        "session.audio.input.turn_detection.threshold"
    );
    send(&mut ws, json!({"type": "session.update", "session": {"type": "realtime", "instructions": "Be brief."}})).await;
    let u = recv(&mut ws, 2_000).await.expect("updated");
    assert_eq!(u["type"], "session.updated");
    let call = c
        .wait_for(&call_id, Duration::from_secs(2), |c| {
            c.sideband_client_events.len() == 3
        })
        .await
        .expect("client events recorded");
    assert_eq!(call.sideband_connections, 1);
    assert_eq!(call.sideband_open, 1);
    assert_eq!(
        c.sim()
            .connections()
            .last()
            .expect("conn")
            .call_id
            .as_deref(),
        Some(call_id.as_str())
    );
    c.shutdown().await;
}

/// Collect server events until the server closes the socket; answers the
/// first function call with an output and `response.create`.
async fn converse(ws: &mut Ws) -> (Vec<Value>, Option<u16>) {
    let mut all = Vec::new();
    let mut answered = false;
    loop {
        match recv_any(ws, 10_000).await {
            Recv::Event(e) => {
                let fc = e["type"] == "response.done"
                    && e["response"]["output"]
                        .as_array()
                        .is_some_and(|o| o.iter().any(|i| i["type"] == "function_call"));
                if fc && !answered {
                    answered = true;
                    let call_id = e["response"]["output"]
                        .as_array()
                        .and_then(|o| o.iter().find(|i| i["type"] == "function_call"))
                        .map(|i| i["call_id"].clone())
                        .expect("call_id");
                    send(
                        ws,
                        json!({"type": "conversation.item.create", "item": {
                            "type": "function_call_output", "call_id": call_id,
                            "output": "{\"cancelled\":true}"}}),
                    )
                    .await;
                    send(ws, json!({"type": "response.create"})).await;
                }
                all.push(e);
            }
            Recv::Closed(f) => return (all, f.map(|f| u16::from(f.code))),
            Recv::Timeout => panic!("no close; got {:?}", common::types(&all)),
        }
    }
}

#[tokio::test]
async fn scripted_call_over_the_sideband_with_tool_call_dtmf_and_hangup() {
    let (c, h) = connector(model()).await;
    *h.accept.lock().expect("lock") = Some((c.api_base(), accept_body()));
    let script = SipCallerScript::default()
        .wait_agent(5_000)
        .speak("I'd like to cancel my order", 300)
        .wait_agent(5_000)
        .dtmf("5")
        .wait(400)
        .hangup();
    let call_id = c
        .place_call("+18005551212", "+14155550100", script)
        .await
        .expect("place");
    let call = c.call(&call_id).expect("call");
    assert_eq!(
        call.state,
        SipCallState::Accepted,
        "accepted inside the webhook"
    );
    let after = call.accepted_after.expect("accepted_after");
    assert!(after < call.deliveries[0].latency + Duration::from_millis(1));
    assert!(after < Duration::from_millis(500), "{after:?}");

    let mut ws = connect(&c.sideband_url(&call_id), Some(KEY))
        .await
        .expect("sideband");
    let created = recv(&mut ws, 2_000).await.expect("created");
    assert_eq!(created["type"], "session.created");
    send(
        &mut ws,
        json!({"type": "response.create", "response": {"instructions": "Greet the caller."}}),
    )
    .await;
    let (evs, close) = converse(&mut ws).await;
    assert_eq!(
        close,
        Some(1000),
        "the server closes the sideband on hang-up"
    );
    let t = common::types(&evs);

    // No audio on the sideband; playback is marked instead.
    assert!(
        of_type(&evs, "response.output_audio.delta").is_empty(),
        "{t:?}"
    );
    let dones = of_type(&evs, "response.done");
    assert_eq!(dones.len(), 3, "{t:?}");
    assert_eq!(of_type(&evs, "output_audio_buffer.started").len(), 3);
    assert_eq!(of_type(&evs, "output_audio_buffer.stopped").len(), 3);
    let first_started = t
        .iter()
        .position(|x| x == "output_audio_buffer.started")
        .expect("started");
    let first_delta = t
        .iter()
        .position(|x| x == "response.output_audio_transcript.delta")
        .expect("delta");
    let first_done = t.iter().position(|x| x == "response.done").expect("done");
    let first_stopped = t
        .iter()
        .position(|x| x == "output_audio_buffer.stopped")
        .expect("stopped");
    assert!(
        first_started < first_delta && first_done < first_stopped,
        "{t:?}"
    );

    // The caller's turn.
    for ty in [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.input_audio_transcription.completed",
    ] {
        assert_eq!(of_type(&evs, ty).len(), 1, "{ty}: {t:?}");
    }
    let tr = of_type(
        &evs,
        "conversation.item.input_audio_transcription.completed",
    )[0];
    assert_eq!(tr["transcript"], "I'd like to cancel my order");

    // The tool call in the reply to the caller, then the follow-up.
    let fc = of_type(&evs, "response.function_call_arguments.done");
    assert_eq!(fc.len(), 1);
    assert_eq!(fc[0]["name"], "cancel_order");
    let calls = c.sim().function_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].sip_call_id.as_deref(), Some(call_id.as_str()));
    let outs = c.sim().tool_outputs();
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0].call_id, calls[0].call_id);

    // DTMF, with the model's exact fields.
    let dtmf = of_type(&evs, "input_audio_buffer.dtmf_event_received");
    assert_eq!(dtmf.len(), 1, "{t:?}");
    let keys: Vec<&String> = dtmf[0].as_object().expect("obj").keys().collect();
    assert_eq!(keys, vec!["event", "received_at", "type"]);
    assert_eq!(dtmf[0]["event"], "5");
    assert!(dtmf[0]["received_at"].is_u64());

    let call = c
        .wait_for(&call_id, Duration::from_secs(2), |c| c.sideband_open == 0)
        .await
        .expect("sideband closed");
    assert_eq!(call.state, SipCallState::Ended);
    assert!(call.script_finished);
    assert!(call.ended_at.is_some());
    let transcript = call.transcript();
    assert_eq!(
        transcript,
        vec![
            (
                "agent",
                "Hi, this is Ava, an AI assistant. How can I help?".to_string()
            ),
            ("caller", "I'd like to cancel my order".to_string()),
            ("agent", "I can cancel that for you.".to_string()),
            ("agent", "It is cancelled. Goodbye!".to_string()),
        ]
    );
    assert_eq!(
        call.client_events_of_type("conversation.item.create").len(),
        1
    );
    assert_eq!(call.client_events_of_type("response.create").len(), 2);
    assert_eq!(call.server_events_of_type("response.done").len(), 3);
    let (s, _) = post(&c, &call_id, "hangup", Some(KEY), None).await;
    assert_eq!(s, 404, "the call is gone");

    check_server_events_with_openai(&evs, "sip-sideband");
    c.shutdown().await;
}

#[tokio::test]
async fn caller_barge_in_clears_the_output_audio_buffer() {
    let (c, _h) = connector(RealtimeSimConfig {
        speed: 1.0,
        ..model()
    })
    .await;
    let call_id = c
        .place_call(
            "+18005551212",
            "+14155550100",
            SipCallerScript::default()
                .wait(600)
                .speak("Stop, please", 200),
        )
        .await
        .expect("place");
    let (s, _) = post(&c, &call_id, "accept", Some(KEY), Some(accept_body())).await;
    assert_eq!(s, 200);
    let mut ws = connect(&c.sideband_url(&call_id), Some(KEY))
        .await
        .expect("sideband");
    recv(&mut ws, 2_000).await.expect("created");
    send(&mut ws, json!({"type": "response.create"})).await;
    let evs = common::until(&mut ws, "response.done").await;
    let t = common::types(&evs);
    let started = t
        .iter()
        .position(|x| x == "input_audio_buffer.speech_started")
        .expect("speech");
    let cleared = t
        .iter()
        .position(|x| x == "output_audio_buffer.cleared")
        .expect("cleared");
    assert!(started < cleared, "{t:?}");
    let done = evs.last().expect("done");
    assert_eq!(done["response"]["status"], "cancelled");
    assert_eq!(
        done["response"]["status_details"]["reason"],
        "turn_detected"
    );
    assert!(of_type(&evs, "output_audio_buffer.stopped").is_empty());
    check_server_events_with_openai(&evs, "sip-barge-in");
    c.shutdown().await;
}

#[tokio::test]
async fn refer_hangup_reject_and_caller_hangup() {
    let (c, _h) = connector(model()).await;
    let place = || c.place_call("+18005551212", "+14155550100", SipCallerScript::default());

    // Refer: validation, then the sideband closes and the call is over.
    let a = place().await.expect("place");
    let (s, _) = post(
        &c,
        &a,
        "refer",
        Some(KEY),
        Some(json!({"target_uri": "tel:+14155550123"})),
    )
    .await;
    assert_eq!(s, 400, "refer before accept");
    assert_eq!(
        post(&c, &a, "accept", Some(KEY), Some(accept_body()))
            .await
            .0,
        200
    );
    let mut ws = connect(&c.sideband_url(&a), Some(KEY))
        .await
        .expect("sideband");
    recv(&mut ws, 2_000).await.expect("created");
    let (s, e) = post(&c, &a, "refer", Some(KEY), Some(json!({}))).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (400, Some("missing_required_parameter"))
    );
    let (s, e) = post(
        &c,
        &a,
        "refer",
        Some(KEY),
        Some(json!({"target_uri": "+14155550123"})),
    )
    .await;
    assert_eq!((s, e["error"]["param"].as_str()), (400, Some("target_uri")));
    let (s, _) = post(
        &c,
        &a,
        "refer",
        Some(KEY),
        Some(json!({"target_uri": "tel:+14155550123"})),
    )
    .await;
    assert_eq!(s, 200);
    match recv_any(&mut ws, 2_000).await {
        Recv::Closed(f) => assert_eq!(f.map(|f| u16::from(f.code)), Some(1000)),
        _ => panic!("sideband not closed on refer"),
    }
    let call = c
        .wait_for(&a, Duration::from_secs(2), |c| c.sideband_open == 0)
        .await
        .expect("closed");
    assert_eq!(call.state, SipCallState::Referred);
    assert_eq!(call.refer_target.as_deref(), Some("tel:+14155550123"));
    assert_eq!(post(&c, &a, "hangup", Some(KEY), None).await.0, 404);
    assert_eq!(
        post(&c, &a, "accept", Some(KEY), Some(accept_body()))
            .await
            .0,
        404
    );
    assert!(matches!(
        connect(&c.sideband_url(&a), Some(KEY)).await,
        Err(404)
    ));

    // Hangup.
    let b = place().await.expect("place");
    assert_eq!(
        post(&c, &b, "accept", Some(KEY), Some(accept_body()))
            .await
            .0,
        200
    );
    let mut ws = connect(&c.sideband_url(&b), Some(KEY))
        .await
        .expect("sideband");
    recv(&mut ws, 2_000).await.expect("created");
    assert_eq!(post(&c, &b, "hangup", Some(KEY), None).await.0, 200);
    assert!(matches!(recv_any(&mut ws, 2_000).await, Recv::Closed(_)));
    assert_eq!(c.call(&b).expect("call").state, SipCallState::HungUp);

    // Reject, with and without a status code.
    let d = place().await.expect("place");
    let (s, e) = post(
        &c,
        &d,
        "reject",
        Some(KEY),
        Some(json!({"status_code": 200})),
    )
    .await;
    assert_eq!(
        (s, e["error"]["param"].as_str()),
        (400, Some("status_code"))
    );
    assert_eq!(
        post(
            &c,
            &d,
            "reject",
            Some(KEY),
            Some(json!({"status_code": 486}))
        )
        .await
        .0,
        200
    );
    let call = c.call(&d).expect("call");
    assert_eq!(
        (call.state, call.reject_status),
        (SipCallState::Rejected, Some(486))
    );
    assert_eq!(
        post(&c, &d, "accept", Some(KEY), Some(accept_body()))
            .await
            .0,
        404
    );
    let e = place().await.expect("place");
    assert_eq!(post(&c, &e, "reject", Some(KEY), None).await.0, 200);
    assert_eq!(c.call(&e).expect("call").reject_status, Some(603));

    // The caller hangs up before the accept: accepting is a 404.
    let f = place().await.expect("place");
    assert!(c.caller_hangup(&f));
    assert!(!c.caller_hangup(&f));
    assert_eq!(c.call(&f).expect("call").state, SipCallState::Ended);
    let (s, body) = post(&c, &f, "accept", Some(KEY), Some(accept_body())).await;
    assert_eq!(s, 404, "{body}");

    let states: Vec<SipCallState> = c.calls().iter().map(|c| c.state).collect();
    assert_eq!(
        states,
        vec![
            SipCallState::Referred,
            SipCallState::HungUp,
            SipCallState::Rejected,
            SipCallState::Rejected,
            SipCallState::Ended
        ]
    );
    c.shutdown().await;
}
