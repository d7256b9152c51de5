//! `voxbridge_twilio::rest` against an in-process fake Twilio API (axum on 127.0.0.1:0).
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use voxbridge_twilio::rest::{
    Auth, CallResource, CreateCall, RetryPolicy, TwilioClient, TwilioError, UpdateCall,
};

const ACCOUNT: &str = "AC00000000000000000000000000000000";
const CALL: &str = "CA11111111111111111111111111111111";

// ------------------------------------------------------------------------------------------
// Fake Twilio
// ------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Captured {
    method: String,
    path: String,
    query: Option<String>,
    authorization: Option<String>,
    content_type: Option<String>,
    accept: Option<String>,
    body: String,
}

impl Captured {
    fn form(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(self.body.as_bytes())
            .into_owned()
            .collect()
    }
    fn basic(&self) -> String {
        let h = self.authorization.as_deref().unwrap();
        let b64 = h.strip_prefix("Basic ").unwrap();
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
        )
        .unwrap()
    }
}

#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Duration,
}

impl Reply {
    fn json(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: vec![("content-type", "application/json".to_owned())],
            body: body.to_owned(),
            delay: Duration::ZERO,
        }
    }
    fn call(status: &str) -> Self {
        Self::json(201, &call_json(status))
    }
    fn header(mut self, k: &'static str, v: &str) -> Self {
        self.headers.push((k, v.to_owned()));
        self
    }
    fn delayed(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

fn call_json(status: &str) -> String {
    format!(
        r#"{{"sid":"{CALL}","account_sid":"{ACCOUNT}","status":"{status}","to":"+14155550100","from":"+14155550199","direction":"outbound-api","duration":null,"answered_by":null,"start_time":null,"end_time":null}}"#
    )
}

#[derive(Clone, Default)]
struct Shared {
    captured: Arc<Mutex<Vec<Captured>>>,
    script: Arc<Mutex<VecDeque<Reply>>>,
    /// Replayed once the script is exhausted (default: 201 + a queued call).
    fallback: Arc<Mutex<Option<Reply>>>,
}

struct Fake {
    base: String,
    shared: Shared,
}

impl Fake {
    async fn start(script: Vec<Reply>) -> Self {
        let shared = Shared {
            script: Arc::new(Mutex::new(script.into())),
            ..Shared::default()
        };
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            base: format!("http://{addr}"),
            shared,
        }
    }
    fn always(&self, r: Reply) {
        *self.shared.fallback.lock().unwrap() = Some(r);
    }
    fn captured(&self) -> Vec<Captured> {
        self.shared.captured.lock().unwrap().clone()
    }
    fn client(&self) -> TwilioClient {
        token_client(&self.base)
    }
}

async fn handle(
    State(st): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    st.captured.lock().unwrap().push(Captured {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        authorization: h("authorization"),
        content_type: h("content-type"),
        accept: h("accept"),
        body: String::from_utf8(body.to_vec()).unwrap(),
    });
    let next = st.script.lock().unwrap().pop_front();
    let reply = next
        .or_else(|| st.fallback.lock().unwrap().clone())
        .unwrap_or_else(|| Reply::call("queued"));
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut hm = HeaderMap::new();
    for (k, v) in reply.headers {
        hm.insert(
            HeaderName::from_static(k),
            HeaderValue::from_str(&v).unwrap(),
        );
    }
    (StatusCode::from_u16(reply.status).unwrap(), hm, reply.body).into_response()
}

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_secs(4),
    }
}

fn token_client(base: &str) -> TwilioClient {
    TwilioClient::new(
        base,
        ACCOUNT,
        Auth::AccountToken {
            auth_token: "secret".into(),
        },
    )
    .unwrap()
    .with_retry(fast_retry())
}

fn full_request() -> CreateCall {
    CreateCall {
        to: "+14155550100".into(),
        from: "+14155550199".into(),
        url: Some("https://voice.example.com/twilio/voice?call_id=abc".into()),
        twiml: None,
        method: Some("POST".into()),
        status_callback: Some("https://voice.example.com/twilio/status".into()),
        status_callback_events: ["initiated", "ringing", "answered", "completed"]
            .map(String::from)
            .to_vec(),
        status_callback_method: Some("POST".into()),
        timeout_s: Some(30),
        time_limit_s: Some(600),
        machine_detection: Some("Enable".into()),
        async_amd: Some(true),
        async_amd_status_callback: Some("https://voice.example.com/twilio/amd".into()),
        record: true,
        recording_channels: Some("dual".into()),
        recording_status_callback: Some("https://voice.example.com/twilio/recording".into()),
        recording_status_callback_events: vec!["in-progress".into(), "completed".into()],
    }
}

fn minimal_request() -> CreateCall {
    CreateCall {
        to: "+14155550100".into(),
        from: "+14155550199".into(),
        url: Some("https://voice.example.com/twilio/voice".into()),
        ..CreateCall::default()
    }
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn calls_path() -> String {
    format!("/2010-04-01/Accounts/{ACCOUNT}/Calls.json")
}

fn call_path() -> String {
    format!("/2010-04-01/Accounts/{ACCOUNT}/Calls/{CALL}.json")
}

// ------------------------------------------------------------------------------------------
// Create: exact request
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn create_call_sends_exact_form_and_account_basic_auth() {
    let fake = Fake::start(vec![]).await;
    let call = fake.client().create_call(&full_request()).await.unwrap();
    assert_eq!(call.sid, CALL);
    assert_eq!(call.status, "queued");
    assert_eq!(call.direction.as_deref(), Some("outbound-api"));

    let cap = fake.captured();
    assert_eq!(cap.len(), 1);
    let c = &cap[0];
    assert_eq!(c.method, "POST");
    assert_eq!(c.path, calls_path());
    assert_eq!(c.query, None);
    assert_eq!(
        c.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(c.accept.as_deref(), Some("application/json"));
    assert_eq!(c.basic(), format!("{ACCOUNT}:secret"));
    let expected = pairs(&[
        ("To", "+14155550100"),
        ("From", "+14155550199"),
        ("Url", "https://voice.example.com/twilio/voice?call_id=abc"),
        ("Method", "POST"),
        ("StatusCallback", "https://voice.example.com/twilio/status"),
        ("StatusCallbackEvent", "initiated"),
        ("StatusCallbackEvent", "ringing"),
        ("StatusCallbackEvent", "answered"),
        ("StatusCallbackEvent", "completed"),
        ("StatusCallbackMethod", "POST"),
        ("Timeout", "30"),
        ("TimeLimit", "600"),
        ("MachineDetection", "Enable"),
        ("AsyncAmd", "true"),
        (
            "AsyncAmdStatusCallback",
            "https://voice.example.com/twilio/amd",
        ),
        ("Record", "true"),
        ("RecordingChannels", "dual"),
        (
            "RecordingStatusCallback",
            "https://voice.example.com/twilio/recording",
        ),
        ("RecordingStatusCallbackEvent", "in-progress"),
        ("RecordingStatusCallbackEvent", "completed"),
    ]);
    assert_eq!(c.form(), expected);
    assert_eq!(full_request().form(), expected);
    // Repeated keys on the wire, not a joined value; `+` and `?` percent-encoded.
    assert!(c.body.starts_with("To=%2B14155550100&From=%2B14155550199&"));
    assert!(c.body.contains(
        "StatusCallbackEvent=initiated&StatusCallbackEvent=ringing&StatusCallbackEvent=answered&StatusCallbackEvent=completed"
    ), "{}", c.body);
    assert!(
        c.body
            .contains("Url=https%3A%2F%2Fvoice.example.com%2Ftwilio%2Fvoice%3Fcall_id%3Dabc")
    );
}

#[tokio::test]
async fn create_call_with_api_key_uses_key_sid_as_basic_user() {
    let fake = Fake::start(vec![]).await;
    let client = TwilioClient::new(
        &format!("{}/", fake.base), // trailing slash tolerated
        ACCOUNT,
        Auth::ApiKey {
            key_sid: "SK0123456789abcdef0123456789abcdef".into(),
            secret: "key-secret".into(),
        },
    )
    .unwrap();
    client.create_call(&minimal_request()).await.unwrap();
    let c = &fake.captured()[0];
    assert_eq!(c.path, calls_path(), "the account SID stays in the path");
    assert_eq!(c.basic(), "SK0123456789abcdef0123456789abcdef:key-secret");
    assert_eq!(
        c.form(),
        pairs(&[
            ("To", "+14155550100"),
            ("From", "+14155550199"),
            ("Url", "https://voice.example.com/twilio/voice"),
        ])
    );
}

#[tokio::test]
async fn create_call_with_inline_twiml_and_false_booleans() {
    let fake = Fake::start(vec![]).await;
    let twiml = r#"<Response><Connect><Stream url="wss://voice.example.com/media"><Parameter name="call_id" value="a&amp;b"/></Stream></Connect></Response>"#;
    let req = CreateCall {
        url: None,
        twiml: Some(twiml.into()),
        async_amd: Some(false),
        record: false,
        ..minimal_request()
    };
    fake.client().create_call(&req).await.unwrap();
    assert_eq!(
        fake.captured()[0].form(),
        pairs(&[
            ("To", "+14155550100"),
            ("From", "+14155550199"),
            ("Twiml", twiml),
            ("AsyncAmd", "false"),
        ])
    );
}

#[tokio::test]
async fn url_xor_twiml_and_other_local_validation() {
    let fake = Fake::start(vec![]).await;
    let client = fake.client();
    let both = CreateCall {
        twiml: Some("<Response/>".into()),
        ..minimal_request()
    };
    let neither = CreateCall {
        url: None,
        ..minimal_request()
    };
    let bad_event = CreateCall {
        status_callback_events: vec!["initiated,ringing".into()],
        ..minimal_request()
    };
    let relative_url = CreateCall {
        url: Some("/twilio/voice".into()),
        ..minimal_request()
    };
    let no_to = CreateCall {
        to: " ".into(),
        ..minimal_request()
    };
    let bad_amd = CreateCall {
        machine_detection: Some("enable".into()),
        ..minimal_request()
    };
    let huge_twiml = CreateCall {
        url: None,
        twiml: Some(format!("<Response>{}</Response>", "x".repeat(4000))),
        ..minimal_request()
    };
    for (name, req) in [
        ("both", both),
        ("neither", neither),
        ("bad_event", bad_event),
        ("relative_url", relative_url),
        ("no_to", no_to),
        ("bad_amd", bad_amd),
        ("huge_twiml", huge_twiml),
    ] {
        let err = client.create_call(&req).await.unwrap_err();
        assert!(
            matches!(err, TwilioError::InvalidRequest(_)),
            "{name}: {err:?}"
        );
        assert_eq!(err.code(), "INVALID_REQUEST");
    }
    assert!(fake.captured().is_empty(), "nothing may reach Twilio");
}

// ------------------------------------------------------------------------------------------
// Retries
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn create_retries_503_then_succeeds_on_second_attempt() {
    let fake = Fake::start(vec![Reply::json(
        503,
        r#"{"code":20503,"message":"Service Unavailable","status":503}"#,
    )])
    .await;
    let call = fake.client().create_call(&minimal_request()).await.unwrap();
    assert_eq!(call.sid, CALL);
    let cap = fake.captured();
    assert_eq!(cap.len(), 2);
    assert_eq!(cap[0].body, cap[1].body, "the retry resends the same form");
}

#[tokio::test]
async fn create_honours_retry_after_on_429() {
    let fake = Fake::start(vec![
        Reply::json(
            429,
            r#"{"code":20429,"message":"Too Many Requests","status":429}"#,
        )
        .header("retry-after", "1"),
    ])
    .await;
    let t0 = Instant::now();
    let call = fake.client().create_call(&minimal_request()).await.unwrap();
    let elapsed = t0.elapsed();
    assert_eq!(call.status, "queued");
    assert_eq!(fake.captured().len(), 2);
    // base_delay is 10 ms: only Retry-After explains a wait of a second.
    assert!(elapsed >= Duration::from_millis(950), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
}

#[tokio::test]
async fn retry_after_is_capped_and_429_exhaustion_is_rate_limited() {
    let fake = Fake::start(vec![]).await;
    fake.always(
        Reply::json(
            429,
            r#"{"code":20429,"message":"Too Many Requests","status":429}"#,
        )
        .header("retry-after", "3600"),
    );
    let client = fake.client().with_retry(RetryPolicy {
        max_attempts: 2,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(200),
    });
    let t0 = Instant::now();
    let err = client.create_call(&minimal_request()).await.unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(fake.captured().len(), 2);
    assert_eq!(err.code(), "TWILIO_RATE_LIMITED");
    assert_eq!(err.http_status(), Some(429));
    assert_eq!(err.twilio_code(), Some(20429));
}

#[tokio::test]
async fn invalid_to_400_is_not_retried_and_maps_to_invalid_phone() {
    let fake = Fake::start(vec![Reply::json(
        400,
        r#"{"code":21211,"message":"Invalid 'To' Phone Number: +1415555","more_info":"https://www.twilio.com/docs/errors/21211","status":400}"#,
    )])
    .await;
    let err = fake
        .client()
        .create_call(&minimal_request())
        .await
        .unwrap_err();
    assert_eq!(fake.captured().len(), 1, "4xx must not be retried");
    assert_eq!(err.code(), "INVALID_PHONE");
    assert_eq!(
        err,
        TwilioError::Api {
            status: 400,
            code: Some(21211),
            message: "Invalid 'To' Phone Number: +1415555".into(),
            more_info: Some("https://www.twilio.com/docs/errors/21211".into()),
        }
    );
}

#[tokio::test]
async fn auth_failure_is_not_retried() {
    let fake = Fake::start(vec![Reply::json(
        401,
        r#"{"code":20003,"message":"Authenticate","more_info":"https://www.twilio.com/docs/errors/20003","status":401}"#,
    )])
    .await;
    let err = fake.client().fetch_call(CALL).await.unwrap_err();
    assert_eq!(fake.captured().len(), 1);
    assert_eq!(err.code(), "TWILIO_AUTH_FAILED");
}

#[tokio::test]
async fn connection_refused_is_retried_then_http_error() {
    // Bind, learn the port, close: connecting now fails with ECONNREFUSED.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let base = format!("http://127.0.0.1:{port}");
    let client = token_client(&base).with_retry(RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(80),
        max_delay: Duration::from_secs(4),
    });
    let t0 = Instant::now();
    let err = client.create_call(&minimal_request()).await.unwrap_err();
    let elapsed = t0.elapsed();
    assert!(matches!(err, TwilioError::Http(_)), "{err:?}");
    assert_eq!(err.code(), "TWILIO_UNAVAILABLE");
    assert!(err.to_string().contains("attempt 3"), "{err}");
    // Two backoffs of at least 40 ms and 80 ms (equal jitter) prove the two retries.
    assert!(elapsed >= Duration::from_millis(120), "{elapsed:?}");

    let single = token_client(&base).with_retry(RetryPolicy::none());
    let err = single.fetch_call(CALL).await.unwrap_err();
    assert!(err.to_string().contains("attempt 1"), "{err}");
}

#[tokio::test]
async fn create_is_not_replayed_after_500_but_fetch_is() {
    let fake = Fake::start(vec![]).await;
    fake.always(Reply::json(
        500,
        r#"{"code":20500,"message":"Internal Server Error","status":500}"#,
    ));
    let client = fake.client();
    let err = client.create_call(&minimal_request()).await.unwrap_err();
    assert_eq!(err.code(), "TWILIO_UNAVAILABLE");
    assert_eq!(
        fake.captured().len(),
        1,
        "a 500 on create may have executed"
    );

    let err = client.fetch_call(CALL).await.unwrap_err();
    assert_eq!(err.http_status(), Some(500));
    assert_eq!(
        fake.captured().len(),
        1 + 3,
        "fetch is retried up to 3 attempts"
    );
}

#[tokio::test]
async fn create_is_not_replayed_after_read_timeout_but_fetch_is() {
    let fake = Fake::start(vec![]).await;
    fake.always(Reply::call("queued").delayed(Duration::from_millis(1500)));
    let client = fake
        .client()
        .with_timeouts(Duration::from_secs(1), Duration::from_millis(300))
        .unwrap();
    let err = client.create_call(&minimal_request()).await.unwrap_err();
    assert!(matches!(err, TwilioError::Http(_)), "{err:?}");
    assert!(err.to_string().contains("timed out"), "{err}");
    assert_eq!(
        fake.captured().len(),
        1,
        "a timed-out create may have executed"
    );

    let err = client.fetch_call(CALL).await.unwrap_err();
    assert_eq!(err.code(), "TWILIO_UNAVAILABLE");
    assert_eq!(fake.captured().len(), 1 + 3);
}

#[tokio::test]
async fn persistent_503_gives_up_after_max_attempts() {
    let fake = Fake::start(vec![]).await;
    fake.always(Reply::json(503, "upstream overloaded"));
    let err = fake
        .client()
        .create_call(&minimal_request())
        .await
        .unwrap_err();
    assert_eq!(fake.captured().len(), 3);
    assert_eq!(err.code(), "TWILIO_UNAVAILABLE");
    assert!(err.to_string().contains("upstream overloaded"), "{err}");
}

// ------------------------------------------------------------------------------------------
// Update / hangup / fetch
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn update_hangup_and_fetch_paths() {
    let fake = Fake::start(vec![
        Reply::json(200, &call_json("in-progress")),
        Reply::json(200, &call_json("completed")),
        Reply::json(200, &call_json("completed")),
        Reply::json(200, &call_json("canceled")),
    ])
    .await;
    let client = fake.client();

    let twiml = "<Response><Say>Transferring you now.</Say><Dial>+14155550123</Dial></Response>";
    let r = client
        .update_call(
            CALL,
            &UpdateCall {
                twiml: Some(twiml.into()),
                ..UpdateCall::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r.status, "in-progress");

    let r = client.hangup(CALL).await.unwrap();
    assert_eq!(r.status, "completed");

    let r = client.fetch_call(CALL).await.unwrap();
    assert_eq!(r.status, "completed");

    let r = client
        .update_call(
            CALL,
            &UpdateCall {
                status: Some("canceled".into()),
                ..UpdateCall::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r.status, "canceled");

    let cap = fake.captured();
    assert_eq!(cap.len(), 4);
    for c in &cap {
        assert_eq!(c.path, call_path());
        assert_eq!(c.basic(), format!("{ACCOUNT}:secret"));
    }
    assert_eq!(cap[0].method, "POST");
    assert_eq!(cap[0].form(), pairs(&[("Twiml", twiml)]));
    assert_eq!(cap[1].method, "POST");
    assert_eq!(cap[1].form(), pairs(&[("Status", "completed")]));
    assert_eq!(
        cap[1].content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(cap[2].method, "GET");
    assert_eq!(cap[2].body, "");
    assert_eq!(cap[2].content_type, None);
    assert_eq!(cap[3].form(), pairs(&[("Status", "canceled")]));
}

#[tokio::test]
async fn update_validation_and_unsafe_sids() {
    let fake = Fake::start(vec![]).await;
    let client = fake.client();
    for req in [
        UpdateCall::default(),
        UpdateCall {
            status: Some("hangup".into()),
            ..UpdateCall::default()
        },
        UpdateCall {
            twiml: Some("<Response/>".into()),
            url: Some("https://voice.example.com/x".into()),
            ..UpdateCall::default()
        },
    ] {
        let err = client.update_call(CALL, &req).await.unwrap_err();
        assert_eq!(err.code(), "INVALID_REQUEST", "{req:?}");
    }
    for sid in ["", "../../Accounts", "CA1?x=1", "CA1/Recordings"] {
        let err = client.fetch_call(sid).await.unwrap_err();
        assert_eq!(err.code(), "INVALID_REQUEST", "{sid:?}");
        let err = client.hangup(sid).await.unwrap_err();
        assert_eq!(err.code(), "INVALID_REQUEST", "{sid:?}");
    }
    assert!(fake.captured().is_empty());
    assert!(
        TwilioClient::new(
            "ftp://x",
            ACCOUNT,
            Auth::AccountToken {
                auth_token: "t".into()
            }
        )
        .is_err()
    );
    assert!(
        TwilioClient::new(
            "https://api.twilio.com",
            "AC/..",
            Auth::AccountToken {
                auth_token: "t".into()
            }
        )
        .is_err()
    );
    assert!(
        TwilioClient::new(
            "https://api.twilio.com",
            ACCOUNT,
            Auth::AccountToken {
                auth_token: String::new()
            }
        )
        .is_err()
    );
}

#[tokio::test]
async fn not_found_maps_to_twilio_not_found() {
    let fake = Fake::start(vec![Reply::json(
        404,
        r#"{"code":20404,"message":"The requested resource /2010-04-01/Accounts/AC.../Calls/CA....json was not found","more_info":"https://www.twilio.com/docs/errors/20404","status":404}"#,
    )])
    .await;
    let err = fake.client().hangup(CALL).await.unwrap_err();
    assert_eq!(err.code(), "TWILIO_NOT_FOUND");
    assert_eq!(fake.captured().len(), 1);
}

// ------------------------------------------------------------------------------------------
// Decoding
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn full_twilio_call_resource_with_unknown_fields_decodes() {
    // Shape of a real 2010-04-01 call resource, plus fields we have never seen.
    let body = format!(
        r#"{{"date_updated":"Tue, 14 Apr 2026 10:00:05 +0000","price_unit":"USD","parent_call_sid":null,
        "caller_name":null,"duration":"15","from":"+14155550199","to":"+14155550100","annotation":null,
        "answered_by":"human","sid":"{CALL}","queue_time":"0","price":"-0.01400","api_version":"2010-04-01",
        "status":"completed","direction":"outbound-api","start_time":"Tue, 14 Apr 2026 09:59:50 +0000",
        "date_created":"Tue, 14 Apr 2026 09:59:45 +0000","from_formatted":"(415) 555-0199","group_sid":null,
        "trunk_sid":null,"forwarded_from":null,"uri":"/2010-04-01/Accounts/{ACCOUNT}/Calls/{CALL}.json",
        "account_sid":"{ACCOUNT}","end_time":"Tue, 14 Apr 2026 10:00:05 +0000","to_formatted":"(415) 555-0100",
        "phone_number_sid":"PN00000000000000000000000000000000",
        "subresource_uris":{{"notifications":"/n.json","recordings":"/r.json"}},
        "brand_new_field":{{"nested":[1,2,3]}},"another":true}}"#
    );
    let fake = Fake::start(vec![Reply::json(200, &body)]).await;
    let r = fake.client().fetch_call(CALL).await.unwrap();
    assert_eq!(
        r,
        CallResource {
            sid: CALL.into(),
            status: "completed".into(),
            to: Some("+14155550100".into()),
            from: Some("+14155550199".into()),
            direction: Some("outbound-api".into()),
            duration: Some("15".into()),
            answered_by: Some("human".into()),
            date_created: Some("Tue, 14 Apr 2026 09:59:45 +0000".into()),
            start_time: Some("Tue, 14 Apr 2026 09:59:50 +0000".into()),
            end_time: Some("Tue, 14 Apr 2026 10:00:05 +0000".into()),
        }
    );
}

#[tokio::test]
async fn minimal_resource_and_numeric_duration_decode() {
    let fake = Fake::start(vec![
        Reply::json(201, r#"{"sid":"CA1","status":"queued"}"#),
        Reply::json(200, r#"{"sid":"CA1","status":"completed","duration":42}"#),
    ])
    .await;
    let client = fake.client();
    let r = client.create_call(&minimal_request()).await.unwrap();
    assert_eq!((r.sid.as_str(), r.to, r.duration), ("CA1", None, None));
    let r = client.fetch_call("CA1").await.unwrap();
    assert_eq!(r.duration.as_deref(), Some("42"));
}

#[tokio::test]
async fn garbage_success_body_is_bad_response() {
    let fake = Fake::start(vec![
        Reply::json(201, "<html>ok</html>"),
        Reply::json(201, r#"{"status":"queued"}"#),
    ])
    .await;
    let client = fake.client();
    for _ in 0..2 {
        let err = client.create_call(&minimal_request()).await.unwrap_err();
        assert!(matches!(err, TwilioError::Decode(_)), "{err:?}");
        assert_eq!(err.code(), "TWILIO_BAD_RESPONSE");
    }
    assert_eq!(fake.captured().len(), 2, "decode errors are not retried");
}
