//! The OpenAI SIP connector path end to end: the SIP connector emulator sends
//! signed `realtime.call.incoming` webhooks to `/openai/webhook`, serves the
//! Calls API our server uses (accept / reject / refer / hangup) and the
//! sideband socket the same CallSession logic runs on. Every built-in tool and
//! the profile's HTTP tools (against a local HTTP server), DTMF, the webhook's
//! security and the reject paths.

use crate::helpers::*;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use voxbridge_sim::realtime::{RealtimeSimConfig, SimReply};
use voxbridge_sim::sip::{SipCall, SipCallState, SipCallerScript, SipConnector, WebhookKind};

const TRANSFER_TO: &str = "+14155550177";
const LONG: Duration = Duration::from_secs(30);

const REPLIES: [&str; 4] = [
    "Hello, this is an AI assistant at Test Co. How can I help?",
    "Sure, one moment please.",
    "All set. Is there anything else?",
    "Thank you for calling, goodbye.",
];

/// The model: short replies, and `tool_calls` (response index, tool, arguments).
fn model(tool_calls: &[(usize, &str, Value)]) -> RealtimeSimConfig {
    let mut cfg = RealtimeSimConfig {
        replies: REPLIES.iter().map(|t| SimReply::new(*t, 600)).collect(),
        ..RealtimeSimConfig::default()
    };
    for (n, name, args) in tool_calls {
        cfg = cfg.with_tool_call(*n, *name, args.clone());
    }
    cfg
}

/// What the local HTTP tool server received: (path, `x-test` header, JSON body).
type Hits = Arc<Mutex<Vec<(String, String, Value)>>>;

/// A customer's HTTP endpoint for the HTTP tools: `/orders` answers after 50 ms,
/// `/slow` after 3 s, `/fail` with a 500.
async fn tool_server() -> (String, Hits) {
    use axum::Router;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode, Uri};
    use axum::routing::post;
    async fn hit(
        State(hits): State<Hits>,
        uri: Uri,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> (StatusCode, String) {
        let header = headers
            .get("x-test")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let path = uri.path().to_owned();
        hits.lock()
            .expect("hits")
            .push((path.clone(), header, body.clone()));
        match path.as_str() {
            "/orders" => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let id = body["order_id"].as_str().unwrap_or("?");
                (
                    StatusCode::OK,
                    json!({"order_id": id, "status": "shipped", "eta": "Tuesday"}).to_string(),
                )
            }
            "/slow" => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                (StatusCode::OK, json!({"late": true}).to_string())
            }
            _ => (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": "database down"}).to_string(),
            ),
        }
    }
    let hits: Hits = Arc::default();
    let app = Router::new()
        .route("/{*path}", post(hit))
        .with_state(hits.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (base, hits)
}

/// The agent answering `SIP_AGENT_NUMBER`: every built-in tool, a transfer
/// number, HTTP tools on `base`, VAD tuning fields the accept must drop.
fn desk_profile(base: &str, voicemail: &str) -> String {
    format!(
        r#"
description = "SIP test desk"
organization = "Test Co"
instructions = "You are the front desk of Test Co. Help the caller briefly."
greeting = "Greet the caller and ask how you can help."
numbers = ["{SIP_AGENT_NUMBER}"]
tools = ["end_call", "transfer_call", "record_survey_response", "opt_out", "voicemail_detected"]
{voicemail}

[transfer]
to = "{TRANSFER_TO}"

[turn_detection]
type = "server_vad"
threshold = 0.6
prefix_padding_ms = 200
silence_duration_ms = 700

[[http_tools]]
name = "lookup_order"
description = "Look up an order by its id."
url = "{base}/orders"
method = "POST"
timeout_ms = 2000
headers = {{ X-Test = "sip-desk" }}
[http_tools.parameters]
type = "object"
required = ["order_id"]
[http_tools.parameters.properties]
order_id = {{ type = "string" }}

[[http_tools]]
name = "slow_lookup"
description = "A lookup that takes too long."
url = "{base}/slow"
timeout_ms = 300
[http_tools.parameters]
type = "object"

[[http_tools]]
name = "broken_lookup"
description = "A lookup whose server fails."
url = "{base}/fail"
[http_tools.parameters]
type = "object"
"#
    )
}

const HANG_UP: &str = "voicemail = { action = \"hang_up\" }";
const VOICEMAIL_MESSAGE: &str = "Please call Test Co back at five five five.";

/// A server with the desk agent (voicemail: hang up) and its tool server.
async fn desk(model: RealtimeSimConfig, env: &[(&str, &str)]) -> (SipApp, Hits) {
    desk_with(model, HANG_UP, env).await
}

async fn desk_with(
    model: RealtimeSimConfig,
    voicemail: &str,
    env: &[(&str, &str)],
) -> (SipApp, Hits) {
    let (base, hits) = tool_server().await;
    let app = spawn_sip(
        model,
        &[("desk.toml", &desk_profile(&base, voicemail))],
        env,
    )
    .await;
    (app, hits)
}

/// Append the Calls API bodies our server sent (accept / refer / reject) to
/// `$VOXBRIDGE_CONFORMANCE_DIR/accept_bodies.jsonl` for `check_accept.py`, and
/// the sideband client events to the Realtime events file.
fn export_conformance(sip: &SipConnector) {
    export_client_events(sip.sim());
    let Ok(dir) = std::env::var("VOXBRIDGE_CONFORMANCE_DIR") else {
        return;
    };
    let _ = std::fs::create_dir_all(&dir);
    let mut text = String::new();
    for call in sip.calls() {
        for r in &call.requests {
            if !matches!(r.action.as_str(), "accept" | "refer" | "reject") {
                continue;
            }
            let body = r.body.clone().unwrap_or_else(|| json!({}));
            text.push_str(&json!({"op": r.action, "body": body}).to_string());
            text.push('\n');
        }
    }
    use std::io::Write;
    let path = std::path::Path::new(&dir).join("accept_bodies.jsonl");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("conformance file");
    f.write_all(text.as_bytes())
        .expect("write conformance file");
}

async fn wait_state(sip: &SipConnector, id: &str, state: SipCallState) -> SipCall {
    match sip.wait_for(id, LONG, |c| c.state == state).await {
        Some(c) => c,
        None => panic!(
            "call {id} never reached {state:?}: {:#?}",
            sip.call(id).map(|c| (c.state, actions(&c), c.transcript()))
        ),
    }
}

fn actions(c: &SipCall) -> Vec<(String, u16)> {
    c.requests
        .iter()
        .map(|r| (r.action.clone(), r.status))
        .collect()
}

fn agent_said(c: &SipCall, text: &str) -> bool {
    c.transcript()
        .iter()
        .any(|(who, t)| *who == "agent" && t == text)
}

/// The stored call once its end reason is written.
async fn ended(app: &SipApp, id: &str) -> voxbridge_store::CallRecord {
    let rec = app
        .stored_call(id, LONG, |r| r.end_reason.is_some())
        .await
        .expect("the call is stored");
    assert!(rec.end_reason.is_some(), "no end reason: {rec:#?}");
    rec
}

/// Stored tool calls, once `n` are there.
async fn tool_calls(app: &SipApp, id: &str, n: usize) -> Vec<voxbridge_store::ToolCallRecord> {
    let store = &app.store;
    poll(move || async move {
        let v = store.tool_calls(id).await.expect("tool calls");
        (v.len() >= n, v)
    })
    .await
}

/// Call `f` every 20 ms until it says done (or [`LONG`] passes); its last value.
async fn poll<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (bool, T)>,
{
    let end = tokio::time::Instant::now() + LONG;
    loop {
        let (done, v) = f().await;
        if done || tokio::time::Instant::now() >= end {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The caller waits for the greeting, asks something, then stays on the line.
fn ask(text: &str) -> SipCallerScript {
    SipCallerScript::default()
        .wait_agent(10_000)
        .speak(text, 300)
        .wait(60_000)
}

fn tool_names(body: &Value) -> Vec<String> {
    body["tools"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .filter_map(|t| t["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_call_end_to_end_ends_with_end_call() {
    let (app, _) = desk(model(&[(1, "end_call", json!({"reason": "done"}))]), &[]).await;
    let sip = &app.sip;
    let id = sip
        .place_call(
            SIP_AGENT_NUMBER,
            SIP_CALLER,
            ask("I want to check my order."),
        )
        .await
        .expect("call placed");

    let call = sip.call(&id).expect("call");
    let first = &call.deliveries[0];
    assert!(
        first.status.is_some_and(|s| (200..300).contains(&s)),
        "webhook answered {:?}: {}",
        first.status,
        first.response_body
    );
    assert_eq!(call.state, SipCallState::Accepted, "{:?}", actions(&call));
    eprintln!(
        "observation: accepted {:?} after the webhook was sent (target < 500 ms)",
        call.accepted_after
    );
    let body = call.accept_body.clone().expect("accept body");
    assert_eq!(body["type"], "realtime");
    assert!(body.pointer("/audio/input/format").is_none(), "{body:#}");
    assert!(body.pointer("/audio/output/format").is_none(), "{body:#}");
    let td = body
        .pointer("/audio/input/turn_detection")
        .expect("turn detection carried over");
    assert_eq!(td["type"], "server_vad", "{body:#}");
    for f in ["threshold", "prefix_padding_ms", "silence_duration_ms"] {
        assert!(td.get(f).is_none(), "{f} in the accept body: {body:#}");
    }
    let names = tool_names(&body);
    for t in [
        "end_call",
        "transfer_call",
        "record_survey_response",
        "opt_out",
        "voicemail_detected",
        "lookup_order",
        "slow_lookup",
        "broken_lookup",
    ] {
        assert!(names.iter().any(|n| n == t), "{t} not declared: {names:?}");
    }
    assert!(
        body["instructions"]
            .as_str()
            .unwrap_or_default()
            .contains("front desk of Test Co"),
        "{body:#}"
    );

    // end_call after response 1: our server hangs up once the words have played.
    let call = wait_state(sip, &id, SipCallState::HungUp).await;
    assert!(agent_said(&call, REPLIES[0]), "{:?}", call.transcript());
    assert!(agent_said(&call, REPLIES[1]), "{:?}", call.transcript());
    assert_eq!(
        actions(&call),
        [("accept".to_owned(), 200), ("hangup".to_owned(), 200)]
    );
    // The hang-up comes after the response that called end_call was done.
    let done_at = call.server_events_of_type("response.done").len();
    assert!(done_at >= 2, "{done_at} responses done");

    let rec = ended(&app, &id).await;
    assert!(
        rec.end_reason
            .as_deref()
            .is_some_and(|r| r.starts_with("agent_ended")),
        "{rec:#?}"
    );
    assert_eq!(rec.direction, "inbound");
    assert_eq!(rec.agent, "desk");
    assert_eq!(rec.from_number, SIP_CALLER);
    assert_eq!(rec.to_number, SIP_AGENT_NUMBER);
    assert_eq!(rec.task, Some(json!({"transport": "sip"})));

    let tools = tool_calls(&app, &id, 1).await;
    assert_eq!(tools.len(), 1, "{tools:#?}");
    assert_eq!(tools[0].name, "end_call");
    assert!(tools[0].ok);
    assert!(tools[0].arguments.contains("done"), "{tools:#?}");

    let store = &app.store;
    let idr = id.as_str();
    let transcript = poll(move || async move {
        let v = store.transcript(idr).await.expect("transcript");
        (v.len() >= 3, v)
    })
    .await;
    let has = |who: &str, text: &str| {
        transcript
            .iter()
            .any(|t| t.speaker == who && t.text == text)
    };
    assert!(has("agent", REPLIES[0]), "{transcript:#?}");
    assert!(
        has("caller", "I want to check my order."),
        "{transcript:#?}"
    );
    assert!(has("agent", REPLIES[1]), "{transcript:#?}");

    // The call is over in the store too, not left in progress.
    let rec = app
        .stored_call(&id, LONG, |r| r.status == "completed")
        .await
        .expect("call");
    assert_eq!(rec.status, "completed", "{rec:#?}");
    assert!(rec.ended_at_ms.is_some(), "{rec:#?}");
    export_conformance(sip);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_transfer_call_refers_to_the_configured_number() {
    let (app, _) = desk(
        model(&[(1, "transfer_call", json!({"reason": "billing question"}))]),
        &[],
    )
    .await;
    let sip = &app.sip;
    let id = sip
        .place_call(SIP_AGENT_NUMBER, SIP_CALLER, ask("I need a person."))
        .await
        .expect("call placed");
    let call = wait_state(sip, &id, SipCallState::Referred).await;
    assert_eq!(call.refer_target.as_deref(), Some("tel:+14155550177"));
    assert!(agent_said(&call, REPLIES[1]), "{:?}", call.transcript());
    assert_eq!(
        actions(&call),
        [("accept".to_owned(), 200), ("refer".to_owned(), 200)]
    );
    let rec = ended(&app, &id).await;
    assert_eq!(
        rec.end_reason.as_deref(),
        Some("transferred: +14155550177"),
        "OpenAI closes the sideband when the REFER is accepted, which may reach the \
         session before /refer's answer: that close is the transfer (session.rs \
         transferred_stop). {rec:#?}"
    );
    let tools = tool_calls(&app, &id, 1).await;
    assert_eq!(tools[0].name, "transfer_call");
    assert!(tools[0].ok);
    export_conformance(sip);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_survey_answers_are_stored_and_the_agent_goes_on() {
    let (app, _) = desk(
        model(&[
            (
                1,
                "record_survey_response",
                json!({"question": "How likely are you to recommend us?", "answer": "nine"}),
            ),
            (2, "end_call", json!({"reason": "survey done"})),
        ]),
        &[],
    )
    .await;
    let sip = &app.sip;
    let id = sip
        .place_call(SIP_AGENT_NUMBER, SIP_CALLER, ask("Nine out of ten."))
        .await
        .expect("call placed");
    // The model got the tool's output, spoke again (response 2), and that one ended the call.
    let call = wait_state(sip, &id, SipCallState::HungUp).await;
    assert!(agent_said(&call, REPLIES[2]), "{:?}", call.transcript());
    let outputs = sip.sim().tool_outputs();
    assert!(
        outputs
            .iter()
            .any(|o| o.sip_call_id.as_deref() == Some(id.as_str()) && o.output.contains("saved")),
        "{outputs:#?}"
    );
    let store = &app.store;
    let idr = id.as_str();
    let answers = poll(move || async move {
        let v = store.survey_responses(idr).await.expect("answers");
        (!v.is_empty(), v)
    })
    .await;
    assert_eq!(answers.len(), 1, "{answers:#?}");
    assert_eq!(answers[0].question, "How likely are you to recommend us?");
    assert_eq!(answers[0].answer, "nine");
    let tools = tool_calls(&app, &id, 2).await;
    let names: Vec<_> = tools.iter().map(|t| (t.name.as_str(), t.ok)).collect();
    assert_eq!(
        names,
        [("record_survey_response", true), ("end_call", true)]
    );
    let rec = ended(&app, &id).await;
    assert_eq!(rec.end_reason.as_deref(), Some("agent_ended: survey done"));
    export_conformance(sip);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_opt_out_adds_the_caller_to_dnc_and_hangs_up_after_a_goodbye() {
    let (app, _) = desk(
        model(&[(1, "opt_out", json!({"reason": "asked not to be called"}))]),
        &[],
    )
    .await;
    let sip = &app.sip;
    let id = sip
        .place_call(SIP_AGENT_NUMBER, SIP_CALLER, ask("Please stop calling me."))
        .await
        .expect("call placed");
    let call = wait_state(sip, &id, SipCallState::HungUp).await;
    // The goodbye (response 2) was spoken before the hang-up.
    assert!(agent_said(&call, REPLIES[2]), "{:?}", call.transcript());
    let store = &app.store;
    let dnc = poll(move || async move {
        let v = store.is_dnc(SIP_CALLER).await.expect("dnc");
        (v, v)
    })
    .await;
    assert!(dnc, "the caller is not on the do-not-call list");
    let rec = ended(&app, &id).await;
    assert_eq!(
        rec.end_reason.as_deref(),
        Some("agent_ended: opt_out: asked not to be called")
    );
    let tools = tool_calls(&app, &id, 1).await;
    assert_eq!(tools[0].name, "opt_out");
    assert!(tools[0].ok);
    export_conformance(sip);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_voicemail_detected_hangs_up() {
    let (app, _) = desk(model(&[(0, "voicemail_detected", json!({}))]), &[]).await;
    let sip = &app.sip;
    let id = sip
        .place_call(
            SIP_AGENT_NUMBER,
            SIP_CALLER,
            SipCallerScript::default().wait(60_000),
        )
        .await
        .expect("call placed");
    let call = wait_state(sip, &id, SipCallState::HungUp).await;
    // No message: only the greeting's response.
    assert_eq!(call.server_events_of_type("response.done").len(), 1);
    let rec = ended(&app, &id).await;
    assert_eq!(rec.end_reason.as_deref(), Some("voicemail: hung up"));
    let rec = app
        .stored_call(&id, LONG, |r| r.answered_by.is_some())
        .await
        .expect("call");
    assert_eq!(
        rec.answered_by.as_deref(),
        Some("machine_detected_by_agent")
    );
    let tools = tool_calls(&app, &id, 1).await;
    assert_eq!(tools[0].name, "voicemail_detected");
    assert!(tools[0].ok);
    export_conformance(sip);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_voicemail_detected_leaves_the_profile_message() {
    let voicemail =
        format!("voicemail = {{ action = \"leave_message\", message = \"{VOICEMAIL_MESSAGE}\" }}");
    let (app, _) = desk_with(
        model(&[(0, "voicemail_detected", json!({}))]),
        &voicemail,
        &[],
    )
    .await;
    let sip = &app.sip;
    let id = sip
        .place_call(
            SIP_AGENT_NUMBER,
            SIP_CALLER,
            SipCallerScript::default().wait(60_000),
        )
        .await
        .expect("call placed");
    let call = wait_state(sip, &id, SipCallState::HungUp).await;
    let creates = call.client_events_of_type("response.create");
    assert!(
        creates.iter().any(|e| e
            .pointer("/response/instructions")
            .and_then(Value::as_str)
            .is_some_and(|i| i.contains(VOICEMAIL_MESSAGE))),
        "{creates:#?}"
    );
    // The message response was spoken (and done) before the hang-up.
    assert!(agent_said(&call, REPLIES[1]), "{:?}", call.transcript());
    let rec = ended(&app, &id).await;
    assert_eq!(rec.end_reason.as_deref(), Some("voicemail: message left"));
    export_conformance(sip);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_http_tool_result_goes_back_to_the_model() {
    let (app, hits) = desk(
        model(&[(1, "lookup_order", json!({"order_id": "A-1042"}))]),
        &[],
    )
    .await;
    let sip = &app.sip;
    let id = sip
        .place_call(SIP_AGENT_NUMBER, SIP_CALLER, ask("Where is order A-1042?"))
        .await
        .expect("call placed");
    // The model got the body and spoke again (response 2).
    let call = sip
        .wait_for(&id, LONG, |c| agent_said(c, REPLIES[2]))
        .await
        .unwrap_or_else(|| {
            panic!(
                "no reply after the tool: {:#?}",
                sip.call(&id).map(|c| c.transcript())
            )
        });
    assert_eq!(call.state, SipCallState::Accepted);
    let got = hits.lock().expect("hits").clone();
    assert_eq!(
        got,
        [(
            "/orders".to_owned(),
            "sip-desk".to_owned(),
            json!({"order_id": "A-1042"})
        )]
    );
    let outputs: Vec<_> = sip
        .sim()
        .tool_outputs()
        .into_iter()
        .filter(|o| o.sip_call_id.as_deref() == Some(id.as_str()))
        .collect();
    assert_eq!(outputs.len(), 1, "{outputs:#?}");
    let fc = sip.sim().function_calls();
    let fc = fc
        .iter()
        .find(|f| f.name == "lookup_order")
        .expect("function call");
    assert_eq!(outputs[0].call_id, fc.call_id);
    let out: Value = serde_json::from_str(&outputs[0].output).expect("JSON output");
    assert_eq!(
        out,
        json!({"order_id": "A-1042", "status": "shipped", "eta": "Tuesday"})
    );
    let tools = tool_calls(&app, &id, 1).await;
    assert_eq!(tools[0].name, "lookup_order");
    assert!(tools[0].ok, "{tools:#?}");
    assert!(tools[0].result.contains("shipped"), "{tools:#?}");
    assert!(tools[0].arguments.contains("A-1042"), "{tools:#?}");
    // The endpoint takes 50 ms: the stored duration is the measured one.
    assert!(tools[0].duration_ms >= 50, "{tools:#?}");
    assert!(sip.caller_hangup(&id));
    ended(&app, &id).await;
    export_conformance(sip);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_http_tool_timeout_and_server_error_are_error_outputs() {
    let (app, hits) = desk(
        model(&[
            (1, "slow_lookup", json!({})),
            (2, "broken_lookup", json!({})),
        ]),
        &[],
    )
    .await;
    let sip = &app.sip;
    let id = sip
        .place_call(SIP_AGENT_NUMBER, SIP_CALLER, ask("Check my account."))
        .await
        .expect("call placed");
    // Both failed; the model was told, and went on to response 3.
    let call = sip
        .wait_for(&id, LONG, |c| agent_said(c, REPLIES[3]))
        .await
        .unwrap_or_else(|| {
            panic!(
                "the call did not go on: {:#?}",
                sip.call(&id).map(|c| c.transcript())
            )
        });
    assert_eq!(call.state, SipCallState::Accepted);
    let outputs: Vec<String> = sip
        .sim()
        .tool_outputs()
        .into_iter()
        .filter(|o| o.sip_call_id.as_deref() == Some(id.as_str()))
        .map(|o| o.output)
        .collect();
    assert_eq!(outputs.len(), 2, "{outputs:#?}");
    let first: Value = serde_json::from_str(&outputs[0]).expect("json");
    assert!(
        first["error"]
            .as_str()
            .is_some_and(|e| e.contains("slow_lookup did not answer within 300 ms")),
        "{first}"
    );
    let second: Value = serde_json::from_str(&outputs[1]).expect("json");
    assert!(
        second["error"]
            .as_str()
            .is_some_and(|e| e.contains("broken_lookup answered HTTP 500")),
        "{second}"
    );
    assert_eq!(second["body"], json!({"error": "database down"}));
    let tools = tool_calls(&app, &id, 2).await;
    let names: Vec<_> = tools.iter().map(|t| (t.name.as_str(), t.ok)).collect();
    assert_eq!(names, [("slow_lookup", false), ("broken_lookup", false)]);
    assert_eq!(hits.lock().expect("hits").len(), 2);
    assert!(sip.caller_hangup(&id));
    let rec = ended(&app, &id).await;
    assert!(
        rec.end_reason
            .as_deref()
            .is_some_and(|r| r.starts_with("model_closed")),
        "{rec:#?}"
    );
    export_conformance(sip);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_bad_tool_arguments_are_an_error_output() {
    let (app, _) = desk(model(&[(1, "end_call", json!("{not json"))]), &[]).await;
    let sip = &app.sip;
    let id = sip
        .place_call(SIP_AGENT_NUMBER, SIP_CALLER, ask("Bye."))
        .await
        .expect("call placed");
    let call = sip
        .wait_for(&id, LONG, |c| agent_said(c, REPLIES[2]))
        .await
        .unwrap_or_else(|| {
            panic!(
                "the call did not go on: {:#?}",
                sip.call(&id).map(|c| c.transcript())
            )
        });
    // Not ended: the bad call is an error output, not an end_call.
    assert_eq!(call.state, SipCallState::Accepted);
    let outputs: Vec<_> = sip
        .sim()
        .tool_outputs()
        .into_iter()
        .filter(|o| o.sip_call_id.as_deref() == Some(id.as_str()))
        .collect();
    assert_eq!(outputs.len(), 1, "{outputs:#?}");
    assert!(
        outputs[0].output.contains("arguments are not valid JSON"),
        "{outputs:#?}"
    );
    let tools = tool_calls(&app, &id, 1).await;
    assert_eq!(tools[0].name, "end_call");
    assert!(!tools[0].ok);
    assert_eq!(tools[0].arguments, "{not json");
    assert!(sip.caller_hangup(&id));
    ended(&app, &id).await;
    export_conformance(sip);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_dtmf_is_stored() {
    let (app, _) = desk(model(&[]), &[]).await;
    let sip = &app.sip;
    let id = sip
        .place_call(
            SIP_AGENT_NUMBER,
            SIP_CALLER,
            SipCallerScript::default()
                .wait_agent(10_000)
                .dtmf("5")
                .wait_agent(10_000)
                .hangup(),
        )
        .await
        .expect("call placed");
    let call = wait_state(sip, &id, SipCallState::Ended).await;
    // The key press went to the model as a note and it answered.
    let notes = call.client_events_of_type("conversation.item.create");
    assert!(
        notes
            .iter()
            .any(|e| e.to_string().contains("[caller pressed 5]")),
        "{notes:#?}"
    );
    let store = &app.store;
    let idr = id.as_str();
    let events = poll(move || async move {
        let v = store.events(idr).await.expect("events");
        (v.iter().any(|e| e.kind == "dtmf"), v)
    })
    .await;
    let dtmf: Vec<_> = events.iter().filter(|e| e.kind == "dtmf").collect();
    assert_eq!(dtmf.len(), 1, "{events:#?}");
    assert_eq!(dtmf[0].data["digit"], "5");
    ended(&app, &id).await;
    export_conformance(sip);
}

fn assert_401(d: &voxbridge_sim::sip::SipWebhookDelivery, code: &str) {
    assert_eq!(d.status, Some(401), "{:?}: {}", d.kind, d.response_body);
    let v: Value = serde_json::from_str(&d.response_body).expect("JSON error body");
    assert_eq!(v["code"], code, "{v}");
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_webhook_security() {
    let (app, _) = desk(model(&[]), &[]).await;
    let sip = &app.sip;

    // A call whose first delivery got nowhere: forged, stale and foreign-signed
    // deliveries are refused and accept nothing.
    sip.set_webhook_url("http://127.0.0.1:9/openai/webhook");
    let id = sip
        .place_call(
            SIP_AGENT_NUMBER,
            SIP_CALLER,
            SipCallerScript::default().wait(60_000),
        )
        .await
        .expect("call placed");
    assert_eq!(sip.call(&id).expect("call").deliveries[0].status, None);
    sip.set_webhook_url(app.app.http("/openai/webhook"));
    for (kind, code) in [
        (WebhookKind::Tampered, "NO_MATCHING_SIGNATURE"),
        (WebhookKind::Expired, "TIMESTAMP_TOO_OLD"),
        (WebhookKind::WrongSecret, "NO_MATCHING_SIGNATURE"),
    ] {
        let d = sip.deliver_webhook(&id, kind).await.expect("delivered");
        assert_401(&d, code);
    }
    let call = sip.call(&id).expect("call");
    assert_eq!(call.state, SipCallState::Incoming);
    assert!(call.requests.is_empty(), "{:?}", actions(&call));
    assert!(sip.unknown_call_requests().is_empty());

    // The service's retry (same id, fresh signature) is acted on.
    let d = sip
        .deliver_webhook(&id, WebhookKind::Redelivery)
        .await
        .expect("delivered");
    assert_eq!(d.status, Some(200), "{}", d.response_body);
    wait_state(sip, &id, SipCallState::Accepted).await;

    // Once handled: a redelivery and a replay are acknowledged, not acted on again.
    for kind in [WebhookKind::Redelivery, WebhookKind::Replay] {
        let d = sip.deliver_webhook(&id, kind).await.expect("delivered");
        assert!(
            d.status.is_some_and(|s| (200..300).contains(&s)),
            "{kind:?}: {:?} {}",
            d.status,
            d.response_body
        );
    }
    // And on a call handled the first time round.
    let id2 = sip
        .place_call(
            SIP_AGENT_NUMBER,
            SIP_CALLER,
            SipCallerScript::default().wait(60_000),
        )
        .await
        .expect("call placed");
    wait_state(sip, &id2, SipCallState::Accepted).await;
    for kind in [WebhookKind::Redelivery, WebhookKind::Replay] {
        let d = sip.deliver_webhook(&id2, kind).await.expect("delivered");
        assert!(
            d.status.is_some_and(|s| (200..300).contains(&s)),
            "{kind:?}: {:?} {}",
            d.status,
            d.response_body
        );
    }
    for kind in [
        WebhookKind::Tampered,
        WebhookKind::Expired,
        WebhookKind::WrongSecret,
    ] {
        let d = sip.deliver_webhook(&id2, kind).await.expect("delivered");
        assert_eq!(d.status, Some(401), "{kind:?}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for id in [&id, &id2] {
        let call = sip.call(id).expect("call");
        let accepts = call
            .requests
            .iter()
            .filter(|r| r.action == "accept")
            .count();
        assert_eq!(accepts, 1, "{:?}", actions(&call));
        assert_eq!(call.sideband_connections, 1);
    }
    assert!(sip.unknown_call_requests().is_empty());
    for id in [&id, &id2] {
        assert!(sip.caller_hangup(id));
        ended(&app, id).await;
    }
    export_conformance(sip);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_webhook_without_a_secret_is_503() {
    let (app, _) = desk(model(&[]), &[("OPENAI_WEBHOOK_SECRET", "")]).await;
    let sip = &app.sip;
    let id = sip
        .place_call(SIP_AGENT_NUMBER, SIP_CALLER, SipCallerScript::default())
        .await
        .expect("call placed");
    let call = sip.call(&id).expect("call");
    let d = &call.deliveries[0];
    assert_eq!(d.status, Some(503), "{}", d.response_body);
    let v: Value = serde_json::from_str(&d.response_body).expect("JSON error body");
    assert_eq!(v["code"], "WEBHOOK_NOT_CONFIGURED");
    assert!(v["error"].is_string());
    assert_eq!(call.state, SipCallState::Incoming);
    assert!(call.requests.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_call_outside_inbound_hours_is_rejected_480() {
    // A one-hour window starting two hours from now (UTC): now is outside it.
    let h = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .hour();
    let hours = format!("{:02}:00-{:02}:00", (h + 2) % 24, (h + 3) % 24);
    let (app, _) = desk(
        model(&[]),
        &[("INBOUND_HOURS", &hours), ("INBOUND_TIMEZONE", "UTC")],
    )
    .await;
    let sip = &app.sip;
    let id = sip
        .place_call(SIP_AGENT_NUMBER, SIP_CALLER, SipCallerScript::default())
        .await
        .expect("call placed");
    let call = sip.call(&id).expect("call");
    assert_eq!(call.deliveries[0].status, Some(200));
    assert_eq!(call.state, SipCallState::Rejected, "{:?}", actions(&call));
    assert_eq!(call.reject_status, Some(480));
    assert_eq!(actions(&call), [("reject".to_owned(), 200)]);
    assert_eq!(call.requests[0].body, Some(json!({"status_code": 480})));
    assert_eq!(call.sideband_connections, 0);
    export_conformance(sip);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_call_over_capacity_is_rejected_486() {
    let (app, _) = desk(model(&[]), &[("MAX_CALLS", "1")]).await;
    let sip = &app.sip;
    let first = sip
        .place_call(
            SIP_AGENT_NUMBER,
            SIP_CALLER,
            SipCallerScript::default().wait(60_000),
        )
        .await
        .expect("call placed");
    wait_state(sip, &first, SipCallState::Accepted).await;
    let second = sip
        .place_call(SIP_AGENT_NUMBER, "+14155550112", SipCallerScript::default())
        .await
        .expect("call placed");
    let call = sip.call(&second).expect("call");
    assert_eq!(call.deliveries[0].status, Some(200));
    assert_eq!(call.state, SipCallState::Rejected, "{:?}", actions(&call));
    assert_eq!(call.reject_status, Some(486));
    // The slot frees when the first call ends.
    assert!(sip.caller_hangup(&first));
    ended(&app, &first).await;
    let state = &app.app.state;
    assert!(
        eventually(LONG, || state.active_calls() == 0).await,
        "the first call still counts"
    );
    let third = sip
        .place_call(
            SIP_AGENT_NUMBER,
            SIP_CALLER,
            SipCallerScript::default().wait(60_000),
        )
        .await
        .expect("call placed");
    wait_state(sip, &third, SipCallState::Accepted).await;
    assert!(sip.caller_hangup(&third));
    ended(&app, &third).await;
    export_conformance(sip);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_caller_gone_before_accept_is_not_an_error() {
    let (app, _) = desk(model(&[]), &[]).await;
    let sip = &app.sip;
    // The first delivery fails, the caller hangs up, the service retries.
    sip.set_webhook_url("http://127.0.0.1:9/openai/webhook");
    let id = sip
        .place_call(SIP_AGENT_NUMBER, SIP_CALLER, SipCallerScript::default())
        .await
        .expect("call placed");
    assert!(sip.caller_hangup(&id));
    sip.set_webhook_url(app.app.http("/openai/webhook"));
    let d = sip
        .deliver_webhook(&id, WebhookKind::Redelivery)
        .await
        .expect("delivered");
    assert_eq!(d.status, Some(200), "{}", d.response_body);
    let v: Value = serde_json::from_str(&d.response_body).expect("json");
    assert_eq!(v["status"], "gone", "{v}");
    let call = sip.call(&id).expect("call");
    assert_eq!(call.state, SipCallState::Ended);
    assert_eq!(actions(&call), [("accept".to_owned(), 404)]);
    assert_eq!(app.app.state.active_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_failed_accept_is_retried_on_redelivery() {
    // The Calls API refuses our key: the webhook fails (5xx), and so must the
    // service's retry, rather than being acknowledged as a duplicate and the
    // call lost.
    let (app, _) = desk(model(&[]), &[("OPENAI_API_KEY", "sk-wrong")]).await;
    let sip = &app.sip;
    let id = sip
        .place_call(
            SIP_AGENT_NUMBER,
            SIP_CALLER,
            SipCallerScript::default().wait(60_000),
        )
        .await
        .expect("call placed");
    let call = sip.call(&id).expect("call");
    let d = &call.deliveries[0];
    assert_eq!(d.status, Some(502), "{}", d.response_body);
    let v: Value = serde_json::from_str(&d.response_body).expect("json");
    assert_eq!(v["code"], "ACCEPT_FAILED");
    let d = sip
        .deliver_webhook(&id, WebhookKind::Redelivery)
        .await
        .expect("delivered");
    assert_eq!(d.status, Some(502), "{}", d.response_body);
    // (Requests with a wrong key are refused before the emulator records them.)
    let call = sip.call(&id).expect("call");
    assert_eq!(call.state, SipCallState::Incoming);
    assert_eq!(app.app.state.active_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_call_is_hung_up_at_the_agents_longest_call() {
    let (app, _) = desk_with(
        model(&[]),
        &format!("{HANG_UP}\nmax_call_duration_s = 10"),
        &[],
    )
    .await;
    let sip = &app.sip;
    let id = sip
        .place_call(
            SIP_AGENT_NUMBER,
            SIP_CALLER,
            SipCallerScript::default().wait(120_000),
        )
        .await
        .expect("call placed");
    let call = wait_state(sip, &id, SipCallState::HungUp).await;
    assert_eq!(
        actions(&call),
        [("accept".to_owned(), 200), ("hangup".to_owned(), 200)]
    );
    let rec = app
        .stored_call(&id, LONG, |r| r.status == "completed")
        .await
        .expect("call");
    assert_eq!(rec.status, "completed", "{rec:#?}");
    assert_eq!(
        rec.end_reason.as_deref(),
        Some("agent_ended: max call duration reached")
    );
    assert!(rec.duration_s.is_some_and(|d| d >= 10), "{rec:#?}");
    assert!(
        eventually(LONG, || app.app.state.active_calls() == 0).await,
        "the call still counts"
    );
}
