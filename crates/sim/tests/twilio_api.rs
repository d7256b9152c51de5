//! The Twilio REST API emulator against a small in-test "voxbridge-like" server
//! (voice webhook answering `<Connect><Stream>`, a media WebSocket that plays
//! nothing, and status / AMD / recording callback endpoints).
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use voxbridge_sim::caller::{CallEnd, CallerStep};
use voxbridge_sim::twilio_api::*;
use voxbridge_twilio::rest::{Auth, CreateCall, TwilioClient};
use voxbridge_twilio::signature::validate_signature;

const ACCT: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "emulator_test_token";
const KEY_SID: &str = "SK0123456789abcdef0123456789abcdef";
const KEY_SECRET: &str = "key_secret";
const FROM: &str = "+14155550100";
const TO: &str = "+14155550199";
const DONE: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------
// The in-test server

#[derive(Clone, Debug)]
struct Hit {
    method: String,
    path: String,
    query: String,
    signature: Option<String>,
    /// Body form for POST, query pairs for GET.
    form: Vec<(String, String)>,
}

impl Hit {
    fn param(&self, k: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Debug, Default)]
struct WsSession {
    signature: Option<String>,
    msgs: Vec<Value>,
    closed: bool,
}

impl WsSession {
    fn events(&self) -> Vec<String> {
        self.msgs
            .iter()
            .map(|m| m["event"].as_str().unwrap_or("?").to_string())
            .collect()
    }
}

#[derive(Default)]
struct Log {
    hits: Vec<Hit>,
    ws: Vec<WsSession>,
}

#[derive(Clone)]
struct App {
    port: u16,
    log: Arc<Mutex<Log>>,
    /// The server closes the media stream after this long.
    close_after: Option<Duration>,
}

impl App {
    async fn start(close_after: Option<Duration>) -> App {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let app = App {
            port,
            log: Arc::default(),
            close_after,
        };
        let router = Router::new()
            .route("/media", axum::routing::get(media))
            .fallback(http_hit)
            .with_state(app.clone());
        tokio::spawn(async move {
            axum::serve(l, router).await.unwrap();
        });
        app
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn hits(&self, path: &str) -> Vec<Hit> {
        let log = self.log.lock().unwrap();
        log.hits
            .iter()
            .filter(|h| h.path == path)
            .cloned()
            .collect()
    }

    fn ws(&self) -> Vec<WsSession> {
        self.log.lock().unwrap().ws.clone()
    }

    /// Wait until a media session has received `start`.
    async fn wait_stream_started(&self) {
        for _ in 0..500 {
            if self
                .ws()
                .iter()
                .any(|s| s.events().contains(&"start".to_string()))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the media stream never started");
    }

    /// Check the signature of a POST hit on this server (URL = http://127.0.0.1:PORT/path).
    fn assert_signed(&self, h: &Hit) {
        let url = self.url(&h.path);
        let sig = h.signature.as_deref().expect("no X-Twilio-Signature");
        assert!(
            validate_signature(TOKEN, &url, &h.form, sig),
            "bad signature on {} {:?}",
            h.path,
            h.form
        );
    }
}

fn twiml(port: u16) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="wss://127.0.0.1:{port}/media"><Parameter name="x" value="1"/></Stream></Connect></Response>"#
    )
}

async fn http_hit(
    State(app): State<App>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = uri.query().unwrap_or_default().to_string();
    let form: Vec<(String, String)> = if method == Method::GET {
        url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect()
    } else {
        url::form_urlencoded::parse(&body).into_owned().collect()
    };
    let path = uri.path().to_string();
    app.log.lock().unwrap().hits.push(Hit {
        method: method.to_string(),
        path: path.clone(),
        query,
        signature: headers
            .get("x-twilio-signature")
            .map(|v| v.to_str().unwrap().to_string()),
        form,
    });
    match path.as_str() {
        "/voice" => ([("content-type", "text/xml")], twiml(app.port)).into_response(),
        "/say" => (
            [("content-type", "text/xml")],
            "<Response><Say>Goodbye</Say><Hangup/></Response>",
        )
            .into_response(),
        "/broken" => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        _ => axum::http::StatusCode::NO_CONTENT.into_response(),
    }
}

async fn media(State(app): State<App>, headers: HeaderMap, ws: WebSocketUpgrade) -> Response {
    let signature = headers
        .get("x-twilio-signature")
        .map(|v| v.to_str().unwrap().to_string());
    ws.on_upgrade(move |socket| media_session(app, signature, socket))
}

async fn media_session(app: App, signature: Option<String>, mut socket: WebSocket) {
    let idx = {
        let mut log = app.log.lock().unwrap();
        log.ws.push(WsSession {
            signature,
            ..WsSession::default()
        });
        log.ws.len() - 1
    };
    let close_at = app
        .close_after
        .map(|d| tokio::time::Instant::now() + d)
        .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(close_at) => {
                let _ = socket.send(Message::Close(None)).await;
                while let Some(Ok(_)) = socket.recv().await {}
                break;
            }
            m = socket.recv() => match m {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    app.log.lock().unwrap().ws[idx].msgs.push(v);
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            }
        }
    }
    app.log.lock().unwrap().ws[idx].closed = true;
}

// ---------------------------------------------------------------------------
// Helpers

struct Env {
    em: TwilioEmulator,
    app: App,
    http: reqwest::Client,
}

async fn env_with(
    close_after: Option<Duration>,
    f: impl FnOnce(&mut TwilioEmulatorConfig, &App),
) -> Env {
    let app = App::start(close_after).await;
    let mut cfg = TwilioEmulatorConfig {
        account_sid: ACCT.into(),
        auth_token: TOKEN.into(),
        api_keys: vec![(KEY_SID.into(), KEY_SECRET.into())],
        default_script: vec![CallerStep::Silence { ms: 400 }],
        ring_ms: 100,
        ..TwilioEmulatorConfig::default()
    };
    f(&mut cfg, &app);
    let em = TwilioEmulator::start(cfg).await.unwrap();
    Env {
        em,
        app,
        http: reqwest::Client::new(),
    }
}

async fn env() -> Env {
    env_with(None, |_, _| {}).await
}

impl Env {
    fn calls_url(&self) -> String {
        format!(
            "{}/2010-04-01/Accounts/{ACCT}/Calls.json",
            self.em.base_url()
        )
    }

    fn call_url(&self, sid: &str) -> String {
        format!(
            "{}/2010-04-01/Accounts/{ACCT}/Calls/{sid}.json",
            self.em.base_url()
        )
    }

    async fn post(&self, url: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let r = self
            .http
            .post(url)
            .basic_auth(ACCT, Some(TOKEN))
            .form(form)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    async fn get(&self, url: &str) -> (u16, Value) {
        let r = self
            .http
            .get(url)
            .basic_auth(ACCT, Some(TOKEN))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    /// Create a call to `to` with the voice Url on the app, plus `extra` params; returns the sid.
    async fn create(&self, to: &str, extra: &[(&str, &str)]) -> String {
        let voice = self.app.url("/voice");
        let mut form = vec![("To", to), ("From", FROM), ("Url", voice.as_str())];
        form.extend_from_slice(extra);
        let (status, body) = self.post(&self.calls_url(), &form).await;
        assert_eq!(status, 201, "{body}");
        body["sid"].as_str().unwrap().to_string()
    }
}

fn assert_twilio_error(status: u16, body: &Value, want_status: u16, code: u64) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], want_status, "{body}");
    assert_eq!(
        body["more_info"],
        format!("https://www.twilio.com/docs/errors/{code}")
    );
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
}

const ALL_EVENTS: [(&str, &str); 4] = [
    ("StatusCallbackEvent", "initiated"),
    ("StatusCallbackEvent", "ringing"),
    ("StatusCallbackEvent", "answered"),
    ("StatusCallbackEvent", "completed"),
];

// ---------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn answered_call_full_lifecycle() {
    let e = env().await;
    let status_url = e.app.url("/status");
    let voice = e.app.url("/voice");
    let mut form = vec![
        ("To", TO),
        ("From", FROM),
        ("Url", voice.as_str()),
        ("StatusCallback", status_url.as_str()),
        ("StatusCallbackMethod", "POST"),
    ];
    form.extend_from_slice(&ALL_EVENTS);
    let (status, body) = e.post(&e.calls_url(), &form).await;
    assert_eq!(status, 201, "{body}");
    let sid = body["sid"].as_str().unwrap().to_string();
    assert!(sid.starts_with("CA") && sid.len() == 34, "{sid}");
    assert_eq!(body["status"], "queued");
    assert_eq!(body["to"], TO);
    assert_eq!(body["from"], FROM);
    assert_eq!(body["direction"], "outbound-api");
    assert_eq!(body["account_sid"], ACCT);
    assert_eq!(body["api_version"], "2010-04-01");
    assert_eq!(
        body["uri"],
        format!("/2010-04-01/Accounts/{ACCT}/Calls/{sid}.json")
    );
    assert!(body["duration"].is_null());

    let call = e.em.wait_call_done(&sid, DONE).await.expect("call done");
    assert_eq!(call.status, "completed");
    assert_eq!(
        call.statuses(),
        ["queued", "initiated", "ringing", "in-progress", "completed"]
    );
    assert!(call.error.is_none(), "{:?}", call.error);
    let report = call.report.as_ref().expect("media report");
    assert_eq!(report.end, CallEnd::Hangup);
    assert_eq!(report.custom_parameters, [("x".into(), "1".into())]);
    assert_eq!(report.call_sid, sid);

    // Status callbacks as the server saw them.
    let hits = e.app.hits("/status");
    let statuses: Vec<&str> = hits
        .iter()
        .map(|h| h.param("CallStatus").unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["initiated", "ringing", "in-progress", "completed"]
    );
    for (i, h) in hits.iter().enumerate() {
        e.app.assert_signed(h);
        assert_eq!(h.method, "POST");
        assert_eq!(h.param("SequenceNumber"), Some(i.to_string().as_str()));
        assert_eq!(h.param("CallSid"), Some(sid.as_str()));
        assert_eq!(h.param("AccountSid"), Some(ACCT));
        assert_eq!(h.param("ApiVersion"), Some("2010-04-01"));
        assert_eq!(h.param("Direction"), Some("outbound-api"));
        assert_eq!(h.param("From"), Some(FROM));
        assert_eq!(h.param("To"), Some(TO));
        assert_eq!(h.param("Caller"), Some(FROM));
        assert_eq!(h.param("Called"), Some(TO));
        assert_eq!(h.param("CallbackSource"), Some("call-progress-events"));
        let ts = h.param("Timestamp").unwrap();
        assert!(ts.ends_with(" +0000") && ts.contains(", "), "{ts}");
    }
    let completed = &hits[3];
    let secs: u64 = completed.param("CallDuration").unwrap().parse().unwrap();
    assert!((1..=3).contains(&secs), "CallDuration {secs}");
    assert_eq!(completed.param("Duration"), Some("1"));
    assert_eq!(
        call.status_callbacks().len(),
        4,
        "the emulator records them too"
    );
    assert!(call.status_callbacks().iter().all(|c| c.ok()));

    // The voice webhook: signed, Twilio's fields for an answered outbound call.
    let voice_hits = e.app.hits("/voice");
    assert_eq!(voice_hits.len(), 1);
    let v = &voice_hits[0];
    e.app.assert_signed(v);
    assert_eq!(v.param("CallStatus"), Some("in-progress"));
    assert_eq!(v.param("Direction"), Some("outbound-api"));
    assert_eq!(v.param("CallSid"), Some(sid.as_str()));
    assert_eq!(v.param("From"), Some(FROM));
    assert_eq!(v.param("To"), Some(TO));
    assert_eq!(v.param("AnsweredBy"), None);

    // The media stream: signed over the TwiML's wss URL, Twilio's messages, stop at the end.
    let ws = e.app.ws();
    assert_eq!(ws.len(), 1);
    let s = &ws[0];
    let stream_url = format!("wss://127.0.0.1:{}/media", e.app.port);
    assert!(validate_signature(
        TOKEN,
        &stream_url,
        &[],
        s.signature.as_deref().unwrap()
    ));
    let ev = s.events();
    assert_eq!(&ev[..2], ["connected", "start"]);
    assert_eq!(ev.last().map(String::as_str), Some("stop"));
    assert!(ev.iter().filter(|e| *e == "media").count() >= 15, "{ev:?}");
    assert_eq!(s.msgs[1]["start"]["callSid"], sid.as_str());
    assert_eq!(s.msgs[1]["start"]["customParameters"]["x"], "1");

    // Fetch after the end.
    let (st, r) = e.get(&e.call_url(&sid)).await;
    assert_eq!(st, 200);
    assert_eq!(r["status"], "completed");
    assert_eq!(r["duration"], secs.to_string());
    assert!(
        r["start_time"]
            .as_str()
            .is_some_and(|t| t.ends_with("+0000"))
    );
    assert!(r["end_time"].as_str().is_some());

    // The REST requests were recorded.
    let reqs = e.em.requests();
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(
        reqs[0].path,
        format!("/2010-04-01/Accounts/{ACCT}/Calls.json")
    );
    assert_eq!(reqs[0].auth_user.as_deref(), Some(ACCT));
    assert_eq!(reqs[0].status, 201);
    let events: Vec<&str> = reqs[0]
        .form
        .iter()
        .filter(|(k, _)| k == "StatusCallbackEvent")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(events, ["initiated", "ringing", "answered", "completed"]);
    e.em.shutdown().await;
}

#[tokio::test]
async fn only_requested_events_are_sent_and_completed_always() {
    let e = env().await;
    let status_url = e.app.url("/status");
    let sid = e
        .create(
            TO,
            &[
                ("StatusCallback", &status_url),
                ("StatusCallbackEvent", "ringing"),
            ],
        )
        .await;
    e.em.wait_call_done(&sid, DONE).await.unwrap();
    let hits = e.app.hits("/status");
    let got: Vec<(&str, &str)> = hits
        .iter()
        .map(|h| {
            (
                h.param("CallStatus").unwrap(),
                h.param("SequenceNumber").unwrap(),
            )
        })
        .collect();
    assert_eq!(got, [("ringing", "0"), ("completed", "1")]);
}

#[tokio::test]
async fn busy_no_answer_and_failed_outcomes() {
    let e = env_with(None, |c, _| {
        c.outcomes = vec![
            ("+15550000001".into(), Outcome::Busy),
            ("+15550000002".into(), Outcome::NoAnswer),
            ("+15550000003".into(), Outcome::Fail),
        ];
    })
    .await;
    let status_url = e.app.url("/status");
    let mut extra = vec![("StatusCallback", status_url.as_str())];
    extra.extend_from_slice(&ALL_EVENTS);
    for (to, final_status, timeline) in [
        (
            "+15550000001",
            "busy",
            &["queued", "initiated", "ringing", "busy"][..],
        ),
        (
            "+15550000002",
            "no-answer",
            &["queued", "initiated", "ringing", "no-answer"][..],
        ),
        (
            "+15550000003",
            "failed",
            &["queued", "initiated", "failed"][..],
        ),
    ] {
        let sid = e.create(to, &extra).await;
        let call = e.em.wait_call_done(&sid, DONE).await.unwrap();
        assert_eq!(call.status, final_status);
        assert_eq!(call.statuses(), timeline);
        assert!(call.report.is_none());
        assert_eq!(call.duration, Some(0));
        let hits: Vec<Hit> = e
            .app
            .hits("/status")
            .into_iter()
            .filter(|h| h.param("CallSid") == Some(sid.as_str()))
            .collect();
        let statuses: Vec<&str> = hits
            .iter()
            .map(|h| h.param("CallStatus").unwrap())
            .collect();
        let mut want: Vec<&str> = timeline[1..].to_vec();
        want.retain(|s| *s != "queued");
        assert_eq!(statuses, want, "{to}");
        let last = hits.last().unwrap();
        e.app.assert_signed(last);
        assert_eq!(last.param("CallDuration"), Some("0"));
        let (_, r) = e.get(&e.call_url(&sid)).await;
        assert_eq!(r["status"], final_status);
    }
    // No voice webhook and no media for unanswered calls.
    assert!(e.app.hits("/voice").is_empty());
    assert!(e.app.ws().is_empty());
}

#[tokio::test]
async fn auth_and_validation_errors() {
    let e = env().await;
    let voice = e.app.url("/voice");
    let good = [("To", TO), ("From", FROM), ("Url", voice.as_str())];

    // Wrong password, unknown user, no header.
    for (user, pass) in [(ACCT, "nope"), ("ACother", TOKEN), (KEY_SID, "nope")] {
        let r = e
            .http
            .post(e.calls_url())
            .basic_auth(user, Some(pass))
            .form(&good)
            .send()
            .await
            .unwrap();
        let st = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        assert_twilio_error(st, &body, 401, 20003);
    }
    let r = e.http.post(e.calls_url()).form(&good).send().await.unwrap();
    assert!(r.headers().get("www-authenticate").is_some());
    let st = r.status().as_u16();
    assert_twilio_error(st, &r.json().await.unwrap(), 401, 20003);

    // An API key works.
    let r = e
        .http
        .post(e.calls_url())
        .basic_auth(KEY_SID, Some(KEY_SECRET))
        .form(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);

    // Another account in the path.
    let other = format!(
        "{}/2010-04-01/Accounts/AC{}/Calls.json",
        e.em.base_url(),
        "f".repeat(32)
    );
    let (st, body) = e.post(&other, &good).await;
    assert_twilio_error(st, &body, 404, 20404);

    // Bad To / From.
    for to in ["4155550199", "+1415", "+1415555019x", ""] {
        let (st, body) = e
            .post(
                &e.calls_url(),
                &[("To", to), ("From", FROM), ("Url", &voice)],
            )
            .await;
        assert_twilio_error(st, &body, 400, 21211);
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("Invalid 'To' Phone Number")
        );
    }
    let (st, body) = e.post(&e.calls_url(), &[("To", TO), ("Url", &voice)]).await;
    assert_twilio_error(st, &body, 400, 21212);
    let (st, body) = e
        .post(
            &e.calls_url(),
            &[("To", TO), ("From", "bogus"), ("Url", &voice)],
        )
        .await;
    assert_twilio_error(st, &body, 400, 21212);

    // Url and Twiml: both, neither.
    let (st, body) = e
        .post(
            &e.calls_url(),
            &[
                ("To", TO),
                ("From", FROM),
                ("Url", &voice),
                ("Twiml", "<Response/>"),
            ],
        )
        .await;
    assert_twilio_error(st, &body, 400, 21205);
    let (st, body) = e.post(&e.calls_url(), &[("To", TO), ("From", FROM)]).await;
    assert_twilio_error(st, &body, 400, 21205);

    // Unknown call.
    let missing = format!("CA{}", "0".repeat(32));
    let (st, body) = e.get(&e.call_url(&missing)).await;
    assert_twilio_error(st, &body, 404, 20404);
    let (st, body) = e
        .post(&e.call_url(&missing), &[("Status", "completed")])
        .await;
    assert_twilio_error(st, &body, 404, 20404);

    // Every request was recorded with its status; only one call was created.
    let reqs = e.em.requests();
    assert!(
        reqs.iter()
            .any(|r| r.status == 401 && r.auth_user.is_none())
    );
    assert_eq!(reqs.iter().filter(|r| r.status == 201).count(), 1);
    assert_eq!(e.em.calls().len(), 1);
    let key_req = reqs.iter().find(|r| r.status == 201).unwrap();
    assert_eq!(key_req.auth_user.as_deref(), Some(KEY_SID));
}

#[tokio::test]
async fn hangup_by_update_mid_call() {
    let e = env_with(None, |c, _| {
        c.default_script = vec![CallerStep::Silence { ms: 20_000 }];
    })
    .await;
    let status_url = e.app.url("/status");
    let sid = e.create(TO, &[("StatusCallback", &status_url)]).await;
    e.app.wait_stream_started().await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Fetch mid-call.
    let (st, r) = e.get(&e.call_url(&sid)).await;
    assert_eq!(st, 200);
    assert_eq!(r["status"], "in-progress");
    assert!(r["duration"].is_null());
    assert!(r["start_time"].is_string());
    assert!(r["end_time"].is_null());

    let t0 = std::time::Instant::now();
    let (st, r) = e.post(&e.call_url(&sid), &[("Status", "completed")]).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["status"], "completed");
    let call = e.em.wait_call_done(&sid, DONE).await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert_eq!(call.status, "completed");
    assert_eq!(call.updates, [vec![("Status".into(), "completed".into())]]);
    let report = call.report.unwrap();
    assert_eq!(report.end, CallEnd::Hangup);
    let ws = e.app.ws();
    assert_eq!(ws[0].events().last().map(String::as_str), Some("stop"));
    assert!(ws[0].closed);
    let hits = e.app.hits("/status");
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].param("CallStatus"), Some("completed"));
    assert_eq!(hits[0].param("SequenceNumber"), Some("0"));

    // Updating an ended call: a hangup is a no-op, a redirect is refused.
    let (st, r) = e.post(&e.call_url(&sid), &[("Status", "completed")]).await;
    assert_eq!((st, r["status"].as_str()), (200, Some("completed")));
    let (st, r) = e.post(&e.call_url(&sid), &[("Twiml", "<Response/>")]).await;
    assert_twilio_error(st, &r, 400, 21220);
}

#[tokio::test]
async fn official_rust_client_create_fetch_hangup() {
    let e = env_with(None, |c, _| {
        c.default_script = vec![CallerStep::Silence { ms: 20_000 }];
    })
    .await;
    let client = TwilioClient::new(
        &e.em.base_url(),
        ACCT,
        Auth::ApiKey {
            key_sid: KEY_SID.into(),
            secret: KEY_SECRET.into(),
        },
    )
    .unwrap();
    let created = client
        .create_call(&CreateCall {
            to: TO.into(),
            from: FROM.into(),
            url: Some(e.app.url("/voice")),
            status_callback: Some(e.app.url("/status")),
            status_callback_events: ALL_EVENTS.iter().map(|(_, v)| v.to_string()).collect(),
            machine_detection: Some("Enable".into()),
            ..CreateCall::default()
        })
        .await
        .unwrap();
    assert_eq!(created.status, "queued");
    e.em.wait_status(&created.sid, "in-progress", DONE)
        .await
        .unwrap();
    let fetched = client.fetch_call(&created.sid).await.unwrap();
    assert_eq!(fetched.status, "in-progress");
    assert_eq!(fetched.answered_by.as_deref(), Some("human"));
    e.app.wait_stream_started().await;
    let hung = client.hangup(&created.sid).await.unwrap();
    assert_eq!(hung.status, "completed");
    let call = e.em.wait_call_done(&created.sid, DONE).await.unwrap();
    assert_eq!(call.status, "completed");
    // Sync AMD: the voice webhook and the answered callback carry AnsweredBy.
    assert_eq!(e.app.hits("/voice")[0].param("AnsweredBy"), Some("human"));
    let answered = &e.app.hits("/status")[2];
    assert_eq!(answered.param("CallStatus"), Some("in-progress"));
    assert_eq!(answered.param("AnsweredBy"), Some("human"));
}

#[tokio::test]
async fn cancel_while_ringing() {
    let e = env_with(None, |c, _| c.ring_ms = 5_000).await;
    let status_url = e.app.url("/status");
    let mut extra = vec![("StatusCallback", status_url.as_str())];
    extra.extend_from_slice(&ALL_EVENTS);
    let sid = e.create(TO, &extra).await;
    e.em.wait_status(&sid, "ringing", DONE).await.unwrap();
    let (st, r) = e.post(&e.call_url(&sid), &[("Status", "canceled")]).await;
    assert_eq!((st, r["status"].as_str()), (200, Some("canceled")));
    let call =
        e.em.wait_call_done(&sid, Duration::from_secs(2))
            .await
            .unwrap();
    assert_eq!(
        call.statuses(),
        ["queued", "initiated", "ringing", "canceled"]
    );
    let statuses: Vec<String> = e
        .app
        .hits("/status")
        .iter()
        .map(|h| h.param("CallStatus").unwrap().to_string())
        .collect();
    assert_eq!(statuses, ["initiated", "ringing", "canceled"]);
    assert!(e.app.hits("/voice").is_empty());

    // Status=completed on a ringing call cancels it too.
    let sid = e.create(TO, &[]).await;
    e.em.wait_status(&sid, "ringing", DONE).await.unwrap();
    let (_, r) = e.post(&e.call_url(&sid), &[("Status", "completed")]).await;
    assert_eq!(r["status"], "canceled");
}

#[tokio::test]
async fn dial_redirect_ends_the_stream() {
    let e = env_with(None, |c, _| {
        c.default_script = vec![CallerStep::Silence { ms: 20_000 }];
    })
    .await;
    let sid = e.create(TO, &[]).await;
    e.app.wait_stream_started().await;
    let dial = "<Response><Dial>+14155550123</Dial></Response>";
    let (st, r) = e.post(&e.call_url(&sid), &[("Twiml", dial)]).await;
    assert_eq!(st, 200, "{r}");
    let call = e.em.wait_call_done(&sid, DONE).await.unwrap();
    assert_eq!(call.updates, [vec![("Twiml".into(), dial.into())]]);
    assert_eq!(call.status, "completed");
    assert_eq!(
        e.app.ws()[0].events().last().map(String::as_str),
        Some("stop")
    );
}

#[tokio::test]
async fn server_closing_the_stream_completes_the_call() {
    let e = env_with(Some(Duration::from_millis(300)), |c, _| {
        c.default_script = vec![CallerStep::Silence { ms: 20_000 }];
    })
    .await;
    let status_url = e.app.url("/status");
    let sid = e.create(TO, &[("StatusCallback", &status_url)]).await;
    let call = e.em.wait_call_done(&sid, DONE).await.unwrap();
    assert_eq!(call.status, "completed");
    assert_eq!(call.report.unwrap().end, CallEnd::ServerClosed);
    assert_eq!(
        e.app.hits("/status")[0].param("CallStatus"),
        Some("completed")
    );
}

#[tokio::test]
async fn recording_callback() {
    let e = env().await;
    let rec = e.app.url("/recording");
    let sid = e
        .create(
            TO,
            &[
                ("Record", "true"),
                ("RecordingChannels", "dual"),
                ("RecordingStatusCallback", &rec),
                ("RecordingStatusCallbackEvent", "completed"),
            ],
        )
        .await;
    let call = e.em.wait_call_done(&sid, DONE).await.unwrap();
    let hits = e.app.hits("/recording");
    assert_eq!(hits.len(), 1);
    let h = &hits[0];
    e.app.assert_signed(h);
    let re = call.recording_sid.unwrap();
    assert!(re.starts_with("RE") && re.len() == 34);
    assert_eq!(h.param("AccountSid"), Some(ACCT));
    assert_eq!(h.param("CallSid"), Some(sid.as_str()));
    assert_eq!(h.param("RecordingSid"), Some(re.as_str()));
    assert_eq!(
        h.param("RecordingUrl").unwrap(),
        format!("https://api.twilio.com/2010-04-01/Accounts/{ACCT}/Recordings/{re}")
    );
    assert_eq!(h.param("RecordingStatus"), Some("completed"));
    assert_eq!(h.param("RecordingChannels"), Some("2"));
    assert_eq!(h.param("RecordingSource"), Some("OutboundAPI"));
    assert_eq!(
        h.param("RecordingDuration").unwrap(),
        call.duration.unwrap().to_string()
    );
    assert!(h.param("RecordingStartTime").unwrap().ends_with("+0000"));

    // No recording for an unanswered call.
    let e = env_with(None, |c, _| {
        c.outcomes = vec![(TO.into(), Outcome::Busy)];
    })
    .await;
    let rec = e.app.url("/recording");
    let sid = e
        .create(TO, &[("Record", "true"), ("RecordingStatusCallback", &rec)])
        .await;
    let call = e.em.wait_call_done(&sid, DONE).await.unwrap();
    assert!(call.recording_sid.is_none());
    assert!(e.app.hits("/recording").is_empty());
}

#[tokio::test]
async fn async_amd_callback() {
    let e = env_with(None, |c, _| {
        c.outcomes = vec![("+15550000009".into(), Outcome::Machine)];
        c.default_script = vec![CallerStep::Silence { ms: 600 }];
    })
    .await;
    let amd = e.app.url("/amd");
    let extra = [
        ("MachineDetection", "Enable"),
        ("AsyncAmd", "true"),
        ("AsyncAmdStatusCallback", amd.as_str()),
        ("AsyncAmdStatusCallbackMethod", "POST"),
    ];
    for (to, want) in [(TO, "human"), ("+15550000009", "machine_start")] {
        let sid = e.create(to, &extra).await;
        let call = e.em.wait_call_done(&sid, DONE).await.unwrap();
        assert_eq!(call.answered_by.as_deref(), Some(want));
        let hits: Vec<Hit> = e
            .app
            .hits("/amd")
            .into_iter()
            .filter(|h| h.param("CallSid") == Some(sid.as_str()))
            .collect();
        assert_eq!(hits.len(), 1, "{to}");
        e.app.assert_signed(&hits[0]);
        assert_eq!(hits[0].param("AnsweredBy"), Some(want));
        assert_eq!(hits[0].param("AccountSid"), Some(ACCT));
        assert!(hits[0].param("MachineDetectionDuration").is_some());
        // Async AMD: the voice webhook does not wait for (or carry) the result.
        let voice = e.app.hits("/voice");
        assert_eq!(voice.last().unwrap().param("AnsweredBy"), None);
        assert_eq!(
            call.callbacks_of(CallbackKind::AsyncAmd)[0].status,
            Some(204)
        );
    }
}

#[tokio::test]
async fn twiml_param_https_rewrite_get_callbacks_and_failures() {
    // Twiml instead of Url: the stream host is reached through connect_base; an
    // https StatusCallback goes to webhook_base, signed over the https URL; a GET
    // callback is signed over the URL with its query.
    let e = env_with(None, |c, app| {
        c.connect_base = Some(format!("ws://127.0.0.1:{}", app.port));
        c.webhook_base = Some(app.url(""));
    })
    .await;
    let tw = twiml(e.app.port);
    let (st, body) = e
        .post(
            &e.calls_url(),
            &[
                ("To", TO),
                ("From", FROM),
                ("Twiml", tw.as_str()),
                (
                    "StatusCallback",
                    "https://voice.example.com/status?tenant=a",
                ),
                ("StatusCallbackMethod", "GET"),
                ("StatusCallbackEvent", "answered"),
                ("AsyncAmdStatusCallback", "http://127.0.0.1:1/unreachable"),
                ("MachineDetection", "Enable"),
                ("AsyncAmd", "true"),
            ],
        )
        .await;
    assert_eq!(st, 201, "{body}");
    let sid = body["sid"].as_str().unwrap().to_string();
    let call = e.em.wait_call_done(&sid, DONE).await.unwrap();
    assert_eq!(call.status, "completed");
    assert!(call.report.is_some(), "{:?}", call.error);
    assert!(e.app.hits("/voice").is_empty());
    let hits = e.app.hits("/status");
    assert_eq!(hits.len(), 2);
    for h in &hits {
        assert_eq!(h.method, "GET");
        assert!(h.query.starts_with("tenant=a&"), "{}", h.query);
        let url = format!("https://voice.example.com/status?{}", h.query);
        assert!(validate_signature(
            TOKEN,
            &url,
            &[],
            h.signature.as_deref().unwrap()
        ));
    }
    assert_eq!(hits[0].param("CallStatus"), Some("in-progress"));
    assert_eq!(hits[1].param("CallStatus"), Some("completed"));
    // The unreachable AMD callback is recorded as failed.
    let amd = call.callbacks_of(CallbackKind::AsyncAmd);
    assert_eq!(amd.len(), 1);
    assert!(amd[0].status.is_none() && amd[0].error.is_some());

    // An https voice Url is reached through webhook_base too, and signed over the https URL.
    let (st, body) = e
        .post(
            &e.calls_url(),
            &[
                ("To", TO),
                ("From", FROM),
                ("Url", "https://voice.example.com/voice?lead=42"),
            ],
        )
        .await;
    assert_eq!(st, 201);
    let sid = body["sid"].as_str().unwrap().to_string();
    let call = e.em.wait_call_done(&sid, DONE).await.unwrap();
    assert!(call.report.is_some(), "{:?}", call.error);
    let v = &e.app.hits("/voice")[0];
    assert_eq!(v.query, "lead=42");
    assert!(validate_signature(
        TOKEN,
        "https://voice.example.com/voice?lead=42",
        &v.form,
        v.signature.as_deref().unwrap()
    ));
}

#[tokio::test]
async fn webhook_errors_and_non_stream_twiml_complete_the_call() {
    let e = env().await;
    let status_url = e.app.url("/status");
    for path in ["/broken", "/say"] {
        let url = e.app.url(path);
        let (st, body) = e
            .post(
                &e.calls_url(),
                &[
                    ("To", TO),
                    ("From", FROM),
                    ("Url", url.as_str()),
                    ("StatusCallback", status_url.as_str()),
                ],
            )
            .await;
        assert_eq!(st, 201);
        let sid = body["sid"].as_str().unwrap().to_string();
        let call = e.em.wait_call_done(&sid, DONE).await.unwrap();
        assert_eq!(call.status, "completed", "{path}");
        assert!(call.error.is_some(), "{path}");
        assert!(call.report.is_none());
    }
    // Unreachable status callback: recorded as failed, call still completes.
    let sid = e
        .create(TO, &[("StatusCallback", "http://127.0.0.1:1/status")])
        .await;
    let call = e.em.wait_call_done(&sid, DONE).await.unwrap();
    assert_eq!(call.status, "completed");
    let cbs = call.status_callbacks();
    assert_eq!(cbs.len(), 1);
    assert!(!cbs[0].ok());
}

#[tokio::test]
async fn list_calls() {
    let e = env_with(None, |c, _| {
        c.outcomes = vec![(TO.into(), Outcome::Busy)];
    })
    .await;
    let a = e.create(TO, &[]).await;
    let b = e.create(TO, &[]).await;
    let (st, r) = e.get(&e.calls_url()).await;
    assert_eq!(st, 200);
    let sids: Vec<&str> = r["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["sid"].as_str().unwrap())
        .collect();
    assert_eq!(sids, [b.as_str(), a.as_str()]);
    e.em.wait_call_done(&a, DONE).await.unwrap();
    e.em.wait_call_done(&b, DONE).await.unwrap();
    e.em.shutdown().await;
}
