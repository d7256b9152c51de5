//! The Realtime Calls API client against a local fake OpenAI (axum), and the
//! sideband socket handshake. The accept/refer/reject bodies seen on the wire
//! are exported for `conformance/check_accept.py` when
//! `VOXBRIDGE_CONFORMANCE_DIR` is set (scripts/test.sh step 3).

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use voxbridge_realtime::calls::{AcceptSession, CallsClient, CallsError, FunctionTool, ToolChoice};
use voxbridge_realtime::session::{NoiseReduction, SessionConfig, Transcription, TurnDetection};

#[derive(Debug, Clone)]
struct Captured {
    path: String,
    authorization: Option<String>,
    content_type: Option<String>,
    openai_beta: bool,
    content_length: Option<String>,
    body: Bytes,
}

type Log = Arc<Mutex<Vec<Captured>>>;

async fn handler(
    State(log): State<Log>,
    Path((call_id, op)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    log.lock().expect("log").push(Captured {
        path: format!("/v1/realtime/calls/{call_id}/{op}"),
        authorization: h("authorization"),
        content_type: h("content-type"),
        openai_beta: headers.contains_key("openai-beta"),
        content_length: h("content-length"),
        body,
    });
    let err = |status: StatusCode, message: &str, kind: &str, code: Value| {
        (
            status,
            [("content-type", "application/json")],
            json!({"error": {"message": message, "type": kind, "code": code, "param": null}})
                .to_string(),
        )
            .into_response()
    };
    match call_id.as_str() {
        "rtc_gone" => err(
            StatusCode::NOT_FOUND,
            "Call not found",
            "invalid_request_error",
            json!("call_not_found"),
        ),
        "rtc_boom" => err(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The server had an error while processing your request.",
            "server_error",
            Value::Null,
        ),
        "rtc_bad" => err(
            StatusCode::BAD_REQUEST,
            "Unknown parameter: 'session.audio.input.turn_detection.threshold'.",
            "invalid_request_error",
            json!("unknown_parameter"),
        ),
        "rtc_html" => (StatusCode::BAD_GATEWAY, "<html>502 Bad Gateway</html>").into_response(),
        "rtc_slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            StatusCode::OK.into_response()
        }
        _ => StatusCode::OK.into_response(),
    }
}

async fn fake_openai() -> (String, Log) {
    let log: Log = Arc::default();
    let app = Router::new()
        .route("/v1/realtime/calls/{call_id}/{op}", post(handler))
        .with_state(log.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/v1"), log)
}

fn phone(td: Option<TurnDetection>) -> SessionConfig {
    SessionConfig::phone(
        "gpt-realtime-2.1",
        "You are an AI assistant calling on behalf of Acme Dental. Say so first.",
        "marin",
        td,
        Some(Transcription {
            model: "gpt-4o-mini-transcribe".into(),
            language: Some("en".into()),
        }),
        None,
    )
}

/// The accept bodies the server can produce, one per configuration shape.
fn sessions() -> Vec<AcceptSession> {
    let end_call = FunctionTool::new(
        "end_call",
        "End the call after your last sentence.",
        json!({"type":"object","properties":{"reason":{"type":"string"}},"required":["reason"],"additionalProperties":false}),
    );
    let transfer = FunctionTool::new(
        "transfer_call",
        "Transfer the caller to a human.",
        json!({"type":"object","properties":{}}),
    );
    let mut with_noise = phone(Some(TurnDetection::SemanticVad {
        eagerness: "auto".into(),
        create_response: true,
        interrupt_response: true,
    }));
    with_noise.audio.input.noise_reduction = Some(NoiseReduction {
        kind: "far_field".into(),
    });
    let mut text_only = phone(None);
    text_only.output_modalities = vec!["text".into()];
    text_only.audio.input.transcription = None;
    vec![
        AcceptSession::from_session(&phone(Some(TurnDetection::ServerVad {
            threshold: 0.5,
            prefix_padding_ms: 300,
            silence_duration_ms: 500,
            idle_timeout_ms: Some(6000),
            create_response: true,
            interrupt_response: true,
        }))),
        AcceptSession::from_session(&with_noise)
            .with_tools(vec![end_call.clone(), transfer], Some(ToolChoice::Auto))
            .with_max_output_tokens(Some(1024)),
        AcceptSession::from_session(&phone(None)).with_tools(
            vec![end_call],
            Some(ToolChoice::Function("end_call".into())),
        ),
        AcceptSession::from_session(&text_only),
    ]
}

/// Append what the fake saw to `$VOXBRIDGE_CONFORMANCE_DIR/accept_bodies.jsonl`
/// as `{"op": …, "body": …}` lines.
fn export(log: &[Captured]) {
    let Ok(dir) = std::env::var("VOXBRIDGE_CONFORMANCE_DIR") else {
        return;
    };
    let _ = std::fs::create_dir_all(&dir);
    let mut text = String::new();
    for c in log {
        let op = c.path.rsplit('/').next().unwrap_or("");
        if c.body.is_empty() {
            continue;
        }
        let body: Value = serde_json::from_slice(&c.body).expect("captured body is JSON");
        text.push_str(&json!({"op": op, "body": body}).to_string());
        text.push('\n');
    }
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(std::path::Path::new(&dir).join("accept_bodies.jsonl"))
        .expect("conformance file");
    f.write_all(text.as_bytes())
        .expect("write conformance file");
}

fn has_key(v: &Value, key: &str) -> bool {
    match v {
        Value::Object(m) => m.contains_key(key) || m.values().any(|x| has_key(x, key)),
        Value::Array(a) => a.iter().any(|x| has_key(x, key)),
        _ => false,
    }
}

#[tokio::test]
async fn requests_have_the_sdk_shape() {
    let (base, log) = fake_openai().await;
    let client = CallsClient::new(&base, "sk-test-not-real").expect("client");
    let call = "rtc_u1_9c6574da8b8a41a18da9308f4ad974ce";
    let sessions = sessions();
    for s in &sessions {
        client.accept(call, s).await.expect("accept");
    }
    client.reject(call, Some(486)).await.expect("reject 486");
    client.reject(call, None).await.expect("reject default");
    client
        .refer(call, "tel:+14155550123")
        .await
        .expect("refer tel");
    client
        .refer(call, "sip:agent@example.com")
        .await
        .expect("refer sip");
    client.hangup(call).await.expect("hangup");

    let log = log.lock().expect("log").clone();
    let paths: Vec<&str> = log
        .iter()
        .map(|c| c.path.rsplit('/').next().unwrap_or(""))
        .collect();
    let mut want = vec!["accept"; sessions.len()];
    want.extend(["reject", "reject", "refer", "refer", "hangup"]);
    assert_eq!(paths, want);
    for c in &log {
        assert_eq!(
            c.path.rsplit('/').nth(1),
            Some(call),
            "call id in the path: {}",
            c.path
        );
        assert!(c.path.starts_with("/v1/realtime/calls/"), "{}", c.path);
        assert_eq!(c.authorization.as_deref(), Some("Bearer sk-test-not-real"));
        assert!(!c.openai_beta, "no OpenAI-Beta header in GA");
    }
    for (c, s) in log.iter().zip(&sessions) {
        assert_eq!(c.content_type.as_deref(), Some("application/json"));
        let body: Value = serde_json::from_slice(&c.body).expect("json");
        assert_eq!(body, serde_json::to_value(s).expect("json"));
        assert_eq!(body["type"], "realtime");
        for k in [
            "format",
            "threshold",
            "prefix_padding_ms",
            "silence_duration_ms",
        ] {
            assert!(!has_key(&body, k), "{k} in accept body {body}");
        }
    }
    let bodies: Vec<Value> = log[sessions.len()..]
        .iter()
        .map(|c| {
            if c.body.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&c.body).expect("json")
            }
        })
        .collect();
    assert_eq!(
        bodies,
        vec![
            json!({"status_code": 486}),
            json!({}),
            json!({"target_uri": "tel:+14155550123"}),
            json!({"target_uri": "sip:agent@example.com"}),
            Value::Null,
        ]
    );
    let hangup = log.last().expect("hangup");
    assert_eq!(hangup.content_length.as_deref(), Some("0"));
    export(&log);
}

#[tokio::test]
async fn status_codes_map_to_errors() {
    let (base, log) = fake_openai().await;
    let client = CallsClient::new(&base, "sk-test").expect("client");
    let s = &sessions()[0];

    let e = client.accept("rtc_gone", s).await.expect_err("gone");
    assert!(e.is_gone(), "{e:?}");
    assert_eq!(e.code(), "CALL_GONE");
    for r in [
        client.reject("rtc_gone", None).await,
        client.refer("rtc_gone", "tel:+14155550123").await,
        client.hangup("rtc_gone").await,
    ] {
        assert!(r.expect_err("gone").is_gone());
    }

    match client.accept("rtc_boom", s).await {
        Err(CallsError::Api {
            status,
            message,
            kind,
            code,
            op,
        }) => {
            assert_eq!((status, op), (500, "accept"));
            assert!(message.contains("server had an error"), "{message}");
            assert_eq!(kind.as_deref(), Some("server_error"));
            assert_eq!(code, None);
        }
        other => panic!("want Api, got {other:?}"),
    }
    match client.hangup("rtc_bad").await {
        Err(e @ CallsError::Api { .. }) => {
            assert_eq!(e.code(), "OPENAI_API_ERROR");
            let CallsError::Api {
                status,
                message,
                code,
                ..
            } = e
            else {
                unreachable!()
            };
            assert_eq!(status, 400);
            assert!(message.contains("turn_detection.threshold"));
            assert_eq!(code.as_deref(), Some("unknown_parameter"));
        }
        other => panic!("want Api, got {other:?}"),
    }
    match client.reject("rtc_html", Some(486)).await {
        Err(CallsError::Api {
            status, message, ..
        }) => {
            assert_eq!(status, 502);
            assert!(message.contains("Bad Gateway"));
        }
        other => panic!("want Api, got {other:?}"),
    }

    // refused locally, never sent
    let before = log.lock().expect("log").len();
    for r in [
        client.reject("rtc_1", Some(200)).await,
        client.reject("rtc_1", Some(700)).await,
        client.refer("rtc_1", "https://example.com").await,
        client.refer("rtc_1", "tel:").await,
        client.refer("rtc_1", "tel:+1 415").await,
        client.hangup("../../models").await,
        client
            .accept(
                "rtc_1",
                &sessions()[0].clone().with_max_output_tokens(Some(0)),
            )
            .await,
    ] {
        assert_eq!(r.expect_err("invalid").code(), "INVALID_REQUEST");
    }
    assert_eq!(log.lock().expect("log").len(), before);
}

#[tokio::test]
async fn timeouts_and_unreachable() {
    let (base, _log) = fake_openai().await;
    let client = CallsClient::with_timeouts(
        &base,
        "sk-test",
        Duration::from_millis(200),
        Duration::from_millis(300),
    )
    .expect("client");
    let started = std::time::Instant::now();
    let e = client.hangup("rtc_slow").await.expect_err("timeout");
    assert_eq!(e.code(), "OPENAI_TIMEOUT", "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // a port nobody listens on
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let dead = CallsClient::new(&format!("http://127.0.0.1:{port}/v1"), "sk-test").expect("client");
    let e = dead.hangup("rtc_1").await.expect_err("unreachable");
    assert_eq!(e.code(), "OPENAI_UNREACHABLE", "{e:?}");
}

#[tokio::test]
async fn sideband_handshake_uses_call_id_and_bearer() {
    /// (query, OpenAI-Beta present, Authorization) of the handshake.
    type Handshake = (Option<String>, bool, Option<String>);
    let seen: Arc<Mutex<Option<Handshake>>> = Arc::default();
    let s2 = seen.clone();
    let app = Router::new().route(
        "/v1/realtime",
        any(
            move |ws: WebSocketUpgrade, RawQuery(q): RawQuery, headers: HeaderMap| {
                let seen = s2.clone();
                async move {
                    *seen.lock().expect("seen") = Some((
                        q,
                        headers.contains_key("openai-beta"),
                        headers
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned),
                    ));
                    ws.on_upgrade(|_socket| async {})
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let base = format!("ws://{addr}/v1/realtime");
    let socket = voxbridge_realtime::connect_sideband(&base, "rtc_test_0123456789", "sk-side")
        .await
        .expect("sideband");
    drop(socket);
    let (q, beta, auth) = seen.lock().expect("seen").clone().expect("handshake seen");
    assert_eq!(q.as_deref(), Some("call_id=rtc_test_0123456789"));
    assert!(!beta);
    assert_eq!(auth.as_deref(), Some("Bearer sk-side"));
}
