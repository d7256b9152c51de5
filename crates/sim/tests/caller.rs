//! The emulated Twilio caller against tiny in-test servers (raw HTTP + tokio-tungstenite).
#![allow(clippy::unwrap_used, clippy::result_large_err)] // tungstenite's callback type

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use voxbridge_audio::mulaw_rms;
use voxbridge_sim::caller::*;

const TOKEN: &str = "test_auth_token";
const PUBLIC: &str = "https://voice.example.com";
const STREAM_URL: &str = "wss://voice.example.com/media-stream";

fn twiml() -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="{STREAM_URL}"><Parameter name="tenant" value="acme &amp; co &lt;1&gt;" /><Parameter name="callerNumber" value="+14158675310" /></Stream></Connect></Response>"#
    )
}

struct HttpReq {
    head: String,
    body: String,
}

/// A one-route HTTP server answering every POST with `status` + `body`.
async fn http_server(status: u16, body: String) -> (SocketAddr, mpsc::UnboundedReceiver<HttpReq>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = Vec::new();
            let mut tmp = [0u8; 4096];
            let head_end = loop {
                let n = s.read(&mut tmp).await.unwrap();
                assert!(n > 0);
                buf.extend_from_slice(&tmp[..n]);
                if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break p;
                }
            };
            let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
            let cl: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            while buf.len() < head_end + 4 + cl {
                let n = s.read(&mut tmp).await.unwrap();
                assert!(n > 0);
                buf.extend_from_slice(&tmp[..n]);
            }
            let req_body = String::from_utf8(buf[head_end + 4..].to_vec()).unwrap();
            let _ = tx.send(HttpReq {
                head,
                body: req_body,
            });
            let resp = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(resp.as_bytes()).await.unwrap();
            s.shutdown().await.unwrap();
        }
    });
    (addr, rx)
}

struct Handshake {
    path: String,
    headers: Vec<(String, String)>,
}

impl Handshake {
    fn header(&self, k: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
    }
}

/// Accept one media WebSocket and hand it to `handler`.
async fn ws_server<F, Fut, T>(handler: F) -> (SocketAddr, JoinHandle<(Handshake, T)>)
where
    F: FnOnce(WebSocketStream<TcpStream>) -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send,
    T: Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let h = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let mut hs = Handshake {
            path: String::new(),
            headers: Vec::new(),
        };
        let cb = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
            hs.path = req.uri().path().to_string();
            hs.headers = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                .collect();
            Ok(resp)
        };
        let ws = tokio_tungstenite::accept_hdr_async(s, cb).await.unwrap();
        let out = handler(ws).await;
        (hs, out)
    });
    (addr, h)
}

fn cfg(http: SocketAddr, ws: SocketAddr, script: Vec<CallerStep>) -> CallerConfig {
    CallerConfig {
        auth_token: Some(TOKEN.into()),
        connect_base: Some(format!("ws://{ws}")),
        script,
        ..CallerConfig::new(format!("http://{http}/twilio/voice"), PUBLIC)
    }
}

async fn next_json(ws: &mut WebSocketStream<TcpStream>) -> Value {
    loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Close(_) => panic!("closed"),
            _ => {}
        }
    }
}

/// Read `connected` + `start`, return (start message, streamSid).
async fn expect_start(ws: &mut WebSocketStream<TcpStream>) -> (Value, String) {
    let c = next_json(ws).await;
    assert_eq!(
        c,
        serde_json::json!({"event":"connected","protocol":"Call","version":"1.0.0"})
    );
    let s = next_json(ws).await;
    let sid = s["streamSid"].as_str().unwrap().to_string();
    (s, sid)
}

/// Everything the client sends until it closes: (messages with arrival time, close frame).
async fn drain(
    ws: &mut WebSocketStream<TcpStream>,
) -> (Vec<(Instant, Value)>, Option<(u16, String)>) {
    let mut v = Vec::new();
    while let Some(Ok(m)) = ws.next().await {
        match m {
            Message::Text(t) => v.push((Instant::now(), serde_json::from_str(t.as_str()).unwrap())),
            Message::Close(f) => {
                // keep polling so tungstenite sends its close reply
                while let Some(Ok(_)) = ws.next().await {}
                return (v, f.map(|f| (u16::from(f.code), f.reason.to_string())));
            }
            _ => {}
        }
    }
    (v, None)
}

fn media_json(sid: &str, audio: &[u8]) -> String {
    serde_json::json!({"event":"media","streamSid":sid,"media":{"payload":B64.encode(audio)}})
        .to_string()
}

fn mark_json(sid: &str, name: &str) -> String {
    serde_json::json!({"event":"mark","streamSid":sid,"mark":{"name":name}}).to_string()
}

async fn send(ws: &mut WebSocketStream<TcpStream>, s: String) {
    ws.send(Message::text(s)).await.unwrap();
}

fn num(v: &Value) -> u64 {
    v.as_str().expect("number as string").parse().unwrap()
}

#[tokio::test]
async fn webhook_form_signature_and_escaped_twiml() {
    let (http, mut reqs) = http_server(200, twiml()).await;
    let c = CallerConfig {
        auth_token: Some(TOKEN.into()),
        ..CallerConfig::new(
            format!("http://{http}/twilio/voice"),
            "https://voice.example.com/",
        )
    };
    let (xml, url, params) = fetch_twiml(&c).await.unwrap();
    assert_eq!(xml, twiml());
    assert_eq!(url, STREAM_URL);
    assert_eq!(
        params,
        vec![
            ("tenant".to_string(), "acme & co <1>".to_string()),
            ("callerNumber".to_string(), "+14158675310".to_string())
        ]
    );
    let r = reqs.recv().await.unwrap();
    assert!(
        r.head.starts_with("POST /twilio/voice HTTP/1.1\r\n"),
        "{}",
        r.head
    );
    assert!(
        r.head
            .contains("Content-Type: application/x-www-form-urlencoded\r\n")
    );
    let mut form: Vec<(String, String)> = url::form_urlencoded::parse(r.body.as_bytes())
        .into_owned()
        .collect();
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("AccountSid").unwrap(), c.account_sid);
    assert_eq!(get("CallSid").unwrap(), c.call_sid);
    assert!(get("CallSid").unwrap().starts_with("CA"));
    assert_eq!(get("ApiVersion").unwrap(), "2010-04-01");
    assert_eq!(get("CallStatus").unwrap(), "ringing");
    assert_eq!(get("Direction").unwrap(), "inbound");
    assert_eq!(get("From").unwrap(), c.from);
    assert_eq!(get("Caller").unwrap(), c.from);
    assert_eq!(get("To").unwrap(), c.to);
    assert_eq!(get("Called").unwrap(), c.to);
    form.sort();
    let expected = voxbridge_twilio::signature::compute_signature(
        TOKEN,
        "https://voice.example.com/twilio/voice",
        &form,
    );
    let sig = r
        .head
        .lines()
        .find_map(|l| l.strip_prefix("X-Twilio-Signature: "))
        .expect("signature header");
    assert_eq!(sig, expected);

    // non-200 is an error, as is a TwiML Twilio would refuse
    let (http, _r) = http_server(403, "nope".into()).await;
    let e = fetch_twiml(&CallerConfig::new(
        format!("http://{http}/twilio/voice"),
        PUBLIC,
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(e, CallerError::HttpStatus { status: 403, ref body } if body == "nope"),
        "{e}"
    );
    let (http, _r) = http_server(
        200,
        r#"<Response><Connect><Stream url="ws://x/y"/></Connect></Response>"#.into(),
    )
    .await;
    let e = fetch_twiml(&CallerConfig::new(
        format!("http://{http}/twilio/voice"),
        PUBLIC,
    ))
    .await
    .unwrap_err();
    assert!(matches!(e, CallerError::Twiml(_)), "{e}");
}

#[tokio::test]
async fn full_call_wire_format() {
    let (http, _reqs) = http_server(200, twiml()).await;
    let (ws, server) = ws_server(|mut ws| async move {
        let (start, sid) = expect_start(&mut ws).await;
        let (msgs, close) = drain(&mut ws).await;
        (start, sid, msgs, close)
    })
    .await;
    let script = vec![
        CallerStep::Silence { ms: 100 },
        CallerStep::Speak { ms: 200 },
        CallerStep::Dtmf { digit: '5' },
        CallerStep::Silence { ms: 50 },
        CallerStep::Hangup,
    ];
    let c = cfg(http, ws, script);
    let t = Instant::now();
    let report = run_call(c.clone()).await.unwrap();
    let elapsed = t.elapsed();
    let (hs, (start, sid, msgs, close)) = server.await.unwrap();

    // handshake: TwiML path kept, signed over the wss:// TwiML URL
    assert_eq!(hs.path, "/media-stream");
    assert_eq!(
        hs.header("X-Twilio-Signature").unwrap(),
        media_signature(TOKEN, STREAM_URL)
    );

    // start
    assert_eq!(sid, report.stream_sid);
    assert!(sid.starts_with("MZ") && sid.len() == 34);
    assert_eq!(start["event"], "start");
    assert_eq!(start["sequenceNumber"], "1");
    let st = &start["start"];
    assert_eq!(st["streamSid"], sid.as_str());
    assert_eq!(st["accountSid"], c.account_sid.as_str());
    assert_eq!(st["callSid"], c.call_sid.as_str());
    assert_eq!(st["tracks"], serde_json::json!(["inbound"]));
    assert_eq!(
        st["mediaFormat"],
        serde_json::json!({"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1})
    );
    assert_eq!(
        st["customParameters"],
        serde_json::json!({"tenant":"acme & co <1>","callerNumber":"+14158675310"})
    );
    assert_eq!(report.custom_parameters.len(), 2);

    // sequence numbers: strings, consecutive from 2
    for (i, (_, m)) in msgs.iter().enumerate() {
        assert_eq!(num(&m["sequenceNumber"]), i as u64 + 2, "{m}");
        assert_eq!(m["streamSid"], sid.as_str());
    }
    let media: Vec<&Value> = msgs
        .iter()
        .map(|(_, m)| m)
        .filter(|m| m["event"] == "media")
        .collect();
    // 5 silence + 10 speech + 3 silence (50 ms rounds up)
    assert_eq!(media.len(), 18);
    assert_eq!(report.frames_sent, 18);
    for (i, m) in media.iter().enumerate() {
        let md = &m["media"];
        assert_eq!(md["track"], "inbound");
        assert_eq!(num(&md["chunk"]), i as u64 + 1);
        assert_eq!(num(&md["timestamp"]), (i as u64 + 1) * 20);
        let audio = B64.decode(md["payload"].as_str().unwrap()).unwrap();
        assert_eq!(audio.len(), 160);
        let rms = mulaw_rms(&audio);
        if (5..15).contains(&i) {
            assert!(rms > 800.0, "speech frame {i} rms {rms}");
        } else {
            assert!(rms < 50.0, "silence frame {i} rms {rms}");
        }
        assert_eq!(
            report.sent_payloads[i],
            (
                num(&md["timestamp"]),
                md["payload"].as_str().unwrap().to_string()
            )
        );
    }
    // dtmf right after the speech, before the trailing silence
    let dtmf_idx = msgs.iter().position(|(_, m)| m["event"] == "dtmf").unwrap();
    assert_eq!(
        msgs[dtmf_idx].1["dtmf"],
        serde_json::json!({"track":"inbound_track","digit":"5"})
    );
    assert_eq!(msgs[dtmf_idx - 1].1["media"]["chunk"], "15");
    // stop last
    let (_, stop) = msgs.last().unwrap();
    assert_eq!(stop["event"], "stop");
    assert_eq!(
        stop["stop"],
        serde_json::json!({"accountSid": c.account_sid, "callSid": c.call_sid})
    );
    assert_eq!(close, Some((1000, String::new())));
    assert_eq!(report.close.as_ref().map(|c| c.0), Some(1000));
    assert_eq!(report.end, CallEnd::Hangup);
    assert!(
        report.protocol_errors.is_empty(),
        "{:?}",
        report.protocol_errors
    );

    // real-time pacing: 18 frames ≈ 360 ms + stop tick
    let first = msgs.iter().find(|(_, m)| m["event"] == "media").unwrap().0;
    let last = msgs
        .iter()
        .rev()
        .find(|(_, m)| m["event"] == "media")
        .unwrap()
        .0;
    let span = last.duration_since(first).as_millis();
    assert!((300..=600).contains(&span), "media span {span} ms");
    assert!(elapsed < Duration::from_secs(3));
}

#[tokio::test]
async fn omit_silence_leaves_gaps() {
    let (http, _reqs) = http_server(200, twiml()).await;
    let (ws, server) = ws_server(|mut ws| async move {
        expect_start(&mut ws).await;
        drain(&mut ws).await
    })
    .await;
    let mut c = cfg(
        http,
        ws,
        vec![
            CallerStep::Speak { ms: 60 },
            CallerStep::Silence { ms: 100 },
            CallerStep::Speak { ms: 40 },
        ],
    );
    c.omit_silence = true;
    let report = run_call(c).await.unwrap();
    let (_, (msgs, _)) = server.await.unwrap();
    let media: Vec<(u64, u64, u64)> = msgs
        .iter()
        .filter(|(_, m)| m["event"] == "media")
        .map(|(_, m)| {
            (
                num(&m["sequenceNumber"]),
                num(&m["media"]["chunk"]),
                num(&m["media"]["timestamp"]),
            )
        })
        .collect();
    assert_eq!(
        media,
        vec![
            (2, 1, 20),
            (3, 2, 40),
            (4, 3, 60),
            (5, 9, 180),
            (6, 10, 200)
        ]
    );
    assert_eq!(report.frames_sent, 5);
    let ts: Vec<u64> = report.sent_payloads.iter().map(|p| p.0).collect();
    assert_eq!(ts, vec![20, 40, 60, 180, 200]);
}

#[tokio::test]
async fn playout_paces_and_echoes_mark_after_audio() {
    let (http, _reqs) = http_server(200, twiml()).await;
    let audio: Vec<u8> = (0..8000u32).map(|i| (i % 251) as u8).collect();
    let sent = audio.clone();
    let (ws, server) = ws_server(move |mut ws| async move {
        let (_, sid) = expect_start(&mut ws).await;
        for f in sent.chunks(160) {
            ws.feed(Message::text(media_json(&sid, f))).await.unwrap();
        }
        ws.feed(Message::text(mark_json(&sid, "m1"))).await.unwrap();
        ws.flush().await.unwrap();
        let t = Instant::now();
        let (msgs, _) = drain(&mut ws).await;
        let (at, echo) = msgs
            .iter()
            .find(|(_, m)| m["event"] == "mark")
            .unwrap()
            .clone();
        (at.duration_since(t), echo, sid)
    })
    .await;
    let (etx, mut erx) = mpsc::unbounded_channel();
    let mut c = cfg(
        http,
        ws,
        vec![
            CallerStep::WaitAgentSpeaking { timeout_ms: 2000 },
            CallerStep::WaitAgentQuiet {
                quiet_ms: 100,
                timeout_ms: 3000,
            },
            CallerStep::Hangup,
        ],
    );
    c.events = Some(etx);
    let report = run_call(c).await.unwrap();
    let (_, (delay, echo, sid)) = server.await.unwrap();
    let ms = delay.as_millis();
    assert!((950..=1250).contains(&ms), "mark echoed after {ms} ms");
    assert_eq!(echo["mark"]["name"], "m1");
    assert_eq!(echo["streamSid"], sid.as_str());
    assert!(num(&echo["sequenceNumber"]) > 1);
    assert_eq!(report.marks_received, vec!["m1"]);
    assert_eq!(report.marks_echoed, vec!["m1"]);
    assert!(
        (980..=1000).contains(&report.max_buffered_ms),
        "{}",
        report.max_buffered_ms
    );
    assert_eq!(report.heard, audio);
    assert_eq!(report.heard_bytes, 8000);
    assert_eq!(report.received_frames.len(), 50);
    assert!(report.received_frames.iter().all(|f| f.len == 160));
    assert_eq!(report.underruns, 0);
    assert_eq!(report.bursts, 1);
    assert_eq!(report.wait_timeouts, 0);
    assert!(
        report.protocol_errors.is_empty(),
        "{:?}",
        report.protocol_errors
    );

    let mut evs = Vec::new();
    while let Ok(e) = erx.try_recv() {
        evs.push(e);
    }
    assert!(matches!(evs[0], CallerEvent::Twiml(_)));
    assert_eq!(evs[1], CallerEvent::Connected);
    let started = evs
        .iter()
        .find_map(|e| match e {
            CallerEvent::AgentAudioStarted { at_ms } => Some(*at_ms),
            _ => None,
        })
        .unwrap();
    let stopped = evs
        .iter()
        .find_map(|e| match e {
            CallerEvent::AgentAudioStopped { at_ms } => Some(*at_ms),
            _ => None,
        })
        .unwrap();
    assert_eq!(stopped - started, 1000);
    assert!(evs.contains(&CallerEvent::MarkEchoed { name: "m1".into() }));
    assert!(matches!(
        evs.last().unwrap(),
        CallerEvent::Closed {
            code: Some(1000),
            ..
        }
    ));
}

#[tokio::test]
async fn clear_drops_audio_and_echoes_pending_marks() {
    let (http, _reqs) = http_server(200, twiml()).await;
    let audio: Vec<u8> = (0..16000u32).map(|i| (i % 253) as u8).collect();
    let sent = audio.clone();
    let (ws, server) = ws_server(move |mut ws| async move {
        let (_, sid) = expect_start(&mut ws).await;
        for f in sent.chunks(160) {
            ws.feed(Message::text(media_json(&sid, f))).await.unwrap();
        }
        ws.feed(Message::text(mark_json(&sid, "a"))).await.unwrap();
        ws.feed(Message::text(media_json(&sid, &[0x55; 800])))
            .await
            .unwrap();
        ws.feed(Message::text(mark_json(&sid, "b"))).await.unwrap();
        ws.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        send(
            &mut ws,
            serde_json::json!({"event":"clear","streamSid":sid}).to_string(),
        )
        .await;
        let t = Instant::now();
        let (msgs, _) = drain(&mut ws).await;
        let marks: Vec<(Duration, String)> = msgs
            .iter()
            .filter(|(_, m)| m["event"] == "mark")
            .map(|(at, m)| {
                (
                    at.duration_since(t),
                    m["mark"]["name"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        marks
    })
    .await;
    let c = cfg(
        http,
        ws,
        vec![
            CallerStep::WaitAgentSpeaking { timeout_ms: 2000 },
            CallerStep::WaitAgentQuiet {
                quiet_ms: 200,
                timeout_ms: 3000,
            },
            CallerStep::Hangup,
        ],
    );
    let report = run_call(c).await.unwrap();
    let (_, marks) = server.await.unwrap();
    assert_eq!(
        marks.iter().map(|m| m.1.as_str()).collect::<Vec<_>>(),
        vec!["a", "b"]
    );
    for (d, n) in &marks {
        assert!(
            *d < Duration::from_millis(100),
            "mark {n} echoed {d:?} after clear"
        );
    }
    assert_eq!(report.clears.len(), 1);
    assert!(
        (250..=600).contains(&report.clears[0]),
        "{:?}",
        report.clears
    );
    assert_eq!(report.marks_echoed, vec!["a", "b"]);
    let heard = report.heard.len();
    assert!((2000..=4000).contains(&heard), "heard {heard} bytes");
    assert_eq!(report.heard[..], audio[..heard]);
    assert!(
        (2050..=2100).contains(&report.max_buffered_ms),
        "{}",
        report.max_buffered_ms
    );
    assert_eq!(report.underruns, 0);
    assert_eq!(report.bursts, 1);
}

#[tokio::test]
async fn underruns_and_bursts() {
    let (http, _reqs) = http_server(200, twiml()).await;
    let (ws, server) = ws_server(|mut ws| async move {
        let (_, sid) = expect_start(&mut ws).await;
        let a = [0x11u8; 800]; // 100 ms
        send(&mut ws, media_json(&sid, &a)).await; // burst 1
        tokio::time::sleep(Duration::from_millis(200)).await; // dry ~100 ms
        send(&mut ws, media_json(&sid, &a)).await; // underrun 1
        tokio::time::sleep(Duration::from_millis(600)).await; // dry ~500 ms: burst 1 ends
        send(&mut ws, media_json(&sid, &a)).await; // burst 2
        send(&mut ws, mark_json(&sid, "done:1")).await; // ends burst 2
        send(&mut ws, media_json(&sid, &a)).await; // burst 3, gapless
        tokio::time::sleep(Duration::from_millis(300)).await; // dry ~100 ms
        send(&mut ws, media_json(&sid, &a)).await; // underrun 2
        drain(&mut ws).await
    })
    .await;
    let (etx, mut erx) = mpsc::unbounded_channel();
    let mut c = cfg(
        http,
        ws,
        vec![CallerStep::Silence { ms: 1800 }, CallerStep::Hangup],
    );
    c.events = Some(etx);
    let report = run_call(c).await.unwrap();
    server.await.unwrap();
    assert_eq!(report.underruns, 2);
    assert_eq!(report.bursts, 3);
    assert_eq!(report.marks_echoed, vec!["done:1"]);
    assert_eq!(report.heard.len(), 5 * 800);
    let mut starts = Vec::new();
    let mut stops = Vec::new();
    while let Ok(e) = erx.try_recv() {
        match e {
            CallerEvent::AgentAudioStarted { at_ms } => starts.push(at_ms),
            CallerEvent::AgentAudioStopped { at_ms } => stops.push(at_ms),
            _ => {}
        }
    }
    assert_eq!(starts.len(), 3);
    assert_eq!(stops.len(), 3, "{stops:?}");
    // burst 3 starts exactly where the done: mark ended burst 2
    assert_eq!(stops[1], starts[2]);
}

#[tokio::test]
async fn malformed_server_messages_are_recorded() {
    let (http, _reqs) = http_server(200, twiml()).await;
    let (ws, server) = ws_server(|mut ws| async move {
        let (_, sid) = expect_start(&mut ws).await;
        for m in [
            "not json".to_string(),
            "[1,2]".to_string(),
            serde_json::json!({"event":"bogus","streamSid":sid}).to_string(),
            serde_json::json!({"event":"start","streamSid":sid}).to_string(),
            media_json("MZwrong", &[1, 2, 3]),
            serde_json::json!({"event":"media","media":{"payload":"AAAA"}}).to_string(),
            serde_json::json!({"event":"media","streamSid":sid,"media":{"payload":"!!not base64!!"}}).to_string(),
            serde_json::json!({"event":"media","streamSid":sid,"media":{}}).to_string(),
            serde_json::json!({"event":"media","streamSid":sid,"media":{"payload":""}}).to_string(),
            serde_json::json!({"event":"mark","streamSid":sid,"mark":{"name":5}}).to_string(),
            serde_json::json!({"event":"clear","streamSid":7}).to_string(),
        ] {
            send(&mut ws, m).await;
        }
        ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
        send(&mut ws, media_json(&sid, &[0x22; 160])).await;
        send(&mut ws, mark_json(&sid, "ok")).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        ws.close(Some(CloseFrame {
            code: CloseCode::Library(4000),
            reason: "bye".into(),
        }))
        .await
        .unwrap();
        drain(&mut ws).await
    })
    .await;
    let t = Instant::now();
    let report = run_call(cfg(http, ws, vec![CallerStep::Silence { ms: 5000 }]))
        .await
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(3));
    server.await.unwrap();
    assert_eq!(
        report.protocol_errors.len(),
        12,
        "{:#?}",
        report.protocol_errors
    );
    assert_eq!(report.marks_echoed, vec!["ok"]);
    assert_eq!(report.heard, vec![0x22; 160]);
    assert_eq!(report.close, Some((4000, "bye".to_string())));
    assert_eq!(report.end, CallEnd::ServerClosed);
}

#[tokio::test]
async fn rejected_upgrade_is_an_error() {
    let (http, _reqs) = http_server(200, twiml()).await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let cb = |_: &Request, _: Response| -> Result<Response, ErrorResponse> {
            let mut r = ErrorResponse::new(Some("bad signature".into()));
            *r.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::FORBIDDEN;
            Err(r)
        };
        let _ = tokio_tungstenite::accept_hdr_async(s, cb).await;
    });
    let e = run_call(cfg(http, ws, vec![])).await.unwrap_err();
    assert!(matches!(e, CallerError::WsRejected { status: 403 }), "{e}");
}
