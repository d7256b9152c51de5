//! Tools on the Media Streams path, end to end: an outbound call placed through the REST API,
//! the Twilio emulator dialing back, the simulated model calling a tool at the end of a
//! response, and what the server does: end the call after the words have played, transfer it
//! with a Twilio call update (`<Dial>`, or a conference for a warm transfer), store a survey
//! answer, put the number on the do-not-call list, call a customer HTTP tool, report a
//! voicemail. Errors (bad arguments, a failing HTTP tool) reach the model as error outputs.

use crate::helpers::*;
use axum::routing::get;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use voxbridge_sim::caller::CallerStep;
use voxbridge_sim::realtime::{RealtimeSim, RealtimeSimConfig, SimReply};
use voxbridge_sim::twilio_api::{DialKind, Outcome, TwilioEmulator, TwilioEmulatorConfig};
use voxbridge_store::Store;

const CALLEE: &str = "+14155550100";
const HUMAN: &str = "+14155550177";

/// A local "customer API" for the HTTP tools: `GET /orders?id=` answers JSON, `/slow` sleeps
/// past the tool's timeout, `/broken` answers 500. Requests are recorded.
async fn customer_api() -> (String, Arc<Mutex<Vec<String>>>) {
    let hits = Arc::new(Mutex::new(Vec::new()));
    let h = hits.clone();
    let app = axum::Router::new()
        .route(
            "/orders",
            get(
                move |q: axum::extract::Query<std::collections::HashMap<String, String>>,
                      headers: axum::http::HeaderMap| {
                    let h = h.clone();
                    async move {
                        let auth = headers
                            .get("x-api-key")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        h.lock().unwrap_or_else(|e| e.into_inner()).push(format!(
                            "id={} key={auth}",
                            q.get("id").cloned().unwrap_or_default()
                        ));
                        axum::Json(json!({"order": q.get("id"), "status": "shipped"}))
                    }
                },
            ),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                "late"
            }),
        )
        .route(
            "/broken",
            get(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), hits)
}

fn profile(api: &str, transfer_warm: bool, voicemail: &str, extra: &str) -> String {
    format!(
        r#"
name = "toolbox"
task_type = "custom"
organization = "Acme"
instructions = "You help with orders. {{{{knowledge}}}}"
greeting = "Say hello."
tools = ["end_call", "transfer_call", "record_survey_response", "opt_out", "voicemail_detected"]
{extra}

[transfer]
to = "{HUMAN}"
warm = {transfer_warm}

[voicemail]
{voicemail}

[[http_tools]]
name = "lookup_order"
description = "Look up an order by id"
url = "{api}/orders"
method = "GET"
headers = {{ "x-api-key" = "k-123" }}
timeout_ms = 1000
parameters = {{ type = "object", properties = {{ id = {{ type = "string" }} }}, required = ["id"] }}

[[http_tools]]
name = "slow_tool"
description = "Slow"
url = "{api}/slow"
method = "GET"
timeout_ms = 300
parameters = {{ type = "object", properties = {{}} }}

[[http_tools]]
name = "broken_tool"
description = "Broken"
url = "{api}/broken"
method = "GET"
timeout_ms = 1000
parameters = {{ type = "object", properties = {{}} }}
"#
    )
}

struct Rig {
    app: TestApp,
    twilio: TwilioEmulator,
    store: Store,
    key: String,
    hits: Arc<Mutex<Vec<String>>>,
    _dir: std::path::PathBuf,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

/// Replies: 0 greeting (+ the scripted tool), 1 and 2 follow-ups.
fn sim_with(tool_calls: &[(usize, &str, Value)]) -> RealtimeSimConfig {
    let mut cfg = RealtimeSimConfig {
        api_key: Some(API_KEY.into()),
        replies: vec![
            SimReply::new("Hello, this is the Acme assistant.", 800),
            SimReply::new("Thanks, noted. Goodbye!", 600),
            SimReply::new("Anything else?", 400),
        ],
        ..RealtimeSimConfig::default()
    };
    for (n, name, args) in tool_calls {
        cfg = cfg.with_tool_call(*n, *name, args.clone());
    }
    cfg
}

async fn rig(
    sim_cfg: RealtimeSimConfig,
    emu: TwilioEmulatorConfig,
    warm: bool,
    voicemail: &str,
    env: &[(&str, &str)],
) -> Rig {
    let (api, hits) = customer_api().await;
    let dir = std::env::temp_dir().join(format!("vb-tools-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let extra = env
        .iter()
        .find(|(k, _)| *k == "PROFILE_EXTRA")
        .map_or("", |(_, v)| *v);
    std::fs::write(
        dir.join("toolbox.toml"),
        profile(&api, warm, voicemail, extra),
    )
    .expect("profile");
    let twilio = start_twilio(emu).await;
    let sim = RealtimeSim::start(sim_cfg).await.expect("sim");
    let db = fresh_database(Backend::Sqlite).await;
    let store = Store::connect(&db).await.expect("store");
    let (_, key) = store.create_api_key("tools").await.expect("key");
    let dir_s = dir.display().to_string();
    let mut all_env: Vec<(&str, &str)> = vec![
        ("AGENTS_DIR", dir_s.as_str()),
        ("OUTBOUND_GREETING_WAIT_MS", "200"),
        ("CAMPAIGN_WORKER", "false"),
    ];
    all_env.extend_from_slice(env);
    let app = spawn_node(&db, &twilio, sim, &all_env).await;
    Rig {
        app,
        twilio,
        store,
        key,
        hits,
        _dir: dir,
    }
}

fn callee_waits(ms: u32) -> TwilioEmulatorConfig {
    TwilioEmulatorConfig {
        default_script: vec![
            CallerStep::WaitAgentSpeaking { timeout_ms: 5_000 },
            CallerStep::Silence { ms },
            CallerStep::Hangup,
        ],
        ring_ms: 50,
        dial_outcomes: vec![],
        ..TwilioEmulatorConfig::default()
    }
}

impl Rig {
    async fn call(&self) -> String {
        let r = reqwest::Client::new()
            .post(self.app.http("/v1/calls"))
            .bearer_auth(&self.key)
            .json(&json!({"to": CALLEE, "agent": "toolbox",
                          "task": {"type": "custom", "prompt": "Help with the order."}}))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
        r.json::<Value>().await.expect("json")["id"]
            .as_str()
            .expect("id")
            .to_owned()
    }

    /// Waits until the call has an end reason (the session ended).
    async fn ended(&self, id: &str) -> voxbridge_store::CallRecord {
        let end = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let c = self.store.get_call(id).await.expect("store").expect("call");
            if c.end_reason.is_some() {
                return c;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "call {id} did not end: {c:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn tool_calls(&self, id: &str) -> Vec<voxbridge_store::ToolCallRecord> {
        // the persist writer is asynchronous
        for _ in 0..100 {
            let t = self.store.tool_calls(id).await.expect("tools");
            if !t.is_empty() {
                return t;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Vec::new()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_call_ends_after_the_words_played() {
    let rig = rig(
        sim_with(&[(0, "end_call", json!({"reason": "task done"}))]),
        callee_waits(10_000),
        false,
        r#"action = "hang_up""#,
        &[],
    )
    .await;
    let id = rig.call().await;
    let call = rig.ended(&id).await;
    assert_eq!(
        call.end_reason.as_deref(),
        Some("agent_ended: task done"),
        "{call:#?}"
    );
    let tools = rig.tool_calls(&id).await;
    assert_eq!(tools.len(), 1);
    assert_eq!((tools[0].name.as_str(), tools[0].ok), ("end_call", true));
    // the whole greeting (800 ms) was heard before the call ended
    let sid = call.twilio_call_sid.clone().expect("sid");
    let done = rig
        .twilio
        .wait_call_done(&sid, Duration::from_secs(20))
        .await
        .expect("call done");
    let report = done.report.expect("caller report");
    assert!(
        report.heard_bytes >= 8 * 780,
        "heard {} bytes",
        report.heard_bytes
    );
    assert!(report.clears.is_empty());
    // the model got the tool's output
    assert!(
        rig.app
            .sim
            .tool_outputs()
            .iter()
            .any(|o| o.output.contains("\"ok\":true")),
        "{:?}",
        rig.app.sim.tool_outputs()
    );
    // and the session declared the agent's tools
    let declared = rig
        .app
        .sim
        .events_of_type("session.update")
        .into_iter()
        .map(|e| e["session"]["tools"].clone())
        .next();
    let names: Vec<String> = declared
        .and_then(|t| t.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect();
    assert!(
        names.contains(&"end_call".to_string()) && names.contains(&"lookup_order".to_string()),
        "{names:?}"
    );
    export_client_events(&rig.app.sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survey_answer_then_end() {
    let rig = rig(
        sim_with(&[
            (
                0,
                "record_survey_response",
                json!({"question": "How likely are you to recommend us?", "answer": "nine"}),
            ),
            (1, "end_call", json!({"reason": "survey done"})),
        ]),
        callee_waits(10_000),
        false,
        r#"action = "hang_up""#,
        &[],
    )
    .await;
    let id = rig.call().await;
    let call = rig.ended(&id).await;
    assert_eq!(call.end_reason.as_deref(), Some("agent_ended: survey done"));
    let answers = rig.store.survey_responses(&id).await.expect("answers");
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].answer, "nine");
    // the API shows them with the call
    let detail: Value = reqwest::Client::new()
        .get(rig.app.http(&format!("/v1/calls/{id}")))
        .bearer_auth(&rig.key)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(detail["survey"][0]["answer"], "nine", "{detail:#}");
    assert_eq!(detail["tool_calls"][0]["name"], "record_survey_response");
    let names: Vec<String> = rig
        .tool_calls(&id)
        .await
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert!(
        names.starts_with(&["record_survey_response".to_string()]),
        "{names:?}"
    );
    export_client_events(&rig.app.sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opt_out_lists_the_number_and_ends_politely() {
    let rig = rig(
        sim_with(&[(0, "opt_out", json!({"reason": "asked"}))]),
        callee_waits(10_000),
        false,
        r#"action = "hang_up""#,
        &[],
    )
    .await;
    let id = rig.call().await;
    let call = rig.ended(&id).await;
    assert!(
        call.end_reason
            .as_deref()
            .unwrap_or("")
            .starts_with("agent_ended: opt_out"),
        "{call:#?}"
    );
    let mut listed = false;
    for _ in 0..100 {
        listed = rig.store.is_dnc(CALLEE).await.expect("dnc");
        if listed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(listed, "the callee is on the do-not-call list");
    // the goodbye (reply 1) was spoken after the opt-out
    let transcript = rig.store.transcript(&id).await.expect("transcript");
    assert!(
        transcript.iter().any(|t| t.text.contains("Goodbye")),
        "{transcript:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_transfer_dials_the_person() {
    let rig = rig(
        sim_with(&[(0, "transfer_call", json!({"reason": "billing question"}))]),
        callee_waits(10_000),
        false,
        r#"action = "hang_up""#,
        &[],
    )
    .await;
    let id = rig.call().await;
    let call = rig.ended(&id).await;
    assert_eq!(
        call.end_reason.as_deref(),
        Some(format!("transferred: {HUMAN}").as_str()),
        "{call:#?}"
    );
    let sid = call.twilio_call_sid.expect("sid");
    let legs = rig
        .twilio
        .wait_dialed(&sid, Duration::from_secs(10))
        .await
        .expect("dialed");
    assert_eq!(legs[0].to, HUMAN);
    assert_eq!(legs[0].kind, DialKind::Number);
    assert_eq!(legs[0].caller_id, FROM_NUMBER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_transfer_uses_a_conference() {
    let rig = rig(
        sim_with(&[(0, "transfer_call", json!({"reason": "needs a person"}))]),
        callee_waits(10_000),
        true,
        r#"action = "hang_up""#,
        &[],
    )
    .await;
    let id = rig.call().await;
    let call = rig.ended(&id).await;
    assert!(
        call.end_reason
            .as_deref()
            .unwrap_or("")
            .starts_with("transferred"),
        "{call:#?}"
    );
    let name = voxbridge::control::conference_name(&id);
    let mut conf = None;
    for _ in 0..200 {
        conf = rig.twilio.conference(&name);
        if conf.as_ref().is_some_and(|c| c.participants.len() >= 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let conf = conf.expect("conference created");
    let sid = call.twilio_call_sid.expect("sid");
    assert!(
        conf.participants.iter().any(|p| p.call_sid == sid),
        "the caller joined: {conf:#?}"
    );
    assert!(
        conf.participants.iter().any(|p| p.via_api),
        "the person was dialed in: {conf:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_tools_answer_the_model_and_failures_are_error_outputs() {
    let rig = rig(
        sim_with(&[
            (0, "lookup_order", json!({"id": "A-7"})),
            (1, "slow_tool", json!({})),
            (2, "broken_tool", json!({})),
        ]),
        callee_waits(15_000),
        false,
        r#"action = "hang_up""#,
        &[],
    )
    .await;
    let id = rig.call().await;
    // wait for the three tool calls
    let mut tools = Vec::new();
    for _ in 0..400 {
        tools = rig.store.tool_calls(&id).await.expect("tools");
        if tools.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(tools.len(), 3, "{tools:#?}");
    assert_eq!(
        (tools[0].name.as_str(), tools[0].ok),
        ("lookup_order", true)
    );
    assert!(tools[0].result.contains("shipped"), "{}", tools[0].result);
    assert_eq!(
        rig.hits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .first()
            .cloned(),
        Some("id=A-7 key=k-123".to_string())
    );
    assert_eq!((tools[1].name.as_str(), tools[1].ok), ("slow_tool", false));
    assert!(
        tools[1].result.contains("did not answer within 300 ms"),
        "{}",
        tools[1].result
    );
    assert!(tools[1].duration_ms >= 250);
    assert_eq!(
        (tools[2].name.as_str(), tools[2].ok),
        ("broken_tool", false)
    );
    assert!(tools[2].result.contains("HTTP 500"), "{}", tools[2].result);
    let outputs = rig.app.sim.tool_outputs();
    assert!(
        outputs.iter().any(|o| o.output.contains("shipped")),
        "{outputs:?}"
    );
    // the call went on: it is still up or ended by the callee, not by an error
    let call = rig.store.get_call(&id).await.expect("store").expect("call");
    assert!(
        call.end_reason
            .as_deref()
            .is_none_or(|r| !r.contains("error")),
        "{call:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_become_an_error_output() {
    let rig = rig(
        sim_with(&[
            (0, "record_survey_response", json!("{not json")),
            (1, "end_call", json!({"reason": "done"})),
        ]),
        callee_waits(10_000),
        false,
        r#"action = "hang_up""#,
        &[],
    )
    .await;
    let id = rig.call().await;
    let call = rig.ended(&id).await;
    assert_eq!(call.end_reason.as_deref(), Some("agent_ended: done"));
    let tools = rig.tool_calls(&id).await;
    assert!(!tools[0].ok);
    assert!(
        tools[0].result.contains("not valid JSON"),
        "{}",
        tools[0].result
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voicemail_gets_the_message_then_a_hang_up() {
    let emu = TwilioEmulatorConfig {
        outcomes: vec![(CALLEE.into(), Outcome::Machine)],
        ..callee_waits(10_000)
    };
    let rig = rig(
        sim_with(&[]),
        emu,
        false,
        r#"action = "leave_message"
message = "Hi, this is Acme calling about your order. Please call us back."
"#,
        &[
            ("MACHINE_DETECTION", "DetectMessageEnd"),
            ("OUTBOUND_GREETING_WAIT_MS", "5000"),
        ],
    )
    .await;
    let id = rig.call().await;
    let call = rig.ended(&id).await;
    assert!(
        call.end_reason
            .as_deref()
            .unwrap_or("")
            .starts_with("voicemail"),
        "{call:#?}"
    );
    let machine = rig.store.get_call(&id).await.expect("store").expect("call");
    assert!(
        machine
            .answered_by
            .as_deref()
            .unwrap_or("")
            .starts_with("machine"),
        "{machine:#?}"
    );
    // the only response asked for leaves the message
    let creates: Vec<Value> = rig.app.sim.events_of_type("response.create");
    // the greeting waited for a person and never played into the machine's greeting
    assert_eq!(creates.len(), 1, "{creates:#?}");
    assert!(
        creates.iter().any(|e| e["response"]["instructions"]
            .as_str()
            .unwrap_or("")
            .contains("Please call us back")),
        "{creates:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_timeout_ends_a_quiet_call() {
    let rig = rig(
        sim_with(&[]),
        callee_waits(20_000),
        false,
        r#"action = "hang_up""#,
        &[("PROFILE_EXTRA", "silence_timeout_s = 2")],
    )
    .await;
    let id = rig.call().await;
    let call = rig.ended(&id).await;
    assert_eq!(
        call.end_reason.as_deref(),
        Some("agent_ended: silence timeout"),
        "{call:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_call_duration_says_goodbye_and_ends() {
    let rig = rig(
        sim_with(&[]),
        callee_waits(20_000),
        false,
        r#"action = "hang_up""#,
        &[("PROFILE_EXTRA", "max_call_duration_s = 10")],
    )
    .await;
    let id = rig.call().await;
    let call = rig.ended(&id).await;
    assert_eq!(
        call.end_reason.as_deref(),
        Some("agent_ended: max call duration reached"),
        "{call:#?}"
    );
    // the goodbye was asked for
    assert!(
        rig.app
            .sim
            .events_of_type("conversation.item.create")
            .iter()
            .any(|e| e.to_string().contains("maximum call length"))
    );
}

/// On an outbound call the greeting waits for a person: here only machine detection's
/// `human` verdict can release it (the wait is far longer than the test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_human_answer_releases_the_greeting() {
    let emu = TwilioEmulatorConfig {
        default_script: vec![
            CallerStep::WaitAgentSpeaking { timeout_ms: 15_000 },
            CallerStep::WaitAgentQuiet {
                quiet_ms: 300,
                timeout_ms: 10_000,
            },
            CallerStep::Hangup,
        ],
        ..callee_waits(1)
    };
    let rig = rig(
        sim_with(&[]),
        emu,
        false,
        r#"action = "hang_up""#,
        &[
            ("MACHINE_DETECTION", "Enable"),
            ("OUTBOUND_GREETING_WAIT_MS", "600000"),
        ],
    )
    .await;
    let id = rig.call().await;
    let call = rig.ended(&id).await;
    assert_eq!(call.answered_by.as_deref(), Some("human"), "{call:#?}");
    let creates = rig.app.sim.events_of_type("response.create");
    assert_eq!(creates.len(), 1, "{creates:#?}");
    let transcript = rig.store.transcript(&id).await.expect("transcript");
    assert!(
        transcript.iter().any(|t| t.text.contains("Acme assistant")),
        "the greeting was heard: {transcript:#?}"
    );
}
