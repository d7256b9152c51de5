//! Robustness: bad input on the media socket, missing `start`, bad stream
//! tokens, signature checks, model-side failures, prompt teardown, and
//! gap filling. Every test talks to a real server over loopback.

use crate::helpers::{AUTH_TOKEN, TestApp, eventually, sim_config, spawn_app, spawn_app_with};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, Stream, StreamExt};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use voxbridge::hub::{CallEvent, CallEventKind, Speaker};
use voxbridge::session::{BadPayload, MAX_GAP_FILL_MS, Uplink};
use voxbridge_sim::caller::{
    CONNECTED_MESSAGE, CallEnd, CallerStep, dtmf_message, fetch_twiml, media_message,
    media_signature, run_call, start_message, stop_message,
};
use voxbridge_sim::realtime::SimFaults;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
type WsTx = SplitSink<Ws, Message>;

const ACCOUNT_SID: &str = "AC00000000000000000000000000000000";
const CALL_SID: &str = "CA0123456789abcdef0123456789abcdef";

// ---------------------------------------------------------------------------
// Helpers

/// Open the media socket, signed with `signature` if given.
/// Err: (HTTP status of a rejected upgrade, error text).
async fn connect_media(
    app: &TestApp,
    signature: Option<&str>,
) -> Result<Ws, (Option<u16>, String)> {
    let mut req = app
        .ws("/twilio/media")
        .into_client_request()
        .map_err(|e| (None, e.to_string()))?;
    if let Some(sig) = signature {
        req.headers_mut().insert(
            "X-Twilio-Signature",
            HeaderValue::from_str(sig).map_err(|e| (None, e.to_string()))?,
        );
    }
    match tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    {
        Err(_) => Err((None, "handshake timed out".into())),
        Ok(Err(tungstenite::Error::Http(resp))) => Err((
            Some(resp.status().as_u16()),
            format!("HTTP {}", resp.status()),
        )),
        Ok(Err(e)) => Err((None, e.to_string())),
        Ok(Ok((ws, _))) => Ok(ws),
    }
}

/// A signed media socket for `app`.
async fn signed_media(app: &TestApp) -> Ws {
    connect_media(app, Some(&media_signature(AUTH_TOKEN, &app.stream_url())))
        .await
        .expect("signed media upgrade accepted")
}

async fn send(tx: &mut WsTx, text: impl Into<String>) {
    tx.send(Message::text(text.into()))
        .await
        .expect("send on the media socket");
}

/// How a socket ended, as the client saw it.
#[derive(Debug, Clone, PartialEq)]
enum Ending {
    /// A close frame (code, reason).
    Close(Option<(u16, String)>),
    /// The connection ended without a close frame (or failed).
    Dropped(String),
    /// Still open when we stopped waiting.
    StillOpen,
}

/// Read (and discard) frames until the socket ends or `within` passes.
async fn wait_end<S>(rx: &mut S, within: Duration) -> Ending
where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    let read = async {
        loop {
            match rx.next().await {
                None => return Ending::Dropped("end of stream".into()),
                Some(Err(e)) => return Ending::Dropped(e.to_string()),
                Some(Ok(Message::Close(f))) => {
                    return Ending::Close(f.map(|f| (u16::from(f.code), f.reason.to_string())));
                }
                Some(Ok(_)) => {}
            }
        }
    };
    tokio::time::timeout(within, read)
        .await
        .unwrap_or(Ending::StillOpen)
}

/// What a background reader saw on a socket.
#[derive(Debug, Default)]
struct Seen {
    texts: Vec<String>,
    ending: Option<Ending>,
}

fn spawn_reader(mut rx: SplitStream<Ws>) -> Arc<Mutex<Seen>> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let out = seen.clone();
    tokio::spawn(async move {
        loop {
            let ending = match rx.next().await {
                None => Ending::Dropped("end of stream".into()),
                Some(Err(e)) => Ending::Dropped(e.to_string()),
                Some(Ok(Message::Close(f))) => {
                    Ending::Close(f.map(|f| (u16::from(f.code), f.reason.to_string())))
                }
                Some(Ok(Message::Text(t))) => {
                    lock(&out).texts.push(t.to_string());
                    continue;
                }
                Some(Ok(_)) => continue,
            };
            lock(&out).ending = Some(ending);
            return;
        }
    });
    seen
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Every hub event with the instant it was received.
fn spawn_hub_log(app: &TestApp) -> Arc<Mutex<Vec<(Instant, CallEvent)>>> {
    let mut rx = app.state.hub.subscribe();
    let log = Arc::new(Mutex::new(Vec::new()));
    let out = log.clone();
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(ev) => lock(&out).push((Instant::now(), ev)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    log
}

fn temp_record_path() -> PathBuf {
    std::env::temp_dir().join(format!(
        "voxbridge-robustness-{}.jsonl",
        uuid::Uuid::new_v4()
    ))
}

/// The client events the simulator recorded for connection `conn`.
fn conn_events(path: &Path, conn: u64) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["conn"].as_u64() == Some(conn))
        .map(|v| v["event"].clone())
        .collect()
}

fn of_type<'a>(events: &'a [Value], ty: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["type"].as_str() == Some(ty))
        .collect()
}

/// The `audio` of each append, decoded (Err for invalid base64).
fn decoded_appends(events: &[Value]) -> Vec<Result<Vec<u8>, String>> {
    of_type(events, "input_audio_buffer.append")
        .into_iter()
        .map(|e| {
            let a = e["audio"].as_str().ok_or("audio is not a string")?;
            B64.decode(a).map_err(|e| e.to_string())
        })
        .collect()
}

fn dtmf_item_seen(events: &[Value], digit: char) -> bool {
    let needle = format!("[caller pressed {digit}]");
    of_type(events, "conversation.item.create")
        .iter()
        .any(|e| e.to_string().contains(&needle))
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> &'a str {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

/// A minimal HTTP/1.1 client: (status, body).
async fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &str,
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if method == "POST" {
        req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.expect("write request");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("read response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            } else if k == "content-length" {
                length = v.parse::<usize>().ok();
            }
        }
    }
    if chunked {
        let mut out = Vec::new();
        let mut b = &body[..];
        while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&b[..eol])
                    .split(';')
                    .next()
                    .unwrap_or("0")
                    .trim(),
                16,
            )
            .expect("chunk size");
            b = &b[eol + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&b[..size]);
            b = &b[size + 2..];
        }
        body = out;
    } else if let Some(n) = length {
        body.truncate(n);
    }
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn json_body(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("JSON body expected ({e}): {body}"))
}

/// A short exchange without barge-in: greeting, one caller turn, the reply.
fn normal_script() -> Vec<CallerStep> {
    vec![
        CallerStep::WaitAgentSpeaking { timeout_ms: 6_000 },
        CallerStep::WaitAgentQuiet {
            quiet_ms: 400,
            timeout_ms: 10_000,
        },
        CallerStep::Speak { ms: 1_200 },
        CallerStep::WaitAgentSpeaking { timeout_ms: 8_000 },
        CallerStep::WaitAgentQuiet {
            quiet_ms: 600,
            timeout_ms: 15_000,
        },
        CallerStep::Hangup,
    ]
}

fn quiet_frame(fill: u8) -> String {
    B64.encode([fill; 160])
}

// ---------------------------------------------------------------------------
// 1. Bad input on the media socket, with a normal call alongside

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_media_input_keeps_the_socket_and_spares_a_concurrent_call() {
    let record = temp_record_path();
    let mut cfg = sim_config();
    cfg.record_path = Some(record.clone());
    let app = spawn_app_with(cfg, &[("MAX_FRAME_BYTES", "4096")]).await;
    let hub = spawn_hub_log(&app);

    // The bad socket's webhook first, so its model connection is conn 0.
    let (_twiml, stream_url, params) = fetch_twiml(&app.caller(vec![]))
        .await
        .expect("voice webhook");
    assert!(
        eventually(Duration::from_secs(5), || app.sim.connections().len() == 1).await,
        "the webhook pre-connects the model"
    );
    let bad_conn = app.sim.connections()[0].conn;

    // A normal call runs alongside.
    let normal = tokio::spawn(run_call(app.caller(normal_script())));

    let ws = connect_media(&app, Some(&media_signature(AUTH_TOKEN, &stream_url)))
        .await
        .expect("signed upgrade");
    let (mut tx, rx) = ws.split();
    let seen = spawn_reader(rx);
    let sid = "MZbadbadbadbadbadbadbadbadbadbad0";

    // Before start.
    send(&mut tx, "{this is not json").await;
    send(&mut tx, "{}").await;
    send(
        &mut tx,
        r#"{"event":"wobble","streamSid":"MZx","wobble":{}}"#,
    )
    .await;
    let early = [0xEE_u8; 160];
    send(&mut tx, media_message(2, sid, 1, 20, &B64.encode(early))).await;
    // A valid start.
    send(&mut tx, start_message(sid, ACCOUNT_SID, CALL_SID, &params)).await;
    // After start.
    send(&mut tx, media_message(3, sid, 1, 20, "@@not*base64!!")).await;
    tx.send(Message::binary(vec![1_u8, 2, 3, 4]))
        .await
        .expect("send binary");
    send(
        &mut tx,
        format!(
            r#"{{"event":"media","sequenceNumber":"4","media":{{"track":"inbound","chunk":"1","timestamp":"soon","payload":"{}"}},"streamSid":"{sid}"}}"#,
            quiet_frame(0xEC)
        ),
    )
    .await;
    send(&mut tx, r#"{"event":"mystery","streamSid":"MZx"}"#).await;
    let valid: Vec<Vec<u8>> = (0..10_u8).map(|i| vec![0xF0 + i; 160]).collect();
    for (i, frame) in valid.iter().enumerate() {
        let n = i as u64 + 1;
        send(
            &mut tx,
            media_message(4 + n, sid, n, 20 * n, &B64.encode(frame)),
        )
        .await;
    }
    send(&mut tx, dtmf_message(20, sid, '5')).await;

    // Frames are handled in order: once the DTMF item reached the model,
    // everything before it has been handled.
    assert!(
        eventually(Duration::from_secs(10), || dtmf_item_seen(
            &conn_events(&record, bad_conn),
            '5'
        ))
        .await,
        "the DTMF item reaches the model; events: {:?}",
        conn_events(&record, bad_conn)
    );
    assert_eq!(
        lock(&seen).ending,
        None,
        "the server must keep the socket open through bad input"
    );
    let events = conn_events(&record, bad_conn);
    let appends = decoded_appends(&events);
    assert!(
        appends.iter().all(Result::is_ok),
        "no append with invalid base64 reaches the model: {appends:?}"
    );
    let appends: Vec<Vec<u8>> = appends.into_iter().filter_map(Result::ok).collect();
    assert!(
        !appends.iter().any(|a| a == &early.to_vec()),
        "media sent before start must not reach the model"
    );
    assert_eq!(
        appends, valid,
        "the model receives exactly the valid frames, in order"
    );

    // The call still works: agent audio (the greeting) reaches the socket.
    assert!(
        eventually(Duration::from_secs(10), || lock(&seen).texts.iter().any(
            |t| {
                serde_json::from_str::<Value>(t)
                    .is_ok_and(|v| v["event"] == "media" && v["streamSid"] == sid)
            }
        ))
        .await,
        "agent audio reaches the socket after the bad input"
    );
    assert_eq!(lock(&seen).ending, None, "still open");

    // Now a frame larger than MAX_FRAME_BYTES: the server closes the socket.
    let big = media_message(21, sid, 11, 220, &B64.encode(vec![0xFF_u8; 6_000]));
    assert!(big.len() > 4096);
    let _ = tx.send(Message::text(big)).await;
    assert!(
        eventually(Duration::from_secs(5), || lock(&seen).ending.is_some()).await,
        "the server closes the socket after an oversized frame"
    );
    let ending = lock(&seen).ending.clone();
    match &ending {
        Some(Ending::Close(Some((code, _)))) => {
            assert_eq!(*code, 1009, "oversized frame: close 1009, got {ending:?}");
        }
        Some(Ending::Dropped(_)) => {}
        other => panic!("oversized frame: expected close 1009 or a dropped socket, got {other:?}"),
    }
    assert!(
        eventually(Duration::from_secs(3), || app
            .sim
            .connections()
            .iter()
            .any(|c| c.conn == bad_conn && c.closed_at.is_some()))
        .await,
        "the bad call's model socket is closed"
    );

    // The normal call is unaffected.
    let report = tokio::time::timeout(Duration::from_secs(60), normal)
        .await
        .expect("normal call finishes")
        .expect("task")
        .expect("normal call runs");
    assert_eq!(report.end, CallEnd::Hangup, "normal call: {report:?}");
    assert!(report.heard_bytes > 0, "normal call heard agent audio");
    assert!(
        report.protocol_errors.is_empty(),
        "normal call: {:?}",
        report.protocol_errors
    );
    assert_eq!(report.wait_timeouts, 0, "normal call waits all satisfied");
    assert!(
        report.bursts >= 2,
        "greeting and reply heard: {}",
        report.bursts
    );
    let call_id = param(&report.custom_parameters, "call_id").to_owned();
    let transcripts = |speaker: Speaker| {
        lock(&hub).iter().any(|(_, e)| {
            e.call_id == call_id
                && matches!(&e.kind, CallEventKind::Transcript { speaker: s, .. } if *s == speaker)
        })
    };
    assert!(
        eventually(Duration::from_secs(3), || transcripts(Speaker::Agent)
            && transcripts(Speaker::Caller))
        .await,
        "the normal call's transcripts (agent and caller) arrive"
    );
    let _ = std::fs::remove_file(&record);
}

// ---------------------------------------------------------------------------
// 2. No start

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_without_start_is_closed_with_1008() {
    let app = spawn_app_with(sim_config(), &[("START_TIMEOUT_MS", "300")]).await;
    let ws = signed_media(&app).await;
    let t0 = Instant::now();
    let (mut tx, mut rx) = ws.split();
    // Keep sending frames that are not `start`: they must not postpone the deadline.
    let sender = tokio::spawn(async move {
        if tx.send(Message::text(CONNECTED_MESSAGE)).await.is_err() {
            return;
        }
        for n in 1..200_u64 {
            let m = media_message(n + 1, "MZnostart", n, 20 * n, &quiet_frame(0xFF));
            if tx.send(Message::text(m)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let ending = wait_end(&mut rx, Duration::from_secs(5)).await;
    let elapsed = t0.elapsed();
    sender.abort();
    match &ending {
        Ending::Close(Some((code, _))) => assert_eq!(*code, 1008, "{ending:?}"),
        other => panic!("expected close 1008, got {other:?}"),
    }
    assert!(
        elapsed >= Duration::from_millis(200),
        "closed by the start timeout, not at once ({elapsed:?})"
    );
    assert!(
        elapsed < Duration::from_millis(300 + 1_500),
        "closed within START_TIMEOUT_MS + margin ({elapsed:?})"
    );
    assert!(app.sim.connections().is_empty(), "no model socket");
}

// ---------------------------------------------------------------------------
// 3. Bad stream tokens

async fn start_and_wait_end(app: &TestApp, params: &[(String, String)]) -> Ending {
    let ws = signed_media(app).await;
    let (mut tx, mut rx) = ws.split();
    let sid = "MZtoken0000000000000000000000000";
    send(&mut tx, CONNECTED_MESSAGE).await;
    send(&mut tx, start_message(sid, ACCOUNT_SID, CALL_SID, params)).await;
    // The server may already have closed: sending may fail.
    let _ = tx
        .send(Message::text(media_message(
            2,
            sid,
            1,
            20,
            &quiet_frame(0xF3),
        )))
        .await;
    wait_end(&mut rx, Duration::from_secs(5)).await
}

fn assert_policy_close(ending: &Ending, what: &str) {
    match ending {
        Ending::Close(Some((code, _))) => assert_eq!(*code, 1008, "{what}: {ending:?}"),
        other => panic!("{what}: expected close 1008, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_with_a_bad_token_is_closed_and_uses_no_model() {
    let app = spawn_app().await;

    // A call id the server never issued: no model socket at all.
    let forged = vec![
        (
            "call_id".to_owned(),
            "0190aaaa-0000-7000-8000-000000000000".to_owned(),
        ),
        (
            "token".to_owned(),
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned(),
        ),
    ];
    assert_policy_close(&start_and_wait_end(&app, &forged).await, "forged call");
    assert_policy_close(&start_and_wait_end(&app, &[]).await, "no parameters");
    assert!(
        app.sim.connections().is_empty(),
        "no model socket for a forged call: {:?}",
        app.sim.connections()
    );

    // A real call id with a wrong, a missing, or a mismatched token.
    let (_, _, params) = fetch_twiml(&app.caller(vec![]))
        .await
        .expect("voice webhook");
    let call_id = param(&params, "call_id").to_owned();
    let token = param(&params, "token").to_owned();
    assert!(!call_id.is_empty() && !token.is_empty(), "{params:?}");
    let mut wrong_token = token.clone();
    let last = if wrong_token.ends_with('A') { "B" } else { "A" };
    wrong_token.pop();
    wrong_token.push_str(last);
    let wrong = vec![
        ("call_id".to_owned(), call_id.clone()),
        ("token".to_owned(), wrong_token),
    ];
    let missing = vec![("call_id".to_owned(), call_id.clone())];
    let no_id = vec![("token".to_owned(), token.clone())];
    let other_id = vec![
        ("call_id".to_owned(), format!("{call_id}x")),
        ("token".to_owned(), token.clone()),
    ];
    assert_policy_close(&start_and_wait_end(&app, &wrong).await, "wrong token");
    assert_policy_close(&start_and_wait_end(&app, &missing).await, "missing token");
    assert_policy_close(&start_and_wait_end(&app, &no_id).await, "missing call id");
    assert_policy_close(
        &start_and_wait_end(&app, &other_id).await,
        "token of another call",
    );

    // Only the webhook's pre-connected model socket exists, and nothing was
    // sent on it but the initial session.update.
    assert_eq!(
        app.sim.connections().len(),
        1,
        "{:?}",
        app.sim.connections()
    );
    let types: Vec<String> = app
        .sim
        .events()
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("?").to_owned())
        .collect();
    assert!(
        types.iter().all(|t| t == "session.update"),
        "rejected sockets must not use the model: {types:?}"
    );

    // The rejected attempts did not consume the call: the right token still works.
    let ws = signed_media(&app).await;
    let (mut tx, mut rx) = ws.split();
    let sid = "MZgood00000000000000000000000000";
    send(&mut tx, start_message(sid, ACCOUNT_SID, CALL_SID, &params)).await;
    send(&mut tx, media_message(2, sid, 1, 20, &quiet_frame(0xF7))).await;
    assert!(
        eventually(Duration::from_secs(5), || !app
            .sim
            .events_of_type("input_audio_buffer.append")
            .is_empty())
        .await,
        "the call is still claimable with its token"
    );
    assert_eq!(
        app.sim.connections().len(),
        1,
        "the pre-connected socket is used"
    );
    send(&mut tx, stop_message(3, sid, ACCOUNT_SID, CALL_SID)).await;
    // The server completes the closing handshake after stop.
    assert!(
        matches!(
            wait_end(&mut rx, Duration::from_secs(3)).await,
            Ending::Close(Some((1000, _)))
        ),
        "close 1000 after stop"
    );

    // Replaying the same start later (a captured, validly signed socket)
    // must not open another model session on our key.
    assert_policy_close(&start_and_wait_end(&app, &params).await, "replayed start");
    assert_eq!(
        app.sim.connections().len(),
        1,
        "a replayed start opened a model socket: {:?}",
        app.sim.connections()
    );
}

// ---------------------------------------------------------------------------
// 4. Signatures, unknown routes, health

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_routes_and_health() {
    let app = spawn_app().await;
    let form = "CallSid=CA1&From=%2B15005550006&To=%2B15005550001";
    let params: Vec<(String, String)> = vec![
        ("CallSid".into(), "CA1".into()),
        ("From".into(), "+15005550006".into()),
        ("To".into(), "+15005550001".into()),
    ];
    let voice_url = format!("{}/twilio/voice", app.public_url);
    let good_sig = voxbridge_twilio::signature::compute_signature(AUTH_TOKEN, &voice_url, &params);

    // Missing signature.
    let (status, body) = http_request(app.port, "POST", "/twilio/voice", &[], form).await;
    assert_eq!(status, 403, "{body}");
    let v = json_body(&body);
    assert_eq!(v["code"], "SIGNATURE_MISSING", "{v}");
    assert!(v["error"].as_str().is_some_and(|s| !s.is_empty()), "{v}");

    // Wrong signature.
    let (status, body) = http_request(
        app.port,
        "POST",
        "/twilio/voice",
        &[("X-Twilio-Signature", "bm90IGEgc2lnbmF0dXJl".into())],
        form,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let v = json_body(&body);
    assert_eq!(v["code"], "SIGNATURE_INVALID", "{v}");
    assert!(v["error"].as_str().is_some_and(|s| !s.is_empty()), "{v}");

    // A valid signature over other parameters (tampered body).
    let (status, body) = http_request(
        app.port,
        "POST",
        "/twilio/voice",
        &[("X-Twilio-Signature", good_sig.clone())],
        "CallSid=CA1&From=%2B19999999999&To=%2B15005550001",
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(json_body(&body)["code"], "SIGNATURE_INVALID");
    assert!(
        app.sim.connections().is_empty() && app.state.active_calls() == 0,
        "a rejected webhook must not pre-connect a model"
    );

    // Control: the correct signature is accepted.
    let (status, body) = http_request(
        app.port,
        "POST",
        "/twilio/voice",
        &[("X-Twilio-Signature", good_sig)],
        form,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("<Stream"), "{body}");

    // The media upgrade without / with a bad signature: HTTP 403.
    match connect_media(&app, None).await {
        Err((Some(403), _)) => {}
        Err(e) => panic!("unsigned upgrade: expected HTTP 403, got {e:?}"),
        Ok(_) => panic!("unsigned upgrade accepted"),
    }
    match connect_media(&app, Some("bm90IGEgc2lnbmF0dXJl")).await {
        Err((Some(403), _)) => {}
        Err(e) => panic!("badly signed upgrade: expected HTTP 403, got {e:?}"),
        Ok(_) => panic!("badly signed upgrade accepted"),
    }
    // Signed over another URL (another path) is refused.
    let wrong_url_sig = media_signature(AUTH_TOKEN, &app.http("/twilio/other"));
    match connect_media(&app, Some(&wrong_url_sig)).await {
        Err((Some(403), _)) => {}
        Err(e) => panic!("upgrade signed over the wrong URL: expected 403, got {e:?}"),
        Ok(_) => panic!("upgrade signed over the wrong URL accepted"),
    }
    // The Stream URL with PUBLIC_URL's own scheme is accepted too (which
    // scheme Twilio signs the handshake with is not verified on a real call).
    let public_scheme_sig = media_signature(AUTH_TOKEN, &app.http("/twilio/media"));
    match connect_media(&app, Some(&public_scheme_sig)).await {
        Ok(ws) => drop(ws),
        Err(e) => panic!("upgrade signed over the PUBLIC_URL form refused: {e:?}"),
    }
    // Control: correctly signed.
    let ws = signed_media(&app).await;
    drop(ws);
    // Not a WebSocket handshake at all, or a broken one: 400 with a JSON error.
    let (status, body) = http_request(app.port, "GET", "/twilio/media", &[], "").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(json_body(&body)["code"], "WEBSOCKET_REQUIRED", "{body}");
    let upgrade = |version: &str, key: &str| {
        vec![
            ("Connection", "Upgrade".to_string()),
            ("Upgrade", "websocket".to_string()),
            ("Sec-WebSocket-Version", version.to_string()),
            ("Sec-WebSocket-Key", key.to_string()),
        ]
    };
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    for (headers, code) in [
        (upgrade("8", key), "WEBSOCKET_VERSION"),
        (upgrade("13", "bm90IDE2"), "WEBSOCKET_KEY"),
    ] {
        let (status, body) = http_request(app.port, "GET", "/twilio/media", &headers, "").await;
        assert_eq!(status, 400, "{body}");
        let v = json_body(&body);
        assert_eq!(v["code"], code, "{v}");
        assert!(v["error"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    }

    // Unknown route.
    let (status, body) = http_request(app.port, "GET", "/no/such/route", &[], "").await;
    assert_eq!(status, 404, "{body}");
    let v = json_body(&body);
    assert_eq!(v["code"], "NOT_FOUND", "{v}");
    assert!(v["error"].as_str().is_some_and(|s| !s.is_empty()), "{v}");

    // Health.
    let (status, body) = http_request(app.port, "GET", "/health", &[], "").await;
    assert_eq!(status, 200, "{body}");
    let v = json_body(&body);
    assert_eq!(v["status"], "ok", "{v}");
    assert!(v["version"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
}

// ---------------------------------------------------------------------------
// 5. Format mismatch

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_mismatch_ends_the_call_with_1011() {
    let mut cfg = sim_config();
    cfg.faults = SimFaults {
        force_output_format: Some(json!({"type": "audio/pcm", "rate": 24000})),
        ..SimFaults::default()
    };
    let app = spawn_app_with(cfg, &[]).await;
    let hub = spawn_hub_log(&app);
    let report = tokio::time::timeout(
        Duration::from_secs(30),
        run_call(app.caller(vec![CallerStep::Silence { ms: 5_000 }, CallerStep::Hangup])),
    )
    .await
    .expect("call ends in time")
    .expect("call runs");
    assert_eq!(report.end, CallEnd::ServerClosed, "{report:?}");
    let (code, reason) = report.close.clone().expect("a close frame from the server");
    assert_eq!(code, 1011, "close reason: {reason}");
    assert!(
        reason.len() <= 123,
        "close reasons are limited to 123 bytes"
    );
    assert!(
        reason.contains("audio/pcmu"),
        "the close reason names the expected format: {reason:?}"
    );
    assert_eq!(report.heard_bytes, 0, "no PCM audio played to the caller");
    assert!(
        eventually(Duration::from_secs(3), || app
            .sim
            .connections()
            .first()
            .is_some_and(|c| c.closed_at.is_some()))
        .await,
        "the model socket is closed: {:?}",
        app.sim.connections()
    );
    let call_id = param(&report.custom_parameters, "call_id").to_owned();
    assert!(
        eventually(Duration::from_secs(2), || lock(&hub).iter().any(|(_, e)| {
            e.call_id == call_id
                && matches!(&e.kind, CallEventKind::Ended { reason } if reason.starts_with("audio_format_mismatch"))
        }))
        .await,
        "the call ends as a format mismatch"
    );
}

// ---------------------------------------------------------------------------
// 6. The model closes mid-call

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_closing_mid_call_closes_the_twilio_socket() {
    let mut cfg = sim_config();
    cfg.faults = SimFaults {
        close_after_ms: Some(1_500),
        ..SimFaults::default()
    };
    let app = spawn_app_with(cfg, &[]).await;
    let hub = spawn_hub_log(&app);
    let report = tokio::time::timeout(
        Duration::from_secs(30),
        run_call(app.caller(vec![CallerStep::Silence { ms: 8_000 }, CallerStep::Hangup])),
    )
    .await
    .expect("call ends in time")
    .expect("call runs");
    let returned = Instant::now();
    assert_eq!(report.end, CallEnd::ServerClosed, "{report:?}");
    assert!(report.close.is_some(), "a close frame from the server");
    let conn = app
        .sim
        .connections()
        .first()
        .cloned()
        .expect("a model socket");
    assert_eq!(conn.close_reason.as_deref(), Some("fault: close_after_ms"));
    let model_closed = conn.closed_at.expect("model closed");
    let call_id = param(&report.custom_parameters, "call_id").to_owned();
    let ended = lock(&hub)
        .iter()
        .find(|(_, e)| e.call_id == call_id && matches!(e.kind, CallEventKind::Ended { .. }))
        .map(|(t, e)| (*t, e.kind.clone()))
        .expect("an Ended event");
    let reaction = ended.0.saturating_duration_since(model_closed);
    assert!(
        reaction < Duration::from_secs(1),
        "the server ended the call {reaction:?} after the model closed ({:?})",
        ended.1
    );
    let seen_by_caller = returned.saturating_duration_since(model_closed);
    assert!(
        seen_by_caller < Duration::from_secs(3),
        "the caller's socket closed {seen_by_caller:?} after the model closed"
    );
}

// ---------------------------------------------------------------------------
// 7. Twilio stop closes the model socket promptly

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_stop_closes_the_model_socket_within_a_second() {
    let app = spawn_app().await;

    // A normal short call.
    let report = tokio::time::timeout(
        Duration::from_secs(30),
        run_call(app.caller(vec![
            CallerStep::Speak { ms: 400 },
            CallerStep::Silence { ms: 400 },
            CallerStep::Hangup,
        ])),
    )
    .await
    .expect("call ends in time")
    .expect("call runs");
    let returned = Instant::now();
    assert_eq!(report.end, CallEnd::Hangup, "{report:?}");
    assert!(
        eventually(Duration::from_secs(3), || app
            .sim
            .connections()
            .first()
            .is_some_and(|c| c.closed_at.is_some()))
        .await,
        "the model socket closes after stop"
    );
    let conn = app.sim.connections()[0].clone();
    let closed_at = conn.closed_at.expect("closed");
    assert!(
        closed_at.saturating_duration_since(returned) < Duration::from_secs(1),
        "model closed {:?} after the caller returned",
        closed_at.saturating_duration_since(returned)
    );

    // Precisely: a raw socket, stop sent at a known instant.
    let (_, _, params) = fetch_twiml(&app.caller(vec![]))
        .await
        .expect("voice webhook");
    assert!(eventually(Duration::from_secs(5), || app.sim.connections().len() == 2).await);
    let conn_id = app.sim.connections()[1].conn;
    let appends_before = app.sim.events_of_type("input_audio_buffer.append").len();
    let ws = signed_media(&app).await;
    let (mut tx, mut rx) = ws.split();
    let sid = "MZstop00000000000000000000000000";
    send(&mut tx, CONNECTED_MESSAGE).await;
    send(&mut tx, start_message(sid, ACCOUNT_SID, CALL_SID, &params)).await;
    for n in 1..=5_u64 {
        send(
            &mut tx,
            media_message(n + 1, sid, n, 20 * n, &quiet_frame(0xFE)),
        )
        .await;
    }
    assert!(
        eventually(Duration::from_secs(5), || app
            .sim
            .events_of_type("input_audio_buffer.append")
            .len()
            >= appends_before + 5)
        .await,
        "the model is linked"
    );
    let stop_sent = Instant::now();
    send(&mut tx, stop_message(7, sid, ACCOUNT_SID, CALL_SID)).await;
    assert!(
        eventually(Duration::from_secs(3), || app
            .sim
            .connections()
            .iter()
            .any(|c| c.conn == conn_id && c.closed_at.is_some()))
        .await,
        "the model socket closes after stop"
    );
    let conn = app
        .sim
        .connections()
        .into_iter()
        .find(|c| c.conn == conn_id)
        .expect("conn");
    let latency = conn
        .closed_at
        .expect("closed")
        .saturating_duration_since(stop_sent);
    assert!(
        latency < Duration::from_secs(1),
        "model socket closed {latency:?} after stop"
    );
    assert_eq!(
        conn.close_reason.as_deref(),
        Some("client closed (1000)"),
        "a polite close"
    );
    let _ = wait_end(&mut rx, Duration::from_secs(3)).await;
}

// ---------------------------------------------------------------------------
// 8. Gap filling

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn omitted_silence_is_filled_to_the_callers_timeline() {
    let app = spawn_app().await;
    let mut caller = app.caller(vec![
        CallerStep::Speak { ms: 400 },
        CallerStep::Silence { ms: 600 },
        CallerStep::Speak { ms: 400 },
        CallerStep::Hangup,
    ]);
    caller.omit_silence = true;
    let report = tokio::time::timeout(Duration::from_secs(30), run_call(caller))
        .await
        .expect("call ends in time")
        .expect("call runs");
    assert_eq!(report.end, CallEnd::Hangup, "{report:?}");
    assert_eq!(report.sent_payloads.len(), 40, "40 speech frames sent");
    assert!(
        eventually(Duration::from_secs(3), || app
            .sim
            .connections()
            .first()
            .is_some_and(|c| c.closed_at.is_some()))
        .await
    );
    let appends: Vec<Vec<u8>> = app
        .sim
        .events_of_type("input_audio_buffer.append")
        .iter()
        .map(|e| {
            B64.decode(e["audio"].as_str().expect("audio"))
                .expect("valid base64")
        })
        .collect();
    let first_ts = report.sent_payloads.first().expect("frames").0;
    let last_ts = report.sent_payloads.last().expect("frames").0;
    let timeline_bytes = (last_ts + 20 - first_ts) as usize * 8;
    let total: usize = appends.iter().map(Vec::len).sum();
    assert!(
        total.abs_diff(timeline_bytes) <= 160,
        "appended {total} bytes for a {timeline_bytes}-byte timeline"
    );
    // The speech frames arrive as sent, in order; everything else is 0xFF.
    let sent: Vec<Vec<u8>> = report
        .sent_payloads
        .iter()
        .map(|(_, p)| B64.decode(p).expect("sent base64"))
        .collect();
    let (speech, silence): (Vec<&Vec<u8>>, Vec<&Vec<u8>>) =
        appends.iter().partition(|a| sent.contains(a));
    assert_eq!(speech.len(), sent.len());
    assert!(
        speech.iter().zip(&sent).all(|(a, b)| *a == b),
        "speech in order"
    );
    let silence_bytes: usize = silence.iter().map(|a| a.len()).sum();
    assert!(
        silence.iter().all(|a| a.iter().all(|&b| b == 0xFF)),
        "filled silence is µ-law 0xFF"
    );
    assert!(
        silence_bytes.abs_diff(600 * 8) <= 160,
        "600 ms of silence filled, got {} ms",
        silence_bytes / 8
    );
    // The silence sits where the gap was: after the first 20 speech frames.
    let pos = appends
        .iter()
        .position(|a| !sent.contains(a))
        .expect("a silence append");
    assert_eq!(pos, 20, "silence is inserted at the gap");
}

#[test]
fn uplink_caps_gap_filling_and_rejects_bad_base64() {
    let frame = B64.encode([0x7E_u8; 160]);
    let mut up = Uplink::default();
    let mut out = Vec::new();
    up.on_media(20, &frame, &mut out).expect("valid");
    assert_eq!(out.len(), 1);
    let v: Value = serde_json::from_str(&out[0]).expect("append JSON");
    assert_eq!(v["type"], "input_audio_buffer.append");
    assert_eq!(v["audio"], frame.as_str());

    // Bad payloads are rejected and change nothing.
    out.clear();
    for bad in ["", "@@@@", "AAAA=AAA", "not base64 at all", "QUJD\"}"] {
        assert_eq!(up.on_media(40, bad, &mut out), Err(BadPayload), "{bad:?}");
    }
    assert!(out.is_empty(), "{out:?}");
    up.on_media(40, &frame, &mut out).expect("valid");
    assert_eq!(out.len(), 1, "contiguous after rejected frames: no fill");
    assert_eq!(up.silence_filled_ms, 0);

    // A 60 s gap is filled with at most 10 s of silence.
    out.clear();
    up.on_media(60 + 60_000, &frame, &mut out).expect("valid");
    let decoded: Vec<Vec<u8>> = out
        .iter()
        .map(|m| {
            let v: Value = serde_json::from_str(m).expect("append JSON");
            B64.decode(v["audio"].as_str().expect("audio"))
                .expect("base64")
        })
        .collect();
    let (last, fill) = decoded.split_last().expect("appends");
    assert_eq!(last, &vec![0x7E_u8; 160], "the frame itself comes last");
    let fill_bytes: usize = fill.iter().map(Vec::len).sum();
    assert_eq!(fill_bytes as u64, MAX_GAP_FILL_MS * 8, "capped at 10 s");
    assert!(fill.iter().flatten().all(|&b| b == 0xFF));
    assert_eq!(up.silence_filled_ms, MAX_GAP_FILL_MS);

    // A timestamp going backwards fills nothing.
    out.clear();
    up.on_media(100, &frame, &mut out).expect("valid");
    assert_eq!(out.len(), 1);
    assert_eq!(up.silence_filled_ms, MAX_GAP_FILL_MS);
}
